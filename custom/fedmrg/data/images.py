"""Reading and writing chest radiographs.

:func:`load_image` turns any supported file (PNG/JPEG 8/16-bit, DICOM) into one convention: a
float32 ``H x W`` array in ``[0, 1]`` where larger means brighter on a normal display (bone bright,
air dark). Every problem a site can cause with a file raises :class:`~fedmrg.errors.DataError`
whose one-line message names the file and the reason.

:func:`save_png` and :func:`save_dicom` write such arrays back; ``load_image`` recovers the input
of either within quantisation error. The benchmark uses them to store each simulated hospital's
images in that hospital's format.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np
import pydicom
from PIL import Image, UnidentifiedImageError
from pydicom.dataset import Dataset, FileDataset, FileMetaDataset
from pydicom.errors import InvalidDicomError
from pydicom.multival import MultiValue
from pydicom.pixels import apply_modality_lut, apply_voi, get_decoder, pixel_array
from pydicom.uid import (
    RE_VALID_UID,
    UID,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    SecondaryCaptureImageStorage,
    generate_uid,
)

from fedmrg.errors import DataError

logger = logging.getLogger(__name__)

PathLike = str | os.PathLike

_DICOM_SUFFIXES = (".dcm", ".dicom")
_DICOM_MAGIC_OFFSET = 128
_DICOM_MAGIC = b"DICM"
_MAX_UID_LENGTH = 64
_MAX_8BIT = 255.0
_MAX_16BIT = 65535.0
_LUMA_WEIGHTS = np.array([0.299, 0.587, 0.114])  # ITU-R BT.601, as PIL's convert("L")
_PIL_8BIT_MODES = frozenset(
    {"1", "L", "P", "LA", "La", "PA", "RGB", "RGBA", "RGBa", "RGBX", "CMYK", "YCbCr", "LAB", "HSV"}
)
_MONOCHROME = ("MONOCHROME1", "MONOCHROME2")
_COLOUR_PHOTOMETRICS = ("RGB", "YBR_FULL", "YBR_FULL_422", "YBR_RCT", "YBR_ICT")
_DICOM_READ_ERRORS = (InvalidDicomError, OSError, EOFError, ValueError, KeyError, TypeError)
_DICOM_DECODE_ERRORS = (ValueError, RuntimeError, AttributeError, KeyError, NotImplementedError, EOFError)


# ----------------------------------------------------------------------------------------- reading


def load_image(path: PathLike) -> np.ndarray:
    """Read a PNG, JPEG or DICOM radiograph as float32 ``H x W`` in ``[0, 1]``, display convention.

    The format is detected from the content (DICOM preamble, then whatever PIL recognises); a
    ``.dcm`` suffix also selects DICOM for files written without the 128-byte preamble.
    """
    path = Path(path)
    header = _read_header(path)
    if _is_dicom(path, header):
        return _load_dicom(path, has_preamble=header[_DICOM_MAGIC_OFFSET:] == _DICOM_MAGIC)
    return _load_pil_image(path)


def _read_header(path: Path) -> bytes:
    if not path.exists():
        raise DataError(f"{path}: image file not found")
    if path.is_dir():
        raise DataError(f"{path}: is a folder, not an image")
    if not path.is_file():
        raise DataError(f"{path}: not a regular file")
    with path.open("rb") as handle:
        header = handle.read(_DICOM_MAGIC_OFFSET + len(_DICOM_MAGIC))
    if not header:
        raise DataError(f"{path}: empty file (0 bytes)")
    return header


def _is_dicom(path: Path, header: bytes) -> bool:
    return header[_DICOM_MAGIC_OFFSET:] == _DICOM_MAGIC or path.suffix.lower() in _DICOM_SUFFIXES


def _load_pil_image(path: Path) -> np.ndarray:
    try:
        with Image.open(path) as img:
            _check_size(path, *img.size)
            img.load()  # PIL decodes lazily; force it so truncation is caught here
            return _pil_to_unit_range(img, path)
    except UnidentifiedImageError:
        raise DataError(f"{path}: not a recognised image (expected PNG, JPEG or DICOM)") from None
    except Image.DecompressionBombError as exc:
        raise DataError(f"{path}: image too large to decode safely ({exc})") from None
    except (OSError, SyntaxError, ValueError, EOFError) as exc:
        raise DataError(f"{path}: truncated or corrupt image (PIL: {exc})") from exc


def _max_pixels() -> int:
    return Image.MAX_IMAGE_PIXELS or 2**62


def _check_size(path: Path, width: int, height: int, samples: int = 1) -> None:
    if width * height * samples > _max_pixels():
        raise DataError(
            f"{path}: image too large to decode safely ({width} x {height} pixels; the limit is {_max_pixels()} pixels)"
        )


def _pil_to_unit_range(img: Image.Image, path: Path) -> np.ndarray:
    if img.mode.startswith("I;16"):
        return np.asarray(img, dtype=np.float32) / np.float32(_MAX_16BIT)
    if img.mode == "I":  # 32-bit container; PNG only puts 16-bit grey codes in it
        codes = np.asarray(img)
        if codes.min() < 0 or codes.max() > _MAX_16BIT:
            raise DataError(f"{path}: 32-bit pixels outside the 16-bit range are unsupported")
        return codes.astype(np.float32) / np.float32(_MAX_16BIT)
    if img.mode in _PIL_8BIT_MODES:
        return np.asarray(img.convert("L"), dtype=np.float32) / np.float32(_MAX_8BIT)
    raise DataError(f"{path}: unsupported pixel mode {img.mode!r}")


def _load_dicom(path: Path, has_preamble: bool) -> np.ndarray:
    ds = _read_dicom_dataset(path, has_preamble)
    pixels = _decode_first_frame(ds, path)
    photometric = str(ds.get("PhotometricInterpretation", "MONOCHROME2")).strip().upper()
    if photometric in _COLOUR_PHOTOMETRICS:
        return _colour_dicom_to_unit_range(pixels, ds)
    if photometric not in _MONOCHROME:
        raise DataError(f"{path}: unsupported DICOM photometric interpretation {photometric!r}")
    display = _grey_dicom_to_unit_range(pixels, ds, path)
    if photometric == "MONOCHROME1":  # MONOCHROME1 stores low values as white
        display = 1.0 - display
    return display.astype(np.float32)


def _read_dicom_dataset(path: Path, has_preamble: bool) -> Dataset:
    try:
        ds = pydicom.dcmread(path, force=not has_preamble)
    except _DICOM_READ_ERRORS as exc:
        raise DataError(f"{path}: not a readable DICOM file ({type(exc).__name__}: {exc})") from exc
    if not any(tag in ds for tag in ("PixelData", "FloatPixelData", "DoubleFloatPixelData")):
        if not has_preamble:
            raise DataError(f"{path}: not a DICOM image (no DICM preamble, no PixelData element)")
        raise DataError(f"{path}: DICOM file has no pixel data (PixelData element missing)")
    if "TransferSyntaxUID" not in ds.file_meta:
        implicit, little = ds.original_encoding
        ds.file_meta.TransferSyntaxUID = (
            ImplicitVRLittleEndian if implicit else ExplicitVRLittleEndian if little else ExplicitVRBigEndian
        )
    rows, columns = ds.get("Rows"), ds.get("Columns")
    if isinstance(rows, int) and isinstance(columns, int):
        _check_size(path, columns, rows, int(ds.get("SamplesPerPixel", 1) or 1))
    return ds


def _decode_first_frame(ds: Dataset, path: Path) -> np.ndarray:
    _check_decoder_available(ds, path)
    n_frames = int(ds.get("NumberOfFrames", 1) or 1)
    if n_frames > 1:
        logger.warning("%s: DICOM has %d frames; using the first one", path, n_frames)
    try:
        return pixel_array(ds, index=0)
    except _DICOM_DECODE_ERRORS as exc:
        reason = " ".join(f"{type(exc).__name__}: {exc}".split())
        syntax = UID(ds.file_meta.TransferSyntaxUID)
        raise DataError(f"{path}: cannot decode DICOM pixel data ({syntax.name}, {syntax}) ({reason})") from exc


def _check_decoder_available(ds: Dataset, path: Path) -> None:
    """Fail early, with a hint, when the transfer syntax needs a decoder plugin not installed."""
    file_meta = getattr(ds, "file_meta", None)
    syntax = file_meta.get("TransferSyntaxUID") if file_meta is not None else None
    if syntax is None:
        return
    syntax = UID(syntax)
    if not syntax.is_transfer_syntax:
        raise DataError(f"{path}: unknown DICOM transfer syntax {syntax}")
    if not syntax.is_compressed:
        return
    try:
        decoder = get_decoder(syntax)
    except NotImplementedError:
        reason = f"unsupported DICOM transfer syntax {syntax.name} ({syntax})"
        raise DataError(f"{path}: {reason}") from None
    if not decoder.is_available:
        raise DataError(
            f"{path}: DICOM pixel data uses transfer syntax {syntax.name} ({syntax}), whose "
            "decoder plugin is not installed; installing pylibjpeg with pylibjpeg-libjpeg/"
            "-openjpeg/-rle or python-gdcm would help"
        )


def _colour_dicom_to_unit_range(pixels: np.ndarray, ds: Dataset) -> np.ndarray:
    """pydicom returns YBR data converted to RGB; reduce it to luminance."""
    max_code = 2.0 ** int(ds.get("BitsStored", 8)) - 1.0
    luminance = pixels.astype(np.float64) @ _LUMA_WEIGHTS
    return np.clip(luminance / max_code, 0.0, 1.0).astype(np.float32)


def _grey_dicom_to_unit_range(pixels: np.ndarray, ds: Dataset, path: Path) -> np.ndarray:
    """Modality LUT (rescale), then VOI LUT or window, else min-max; result in [0, 1]."""
    values = np.asarray(apply_modality_lut(pixels, ds), dtype=np.float64)
    if ds.get("VOILUTSequence"):
        try:
            return _apply_voi_lut_sequence(values, ds)
        except (AttributeError, IndexError, KeyError, TypeError, ValueError) as exc:
            raise DataError(f"{path}: unusable DICOM VOI LUT ({exc})") from None
    window, function = _first_window(ds), _voi_function(ds)
    if window is not None and _window_is_valid(*window, function):
        return _apply_window(values, *window, function)
    if window is not None:
        logger.warning("%s: invalid DICOM window %s; normalising min-max instead", path, window)
    return _min_max_normalise(values)


def _apply_voi_lut_sequence(values: np.ndarray, ds: Dataset) -> np.ndarray:
    lut_bits = int(ds.VOILUTSequence[0].LUTDescriptor[2])
    mapped = apply_voi(np.rint(values).astype(np.int64), ds, index=0)
    return mapped.astype(np.float64) / (2.0**lut_bits - 1.0)


def _first_window(ds: Dataset) -> tuple[float, float] | None:
    """The first window, or None when absent or unreadable (empty values are common in real files)."""
    if "WindowCenter" not in ds or "WindowWidth" not in ds:
        return None
    try:
        return float(_first_value(ds.WindowCenter)), float(_first_value(ds.WindowWidth))
    except (TypeError, ValueError, IndexError):
        logger.warning("unreadable DICOM window %r / %r; normalising min-max instead", ds.WindowCenter, ds.WindowWidth)
        return None


def _first_value(value: object) -> object:
    return value[0] if isinstance(value, MultiValue) else value


def _voi_function(ds: Dataset) -> str:
    return str(ds.get("VOILUTFunction", "LINEAR")).strip().upper() or "LINEAR"


def _window_is_valid(center: float, width: float, function: str) -> bool:
    minimum_width = 1.0 if function == "LINEAR" else 0.0
    return np.isfinite(center) and np.isfinite(width) and width > minimum_width


def _apply_window(values: np.ndarray, center: float, width: float, function: str) -> np.ndarray:
    """DICOM PS3.3 C.11.2.1.2 window functions, output scaled to [0, 1] instead of the bit range."""
    if function == "SIGMOID":
        return 1.0 / (1.0 + np.exp(-4.0 * (values - center) / width))
    if function == "LINEAR_EXACT":
        scaled = (values - center) / width + 0.5
    else:
        scaled = (values - (center - 0.5)) / (width - 1.0) + 0.5
    return np.clip(scaled, 0.0, 1.0)


def _min_max_normalise(values: np.ndarray) -> np.ndarray:
    low, high = float(values.min()), float(values.max())
    if high <= low:
        return np.zeros_like(values)
    return (values - low) / (high - low)


# ----------------------------------------------------------------------------------------- writing


def save_png(image01: np.ndarray, path: PathLike, bits: int = 8) -> Path:
    """Write a ``[0, 1]`` image as an 8- or 16-bit grayscale PNG; returns the path."""
    if bits not in (8, 16):
        raise ValueError(f"PNG bit depth must be 8 or 16, got {bits}")
    codes = _quantise(image01, 2**bits - 1)
    path = _prepare_output(path)
    Image.fromarray(codes.astype(np.uint8 if bits == 8 else np.uint16)).save(path, format="PNG")
    return path


def save_dicom(
    image01: np.ndarray,
    path: PathLike,
    photometric: str = "MONOCHROME2",
    bits_stored: int = 12,
    rescale_slope: float = 1.0,
    rescale_intercept: float = 0.0,
    window: tuple[float, float] | None = None,
    patient_id: str = "ANON",
    study_uid: str | None = None,
    sop_uid: str | None = None,
) -> Path:
    """Write a ``[0, 1]`` display image as an Explicit VR Little Endian secondary-capture DICOM.

    ``window`` is ``(center, width)`` in rescaled (modality) units. With a window, the stored codes
    are chosen so that applying rescale and window gives back the image, which lets a site store
    its images in e.g. offset "HU-like" values. Without one, the image fills the whole code range
    and readers fall back to min-max normalisation. For MONOCHROME1 the codes are inverted, as
    that interpretation displays low values as white.

    ``study_uid`` and ``sop_uid`` may be DICOM UIDs, or any other id string from which a UID is
    derived deterministically; ``None`` draws a random one.
    """
    if photometric not in _MONOCHROME:
        raise ValueError(f"photometric must be one of {_MONOCHROME}, got {photometric!r}")
    if not 8 <= bits_stored <= 16:
        raise ValueError(f"bits_stored must be within 8..16, got {bits_stored}")
    if rescale_slope == 0:
        raise ValueError("rescale_slope must not be 0")
    stored_display = 1.0 - image01 if photometric == "MONOCHROME1" else image01
    codes = _display_to_codes(stored_display, bits_stored, rescale_slope, rescale_intercept, window)
    study = _uid_from(study_uid)
    sop = _uid_from(sop_uid)
    ds = _secondary_capture_dataset(sop, study, patient_id)
    _set_pixel_module(ds, codes, photometric, bits_stored)
    ds.RescaleSlope = _decimal_string(rescale_slope)
    ds.RescaleIntercept = _decimal_string(rescale_intercept)
    ds.RescaleType = "US"
    if window is not None:
        ds.WindowCenter = _decimal_string(window[0])
        ds.WindowWidth = _decimal_string(window[1])
    path = _prepare_output(path)
    ds.save_as(path, enforce_file_format=True)
    return path


def _display_to_codes(
    display01: np.ndarray,
    bits_stored: int,
    slope: float,
    intercept: float,
    window: tuple[float, float] | None,
) -> np.ndarray:
    max_code = 2**bits_stored - 1
    if window is None:
        return _quantise(display01, max_code)
    center, width = window
    if width <= 1:
        raise ValueError(f"window width must be > 1 (DICOM LINEAR function), got {width}")
    display01 = _as_unit_image(display01)
    modality_values = (display01 - 0.5) * (width - 1.0) + center - 0.5  # inverse of _apply_window
    codes = np.rint((modality_values - intercept) / slope)
    if codes.min() < 0 or codes.max() > max_code:
        raise ValueError(
            f"window {window} with rescale slope {slope} and intercept {intercept} needs codes "
            f"{codes.min():.0f}..{codes.max():.0f}, outside the {bits_stored}-bit range "
            f"0..{max_code}"
        )
    return codes.astype(np.uint16)


def _quantise(image01: np.ndarray, max_code: int) -> np.ndarray:
    return np.rint(_as_unit_image(image01) * max_code).astype(np.uint16)


def _as_unit_image(image01: np.ndarray) -> np.ndarray:
    image = np.asarray(image01, dtype=np.float64)
    if image.ndim != 2:
        raise ValueError(f"expected a 2-D grayscale image, got shape {image.shape}")
    if not np.all(np.isfinite(image)):
        raise ValueError("image contains NaN or infinite values")
    return np.clip(image, 0.0, 1.0)


def _uid_from(value: str | None) -> UID:
    if value is None:
        return generate_uid()
    if len(value) <= _MAX_UID_LENGTH and RE_VALID_UID.match(value):
        return UID(value)
    return generate_uid(entropy_srcs=[value])


def _decimal_string(value: float) -> str:
    """DICOM DS values hold at most 16 characters."""
    return f"{value:.10g}"


def _secondary_capture_dataset(sop_uid: UID, study_uid: UID, patient_id: str) -> FileDataset:
    file_meta = FileMetaDataset()
    file_meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    file_meta.MediaStorageSOPInstanceUID = sop_uid
    file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = FileDataset("", Dataset(), file_meta=file_meta, preamble=b"\0" * _DICOM_MAGIC_OFFSET)
    ds.SOPClassUID = SecondaryCaptureImageStorage
    ds.SOPInstanceUID = sop_uid
    ds.StudyInstanceUID = study_uid
    ds.SeriesInstanceUID = generate_uid(entropy_srcs=[str(study_uid), "series"])
    ds.PatientID = patient_id
    ds.PatientName = patient_id
    ds.Modality = "DX"
    ds.ConversionType = "SYN"
    ds.SeriesNumber = 1
    ds.InstanceNumber = 1
    return ds


def _set_pixel_module(ds: Dataset, codes: np.ndarray, photometric: str, bits_stored: int) -> None:
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = photometric
    ds.Rows, ds.Columns = codes.shape
    ds.BitsAllocated = 16
    ds.BitsStored = bits_stored
    ds.HighBit = bits_stored - 1
    ds.PixelRepresentation = 0
    ds.PixelData = codes.astype("<u2").tobytes()


def _prepare_output(path: PathLike) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    return path
