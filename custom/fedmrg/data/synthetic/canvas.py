"""The radiograph being drawn (:class:`View`: density, lung masks and lung air) and the two ways
findings add to it: replacing a lung's air (:func:`fill_air`) and stroking lines (:func:`stroke`)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from fedmrg.data.synthetic.anatomy import LUNG_SIDES
from fedmrg.data.synthetic.primitives import Window, resample_polyline, splat, window


@dataclass
class View:
    """One radiograph being drawn, with what the painters need to know about its lungs."""

    kind: str  # "frontal" | "lateral"
    size: int
    density: np.ndarray
    body: np.ndarray  # soft-tissue thickness 0..1
    lung: dict[str, np.ndarray]  # per lung: where it is (0..1)
    air: dict[str, np.ndarray]  # per lung: density its air removes (net of its vessels)
    fill: dict[str, np.ndarray]  # per lung: fraction of that air already replaced by findings
    markings: np.ndarray  # vessel density inside the lungs

    def window(self, x0: float, x1: float, y0: float, y1: float) -> Window | None:
        return window(self.size, x0, x1, y0, y1)

    def add(self, win: Window | None, values: np.ndarray | float) -> None:
        if win is not None:
            self.density[win.rows, win.cols] += values


def new_view(kind: str, size: int, body: np.ndarray) -> View:
    zeros = lambda: np.zeros((size, size), dtype=np.float32)  # noqa: E731
    return View(
        kind,
        size,
        zeros(),
        body,
        {s: zeros() for s in LUNG_SIDES},
        {s: zeros() for s in LUNG_SIDES},
        {s: zeros() for s in LUNG_SIDES},
        zeros(),
    )


def fill_air(view: View, side: str, win: Window | None, fraction: np.ndarray, extra: float = 0.0) -> None:
    """Replace ``fraction`` of one lung's air by tissue or fluid (``extra``: denser than tissue).

    Fractions combine by maximum, so overlapping findings never exceed an airless lung.
    """
    if win is None:
        return
    old = view.fill[side][win.rows, win.cols]
    new = np.maximum(old, np.clip(fraction, 0.0, 1.0))
    view.density[win.rows, win.cols] += (new - old) * view.air[side][win.rows, win.cols] * (1 + extra)
    view.fill[side][win.rows, win.cols] = new


def stroke(view: View, points: np.ndarray, width_px: float, amount: float | np.ndarray) -> None:
    """Add a line of peak density ``amount`` along a polyline (normalised points)."""
    size = view.size
    step = 0.35 / size
    pts = resample_polyline(points, step)
    sigma = max(0.45, width_px / 2.355) * size / 256
    pad = 4 * sigma / size + 1 / size
    win = window(size, pts[:, 0].min() - pad, pts[:, 0].max() + pad, pts[:, 1].min() - pad, pts[:, 1].max() + pad)
    if win is None:
        return
    shape = (win.rows.stop - win.rows.start, win.cols.stop - win.cols.start)
    weights = np.broadcast_to(np.asarray(amount, dtype=np.float64), (len(pts),))
    canvas = splat(shape, pts[:, 0] * size - win.cols.start, pts[:, 1] * size - win.rows.start, weights)
    canvas = ndimage.gaussian_filter(canvas, sigma, truncate=3.0)
    view.density[win.rows, win.cols] += canvas * (0.35 * np.sqrt(2 * np.pi) * sigma)
