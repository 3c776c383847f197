"""load_image over PNG/JPEG/DICOM variants and broken files; writers round-trip."""

import logging
from pathlib import Path

import numpy as np
import pydicom
import pytest
from PIL import Image
from pydicom.dataset import Dataset, FileDataset, FileMetaDataset
from pydicom.encaps import encapsulate
from pydicom.uid import ExplicitVRLittleEndian, JPEGLosslessSV1, SecondaryCaptureImageStorage, generate_uid

from fedmrg.data.images import load_image, save_dicom, save_png
from fedmrg.errors import DataError


def _gradient(height: int = 24, width: int = 32) -> np.ndarray:
    return np.linspace(0.0, 1.0, height * width, dtype=np.float32).reshape(height, width)


def _write_dicom(path: Path, pixels: np.ndarray, photometric: str = "MONOCHROME2", **elements) -> Path:
    """A minimal DICOM written directly with pydicom, independent of save_dicom."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = elements.pop("transfer_syntax", ExplicitVRLittleEndian)
    ds = FileDataset("", Dataset(), file_meta=meta, preamble=b"\0" * 128)
    ds.SOPClassUID = SecondaryCaptureImageStorage
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.Modality = "DX"
    ds.PhotometricInterpretation = photometric
    ds.SamplesPerPixel = 3 if pixels.ndim == 3 and photometric == "RGB" else 1
    ds.Rows, ds.Columns = pixels.shape[-3:-1] if ds.SamplesPerPixel == 3 else pixels.shape[-2:]
    ds.BitsAllocated = 8 if pixels.dtype == np.uint8 else 16
    ds.BitsStored = ds.BitsAllocated
    ds.HighBit = ds.BitsStored - 1
    ds.PixelRepresentation = 0
    if ds.SamplesPerPixel == 3:
        ds.PlanarConfiguration = 0
    for keyword, value in elements.items():
        setattr(ds, keyword, value)
    if "PixelData" not in elements:
        ds.PixelData = pixels.tobytes()
    ds.save_as(path, enforce_file_format=True)
    return path


# ----------------------------------------------------------------------------------- PNG and JPEG


def test_png_8bit_exact(tmp_path):
    codes = np.arange(256, dtype=np.uint8).reshape(16, 16)
    Image.fromarray(codes).save(tmp_path / "a.png")
    image = load_image(tmp_path / "a.png")
    assert image.dtype == np.float32 and image.shape == (16, 16)
    np.testing.assert_array_equal(image, codes.astype(np.float32) / np.float32(255))


def test_png_16bit_exact(tmp_path):
    codes = np.array([[0, 1, 32768], [40000, 65534, 65535]], dtype=np.uint16)
    Image.fromarray(codes).save(tmp_path / "a.png")
    np.testing.assert_array_equal(load_image(tmp_path / "a.png"), codes.astype(np.float32) / np.float32(65535))


def test_jpeg_close_to_source(tmp_path):
    image = _gradient(64, 64)
    Image.fromarray(np.rint(image * 255).astype(np.uint8)).save(tmp_path / "a.jpg", quality=95)
    assert np.abs(load_image(tmp_path / "a.jpg") - image).max() < 0.03


@pytest.mark.parametrize("mode", ["RGB", "RGBA", "LA", "P"])
def test_colour_modes_become_luminance(tmp_path, mode):
    rgb = np.zeros((4, 4, 3), dtype=np.uint8)
    rgb[:2] = (255, 0, 0)
    rgb[2:] = (255, 255, 255)
    Image.fromarray(rgb).convert(mode).save(tmp_path / "a.png")
    image = load_image(tmp_path / "a.png")
    assert image.shape == (4, 4)
    assert image[0, 0] == pytest.approx(0.299, abs=0.01)  # red has luma 0.299
    assert image[3, 3] == pytest.approx(1.0)


def test_format_detected_by_content_not_suffix(tmp_path):
    Image.fromarray(np.full((4, 4), 51, dtype=np.uint8)).save(tmp_path / "png_named.jpg", format="PNG")
    _write_dicom(tmp_path / "dicom_named.img", np.full((4, 4), 7, dtype=np.uint16), WindowCenter=8, WindowWidth=2)
    assert load_image(tmp_path / "png_named.jpg")[0, 0] == pytest.approx(0.2)
    assert load_image(tmp_path / "dicom_named.img").shape == (4, 4)


# -------------------------------------------------------------------------------------------- DICOM


def _bright_square_display() -> np.ndarray:
    display = np.zeros((8, 8), dtype=np.float32)
    display[2:6, 2:6] = 1.0
    return display


def test_dicom_monochrome2_bright_codes_are_bright(tmp_path):
    codes = (_bright_square_display() * 4000).astype(np.uint16)
    image = load_image(_write_dicom(tmp_path / "a.dcm", codes, "MONOCHROME2"))
    np.testing.assert_allclose(image, _bright_square_display())


def test_dicom_monochrome1_is_inverted_for_display(tmp_path):
    codes = ((1.0 - _bright_square_display()) * 4000).astype(np.uint16)  # bright area stored low
    image = load_image(_write_dicom(tmp_path / "a.dcm", codes, "MONOCHROME1"))
    np.testing.assert_allclose(image, _bright_square_display())


def test_dicom_rescale_then_window(tmp_path):
    codes = np.array([[0, 50, 100], [150, 200, 75]], dtype=np.uint16)
    # value = 2 * code - 100; LINEAR window (100.5, 201) maps value v to v / 200, clipped
    path = _write_dicom(
        tmp_path / "a.dcm", codes, RescaleSlope=2, RescaleIntercept=-100, WindowCenter=100.5, WindowWidth=201
    )
    expected = np.array([[0.0, 0.0, 0.5], [1.0, 1.0, 0.25]], dtype=np.float32)
    np.testing.assert_allclose(load_image(path), expected, atol=1e-6)


def test_dicom_voi_lut_sequence(tmp_path):
    item = Dataset()
    item.LUTDescriptor = [4, 10, 8]  # 4 entries, first mapped value 10, 8-bit output
    item.add_new("LUTData", "US", [0, 51, 102, 255])
    codes = np.array([[0, 10, 11], [12, 13, 99]], dtype=np.uint16)
    path = _write_dicom(tmp_path / "a.dcm", codes, VOILUTSequence=[item])
    expected = np.array([[0, 0, 51], [102, 255, 255]], dtype=np.float32) / 255
    np.testing.assert_allclose(load_image(path), expected, atol=1e-6)


def test_dicom_without_window_is_min_max_normalised(tmp_path):
    codes = np.array([[100, 200], [300, 500]], dtype=np.uint16)
    image = load_image(_write_dicom(tmp_path / "a.dcm", codes))
    np.testing.assert_allclose(image, [[0.0, 0.25], [0.5, 1.0]])


def test_constant_dicom_gives_zeros(tmp_path):
    image = load_image(_write_dicom(tmp_path / "a.dcm", np.full((5, 6), 321, dtype=np.uint16)))
    assert image.shape == (5, 6) and not np.any(image)


def test_multiframe_dicom_uses_first_frame_and_warns(tmp_path, caplog):
    frames = np.stack([np.array([[0, 10], [20, 30]]), np.array([[30, 20], [10, 0]])]).astype(np.uint16)
    path = _write_dicom(tmp_path / "a.dcm", frames, NumberOfFrames=2)
    with caplog.at_level(logging.WARNING, logger="fedmrg.data.images"):
        image = load_image(path)
    np.testing.assert_allclose(image, [[0.0, 1 / 3], [2 / 3, 1.0]], atol=1e-6)
    assert "2 frames" in caplog.text


def test_rgb_dicom_becomes_luminance(tmp_path):
    pixels = np.zeros((2, 2, 3), dtype=np.uint8)
    pixels[0] = (255, 255, 255)
    pixels[1] = (0, 255, 0)
    image = load_image(_write_dicom(tmp_path / "a.dcm", pixels, "RGB"))
    np.testing.assert_allclose(image, [[1.0, 1.0], [0.587, 0.587]], atol=1e-3)


def test_dicom_without_pixel_data(tmp_path):
    path = _write_dicom(tmp_path / "nopix.dcm", np.zeros((2, 2), dtype=np.uint16))
    ds = pydicom.dcmread(path)
    del ds.PixelData
    ds.save_as(path)
    with pytest.raises(DataError, match=r"nopix\.dcm: .*no pixel data"):
        load_image(path)


def test_dicom_needing_missing_plugin_names_syntax(tmp_path):
    path = tmp_path / "jpegls.dcm"
    fake_frame = b"\xff\xd8\xff\xc3" + b"\0" * 16
    _write_dicom(
        path, np.zeros((2, 2), dtype=np.uint16), transfer_syntax=JPEGLosslessSV1, PixelData=encapsulate([fake_frame])
    )
    with pytest.raises(DataError, match=r"jpegls\.dcm: .*JPEG Lossless.*pylibjpeg"):
        load_image(path)


# ----------------------------------------------------------------------------------- broken files


def test_missing_file(tmp_path):
    with pytest.raises(DataError, match=r"nothere\.png: .*not found"):
        load_image(tmp_path / "nothere.png")


def test_zero_byte_file(tmp_path):
    (tmp_path / "empty.png").write_bytes(b"")
    with pytest.raises(DataError, match=r"empty\.png: empty file"):
        load_image(tmp_path / "empty.png")


def test_truncated_png(tmp_path):
    full = save_png(np.random.default_rng(0).random((64, 64)), tmp_path / "full.png", bits=16).read_bytes()
    (tmp_path / "half.png").write_bytes(full[: len(full) // 2])
    with pytest.raises(DataError, match=r"half\.png: truncated or corrupt image \(PIL: "):
        load_image(tmp_path / "half.png")


def test_non_image_file(tmp_path):
    (tmp_path / "notes.png").write_text("hello, I am a text file\n" * 20)
    (tmp_path / "notes.dcm").write_text("hello, I am a text file\n" * 20)
    with pytest.raises(DataError, match=r"notes\.png: not a recognised image"):
        load_image(tmp_path / "notes.png")
    with pytest.raises(DataError, match=r"notes\.dcm: not a DICOM image"):
        load_image(tmp_path / "notes.dcm")


def test_constant_png_is_fine(tmp_path):
    Image.fromarray(np.full((3, 3), 128, dtype=np.uint8)).save(tmp_path / "c.png")
    np.testing.assert_allclose(load_image(tmp_path / "c.png"), 128 / 255)


# -------------------------------------------------------------------------------------------- writers


@pytest.mark.parametrize("bits, tolerance", [(8, 0.5 / 255), (16, 0.5 / 65535)])
def test_save_png_round_trip(tmp_path, bits, tolerance):
    image = np.random.default_rng(1).random((20, 30)).astype(np.float32)
    path = save_png(image, tmp_path / "a.png", bits=bits)
    with Image.open(path) as stored:
        assert stored.mode == ("L" if bits == 8 else "I;16")
    assert np.abs(load_image(path) - image).max() <= tolerance + 1e-6


@pytest.mark.parametrize(
    "options",
    [
        {"photometric": "MONOCHROME2"},
        {"photometric": "MONOCHROME1"},
        {"photometric": "MONOCHROME1", "rescale_slope": 0.5, "rescale_intercept": -1024.0, "window": (0.0, 1600.0)},
        {"photometric": "MONOCHROME2", "bits_stored": 16, "window": (30000.0, 50000.0)},
    ],
)
def test_save_dicom_round_trip(tmp_path, options):
    image = np.random.default_rng(2).random((20, 30)).astype(np.float32)
    image[0, 0], image[0, 1] = 0.0, 1.0  # without a window the reader normalises min-max
    path = save_dicom(image, tmp_path / "a.dcm", **options)
    assert np.abs(load_image(path) - image).max() < 1e-3


def test_save_dicom_monochrome1_stores_inverted_values(tmp_path):
    path = save_dicom(_bright_square_display(), tmp_path / "a.dcm", photometric="MONOCHROME1", bits_stored=12)
    ds = pydicom.dcmread(path)
    raw = ds.pixel_array
    assert ds.PhotometricInterpretation == "MONOCHROME1"
    assert raw[3, 3] == 0 and raw[0, 0] == 4095  # bright in display = low stored value


def test_save_dicom_header(tmp_path):
    path = save_dicom(_gradient(), tmp_path / "a.dcm", bits_stored=12, window=(2047.5, 4096.0), patient_id="P7")
    ds = pydicom.dcmread(path)
    assert ds.file_meta.TransferSyntaxUID == ExplicitVRLittleEndian
    assert ds.SOPClassUID == ds.file_meta.MediaStorageSOPClassUID
    assert (ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation) == (16, 12, 11, 0)
    assert (ds.Rows, ds.Columns, ds.SamplesPerPixel) == (24, 32, 1)
    assert ds.Modality == "DX" and ds.PatientID == "P7"
    assert float(ds.WindowCenter) == 2047.5 and float(ds.WindowWidth) == 4096.0


def test_save_dicom_uids_deterministic_from_ids(tmp_path):
    first = pydicom.dcmread(save_dicom(_gradient(), tmp_path / "a.dcm", study_uid="study-1", sop_uid="study-1/v0"))
    again = pydicom.dcmread(save_dicom(_gradient(), tmp_path / "b.dcm", study_uid="study-1", sop_uid="study-1/v0"))
    explicit = pydicom.dcmread(save_dicom(_gradient(), tmp_path / "c.dcm", study_uid="1.2.3", sop_uid="1.2.3.4"))
    assert first.StudyInstanceUID == again.StudyInstanceUID and first.StudyInstanceUID.is_valid
    assert first.SOPInstanceUID == again.SOPInstanceUID != first.StudyInstanceUID
    assert (explicit.StudyInstanceUID, explicit.SOPInstanceUID) == ("1.2.3", "1.2.3.4")


def test_save_dicom_rejects_window_outside_code_range(tmp_path):
    with pytest.raises(ValueError, match="outside the 12-bit range"):
        save_dicom(_gradient(), tmp_path / "a.dcm", bits_stored=12, window=(0.0, 1000.0))
