"""`fedmrg prepare-data` end to end: layout, disjointness, determinism, reuse, atomic output."""

import json
from pathlib import Path

import numpy as np
import pytest

from fedmrg.cli import main
from fedmrg.data import benchmark as benchmark_module
from fedmrg.data.annotation import SPLITS, read_annotation
from fedmrg.data.images import load_image

SYNTHETIC = ["prepare-data", "--config", "tiny", "--quiet", "--workers", "1"]


def _build(out: Path, *extra: str) -> int:
    return main([*SYNTHETIC, "--out", str(out), *extra])


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench") / "b"
    assert _build(out, "--studies", "90", "--sites", "3") == 0
    return out


def _ids(folder: Path) -> list[str]:
    ann = read_annotation(folder / "annotation.json")
    return [row["id"] for split in SPLITS for row in ann.rows(split)]


def test_layout_and_summary(built, capsys):
    summary = json.loads((built / "benchmark.json").read_text())
    assert set(summary["counts"]) == {"site-1", "site-2", "site-3", "test-global", "public"}
    for site in ("site-1", "site-2", "site-3"):
        counts = summary["counts"][site]
        assert counts["train"] > counts["test"] > 0
        assert summary["acquisition"][site]["storage"] in {"png8", "png16", "dicom-mono1", "dicom-mono2"}
        assert set(summary["prevalence"][site]) >= {"normal", "cardiomegaly", "effusion"}
    assert summary["counts"]["test-global"]["train"] == 0 and summary["counts"]["test-global"]["test"] > 0
    assert summary["seed"] == 0 and len(summary["source"]["sha256"]) == 64
    public = (built / "public" / "reports.jsonl").read_text().splitlines()
    assert len(public) == summary["counts"]["public"]["reports"] > 0


def test_no_study_appears_twice(built):
    groups = [_ids(built / g) for g in ("site-1", "site-2", "site-3", "test-global")]
    public = [json.loads(line)["id"] for line in (built / "public" / "reports.jsonl").read_text().splitlines()]
    everything = [i for g in groups for i in g] + public
    assert len(everything) == len(set(everything)) == 90


def test_images_load_and_follow_each_site_profile(built):
    summary = json.loads((built / "benchmark.json").read_text())
    for site in ("site-1", "site-2", "site-3"):
        ann = read_annotation(built / site / "annotation.json")
        row = ann.rows("train")[0]
        suffix = ".dcm" if summary["acquisition"][site]["storage"].startswith("dicom") else ".png"
        assert all(p.endswith(suffix) for p in row["image_path"])
        image = load_image(ann.image_root / row["image_path"][0])
        assert image.dtype == np.float32 and 0 <= image.min() < image.max() <= 1
    storages = {summary["acquisition"][s]["storage"] for s in ("site-1", "site-2", "site-3")}
    assert "dicom-mono1" in storages  # at least one hospital stores inverted DICOM


def test_build_is_deterministic_for_a_seed_and_any_number_of_workers(built, tmp_path):
    again = tmp_path / "again"
    assert main([*SYNTHETIC[:-1], "2", "--out", str(again), "--studies", "90", "--sites", "3"]) == 0
    files = sorted(p.relative_to(built) for p in built.rglob("*") if p.is_file() and p.name != "benchmark.json")
    assert files == sorted(p.relative_to(again) for p in again.rglob("*") if p.is_file() and p.name != "benchmark.json")
    for rel in files:  # every annotation and every image file, byte for byte
        assert (built / rel).read_bytes() == (again / rel).read_bytes(), rel
    first, second = (json.loads((b / "benchmark.json").read_text()) for b in (built, again))
    first.pop("build_seconds"), second.pop("build_seconds")
    assert first == second


def test_existing_output_is_kept_unless_asked(built, capsys):
    stamp = (built / "benchmark.json").stat().st_mtime
    assert _build(built, "--studies", "90", "--sites", "3", "--reuse") == 0  # same request: reused
    assert (built / "benchmark.json").stat().st_mtime == stamp
    assert _build(built, "--studies", "90", "--sites", "2", "--reuse") == 2  # other request
    assert "built with other settings; use --force" in capsys.readouterr().err
    assert _build(built, "--studies", "90", "--sites", "3") == 2
    assert "already exists" in capsys.readouterr().err


def test_failed_build_leaves_nothing_that_looks_complete(tmp_path, monkeypatch):
    calls = {"n": 0}
    real = benchmark_module.render_study

    def failing(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] > 5:
            raise RuntimeError("disk full")
        return real(*args, **kwargs)

    monkeypatch.setattr(benchmark_module, "render_study", failing)
    with pytest.raises(RuntimeError, match="disk full"):
        _build(tmp_path / "out")
    assert list(tmp_path.iterdir()) == []  # neither the output nor the temporary folder


def test_force_replaces_an_existing_build(tmp_path):
    out = tmp_path / "b"
    assert _build(out, "--studies", "40", "--sites", "2") == 0
    assert _build(out, "--studies", "50", "--sites", "2", "--force") == 0
    assert json.loads((out / "benchmark.json").read_text())["source"]["usable_studies"] == 50
    assert sorted(p.name for p in tmp_path.iterdir()) == ["b"]


