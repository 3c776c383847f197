"""Synthetic chest radiographs (frontal PA and lateral) that show structured findings.

No real images are available, so the benchmark draws each study from its findings
(:mod:`fedmrg.data.findings`). The picture is built as a projected *density* (a line integral of
attenuation, one float per pixel) and shown as ``1 - exp(-density)``: air is dark, soft tissue grey,
bone and metal bright, as radiographs are displayed. Acquisition effects (contrast curves, noise,
detector blur) are left to :mod:`fedmrg.data.acquisition`.

Coordinates are normalised to the image: ``x = column / size``, ``y = row / size``. On the frontal
view the patient's right is on the image left; on the lateral view ``x`` runs from anterior (left)
to posterior (right) and ``y`` is shared with the frontal view, so a finding keeps its height.

Randomness: the patient's anatomy comes from ``np.random.default_rng(seed)``
(:func:`sample_anatomy`), textures of each view and each finding from their own streams derived
from the seed, so adding a finding never changes the patient or the other findings.

Rendering has two steps per finding kind: a *modifier* changes the anatomy (cardiomegaly widens
the heart, hyperinflation lowers and flattens the diaphragm, scoliosis bends the spine) and a
*painter* adds density on the views (an effusion fills the base, a pacemaker adds metal).
Lung findings replace the air of a lung (:func:`_fill_air`), so overlapping findings never make a
lung denser than solid tissue. Kind ``"other"`` draws nothing.
"""

from __future__ import annotations

import dataclasses
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
from scipy import ndimage

from fedmrg.data.findings import FINDING_KINDS, Finding

_SIGN = {"right": -1.0, "left": 1.0}  # frontal image x direction of the patient's side
_LUNG_SIDES = ("right", "left")
_TEXTURE_STREAM, _FINDING_STREAM = 0x7E47, 0xF1D


# ================================================================================================
# Anatomy
# ================================================================================================


@dataclass(frozen=True)
class Anatomy:
    """Patient geometry, normalised to the image (see the module docstring for the axes)."""

    midline_x: float  # thorax centre (frontal)
    thorax_half_width: float  # inner rib margin at the widest level: the CTR denominator is twice this
    body_half_width: float
    apex_y: float  # lung apices
    dome_y_right: float  # top of each hemidiaphragm
    dome_y_left: float
    sulcus_depth: float  # how far the costophrenic angles lie below the domes
    mediastinum_half_width: float
    mediastinal_shift: float  # + toward the patient's left (image right)
    mediastinal_widening: float  # extra upper-mediastinal half width
    heart_right: float  # right heart border, distance from the mediastinal centre
    heart_left: float  # left heart border, distance from the mediastinal centre
    heart_half_height: float
    heart_roundness: float  # 0 normal; 1 globular (pericardial effusion)
    knob_y: float  # aortic knob centre
    knob_offset: float  # aortic knob centre, distance left of the mediastinal centre
    knob_radius: float
    aorta_ectasia: float  # 0 normal; tortuous / dilated thoracic aorta up to ~1
    pulmonary_trunk: float  # 0 normal; enlarged main pulmonary artery up to ~1
    hilum_y_right: float
    hilum_y_left: float
    spine_x: float  # spinous line; differs from midline_x when the patient is rotated
    spine_curve: float  # scoliosis: signed lateral displacement of the curve apex
    spine_curve_y: float  # height of the scoliosis apex
    spine_half_width: float
    vertebra_height: float
    rib_spacing: float
    rib_arch: float
    rib_start_y: float
    clavicle_y: float
    breast_size: float  # 0 = no breast shadows
    breast_absent: str | None  # side of a mastectomy
    lung_air: float  # share of the chest's density that the lungs' air removes
    marking_gain: float  # vessel prominence
    bone_density: float
    gastric_bubble: float  # 0 = none
    lat_front_x: float  # lateral: inner anterior chest wall
    lat_back_x: float  # lateral: posterior lung margin
    lat_spine_x: float  # lateral: centre of the vertebral bodies
    kyphosis: float  # lateral: posterior bowing of the thoracic spine
    lat_heart_depth: float  # lateral: anteroposterior half-extent of the heart
    pectus: float  # < 0 excavatum, > 0 carinatum


def sample_anatomy(rng: np.random.Generator) -> Anatomy:
    """A plausible adult chest with natural variation in size, shape, inspiration and positioning."""
    u = rng.uniform
    thorax = u(0.34, 0.39)
    apex = u(0.09, 0.13)
    dome_right = u(0.63, 0.71)
    ctr = u(0.40, 0.49)
    heart_width = ctr * 2 * thorax
    right_share = u(0.28, 0.36)
    midline = u(0.485, 0.515)
    rib_spacing = (dome_right - apex) * u(0.088, 0.098)
    return Anatomy(
        midline_x=midline,
        thorax_half_width=thorax,
        body_half_width=min(0.5, thorax + u(0.08, 0.12)),
        apex_y=apex,
        dome_y_right=dome_right,
        dome_y_left=dome_right + u(0.0, 0.04),
        sulcus_depth=u(0.07, 0.1),
        mediastinum_half_width=u(0.05, 0.062),
        mediastinal_shift=0.0,
        mediastinal_widening=0.0,
        heart_right=right_share * heart_width,
        heart_left=(1 - right_share) * heart_width,
        heart_half_height=u(0.12, 0.14),
        heart_roundness=0.0,
        knob_y=apex + u(0.16, 0.2),
        knob_offset=u(0.05, 0.065),
        knob_radius=u(0.024, 0.03),
        aorta_ectasia=0.0,
        pulmonary_trunk=0.0,
        hilum_y_right=apex + (dome_right - apex) * u(0.5, 0.56),
        hilum_y_left=apex + (dome_right - apex) * u(0.45, 0.51),
        spine_x=midline + u(-0.012, 0.012),
        spine_curve=0.0,
        spine_curve_y=u(0.4, 0.55),
        spine_half_width=u(0.027, 0.033),
        vertebra_height=rib_spacing * u(0.92, 1.0),
        rib_spacing=rib_spacing,
        rib_arch=u(0.12, 0.15),
        rib_start_y=apex - u(0.0, 0.02),
        clavicle_y=apex + u(0.045, 0.075),
        breast_size=u(0.4, 1.0) if rng.random() < 0.45 else 0.0,
        breast_absent=None,
        lung_air=u(0.74, 0.82),
        marking_gain=u(0.85, 1.15),
        bone_density=u(0.85, 1.1),
        gastric_bubble=u(0.3, 1.0) if rng.random() < 0.7 else 0.0,
        lat_front_x=u(0.15, 0.19),
        lat_back_x=u(0.83, 0.87),
        lat_spine_x=u(0.72, 0.75),
        kyphosis=u(0.01, 0.03),
        lat_heart_depth=u(0.17, 0.2),
        pectus=0.0,
    )


# ------------------------------------------------------------------------------------------------
# Geometry shared by the base drawing, the painters and region_box
# ------------------------------------------------------------------------------------------------


def _dome_y(anat: Anatomy, side: str) -> float:
    return anat.dome_y_right if side == "right" else anat.dome_y_left


def _mediastinum_x(anat: Anatomy) -> float:
    return anat.midline_x + anat.mediastinal_shift


def _diaphragm_y(anat: Anatomy, side: str, x: np.ndarray) -> np.ndarray:
    """Frontal height of one hemidiaphragm at ``x``: a dome, deepest at the costophrenic angle."""
    lateral = np.abs(x - anat.midline_x) / anat.thorax_half_width
    return _dome_y(anat, side) + anat.sulcus_depth * ((lateral - 0.45) / 0.55) ** 2


