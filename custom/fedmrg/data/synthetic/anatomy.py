"""Patient anatomy for the synthetic radiographs: the sampled geometry (:class:`Anatomy`) and the
shared functions that place organs, ribs and lung zones on the frontal and lateral views."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np

# Coordinates are normalised to the image: ``x = column / size``, ``y = row / size``. On the frontal
# view the patient's right is on the image left; on the lateral view ``x`` runs from anterior (left)
# to posterior (right) and ``y`` is shared with the frontal view, so a finding keeps its height.


SIGN = {"right": -1.0, "left": 1.0}  # frontal image x direction of the patient's side
LUNG_SIDES = ("right", "left")


@dataclass(frozen=True)
class Anatomy:
    """Patient geometry, normalised to the image (see the note on coordinates above)."""

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


def raise_dome(anat: Anatomy, side: str, amount: float) -> Anatomy:
    field = "dome_y_right" if side == "right" else "dome_y_left"
    return dataclasses.replace(anat, **{field: getattr(anat, field) - amount})


# ------------------------------------------------------------------------------------------------
# Geometry shared by the base drawing, the painters and region_box
# ------------------------------------------------------------------------------------------------


def dome_y(anat: Anatomy, side: str) -> float:
    return anat.dome_y_right if side == "right" else anat.dome_y_left


def mediastinum_x(anat: Anatomy) -> float:
    return anat.midline_x + anat.mediastinal_shift


def diaphragm_y(anat: Anatomy, side: str, x: np.ndarray) -> np.ndarray:
    """Frontal height of one hemidiaphragm at ``x``: a dome, deepest at the costophrenic angle."""
    lateral = np.abs(x - anat.midline_x) / anat.thorax_half_width
    return dome_y(anat, side) + anat.sulcus_depth * ((lateral - 0.45) / 0.55) ** 2


def lung_bounds(anat: Anatomy, side: str, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Frontal x-extent (low, high) of one lung per row, with a rounded apex (low > high: no lung).

    The medial bound is the cardiomediastinal silhouette, so heart and aorta shape the lung edge.
    """
    mid, medc, half = anat.midline_x, mediastinum_x(anat), anat.thorax_half_width
    dome = dome_y(anat, side)
    rounding_end = anat.apex_y + 0.25 * (dome - anat.apex_y)
    r = np.clip((rounding_end - y) / (rounding_end - anat.apex_y), 0, None)
    s = np.where(y < anat.apex_y, 0.0, np.sqrt(np.clip(1 - r**2, 0, 1)))
    widening = 0.84 + 0.16 * np.clip((y - anat.apex_y) / (dome - anat.apex_y), 0, 1) ** 0.7
    apex_centre = 0.42 * half
    lateral = apex_centre + (half * widening - apex_centre) * s
    sign = SIGN[side]
    outer = mid + sign * lateral
    inner = (medc + sign * _silhouette_half_width(anat, side, y)) * s + (mid + sign * apex_centre) * (1 - s)
    return (outer, inner) if side == "right" else (inner, outer)


def heart_top_bottom(anat: Anatomy) -> tuple[float, float]:
    """Top and bottom of the heart: it hangs below the pulmonary trunk (higher when enlarged) and
    rests on the diaphragm, its lowest part hidden below the domes."""
    bottom = 0.4 * anat.dome_y_right + 0.6 * anat.dome_y_left + 0.03
    top = anat.knob_y + 0.085 - 2 * (anat.heart_half_height - 0.13)
    return min(top, bottom - 0.15), bottom


def heart_half_width(anat: Anatomy, side: str, y: np.ndarray) -> np.ndarray:
    """Distance of one heart border from the mediastinal centre per row (0 above the heart).

    Right border: the convex right atrium. Left border: the left atrial appendage, then the broad
    convex left ventricle curving in toward the apex. Pericardial fluid makes the heart globular.
    """
    top, bottom = heart_top_bottom(anat)
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
        return np.maximum(width + ascending, heart_half_width(anat, side, y))
    knob_r = anat.knob_radius * (1 + 0.5 * anat.aorta_ectasia)
    knob_reach = anat.knob_offset + 0.03 * anat.aorta_ectasia + knob_r
    knob = knob_reach * np.sqrt(np.clip(1 - ((y - anat.knob_y) / (1.2 * knob_r)) ** 2, 0, 1))
    trunk_y = anat.knob_y + 2.7 * anat.knob_radius
    trunk_reach = anat.mediastinum_half_width + 0.012 + 0.025 * anat.pulmonary_trunk
    trunk = trunk_reach * np.sqrt(np.clip(1 - ((y - trunk_y) / (0.028 + 0.01 * anat.pulmonary_trunk)) ** 2, 0, 1))
    descending = np.where(y > anat.knob_y, descending_aorta_reach(anat, y), 0.0)
    return np.maximum.reduce([width, knob, trunk, descending, heart_half_width(anat, side, y)])


