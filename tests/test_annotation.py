"""The R2Gen annotation.json layout: validation, missing images, MIMIC rows."""

import json

import pytest

from fedmrg.data.annotation import read_annotation, write_annotation
from fedmrg.errors import DataError


def _touch(root, *paths):
    for rel in paths:
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(b"x")


def test_round_trip_with_default_image_root(tmp_path):
    _touch(tmp_path / "images", "CXR1/0.png", "CXR1/1.png", "CXR2/0.png")
    rows = {
        "train": [{"id": "CXR1", "report": "normal.", "image_path": ["CXR1/0.png", "CXR1/1.png"]}],
        "test": [{"id": "CXR2", "report": "effusion.", "image_path": ["CXR2/0.png"], "extra": 1}],
    }
    write_annotation(tmp_path / "annotation.json", rows)
    data = json.loads((tmp_path / "annotation.json").read_text())
    assert set(data) == {"train", "val", "test"} and data["test"][0]["split"] == "test"
    ann = read_annotation(tmp_path / "annotation.json")
    assert ann.image_root == tmp_path / "images" and len(ann) == 2
    assert ann.rows("test")[0]["extra"] == 1 and ann.rows("val") == []


def test_mimic_rows_keep_study_and_subject_ids(tmp_path):
    row = {
        "id": "02aa804e-bde0afdd",
        "study_id": 50414267,
        "subject_id": 10000032,
        "report": "No acute process.",
        "image_path": ["p10/p10000032/s50414267/02aa804e-bde0afdd.jpg"],
        "split": "train",
    }
    _touch(tmp_path / "files", row["image_path"][0])
    (tmp_path / "annotation.json").write_text(json.dumps({"train": [row], "val": [], "test": []}))
    ann = read_annotation(tmp_path / "annotation.json", image_root=tmp_path / "files")
    assert ann.rows("train")[0]["study_id"] == 50414267 and ann.rows("train")[0]["subject_id"] == 10000032


def test_missing_images_are_skipped_counted_and_listed(tmp_path):
    _touch(tmp_path / "images", "A/0.png")
    rows = {
        "train": [
            {"id": "A", "report": "r", "image_path": ["A/0.png"]},
            {"id": "B", "report": "r", "image_path": ["B/0.png"]},
        ]
    }
    write_annotation(tmp_path / "annotation.json", rows)
    ann = read_annotation(tmp_path / "annotation.json")
    assert [r["id"] for r in ann.rows("train")] == ["A"]
    assert len(ann.skipped) == 1 and ann.skipped[0].item == "train/B" and "B/0.png" in ann.skipped[0].reason


def test_no_usable_row_is_an_error(tmp_path):
    write_annotation(tmp_path / "annotation.json", {"train": [{"id": "B", "report": "r", "image_path": ["B/0.png"]}]})
    with pytest.raises(DataError, match=r"annotation.json: no usable study \(1 skipped; first: image not found"):
        read_annotation(tmp_path / "annotation.json")


@pytest.mark.parametrize(
    "content, message",
    [
        ("{not json", r"not valid JSON \(line 1"),
        ("[]", "the top level must be an object"),
        ('{"training": []}', "unknown split 'training'"),
        ('{"train": {}}', "train: must be a list"),
        ('{"train": [{"id": "A", "image_path": ["a.png"]}]}', r"train\[0\]: missing key 'report'"),
        (
            '{"train": [{"id": "A", "report": 3, "image_path": ["a.png"]}]}',
            r"train\[0\] \(id=A\): 'report' must be a string",
        ),
        ('{"train": [{"id": "A", "report": "r", "image_path": []}]}', "'image_path' must be a non-empty list"),
        (
            '{"train": [{"id": "A", "report": "r", "image_path": ["a"]}], '
            '"test": [{"id": "A", "report": "r", "image_path": ["a"]}]}',
            "id 'A' appears twice",
        ),
    ],
)
def test_schema_errors_name_file_row_and_key(tmp_path, content, message):
    (tmp_path / "annotation.json").write_text(content)
    with pytest.raises(DataError, match=message):
        read_annotation(tmp_path / "annotation.json", check_images=False)


def test_missing_annotation_file(tmp_path):
    with pytest.raises(DataError, match="annotation file not found"):
        read_annotation(tmp_path / "annotation.json")


@pytest.mark.parametrize("image", ["../outside.png", "/etc/hostname", "link/x.png", "a/../../outside.png"])
def test_an_image_path_that_leaves_the_image_root_is_refused_naming_the_row(tmp_path, image):
    site = tmp_path / "site"
    (site / "images").mkdir(parents=True)
    (tmp_path / "outside.png").write_bytes(b"x")
    (site / "images" / "link").symlink_to(tmp_path)
    (site / "annotation.json").write_text(
        json.dumps({"train": [{"id": "s1", "report": "Clear.", "image_path": [image]}]}), encoding="utf-8"
    )
    for check_images in (True, False):  # training and scoring read the file without checking images
        with pytest.raises(DataError, match=r"train\[0\] \(id=s1\): image_path .* leaves the image root"):
            read_annotation(site / "annotation.json", check_images=check_images)


def test_an_image_path_that_names_a_folder_says_so(tmp_path):
    from fedmrg.data.images import load_image

    site = tmp_path / "site"
    (site / "images" / "study").mkdir(parents=True)
    (site / "images" / "ok.png").write_bytes(b"x")
    rows = [
        {"id": "s1", "report": "Clear.", "image_path": ["study"]},
        {"id": "s2", "report": "Clear.", "image_path": ["ok.png"]},
    ]
    (site / "annotation.json").write_text(json.dumps({"train": rows}), encoding="utf-8")
    annotation = read_annotation(site / "annotation.json")
    assert [s.reason for s in annotation.skipped] == [f"is a folder, not an image: {site / 'images' / 'study'}"]
    with pytest.raises(DataError, match="is a folder, not an image"):
        load_image(site / "images" / "study")