def test_label_partition_skews_findings_more_than_iid(tmp_path):
    spread = {}
    for partition in ("label", "iid"):
        out = tmp_path / partition
        assert _build(out, "--studies", "200", "--sites", "2", "--partition", partition) == 0
        summary = json.loads((out / "benchmark.json").read_text())
        assert summary["request"]["partition"] == partition
        prevalence = [summary["prevalence"][f"site-{k}"] for k in (1, 2)]
        spread[partition] = sum(abs(prevalence[0][c] - prevalence[1][c]) for c in prevalence[0])
        if partition == "iid":
            sizes = [sum(summary["counts"][f"site-{k}"][s] for s in SPLITS) for k in (1, 2)]
            assert abs(sizes[0] - sizes[1]) <= 1
    assert spread["label"] > spread["iid"]


def test_force_never_deletes_a_folder_that_is_not_a_benchmark(tmp_path, capsys):
    precious = tmp_path / "thesis"
    precious.mkdir()
    (precious / "chapter1.tex").write_text("years of work")
    assert _build(precious, "--force") == 2
    assert "is not a benchmark folder; refusing to replace it" in capsys.readouterr().err
    assert (precious / "chapter1.tex").read_text() == "years of work"


def test_source_problems_are_skipped_and_listed(tmp_path):
    from conftest import report_xml, write_archive

    members = {f"ecgen-radiology/{k}.xml": report_xml(uid=f"CXR{k}", number=k) for k in range(1, 41)}
    members["ecgen-radiology/41.xml"] = report_xml(uid="CXR41", findings=None)
    members["ecgen-radiology/42.xml"] = report_xml(uid="CXR42", n_images=0)
    members["ecgen-radiology/43.xml"] = report_xml(uid="CXR43", major=("No Indexing",))
    members["ecgen-radiology/44.xml"] = report_xml(uid="CXR1")  # the same study id again
    members["ecgen-radiology/45.xml"] = b"<eCitation><broken"
    archive = write_archive(tmp_path / "NLMCXR_reports.tgz", members)
    out = tmp_path / "b"
    assert (
        main(
            [
                "prepare-data",
                "--source",
                "iu-xray",
                "--reports",
                str(archive),
                "--sites",
                "2",
                "--partition",
                "iid",
                "--image-size",
                "64",
                "--out",
                str(out),
                "--quiet",
                "--workers",
                "1",
            ]
        )
        == 0
    )
    summary = json.loads((out / "benchmark.json").read_text())
    assert summary["source"]["usable_studies"] == 40
    reasons = {item["item"]: item["reason"] for item in summary["skipped"]["items"]}
    assert reasons["ecgen-radiology/41.xml"] == "no FINDINGS section"
    assert reasons["ecgen-radiology/42.xml"] == "no images (parentImage) in the source"
    assert reasons["ecgen-radiology/43.xml"].startswith("not indexed by NLM")
    assert reasons["ecgen-radiology/44.xml"].startswith("duplicate study id CXR1")
    assert "well-formed" in reasons["ecgen-radiology/45.xml"]
    assert summary["skipped"]["count"] == 5


def test_too_few_studies_for_the_sites_is_a_clear_error(tmp_path, capsys):
    assert _build(tmp_path / "b", "--studies", "8", "--sites", "6", "--partition", "iid") == 2
    assert "would get no val study" in capsys.readouterr().err
    assert not (tmp_path / "b").exists()


def test_bad_report_archive_is_one_line_exit_2(tmp_path, capsys):
    bad = tmp_path / "NLMCXR_reports.tgz"
    bad.write_bytes(b"not a tarball")
    code = main(["prepare-data", "--source", "iu-xray", "--reports", str(bad), "--out", str(tmp_path / "b"), "--quiet"])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "NLMCXR_reports.tgz: corrupt or truncated" in err
    assert "Traceback" not in err


@pytest.mark.network
@pytest.mark.slow
def test_iu_xray_subset_from_the_real_archive(tmp_path, real_archive):
    out = tmp_path / "iu"
    code = main(
        [
            "prepare-data",
            "--source",
            "iu-xray",
            "--studies",
            "150",
            "--sites",
            "3",
            "--partition",
            "style",
            "--image-size",
            "96",
            "--out",
            str(out),
            "--quiet",
            "--workers",
            "2",
        ]
    )
    assert code == 0
    summary = json.loads((out / "benchmark.json").read_text())
    assert summary["source"]["reports_in_source"] == 3955
    assert summary["skipped"]["by_reason"]["no FINDINGS section"] == 530
    assert summary["skipped"]["by_reason"]["no images (parentImage) in the source"] > 0
    assert all(len(p) == 5 for p in summary["style_phrases"].values())
    ann = read_annotation(out / "site-1" / "annotation.json")
    row = ann.rows("train")[0]
    assert row["id"].startswith("CXR") and row["mesh_major"] and row["report"]


def test_show_data_writes_a_png(built, tmp_path):
    out = tmp_path / "preview.png"
    assert main(["show-data", str(built), "--out", str(out), "--per-site", "2"]) == 0
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_show_data_on_a_folder_that_is_not_a_benchmark(tmp_path, capsys):
    assert main(["show-data", str(tmp_path), "--out", str(tmp_path / "p.png")]) == 2
    assert "not a benchmark folder" in capsys.readouterr().err
