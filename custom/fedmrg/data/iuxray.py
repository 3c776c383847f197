"""IU X-ray (Open-i "NLMCXR") reports: where the archive comes from, and its ecgen-radiology XML.

The archive ``NLMCXR_reports.tgz`` (NLM Open-i; Demner-Fushman et al., JAMIA 2016; CC BY-NC-ND
4.0) holds one XML per study with COMPARISON, INDICATION, FINDINGS and IMPRESSION, the MeSH major
and automatic terms coded by NLM's indexers, and the ids of the study's images (parentImage).

Offline default: the copy that ships inside the ``torchxrayvision==1.5.7`` wheel on PyPI. We
download the wheel with ``pip download --no-deps`` (the package is never installed), read the
archive out of it and cache it under the data dir (``$FEDMRG_DATA_DIR/cache``, default
``./data/cache``).
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import urllib.parse
import urllib.request
import xml.etree.ElementTree as ET
import zipfile
from pathlib import Path

from tqdm import tqdm

from fedmrg.data.reports import Skipped, SourceReport
from fedmrg.errors import DataError
from fedmrg.io import atomic_write

log = logging.getLogger(__name__)

ARCHIVE_NAME = "NLMCXR_reports.tgz"
WHEEL_REQUIREMENT = "torchxrayvision==1.5.7"
WHEEL_MEMBER = "torchxrayvision/data/NLMCXR_reports.tgz"
_SECTIONS = {"COMPARISON": "comparison", "INDICATION": "indication", "FINDINGS": "findings", "IMPRESSION": "impression"}


def data_dir() -> Path:
    """The data dir: ``$FEDMRG_DATA_DIR`` or ``./data``."""
    return Path(os.environ.get("FEDMRG_DATA_DIR", "data")).resolve()


def default_cache_dir() -> Path:
    return data_dir() / "cache"


# --------------------------------------------------------------------------------------------
# Getting the archive
# --------------------------------------------------------------------------------------------


def resolve_reports_archive(spec: str | os.PathLike | None = None, cache_dir: Path | None = None) -> Path:
    """Return a local path to ``NLMCXR_reports.tgz``.

    ``spec`` is None (offline default: the torchxrayvision wheel from the package index), a path
    to the ``.tgz`` or to a ``.whl`` that contains it, or an http(s)/file URL of either. Whatever
    is fetched is cached in ``cache_dir``; a given ``.tgz`` path is used in place.
    """
    cache_dir = Path(cache_dir or default_cache_dir())
    if spec is None:
        cached = cache_dir / ARCHIVE_NAME
        if not cached.is_file():
            _fetch_from_wheel_index(cached)
        return _checked_archive(cached)
    text = str(spec)
    if urllib.parse.urlparse(text).scheme in ("http", "https", "file"):
        return _resolve_url(text, cache_dir)
    path = Path(text).expanduser()
    if not path.exists():
        raise DataError(f"{path}: report archive not found")
    if path.suffix == ".whl":
        target = _source_cache(cache_dir, str(path.resolve())) / ARCHIVE_NAME
        _extract_from_wheel(path, target)
        return _checked_archive(target)
    return _checked_archive(path)


def _source_cache(cache_dir: Path, source: str) -> Path:
    """A cache folder of its own for each user-given source (the plain cache is the default's)."""
    return cache_dir / "sources" / hashlib.sha256(source.encode()).hexdigest()[:16]


def _resolve_url(url: str, cache_dir: Path) -> Path:
    name = Path(urllib.parse.urlparse(url).path).name or ARCHIVE_NAME
    downloaded = _source_cache(cache_dir, url) / name
    if not downloaded.is_file():
        cache_dir.mkdir(parents=True, exist_ok=True)
        log.info("downloading %s", url)
        try:
            with urllib.request.urlopen(url, timeout=60) as response, atomic_write(downloaded) as tmp:
                shutil.copyfileobj(response, tmp)
        except OSError as exc:
            raise DataError(f"{url}: download failed ({exc})") from None
    return resolve_reports_archive(downloaded, cache_dir) if name.endswith(".whl") else _checked_archive(downloaded)


def _fetch_from_wheel_index(target: Path) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    log.info("fetching %s from the package index (no install) for %s", WHEEL_REQUIREMENT, ARCHIVE_NAME)
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [
            sys.executable,
            "-m",
            "pip",
            "download",
            "--quiet",
            "--no-deps",
            "--only-binary=:all:",
            WHEEL_REQUIREMENT,
            "-d",
            tmp,
        ]
        result = subprocess.run(cmd, capture_output=True, text=True)
        wheels = list(Path(tmp).glob("*.whl"))
        if result.returncode != 0 or not wheels:
            reason = (result.stderr.strip().splitlines() or ["no wheel downloaded"])[-1]
            raise DataError(
                f"{ARCHIVE_NAME}: could not download {WHEEL_REQUIREMENT} from the package index ({reason}); "
                f"download that wheel or the archive elsewhere and pass --reports PATH"
            )
        _extract_from_wheel(wheels[0], target)


def _extract_from_wheel(wheel: Path, target: Path) -> None:
    try:
        with zipfile.ZipFile(wheel) as zf, zf.open(WHEEL_MEMBER) as member, atomic_write(target) as out:
            shutil.copyfileobj(member, out)
    except KeyError:
        raise DataError(f"{wheel}: the wheel has no {WHEEL_MEMBER}") from None
    except (zipfile.BadZipFile, OSError) as exc:
        raise DataError(f"{wheel}: not a readable wheel ({exc})") from None


def _checked_archive(path: Path) -> Path:
    if path.stat().st_size == 0:
        raise DataError(f"{path}: the report archive is empty (0 bytes)")
    try:
        with tarfile.open(path, "r:*") as tar:
            if not any(_is_report_xml(m) for m in tar):
                raise DataError(f"{path}: no ecgen-radiology/*.xml reports inside this archive")
    except (tarfile.TarError, EOFError, OSError) as exc:
        raise DataError(f"{path}: corrupt or truncated report archive ({_archive_problem(exc)})") from None
    return path


def _archive_problem(exc: BaseException) -> str:
    """One line: tarfile's auto-detection error lists every compression it tried."""
    if isinstance(exc, tarfile.ReadError) and "could not be opened" in str(exc):
        return "not a gzip, bzip2, xz or plain tar file"
    return str(exc).splitlines()[0] if str(exc) else exc.__class__.__name__


def _is_report_xml(member: tarfile.TarInfo) -> bool:
    return member.isfile() and member.name.endswith(".xml")


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


# --------------------------------------------------------------------------------------------
# Parsing
# --------------------------------------------------------------------------------------------


def _text(node: ET.Element | None) -> str | None:
    if node is None or node.text is None:
        return None
    text = " ".join(node.text.split())
    return text or None


def parse_report_xml(data: bytes, name: str) -> SourceReport:
    """Parse one ecgen-radiology XML document. Raises DataError (naming ``name``) if malformed."""
    try:
        root = ET.fromstring(data)
    except ET.ParseError as exc:
        raise DataError(f"{name}: not well-formed XML ({exc})") from None
    if root.tag != "eCitation":
        raise DataError(f"{name}: not an ecgen-radiology report (root element <{root.tag}>, expected <eCitation>)")
    uid_node = root.find("uId")
    uid = uid_node.get("id") if uid_node is not None else None
    if not uid:
        raise DataError(f"{name}: no <uId id=...> study id")
    sections: dict[str, str | None] = {}
    for node in root.iter("AbstractText"):
        key = _SECTIONS.get((node.get("Label") or "").upper())
        if key:
            sections[key] = _text(node)
    return SourceReport(
        uid=uid,
        mesh_major=[t for t in (_text(n) for n in root.iter("major")) if t],
        mesh_automatic=[t for t in (_text(n) for n in root.iter("automatic")) if t],
        image_ids=[n.get("id") for n in root.findall("parentImage") if n.get("id")],
        source_file=name,
        **sections,
    )


def report_number(name: str) -> int | None:
    """The study number of an archive member (``ecgen-radiology/17.xml`` -> 17)."""
    match = re.search(r"(\d+)\.xml$", name)
    return int(match.group(1)) if match else None


def read_archive(path: Path, progress: bool = True) -> tuple[list[SourceReport], list[Skipped]]:
    """Every report of the archive, in study-number order; malformed members are skipped and listed."""
    reports: list[SourceReport] = []
    skipped: list[Skipped] = []
    try:
        with tarfile.open(path, "r:*") as tar:
            members = [m for m in tar.getmembers() if _is_report_xml(m)]
            first_file: dict[str, str] = {}
            for member in tqdm(members, desc="parsing reports", unit="xml", disable=not progress):
                handle = tar.extractfile(member)
                try:
                    report = parse_report_xml(handle.read(), member.name)
                except DataError as exc:
                    skipped.append(Skipped(member.name, str(exc).split(": ", 1)[-1]))
                    continue
                if report.uid in first_file:
                    skipped.append(
                        Skipped(member.name, f"duplicate study id {report.uid} (also in {first_file[report.uid]})")
                    )
                    continue
                first_file[report.uid] = member.name
                reports.append(report)
    except (tarfile.TarError, EOFError, OSError) as exc:
        raise DataError(f"{path}: corrupt or truncated report archive ({_archive_problem(exc)})") from None
    reports.sort(key=lambda r: (report_number(r.source_file) or 0, r.uid))
    return reports, skipped
