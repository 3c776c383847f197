"""What the painters share: the scene (the anatomy and the views being drawn) and helpers that
place a finding on a side, a zone or a point of each view."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from fedmrg.data.synthetic.anatomy import (
    LUNG_SIDES,
    Anatomy,
    diaphragm_y,
    hilum_centre,
    lateral_diaphragm_y,
    lateral_hilum_centre,
    lung_bounds,
    mediastinum_x,
    vertebra_phase,
    zone_box,
)
from fedmrg.data.synthetic.canvas import View
from fedmrg.data.synthetic.findings import Finding
from fedmrg.data.synthetic.primitives import Window, gaussian, smooth_noise

# A modifier changes the anatomy before the views are drawn; a painter adds density to the views.
# Painters draw every random number before drawing anything, so the frontal view comes out the
# same whether or not the lateral view is rendered.


@dataclass
class Scene:
    """What every painter receives: the (modified) anatomy and the views being drawn."""

    anatomy: Anatomy
    views: list[View]


Modifier = Callable[[Anatomy, Finding, np.random.Generator], Anatomy]
Painter = Callable[[Scene, Finding, np.random.Generator], None]

ZONES = ("upper", "middle", "lower")
_LATERAL_DEPTH = {  # share of the anteroposterior lung depth where a zone projects on the lateral view
    "apex": (0.35, 0.75),
    "upper": (0.25, 0.75),
    "middle": (0.08, 0.4),
    "lingula": (0.08, 0.4),
    "lower": (0.5, 0.92),
    "base": (0.45, 0.92),
    "retrocardiac": (0.6, 0.82),
    "hilum": (0.42, 0.6),
    "paratracheal": (0.35, 0.5),
}


def finding_sides(finding: Finding, rng: np.random.Generator, default: str = "random") -> tuple[str, ...]:
    """The lungs a finding involves; an unnamed side becomes ``default`` ("random", "bilateral", a side)."""
    if finding.side in LUNG_SIDES:
        return (finding.side,)
    if finding.side == "bilateral" or default == "bilateral":
        return LUNG_SIDES
    if default in LUNG_SIDES:
        return (default,)
    return (LUNG_SIDES[int(rng.integers(2))],)


def has_qualifier(finding: Finding, *words: str) -> bool:
    return any(word in qualifier for qualifier in finding.qualifiers for word in words)


def point_in_zone(anat: Anatomy, side: str, region: str | None, rng: np.random.Generator) -> tuple[float, float]:
    """A frontal point in a zone, inside the lung when the zone is a lung zone."""
    x0, x1, y0, y1 = zone_box(anat, side, region)
    for _ in range(30):
        x = rng.uniform(x0 + 0.15 * (x1 - x0), x1 - 0.15 * (x1 - x0))
        y = rng.uniform(y0 + 0.1 * (y1 - y0), y1 - 0.1 * (y1 - y0))
        if region in ("hilum", "retrocardiac", "paratracheal"):
            return x, y
        low, high = lung_bounds(anat, side, np.array(y))
        if low + 0.02 < x < high - 0.02 and y < float(diaphragm_y(anat, side, np.array(x))) - 0.02:
            return x, y
    return 0.5 * (x0 + x1), 0.5 * (y0 + y1)


def lateral_point(anat: Anatomy, region: str | None, y: float, rng: np.random.Generator) -> tuple[float, float]:
    """Where a frontal point at height ``y`` in ``region`` projects on the lateral view."""
    lo, hi = _LATERAL_DEPTH.get(region, (0.2, 0.85))
    x = anat.lat_front_x + (anat.lat_back_x - anat.lat_front_x) * rng.uniform(lo, hi)
    floor = min(float(lateral_diaphragm_y(anat, side, np.array(x))) for side in LUNG_SIDES) - 0.02
    return x, float(np.clip(y, anat.apex_y + 0.04, floor))


def lobules(rng: np.random.Generator, radius: float, count: int) -> np.ndarray:
    """Offsets and sizes (dx, dy, sigma) of the gaussian lobules that make up an opacity."""
    return np.column_stack(
        [rng.normal(0, 0.5 * radius, count), rng.normal(0, 0.5 * radius, count), radius * rng.uniform(0.35, 0.6, count)]
    )


def opacity_cloud(
    win: Window, x: float, y: float, blobs: np.ndarray, rng: np.random.Generator, confluent: bool, size: int
) -> np.ndarray:
    """An opacity 0..1: patchy (mottled lobules) or confluent (uniform with a firmer margin)."""
    field = sum(gaussian(win, x + dx, y + dy, sigma, sigma) for dx, dy, sigma in blobs)
    field = field / max(float(field.max()), 1e-6)
    noise = smooth_noise(rng, field.shape, 5.0 * size / 256)
    if confluent:
        field = np.clip((field - 0.15) / 0.4, 0, 1)
        return field * field * (3 - 2 * field) * np.clip(0.9 + 0.15 * noise, 0, 1)
    return np.clip(1.3 * field, 0, 1) * np.clip(0.8 + 0.3 * noise, 0, 1)


def window_around(view: View, x: float, y: float, reach: float) -> Window | None:
    return view.window(x - reach, x + reach, y - reach, y + reach)


def view_point(view: View, frontal: tuple[float, float], lateral: tuple[float, float]) -> tuple[float, float]:
    return frontal if view.kind == "frontal" else lateral


def collapsed_lung(view: View, side: str, win: Window, centre: tuple[float, float], factor: float) -> np.ndarray:
    """The lung of ``side`` shrunk toward ``centre`` by ``factor``, sampled over ``win``."""
    size = view.size
    rows = (centre[1] + (win.y - centre[1]) / factor) * size - 0.5
    cols = (centre[0] + (win.x - centre[0]) / factor) * size - 0.5
    rows, cols = np.broadcast_arrays(rows, cols)
    return ndimage.map_coordinates(view.lung[side], [rows, cols], order=1, mode="constant")


def lung_window(view: View, anat: Anatomy, side: str) -> Window:
    """The part of a view that holds one lung."""
    if view.kind == "lateral":
        return view.window(anat.lat_front_x - 0.03, anat.lat_back_x + 0.01, anat.apex_y - 0.01, 0.99)
    medc = mediastinum_x(anat)
    if side == "right":
        return view.window(anat.midline_x - anat.thorax_half_width - 0.02, medc + 0.02, anat.apex_y - 0.01, 0.99)
    return view.window(medc - 0.02, anat.midline_x + anat.thorax_half_width + 0.02, anat.apex_y - 0.01, 0.99)


def zone_weight(view: View, anat: Anatomy, side: str, win: Window, region: str | None, hilar: bool) -> np.ndarray:
    """Soft 0..1 weight of a zone over a lung window (rows of the zone; around the hilum if hilar)."""
    if hilar:
        centre = hilum_centre(anat, side) if view.kind == "frontal" else lateral_hilum_centre(anat)
        return np.exp(-np.hypot(win.x - centre[0], win.y - centre[1]) / 0.1)
    if region is None:
        return np.ones((1, 1), dtype=np.float32)
    _, _, y0, y1 = zone_box(anat, side, region)
    return np.clip(np.minimum(win.y - y0, y1 - win.y) / 0.04 + 0.5, 0, 1)


def spine_levels(anat: Anatomy, finding: Finding, rng: np.random.Generator, count: int) -> np.ndarray:
    """Indices of vertebrae (as counted by vertebra_phase) in the named segment of the spine."""
    if has_qualifier(finding, "cervical"):
        y0, y1 = 0.0, anat.apex_y + 0.03
    elif has_qualifier(finding, "lumbar"):
        y0, y1 = max(anat.dome_y_right, anat.dome_y_left) + 0.05, 0.98
    else:
        y0, y1 = anat.clavicle_y + 0.05, max(anat.dome_y_right, anat.dome_y_left)
    first, last = np.floor(vertebra_phase(anat, np.array([y0, y1])))
    candidates = np.arange(int(first), int(last) + 1)
    return np.sort(rng.choice(candidates, size=min(count, len(candidates)), replace=False))
