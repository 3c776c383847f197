"""Simulated hospital acquisition profiles: :func:`apply_profile` passes a clean rendering through a
site's detector blur, resolution, noise and contrast curve; :func:`write_view` stores it in the site's format."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image
from pydicom.uid import generate_uid
from scipy.ndimage import gaussian_filter
from scipy.optimize import brentq

from fedmrg.data.images import save_dicom, save_png

# Real sites differ in detector, processing and storage: contrast curve, brightness, noise, blur,
# resolution, file format. The benchmark renders one clean radiograph per view and passes it
# through the profile of the site that "acquired" it, so that a site-wise partition also differs in
# image style. :func:`apply_profile` simulates the acquisition, :func:`write_view` the storage.

STORAGES = ("png8", "png16", "dicom-mono1", "dicom-mono2")

# How DICOM sites store values: 12-bit codes rescaled to offset "HU-like" units, with a window
# that maps back to the display image (see images.save_dicom).
_DICOM_ENCODING = {
    "bits_stored": 12,
    "rescale_slope": 0.5,
    "rescale_intercept": -1024.0,
    "window": (0.0, 1600.0),
}
_ELECTRONIC_NOISE_FRACTION = 0.25  # share of the noise variance that does not depend on signal


@dataclass(frozen=True)
class AcquisitionProfile:
    """How one simulated site acquires and stores its radiographs."""

    name: str
    gamma: float  # contrast curve exponent (display = x ** gamma)
    contrast: float  # slope of the contrast stretch around mid-grey (1 = unchanged)
    exposure: float  # additive brightness offset
    noise_std: float  # quantum-like noise (signal-dependent + electronic), at full brightness
    blur_sigma: float  # detector blur, pixels at the rendered size
    resolution: float  # 1.0 native; 0.5 = acquired at half resolution and stored at that size
    storage: str  # one of STORAGES

    def __post_init__(self) -> None:
        if self.storage not in STORAGES:
            raise ValueError(f"{self.name}: storage must be in {STORAGES}, got {self.storage!r}")
        if self.gamma <= 0 or self.contrast <= 0:
            raise ValueError(f"{self.name}: gamma and contrast must be > 0")
        if self.noise_std < 0 or self.blur_sigma < 0:
            raise ValueError(f"{self.name}: noise_std and blur_sigma must be >= 0")
        if not 0 < self.resolution <= 1:
            raise ValueError(f"{self.name}: resolution must be in (0, 1], got {self.resolution}")

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


# Hand-made sites, in the order they are handed out. Site 1 is the clean reference; the others
# each stress one kind of heterogeneity while keeping the anatomy readable.
# Columns: name, gamma, contrast, exposure, noise_std, blur_sigma, resolution, storage.
_HAND_MADE_PROFILES = (
    AcquisitionProfile("site-1 clean png8", 1.0, 1.0, 0.0, 0.004, 0.0, 1.0, "png8"),
    AcquisitionProfile("site-2 dicom-mono1 high-contrast", 0.8, 1.5, -0.04, 0.012, 0.6, 1.0, "dicom-mono1"),
    AcquisitionProfile("site-3 low-res blurry png16", 1.1, 0.8, 0.06, 0.008, 1.5, 0.5, "png16"),
    AcquisitionProfile("site-4 noisy high-gamma dicom-mono2", 1.5, 1.15, 0.03, 0.045, 0.3, 1.0, "dicom-mono2"),
)
_RESOLUTION_CHOICES = (1.0, 0.75, 0.5)


def site_profiles(n_sites: int, seed: int) -> list[AcquisitionProfile]:
    """Profiles for sites 1..n: the hand-made ones first, then ones drawn with ``seed``.

    Drawn site ``k`` depends only on ``(seed, k)``, so adding sites does not change earlier ones.
    """
    if n_sites < 1:
        raise ValueError(f"n_sites must be >= 1, got {n_sites}")
    hand_made = list(_HAND_MADE_PROFILES[:n_sites])
    drawn = [_draw_profile(index, seed) for index in range(len(hand_made) + 1, n_sites + 1)]
    return hand_made + drawn


def _draw_profile(site_number: int, seed: int) -> AcquisitionProfile:
    rng = np.random.default_rng([seed, site_number])
    storage = STORAGES[int(rng.integers(len(STORAGES)))]
    return AcquisitionProfile(
        name=f"site-{site_number} drawn {storage}",
        gamma=_rounded(rng.uniform(0.75, 1.45)),
        contrast=_rounded(rng.uniform(0.8, 1.4)),
        exposure=_rounded(rng.uniform(-0.06, 0.06)),
        noise_std=_rounded(rng.uniform(0.003, 0.035)),
        blur_sigma=_rounded(rng.uniform(0.0, 1.5)),
        resolution=float(_RESOLUTION_CHOICES[int(rng.integers(len(_RESOLUTION_CHOICES)))]),
        storage=storage,
    )


def _rounded(value: float) -> float:
    """Plain floats with few digits: readable in benchmark.json."""
    return round(float(value), 4)


def apply_profile(image01: np.ndarray, profile: AcquisitionProfile, rng: np.random.Generator) -> np.ndarray:
    """Simulate acquiring a clean ``[0, 1]`` rendering at a site; float32 ``[0, 1]``.

    Order follows the physics: detector blur at the rendered size, sampling at the detector's
    resolution, noise on the raw signal, then the site's processing curve (gamma, contrast,
    exposure), which also shapes the noise.
    """
    image = np.clip(np.asarray(image01, dtype=np.float64), 0.0, 1.0)
    if profile.blur_sigma > 0:
        image = gaussian_filter(image, profile.blur_sigma, mode="nearest")
    image = _resample(image, profile.resolution)
    image = _add_noise(image, profile.noise_std, rng)
    image = np.clip(image, 0.0, 1.0) ** profile.gamma
    image = _stretch_contrast(image, profile.contrast) + profile.exposure
    return np.clip(image, 0.0, 1.0).astype(np.float32)


def _resample(image: np.ndarray, resolution: float) -> np.ndarray:
    if resolution == 1.0:
        return image
    height, width = image.shape
    size = (max(1, round(width * resolution)), max(1, round(height * resolution)))
    resized = Image.fromarray(image.astype(np.float32)).resize(size, Image.Resampling.BOX)
    return np.asarray(resized, dtype=np.float64)


def _add_noise(image: np.ndarray, noise_std: float, rng: np.random.Generator) -> np.ndarray:
    """Noise whose std grows with brightness (dense regions get fewer photons), plus a floor."""
    if noise_std == 0:
        return image
    relative_variance = _ELECTRONIC_NOISE_FRACTION + (1 - _ELECTRONIC_NOISE_FRACTION) * image
    return image + rng.normal(size=image.shape) * noise_std * np.sqrt(relative_variance)


def _stretch_contrast(image: np.ndarray, contrast: float) -> np.ndarray:
    """Slope ``contrast`` at mid-grey; keeps 0 and 1 fixed when stretching, so nothing clips.

    Below 1 it is linear towards mid-grey (a washed-out look); above 1 a normalised tanh curve.
    """
    if contrast <= 1.0:
        return 0.5 + contrast * (image - 0.5)
    steepness = _tanh_steepness(contrast)
    return 0.5 + 0.5 * np.tanh(steepness * (image - 0.5)) / np.tanh(steepness / 2)


def _tanh_steepness(contrast: float) -> float:
    """Steepness k whose normalised tanh has slope ``contrast`` at 0.5: k / (2 tanh(k/2))."""
    return brentq(lambda k: k / (2 * np.tanh(k / 2)) - contrast, 1e-6, 200.0)


def write_view(image01: np.ndarray, profile: AcquisitionProfile, path_stem: Path, uid_seed: str) -> Path:
    """Store an acquired view in the profile's format; returns ``path_stem`` plus ``.png``/``.dcm``.

    ``uid_seed`` identifies the study (e.g. its id): it fixes the DICOM study UID, and with the
    file name the instance UID, so rebuilding the benchmark gives identical files.
    """
    path_stem = Path(path_stem)
    if profile.storage in ("png8", "png16"):
        bits = 8 if profile.storage == "png8" else 16
        return save_png(image01, path_stem.with_name(path_stem.name + ".png"), bits=bits)
    photometric = "MONOCHROME1" if profile.storage == "dicom-mono1" else "MONOCHROME2"
    return save_dicom(
        image01,
        path_stem.with_name(path_stem.name + ".dcm"),
        photometric=photometric,
        study_uid=generate_uid(entropy_srcs=[uid_seed]),
        sop_uid=generate_uid(entropy_srcs=[uid_seed, path_stem.name]),
        **_DICOM_ENCODING,
    )
