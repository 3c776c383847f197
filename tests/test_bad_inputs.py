"""Bad input that a user or a site hands us, beyond what test_images / test_annotation / test_config cover:
huge images, unusual DICOM transfer syntaxes, empty and non-English reports, odd annotation rows, config
typos. Each is either read correctly or refused with a one-line message naming the file (or key) and the
reason; a training run leaves out the studies it cannot use and lists them; nothing is dropped silently."""

from __future__ import annotations

import io
import json
import os
import shutil
import struct
import subprocess
import sys
import textwrap
import zlib
from pathlib import Path

import numpy as np
import pydicom
import pytest
from PIL import Image
from pydicom.dataset import Dataset, FileDataset, FileMetaDataset
from pydicom.encaps import encapsulate
from pydicom.pixels import get_decoder
from pydicom.uid import (
    UID,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    JPEGBaseline8Bit,
    RLELossless,
    SecondaryCaptureImageStorage,
    generate_uid,
)

from fedmrg.config import load_config
from fedmrg.data.annotation import Annotation, read_annotation, write_annotation
from fedmrg.data.cleaning import clean_report
from fedmrg.data.images import load_image
from fedmrg.errors import ConfigError, DataError
from fedmrg.labels.labeler import label_report
from fedmrg.labels.observations import POSITIVE


def _codes(height: int = 6, width: int = 8) -> np.ndarray:
    """16-bit codes 0..max: without a window, load_image min-max normalises them to codes / max."""
    return (np.arange(height * width, dtype=np.uint16).reshape(height, width) * 80).astype(np.uint16)


def _dicom_dataset(pixels: np.ndarray, transfer_syntax: UID = ExplicitVRLittleEndian, **elements) -> FileDataset:
    """A minimal grey secondary-capture dataset, independent of fedmrg's writer (``PixelData`` may be given)."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = transfer_syntax
    ds = FileDataset("", Dataset(), file_meta=meta, preamble=b"\0" * 128)
    ds.SOPClassUID = SecondaryCaptureImageStorage
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.Modality = "DX"
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.SamplesPerPixel = 1
    ds.Rows, ds.Columns = pixels.shape
    ds.BitsAllocated = 8 if pixels.dtype == np.uint8 else 16
    ds.BitsStored = ds.BitsAllocated
    ds.HighBit = ds.BitsStored - 1
    ds.PixelRepresentation = 0
    ds.PixelData = pixels.tobytes()
    for keyword, value in elements.items():
        setattr(ds, keyword, value)
    return ds


def _write(ds: Dataset, path: Path) -> Path:
    pydicom.dcmwrite(path, ds, enforce_file_format=True)  # encodes as the file meta's transfer syntax says
    return path


def _png_header_only(path: Path, width: int, height: int) -> Path:
    """A PNG whose header claims ``width x height`` 8-bit grey pixels, with almost no image data (a few bytes)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")
    )
    return path


def _png(path: Path, size: int = 16) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((size, size), 100, dtype=np.uint8)).save(path)
    return path


# ------------------------------------------------------------------------------------------ huge images


def test_png_beyond_pils_hard_limit_is_refused_before_decoding(tmp_path):
    path = _png_header_only(tmp_path / "bomb.png", 20000, 20000)  # 400 Mpx, over twice PIL's limit
    with pytest.raises(DataError, match=r"bomb\.png: image too large to decode safely"):
        load_image(path)


def test_png_beyond_pils_limit_is_refused_before_decoding(tmp_path):
    path = _png_header_only(tmp_path / "big.png", 13000, 13000)  # 169 Mpx: above PIL's 89 Mpx, below 2x
    with pytest.raises(DataError, match=r"big\.png: .*too large"):
        load_image(path)


def test_uncompressed_dicom_claiming_60000_square_fails_fast_naming_the_file(tmp_path):
    path = _write(_dicom_dataset(np.zeros((2, 2), np.uint16), Rows=60000, Columns=60000), tmp_path / "huge.dcm")
    with pytest.raises(DataError, match=r"huge\.dcm: "):
        load_image(path)  # pydicom compares the PixelData length with Rows x Columns before allocating


