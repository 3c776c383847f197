"""Shared fixtures. The real IU X-ray archive is cached under $FEDMRG_DATA_DIR/cache (the Makefile
points it at the repo's data/ folder), so it is fetched from the package index at most once."""

from __future__ import annotations

import io
import os
import tarfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
os.environ.setdefault("FEDMRG_DATA_DIR", str(REPO / "data"))
os.environ.setdefault("MPLBACKEND", "Agg")

REPORT_XML = """<?xml version="1.0" encoding="utf-8"?>
<eCitation>
   <meta type="rr"/>
   <uId id="{uid}"/>
   <pmcId id="{number}"/>
   <MedlineCitation Owner="Indiana University" Status="supplied by publisher">
      <Article PubModel="Electronic">
         <Abstract>
            <AbstractText Label="COMPARISON">None.</AbstractText>
            <AbstractText Label="INDICATION">XXXX-year-old male, chest pain.</AbstractText>
            {findings}
            <AbstractText Label="IMPRESSION">{impression}</AbstractText>
         </Abstract>
      </Article>
   </MedlineCitation>
   <MeSH>
      {mesh}
   </MeSH>
   {images}
</eCitation>
"""


def report_xml(
    uid="CXR1",
    number=1,
    findings="The heart is normal in size. The lungs are clear.",
    impression="No acute disease.",
    major=("normal",),
    automatic=(),
    n_images=2,
) -> bytes:
    """An ecgen-radiology document shaped like the real ones (FINDINGS=None leaves the section out)."""
    findings_xml = "" if findings is None else f'<AbstractText Label="FINDINGS">{findings}</AbstractText>'
    mesh = "".join(f"<major>{m}</major>" for m in major) + "".join(f"<automatic>{a}</automatic>" for a in automatic)
    images = "".join(
        f'<parentImage id="{uid}_IM-0001-{k}001"><figureId>F{k}</figureId><caption>Xray Chest PA and Lateral</caption>'
        f'<panel type="single"><url>/hadoop/storage/radiology/extract/{uid}_IM-0001-{k}001.jpg</url></panel>'
        "</parentImage>"
        for k in range(1, n_images + 1)
    )
    return REPORT_XML.format(
        uid=uid, number=number, findings=findings_xml, impression=impression, mesh=mesh, images=images
    ).encode()


def write_archive(path: Path, members: dict[str, bytes]) -> Path:
    with tarfile.open(path, "w:gz") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


@pytest.fixture(scope="session")
def real_archive() -> Path:
    """The real NLMCXR_reports.tgz (fetched once from the torchxrayvision wheel, then cached)."""
    from fedmrg.data.iuxray import resolve_reports_archive

    return resolve_reports_archive(None)


@pytest.fixture(scope="session")
def tiny_bench(tmp_path_factory) -> Path:
    """The `tiny` benchmark (synthetic reports, 2 sites, 64 px), built once per test session."""
    from fedmrg.config import load_config
    from fedmrg.data.benchmark import build_benchmark

    out = tmp_path_factory.mktemp("bench") / "tiny"
    build_benchmark(load_config("tiny").benchmark, out, progress=False)
    return out


@pytest.fixture(scope="session")
def tiny_base_llm(tiny_bench, tmp_path_factory) -> Path:
    """A small base LLM trained for a moment on the tiny benchmark's public reports."""
    from fedmrg.model.base_llm import make_base_llm

    out = tmp_path_factory.mktemp("llm") / "base"
    make_base_llm(tiny_bench / "public", out, "tiny", epochs=2, progress=False)
    return out


@pytest.fixture(scope="session")
def bench_command(tiny_bench, tiny_base_llm):
    """`fedmrg bench --quick` on the tiny benchmark and base LLM, as a user types it, with more arguments."""
    import sys

    def command(*args: str) -> list[str]:
        prefix = [sys.executable, "-m", "fedmrg.cli", "bench", "--quick", "--config", "tiny"]
        return [*prefix, "--data", str(tiny_bench), "--base-llm", str(tiny_base_llm), *args]

    return command


@pytest.fixture(scope="module")
def site_cfg(tiny_base_llm):
    """The tiny config for a site trainer: 3 rounds of 2 local steps on the CPU, the tiny base LLM."""
    from fedmrg.config import load_config

    cfg = load_config("tiny", {"fl.rounds": 3, "fl.local_steps": 2, "train.device": "cpu"})
    cfg.model.base_llm = str(tiny_base_llm)
    return cfg


@pytest.fixture(scope="session")
def quick_bench(bench_command, tmp_path_factory) -> dict[str, Path]:
    """`fedmrg bench --quick` on the tiny benchmark with local-only and the FedAvg job (one seed), as a user
    types it; also the FedAvg job's simulator run for the job tests. Its paths: work, out, page (results page)."""
    import subprocess

    root = tmp_path_factory.mktemp("quick-bench")
    paths = {"work": root / "work", "out": root / "results", "page": root / "docs" / "benchmark.md"}
    paths["page"].parent.mkdir()
    paths["page"].write_text("# Project\n\n## Results\n\n<!-- bench:begin -->\nold\n<!-- bench:end -->\n\nafter\n")
    command = bench_command(
        "--methods",
        "local",
        "fedavg_lora",
        "--seeds",
        "0",
        "--name",
        "t",
        "--work",
        str(paths["work"]),
        "--out",
        str(paths["out"]),
        "--results-page",
        str(paths["page"]),
        "--jobs",
        str(REPO / "jobs"),
        "--quiet",
    )
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    env.pop("FEDMRG_SITE_SETTINGS", None)
    done = subprocess.run(command, capture_output=True, text=True, env=env, timeout=900)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    paths["stdout"] = done.stdout
    return paths
