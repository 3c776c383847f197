"""The FL-MRG benchmark builder (``fedmrg prepare-data``).

From a report source (the real IU X-ray reports, or templated synthetic ones) it builds a
multi-hospital benchmark with dual heterogeneity:

- reporting style: studies are dealt to sites by clustering their phrasing (``style``), or with
  Dirichlet label skew (``label``), or uniformly (``iid``);
- image acquisition: every study gets a synthetic frontal (and lateral) radiograph rendered from
  its MeSH major findings; each site then applies its own acquisition profile (contrast curve,
  exposure, noise, blur/resolution) and storage (8/16-bit PNG, DICOM MONOCHROME1/2).

Layout of ``OUT``::

    site-K/annotation.json, site-K/images/<id>/<view>.png|dcm   (R2Gen layout, train/val/test)
    test-global/annotation.json, test-global/images/...       (held out from every site; test split)
    public/reports.jsonl                                      (reports and their MeSH terms)
    public/annotation.json, public/images/...                 (with public_renders: renders of them, train split)
    benchmark.json                                            (counts, prevalence, profiles, skipped, seed, checksum)

The build runs in a temporary sibling folder renamed to ``OUT`` only when complete, so a failed or
interrupted build never leaves a benchmark that looks finished.
"""

from __future__ import annotations

import hashlib
import json
import logging
import multiprocessing
import os
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from fedmrg import __version__
from fedmrg.config import BenchmarkConfig
from fedmrg.data import iuxray
from fedmrg.data.annotation import SPLITS, write_annotation
from fedmrg.data.partition import assign_sites, stratified_split, stratum_keys
from fedmrg.data.reports import Skipped, SourceReport
from fedmrg.data.synthetic import (
    CATEGORIES,
    AcquisitionProfile,
    Finding,
    apply_profile,
    finding_categories,
    findings_from_mesh,
    render_study,
    site_profiles,
    synthetic_reports,
    write_view,
)
from fedmrg.errors import DataError
from fedmrg.io import load_json, replacing_directory, write_json

log = logging.getLogger(__name__)

FORMAT_VERSION = 2  # 2: public rows carry mesh_major and categories (the base encoder renders them)
TEST_GLOBAL = "test-global"
SUMMARY_FILE = "benchmark.json"  # what was built and how; its build time changes with every build
PUBLIC = "public"
DEFAULT_SYNTHETIC_STUDIES = 200


def site_name(index: int) -> str:
    return f"site-{index + 1}"


@dataclass
class _Study:
    report: SourceReport
    text: str
    findings: list[Finding]
    categories: list[str]
    n_views: int


@dataclass(frozen=True)
class _RenderJob:
    uid: str
    findings: tuple[Finding, ...]
    n_views: int
    size: int
    profile: AcquisitionProfile
    folder: str  # the images/ folder that receives <uid>/<view>.<ext>
    seed: int