def descending_aorta_reach(anat: Anatomy, y: np.ndarray) -> np.ndarray:
    """Left wall of the descending aorta from the mediastinal centre; a tortuous aorta bows out."""
    bulge = np.sin(np.pi * np.clip((y - anat.knob_y) / (anat.dome_y_left - anat.knob_y), 0, 1))
    return 0.5 * anat.knob_offset + 0.02 + 0.045 * anat.aorta_ectasia * bulge


def heart_borders(anat: Anatomy) -> tuple[float, float, float]:
    """Widest right and left heart border (x) and the row where the heart is widest."""
    top, bottom = heart_top_bottom(anat)
    medc = mediastinum_x(anat)
    return medc - anat.heart_right, medc + anat.heart_left, top + 0.75 * (bottom - top)


def hilum_centre(anat: Anatomy, side: str) -> tuple[float, float]:
    medc = mediastinum_x(anat)
    y = anat.hilum_y_right if side == "right" else anat.hilum_y_left
    return medc + SIGN[side] * (anat.mediastinum_half_width + 0.035), y


def spine_centre(anat: Anatomy, y: np.ndarray) -> np.ndarray:
    """Frontal centre line of the spine; scoliosis bends it in one smooth C-curve."""
    t = np.clip((y - anat.spine_curve_y) / 0.45, -1, 1)
    return anat.spine_x + anat.spine_curve * np.cos(0.5 * np.pi * t) ** 2


def rib_rise(anat: Anatomy, lateral: np.ndarray, y: np.ndarray) -> np.ndarray:
    """How far a posterior rib lies above its spinal end: it arches up, then falls to the lateral
    wall; lower ribs slope down more steeply."""
    lower = np.clip((y - anat.apex_y) / (anat.dome_y_right - anat.apex_y), 0, 1)
    u = np.clip(lateral, 0, 1.15)
    return anat.rib_arch * (1.9 * u - 2.2 * u**2) - 0.045 * lower * u


def rib_y(anat: Anatomy, side: str, k: float, x: float) -> float:
    """Centre height of posterior rib ``k`` (0 = first) at frontal ``x``."""
    lateral = abs(x - anat.spine_x) / anat.thorax_half_width
    level = anat.rib_start_y + (k + 0.22) * anat.rib_spacing
    y = level
    for _ in range(3):  # the rise depends weakly on y: a few fixed-point steps
        y = level - float(rib_rise(anat, np.array(lateral), np.array(y)))
    return y


def vertebra_phase(anat: Anatomy, y: np.ndarray) -> np.ndarray:
    return (y - anat.rib_start_y + 0.4 * anat.vertebra_height) / anat.vertebra_height


def vertebra_top(anat: Anatomy, level: float) -> float:
    """Height of the upper end plate of vertebra ``level``."""
    return anat.rib_start_y - 0.4 * anat.vertebra_height + level * anat.vertebra_height


def clavicle_ends(anat: Anatomy, side: str) -> tuple[tuple[float, float], tuple[float, float]]:
    sign = SIGN[side]
    medial = (anat.spine_x + sign * 0.028, anat.clavicle_y + 0.03)
    lateral = (anat.midline_x + sign * (anat.thorax_half_width + 0.065), anat.clavicle_y - 0.035)
    return medial, lateral


def humeral_head(anat: Anatomy, side: str) -> tuple[float, float, float]:
    """Centre and radius of a humeral head."""
    return anat.midline_x + SIGN[side] * (anat.thorax_half_width + 0.09), anat.clavicle_y - 0.01, 0.048


def lateral_front(anat: Anatomy, y: np.ndarray) -> np.ndarray:
    """Lateral: inner anterior chest wall per row; a pectus deformity bows the lower sternum."""
    sternum = np.exp(-(((y - anat.dome_y_right + 0.1) / 0.12) ** 2))
    return anat.lat_front_x - 0.07 * anat.pectus * sternum + 0.025 * np.clip((0.3 - y) / 0.2, 0, 1)


def lateral_diaphragm_y(anat: Anatomy, side: str, x: np.ndarray) -> np.ndarray:
    """Lateral height of one hemidiaphragm: high anteriorly, deepest at the posterior sulcus."""
    front, back = anat.lat_front_x, anat.lat_back_x
    peak = front + 0.38 * (back - front)
    anterior = 0.5 * anat.sulcus_depth * ((peak - x) / (peak - front)) ** 2
    posterior = 1.5 * anat.sulcus_depth * ((x - peak) / (back - peak)) ** 2
    return dome_y(anat, side) - 0.01 + np.where(x < peak, anterior, posterior)


def lateral_spine_centre(anat: Anatomy, y: np.ndarray) -> np.ndarray:
    return anat.lat_spine_x + anat.kyphosis * (np.sin(np.pi * np.clip(y, 0, 1)) - 0.5)


