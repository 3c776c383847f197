"""Unusable files in a site's data: training leaves those studies out, names and counts them, and goes on;
a split that is scored must be whole, so there the first bad file stops the run with its name."""

from __future__ import annotations

import json
import shutil

import pytest

from fedmrg.config import load_config
from fedmrg.data.loaders import study_loader
from fedmrg.errors import DataError
from fedmrg.model.training import SUMMARY_FILE, train_centralized


@pytest.fixture
def damaged_site(tiny_bench, tmp_path):
    """site-1 of the tiny benchmark with one train study's image truncated and another's emptied."""
    site = tmp_path / "site-1"
    shutil.copytree(tiny_bench / "site-1", site)
    rows = json.loads((site / "annotation.json").read_text())
    truncated, emptied = (site / "images" / rows["train"][k]["image_path"][0] for k in (0, 1))
    truncated.write_bytes(truncated.read_bytes()[: truncated.stat().st_size // 2])
    emptied.write_bytes(b"")
    test_image = site / "images" / rows["test"][0]["image_path"][0]
    test_image.write_bytes(b"not an image")
    return site, [rows["train"][k]["id"] for k in (0, 1)], test_image


@pytest.mark.slow
def test_training_leaves_out_bad_studies_names_and_counts_them_and_finishes(
    damaged_site, tiny_base_llm, tmp_path, caplog
):
    site, bad_ids, _ = damaged_site
    cfg = load_config("tiny", {"train.epochs": 1, "train.device": "cpu"})
    summary = train_centralized(cfg, [site], tmp_path / "run", base_llm=tiny_base_llm, progress=False)
    assert set(summary["skipped_studies"]) == set(bad_ids)
    reasons = " ".join(summary["skipped_studies"].values())
    assert "empty file (0 bytes)" in reasons and "truncated or corrupt image" in reasons and ".png" in reasons
    assert summary["steps"] > 0 and (tmp_path / "run" / SUMMARY_FILE).is_file()
    assert json.loads((tmp_path / "run" / SUMMARY_FILE).read_text())["skipped_studies"] == summary["skipped_studies"]
    assert sum("left out" in r.message for r in caplog.records) == 2  # one warning per study, not per pass


def test_a_scored_split_stops_at_the_first_bad_file_with_its_name(damaged_site):
    site, _, test_image = damaged_site
    loader = study_loader(load_config("tiny"), [site], "test", train=False)
    with pytest.raises(DataError, match=f"{test_image.name}: not a recognised image"):
        next(iter(loader))


@pytest.fixture
def site_with_a_bare_row(tiny_bench, tmp_path):
    """site-1 of the tiny benchmark whose first train and first test rows lack their 'report' key."""
    site = tmp_path / "site-1"
    shutil.copytree(tiny_bench / "site-1", site)
    rows = json.loads((site / "annotation.json").read_text())
    for split in ("train", "test"):
        del rows[split][0]["report"]
    (site / "annotation.json").write_text(json.dumps(rows))
    return site, rows["train"][0]["id"], rows["test"][0]["id"]


def test_a_row_without_its_report_is_one_skipped_study_in_training_and_stops_scoring(site_with_a_bare_row):
    site, train_id, test_id = site_with_a_bare_row
    cfg = load_config("tiny")
    skipped = {}
    for batch in study_loader(cfg, [site], "train", train=True):
        skipped.update(batch.get("skipped", {}))
    assert skipped == {train_id: f"study {train_id!r}: no 'report' in the annotation row"}
    with pytest.raises(DataError, match=f"{test_id}.*no 'report'"):
        for _ in study_loader(cfg, [site], "test", train=False):
            pass


def test_a_file_in_which_no_row_has_a_report_is_a_schema_error(tiny_bench, tmp_path):
    from fedmrg.data.annotation import read_annotation

    site = tmp_path / "site-1"
    shutil.copytree(tiny_bench / "site-1", site)
    rows = json.loads((site / "annotation.json").read_text())
    for split_rows in rows.values():
        for row in split_rows:
            del row["report"]
    (site / "annotation.json").write_text(json.dumps(rows))
    with pytest.raises(DataError, match=r"train\[0\]: missing key 'report'"):
        read_annotation(site / "annotation.json")