def _lung_bounds(anat: Anatomy, side: str, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Frontal x-extent (low, high) of one lung per row, with a rounded apex (low > high: no lung).

    The medial bound is the cardiomediastinal silhouette, so heart and aorta shape the lung edge.
    """
    mid, medc, half = anat.midline_x, _mediastinum_x(anat), anat.thorax_half_width
    dome = _dome_y(anat, side)
    rounding_end = anat.apex_y + 0.25 * (dome - anat.apex_y)
    r = np.clip((rounding_end - y) / (rounding_end - anat.apex_y), 0, None)
    s = np.where(y < anat.apex_y, 0.0, np.sqrt(np.clip(1 - r**2, 0, 1)))
    widening = 0.84 + 0.16 * np.clip((y - anat.apex_y) / (dome - anat.apex_y), 0, 1) ** 0.7
    apex_centre = 0.42 * half
    lateral = apex_centre + (half * widening - apex_centre) * s
    sign = _SIGN[side]
    outer = mid + sign * lateral
    inner = (medc + sign * _silhouette_half_width(anat, side, y)) * s + (mid + sign * apex_centre) * (1 - s)
    return (outer, inner) if side == "right" else (inner, outer)


def _heart_rows(anat: Anatomy) -> tuple[float, float]:
    """Top and bottom of the heart: it hangs below the pulmonary trunk (higher when enlarged) and
    rests on the diaphragm, its lowest part hidden below the domes."""
    bottom = 0.4 * anat.dome_y_right + 0.6 * anat.dome_y_left + 0.03
    top = anat.knob_y + 0.085 - 2 * (anat.heart_half_height - 0.13)
    return min(top, bottom - 0.15), bottom


def _heart_half_width(anat: Anatomy, side: str, y: np.ndarray) -> np.ndarray:
    """Distance of one heart border from the mediastinal centre per row (0 above the heart).

    Right border: the convex right atrium. Left border: the left atrial appendage, then the broad
    convex left ventricle curving in toward the apex. Pericardial fluid makes the heart globular.
    """
    top, bottom = _heart_rows(anat)
    t = (y - top) / (bottom - top)
    if side == "right":
        shape = np.sin(0.5 * np.pi * np.clip(t / 0.6, 0, 1)) ** (0.7 - 0.35 * anat.heart_roundness)
        shape = shape * (1 - 0.12 * np.clip((t - 0.6) / 0.4, 0, 1) ** 2)
        return np.where(t > 0, anat.heart_right * shape, 0.0)
    rise = np.sin(0.5 * np.pi * np.clip(t / 0.65, 0, 1)) ** (0.75 - 0.4 * anat.heart_roundness)
    tuck = 1 - 0.12 * np.clip((t - 0.78) / 0.22, 0, 1) ** 2
    return np.where(t > 0, anat.heart_left * rise * tuck, 0.0)


def _silhouette_half_width(anat: Anatomy, side: str, y: np.ndarray) -> np.ndarray:
    """Cardiomediastinal silhouette per row: mediastinum, aortic knob, pulmonary trunk, heart."""
    upper = np.exp(-(((y - anat.knob_y - 0.03) / 0.09) ** 2))
    width = anat.mediastinum_half_width + anat.mediastinal_widening * upper
    if side == "right":
        ascending = 0.03 * anat.aorta_ectasia * np.exp(-(((y - anat.knob_y - 0.08) / 0.06) ** 2))
        return np.maximum(width + ascending, _heart_half_width(anat, side, y))
    knob_r = anat.knob_radius * (1 + 0.5 * anat.aorta_ectasia)
    knob_reach = anat.knob_offset + 0.03 * anat.aorta_ectasia + knob_r
    knob = knob_reach * np.sqrt(np.clip(1 - ((y - anat.knob_y) / (1.2 * knob_r)) ** 2, 0, 1))
    trunk_y = anat.knob_y + 2.7 * anat.knob_radius
    trunk_reach = anat.mediastinum_half_width + 0.012 + 0.025 * anat.pulmonary_trunk
    trunk = trunk_reach * np.sqrt(np.clip(1 - ((y - trunk_y) / (0.028 + 0.01 * anat.pulmonary_trunk)) ** 2, 0, 1))
    descending = np.where(y > anat.knob_y, _descending_aorta_reach(anat, y), 0.0)
    return np.maximum.reduce([width, knob, trunk, descending, _heart_half_width(anat, side, y)])


def _descending_aorta_reach(anat: Anatomy, y: np.ndarray) -> np.ndarray:
    """Left wall of the descending aorta from the mediastinal centre; a tortuous aorta bows out."""
    bulge = np.sin(np.pi * np.clip((y - anat.knob_y) / (anat.dome_y_left - anat.knob_y), 0, 1))
    return 0.5 * anat.knob_offset + 0.02 + 0.045 * anat.aorta_ectasia * bulge


def _heart_borders(anat: Anatomy) -> tuple[float, float, float]:
    """Widest right and left heart border (x) and the row where the heart is widest."""
    top, bottom = _heart_rows(anat)
    medc = _mediastinum_x(anat)
    return medc - anat.heart_right, medc + anat.heart_left, top + 0.75 * (bottom - top)


def _hilum(anat: Anatomy, side: str) -> tuple[float, float]:
    medc = _mediastinum_x(anat)
    y = anat.hilum_y_right if side == "right" else anat.hilum_y_left
    return medc + _SIGN[side] * (anat.mediastinum_half_width + 0.035), y


def _spine_centre(anat: Anatomy, y: np.ndarray) -> np.ndarray:
    """Frontal centre line of the spine; scoliosis bends it in one smooth C-curve."""
    t = np.clip((y - anat.spine_curve_y) / 0.45, -1, 1)
    return anat.spine_x + anat.spine_curve * np.cos(0.5 * np.pi * t) ** 2


def _rib_rise(anat: Anatomy, lateral: np.ndarray, y: np.ndarray) -> np.ndarray:
    """How far a posterior rib lies above its spinal end: it arches up, then falls to the lateral
    wall; lower ribs slope down more steeply."""
    lower = np.clip((y - anat.apex_y) / (anat.dome_y_right - anat.apex_y), 0, 1)
    u = np.clip(lateral, 0, 1.15)
    return anat.rib_arch * (1.9 * u - 2.2 * u**2) - 0.045 * lower * u


def _rib_y(anat: Anatomy, side: str, k: float, x: float) -> float:
    """Centre height of posterior rib ``k`` (0 = first) at frontal ``x``."""
    lateral = abs(x - anat.spine_x) / anat.thorax_half_width
    level = anat.rib_start_y + (k + 0.22) * anat.rib_spacing
    y = level
    for _ in range(3):  # the rise depends weakly on y: a few fixed-point steps
        y = level - float(_rib_rise(anat, np.array(lateral), np.array(y)))
    return y


def _vertebra_phase(anat: Anatomy, y: np.ndarray) -> np.ndarray:
    return (y - anat.rib_start_y + 0.4 * anat.vertebra_height) / anat.vertebra_height


def _lateral_front(anat: Anatomy, y: np.ndarray) -> np.ndarray:
    """Lateral: inner anterior chest wall per row; a pectus deformity bows the lower sternum."""
    sternum = np.exp(-(((y - anat.dome_y_right + 0.1) / 0.12) ** 2))
    return anat.lat_front_x - 0.07 * anat.pectus * sternum + 0.025 * np.clip((0.3 - y) / 0.2, 0, 1)


def _lateral_diaphragm_y(anat: Anatomy, side: str, x: np.ndarray) -> np.ndarray:
    """Lateral height of one hemidiaphragm: high anteriorly, deepest at the posterior sulcus."""
    front, back = anat.lat_front_x, anat.lat_back_x
    peak = front + 0.38 * (back - front)
    anterior = 0.5 * anat.sulcus_depth * ((peak - x) / (peak - front)) ** 2
    posterior = 1.5 * anat.sulcus_depth * ((x - peak) / (back - peak)) ** 2
    return _dome_y(anat, side) - 0.01 + np.where(x < peak, anterior, posterior)


def _lateral_spine_centre(anat: Anatomy, y: np.ndarray) -> np.ndarray:
    return anat.lat_spine_x + anat.kyphosis * (np.sin(np.pi * np.clip(y, 0, 1)) - 0.5)


def _lateral_heart(anat: Anatomy) -> tuple[float, float, float, float]:
    """Lateral heart as an ellipse (cx, cy, half depth, half height) behind the lower sternum."""
    top, bottom = _heart_rows(anat)
    normal_width = 0.45 * 2 * anat.thorax_half_width
    depth = anat.lat_heart_depth * (0.55 + 0.45 * (anat.heart_left + anat.heart_right) / normal_width)
    return anat.lat_front_x + 0.01 + depth, top + 0.6 * (bottom - top), depth, 0.5 * (bottom - top)


def _lateral_heart_bounds(anat: Anatomy, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Lateral heart per row (anterior x, posterior x): the right ventricle meets the lower sternum,
    the left ventricle bulges back toward the spine, the top narrows into the great vessels."""
    top, bottom = _heart_rows(anat)
    t = (y - top) / (bottom - top)
    _, _, depth, _ = _lateral_heart(anat)
    front = _lateral_front(anat, y)
    anterior = front + 0.008 + 0.09 * (1 - np.sin(0.5 * np.pi * np.clip(t / 0.6, 0, 1)))
    reach = 0.45 + 0.55 * np.sin(0.5 * np.pi * np.clip(t / 0.7, 0, 1)) ** 0.8
    posterior = front + 0.01 + 2 * depth * reach * (1 - 0.12 * np.clip((t - 0.8) / 0.2, 0, 1) ** 2)
    apex = front + 0.01 + 0.9 * depth
    dome = np.sqrt(np.clip(1 - (1 - np.clip(t / 0.25, 0, 1)) ** 2, 0, 1))  # a rounded top
    anterior, posterior = apex - (apex - anterior) * dome, apex + (posterior - apex) * dome
    return np.where(t > 0, anterior, 1.0), np.where(t > 0, posterior, 0.0)


def _zone_box(anat: Anatomy, side: str, region: str | None) -> tuple[float, float, float, float]:
    """Frontal (x0, x1, y0, y1) of a lung zone on one side."""
    medc, half = _mediastinum_x(anat), anat.thorax_half_width
    if region == "retrocardiac":
        top, bottom = _heart_rows(anat)
        return medc - 0.005, medc + 0.7 * anat.heart_left, top + 0.3 * (bottom - top), anat.dome_y_left + 0.01
    if region == "hilum":
        x, y = _hilum(anat, side)
        return x - 0.045, x + 0.045, y - 0.05, y + 0.05
    if region == "paratracheal":
        inner = medc + _SIGN[side] * (anat.mediastinum_half_width - 0.012)
        outer = inner + _SIGN[side] * 0.045
        return min(inner, outer), max(inner, outer), anat.apex_y + 0.05, anat.knob_y + 0.03
    if side == "right":
        x0, x1 = anat.midline_x - half, medc - anat.mediastinum_half_width
    else:
        x0, x1 = medc + anat.mediastinum_half_width, anat.midline_x + half
    y0, y1 = anat.apex_y, _dome_y(anat, side) + anat.sulcus_depth
    if region == "lingula":
        x1 = x0 + 0.55 * (x1 - x0)
    lo, hi = _ZONE_FRACTIONS.get(region, (0.0, 1.0))
    return x0, x1, y0 + lo * (y1 - y0), y0 + hi * (y1 - y0)


_ZONE_FRACTIONS = {
    "apex": (0.0, 0.2), "upper": (0.05, 0.42), "middle": (0.38, 0.66), "lower": (0.58, 1.0),
    "base": (0.72, 1.0), "lingula": (0.45, 0.78),
}


def region_box(anatomy: Anatomy, side: str | None, region: str | None, size: int) -> tuple[slice, slice]:
    """Frontal pixel box (rows, cols) where a finding at ``side``/``region`` is drawn.

    ``bilateral`` or ``None`` give the box around both sides' zones (retrocardiac ignores the side).
    """
    sides = (side,) if side in _LUNG_SIDES else _LUNG_SIDES
    boxes = np.array([_zone_box(anatomy, s, region) for s in sides])
    x0, y0 = boxes[:, 0].min(), boxes[:, 2].min()
    x1, y1 = boxes[:, 1].max(), boxes[:, 3].max()
    clip = lambda v: int(np.clip(round(v * size), 0, size))  # noqa: E731
    return slice(clip(y0), clip(y1)), slice(clip(x0), clip(x1))


# ================================================================================================
# Drawing primitives
# ================================================================================================


@lru_cache(maxsize=8)
def _axis(size: int) -> np.ndarray:
    axis = (np.arange(size, dtype=np.float32) + 0.5) / size
    axis.flags.writeable = False
    return axis


def _edge(t: np.ndarray | float, size: int, px: float = 1.2) -> np.ndarray:
    """0 -> 1 across ``px`` pixels around ``t = 0`` (``t`` normalised): an anti-aliased edge."""
    return np.clip(np.asarray(t) * (size / px) + 0.5, 0.0, 1.0)


@dataclass(frozen=True)
class _Win:
    """A rectangular part of a view: slices and broadcastable normalised coordinates."""

    rows: slice
    cols: slice
    x: np.ndarray  # shape (1, w)
    y: np.ndarray  # shape (h, 1)


def _window(size: int, x0: float, x1: float, y0: float, y1: float) -> _Win | None:
    c0, c1 = max(0, int(np.floor(x0 * size))), min(size, int(np.ceil(x1 * size)))
    r0, r1 = max(0, int(np.floor(y0 * size))), min(size, int(np.ceil(y1 * size)))
    if c1 <= c0 or r1 <= r0:
        return None
    axis = _axis(size)
    return _Win(slice(r0, r1), slice(c0, c1), axis[None, c0:c1], axis[r0:r1, None])


def _disc(win: _Win, x: float, y: float, rx: float, ry: float, size: int) -> np.ndarray:
    """Anti-aliased filled ellipse."""
    r = np.sqrt(((win.x - x) / rx) ** 2 + ((win.y - y) / ry) ** 2)
    return _edge((1 - r) * min(rx, ry), size)


def _gauss(win: _Win, x: float, y: float, sx: float, sy: float) -> np.ndarray:
    return np.exp(-0.5 * (((win.x - x) / sx) ** 2 + ((win.y - y) / sy) ** 2))


@lru_cache(maxsize=64)
def _interp_matrix(n_out: int, n_in: int) -> np.ndarray:
    """Smooth (smoothstep-weighted) interpolation from n_in samples to n_out."""
    pos = (np.arange(n_out) + 0.5) / n_out * (n_in - 1)
    low = np.clip(np.floor(pos).astype(int), 0, n_in - 2)
    t = pos - low
    t = t * t * (3 - 2 * t)
    matrix = np.zeros((n_out, n_in), dtype=np.float32)
    matrix[np.arange(n_out), low] = 1 - t
    matrix[np.arange(n_out), low + 1] = t
    return matrix


def _smooth_noise(rng: np.random.Generator, shape: tuple[int, int], cell_px: float) -> np.ndarray:
    """Zero-mean, unit-ish variance smooth noise with features about ``cell_px`` pixels wide."""
    h, w = shape
    ny, nx = max(2, int(h / cell_px) + 2), max(2, int(w / cell_px) + 2)
    small = rng.standard_normal((ny, nx)).astype(np.float32)
    return _interp_matrix(h, ny) @ small @ _interp_matrix(w, nx).T


def _catmull_rom(points: np.ndarray, step: float) -> np.ndarray:
    """A smooth curve through ``points`` (k, 2), resampled every ``step`` (normalised units)."""
    p = np.vstack([2 * points[0] - points[1], points, 2 * points[-1] - points[-2]])
    out = []
    for i in range(1, len(p) - 2):
        p0, p1, p2, p3 = p[i - 1], p[i], p[i + 1], p[i + 2]
        n = max(2, int(np.ceil(np.linalg.norm(p2 - p1) / step)))
        t = np.linspace(0, 1, n, endpoint=False)[:, None]
        out.append(0.5 * ((2 * p1) + (-p0 + p2) * t + (2 * p0 - 5 * p1 + 4 * p2 - p3) * t**2
                          + (-p0 + 3 * p1 - 3 * p2 + p3) * t**3))
    out.append(points[-1:])
    return np.vstack(out)


def _resample(points: np.ndarray, step: float) -> np.ndarray:
    """A polyline resampled every ``step`` along its length."""
    seg = np.linalg.norm(np.diff(points, axis=0), axis=1)
    arc = np.concatenate([[0.0], np.cumsum(seg)])
    s = np.arange(0.0, arc[-1] + 1e-9, step)
    return np.column_stack([np.interp(s, arc, points[:, 0]), np.interp(s, arc, points[:, 1])])


def _splat(shape: tuple[int, int], px: np.ndarray, py: np.ndarray, weight: np.ndarray) -> np.ndarray:
    """Bilinear splat of weighted points (pixel coordinates) into an image of ``shape``."""
    h, w = shape
    x0, y0 = np.floor(px - 0.5).astype(np.int64), np.floor(py - 0.5).astype(np.int64)
    fx, fy = px - 0.5 - x0, py - 0.5 - y0
    xi = np.concatenate([x0, x0 + 1, x0, x0 + 1])
    yi = np.concatenate([y0, y0, y0 + 1, y0 + 1])
    wt = np.concatenate([(1 - fx) * (1 - fy), fx * (1 - fy), (1 - fx) * fy, fx * fy]) * np.tile(weight, 4)
    ok = (xi >= 0) & (xi < w) & (yi >= 0) & (yi < h)
    return np.bincount(yi[ok] * w + xi[ok], weights=wt[ok], minlength=h * w).reshape(h, w).astype(np.float32)


def _stroke(view: _View, points: np.ndarray, width_px: float, amount: float | np.ndarray) -> None:
    """Add a line of peak density ``amount`` along a polyline (normalised points)."""
    size = view.size
    step = 0.35 / size
    pts = _resample(points, step)
    sigma = max(0.45, width_px / 2.355) * size / 256
    pad = 4 * sigma / size + 1 / size
    win = _window(size, pts[:, 0].min() - pad, pts[:, 0].max() + pad, pts[:, 1].min() - pad, pts[:, 1].max() + pad)
    if win is None:
        return
    shape = (win.rows.stop - win.rows.start, win.cols.stop - win.cols.start)
    weights = np.broadcast_to(np.asarray(amount, dtype=np.float64), (len(pts),))
    canvas = _splat(shape, pts[:, 0] * size - win.cols.start, pts[:, 1] * size - win.rows.start, weights)
    canvas = ndimage.gaussian_filter(canvas, sigma, truncate=3.0)
    view.density[win.rows, win.cols] += canvas * (0.35 * np.sqrt(2 * np.pi) * sigma)


def _segment_distance(win: _Win, points: np.ndarray) -> np.ndarray:
    """Distance from every pixel of ``win`` to a polyline."""
    best = np.full(np.broadcast_shapes(win.x.shape, win.y.shape), np.inf, dtype=np.float32)
    for (ax, ay), (bx, by) in zip(points[:-1], points[1:]):
        dx, dy = bx - ax, by - ay
        t = np.clip(((win.x - ax) * dx + (win.y - ay) * dy) / max(dx * dx + dy * dy, 1e-12), 0, 1)
        best = np.minimum(best, np.hypot(win.x - ax - t * dx, win.y - ay - t * dy))
    return best


# ================================================================================================
# Views
# ================================================================================================


@dataclass
class _View:
    """One radiograph being drawn, with what the painters need to know about its lungs."""

    kind: str  # "frontal" | "lateral"
    size: int
    density: np.ndarray
    body: np.ndarray  # soft-tissue thickness 0..1
    lung: dict[str, np.ndarray]  # per lung: where it is (0..1)
    air: dict[str, np.ndarray]  # per lung: density its air removes (net of its vessels)
    fill: dict[str, np.ndarray]  # per lung: fraction of that air already replaced by findings
    markings: np.ndarray  # vessel density inside the lungs

    def window(self, x0: float, x1: float, y0: float, y1: float) -> _Win | None:
        return _window(self.size, x0, x1, y0, y1)

    def add(self, win: _Win | None, values: np.ndarray | float) -> None:
        if win is not None:
            self.density[win.rows, win.cols] += values


def _fill_air(view: _View, side: str, win: _Win | None, fraction: np.ndarray, extra: float = 0.0) -> None:
    """Replace ``fraction`` of one lung's air by tissue or fluid (``extra``: denser than tissue).

    Fractions combine by maximum, so overlapping findings never exceed an airless lung.
    """
    if win is None:
        return
    old = view.fill[side][win.rows, win.cols]
    new = np.maximum(old, np.clip(fraction, 0.0, 1.0))
    view.density[win.rows, win.cols] += (new - old) * view.air[side][win.rows, win.cols] * (1 + extra)
    view.fill[side][win.rows, win.cols] = new


def _new_view(kind: str, size: int, body: np.ndarray) -> _View:
    zeros = lambda: np.zeros((size, size), dtype=np.float32)  # noqa: E731
    return _View(kind, size, zeros(), body, {s: zeros() for s in _LUNG_SIDES}, {s: zeros() for s in _LUNG_SIDES},
                 {s: zeros() for s in _LUNG_SIDES}, zeros())


def _vessel_tree(rng: np.random.Generator, root: tuple[float, float], angles: tuple[float, float],
                 n_trunks: int, length: float) -> list[np.ndarray]:
    """Branching vessels from a hilum: one array (branches, vertices, 2) per generation, each
    branch splitting in two."""
    starts = np.tile(np.asarray(root, dtype=np.float64), (n_trunks, 1)) + rng.normal(0, 0.008, (n_trunks, 2))
    heading = rng.uniform(*angles, size=n_trunks)
    generations = []
    steps = 8
    for generation in range(4):
        n = len(starts)
        step = (length * 0.8**generation / steps) * rng.uniform(0.7, 1.2, (n, 1))
        turn = heading[:, None] + np.cumsum(rng.normal(0, 0.05, (n, steps)), axis=1)
        path = np.concatenate([starts[:, None, :], starts[:, None, :] + np.cumsum(
            np.stack([np.cos(turn) * step, np.sin(turn) * step], axis=-1), axis=1)], axis=1)
        generations.append(path)
        starts = np.repeat(path[:, -1], 2, axis=0)
        heading = np.repeat(turn[:, -1], 2) + rng.uniform(0.2, 0.5, 2 * n) * np.tile([-1.0, 1.0], n)
    return generations


def _densify(paths: np.ndarray, step: float) -> tuple[np.ndarray, np.ndarray]:
    """Points every ~``step`` along many polylines (branches, vertices, 2) and the weight that
    keeps the drawn line density independent of the actual spacing."""
    seg = paths[:, 1:] - paths[:, :-1]
    seg_len = np.linalg.norm(seg, axis=-1)
    n_sub = max(1, int(np.ceil(seg_len.max() / step)))
    t = (np.arange(n_sub) + 0.5) / n_sub
    points = paths[:, :-1, None, :] + seg[:, :, None, :] * t[None, None, :, None]
    weight = np.broadcast_to((seg_len / (n_sub * step))[:, :, None], points.shape[:3])
    return points.reshape(-1, 2), weight.reshape(-1)


def _draw_vessels(size: int, trees: list[list[np.ndarray]], gain: float) -> np.ndarray:
    """Vessel density image: trunks wide and dense, peripheral branches thin and faint."""
    step = 0.7 / size
    layers = []
    for generations, sigma_px, peak in (((0, 1), 2.0, 0.15), ((2, 3), 1.0, 0.1)):
        pts, weights = [], []
        for tree in trees:
            for generation in generations:
                p, w = _densify(tree[generation], step)
                pts.append(p)
                weights.append(w * 0.85**generation)
        p, w = np.vstack(pts), np.concatenate(weights)
        canvas = _splat((size, size), p[:, 0] * size, p[:, 1] * size, w)
        sigma = sigma_px * size / 256
        layers.append(ndimage.gaussian_filter(canvas, sigma, truncate=2.5) * (0.7 * np.sqrt(2 * np.pi) * sigma * peak))
    return (layers[0] + layers[1]) * gain


# ------------------------------------------------------------------------------------------------
# Frontal view
# ------------------------------------------------------------------------------------------------


def _frontal_view(anat: Anatomy, size: int, rng: np.random.Generator) -> _View:
    axis = _axis(size)
    x, y = axis[None, :], axis[:, None]
    body = _frontal_body(anat, x, y, size)
    view = _new_view("frontal", size, body)
    below = _frontal_below_diaphragm(anat, x, y, size)
    heart = _frontal_heart(anat, x, y, size) * (1 - below)
    view.density += body * (0.95 + 0.3 * below + 0.4 * heart)
    lateral = 0.8 + 0.2 * _edge(np.abs(x - anat.midline_x) - 0.12, size, 25)
    depth = lateral * (0.85 + 0.15 * np.clip((y - anat.apex_y) / 0.15, 0, 1))  # thinner lung medially, at the apex
    trees = []
    for side in _LUNG_SIDES:
        view.lung[side] = _frontal_lung(anat, side, x, y, size)
        view.air[side] = anat.lung_air * body * view.lung[side] * depth
        hx, hy = _hilum(anat, side)
        angles = (0.45 * np.pi, 1.55 * np.pi) if side == "right" else (-0.55 * np.pi, 0.55 * np.pi)
        trees.append(_vessel_tree(rng, (hx, hy), angles, 12, 0.07))
    lungs = view.lung["right"] + view.lung["left"]
    texture = 0.018 * _smooth_noise(rng, (size, size), 4.0 * size / 256)
    view.markings = (_draw_vessels(size, trees, anat.marking_gain) + texture + _hila(anat, x, y)) * lungs
    for side in _LUNG_SIDES:
        view.air[side] -= view.markings * view.lung[side]
        view.density -= view.air[side]
    _descending_aorta(view, anat)
    _breasts(view, anat)
    _gastric_bubble(view, anat)
    _frontal_airways(view, anat)
    _frontal_ribs(view, anat, rng)
    _frontal_spine(view, anat)
    _clavicles(view, anat)
    _shoulders(view, anat)
    return view


def _frontal_body(anat: Anatomy, x: np.ndarray, y: np.ndarray, size: int) -> np.ndarray:
    """Projected soft-tissue thickness: an elliptic cross-section with shoulders at the top corners."""
    dx = np.abs(x - anat.midline_x)
    shoulder = 0.035 * np.exp(-(((y - anat.clavicle_y) / 0.1) ** 2))
    half = anat.body_half_width * (1 - 0.05 * np.clip((y - 0.8) / 0.2, 0, 1)) + shoulder
    shoulder_top = 0.07 * np.clip((dx - 0.12) / (half - 0.12), 0, 1) ** 2
    thickness = np.sqrt(np.clip(1 - (dx / half) ** 2, 0, 1)) * _edge(y - shoulder_top, size, 3)
    return thickness.astype(np.float32)


def _frontal_below_diaphragm(anat: Anatomy, x: np.ndarray, y: np.ndarray, size: int) -> np.ndarray:
    dome = np.where(x < anat.midline_x, _diaphragm_y(anat, "right", x), _diaphragm_y(anat, "left", x))
    return _edge(y - dome, size)


def _frontal_heart(anat: Anatomy, x: np.ndarray, y: np.ndarray, size: int) -> np.ndarray:
    medc = _mediastinum_x(anat)
    right, left = _heart_half_width(anat, "right", y), _heart_half_width(anat, "left", y)
    return _edge(x - (medc - right), size) * _edge(medc + left - x, size) * (right + left > 0)


def _frontal_lung(anat: Anatomy, side: str, x: np.ndarray, y: np.ndarray, size: int) -> np.ndarray:
    """Where one lung is: fully outside the cardiomediastinal silhouette, partly behind the heart."""
    low, high = _lung_bounds(anat, side, y)
    below_dome = _edge(_diaphragm_y(anat, side, x) - y, size)
    visible = _edge(x - low, size) * _edge(high - x, size)
    spine_edge = _mediastinum_x(anat) + _SIGN[side] * (anat.spine_half_width + 0.012)
    heart_rows = _heart_half_width(anat, side, y) > 0
    if side == "right":
        behind = _edge(spine_edge - x, size) * _edge(x - high, size)
    else:
        behind = _edge(x - spine_edge, size) * _edge(low - x, size)
    return (visible + (0.15 if side == "right" else 0.3) * behind * heart_rows) * below_dome


def _hila(anat: Anatomy, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """The hilar shadows: pulmonary arteries and veins where they enter the lungs."""
    total = np.zeros(np.broadcast_shapes(x.shape, y.shape), dtype=np.float32)
    for side in _LUNG_SIDES:
        hx, hy = _hilum(anat, side)
        total += 0.2 * np.exp(-0.5 * (((x - hx) / 0.02) ** 2 + ((y - hy) / 0.035) ** 2))
    return total


def _descending_aorta(view: _View, anat: Anatomy) -> None:
    """The descending aorta's soft band left of the spine, its wall seen through the heart."""
    size = view.size
    medc = _mediastinum_x(anat)
    win = view.window(medc - 0.02, medc + 0.15, anat.knob_y, anat.dome_y_left + 0.02)
    wall = medc + _descending_aorta_reach(anat, win.y)
    band = _edge(wall - win.x, size, 2) * _edge(win.x - wall + 0.045, size, 4)
    view.add(win, 0.06 * band * view.body[win.rows, win.cols])


def _breasts(view: _View, anat: Anatomy) -> None:
    """Breast shadows over the lower zones: a soft density with a sharp inferior margin."""
    size = view.size
    for side in _LUNG_SIDES:
        if anat.breast_size <= 0 or anat.breast_absent == side:
            continue
        cx = anat.midline_x + _SIGN[side] * 0.58 * anat.thorax_half_width
        cy = _dome_y(anat, side) - 0.02
        rx, ry = 0.12 + 0.06 * anat.breast_size, 0.08 + 0.05 * anat.breast_size
        win = view.window(cx - rx, cx + rx, cy - ry, cy + ry)
        if win is not None:
            lower = np.clip((win.y - (cy - ry)) / (1.6 * ry), 0, 1)
            view.add(win, 0.22 * anat.breast_size * _disc(win, cx, cy, rx, ry, size) * lower)


def _gastric_bubble(view: _View, anat: Anatomy) -> None:
    """Gas in the gastric fundus under the left dome, with a flat fluid level."""
    if anat.gastric_bubble <= 0:
        return
    size = view.size
    cx = anat.midline_x + 0.5 * anat.thorax_half_width
    top = float(_diaphragm_y(anat, "left", np.array(cx))) + 0.012
    rx, ry = 0.03 + 0.025 * anat.gastric_bubble, 0.018 + 0.012 * anat.gastric_bubble
    win = view.window(cx - rx, cx + rx, top, top + 2 * ry)
    if win is not None:
        bubble = _disc(win, cx, top + ry, rx, ry, size) * _edge(top + 1.2 * ry - win.y, size)
        view.add(win, -0.4 * bubble * view.body[win.rows, win.cols])


def _frontal_airways(view: _View, anat: Anatomy) -> None:
    """Trachea (a dark air column) and the main bronchi."""
    size = view.size
    carina_y = anat.knob_y + 0.055
    top_x = float(_spine_centre(anat, np.array(0.05)))
    medc = _mediastinum_x(anat)
    carina_x = 0.5 * (top_x + medc) - 0.004
    trachea = np.array([[top_x, 0.0], [0.5 * (top_x + carina_x) - 0.006, anat.knob_y], [carina_x, carina_y]])
    right = np.array([[carina_x, carina_y], [carina_x - 0.045, carina_y + 0.04], [carina_x - 0.065, carina_y + 0.075]])
    left = np.array([[carina_x, carina_y], [carina_x + 0.045, carina_y + 0.028], [carina_x + 0.075, carina_y + 0.06]])
    win = view.window(carina_x - 0.09, carina_x + 0.09, 0.0, carina_y + 0.09)
    if win is None:
        return
    air = _edge(0.014 - _segment_distance(win, trachea), size, 2)
    bronchi = np.maximum(_edge(0.008 - _segment_distance(win, right), size, 2),
                         _edge(0.007 - _segment_distance(win, left), size, 2))
    fade = np.clip(win.y / 0.08, 0.3, 1)
    view.add(win, -0.22 * np.maximum(air, 0.7 * bronchi) * fade * view.body[win.rows, win.cols])


def _cortical_band(t: np.ndarray, thickness: float | np.ndarray, size: int) -> np.ndarray:
    """Profile across a bone of ``thickness``: flat medulla, brighter cortical margins (t normalised)."""
    inside = _edge(t, size) * _edge(thickness - t, size)
    cortex = np.exp(-((t * size / 1.1) ** 2)) + np.exp(-(((thickness - t) * size / 1.1) ** 2))
    return inside * (0.6 + 0.4 * np.clip(cortex, 0, 1))


def _frontal_ribs(view: _View, anat: Anatomy, rng: np.random.Generator) -> None:
    """Posterior ribs (arching bands) and fainter anterior ribs (descending toward the sternum);
    each rib a little different in density."""
    size = view.size
    axis = _axis(size)
    y = axis[:, None]
    rib_density = rng.uniform(0.85, 1.15, (2, 13)).astype(np.float32)
    for side_index, side in enumerate(_LUNG_SIDES):
        cols = np.flatnonzero(axis < anat.spine_x if side == "right" else axis >= anat.spine_x)
        part = slice(cols[0], cols[-1] + 1)
        x = axis[None, part]
        lateral = (x - anat.spine_x) * _SIGN[side] / anat.thorax_half_width
        fade = _edge(lateral - 0.08, size, 5) * _edge(1.08 - lateral, size, 4)
        phase = (y + _rib_rise(anat, lateral, y) - anat.rib_start_y) / anat.rib_spacing
        index, t = np.floor(phase), phase - np.floor(phase)
        thickness = (0.36 + 0.12 * np.clip(lateral, 0, 1)) * anat.rib_spacing
        posterior = _cortical_band(t * anat.rib_spacing, thickness, size) * ((index >= 0) & (index < 12))
        posterior *= rib_density[side_index, np.clip(index, 0, 12).astype(int)]
        a_phase = (y - 0.2 * (1 - lateral) - anat.rib_start_y - 0.03) / (1.2 * anat.rib_spacing)
        a_index, a_t = np.floor(a_phase), a_phase - np.floor(a_phase)
        anterior = _cortical_band(a_t * 1.2 * anat.rib_spacing, 0.45 * anat.rib_spacing, size)
        anterior *= (a_index >= 0) & (a_index < 6)
        anterior *= _edge(lateral - 0.4, size, 12)
        bone = (0.16 * posterior + 0.07 * anterior) * fade * anat.bone_density
        view.density[:, part] += bone * view.body[:, part]


def _frontal_spine(view: _View, anat: Anatomy) -> None:
    """Vertebral bodies with end plates, pedicles and spinous processes, along the spine curve."""
    size = view.size
    half = anat.spine_half_width
    span = abs(anat.spine_curve) + half + 0.03
    win = view.window(anat.spine_x - span, anat.spine_x + span, 0.0, 1.0)
    dx = win.x - _spine_centre(anat, win.y)
    phase = _vertebra_phase(anat, win.y)
    t = phase - np.floor(phase)
    body = _edge(half - np.abs(dx), size)
    disc = _edge(t - 0.84, size * anat.vertebra_height, 0.04)
    endplate = np.exp(-(((t - 0.84) / 0.035) ** 2)) + np.exp(-((np.minimum(t, 1 - t) / 0.035) ** 2))
    cortex = np.exp(-(((np.abs(dx) - half) * size / 1.2) ** 2))
    ring = np.sqrt(((np.abs(dx) - 0.62 * half) / (0.2 * half)) ** 2 + ((t - 0.32) / 0.17) ** 2)
    pedicle = np.exp(-(((ring - 1) / 0.3) ** 2))
    spinous = np.exp(-((dx / (0.16 * half)) ** 2 + ((t - 0.62) / 0.18) ** 2))
    bone = body * (0.18 * (1 - 0.55 * disc) + 0.07 * endplate * (1 - disc)) + 0.09 * cortex * (1 - disc)
    bone += 0.09 * pedicle * body + 0.07 * spinous
    view.add(win, bone * anat.bone_density * view.body[win.rows, win.cols])


def _clavicle_ends(anat: Anatomy, side: str) -> tuple[tuple[float, float], tuple[float, float]]:
    sign = _SIGN[side]
    medial = (anat.spine_x + sign * 0.028, anat.clavicle_y + 0.03)
    lateral = (anat.midline_x + sign * (anat.thorax_half_width + 0.065), anat.clavicle_y - 0.035)
    return medial, lateral


def _clavicles(view: _View, anat: Anatomy) -> None:
    size = view.size
    for side in _LUNG_SIDES:
        (x_med, y_med), (x_lat, y_lat) = _clavicle_ends(anat, side)
        win = view.window(min(x_med, x_lat), max(x_med, x_lat), anat.clavicle_y - 0.07, anat.clavicle_y + 0.07)
        if win is None:
            continue
        t = (win.x - x_med) / (x_lat - x_med)
        centre = y_med + (y_lat - y_med) * t - 0.012 * np.sin(2 * np.pi * np.clip(t, 0, 1))
        half = 0.014 * (1.2 - 0.35 * t)
        length_px = abs(x_lat - x_med) * size
        band = _cortical_band(win.y - centre + half, 2 * half, size) * np.clip(t * length_px / 2, 0, 1)
        band *= np.clip((1 - t) * length_px / 2, 0, 1)
        view.add(win, 0.42 * band * anat.bone_density)


def _humeral_head(anat: Anatomy, side: str) -> tuple[float, float, float]:
    """Centre and radius of a humeral head."""
    return anat.midline_x + _SIGN[side] * (anat.thorax_half_width + 0.09), anat.clavicle_y - 0.01, 0.048


def _shoulders(view: _View, anat: Anatomy) -> None:
    """Humeral heads with the proximal shafts, and the scapulae's lateral borders."""
    size = view.size
    for side in _LUNG_SIDES:
        sign = _SIGN[side]
        cx, cy, r = _humeral_head(anat, side)
        win = view.window(cx - r - 0.05, cx + r + 0.05, cy - r, cy + 4 * r)
        if win is not None:
            head = _disc(win, cx, cy, r, r, size)
            shaft = _edge(0.6 * r - np.abs(win.x - cx - sign * 0.015), size) * _edge(win.y - cy, size)
            bone = np.maximum(head, 0.9 * shaft) * np.clip(view.body[win.rows, win.cols] * 4, 0, 1)
            view.add(win, 0.32 * bone * anat.bone_density)
        glenoid = (cx - sign * (r + 0.01), cy + 0.02)
        tip = (anat.midline_x + sign * (anat.thorax_half_width - 0.05), anat.apex_y + 0.3)
        border = np.array([glenoid, (0.5 * (glenoid[0] + tip[0]) + sign * 0.012, 0.5 * (glenoid[1] + tip[1])), tip])
        x0, x1 = sorted((glenoid[0], tip[0]))
        win = view.window(x0 - 0.03, x1 + 0.03, glenoid[1] - 0.02, tip[1] + 0.02)
        if win is not None:
            distance = _segment_distance(win, border)
            view.add(win, 0.05 * _edge(0.01 - distance, size, 2) * anat.bone_density)


# ------------------------------------------------------------------------------------------------
# Lateral view
# ------------------------------------------------------------------------------------------------


def _lateral_view(anat: Anatomy, size: int, rng: np.random.Generator) -> _View:
    axis = _axis(size)
    x, y = axis[None, :], axis[:, None]
    front = _lateral_front(anat, axis)[:, None]
    body = _lateral_body(anat, x, y, front, size)
    view = _new_view("lateral", size, body)
    shoulders = 0.45 * np.clip((0.34 - y) / 0.24, 0, 1)
    below = 0.5 * sum(_edge(y - _lateral_diaphragm_y(anat, side, x), size) for side in _LUNG_SIDES)
    anterior, posterior = _lateral_heart_bounds(anat, y)
    heart = _edge(x - anterior, size, 3) * _edge(posterior - x, size, 3) * (1 - below)
    view.density += body * (1.2 + shoulders + 0.25 * below + 0.08 * heart)
    air = anat.lung_air * 0.85
    for side in _LUNG_SIDES:
        view.lung[side] = _lateral_lung(anat, side, x, y, front, size) * (1 - 0.5 * heart)
        view.air[side] = 0.5 * air * 1.2 * body * view.lung[side]
    lungs = 0.5 * (view.lung["right"] + view.lung["left"])
    hilum = _lateral_hilum(anat)
    tree = _vessel_tree(rng, hilum, (-np.pi, np.pi), 14, 0.075)
    texture = 0.018 * _smooth_noise(rng, (size, size), 4.0 * size / 256)
    hila = 0.25 * np.exp(-0.5 * (((x - hilum[0]) / 0.025) ** 2 + ((y - hilum[1]) / 0.03) ** 2))
    view.markings = (_draw_vessels(size, [tree], anat.marking_gain) + texture + hila) * lungs
    for side in _LUNG_SIDES:
        view.air[side] -= 0.5 * view.markings * view.lung[side]
        view.density -= view.air[side]
    _lateral_mediastinum(view, anat)
    _lateral_spine(view, anat)
    _lateral_ribs(view, anat)
    _sternum(view, anat, front[:, 0])
    _lateral_gastric_bubble(view, anat)
    return view


def _tilted_disc(win: _Win, x: float, y: float, rx: float, ry: float, angle: float, size: int,
                 px: float = 1.2) -> np.ndarray:
    """Anti-aliased ellipse rotated by ``angle`` (radians, image coordinates)."""
    c, s = np.cos(angle), np.sin(angle)
    u = (win.x - x) * c + (win.y - y) * s
    v = -(win.x - x) * s + (win.y - y) * c
    return _edge((1 - np.sqrt((u / rx) ** 2 + (v / ry) ** 2)) * min(rx, ry), size, px)


def _lateral_body(anat: Anatomy, x: np.ndarray, y: np.ndarray, front: np.ndarray, size: int) -> np.ndarray:
    """Chest outline: convex anterior wall (breasts below), convex back, the neck above."""
    breast = 0.035 * anat.breast_size * np.exp(-(((y - anat.dome_y_right + 0.05) / 0.1) ** 2))
    curve = np.sin(np.pi * np.clip((y - 0.05) / 0.9, 0, 1))
    neck = 0.2 * np.clip((0.1 - y) / 0.1, 0, 1) ** 1.5
    skin_front = front - 0.035 - 0.02 * curve - breast + neck
    skin_back = anat.lat_back_x + 0.05 + 0.02 * curve
    return (_edge(x - skin_front, size, 2) * _edge(skin_back - x, size, 2)).astype(np.float32)


def _lateral_lung(anat: Anatomy, side: str, x: np.ndarray, y: np.ndarray, front: np.ndarray, size: int) -> np.ndarray:
    """Both lungs overlap on the lateral view; each keeps its own hemidiaphragm."""
    back = anat.lat_back_x
    rounding_end = anat.apex_y + 0.16
    r = np.clip((rounding_end - y) / (rounding_end - anat.apex_y + 0.005), 0, None)
    s = np.sqrt(np.clip(1 - r**2, 0, 1))
    centre = 0.5 * (anat.lat_front_x + back) + 0.05
    low = centre + (front + 0.008 - centre) * s
    high = centre + (back - centre) * s
    inside = _edge(x - low, size) * _edge(high - x, size)
    return inside * _edge(_lateral_diaphragm_y(anat, side, x) - y, size)


def _lateral_hilum(anat: Anatomy) -> tuple[float, float]:
    return 0.55 * anat.lat_front_x + 0.45 * anat.lat_back_x + 0.02, 0.5 * (anat.hilum_y_right + anat.hilum_y_left)


def _lateral_mediastinum(view: _View, anat: Anatomy) -> None:
    """Trachea, aortic arch and descending aorta."""
    size = view.size
    carina_y = anat.knob_y + 0.055
    spine_front = float(_lateral_spine_centre(anat, np.array(anat.knob_y))) - 0.045
    trachea_x = spine_front - 0.14
    trachea = np.array([[trachea_x - 0.05, 0.0], [trachea_x - 0.01, anat.knob_y - 0.04], [trachea_x + 0.02, carina_y]])
    win = view.window(trachea_x - 0.08, trachea_x + 0.06, 0.0, carina_y + 0.02)
    if win is not None:
        radius = 0.015 - 0.006 * np.clip((win.y - carina_y + 0.04) / 0.04, 0, 1)
        column = _edge(radius - _segment_distance(win, trachea), size, 2)
        view.add(win, -0.22 * column * view.body[win.rows, win.cols])
    hx, hy, hd, hh = _lateral_heart(anat)
    ectasia = anat.aorta_ectasia
    arch = np.array([
        [hx - 0.25 * hd, hy - 0.8 * hh],
        [hx - 0.3 * hd - 0.025 * ectasia, anat.knob_y + 0.05],
        [trachea_x - 0.005, anat.knob_y - 0.03 - 0.02 * ectasia],
        [spine_front - 0.025, anat.knob_y + 0.0],
        [spine_front - 0.02 + 0.02 * ectasia, anat.knob_y + 0.15],
        [spine_front - 0.018, anat.dome_y_left + 0.03],
    ])
    path = _catmull_rom(arch, 0.03)
    win = view.window(path[:, 0].min() - 0.05, path[:, 0].max() + 0.05, path[:, 1].min() - 0.04, path[:, 1].max())
    if win is not None:
        radius = 0.024 + 0.01 * ectasia - 0.007 * np.clip((win.y - anat.knob_y) / 0.2, 0, 1)
        tube = _edge(radius - _segment_distance(win, path), size, 3)
        view.add(win, 0.07 * tube * view.body[win.rows, win.cols])


def _lateral_spine(view: _View, anat: Anatomy) -> None:
    """Vertebral bodies (blocks with end plates and disc spaces) and the posterior elements."""
    size = view.size
    win = view.window(anat.lat_spine_x - 0.1, anat.lat_back_x + 0.06, 0.0, 1.0)
    dx = win.x - _lateral_spine_centre(anat, win.y)
    half = 0.04
    phase = _vertebra_phase(anat, win.y)
    t = phase - np.floor(phase)
    height_px = size * anat.vertebra_height
    block = _edge(half - np.abs(dx), size) * _edge(t - 0.04, height_px, 0.04) * _edge(0.82 - t, height_px, 0.04)
    endplate = np.exp(-(((t - 0.82) / 0.03) ** 2)) + np.exp(-(((t - 0.04) / 0.03) ** 2))
    cortex = np.exp(-(((np.abs(dx) - half) * size / 1.3) ** 2)) * _edge(0.84 - t, height_px, 0.04)
    arch = _edge(dx - half - 0.006, size) * _edge(half + 0.055 - dx, size) * (0.5 + 0.5 * np.cos(2 * np.pi * (t - 0.4)))
    bone = 0.16 * block + 0.08 * endplate * block + 0.07 * cortex + 0.06 * arch
    view.add(win, bone * anat.bone_density * view.body[win.rows, win.cols])


def _lateral_ribs(view: _View, anat: Anatomy) -> None:
    """Posterior ribs of both sides (slightly magnified apart), sloping down and forward."""
    size = view.size
    win = view.window(anat.lat_spine_x - 0.3, anat.lat_back_x + 0.05, anat.apex_y - 0.02, 0.95)
    spine = _lateral_spine_centre(anat, win.y)
    reach = _edge(win.x - spine + 0.28, size, 30) * _edge(anat.lat_back_x + 0.04 - win.x, size, 3)
    for offset in (0.0, 0.45):
        phase = (win.y - 0.5 * (spine - win.x) - anat.rib_start_y) / anat.rib_spacing + offset
        t = phase - np.floor(phase)
        band = _cortical_band(t * anat.rib_spacing, 0.4 * anat.rib_spacing, size)
        view.add(win, 0.045 * band * reach * anat.bone_density)


def _sternum_x(anat: Anatomy, front: np.ndarray) -> np.ndarray:
    return front - 0.016


def _sternum(view: _View, anat: Anatomy, front: np.ndarray) -> None:
    """The sternum along the anterior chest wall, the manubrium wider at the top."""
    size = view.size
    top, bottom = anat.clavicle_y + 0.06, anat.dome_y_right - 0.02
    centre_x = _sternum_x(anat, front)
    win = view.window(centre_x.min() - 0.04, centre_x.max() + 0.03, top - 0.01, bottom + 0.01)
    if win is None:
        return
    centre = centre_x[win.rows, None]
    half = 0.009 * (1 + 0.7 * np.clip((top + 0.06 - win.y) / 0.06, 0, 1))
    band = _cortical_band(win.x - centre + half, 2 * half, size)
    band *= _edge(win.y - top, size, 3) * _edge(bottom - win.y, size, 3)
    view.add(win, 0.28 * band * anat.bone_density)


def _lateral_gastric_bubble(view: _View, anat: Anatomy) -> None:
    if anat.gastric_bubble <= 0:
        return
    size = view.size
    cx = anat.lat_front_x + 0.15
    top = float(_lateral_diaphragm_y(anat, "left", np.array(cx))) + 0.012
    rx, ry = 0.035 + 0.02 * anat.gastric_bubble, 0.018 + 0.01 * anat.gastric_bubble
    win = view.window(cx - rx, cx + rx, top, top + 2 * ry)
    if win is not None:
        bubble = _disc(win, cx, top + ry, rx, ry, size) * _edge(top + 1.2 * ry - win.y, size)
        view.add(win, -0.3 * bubble)


# ================================================================================================
# Findings: anatomy modifiers and painters
# ================================================================================================


@dataclass
class _Scene:
    anatomy: Anatomy
    views: list[_View]


_Modifier = Callable[[Anatomy, Finding, np.random.Generator], Anatomy]
_Painter = Callable[[_Scene, Finding, np.random.Generator], None]
_MODIFIERS: dict[str, _Modifier] = {}
_PAINTERS: dict[str, _Painter] = {}


def _modifies(*kinds: str) -> Callable[[_Modifier], _Modifier]:
    def register(function: _Modifier) -> _Modifier:
        _MODIFIERS.update(dict.fromkeys(kinds, function))
        return function

    return register


def _paints(*kinds: str) -> Callable[[_Painter], _Painter]:
    def register(function: _Painter) -> _Painter:
        _PAINTERS.update(dict.fromkeys(kinds, function))
        return function

    return register


# ------------------------------------------------------------------------------------------------
# Placement helpers. Painters draw every random number before drawing anything, so the frontal
# view comes out the same whether or not the lateral view is rendered.
# ------------------------------------------------------------------------------------------------

_ZONES = ("upper", "middle", "lower")
_LATERAL_DEPTH = {  # share of the anteroposterior lung depth where a zone projects on the lateral view
    "apex": (0.35, 0.75), "upper": (0.25, 0.75), "middle": (0.08, 0.4), "lingula": (0.08, 0.4),
    "lower": (0.5, 0.92), "base": (0.45, 0.92), "retrocardiac": (0.6, 0.82), "hilum": (0.42, 0.6),
    "paratracheal": (0.35, 0.5),
}


def _sides(finding: Finding, rng: np.random.Generator, default: str = "random") -> tuple[str, ...]:
    """The lungs a finding involves; an unnamed side becomes ``default`` ("random", "bilateral", a side)."""
    if finding.side in _LUNG_SIDES:
        return (finding.side,)
    if finding.side == "bilateral" or default == "bilateral":
        return _LUNG_SIDES
    if default in _LUNG_SIDES:
        return (default,)
    return (_LUNG_SIDES[int(rng.integers(2))],)


def _has(finding: Finding, *words: str) -> bool:
    return any(word in qualifier for qualifier in finding.qualifiers for word in words)


def _point_in(anat: Anatomy, side: str, region: str | None, rng: np.random.Generator) -> tuple[float, float]:
    """A frontal point in a zone, inside the lung when the zone is a lung zone."""
    x0, x1, y0, y1 = _zone_box(anat, side, region)
    for _ in range(30):
        x = rng.uniform(x0 + 0.15 * (x1 - x0), x1 - 0.15 * (x1 - x0))
        y = rng.uniform(y0 + 0.1 * (y1 - y0), y1 - 0.1 * (y1 - y0))
        if region in ("hilum", "retrocardiac", "paratracheal"):
            return x, y
        low, high = _lung_bounds(anat, side, np.array(y))
        if low + 0.02 < x < high - 0.02 and y < float(_diaphragm_y(anat, side, np.array(x))) - 0.02:
            return x, y
    return 0.5 * (x0 + x1), 0.5 * (y0 + y1)


def _lateral_point(anat: Anatomy, region: str | None, y: float, rng: np.random.Generator) -> tuple[float, float]:
    """Where a frontal point at height ``y`` in ``region`` projects on the lateral view."""
    lo, hi = _LATERAL_DEPTH.get(region, (0.2, 0.85))
    x = anat.lat_front_x + (anat.lat_back_x - anat.lat_front_x) * rng.uniform(lo, hi)
    floor = min(float(_lateral_diaphragm_y(anat, side, np.array(x))) for side in _LUNG_SIDES) - 0.02
    return x, float(np.clip(y, anat.apex_y + 0.04, floor))


def _blobs(rng: np.random.Generator, radius: float, count: int) -> np.ndarray:
    """Offsets and sizes (dx, dy, sigma) of the gaussian lobules that make up an opacity."""
    return np.column_stack([rng.normal(0, 0.5 * radius, count), rng.normal(0, 0.5 * radius, count),
                            radius * rng.uniform(0.35, 0.6, count)])


def _cloud(win: _Win, x: float, y: float, blobs: np.ndarray, rng: np.random.Generator, confluent: bool,
           size: int) -> np.ndarray:
    """An opacity 0..1: patchy (mottled lobules) or confluent (uniform with a firmer margin)."""
    field = sum(_gauss(win, x + dx, y + dy, sigma, sigma) for dx, dy, sigma in blobs)
    field = field / max(float(field.max()), 1e-6)
    noise = _smooth_noise(rng, field.shape, 5.0 * size / 256)
    if confluent:
        field = np.clip((field - 0.15) / 0.4, 0, 1)
        return field * field * (3 - 2 * field) * np.clip(0.9 + 0.15 * noise, 0, 1)
    return np.clip(1.3 * field, 0, 1) * np.clip(0.8 + 0.3 * noise, 0, 1)


def _around(view: _View, x: float, y: float, reach: float) -> _Win | None:
    return view.window(x - reach, x + reach, y - reach, y + reach)


def _view_point(view: _View, frontal: tuple[float, float], lateral: tuple[float, float]) -> tuple[float, float]:
    return frontal if view.kind == "frontal" else lateral


def _collapse(view: _View, side: str, win: _Win, centre: tuple[float, float], factor: float) -> np.ndarray:
    """The lung of ``side`` shrunk toward ``centre`` by ``factor``, sampled over ``win``."""
    size = view.size
    rows = (centre[1] + (win.y - centre[1]) / factor) * size - 0.5
    cols = (centre[0] + (win.x - centre[0]) / factor) * size - 0.5
    rows, cols = np.broadcast_arrays(rows, cols)
    return ndimage.map_coordinates(view.lung[side], [rows, cols], order=1, mode="constant")


def _lung_window(view: _View, anat: Anatomy, side: str) -> _Win:
    """The part of a view that holds one lung."""
    if view.kind == "lateral":
        return view.window(anat.lat_front_x - 0.03, anat.lat_back_x + 0.01, anat.apex_y - 0.01, 0.99)
    medc = _mediastinum_x(anat)
    if side == "right":
        return view.window(anat.midline_x - anat.thorax_half_width - 0.02, medc + 0.02, anat.apex_y - 0.01, 0.99)
    return view.window(medc - 0.02, anat.midline_x + anat.thorax_half_width + 0.02, anat.apex_y - 0.01, 0.99)


def _ring_points(x: float, y: float, rx: float, ry: float, angle: float = 0.0, start: float = 0.0,
                 stop: float = 2 * np.pi, n: int = 40) -> np.ndarray:
    t = np.linspace(start, stop, n)
    c, s = np.cos(angle), np.sin(angle)
    u, v = rx * np.cos(t), ry * np.sin(t)
    return np.column_stack([x + u * c - v * s, y + u * s + v * c])


# ------------------------------------------------------------------------------------------------
# Lung volume, airspace and interstitium
# ------------------------------------------------------------------------------------------------


@_modifies("hyperinflation")
def _hyperinflate(anat: Anatomy, finding: Finding, rng: np.random.Generator) -> Anatomy:
    """Low flat domes, lucent lungs with sparse markings, a narrow heart, a deep chest on the lateral."""
    sev = finding.severity
    drop = 0.04 + 0.06 * sev
    return dataclasses.replace(
        anat,
        dome_y_right=min(anat.dome_y_right + drop, 0.82), dome_y_left=min(anat.dome_y_left + drop, 0.84),
        sulcus_depth=anat.sulcus_depth * (1 - 0.5 * sev),
        thorax_half_width=anat.thorax_half_width * (1 + 0.03 * sev),
        lung_air=min(anat.lung_air + 0.1 * sev, 0.95),
        marking_gain=anat.marking_gain * (1 - 0.4 * sev),
        heart_left=anat.heart_left * (1 - 0.15 * sev), heart_right=anat.heart_right * (1 - 0.1 * sev),
        rib_spacing=anat.rib_spacing * (1 + 0.08 * sev), vertebra_height=anat.vertebra_height * (1 + 0.08 * sev),
        lat_front_x=anat.lat_front_x - 0.05 * sev,
    )


@_modifies("hypoinflation")
def _hypoinflate(anat: Anatomy, finding: Finding, rng: np.random.Generator) -> Anatomy:
    """High domes, crowded markings and ribs, a broad-looking heart."""
    sev = finding.severity
    rise = 0.035 + 0.06 * sev
    return dataclasses.replace(
        anat,
        dome_y_right=anat.dome_y_right - rise, dome_y_left=anat.dome_y_left - rise,
        lung_air=anat.lung_air - 0.07 * sev, marking_gain=anat.marking_gain * (1 + 0.5 * sev),
        heart_left=anat.heart_left * (1 + 0.08 * sev),
        rib_spacing=anat.rib_spacing * (1 - 0.08 * sev), vertebra_height=anat.vertebra_height * (1 - 0.08 * sev),
    )


@_modifies("volume_loss", "pneumonectomy")
def _lose_volume(anat: Anatomy, finding: Finding, rng: np.random.Generator) -> Anatomy:
    """The mediastinum shifts toward the smaller side and its hemidiaphragm rises."""
    side = _sides(finding, rng)[0]
    amount = (0.4 + 0.6 * finding.severity) * (2.0 if finding.kind == "pneumonectomy" else 1.0)
    anat = dataclasses.replace(anat, mediastinal_shift=anat.mediastinal_shift + _SIGN[side] * 0.022 * amount)
    anat = _raise_dome(anat, side, 0.035 * amount)
    if finding.region in ("upper", "apex"):
        field = "hilum_y_right" if side == "right" else "hilum_y_left"
        anat = dataclasses.replace(anat, **{field: getattr(anat, field) - 0.03})
    return anat


def _raise_dome(anat: Anatomy, side: str, amount: float) -> Anatomy:
    field = "dome_y_right" if side == "right" else "dome_y_left"
    return dataclasses.replace(anat, **{field: getattr(anat, field) - amount})


@_paints("pneumonectomy")
def _paint_pneumonectomy(scene: _Scene, finding: Finding, rng: np.random.Generator) -> None:
    """An opaque hemithorax (fluid fills the space) with clips at the bronchial stump."""
    side = _sides(finding, rng)[0]
    clips = _clip_plan(scene.anatomy, rng, "hilum", side, 4)
    for view in scene.views:
        win = _lung_window(view, scene.anatomy, side)
        _fill_air(view, side, win, np.ones((1, 1), dtype=np.float32), extra=0.15)
        _draw_clips(view, clips)


@_paints("opacity", "consolidation")
def _paint_airspace(scene: _Scene, finding: Finding, rng: np.random.Generator) -> None:
    """Patchy (opacity, infiltrate) or confluent (consolidation, pneumonia) airspace filling."""
    anat, sev = scene.anatomy, finding.severity
    confluent = finding.kind == "consolidation"
    plans = []
    for side in _sides(finding, rng):
        region = finding.region or _ZONES[int(rng.integers(3))]
        frontal = _point_in(anat, side, region, rng)
        lateral = _lateral_point(anat, region, frontal[1], rng)
        radius = (0.04 + 0.05 * sev) * (1.4 if confluent else 1.0) * (0.7 if _has(finding, "round", "focal") else 1.0)
        blobs = _blobs(rng, radius, int(rng.integers(5, 9) if confluent else rng.integers(3, 7)))
        plans.append((side, frontal, lateral, radius, blobs, int(rng.integers(2**31))))
    amount = 0.8 + 0.2 * sev if confluent else 0.55 + 0.4 * sev
    for index, view in enumerate(scene.views):
        for side, frontal, lateral, radius, blobs, texture in plans:
            x, y = _view_point(view, frontal, lateral)
            win = _around(view, x, y, 2.2 * radius)
            field = _cloud(win, x, y, blobs, np.random.default_rng([texture, index]), confluent, view.size)
            if confluent and side == "right" and finding.region in ("upper", "middle"):
                field = field * _minor_fissure(anat, win, finding.region, view.size)
            _fill_air(view, side, win, amount * field)


def _minor_fissure(anat: Anatomy, win: _Win, region: str, size: int) -> np.ndarray:
    """Lobar consolidation stops sharply at the horizontal fissure (right upper / middle lobe)."""
    fissure = anat.hilum_y_right + 0.01
    return _edge(fissure - win.y, size) if region == "upper" else _edge(win.y - fissure, size)


@_paints("atelectasis")
def _paint_atelectasis(scene: _Scene, finding: Finding, rng: np.random.Generator) -> None:
    """Plate-like (discoid) linear densities, mostly horizontal, with a little surrounding haze."""
    anat, sev = scene.anatomy, finding.severity
    plans = []
    for side in _sides(finding, rng):
        region = finding.region or "base"
        for _ in range(1 + int(round(2 * sev))):
            frontal = _point_in(anat, side, region, rng)
            lateral = _lateral_point(anat, region, frontal[1], rng)
            length = (0.05 + 0.06 * rng.random()) * (0.7 + 0.6 * sev)
            plans.append((side, frontal, lateral, length, rng.uniform(-0.3, 0.3), 0.004 + 0.006 * sev))
    for view in scene.views:
        for side, frontal, lateral, length, angle, thickness in plans:
            x, y = _view_point(view, frontal, lateral)
            win = _around(view, x, y, 0.6 * length + 0.02)
            if win is None:
                continue
            along = (win.x - x) * np.cos(angle) + (win.y - y) * np.sin(angle)
            across = -(win.x - x) * np.sin(angle) + (win.y - y) * np.cos(angle)
            plate = np.exp(-((across / thickness) ** 2)) * _edge(0.5 * length - np.abs(along), view.size, 4)
            haze = _gauss(win, x, y, 0.5 * length, 2.5 * thickness)
            _fill_air(view, side, win, np.maximum(0.95 * plate, 0.25 * sev * haze))


@_paints("nodule", "mass", "nipple_shadow")
def _paint_nodule(scene: _Scene, finding: Finding, rng: np.random.Generator) -> None:
    """Round soft-tissue densities: nodules small and sharp, masses large and lobulated."""
    anat, sev = scene.anatomy, finding.severity
    many = _has(finding, "multiple", "scattered", "diffuse")
    if finding.kind == "nipple_shadow":
        _paint_nipples(scene, finding, rng)
        return
    count = int(rng.integers(2, 6)) if many else 1
    sides = _sides(finding, rng)
    plans = []
    for index in range(count):
        side = sides[index % len(sides)]
        region = finding.region or _ZONES[int(rng.integers(3))]
        frontal = _point_in(anat, side, region, rng)
        lateral = _lateral_point(anat, region, frontal[1], rng)
        if finding.kind == "mass":  # lobulated: three overlapping lobes
            radius = 0.03 + 0.035 * sev
            lobes, lobe_radius = _blobs(rng, radius, 3)[:, :2] * 0.8, 0.75 * radius
        else:
            radius = (0.01 + 0.012 * sev) * (0.75 if many else 1.0) * rng.uniform(0.8, 1.2)
            lobes, lobe_radius = np.zeros((1, 2)), radius
        plans.append((side, frontal, lateral, radius, lobes, lobe_radius))
    for view in scene.views:
        for side, frontal, lateral, radius, lobes, lobe_radius in plans:
            x, y = _view_point(view, frontal, lateral)
            win = _around(view, x, y, 2 * radius + 0.01)
            shape = np.max([_disc(win, x + dx, y + dy, lobe_radius, lobe_radius, view.size) for dx, dy in lobes],
                           axis=0)
            _fill_air(view, side, win, shape, extra=0.25)


def _paint_nipples(scene: _Scene, finding: Finding, rng: np.random.Generator) -> None:
    """Small soft round densities over the lower zones, often on both sides (frontal only)."""
    anat = scene.anatomy
    plans = []
    for side in _sides(finding, rng, "bilateral"):
        x = anat.midline_x + _SIGN[side] * rng.uniform(0.45, 0.62) * anat.thorax_half_width
        plans.append((side, x, _dome_y(anat, side) - rng.uniform(0.05, 0.1), rng.uniform(0.008, 0.011)))
    view = scene.views[0]
    for side, x, y, radius in plans:
        win = _around(view, x, y, 2 * radius)
        _fill_air(view, side, win, 0.6 * _disc(win, x, y, radius, radius, view.size))


@_paints("calcified_granuloma", "granulomatous_disease")
def _paint_granulomas(scene: _Scene, finding: Finding, rng: np.random.Generator) -> None:
    """Small, very dense calcified nodules; granulomatous disease scatters several, with calcified nodes."""
    anat = scene.anatomy
    disease = finding.kind == "granulomatous_disease"
    many = disease or _has(finding, "multiple", "scattered")
    count = int(rng.integers(3, 8)) if disease else int(rng.integers(2, 6)) if many else 1
    sides = _sides(finding, rng, "bilateral" if disease else "random")
    dots = []
    for index in range(count):
        side = sides[int(rng.integers(len(sides)))]
        zones = _ZONES[:2] if disease else _ZONES
        region = finding.region or zones[int(rng.integers(len(zones)))]
        frontal = _point_in(anat, side, region, rng)
        dots.append((side, frontal, _lateral_point(anat, region, frontal[1], rng), rng.uniform(0.004, 0.007)))
    nodes = _node_plan(anat, finding, rng) if disease else []
    for view in scene.views:
        for side, frontal, lateral, radius in dots + nodes:
            x, y = _view_point(view, frontal, lateral)
            win = _around(view, x, y, 3 * radius)
            _fill_air(view, side, win, _disc(win, x, y, radius, radius, view.size))
            view.add(win, 0.9 * _disc(win, x, y, radius, radius, view.size))


def _node_plan(anat: Anatomy, finding: Finding, rng: np.random.Generator) -> list:
    """Clusters of calcified lymph nodes at a hilum, or paratracheal / subcarinal."""
    mediastinal = _has(finding, "paratracheal", "mediastinum", "trachea", "aorta")
    if mediastinal:
        medc = _mediastinum_x(anat)
        paratracheal = (medc - anat.mediastinum_half_width + 0.005, anat.knob_y + rng.uniform(-0.03, 0.03))
        sites = [("right", paratracheal, "paratracheal"), ("left", (medc + 0.01, anat.knob_y + 0.08), "hilum")]
        sites = sites[: 1 + int(rng.random() < 0.5)]
    else:
        sites = [(side, _hilum(anat, side), "hilum") for side in _sides(finding, rng)]
    nodes = []
    for side, (x, y), region in sites:
        lateral = _lateral_point(anat, region, y, rng)
        for _ in range(int(rng.integers(2, 5))):
            dx, dy = rng.normal(0, 0.009, 2)
            lx, ly = lateral
            nodes.append((side, (x + dx, y + dy), (lx + dx, ly + dy), rng.uniform(0.005, 0.009)))
    return nodes


@_paints("calcified_lymph_nodes")
def _paint_calcified_nodes(scene: _Scene, finding: Finding, rng: np.random.Generator) -> None:
    nodes = _node_plan(scene.anatomy, finding, rng)
    for view in scene.views:
        for side, frontal, lateral, radius in nodes:
            x, y = _view_point(view, frontal, lateral)
            win = _around(view, x, y, 3 * radius)
            view.add(win, 0.8 * _disc(win, x, y, radius, radius, view.size))


@_paints("cavity", "bulla")
def _paint_lucent_lesion(scene: _Scene, finding: Finding, rng: np.random.Generator) -> None:
    """Cavity: a thick-walled ring with an air centre. Bulla / lucency: air without markings, a
    hairline wall. With no zone a whole hemithorax is hyperlucent."""
    anat, sev = scene.anatomy, finding.severity
    cavity = finding.kind == "cavity"
    plans = []
    for side in _sides(finding, rng):
        region = finding.region or ("upper" if cavity else None)
        if region is None:
            x0, x1, y0, y1 = _zone_box(anat, side, None)
            frontal, radius = (0.5 * (x0 + x1), 0.45 * y0 + 0.55 * y1), 0.16
        else:
            frontal = _point_in(anat, side, region, rng)
            radius = 0.025 + 0.03 * sev if cavity else 0.04 + 0.05 * sev
        plans.append((side, frontal, _lateral_point(anat, region, frontal[1], rng), radius))
    for view in scene.views:
        for side, frontal, lateral, radius in plans:
            x, y = _view_point(view, frontal, lateral)
            win = _around(view, x, y, radius + 0.01)
            if win is None:
                continue
            lung = view.lung[side][win.rows, win.cols]
            inner_radius = radius * (0.65 if cavity else 1.0)
            inner = _disc(win, x, y, inner_radius, inner_radius, view.size) * lung
            if cavity:
                _fill_air(view, side, win, _disc(win, x, y, radius, radius, view.size) * (1 - inner), extra=0.2)
            else:
                wall = np.exp(-((np.hypot(win.x - x, win.y - y) - radius) * view.size / 0.9) ** 2) * lung
                view.add(win, 0.07 * wall)
            view.add(win, -inner * (view.markings[win.rows, win.cols] + 0.07 * view.body[win.rows, win.cols]))


@_paints("edema")
def _paint_edema(scene: _Scene, finding: Finding, rng: np.random.Generator) -> None:
    """Prominent upper-zone vessels, perihilar haze (bat wing when severe), Kerley B lines at the
    lateral bases; severe edema adds small effusions."""
    anat, sev = scene.anatomy, finding.severity
    kerley = {side: [(rng.uniform(0.012, 0.03), rng.uniform(0.02, 0.14)) for _ in range(int(3 + 7 * sev))]
              for side in _LUNG_SIDES}
    textures = [int(rng.integers(2**31)) for _ in scene.views]
    haze = 0.12 + 0.6 * sev**1.5
    for index, view in enumerate(scene.views):
        for side in _LUNG_SIDES:
            win = _lung_window(view, anat, side)
            lung = view.lung[side][win.rows, win.cols]
            view.add(win, 0.9 * sev * view.markings[win.rows, win.cols] * lung)
            if view.kind == "frontal":
                hx, hy = _hilum(anat, side)
                centre = (hx + _SIGN[side] * 0.03, hy + 0.04)
                spread = (0.07 + 0.05 * sev, 0.1 + 0.05 * sev)
            else:
                centre, spread = _lateral_hilum(anat), (0.12 + 0.06 * sev, 0.1 + 0.05 * sev)
            texture_rng = np.random.default_rng([textures[index], _LUNG_SIDES.index(side)])
            noise = _smooth_noise(texture_rng, lung.shape, 4 * view.size / 256)
            field = _gauss(win, *centre, *spread) * np.clip(0.8 + 0.3 * noise, 0, 1)
            _fill_air(view, side, win, haze * field)
            if view.kind == "frontal":
                _draw_kerley_lines(view, anat, side, kerley[side])
    if sev >= 0.75:
        small_effusions = dataclasses.replace(finding, kind="pleural_effusion", side="bilateral", severity=0.2)
        _paint_effusion(scene, small_effusions, rng)


def _draw_kerley_lines(view: _View, anat: Anatomy, side: str, lines: list[tuple[float, float]]) -> None:
    """Short horizontal septal lines reaching the pleura at the lateral costophrenic region."""
    cp = _dome_y(anat, side) + anat.sulcus_depth
    for length, height in lines:
        y = cp - height - 0.02
        low, high = _lung_bounds(anat, side, np.array(y))
        edge = float(low if side == "right" else high) - _SIGN[side] * 0.004
        _stroke(view, np.array([[edge, y], [edge - _SIGN[side] * length, y]]), 1.0, 0.09)


@_paints("interstitial_markings", "fibrosis")
def _paint_reticular(scene: _Scene, finding: Finding, rng: np.random.Generator) -> None:
    """A reticular net of fine lines; fibrosis is coarser, basal, with some ground-glass haze.
    Bronchovascular markings gather around the hila."""
    anat, sev = scene.anatomy, finding.severity
    fibrosis = finding.kind == "fibrosis"
    hilar = _has(finding, "bronch") or finding.region == "hilum"
    region = finding.region or ("lower" if fibrosis else None)
    sides = _sides(finding, rng, "bilateral")
    textures = [int(rng.integers(2**31)) for _ in scene.views]
    amount = (0.05 + 0.07 * sev) * (1.4 if fibrosis else 1.0)
    cell = (10.0 if fibrosis else 7.0)
    for index, view in enumerate(scene.views):
        for side in sides:
            win = _lung_window(view, anat, side)
            lung = view.lung[side][win.rows, win.cols]
            texture_rng = np.random.default_rng([textures[index], _LUNG_SIDES.index(side)])
            net = sum(weight * np.exp(-((_smooth_noise(texture_rng, lung.shape, cell * view.size / 256) / 0.2) ** 2))
                      for weight in (1.0, 0.7))
            weight = _zone_weight(view, anat, side, win, region, hilar)
            view.add(win, amount * net * weight * lung)
            if fibrosis:
                _fill_air(view, side, win, 0.2 * sev * weight)


def _zone_weight(view: _View, anat: Anatomy, side: str, win: _Win, region: str | None, hilar: bool) -> np.ndarray:
    """Soft 0..1 weight of a zone over a lung window (rows of the zone; around the hilum if hilar)."""
    if hilar:
        centre = _hilum(anat, side) if view.kind == "frontal" else _lateral_hilum(anat)
        return np.exp(-np.hypot(win.x - centre[0], win.y - centre[1]) / 0.1)
    if region is None:
        return np.ones((1, 1), dtype=np.float32)
    _, _, y0, y1 = _zone_box(anat, side, region)
    return np.clip(np.minimum(win.y - y0, y1 - win.y) / 0.04 + 0.5, 0, 1)


@_paints("scarring")
def _paint_scarring(scene: _Scene, finding: Finding, rng: np.random.Generator) -> None:
    """Irregular streaky linear densities (scars), with a little local volume of density."""
    anat, sev = scene.anatomy, finding.severity
    plans = []
    for side in _sides(finding, rng):
        region = finding.region or ("apex" if rng.random() < 0.5 else "base")
        for _ in range(int(rng.integers(2, 5))):
            frontal = _point_in(anat, side, region, rng)
            lateral = _lateral_point(anat, region, frontal[1], rng)
            steps = rng.normal(0, 0.35, 6).cumsum() + rng.uniform(0, np.pi)
            length = rng.uniform(0.04, 0.1)
            path = np.column_stack([np.cos(steps), np.sin(steps)]).cumsum(axis=0) * (length / 6)
            plans.append((frontal, lateral, path - path.mean(axis=0)))
    for view in scene.views:
        for frontal, lateral, path in plans:
            x, y = _view_point(view, frontal, lateral)
            _stroke(view, path + [x, y], 1.4, 0.12 + 0.08 * sev)


@_paints("bronchiectasis")
def _paint_bronchiectasis(scene: _Scene, finding: Finding, rng: np.random.Generator) -> None:
    """Tram-track bronchial walls radiating from the hilum and small ring shadows."""
    anat = scene.anatomy
    plans = []
    for side in _sides(finding, rng, "bilateral"):
        region = finding.region or "lower"
        hilum = _hilum(anat, side)
        for _ in range(int(rng.integers(3, 6))):
            frontal = _point_in(anat, side, region, rng)
            lateral = _lateral_point(anat, region, frontal[1], rng)
            plans.append((frontal, lateral, hilum, rng.random() < 0.4))
    for view in scene.views:
        for frontal, lateral, hilum, ring in plans:
            x, y = _view_point(view, frontal, lateral)
            if ring:
                _stroke(view, _ring_points(x, y, 0.009, 0.009), 1.2, 0.1)
                continue
            hx, hy = hilum if view.kind == "frontal" else _lateral_hilum(anat)
            direction = np.array([x - hx, y - hy]) / max(np.hypot(x - hx, y - hy), 1e-6)
            normal = np.array([-direction[1], direction[0]]) * 0.005
            for offset in (normal, -normal):
                start = np.array([x, y]) + offset
                _stroke(view, np.vstack([start, start + 0.05 * direction]), 1.1, 0.1)


@_paints("azygos_fissure")
def _paint_azygos_fissure(scene: _Scene, finding: Finding, rng: np.random.Generator) -> None:
    """A hairline curving down from the right apex to the azygos vein's teardrop (frontal only)."""
    anat = scene.anatomy
    medc = _mediastinum_x(anat)
    bottom = (medc - anat.mediastinum_half_width - 0.006, anat.knob_y + 0.025)
    top = (medc - anat.mediastinum_half_width - rng.uniform(0.03, 0.06), anat.apex_y + 0.01)
    view = scene.views[0]
    middle = (0.5 * (top[0] + bottom[0]) - 0.015, 0.5 * (top[1] + bottom[1]))
    curve = _catmull_rom(np.array([top, middle, bottom]), 0.01)
    _stroke(view, curve, 1.0, 0.12)
    win = _around(view, *bottom, 0.02)
    _fill_air(view, "right", win, _disc(win, *bottom, 0.007, 0.01, view.size))


# ------------------------------------------------------------------------------------------------
# Pleura
# ------------------------------------------------------------------------------------------------


@_paints("pleural_effusion")
def _paint_effusion(scene: _Scene, finding: Finding, rng: np.random.Generator) -> None:
    """Dependent fluid: blunts the costophrenic angle and rises laterally in a meniscus; hides the
    dome. On the lateral view it fills the posterior sulcus first."""
    anat, sev = scene.anatomy, finding.severity
    height = 0.025 + 0.22 * sev**1.3
    for side in _sides(finding, rng, "bilateral"):
        for view in scene.views:
            win = _lung_window(view, anat, side)
            if view.kind == "frontal":
                lateral = np.clip(np.abs(win.x - anat.midline_x) / anat.thorax_half_width, 0, 1)
                top = _dome_y(anat, side) + anat.sulcus_depth - height * (0.3 + 0.7 * lateral**3)
            else:
                depth = np.clip((win.x - anat.lat_front_x) / (anat.lat_back_x - anat.lat_front_x), 0, 1)
                sulcus = _dome_y(anat, side) + 0.5 * anat.sulcus_depth
                top = sulcus - (1.2 * height + 0.01) * (0.15 + 0.85 * depth**2.5)
            fluid = np.clip((win.y - top) / 0.03, 0, 1)
            _fill_air(view, side, win, fluid, extra=0.3)


@_paints("pneumothorax")
def _paint_pneumothorax(scene: _Scene, finding: Finding, rng: np.random.Generator) -> None:
    """The lung falls away from the chest wall toward the hilum: a white visceral pleural line with
    dark, markingless air outside it, widest at the apex and lateral wall."""
    anat, sev = scene.anatomy, finding.severity
    factor = 1 - (0.06 + 0.3 * sev)
    for side in _sides(finding, rng):
        hx, hy = _hilum(anat, side)
        centres = {"frontal": (hx + _SIGN[side] * 0.02, 0.5 * (hy + _dome_y(anat, side))),
                   "lateral": (_lateral_hilum(anat)[0], _dome_y(anat, side))}
        for view in scene.views:
            win = _lung_window(view, anat, side)
            lung = view.lung[side][win.rows, win.cols]
            collapsed = _collapse(view, side, win, centres[view.kind], factor)
            gap = np.clip(lung - collapsed, 0, 1)
            share = 1.0 if view.kind == "frontal" else 0.5
            view.add(win, -share * gap * (view.markings[win.rows, win.cols] + 0.1 * view.body[win.rows, win.cols]))
            pleural_line = 4 * collapsed * (1 - collapsed) * (lung > 0.5)
            view.add(win, share * 0.16 * pleural_line)
            _fill_air(view, side, win, 0.15 * sev * collapsed)


@_paints("pleural_thickening")
def _paint_pleural_thickening(scene: _Scene, finding: Finding, rng: np.random.Generator) -> None:
    """A band of soft tissue lining the chest wall (an apical cap at the apex)."""
    anat, sev = scene.anatomy, finding.severity
    factor = 1 - (0.025 + 0.03 * sev)
    region = finding.region or "lower"
    for side in _sides(finding, rng):
        hx, hy = _hilum(anat, side)
        centres = {"frontal": (hx, hy + 0.05), "lateral": (_lateral_hilum(anat)[0], hy + 0.05)}
        for view in scene.views:
            win = _lung_window(view, anat, side)
            lung = view.lung[side][win.rows, win.cols]
            rim = np.clip(lung - _collapse(view, side, win, centres[view.kind], factor), 0, 1)
            _fill_air(view, side, win, 0.85 * rim * _zone_weight(view, anat, side, win, region, False))


# ------------------------------------------------------------------------------------------------
# Heart, mediastinum, aorta
# ------------------------------------------------------------------------------------------------


@_modifies("cardiomegaly", "pericardial_effusion")
def _enlarge_heart(anat: Anatomy, finding: Finding, rng: np.random.Generator) -> Anatomy:
    """Cardiothoracic ratio from ~0.55 (mild) to ~0.72 (severe), mostly to the left; pericardial
    fluid makes the silhouette globular (water bottle)."""
    target = (0.52 + 0.22 * finding.severity) * 2 * anat.thorax_half_width
    width = anat.heart_left + anat.heart_right
    growth = max(target / width, 1.0)
    right = anat.heart_right * (1 + 0.7 * (growth - 1))
    globular = finding.kind == "pericardial_effusion"
    return dataclasses.replace(
        anat, heart_right=right, heart_left=max(target, width) - right,
        heart_half_height=anat.heart_half_height * (1 + (0.5 if globular else 0.25) * (growth - 1)),
        heart_roundness=1.0 if globular else anat.heart_roundness,
        lat_heart_depth=anat.lat_heart_depth * (1 + 0.3 * (growth - 1)),
    )


@_modifies("tortuous_aorta")
def _ectatic_aorta(anat: Anatomy, finding: Finding, rng: np.random.Generator) -> Anatomy:
    return dataclasses.replace(anat, aorta_ectasia=max(anat.aorta_ectasia, 0.3 + 0.7 * finding.severity))


@_modifies("mediastinal_widening")
def _widen_mediastinum(anat: Anatomy, finding: Finding, rng: np.random.Generator) -> Anatomy:
    return dataclasses.replace(anat, mediastinal_widening=anat.mediastinal_widening + 0.02 + 0.045 * finding.severity)


@_modifies("mediastinal_shift")
def _shift_mediastinum(anat: Anatomy, finding: Finding, rng: np.random.Generator) -> Anatomy:
    """The side names where the mediastinum has moved to."""
    side = _sides(finding, rng)[0]
    shift = _SIGN[side] * (0.012 + 0.035 * finding.severity)
    return dataclasses.replace(anat, mediastinal_shift=anat.mediastinal_shift + shift)


@_modifies("pulmonary_artery_enlargement")
def _enlarge_pulmonary_trunk(anat: Anatomy, finding: Finding, rng: np.random.Generator) -> Anatomy:
    return dataclasses.replace(anat, pulmonary_trunk=max(anat.pulmonary_trunk, 0.4 + 0.6 * finding.severity))


@_paints("hilar_adenopathy", "pulmonary_artery_enlargement")
def _paint_hilar_enlargement(scene: _Scene, finding: Finding, rng: np.random.Generator) -> None:
    """Enlarged, lobulated hilar shadows (nodes) or smooth enlarged pulmonary arteries; nodes may
    also sit in the right paratracheal stripe."""
    anat, sev = scene.anatomy, finding.severity
    nodes = finding.kind == "hilar_adenopathy"
    paratracheal = nodes and (finding.region == "paratracheal" or _has(finding, "paratracheal", "trachea"))
    lobes = []
    for side in ("right",) if paratracheal else _sides(finding, rng, "bilateral"):
        if paratracheal:
            centre = (_mediastinum_x(anat) - anat.mediastinum_half_width - 0.005, anat.knob_y - 0.01)
        else:
            hx, hy = _hilum(anat, side)
            centre = (hx + _SIGN[side] * 0.008, hy)
        for _ in range(int(rng.integers(2, 4)) if nodes else 1):
            offset = rng.normal(0, 0.012, 2) if nodes else np.zeros(2)
            radius = (0.014 + 0.012 * sev) * rng.uniform(0.8, 1.2) if nodes else 0.022 + 0.012 * sev
            lateral = _lateral_hilum(anat)
            lateral = (lateral[0] + offset[0] - 0.02, lateral[1] + offset[1] - (0.06 if paratracheal else 0))
            lobes.append((side, (centre[0] + offset[0], centre[1] + offset[1]), lateral, radius))
    for view in scene.views:
        for side, frontal, lateral, radius in lobes:
            x, y = _view_point(view, frontal, lateral)
            win = _around(view, x, y, 4 * radius)
            if nodes:
                shape = _disc(win, x, y, radius, 1.3 * radius, view.size)
            else:
                shape = _gauss(win, x, y, radius, 1.4 * radius)
            _fill_air(view, side, win, shape, extra=0.2)
            view.add(win, 0.12 * shape * view.body[win.rows, win.cols])


@_paints("epicardial_fat")
def _paint_epicardial_fat(scene: _Scene, finding: Finding, rng: np.random.Generator) -> None:
    """A soft, fat-density triangle filling the cardiophrenic angle."""
    anat, sev = scene.anatomy, finding.severity
    medc = _mediastinum_x(anat)
    for side in _sides(finding, rng, "left"):
        width = anat.heart_left if side == "left" else anat.heart_right
        frontal = (medc + _SIGN[side] * 0.9 * width, _dome_y(anat, side) - 0.005)
        lateral = (anat.lat_front_x + 0.03, _dome_y(anat, side) - 0.015)
        for view in scene.views:
            x, y = _view_point(view, frontal, lateral)
            win = _around(view, x, y, 0.06)
            _fill_air(view, side, win, 0.55 * _gauss(win, x, y, 0.02 + 0.015 * sev, 0.018 + 0.01 * sev))


@_paints("pneumomediastinum")
def _paint_pneumomediastinum(scene: _Scene, finding: Finding, rng: np.random.Generator) -> None:
    """Air outlining the mediastinum: a dark stripe along the left heart border, streaks above."""
    anat = scene.anatomy
    medc = _mediastinum_x(anat)
    top, bottom = _heart_rows(anat)
    rows = np.linspace(top + 0.02, bottom - 0.04, 12)
    border = np.column_stack([medc + _heart_half_width(anat, "left", rows) + 0.006, rows])
    streaks = [np.array([[medc + dx, anat.apex_y], [medc + dx + rng.normal(0, 0.01), anat.knob_y]])
               for dx in rng.uniform(-0.04, 0.04, 3)]
    hx, hy, hd, hh = _lateral_heart(anat)
    lateral = _ring_points(hx, hy, hd + 0.008, hh + 0.008, -0.5, np.pi, 1.7 * np.pi)
    for view in scene.views:
        lines = [border, *streaks] if view.kind == "frontal" else [lateral]
        for line in lines:
            _stroke(view, line, 1.6, -0.18)


@_paints("hiatal_hernia")
def _paint_hiatal_hernia(scene: _Scene, finding: Finding, rng: np.random.Generator) -> None:
    """A round retrocardiac soft-tissue mass above the diaphragm with an air-fluid level."""
    anat, sev = scene.anatomy, finding.severity
    radius = 0.028 + 0.03 * sev
    _, bottom = _heart_rows(anat)
    frontal = (_mediastinum_x(anat) + rng.uniform(0.0, 0.025), anat.dome_y_left - radius * 0.8)
    hx, hy, hd, hh = _lateral_heart(anat)
    lateral = (hx + hd + 0.01, frontal[1])
    for view in scene.views:
        x, y = _view_point(view, frontal, lateral)
        win = _around(view, x, y, radius + 0.01)
        sac = _disc(win, x, y, radius, 0.85 * radius, view.size)
        gas = sac * _edge(y - 0.15 * radius - win.y, view.size) * (1.0 if view.kind == "frontal" else 0.6)
        view.add(win, (0.16 * sac - 0.42 * gas) * view.body[win.rows, win.cols])


@_paints("aortic_calcification")
def _paint_aortic_calcification(scene: _Scene, finding: Finding, rng: np.random.Generator) -> None:
    """Curvilinear calcium along the outer wall of the aortic knob (frontal) and arch (lateral)."""
    anat, sev = scene.anatomy, finding.severity
    medc = _mediastinum_x(anat)
    knob_r = anat.knob_radius * (1 + 0.5 * anat.aorta_ectasia)
    knob_x = medc + anat.knob_offset + 0.03 * anat.aorta_ectasia
    pieces = int(rng.integers(2, 5))
    starts = np.sort(rng.uniform(-0.9 * np.pi, 0.2 * np.pi, pieces))
    lengths = rng.uniform(0.25, 0.6, pieces)
    amount = 0.45 + 0.5 * sev
    hx, hy, hd, hh = _lateral_heart(anat)
    spine_front = float(_lateral_spine_centre(anat, np.array(anat.knob_y))) - 0.045
    arch_x, arch_y = 0.5 * (hx - 0.3 * hd + spine_front - 0.025), anat.knob_y + 0.005
    arch_rx = 0.5 * (spine_front - 0.025 - hx + 0.3 * hd) + 0.01
    for view in scene.views:
        for start, length in zip(starts, lengths):
            if view.kind == "frontal":
                arc = _ring_points(knob_x, anat.knob_y, 0.85 * knob_r, 0.85 * knob_r, 0, start, start + length, 12)
            else:
                begin = np.pi + 0.6 * (start + np.pi)
                arc = _ring_points(arch_x, arch_y, arch_rx, 0.05, 0, begin, begin + 0.6 * length, 12)
            _stroke(view, arc, 1.4, amount)


# ------------------------------------------------------------------------------------------------
# Diaphragm and upper abdomen
# ------------------------------------------------------------------------------------------------


@_modifies("elevated_hemidiaphragm")
def _elevate_dome(anat: Anatomy, finding: Finding, rng: np.random.Generator) -> Anatomy:
    for side in _sides(finding, rng, "right"):
        anat = _raise_dome(anat, side, 0.035 + 0.07 * finding.severity)
    return anat


@_paints("subdiaphragmatic_air")
def _paint_subdiaphragmatic_air(scene: _Scene, finding: Finding, rng: np.random.Generator) -> None:
    """A dark crescent of free gas under a hemidiaphragm, the muscle a thin white line above it."""
    anat, sev = scene.anatomy, finding.severity
    thickness = 0.008 + 0.02 * sev
    for side in _sides(finding, rng, "right"):
        for view in scene.views:
            win = _lung_window(view, anat, side)
            if view.kind == "frontal":
                dome = _diaphragm_y(anat, side, win.x)
                centre = anat.midline_x + _SIGN[side] * 0.45 * anat.thorax_half_width
                across = np.clip(1 - ((win.x - centre) / (0.45 * anat.thorax_half_width)) ** 2, 0, 1)
            else:
                dome = _lateral_diaphragm_y(anat, side, win.x)
                across = np.clip(1 - ((win.x - anat.lat_front_x - 0.2) / 0.18) ** 2, 0, 1)
            depth = win.y - dome - 0.005
            crescent = _edge(depth, view.size) * _edge(thickness * across - depth, view.size)
            view.add(win, -0.45 * crescent * view.body[win.rows, win.cols])


@_paints("abdominal_calcification")
def _paint_abdominal_calcification(scene: _Scene, finding: Finding, rng: np.random.Generator) -> None:
    """Faceted calcified stones below a hemidiaphragm (gallstones on the right)."""
    anat = scene.anatomy
    side = _sides(finding, rng, "right")[0]
    centre_x = anat.midline_x + _SIGN[side] * 0.45 * anat.thorax_half_width
    centre_y = _dome_y(anat, side) + 0.09
    stones = [(rng.normal(0, 0.012, 2), rng.uniform(0.005, 0.009)) for _ in range(int(rng.integers(2, 7)))]
    lateral = (anat.lat_front_x + 0.08, centre_y)
    for view in scene.views:
        x, y = _view_point(view, (centre_x, centre_y), lateral)
        for (dx, dy), radius in stones:
            ring = _ring_points(x + dx, y + dy, radius, radius)
            _stroke(view, ring, 1.2, 0.35)


@_paints("contrast_media")
def _paint_contrast(scene: _Scene, finding: Finding, rng: np.random.Generator) -> None:
    """Dense contrast: a column in the oesophagus, or colon with haustra in the upper abdomen."""
    anat = scene.anatomy
    medc = _mediastinum_x(anat)
    spine_front = float(_lateral_spine_centre(anat, np.array(0.5))) - 0.05
    if _has(finding, "esophagus"):
        heights = (0.02, anat.knob_y + 0.1, anat.dome_y_left + 0.02)
        frontal = np.column_stack([medc + np.array([0.005, 0.012, 0.03]), heights])
        lateral = np.column_stack([spine_front - np.array([0.07, 0.03, 0.06]), heights])
        width, amount = 5.0, 0.9
    else:
        y = max(anat.dome_y_right, anat.dome_y_left) + 0.12
        frontal = _catmull_rom(np.array([[anat.midline_x - 0.3, y + 0.05], [anat.midline_x, y + rng.uniform(0.0, 0.06)],
                                         [anat.midline_x + 0.3, y - 0.04]]), 0.02)
        lateral = np.array([[anat.lat_front_x + 0.02, y + 0.02], [anat.lat_front_x + 0.3, y + 0.05]])
        width, amount = 9.0, 0.8
    for view in scene.views:
        _stroke(view, frontal if view.kind == "frontal" else lateral, width, amount)


# ------------------------------------------------------------------------------------------------
# Chest wall and soft tissue
# ------------------------------------------------------------------------------------------------


@_modifies("mastectomy")
def _remove_breast(anat: Anatomy, finding: Finding, rng: np.random.Generator) -> Anatomy:
    """One breast shadow missing: the remaining one makes the operated side look hyperlucent."""
    side = _sides(finding, rng)[0]
    return dataclasses.replace(anat, breast_absent=side, breast_size=max(anat.breast_size, 0.75))


@_modifies("pectus_excavatum", "pectus_carinatum")
def _pectus(anat: Anatomy, finding: Finding, rng: np.random.Generator) -> Anatomy:
    """The sternum bows in (excavatum: heart pushed left, blurred right border) or out (carinatum)."""
    amount = 0.4 + 0.6 * finding.severity
    if finding.kind == "pectus_carinatum":
        return dataclasses.replace(anat, pectus=amount)
    return dataclasses.replace(anat, pectus=-amount, mediastinal_shift=anat.mediastinal_shift + 0.015 * amount,
                               heart_right=anat.heart_right * (1 - 0.2 * amount))


@_paints("pectus_excavatum")
def _paint_pectus_excavatum(scene: _Scene, finding: Finding, rng: np.random.Generator) -> None:
    """The depressed anterior chest wall blurs the right heart border on the frontal view."""
    anat = scene.anatomy
    view = scene.views[0]
    x, y = _mediastinum_x(anat) - anat.heart_right - 0.015, _heart_borders(anat)[2]
    win = _around(view, x, y, 0.08)
    _fill_air(view, "right", win, 0.4 * _gauss(win, x, y, 0.025, 0.06))


@_paints("subcutaneous_emphysema")
def _paint_subcutaneous_emphysema(scene: _Scene, finding: Finding, rng: np.random.Generator) -> None:
    """Streaks of gas dissecting the soft tissues of the chest wall (or neck)."""
    anat, sev = scene.anatomy, finding.severity
    neck = _has(finding, "neck")
    streaks = []
    for side in _sides(finding, rng, "bilateral" if neck else "random"):
        sign = _SIGN[side]
        for _ in range(int(5 + 10 * sev)):
            if neck:
                start = (anat.spine_x + sign * rng.uniform(0.05, 0.12), rng.uniform(0.0, anat.apex_y + 0.02))
            else:
                wall = rng.uniform(anat.thorax_half_width + 0.01, anat.body_half_width - 0.02)
                start = (anat.midline_x + sign * wall, rng.uniform(anat.clavicle_y, _dome_y(anat, side)))
            heading = rng.normal(0.5 * np.pi, 0.5) + np.cumsum(rng.normal(0, 0.4, 5))
            path = np.cumsum(np.column_stack([np.cos(heading), np.sin(heading)]) * rng.uniform(0.006, 0.012), axis=0)
            lateral_x = rng.uniform(anat.lat_front_x - 0.04, anat.lat_front_x)
            streaks.append((np.vstack([[0.0, 0.0], path]) + start, lateral_x))
    for view in scene.views:
        for path, lateral_x in streaks:
            if view.kind == "lateral":
                path = path - [path[0, 0] - lateral_x, 0.0]
            _stroke(view, path, 1.3, -0.2)


# ------------------------------------------------------------------------------------------------
# Bones
# ------------------------------------------------------------------------------------------------


@_modifies("osteopenia")
def _demineralise(anat: Anatomy, finding: Finding, rng: np.random.Generator) -> Anatomy:
    return dataclasses.replace(anat, bone_density=anat.bone_density * (1 - 0.4 * finding.severity))


@_modifies("scoliosis")
def _bend_spine(anat: Anatomy, finding: Finding, rng: np.random.Generator) -> Anatomy:
    """A C-curve convex to the named side (patient's right convexity bows toward the image left)."""
    side = _sides(finding, rng)[0]
    height = 0.78 if _has(finding, "lumbar") else anat.spine_curve_y
    return dataclasses.replace(anat, spine_curve=_SIGN[side] * (0.012 + 0.045 * finding.severity), spine_curve_y=height)


@_modifies("kyphosis")
def _round_back(anat: Anatomy, finding: Finding, rng: np.random.Generator) -> Anatomy:
    return dataclasses.replace(anat, kyphosis=anat.kyphosis + 0.025 + 0.05 * finding.severity)


def _spine_levels(anat: Anatomy, finding: Finding, rng: np.random.Generator, count: int) -> np.ndarray:
    """Indices of vertebrae (as counted by _vertebra_phase) in the named segment of the spine."""
    if _has(finding, "cervical"):
        y0, y1 = 0.0, anat.apex_y + 0.03
    elif _has(finding, "lumbar"):
        y0, y1 = max(anat.dome_y_right, anat.dome_y_left) + 0.05, 0.98
    else:
        y0, y1 = anat.clavicle_y + 0.05, max(anat.dome_y_right, anat.dome_y_left)
    first, last = np.floor(_vertebra_phase(anat, np.array([y0, y1])))
    candidates = np.arange(int(first), int(last) + 1)
    return np.sort(rng.choice(candidates, size=min(count, len(candidates)), replace=False))


def _vertebra_top(anat: Anatomy, level: float) -> float:
    """Height of the upper end plate of vertebra ``level``."""
    return anat.rib_start_y - 0.4 * anat.vertebra_height + level * anat.vertebra_height


@_paints("spine_degenerative")
def _paint_spondylosis(scene: _Scene, finding: Finding, rng: np.random.Generator) -> None:
    """Marginal osteophytes: bony beaks at the end-plate corners (lateral on the frontal view,
    anterior on the lateral view), with end-plate sclerosis; DISH-like bridging when severe."""
    anat, sev = scene.anatomy, finding.severity
    levels = _spine_levels(anat, finding, rng, int(round(2 + 6 * sev)))
    spurs = [(level, corner, rng.uniform(0.6, 1.2)) for level in levels for corner in (0.0, 0.84)
             if rng.random() < 0.75]
    sides = {level: rng.choice([-1.0, 1.0], size=2, replace=rng.random() < 0.4) for level in levels}
    size_scale = 0.006 + 0.012 * sev
    for view in scene.views:
        for level, corner, scale in spurs:
            y = _vertebra_top(anat, level + corner)
            reach = size_scale * scale
            if view.kind == "frontal":
                centre = float(_spine_centre(anat, np.array(y)))
                for sign in sides[level]:
                    edge = centre + sign * anat.spine_half_width
                    tip = (edge + sign * reach, y + (0.003 if corner else -0.003))
                    beak = np.array([[edge - sign * 0.004, y], tip])
                    _stroke(view, beak, 2.6, 0.35)
            else:
                front = float(_lateral_spine_centre(anat, np.array(y))) - 0.04
                beak = np.array([[front + 0.004, y], [front - reach, y + (0.004 if corner else -0.004)]])
                _stroke(view, beak, 2.6, 0.3)
            _stroke(view, _endplate(view, anat, y), 1.2, 0.05 * sev)


def _endplate(view: _View, anat: Anatomy, y: float) -> np.ndarray:
    if view.kind == "frontal":
        centre = float(_spine_centre(anat, np.array(y)))
        return np.array([[centre - anat.spine_half_width, y], [centre + anat.spine_half_width, y]])
    centre = float(_lateral_spine_centre(anat, np.array(y)))
    return np.array([[centre - 0.04, y], [centre + 0.04, y]])


@_paints("vertebral_deformity", "vertebral_fracture")
def _paint_vertebral_compression(scene: _Scene, finding: Finding, rng: np.random.Generator) -> None:
    """Loss of vertebral height: a wedge (anterior height lost) on the lateral view, a flattened
    sclerotic body on the frontal view."""
    anat, sev = scene.anatomy, finding.severity
    levels = _spine_levels(anat, finding, rng, 2 if _has(finding, "multiple") else 1)
    loss = 0.3 + 0.4 * sev
    for view in scene.views:
        for level in levels:
            top = _vertebra_top(anat, level)
            height = 0.84 * anat.vertebra_height
            if view.kind == "frontal":
                centre = float(_spine_centre(anat, np.array(top)))
                half = anat.spine_half_width
                win = view.window(centre - half, centre + half, top, top + height)
                lost = _edge(top + loss * height - win.y, view.size)
                view.add(win, (0.12 * (1 - lost) - 0.14 * lost) * anat.bone_density)
            else:
                centre = float(_lateral_spine_centre(anat, np.array(top)))
                win = view.window(centre - 0.04, centre + 0.04, top, top + height)
                anterior = np.clip((centre + 0.04 - win.x) / 0.08, 0, 1)
                lost = _edge(top + loss * height * anterior - win.y, view.size)
                view.add(win, -0.17 * lost * anat.bone_density)
                _stroke(view, np.array([[centre - 0.04, top + loss * height], [centre + 0.04, top]]), 1.3, 0.12)


@_paints("fracture")
def _paint_fracture(scene: _Scene, finding: Finding, rng: np.random.Generator) -> None:
    """A cortical break with a step (acute) or a fusiform callus (healed) on ribs, a clavicle, the
    proximal humerus or, on the lateral view, the sternum."""
    anat = scene.anatomy
    healed = _has(finding, "healed", "chronic", "old")
    site = next((s for s in ("clavicle", "humerus", "sternum") if _has(finding, s)), "ribs")
    count = int(rng.integers(2, 5)) if _has(finding, "multiple") else 1
    sides = _sides(finding, rng)
    breaks = []
    for index in range(count):
        side = sides[index % len(sides)]
        breaks.append((side, *_fracture_site(anat, site, side, rng)))
    for view in scene.views:
        for side, point, direction, thickness, lateral_only in breaks:
            if lateral_only != (view.kind == "lateral"):
                continue
            if healed:
                _draw_callus(view, point, direction, thickness)
            else:
                _draw_break(view, point, direction, thickness)


def _fracture_site(anat: Anatomy, site: str, side: str, rng: np.random.Generator):
    """(point, unit direction of the bone, bone thickness, drawn on the lateral view only)."""
    sign = _SIGN[side]
    if site == "clavicle":
        (x0, y0), (x1, y1) = _clavicle_ends(anat, side)
        t = rng.uniform(0.35, 0.7)
        point = (x0 + t * (x1 - x0), y0 + t * (y1 - y0) - 0.012 * np.sin(2 * np.pi * t))
        direction = np.array([x1 - x0, y1 - y0]) / np.hypot(x1 - x0, y1 - y0)
        return point, direction, 0.024, False
    if site == "humerus":
        cx, cy, r = _humeral_head(anat, side)
        return (cx + sign * 0.015, cy + 1.4 * r), np.array([0.0, 1.0]), 1.1 * r, False
    if site == "sternum":
        y = rng.uniform(anat.clavicle_y + 0.1, anat.dome_y_right - 0.08)
        x = float(_sternum_x(anat, _lateral_front(anat, np.array(y))))
        return (x, y), np.array([0.0, 1.0]), 0.02, True
    k = int(rng.integers(3, 10))
    x = anat.spine_x + sign * rng.uniform(0.55, 0.95) * anat.thorax_half_width
    y = _rib_y(anat, side, k, x)
    slope = (_rib_y(anat, side, k, x + 0.005) - y) / 0.005
    direction = np.array([1.0, slope]) / np.hypot(1.0, slope)
    return (x, y), direction, 0.42 * anat.rib_spacing, False


def _draw_break(view: _View, point: tuple[float, float], direction: np.ndarray, thickness: float) -> None:
    """A dark fracture line across the bone, the distal fragment stepped by a pixel or two."""
    normal = np.array([-direction[1], direction[0]])
    centre = np.asarray(point)
    gap = np.vstack([centre - 0.6 * thickness * normal, centre + 0.6 * thickness * normal])
    _stroke(view, gap, 2.0, -0.25)
    step = centre + 0.006 * direction + 0.3 * thickness * normal
    _stroke(view, np.vstack([step, step + 0.018 * direction]), 2.5, 0.14)


def _draw_callus(view: _View, point: tuple[float, float], direction: np.ndarray, thickness: float) -> None:
    """A fusiform bony swelling around a healed fracture."""
    x, y = point
    win = _around(view, x, y, 0.04)
    angle = float(np.arctan2(direction[1], direction[0]))
    callus = _tilted_disc(win, x, y, 0.022, 0.85 * thickness, angle, view.size, px=2)
    view.add(win, 0.26 * callus)


@_paints("sclerotic_bone_lesion", "lytic_bone_lesion")
def _paint_bone_lesion(scene: _Scene, finding: Finding, rng: np.random.Generator) -> None:
    """A focal dense (sclerotic) or lucent (lytic) lesion in a rib, vertebra or clavicle."""
    anat = scene.anatomy
    side = _sides(finding, rng)[0]
    if _has(finding, "vertebrae", "spine"):
        level = _spine_levels(anat, finding, rng, 1)[0]
        y = _vertebra_top(anat, level + 0.42)
        frontal = (float(_spine_centre(anat, np.array(y))) + rng.uniform(-0.01, 0.01), y)
        lateral = (float(_lateral_spine_centre(anat, np.array(y))), y)
    else:
        site = "clavicle" if _has(finding, "clavicle") else "humerus" if _has(finding, "humerus") else "ribs"
        frontal, _, _, _ = _fracture_site(anat, site, side, rng)
        lateral = None
    radius = 0.007 + 0.01 * finding.severity
    sclerotic = finding.kind == "sclerotic_bone_lesion"
    for view in scene.views:
        point = frontal if view.kind == "frontal" else lateral
        if point is None:
            continue
        win = _around(view, *point, 2 * radius)
        lesion = _disc(win, *point, radius, radius, view.size)
        view.add(win, (0.28 if sclerotic else -0.14) * lesion)
        if not sclerotic:
            _stroke(view, _ring_points(*point, radius, radius), 1.0, 0.06)


@_paints("shoulder_degenerative", "shoulder_dislocation")
def _paint_shoulder(scene: _Scene, finding: Finding, rng: np.random.Generator) -> None:
    """Osteoarthritis: an inferior humeral-head osteophyte and a sclerotic rim. Dislocation: the head
    displaced below and medial to the glenoid (frontal view only)."""
    anat = scene.anatomy
    view = scene.views[0]
    dislocated = finding.kind == "shoulder_dislocation"
    for side in _sides(finding, rng, "random" if dislocated else "bilateral"):
        sign = _SIGN[side]
        cx, cy, r = _humeral_head(anat, side)
        if dislocated:
            win = _around(view, cx, cy + 0.03, r + 0.06)
            body = np.clip(view.body[win.rows, win.cols] * 4, 0, 1)
            moved = _disc(win, cx - sign * 0.03, cy + 0.055, r, r, view.size)
            view.add(win, 0.3 * (moved - _disc(win, cx, cy, r, r, view.size)) * body)
        else:
            _stroke(view, _ring_points(cx, cy, 0.95 * r, 0.95 * r, 0, 0.2 * np.pi, 1.2 * np.pi), 1.6, 0.12)
            spur = (cx - sign * 0.4 * r, cy + 0.95 * r)
            _stroke(view, np.array([spur, (spur[0] - sign * 0.01, spur[1] + 0.008)]), 2.2, 0.25)


# ------------------------------------------------------------------------------------------------
# Devices (metal is far denser than bone)
# ------------------------------------------------------------------------------------------------

_METAL = 3.0  # solid metal (generators, clips, rods)
_WIRE = 2.2  # thin wires and radiopaque catheter lines


@_paints("central_catheter")
def _paint_catheter(scene: _Scene, finding: Finding, rng: np.random.Generator) -> None:
    """A thin radiopaque line from a jugular or subclavian entry (sometimes a port) down the
    superior vena cava to the cavoatrial junction."""
    anat = scene.anatomy
    side = _sides(finding, rng, "right" if rng.random() < 0.7 else "left")[0]
    sign = _SIGN[side]
    medc = _mediastinum_x(anat)
    top, bottom = _heart_rows(anat)
    svc_x = medc - 0.8 * anat.mediastinum_half_width
    tip = (svc_x + 0.004, top + rng.uniform(0.0, 0.05))
    jugular = rng.random() < 0.5
    if jugular:
        entry = (anat.spine_x + sign * 0.05, 0.0)
        frontal = [entry, (anat.spine_x + sign * 0.045, anat.clavicle_y + 0.02), (svc_x, anat.knob_y), tip]
    else:
        entry = (anat.midline_x + sign * 0.7 * anat.thorax_half_width, anat.clavicle_y + 0.035)
        frontal = [entry, (anat.midline_x + sign * 0.35 * anat.thorax_half_width, anat.clavicle_y + 0.05),
                   (svc_x + (0.01 if side == "right" else 0.03), anat.knob_y - 0.01), (svc_x, anat.knob_y + 0.04), tip]
    port = not jugular and rng.random() < 0.5
    hx, hy, hd, hh = _lateral_heart(anat)
    lateral_entry = (anat.lat_front_x + 0.15, 0.0) if jugular else (anat.lat_front_x - 0.02, entry[1] + 0.01)
    lateral = [lateral_entry, (anat.lat_front_x + 0.12, anat.knob_y - 0.02), (hx - 0.45 * hd, tip[1])]
    for view in scene.views:
        points = np.array(frontal if view.kind == "frontal" else lateral)
        _stroke(view, _catmull_rom(points, 0.02), 1.5, _WIRE)
        if port:
            x, y = points[0]
            win = _around(view, x, y, 0.03)
            view.add(win, _METAL * _disc(win, x, y, 0.016, 0.014 if view.kind == "frontal" else 0.008, view.size))


@_paints("pacemaker")
def _paint_pacemaker(scene: _Scene, finding: Finding, rng: np.random.Generator) -> None:
    """A pulse generator in the upper chest wall with leads down the SVC into the right atrium and
    right ventricle (a thicker shock coil on defibrillator leads)."""
    anat = scene.anatomy
    side = _sides(finding, rng, "left" if rng.random() < 0.85 else "right")[0]
    sign = _SIGN[side]
    medc = _mediastinum_x(anat)
    top, bottom = _heart_rows(anat)
    generator = (anat.midline_x + sign * rng.uniform(0.5, 0.68) * anat.thorax_half_width,
                 anat.clavicle_y + rng.uniform(0.04, 0.08))
    angle = rng.uniform(-0.4, 0.4)
    n_leads = int(rng.choice([1, 2, 3], p=[0.3, 0.6, 0.1]))
    icd = rng.random() < 0.3
    svc_x = medc - 0.8 * anat.mediastinum_half_width
    route = [(anat.midline_x + sign * 0.28 * anat.thorax_half_width, anat.clavicle_y + 0.035),
             (medc + 0.2 * sign * anat.mediastinum_half_width, anat.knob_y - 0.025), (svc_x, anat.knob_y + 0.04),
             (svc_x - 0.004, top + 0.08)]
    height = bottom - top
    leads = [
        [(medc + 0.1 * anat.heart_left, bottom - 0.12), (medc + 0.55 * anat.heart_left, bottom - 0.06)],  # RV apex
        [(medc - 0.55 * anat.heart_right, top + 0.3 * height), (medc - 0.35 * anat.heart_right, top + 0.12)],  # RA
        # coronary sinus, to the left ventricle
        [(medc + 0.3 * anat.heart_left, top + 0.25 * height), (medc + 0.85 * anat.heart_left, top + 0.45 * height)],
    ][:n_leads]
    slack = [(generator[0] - sign * rng.uniform(0.0, 0.03), generator[1] + rng.uniform(0.02, 0.04)) for _ in leads]
    hx, hy, hd, hh = _lateral_heart(anat)
    lateral_generator = (anat.lat_front_x - 0.025, generator[1] + 0.01)
    lateral_route = [(anat.lat_front_x + 0.06, anat.clavicle_y + 0.06), (hx - 0.15 * hd, anat.knob_y + 0.04),
                     (hx - 0.1 * hd, hy - 0.75 * hh)]
    lateral_leads = [[(hx - 0.5 * hd, hy + 0.1 * hh), (hx - 0.8 * hd, hy + 0.45 * hh)],
                     [(hx - 0.3 * hd, hy - 0.5 * hh), (hx - 0.55 * hd, hy - 0.55 * hh)],
                     [(hx + 0.3 * hd, hy - 0.3 * hh), (hx + 0.6 * hd, hy)]][:n_leads]
    for view in scene.views:
        if view.kind == "frontal":
            x, y = generator
            for lead, loop in zip(leads, slack):
                _draw_lead(view, _catmull_rom(np.array([generator, loop, *route, *lead]), 0.015), icd)
            rx, ry = 0.036, 0.027
        else:
            x, y = lateral_generator
            for lead in lateral_leads:
                _draw_lead(view, _catmull_rom(np.array([lateral_generator, *lateral_route, *lead]), 0.015), icd)
            rx, ry, angle = 0.012, 0.03, 0.0
        win = _around(view, x, y, 0.06)
        c, s = np.cos(angle), np.sin(angle)
        u, v = ((win.x - x) * c + (win.y - y) * s) / rx, (-(win.x - x) * s + (win.y - y) * c) / ry
        can = _edge((1 - (u**4 + v**4) ** 0.25) * min(rx, ry), view.size)
        view.add(win, _METAL * can)


def _draw_lead(view: _View, path: np.ndarray, icd: bool) -> None:
    _stroke(view, path, 1.6, _WIRE)
    if icd:
        _stroke(view, path[int(0.7 * len(path)):], 3.2, _WIRE)


@_paints("sternotomy_wires")
def _paint_sternotomy(scene: _Scene, finding: Finding, rng: np.random.Generator) -> None:
    """Twisted cerclage wires down the midline sternum (small loops), crossing the sternum on the lateral view."""
    anat = scene.anatomy
    medc = _mediastinum_x(anat)
    top, _ = _heart_rows(anat)
    count = int(rng.integers(5, 8))
    ys = np.linspace(anat.knob_y - 0.03, top + 0.1, count) + rng.normal(0, 0.004, count)
    wires = [(medc + rng.normal(0, 0.004), y, rng.uniform(0.01, 0.014), rng.uniform(0.004, 0.007),
              rng.uniform(-0.2, 0.2)) for y in ys]
    front = _lateral_front(anat, ys)
    for view in scene.views:
        for index, (x, y, rx, ry, angle) in enumerate(wires):
            if view.kind == "frontal":
                _stroke(view, _ring_points(x, y, rx, ry, angle), 1.3, _WIRE)
                _stroke(view, np.array([[x + rx, y], [x + rx + 0.006, y + 0.006]]), 1.6, _WIRE)
            else:
                sx = float(_sternum_x(anat, front[index]))
                _stroke(view, np.array([[sx - 0.012, y - 0.002], [sx + 0.01, y + 0.003]]), 1.6, _WIRE)


_Clip = tuple[tuple[float, float], tuple[float, float], float, float]


def _clip_plan(anat: Anatomy, rng: np.random.Generator, where: str, side: str, count: int) -> list[_Clip]:
    """Surgical clips: (frontal point, lateral point, angle, length) around a named site."""
    medc = _mediastinum_x(anat)
    top, bottom = _heart_rows(anat)
    hx, hy, hd, hh = _lateral_heart(anat)
    if where == "abdomen":
        centre, spread = (anat.midline_x + _SIGN[side] * 0.4 * anat.thorax_half_width, _dome_y(anat, side) + 0.08), 0.03
        lateral = (anat.lat_front_x + 0.12, centre[1])
    elif where == "mediastinum":
        centre, spread = (medc + 0.6 * anat.heart_left, top + 0.1), 0.05
        lateral = (hx - 0.3 * hd, hy - 0.6 * hh)
    elif where == "neck":
        centre, spread = (anat.spine_x + _SIGN[side] * 0.05, 0.04), 0.02
        lateral = (anat.lat_front_x + 0.1, 0.04)
    elif where == "axilla":
        centre, spread = (anat.midline_x + _SIGN[side] * (anat.thorax_half_width + 0.02), anat.clavicle_y + 0.12), 0.03
        lateral = (anat.lat_front_x + 0.15, centre[1])
    else:
        centre, spread = _hilum(anat, side) if where == "hilum" else _point_in(anat, side, where, rng), 0.025
        lateral = _lateral_point(anat, "hilum" if where == "hilum" else where, centre[1], rng)
    clips = []
    for _ in range(count):
        dx, dy = rng.normal(0, spread, 2)
        clips.append(((centre[0] + dx, centre[1] + dy), (lateral[0] + 0.5 * dx, lateral[1] + dy),
                      rng.uniform(0, np.pi), rng.uniform(0.01, 0.016)))
    return clips


def _draw_clips(view: _View, clips: list[_Clip]) -> None:
    for frontal, lateral, angle, length in clips:
        x, y = _view_point(view, frontal, lateral)
        half = 0.5 * length * np.array([np.cos(angle), np.sin(angle)])
        _stroke(view, np.array([[x, y] - half, [x, y] + half]), 1.6, _METAL)


@_paints("surgical_clips")
def _paint_clips(scene: _Scene, finding: Finding, rng: np.random.Generator) -> None:
    anat = scene.anatomy
    side = _sides(finding, rng, "right")[0]
    if _has(finding, "abdomen"):
        where = "abdomen"
    elif _has(finding, "mediastinum", "heart"):
        where = "mediastinum"
    elif _has(finding, "neck"):
        where = "neck"
    elif _has(finding, "breast", "shoulder"):
        where = "axilla"
    elif finding.region is not None:
        where = finding.region
    else:
        where = ("mediastinum", "abdomen", "axilla")[int(rng.integers(3))]
    count = int(rng.integers(4, 9)) if _has(finding, "multiple") else int(rng.integers(2, 6))
    clips = _clip_plan(anat, rng, where, side, count)
    for view in scene.views:
        _draw_clips(view, clips)


@_paints("tube")
def _paint_tube(scene: _Scene, finding: Finding, rng: np.random.Generator) -> None:
    """Endotracheal tube (tip above the carina), enteric tube (into the stomach) or chest tube
    (entering laterally, curving to the apex): a faint tube wall with a radiopaque stripe."""
    anat = scene.anatomy
    medc = _mediastinum_x(anat)
    spine_front = float(_lateral_spine_centre(anat, np.array(anat.knob_y))) - 0.045
    if _has(finding, "abdomen", "stomach"):
        frontal = [(anat.spine_x + 0.01, 0.0), (medc + 0.012, anat.knob_y + 0.1), (medc + 0.03, anat.dome_y_left),
                   (anat.midline_x + 0.45 * anat.thorax_half_width, anat.dome_y_left + 0.06)]
        lateral = [(spine_front - 0.08, 0.0), (spine_front - 0.02, anat.knob_y + 0.12),
                   (spine_front - 0.06, anat.dome_y_left), (anat.lat_front_x + 0.15, anat.dome_y_left + 0.06)]
        wall = 0.0
    elif finding.side in _LUNG_SIDES or _has(finding, "thorax"):
        sign = _SIGN[_sides(finding, rng)[0]]
        entry_y = _dome_y(anat, finding.side if finding.side in _LUNG_SIDES else "right") - rng.uniform(0.02, 0.08)
        frontal = [(anat.midline_x + sign * (anat.body_half_width - 0.01), entry_y + 0.03),
                   (anat.midline_x + sign * (anat.thorax_half_width - 0.02), entry_y),
                   (anat.midline_x + sign * 0.75 * anat.thorax_half_width, anat.knob_y),
                   (anat.midline_x + sign * 0.5 * anat.thorax_half_width, anat.apex_y + 0.04)]
        lateral = [(anat.lat_back_x - 0.05, entry_y), (anat.lat_back_x - 0.12, anat.knob_y), (0.5, anat.apex_y + 0.05)]
        wall = 0.12
    else:
        carina_y = anat.knob_y + 0.055
        tip = carina_y - rng.uniform(0.03, 0.07)
        top_x = float(_spine_centre(anat, np.array(0.05)))
        frontal = [(top_x, 0.0), (0.5 * (top_x + medc), tip)]
        trachea_x = spine_front - 0.14
        lateral = [(trachea_x - 0.05, 0.0), (trachea_x + 0.005, tip)]
        wall = 0.1
    for view in scene.views:
        path = _catmull_rom(np.array(frontal if view.kind == "frontal" else lateral), 0.02)
        if wall:
            _stroke(view, path, 6.0, wall)
        _stroke(view, path + [0.003, 0.0], 1.4, 1.2)


@_paints("stent", "prosthetic_valve")
def _paint_stent(scene: _Scene, finding: Finding, rng: np.random.Generator) -> None:
    """A metal mesh tube (coronary, aortic stent graft, biliary) or a prosthetic valve ring."""
    anat = scene.anatomy
    medc = _mediastinum_x(anat)
    top, bottom = _heart_rows(anat)
    hx, hy, hd, hh = _lateral_heart(anat)
    if finding.kind == "prosthetic_valve":
        mitral = _has(finding, "mitral")
        frontal = (medc + (0.3 * anat.heart_left if mitral else 0.005),
                   top + (0.5 if mitral else 0.25) * (bottom - top))
        lateral = (hx + (0.2 if mitral else -0.2) * hd, hy - 0.3 * hh)
        for view in scene.views:
            x, y = _view_point(view, frontal, lateral)
            _stroke(view, _ring_points(x, y, 0.016, 0.011, 0.5), 2.2, _METAL)
        return
    if _has(finding, "aorta"):
        frontal = (medc + 0.5 * anat.knob_offset + 0.02, anat.knob_y + 0.14, 0.16, 0.018, 1.5)
        spine_front = float(_lateral_spine_centre(anat, np.array(anat.knob_y))) - 0.045
        lateral = (spine_front - 0.02, anat.knob_y + 0.14, 0.16, 0.018, 1.5)
    elif _has(finding, "abdomen"):
        frontal = (anat.midline_x - 0.3 * anat.thorax_half_width, anat.dome_y_right + 0.1, 0.04, 0.008,
                   rng.uniform(0.3, 1.2))
        lateral = (anat.lat_front_x + 0.15, anat.dome_y_right + 0.1, 0.04, 0.008, 1.2)
    else:
        y = top + rng.uniform(0.2, 0.5) * (bottom - top)
        frontal = (medc + rng.uniform(0.1, 0.5) * anat.heart_left, y, 0.025, 0.007, rng.uniform(0, np.pi))
        lateral = (hx - rng.uniform(0.2, 0.6) * hd, y, 0.025, 0.007, rng.uniform(0, np.pi))
    for view in scene.views:
        x, y, length, width, angle = _view_point(view, frontal, lateral)
        along = np.array([np.cos(angle), np.sin(angle)])
        across = np.array([-along[1], along[0]]) * width / 2
        ends = np.array([[x, y] - along * length / 2, [x, y] + along * length / 2])
        zigzag = ends[0] + np.outer(np.linspace(0, 1, 14), ends[1] - ends[0]) + np.outer(np.tile([1, -1], 7), across)
        for wall in (across, -across):
            _stroke(view, ends + wall, 1.0, 0.8)
        _stroke(view, zigzag, 1.0, 0.8)


@_paints("spinal_fusion")
def _paint_spinal_fusion(scene: _Scene, finding: Finding, rng: np.random.Generator) -> None:
    """Posterior rods with pedicle screws over several levels (an anterior plate in the neck)."""
    anat = scene.anatomy
    levels = _spine_levels(anat, finding, rng, int(rng.integers(3, 6)))
    levels = np.arange(levels.min(), levels.max() + 1)
    anterior_plate = _has(finding, "cervical") and not _has(finding, "posterior")
    y0, y1 = _vertebra_top(anat, levels[0]) + 0.01, _vertebra_top(anat, levels[-1] + 0.84) - 0.01
    ys = np.array([_vertebra_top(anat, level + 0.4) for level in levels])
    for view in scene.views:
        if view.kind == "frontal":
            centre = lambda y: float(_spine_centre(anat, np.array(y)))  # noqa: E731
            offsets = (0.0,) if anterior_plate else (-anat.spine_half_width - 0.006, anat.spine_half_width + 0.006)
            for offset in offsets:
                rod = np.array([[centre(y) + offset, y] for y in np.linspace(y0, y1, 6)])
                _stroke(view, rod, 7.0 if anterior_plate else 2.4, _METAL * (0.5 if anterior_plate else 1.0))
                for y in ys:
                    tip = centre(y) + offset * 0.3
                    _stroke(view, np.array([[centre(y) + offset, y], [tip, y]]), 2.0, _METAL)
        else:
            centre = lambda y: float(_lateral_spine_centre(anat, np.array(y)))  # noqa: E731
            offset = -0.048 if anterior_plate else 0.06
            rod = np.array([[centre(y) + offset, y] for y in np.linspace(y0, y1, 6)])
            _stroke(view, rod, 2.4, _METAL)
            for y in ys:
                _stroke(view, np.array([[centre(y) + offset, y], [centre(y) + offset * 0.1, y + 0.004]]), 2.0, _METAL)


@_paints("orthopedic_hardware")
def _paint_shoulder_prosthesis(scene: _Scene, finding: Finding, rng: np.random.Generator) -> None:
    """A metal humeral head replacement with its stem down the shaft (frontal view)."""
    anat = scene.anatomy
    view = scene.views[0]
    for side in _sides(finding, rng, "right"):
        cx, cy, r = _humeral_head(anat, side)
        win = _around(view, cx, cy, r + 0.01)
        view.add(win, _METAL * _disc(win, cx, cy, 0.9 * r, 0.9 * r, view.size) * _edge(win.y - cy + 0.3 * r, view.size))
        _stroke(view, np.array([[cx + _SIGN[side] * 0.01, cy], [cx + _SIGN[side] * 0.018, cy + 0.12]]), 4.0, _METAL)


@_paints("foreign_body")
def _paint_foreign_body(scene: _Scene, finding: Finding, rng: np.random.Generator) -> None:
    """Small irregular metallic fragments at the named site."""
    anat = scene.anatomy
    side = _sides(finding, rng)[0]
    if _has(finding, "abdomen"):
        where = "abdomen"
    elif _has(finding, "neck"):
        where = "neck"
    elif _has(finding, "breast", "shoulder", "clavicle"):
        where = "axilla"
    else:
        where = finding.region or _ZONES[int(rng.integers(3))]
    fragments = _clip_plan(anat, rng, where, side, int(rng.integers(1, 4)))
    shapes = [rng.normal(0, 0.004, (3, 2)) for _ in fragments]
    radii = [rng.uniform(0.003, 0.007, 3) for _ in fragments]
    for view in scene.views:
        for (frontal, lateral, _, _), offsets, sizes in zip(fragments, shapes, radii):
            x, y = _view_point(view, frontal, lateral)
            win = _around(view, x, y, 0.03)
            shape = np.max([_disc(win, x + dx, y + dy, r, r, view.size) for (dx, dy), r in zip(offsets, sizes)], axis=0)
            view.add(win, _METAL * shape)


@_paints("ecg_leads")
def _paint_ecg_leads(scene: _Scene, finding: Finding, rng: np.random.Generator) -> None:
    """Monitoring electrodes (a ring with a metal snap) on the chest wall and their trailing wires."""
    anat = scene.anatomy
    electrodes = []
    for _ in range(int(rng.integers(3, 6))):
        x = anat.midline_x + rng.uniform(-0.9, 0.9) * anat.thorax_half_width
        y = rng.uniform(anat.clavicle_y + 0.02, _dome_y(anat, "right") + 0.1)
        heading = rng.uniform(0, 2 * np.pi) + np.cumsum(rng.normal(0, 0.3, 12))
        wire = np.vstack([[0, 0], np.cumsum(np.column_stack([np.cos(heading), np.sin(heading)]) * 0.035, axis=0)])
        electrodes.append(((x, y), wire, rng.uniform(anat.lat_front_x - 0.05, anat.lat_front_x - 0.03)))
    for view in scene.views:
        for (x, y), wire, lateral_x in electrodes:
            if view.kind == "lateral":
                x = lateral_x
            win = _around(view, x, y, 0.02)
            view.add(win, _METAL * _disc(win, x, y, 0.004, 0.004, view.size))
            if view.kind == "frontal":
                _stroke(view, _ring_points(x, y, 0.012, 0.012), 1.0, 0.35)
                _stroke(view, wire + [x, y], 1.2, 0.6)


@_paints("breast_implant")
def _paint_breast_implants(scene: _Scene, finding: Finding, rng: np.random.Generator) -> None:
    """Dense, smoothly rounded implant shadows over the lower zones, with a thin shell."""
    anat = scene.anatomy
    for side in _sides(finding, rng, "bilateral"):
        cx = anat.midline_x + _SIGN[side] * 0.55 * anat.thorax_half_width
        frontal = (cx, _dome_y(anat, side) - 0.08, 0.13, 0.1)
        lateral = (anat.lat_front_x - 0.03, _dome_y(anat, side) - 0.08, 0.05, 0.09)
        for view in scene.views:
            x, y, rx, ry = _view_point(view, frontal, lateral)
            win = _around(view, x, y, max(rx, ry) + 0.01)
            view.add(win, 0.3 * _disc(win, x, y, rx, ry, view.size))
            _stroke(view, _ring_points(x, y, rx, ry), 1.3, 0.15)


# ================================================================================================
# Public entry point
# ================================================================================================


def _display(density: np.ndarray) -> np.ndarray:
    return np.clip(1.0 - np.exp(-np.maximum(density, 0.0)), 0.0, 1.0).astype(np.float32)


def render_study(findings: Sequence[Finding], seed: int, size: int = 256, n_views: int = 2) -> list[np.ndarray]:
    """Render a study's views: ``[frontal PA, lateral][:n_views]``, float32 ``(size, size)`` in [0, 1].

    Deterministic for the same arguments; the patient's anatomy depends on ``seed`` only.
    """
    if n_views not in (1, 2):
        raise ValueError(f"n_views must be 1 or 2, got {n_views}")
    base = sample_anatomy(np.random.default_rng(seed))
    ordered = sorted(findings, key=lambda f: (FINDING_KINDS.index(f.kind), repr(f)))  # order-independent
    streams = _finding_streams(seed, ordered)
    anatomy = base
    for finding, stream in zip(ordered, streams):
        modifier = _MODIFIERS.get(finding.kind)
        if modifier is not None:
            anatomy = modifier(anatomy, finding, np.random.default_rng([*stream, 0]))
    views = [_frontal_view(anatomy, size, np.random.default_rng([seed, _TEXTURE_STREAM, 0]))]
    if n_views == 2:
        views.append(_lateral_view(anatomy, size, np.random.default_rng([seed, _TEXTURE_STREAM, 1])))
    scene = _Scene(anatomy, views)
    for finding, stream in zip(ordered, streams):
        painter = _PAINTERS.get(finding.kind)
        if painter is not None:
            painter(scene, finding, np.random.default_rng([*stream, 1]))
    return [_display(view.density) for view in views]


def _finding_streams(seed: int, findings: Sequence[Finding]) -> list[list[int]]:
    """A seed sequence per finding that depends on the finding itself, not on the other findings."""
    seen: dict[Finding, int] = {}
    streams = []
    for finding in findings:
        repeat = seen.get(finding, 0)
        seen[finding] = repeat + 1
        key = zlib.crc32(repr(dataclasses.astuple(finding)).encode())
        streams.append([seed, _FINDING_STREAM, key, repeat])
    return streams