def lateral_heart(anat: Anatomy) -> tuple[float, float, float, float]:
    """Lateral heart as an ellipse (cx, cy, half depth, half height) behind the lower sternum."""
    top, bottom = heart_top_bottom(anat)
    normal_width = 0.45 * 2 * anat.thorax_half_width
    depth = anat.lat_heart_depth * (0.55 + 0.45 * (anat.heart_left + anat.heart_right) / normal_width)
    return anat.lat_front_x + 0.01 + depth, top + 0.6 * (bottom - top), depth, 0.5 * (bottom - top)


def lateral_heart_bounds(anat: Anatomy, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Lateral heart per row (anterior x, posterior x): the right ventricle meets the lower sternum,
    the left ventricle bulges back toward the spine, the top narrows into the great vessels."""
    top, bottom = heart_top_bottom(anat)
    t = (y - top) / (bottom - top)
    _, _, depth, _ = lateral_heart(anat)
    front = lateral_front(anat, y)
    anterior = front + 0.008 + 0.09 * (1 - np.sin(0.5 * np.pi * np.clip(t / 0.6, 0, 1)))
    reach = 0.45 + 0.55 * np.sin(0.5 * np.pi * np.clip(t / 0.7, 0, 1)) ** 0.8
    posterior = front + 0.01 + 2 * depth * reach * (1 - 0.12 * np.clip((t - 0.8) / 0.2, 0, 1) ** 2)
    apex = front + 0.01 + 0.9 * depth
    dome = np.sqrt(np.clip(1 - (1 - np.clip(t / 0.25, 0, 1)) ** 2, 0, 1))  # a rounded top
    anterior, posterior = apex - (apex - anterior) * dome, apex + (posterior - apex) * dome
    return np.where(t > 0, anterior, 1.0), np.where(t > 0, posterior, 0.0)


def lateral_hilum_centre(anat: Anatomy) -> tuple[float, float]:
    return 0.55 * anat.lat_front_x + 0.45 * anat.lat_back_x + 0.02, 0.5 * (anat.hilum_y_right + anat.hilum_y_left)


def sternum_x(anat: Anatomy, front: np.ndarray) -> np.ndarray:
    return front - 0.016


# ------------------------------------------------------------------------------------------------
# Lung zones
# ------------------------------------------------------------------------------------------------


def zone_box(anat: Anatomy, side: str, region: str | None) -> tuple[float, float, float, float]:
    """Frontal (x0, x1, y0, y1) of a lung zone on one side."""
    medc, half = mediastinum_x(anat), anat.thorax_half_width
    if region == "retrocardiac":
        top, bottom = heart_top_bottom(anat)
        return medc - 0.005, medc + 0.7 * anat.heart_left, top + 0.3 * (bottom - top), anat.dome_y_left + 0.01
    if region == "hilum":
        x, y = hilum_centre(anat, side)
        return x - 0.045, x + 0.045, y - 0.05, y + 0.05
    if region == "paratracheal":
        inner = medc + SIGN[side] * (anat.mediastinum_half_width - 0.012)
        outer = inner + SIGN[side] * 0.045
        return min(inner, outer), max(inner, outer), anat.apex_y + 0.05, anat.knob_y + 0.03
    if side == "right":
        x0, x1 = anat.midline_x - half, medc - anat.mediastinum_half_width
    else:
        x0, x1 = medc + anat.mediastinum_half_width, anat.midline_x + half
    y0, y1 = anat.apex_y, dome_y(anat, side) + anat.sulcus_depth
    if region == "lingula":
        x1 = x0 + 0.55 * (x1 - x0)
    lo, hi = _ZONE_FRACTIONS.get(region, (0.0, 1.0))
    return x0, x1, y0 + lo * (y1 - y0), y0 + hi * (y1 - y0)


_ZONE_FRACTIONS = {
    "apex": (0.0, 0.2),
    "upper": (0.05, 0.42),
    "middle": (0.38, 0.66),
    "lower": (0.58, 1.0),
    "base": (0.72, 1.0),
    "lingula": (0.45, 0.78),
}


def region_box(anatomy: Anatomy, side: str | None, region: str | None, size: int) -> tuple[slice, slice]:
    """Frontal pixel box (rows, cols) where a finding at ``side``/``region`` is drawn.

    ``bilateral`` or ``None`` give the box around both sides' zones (retrocardiac ignores the side).
    """
    sides = (side,) if side in LUNG_SIDES else LUNG_SIDES
    boxes = np.array([zone_box(anatomy, s, region) for s in sides])
    x0, y0 = boxes[:, 0].min(), boxes[:, 2].min()
    x1, y1 = boxes[:, 1].max(), boxes[:, 3].max()
    clip = lambda v: int(np.clip(round(v * size), 0, size))  # noqa: E731
    return slice(clip(y0), clip(y1)), slice(clip(x0), clip(x1))