def _load_in_a_small_address_space(path: Path, limit_bytes: int = 3 * 1024**3) -> str:
    """``load_image(path)`` in a child process that cannot map more than ``limit_bytes``: its outcome as one line."""
    code = textwrap.dedent(f"""
        import resource, sys
        resource.setrlimit(resource.RLIMIT_AS, ({limit_bytes}, {limit_bytes}))
        from fedmrg.data.images import load_image
        try:
            image = load_image(sys.argv[1])
        except BaseException as exc:
            print(type(exc).__name__ + ": " + str(exc).replace("\\n", " | "))
        else:
            print("loaded", image.shape)
    """)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, "-c", code, str(path)], capture_output=True, text=True, timeout=120, env=env)
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout.strip().splitlines()[-1]


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="RLIMIT_AS bounds the child's memory on Linux")
def test_compressed_dicom_claiming_60000_square_is_refused_without_allocating_it(tmp_path):
    ds = _dicom_dataset(_codes(4, 4))
    ds.compress(RLELossless)
    ds.Rows, ds.Columns = 60000, 60000
    outcome = _load_in_a_small_address_space(_write(ds, tmp_path / "huge_rle.dcm"))
    assert outcome.startswith("DataError: ") and "huge_rle.dcm" in outcome and "too large" in outcome, outcome


# ---------------------------------------------------------------------------------- transfer syntaxes


def _big_endian(path: Path) -> Path:
    ds = _dicom_dataset(_codes(), ExplicitVRBigEndian, PixelData=_codes().astype(">u2").tobytes())
    _write(ds, path)
    assert b"\x00\x28\x00\x10US\x00\x02\x00\x06" in path.read_bytes()  # Rows = 6, really big endian
    return path


def _deflated(path: Path) -> Path:
    _write(_dicom_dataset(_codes(), DeflatedExplicitVRLittleEndian), path)
    assert pydicom.dcmread(path).file_meta.TransferSyntaxUID == DeflatedExplicitVRLittleEndian
    return path


def _rle(path: Path) -> Path:
    ds = _dicom_dataset(_codes())
    ds.compress(RLELossless)  # pydicom's own RLE encoder
    return _write(ds, path)