def build_benchmark(
    cfg: BenchmarkConfig,
    out: str | os.PathLike,
    include_impression: bool = False,
    reuse: bool = False,
    force: bool = False,
    progress: bool = True,
) -> dict[str, Any]:
    """Build the benchmark into ``out`` and return the content of its benchmark.json.

    With ``reuse``, an existing complete benchmark built from the same request is kept as it is.
    An existing ``out`` is otherwise an error, unless ``force`` (then it is replaced at the end).
    """
    out = Path(out).resolve()
    started = time.time()
    source_info, studies, skipped = _load_studies(cfg, include_impression, progress)
    request = _request(cfg, include_impression, source_info)
    existing = _existing(out, request, reuse, force)
    if existing is not None:
        log.info("%s: up to date (same request), reused", out)
        return existing

    rng = np.random.default_rng([cfg.seed, 0xDA7A])
    keys = stratum_keys([s.categories for s in studies])
    public, test_global, pooled = stratified_split(
        range(len(studies)),
        keys,
        [cfg.public_fraction, cfg.test_global_fraction, 1 - cfg.public_fraction - cfg.test_global_fraction],
        rng,
    )
    site_of, phrases = assign_sites(
        cfg.partition,
        [studies[i].text for i in pooled],
        [keys[i] for i in pooled],
        cfg.sites,
        cfg.seed,
        cfg.dirichlet_alpha,
    )
    site_members = [[pooled[j] for j in np.flatnonzero(site_of == s)] for s in range(cfg.sites)]
    profiles = site_profiles(cfg.sites, cfg.seed)

    with replacing_directory(out, per_process=True) as tmp:
        groups = {site_name(s): (site_members[s], [profiles[s]] * len(site_members[s])) for s in range(cfg.sites)}
        held_out_profiles = [profiles[int(p)] for p in rng.integers(cfg.sites, size=len(test_global))]
        groups[TEST_GLOBAL] = (test_global, held_out_profiles)
        public_renders = _public_renders(studies, public, cfg)
        image_paths = _render_all(studies, groups, cfg, tmp, progress, public_renders)
        counts = {}
        for group, (members, group_profiles) in groups.items():
            splits = _group_splits(group, members, keys, cfg, rng)
            fractions = (
                {"train": 0.0, "val": 0.0, "test": 1.0} if group == TEST_GLOBAL else dict(zip(SPLITS, cfg.splits))
            )
            _check_not_empty(group, splits, fractions)
            profile_of = dict(zip(members, group_profiles))
            rows = {
                split: [_row(studies[i], image_paths[studies[i].report.uid], profile_of[i], group) for i in indices]
                for split, indices in splits.items()
            }
            write_annotation(tmp / group / "annotation.json", rows)
            counts[group] = {split: len(rows[split]) for split in SPLITS}
            counts[group]["views"] = sum(len(image_paths[studies[i].report.uid]) for i in members)
        _write_public(tmp / PUBLIC, [studies[i] for i in public])
        counts[PUBLIC] = {"reports": len(public)}
        if public_renders:
            rows = [
                {**_row(studies[i], image_paths[uid], profile, PUBLIC), "id": uid} for uid, i, profile in public_renders
            ]
            write_annotation(tmp / PUBLIC / "annotation.json", {"train": rows})
            counts[PUBLIC]["renders"] = len(rows)
        summary = {
            "format_version": FORMAT_VERSION,
            "created_by": f"fedmrg {__version__}",
            "request": request,
            "source": source_info,
            "seed": cfg.seed,
            "counts": counts,
            "prevalence": {g: _prevalence([studies[i] for i in m]) for g, (m, _) in groups.items()},
            "acquisition": {site_name(s): profiles[s].to_dict() for s in range(cfg.sites)},
            "style_phrases": {site_name(s): p for s, p in phrases.items()},
            "skipped": {
                "count": len(skipped),
                "by_reason": dict(Counter(s.reason for s in skipped).most_common()),
                "items": [s.to_dict() for s in skipped],
            },
            "build_seconds": round(time.time() - started, 1),
        }
        write_json(tmp / SUMMARY_FILE, summary)
    return summary


# --------------------------------------------------------------------------------------------
# Source studies
# --------------------------------------------------------------------------------------------


def _load_studies(
    cfg: BenchmarkConfig, include_impression: bool, progress: bool
) -> tuple[dict[str, Any], list[_Study], list[Skipped]]:
    if cfg.source == "synthetic":
        n = cfg.studies or DEFAULT_SYNTHETIC_STUDIES
        reports, _ = synthetic_reports(n, cfg.seed)
        source = {"kind": "synthetic", "sha256": hashlib.sha256(f"synthetic:{n}:{cfg.seed}".encode()).hexdigest()}
        skipped: list[Skipped] = []
    else:
        archive = iuxray.resolve_reports_archive(cfg.reports)
        reports, skipped = iuxray.read_archive(archive, progress=progress)
        source = {"kind": "iu-xray", "archive": archive.name, "sha256": iuxray.sha256_file(archive)}
    source["reports_in_source"] = len(reports) + len(skipped)
    studies = []
    for report in reports:
        text = report.target_text(include_impression)
        if not text:
            skipped.append(Skipped(report.source_file or report.uid, "no FINDINGS section"))
        elif not report.image_ids:
            skipped.append(Skipped(report.source_file or report.uid, "no images (parentImage) in the source"))
        elif any(term.lower().startswith("no indexing") for term in report.mesh_major):
            # the renderer draws the indexers' terms: without them the image would not match the text
            skipped.append(Skipped(report.source_file or report.uid, "not indexed by NLM (no MeSH terms to render)"))
        else:
            findings = findings_from_mesh(report.mesh_major)
            studies.append(_Study(report, text, findings, finding_categories(findings), min(2, len(report.image_ids))))
    if cfg.source == "iu-xray" and cfg.studies is not None and cfg.studies < len(studies):
        rng = np.random.default_rng([cfg.seed, 0x5AB5])
        studies = [studies[i] for i in sorted(rng.choice(len(studies), size=cfg.studies, replace=False))]
    if not studies:
        raise DataError(f"{cfg.source}: no usable study ({len(skipped)} skipped)")
    source["usable_studies"] = len(studies)
    return source, studies, skipped


