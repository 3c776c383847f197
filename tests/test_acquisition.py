"""Site acquisition profiles: determinism, heterogeneity, storage formats."""

import json

import numpy as np
import pydicom
import pytest
from PIL import Image

from fedmrg.data.images import load_image
from fedmrg.data.synthetic import AcquisitionProfile, apply_profile, site_profiles, write_view


def _phantom(size: int = 64) -> np.ndarray:
    """A smooth gradient with a bright disc: enough structure to see contrast, blur and noise."""
    yy, xx = np.mgrid[0:size, 0:size] / (size - 1)
    image = 0.15 + 0.5 * yy + 0.1 * xx
    return np.where((yy - 0.5) ** 2 + (xx - 0.4) ** 2 < 0.04, 0.9, image).astype(np.float32)


def _profile(**overrides) -> AcquisitionProfile:
    values = dict(
        name="test",
        gamma=1.0,
        contrast=1.0,
        exposure=0.0,
        noise_std=0.0,
        blur_sigma=0.0,
        resolution=1.0,
        storage="png8",
    )
    return AcquisitionProfile(**{**values, **overrides})


def test_site_profiles_deterministic_and_distinct():
    profiles = site_profiles(6, seed=3)
    assert profiles == site_profiles(6, seed=3)
    assert len({p.name for p in profiles}) == 6
    assert len({tuple(p.to_dict().values())[1:] for p in profiles}) == 6
    assert [p.name.split()[0] for p in profiles] == [f"site-{i}" for i in range(1, 7)]


def test_site_profiles_cover_the_required_kinds():
    first, second, *rest = site_profiles(4, seed=0)
    assert first.storage == "png8" and first.noise_std <= 0.005 and first.blur_sigma == 0.0
    assert second.storage == "dicom-mono1"
    assert any(p.resolution < 1 and p.blur_sigma > 0 for p in rest)
    assert any(p.noise_std > 3 * first.noise_std and p.gamma > 1.2 for p in rest)


def test_drawn_profiles_depend_on_seed_only_beyond_hand_made():
    assert site_profiles(6, seed=0)[:4] == site_profiles(6, seed=1)[:4]
    assert site_profiles(6, seed=0)[4:] != site_profiles(6, seed=1)[4:]
    assert site_profiles(5, seed=0) == site_profiles(6, seed=0)[:5]


def test_profiles_are_json_serialisable():
    profiles = site_profiles(8, seed=0)
    restored = [AcquisitionProfile(**d) for d in json.loads(json.dumps([p.to_dict() for p in profiles]))]
    assert restored == profiles


def test_invalid_profile_rejected():
    with pytest.raises(ValueError, match="storage"):
        _profile(storage="tiff")
    with pytest.raises(ValueError, match="resolution"):
        _profile(resolution=0.0)


def test_apply_profile_deterministic_for_a_seed():
    profile = site_profiles(4, seed=0)[3]
    first = apply_profile(_phantom(), profile, np.random.default_rng(7))
    again = apply_profile(_phantom(), profile, np.random.default_rng(7))
    other = apply_profile(_phantom(), profile, np.random.default_rng(8))
    np.testing.assert_array_equal(first, again)
    assert not np.array_equal(first, other)


@pytest.mark.parametrize("profile", site_profiles(6, seed=0), ids=lambda p: p.name.split()[0])
def test_apply_profile_output_range_and_size(profile):
    out = apply_profile(_phantom(64), profile, np.random.default_rng(0))
    expected_side = round(64 * profile.resolution)
    assert out.dtype == np.float32 and out.shape == (expected_side, expected_side)
    assert out.min() >= 0.0 and out.max() <= 1.0


def test_resolution_shrinks_image():
    out = apply_profile(_phantom(64)[:, :48], _profile(resolution=0.5), np.random.default_rng(0))
    assert out.shape == (32, 24)


def test_identity_profile_keeps_image():
    out = apply_profile(_phantom(), _profile(), np.random.default_rng(0))
    np.testing.assert_allclose(out, _phantom(), atol=1e-6)


def test_profiles_change_the_image_but_keep_the_anatomy():
    phantom = _phantom()
    clean_disc_contrast = phantom[32, 25] - phantom[32, 55]
    for profile in site_profiles(4, seed=0)[1:]:
        out = apply_profile(phantom, profile, np.random.default_rng(0))
        out = np.asarray(Image.fromarray(out).resize((64, 64), Image.Resampling.BILINEAR))
        assert np.abs(out - phantom).mean() > 0.02, profile.name  # visibly different
        disc, background = out[28:36, 22:28].mean(), out[28:36, 52:58].mean()
        assert disc - background > 0.3 * clean_disc_contrast, profile.name  # disc still stands out


def test_contrast_above_one_keeps_the_full_range():
    ramp = np.linspace(0, 1, 101, dtype=np.float32)[None, :]
    out = apply_profile(ramp, _profile(contrast=1.6), np.random.default_rng(0))
    assert out[0, 0] == pytest.approx(0.0, abs=1e-6) and out[0, -1] == pytest.approx(1.0, abs=1e-6)
    assert (out[0, 51] - out[0, 49]) / 0.02 == pytest.approx(1.6, rel=0.02)
    assert np.all(np.diff(out[0]) > 0)


@pytest.mark.parametrize(
    "storage, suffix, tolerance",
    [
        ("png8", ".png", 0.5 / 255 + 1e-6),
        ("png16", ".png", 1e-4),
        ("dicom-mono1", ".dcm", 1e-3),
        ("dicom-mono2", ".dcm", 1e-3),
    ],
)
def test_write_view_stores_in_profile_format(tmp_path, storage, suffix, tolerance):
    profile = _profile(storage=storage, noise_std=0.02, gamma=1.2)
    acquired = apply_profile(_phantom(), profile, np.random.default_rng(0))
    path = write_view(acquired, profile, tmp_path / "site" / "study-1.v0", uid_seed="study-1")
    assert path == tmp_path / "site" / f"study-1.v0{suffix}"
    assert np.abs(load_image(path) - acquired).max() <= tolerance
    if suffix == ".png":
        with Image.open(path) as stored:
            assert stored.mode == ("L" if storage == "png8" else "I;16")
    else:
        ds = pydicom.dcmread(path)
        assert ds.PhotometricInterpretation == ("MONOCHROME1" if storage == "dicom-mono1" else "MONOCHROME2")
        assert float(ds.RescaleSlope) != 1.0 and "WindowCenter" in ds


def test_write_view_dicom_uids_follow_the_study(tmp_path):
    profile = _profile(storage="dicom-mono1")
    front = pydicom.dcmread(write_view(_phantom(), profile, tmp_path / "s1.v0", uid_seed="s1"))
    side = pydicom.dcmread(write_view(_phantom(), profile, tmp_path / "s1.v1", uid_seed="s1"))
    rebuilt = pydicom.dcmread(write_view(_phantom(), profile, tmp_path / "again" / "s1.v0", uid_seed="s1"))
    assert front.StudyInstanceUID == side.StudyInstanceUID
    assert front.SOPInstanceUID != side.SOPInstanceUID
    assert rebuilt.SOPInstanceUID == front.SOPInstanceUID