def _jpeg_baseline_bytes(image01: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(np.rint(image01 * 255).astype(np.uint8)).save(buffer, format="JPEG", quality=95)
    return buffer.getvalue()


def _jpeg_baseline(path: Path) -> Path:
    expected = _codes() / _codes().max()
    ds = _dicom_dataset(
        np.zeros(expected.shape, np.uint8), JPEGBaseline8Bit, PixelData=encapsulate([_jpeg_baseline_bytes(expected)])
    )
    return _write(ds, path)


@pytest.mark.parametrize(
    "writer, tolerance",
    [(_big_endian, 1e-6), (_deflated, 1e-6), (_rle, 1e-6), (_jpeg_baseline, 0.03)],
    ids=["explicit-big-endian", "deflated-explicit-little-endian", "rle-lossless", "jpeg-baseline"],
)
def test_unusual_transfer_syntaxes_load_correctly(tmp_path, writer, tolerance):
    image = load_image(writer(tmp_path / "a.dcm"))
    assert image.dtype == np.float32 and image.shape == _codes().shape
    np.testing.assert_allclose(image, _codes() / _codes().max(), atol=tolerance)


def test_jpeg_baseline_without_a_decoder_names_the_file_and_the_syntax(tmp_path, monkeypatch):
    path = _jpeg_baseline(tmp_path / "jpeg.dcm")
    monkeypatch.setattr(get_decoder(JPEGBaseline8Bit), "_available", {})  # as if Pillow had no JPEG support
    with pytest.raises(DataError, match=r"jpeg\.dcm: .*JPEG Baseline.*1\.2\.840\.10008\.1\.2\.4\.50.*not installed"):
        load_image(path)


@pytest.mark.parametrize("syntax", ["1.2.3.4.5.6", "1.2.826.0.1.3680043.2.1143.9"], ids=["unknown", "private"])
def test_unknown_transfer_syntax_names_the_file_and_the_uid(tmp_path, syntax):
    path = _write(_dicom_dataset(_codes(), UID(syntax)), tmp_path / "odd.dcm")
    with pytest.raises(DataError, match=rf"odd\.dcm: .*{syntax.replace('.', r'[.]')}"):
        load_image(path)


@pytest.mark.parametrize(
    "syntax, name", [(RLELossless, "RLE Lossless"), (JPEGBaseline8Bit, "JPEG Baseline")], ids=["rle", "jpeg-baseline"]
)
def test_corrupt_compressed_pixel_data_gives_one_line_naming_file_and_syntax(tmp_path, syntax, name):
    junk = b"\xff\xd8\xff\xe0" + b"\0" * 60
    pixels = np.zeros((6, 8), np.uint8 if syntax == JPEGBaseline8Bit else np.uint16)
    path = _write(_dicom_dataset(pixels, syntax, PixelData=encapsulate([junk])), tmp_path / "junk.dcm")
    with pytest.raises(DataError) as caught:
        load_image(path)
    message = str(caught.value)
    assert "junk.dcm: " in message and "\n" not in message and name in message, message


def _without_transfer_syntax(path: Path, with_file_meta: bool) -> Path:
    ds = _dicom_dataset(_codes())
    if with_file_meta:  # file meta present (with the DICM preamble) but its (0002,0010) left out
        del ds.file_meta.TransferSyntaxUID
        pydicom.dcmwrite(path, ds, implicit_vr=True, little_endian=True)
    else:  # a bare data set, no preamble, no file meta: implicit VR little endian, the DICOM default
        bare = Dataset()
        for element in ds:
            bare.add(element)
        pydicom.dcmwrite(path, bare, implicit_vr=True, little_endian=True)
        assert path.read_bytes()[128:132] != b"DICM"
    return path


@pytest.mark.parametrize("with_file_meta", [False, True], ids=["bare-data-set", "meta-without-syntax"])
def test_dicom_without_a_transfer_syntax_is_read_as_its_encoding(tmp_path, with_file_meta):
    path = _without_transfer_syntax(tmp_path / "old.dcm", with_file_meta)
    np.testing.assert_allclose(load_image(path), _codes() / _codes().max(), atol=1e-6)


# --------------------------------------------------------------------------------------------- reports

_OTHER_LANGUAGES = {
    "de": "Herzgröße normal. Kein Pleuraerguss, kein Pneumothorax.",
    "zh": "心脏大小正常。双肺未见实变。",
    "fr": "Épanchement pleural droit. Cardiomégalie.",
}


def test_reports_in_other_languages_round_trip_and_survive_cleaning_and_labeling(tmp_path):
    rows = [
        {"id": f"Studie-Ä{k}-{lang}", "report": text, "image_path": [f"Röntgen/{lang}.png"]}
        for k, (lang, text) in enumerate(_OTHER_LANGUAGES.items())
    ]
    write_annotation(tmp_path / "annotation.json", {"train": rows})
    assert "Herzgröße" in (tmp_path / "annotation.json").read_text(encoding="utf-8")  # UTF-8, not \u escapes
    for row in rows:
        _png(tmp_path / "images" / row["image_path"][0])
    read = read_annotation(tmp_path / "annotation.json").rows("train")
    assert [(r["id"], r["report"]) for r in read] == [(r["id"], r["report"]) for r in rows]
    for dataset in ("iu_xray", "mimic_cxr"):
        assert clean_report(_OTHER_LANGUAGES["de"], dataset).startswith("herzgröße normal . kein pleuraerguss")
        assert clean_report(_OTHER_LANGUAGES["zh"], dataset).startswith(_OTHER_LANGUAGES["zh"])  # letters kept
    for text in _OTHER_LANGUAGES.values():
        assert set(label_report(text)) == set(label_report("The lungs are clear."))  # no crash, all 14 keys
    assert {k: v for k, v in label_report(_OTHER_LANGUAGES["zh"]).items() if v is not None} == {"No Finding": POSITIVE}


def test_non_ascii_ids_and_image_paths_load_through_the_study_dataset(tmp_path):
    from fedmrg.data.dataset import StudyDataset
    from fedmrg.data.transforms import eval_transforms

    _png(tmp_path / "images" / "Röntgen" / "肺 frontal.png", size=20)
    records = [{"id": "Studie-Ä1", "report": "Herz normal.", "image_path": ["Röntgen/肺 frontal.png"]}]
    study = StudyDataset(records, tmp_path / "images", eval_transforms(32, tmp_path / "images"))[0]
    assert study["id"] == "Studie-Ä1" and tuple(study["image"].shape) == (1, 1, 32, 32)


def test_latin1_annotation_names_the_file_the_byte_and_the_line(tmp_path):
    text = '{"train": [\n{"id": "A", "report": "Kein Pleuraergu\u00df.", "image_path": ["a.png"]}]}'
    (tmp_path / "annotation.json").write_bytes(text.encode("latin-1"))
    with pytest.raises(DataError, match=r"annotation\.json: not UTF-8 text \(byte 0xdf at offset \d+, line 2\)"):
        read_annotation(tmp_path / "annotation.json", check_images=False)


def _train_annotation(texts: list[str]) -> Annotation:
    rows = [{"id": f"S{k}", "report": text, "image_path": ["a.png"]} for k, text in enumerate(texts)]
    return Annotation(path=Path("/site/annotation.json"), image_root=Path("/site/images"), splits={"train": rows})


@pytest.mark.parametrize(
    "texts",
    [
        ["心脏大小正常。双肺未见实变。", "未见气胸。", "双肺纹理清晰。"],
        [
            "Herz normal groß. Kein Pleuraerguss. Kein Pneumothorax.",
            "Keine Pneumonie. Lunge frei.",
            "Kein Pneumothorax, keine Stauung.",
        ],  # shares 'Pneumothorax' with English: labeled positive
    ],
    ids=["chinese", "german"],
)
def test_site_check_warns_when_train_reports_are_not_english(texts):
    from fedmrg.ops.site_check import WARN, check_labels

    result = check_labels(_train_annotation(texts), load_config("tiny"))
    assert result.status == WARN and "English" in result.detail and "annotation.json" in result.where, result


@pytest.mark.parametrize("stop", ["\u2026", "\uff1b"], ids=["ellipsis", "full-width-semicolon"])
def test_labeler_ends_sentences_at_unicode_punctuation(stop):
    assert label_report("No pleural effusion. 2 cm nodule in the right upper lobe.")["Lung Lesion"] == POSITIVE
    assert label_report(f"No pleural effusion{stop} 2 cm nodule in the right upper lobe.")["Lung Lesion"] == POSITIVE


# ------------------------------------------------------------------------------------ annotation rows


_ROW = {"id": "A", "report": "r", "image_path": ["a.png"]}
_BAD_PATHS = r"train\[0\] \(id=A\): 'image_path' must be a non-empty list of paths"


@pytest.mark.parametrize(
    "content, message",
    [
        ({}, "no split"),
        ({"train": None}, "train: must be a list of rows, got NoneType"),
        ({"train": ["CXR1"]}, r"train\[0\]: a row must be an object, got str"),
        ({"train": [_ROW | {"image_path": [1, 2]}]}, _BAD_PATHS),
        ({"train": [_ROW | {"image_path": [None]}]}, _BAD_PATHS),
        ({"train": [_ROW | {"image_path": [["a.png"]]}]}, _BAD_PATHS),
        ({"train": [_ROW | {"image_path": {"frontal": "a.png"}}]}, _BAD_PATHS),
        ({"train": [_ROW | {"image_path": [""]}]}, _BAD_PATHS),
        ({"train": [_ROW | {"id": 1.5}]}, r"train\[0\]: 'id' must be a string"),
        ({"train": [_ROW | {"id": None}]}, r"train\[0\]: 'id' must be a string"),
        ({"train": [_ROW | {"id": True}]}, r"train\[0\]: 'id' must be a string"),
        ({"train": [_ROW | {"id": ["A"]}]}, r"train\[0\]: 'id' must be a string"),
        ({"train": [_ROW, _ROW | {"image_path": ["b.png"]}]}, r"train\[1\]: id 'A' appears twice \(also in train\)"),
        ({"train": [_ROW | {"id": 7}], "test": [_ROW | {"id": "7"}]}, r"test\[0\]: id '7' appears twice"),
        ({"train": [_ROW | {"report": None}]}, r"train\[0\] \(id=A\): 'report' must be a string"),
    ],
    ids=[
        "no-split",
        "split-null",
        "row-not-object",
        "paths-ints",
        "paths-null",
        "paths-nested",
        "paths-mapping",
        "paths-empty-string",
        "id-float",
        "id-null",
        "id-bool",
        "id-list",
        "duplicate-in-split",
        "duplicate-int-and-string",
        "report-null",
    ],
)
def test_annotation_schema_errors_name_the_file_the_row_and_the_key(tmp_path, content, message):
    (tmp_path / "annotation.json").write_text(json.dumps(content))
    with pytest.raises(DataError, match=r"annotation\.json: " + message):
        read_annotation(tmp_path / "annotation.json", check_images=False)


def test_a_split_key_given_twice_is_an_error(tmp_path):
    (tmp_path / "annotation.json").write_text('{"train": [], "train": []}')
    with pytest.raises(DataError, match=r"annotation\.json: key given twice: 'train'"):
        read_annotation(tmp_path / "annotation.json", check_images=False)


def test_integer_ids_become_strings(tmp_path):
    (tmp_path / "annotation.json").write_text(json.dumps({"train": [_ROW | {"id": 50414267}]}))
    assert read_annotation(tmp_path / "annotation.json", check_images=False).rows("train")[0]["id"] == "50414267"


def test_an_annotation_with_only_a_train_split_reads_and_a_missing_split_is_named(tmp_path):
    from fedmrg.data.loaders import study_loader

    _png(tmp_path / "site" / "images" / "a.png")
    (tmp_path / "site" / "annotation.json").write_text(json.dumps({"train": [_ROW]}))
    annotation = read_annotation(tmp_path / "site" / "annotation.json")
    assert [r["id"] for r in annotation.rows("train")] == ["A"] and annotation.rows("test") == []
    with pytest.raises(DataError, match=r"site: no 'test' studies to use"):
        study_loader(load_config("tiny"), [tmp_path / "site"], "test", train=False)


@pytest.mark.parametrize("study_id", ["", "   "], ids=["empty", "blank"])
def test_an_empty_study_id_is_a_schema_error(tmp_path, study_id):
    (tmp_path / "annotation.json").write_text(json.dumps({"train": [_ROW | {"id": study_id}]}))
    with pytest.raises(DataError, match=r"annotation\.json: train\[0\]: 'id' must be a non-empty string"):
        read_annotation(tmp_path / "annotation.json", check_images=False)


# ------------------------------------------------------------------------------- training on bad rows


@pytest.fixture
def site_with_bad_rows(tiny_bench, tmp_path):
    """site-1 of the tiny benchmark with an empty report, a blank report and a missing image among its train rows."""
    site = Path(shutil.copytree(tiny_bench / "site-1", tmp_path / "site-1"))
    rows = json.loads((site / "annotation.json").read_text())
    rows["train"][0]["report"] = ""
    rows["train"][1]["report"] = " \n\t "
    missing = site / "images" / rows["train"][2]["image_path"][0]
    missing.unlink()
    (site / "annotation.json").write_text(json.dumps(rows))
    return site, [rows["train"][k]["id"] for k in range(3)], missing


def _train(site: Path, base_llm: Path, out: Path) -> dict:
    from fedmrg.model.training import train_centralized

    cfg = load_config("tiny", {"train.epochs": 1, "train.device": "cpu"})
    return train_centralized(cfg, [site], out, base_llm=base_llm, progress=False)  # one whole epoch


@pytest.mark.slow
def test_training_leaves_out_studies_with_empty_reports_and_lists_them(site_with_bad_rows, tiny_base_llm, tmp_path):
    site, (empty, blank, _), _ = site_with_bad_rows
    skipped = _train(site, tiny_base_llm, tmp_path / "run")["skipped_studies"]
    assert {empty, blank} <= set(skipped), skipped
    assert "empty" in skipped[empty].lower() and "empty" in skipped[blank].lower(), skipped


@pytest.mark.slow
def test_training_summary_lists_studies_whose_images_are_missing(site_with_bad_rows, tiny_base_llm, tmp_path):
    site, (_, _, lost), missing = site_with_bad_rows
    skipped = _train(site, tiny_base_llm, tmp_path / "run")["skipped_studies"]
    assert lost in skipped and missing.name in skipped[lost], skipped


# ------------------------------------------------------------------------------------------ config typos


@pytest.mark.parametrize(
    "text, message",
    [
        ("benchmrk:\n  sites: 3\n", r"benchmrk: unknown key; did you mean 'benchmark'\?"),
        ("trian:\n  epochs: 1\n", r"trian: unknown key; did you mean 'train'\?"),
        ("fl:\n  round: 3\n", r"fl\.round: unknown key; did you mean 'fl\.rounds'\?"),
        ("fl:\n  Rounds: 3\n", r"fl\.Rounds: unknown key; did you mean 'fl\.rounds'\?"),
        ("fl:\n  rounds: five\n", r"fl\.rounds: must be an integer, got 'five'"),
        ("fl:\n  rounds: 3.5\n", r"fl\.rounds: must be an integer, got 3\.5"),
        ("fl:\n  rounds:\n", r"fl\.rounds: must be an integer, got None"),
        ("train:\n  lr: fast\n", r"train\.lr: must be a number, got 'fast'"),
        ("model:\n  target_modules: q_proj\n", r"model\.target_modules: must be a list, got str"),
        ("- benchmark\n- fl\n", "the top level must be a mapping of sections"),
        ("tiny\n", "the top level must be a mapping of sections"),
    ],
    ids=[
        "section",
        "section-2",
        "fl-key",
        "fl-key-case",
        "fl-type",
        "fl-float-for-int",
        "fl-null",
        "train-type",
        "list-for-string",
        "yaml-list",
        "yaml-scalar",
    ],
)
def test_config_typos_name_the_file_and_the_dotted_key(tmp_path, text, message):
    path = tmp_path / "site.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=r"site\.yaml: " + message):
        load_config(path)


@pytest.mark.parametrize(
    "text, key, value",
    [("train:\n  lr: 1e-4\n", ("train", "lr"), 1e-4), ("fl:\n  dp_delta: 1e-5\n", ("fl", "dp_delta"), 1e-5)],
    ids=["lr", "dp_delta"],
)
def test_exponent_floats_without_a_dot_are_numbers(tmp_path, text, key, value):
    path = tmp_path / "site.yaml"
    path.write_text(text)
    assert getattr(getattr(load_config(path), key[0]), key[1]) == pytest.approx(value)


@pytest.mark.parametrize(
    "text, key",
    [("train:\n  epochs: 1\ntrain:\n  lr: 0.1\n", "train"), ("fl:\n  rounds: 3\n  rounds: 30\n", "rounds")],
    ids=["section", "key"],
)
def test_a_config_key_given_twice_is_an_error(tmp_path, text, key):
    path = tmp_path / "site.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=r"site\.yaml: ") as caught:
        load_config(path)
    assert key in str(caught.value) and "twice" in str(caught.value), caught.value