def _request(cfg: BenchmarkConfig, include_impression: bool, source: dict[str, Any]) -> dict[str, Any]:
    request = asdict(cfg)
    request.pop("workers")  # does not change the result
    request["reports"] = source["sha256"]
    request["include_impression"] = include_impression
    request["format_version"] = FORMAT_VERSION
    request["fedmrg_version"] = __version__  # a newer renderer or partitioner may draw other studies
    return request


def _existing(out: Path, request: dict[str, Any], reuse: bool, force: bool) -> dict[str, Any] | None:
    if not out.exists():
        return None
    is_benchmark = (out / SUMMARY_FILE).is_file()
    if not out.is_dir() or not (is_benchmark or not any(out.iterdir())):
        raise DataError(f"{out}: exists and is not a benchmark folder; refusing to replace it")
    if force:
        return None
    if reuse and is_benchmark:
        existing = load_benchmark(out)
        if existing.get("request") == request:
            return existing
        raise DataError(f"{out}: holds a benchmark built with other settings; use --force to rebuild it")
    raise DataError(f"{out}: already exists; use --force to replace it (or --reuse to keep a matching build)")


def _check_not_empty(group: str, splits: dict[str, list[int]], fractions: dict[str, float]) -> None:
    """Every split that should hold studies does: an empty one would make an unusable benchmark."""
    for split, indices in splits.items():
        if fractions[split] > 0 and not indices:
            raise DataError(
                f"{group} would get no {split} study ({sum(map(len, splits.values()))} studies in all); "
                f"use more studies or fewer sites"
            )


def _group_splits(
    group: str, members: list[int], keys: list[str], cfg: BenchmarkConfig, rng: np.random.Generator
) -> dict[str, list[int]]:
    if group == TEST_GLOBAL:
        return {"train": [], "val": [], "test": sorted(members)}
    return dict(zip(SPLITS, stratified_split(members, keys, cfg.splits, rng)))


def _row(study: _Study, paths: list[str], profile: AcquisitionProfile, group: str) -> dict[str, Any]:
    row = {
        "id": study.report.uid,
        "report": study.text,
        "image_path": paths,
        "mesh_major": study.report.mesh_major,
        "categories": study.categories,
    }
    if group == TEST_GLOBAL:
        row["acquisition"] = profile.name
    return row


def _prevalence(studies: list[_Study]) -> dict[str, float]:
    counts = Counter(c for s in studies for c in s.categories)
    return {c: round(counts[c] / max(1, len(studies)), 4) for c in CATEGORIES}


def _write_public(folder: Path, studies: list[_Study]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / "reports.jsonl", "w", encoding="utf-8") as handle:
        for study in studies:
            row = {"id": study.report.uid, "report": study.text, "mesh_major": study.report.mesh_major}
            handle.write(json.dumps({**row, "categories": study.categories}) + "\n")


# --------------------------------------------------------------------------------------------
# Rendering
# --------------------------------------------------------------------------------------------


def study_seed(seed: int, uid: str) -> int:
    """A per-study seed that depends on the study, not on where it was dealt."""
    return int.from_bytes(hashlib.sha256(f"{seed}:{uid}".encode()).digest()[:8], "little")


def _render_and_store(job: _RenderJob) -> tuple[str, list[str]]:
    views = render_study(job.findings, seed=job.seed, size=job.size, n_views=job.n_views)
    rng = np.random.default_rng([job.seed, 0xACC])
    paths = []
    for index, view in enumerate(views):
        stem = Path(job.folder) / job.uid / str(index)
        written = write_view(apply_profile(view, job.profile, rng), job.profile, stem, uid_seed=f"{job.uid}:{job.seed}")
        paths.append(written.relative_to(job.folder).as_posix())
    return job.uid, paths


PUBLIC_PROFILES = 6  # acquisition profiles of hospitals outside the federation, for the public renders


def _public_renders(
    studies: list[_Study], public: list[int], cfg: BenchmarkConfig
) -> list[tuple[str, int, AcquisitionProfile]]:
    """(render id, study index, profile) of every public render: ``public_renders`` other patients per
    report (a seed per render), each acquired by one of ``PUBLIC_PROFILES`` hospitals that are no site."""
    if not cfg.public_renders:
        return []
    profiles = site_profiles(cfg.sites + PUBLIC_PROFILES, cfg.seed)[cfg.sites :]
    rng = np.random.default_rng([cfg.seed, 0x9B1C])
    return [
        (f"{studies[i].report.uid}-r{k}", i, profiles[int(rng.integers(len(profiles)))])
        for i in public
        for k in range(cfg.public_renders)
    ]


def _render_all(
    studies: list[_Study],
    groups: dict[str, tuple[list[int], list[AcquisitionProfile]]],
    cfg: BenchmarkConfig,
    tmp: Path,
    progress: bool,
    public_renders: list[tuple[str, int, AcquisitionProfile]],
) -> dict[str, list[str]]:
    def job(uid: str, study: _Study, profile: AcquisitionProfile, group: str) -> _RenderJob:
        return _RenderJob(
            uid=uid,
            findings=tuple(study.findings),
            n_views=study.n_views,
            size=cfg.image_size,
            profile=profile,
            folder=str(tmp / group / "images"),
            seed=study_seed(cfg.seed, uid),
        )

    jobs = [
        job(studies[i].report.uid, studies[i], profile, group)
        for group, (members, profiles) in groups.items()
        for i, profile in zip(members, profiles)
    ]
    jobs += [job(uid, studies[i], profile, PUBLIC) for uid, i, profile in public_renders]
    total_views = sum(j.n_views for j in jobs)
    bar = tqdm(total=total_views, desc="rendering radiographs", unit="view", disable=not progress)
    paths: dict[str, list[str]] = {}
    for uid, written in _map(_render_and_store, jobs, cfg.workers or len(os.sched_getaffinity(0))):
        paths[uid] = written
        bar.update(len(written))
    bar.close()
    return paths


def _map(function, jobs: list, workers: int) -> Iterator:
    if workers <= 1 or len(jobs) < 2:
        yield from map(function, jobs)
        return
    # spawned workers: a forked one inherits whatever lock another thread of this process held at that
    # moment (a test run, a trainer's loader threads) and can wait on it forever
    with multiprocessing.get_context("spawn").Pool(workers) as pool:
        yield from pool.imap_unordered(function, jobs, chunksize=8)


# --------------------------------------------------------------------------------------------
# Reading a built benchmark
# --------------------------------------------------------------------------------------------


def load_benchmark(folder: str | os.PathLike) -> dict[str, Any]:
    """benchmark.json of a built benchmark (a clear error if ``folder`` is not one)."""
    marker = Path(folder) / SUMMARY_FILE
    if not marker.is_file():
        raise DataError(f"{folder}: not a benchmark folder (no benchmark.json); build one with `fedmrg prepare-data`")
    summary = load_json(marker)
    missing = [
        k
        for k in ("request", "counts", "acquisition", "prevalence")
        if not isinstance(summary, dict) or k not in summary
    ]
    if missing:
        raise DataError(f"{marker}: not a benchmark summary (missing {', '.join(missing)})")
    return summary


def format_summary(summary: dict[str, Any]) -> str:
    """A plain-text table: studies per split and group, views, storage, most common findings."""
    request = summary["request"]
    lines = [
        f"FL-MRG benchmark: source={request['source']} partition={request['partition']} sites={request['sites']} "
        f"seed={request['seed']} image_size={request['image_size']}",
        f"{'group':<12}{'train':>7}{'val':>6}{'test':>6}{'views':>7}  {'storage':<12} most common findings",
    ]
    for group, counts in summary["counts"].items():
        if group == PUBLIC:
            continue
        storage = summary["acquisition"].get(group, {}).get("storage", "mixed")
        prevalence = summary["prevalence"][group]
        common = sorted((c for c in prevalence if c != "normal" and prevalence[c] > 0), key=lambda c: -prevalence[c])[
            :3
        ]
        findings = ", ".join(f"{c} {prevalence[c]:.0%}" for c in common)
        lines.append(
            f"{group:<12}{counts['train']:>7}{counts['val']:>6}{counts['test']:>6}{counts['views']:>7}  "
            f"{storage:<12} normal {prevalence['normal']:.0%}; {findings}"
        )
    public = summary["counts"][PUBLIC]
    renders = f", {public['renders']} renders of them (base encoder)" if public.get("renders") else ""
    lines.append(f"{PUBLIC:<12} {public['reports']} reports (tokenizer, base LLM){renders}")
    skipped = summary["skipped"]
    if skipped["count"]:
        reasons = "; ".join(f"{n} {reason}" for reason, n in skipped["by_reason"].items())
        lines.append(f"skipped {skipped['count']} source items: {reasons} (listed in benchmark.json)")
    lines.append(f"built in {summary['build_seconds']} s")
    return "\n".join(lines)
