"""Drawing primitives on normalised image coordinates: pixel windows, anti-aliased edges and
ellipses, smooth noise, spline curves and distances to polylines."""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np


@lru_cache(maxsize=8)
def pixel_centres(size: int) -> np.ndarray:
    axis = (np.arange(size, dtype=np.float32) + 0.5) / size
    axis.flags.writeable = False
    return axis


def soft_edge(t: np.ndarray | float, size: int, px: float = 1.2) -> np.ndarray:
    """0 -> 1 across ``px`` pixels around ``t = 0`` (``t`` normalised): an anti-aliased edge."""
    return np.clip(np.asarray(t) * (size / px) + 0.5, 0.0, 1.0)


@dataclass(frozen=True)
class Window:
    """A rectangular part of a view: slices and broadcastable normalised coordinates."""

    rows: slice
    cols: slice
    x: np.ndarray  # shape (1, w)
    y: np.ndarray  # shape (h, 1)


def window(size: int, x0: float, x1: float, y0: float, y1: float) -> Window | None:
    c0, c1 = max(0, int(np.floor(x0 * size))), min(size, int(np.ceil(x1 * size)))
    r0, r1 = max(0, int(np.floor(y0 * size))), min(size, int(np.ceil(y1 * size)))
    if c1 <= c0 or r1 <= r0:
        return None
    axis = pixel_centres(size)
    return Window(slice(r0, r1), slice(c0, c1), axis[None, c0:c1], axis[r0:r1, None])


def ellipse(win: Window, x: float, y: float, rx: float, ry: float, size: int) -> np.ndarray:
    """Anti-aliased filled ellipse."""
    r = np.sqrt(((win.x - x) / rx) ** 2 + ((win.y - y) / ry) ** 2)
    return soft_edge((1 - r) * min(rx, ry), size)


def tilted_ellipse(
    win: Window, x: float, y: float, rx: float, ry: float, angle: float, size: int, px: float = 1.2
) -> np.ndarray:
    """Anti-aliased ellipse rotated by ``angle`` (radians, image coordinates)."""
    c, s = np.cos(angle), np.sin(angle)
    u = (win.x - x) * c + (win.y - y) * s
    v = -(win.x - x) * s + (win.y - y) * c
    return soft_edge((1 - np.sqrt((u / rx) ** 2 + (v / ry) ** 2)) * min(rx, ry), size, px)


def gaussian(win: Window, x: float, y: float, sx: float, sy: float) -> np.ndarray:
    return np.exp(-0.5 * (((win.x - x) / sx) ** 2 + ((win.y - y) / sy) ** 2))


def ring_points(
    x: float,
    y: float,
    rx: float,
    ry: float,
    angle: float = 0.0,
    start: float = 0.0,
    stop: float = 2 * np.pi,
    n: int = 40,
) -> np.ndarray:
    t = np.linspace(start, stop, n)
    c, s = np.cos(angle), np.sin(angle)
    u, v = rx * np.cos(t), ry * np.sin(t)
    return np.column_stack([x + u * c - v * s, y + u * s + v * c])


def cortical_band(t: np.ndarray, thickness: float | np.ndarray, size: int) -> np.ndarray:
    """Profile across a bone of ``thickness``: flat medulla, brighter cortical margins (t normalised)."""
    inside = soft_edge(t, size) * soft_edge(thickness - t, size)
    cortex = np.exp(-((t * size / 1.1) ** 2)) + np.exp(-(((thickness - t) * size / 1.1) ** 2))
    return inside * (0.6 + 0.4 * np.clip(cortex, 0, 1))


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


def smooth_noise(rng: np.random.Generator, shape: tuple[int, int], cell_px: float) -> np.ndarray:
    """Zero-mean, unit-ish variance smooth noise with features about ``cell_px`` pixels wide."""
    h, w = shape
    ny, nx = max(2, int(h / cell_px) + 2), max(2, int(w / cell_px) + 2)
    small = rng.standard_normal((ny, nx)).astype(np.float32)
    return _interp_matrix(h, ny) @ small @ _interp_matrix(w, nx).T


def catmull_rom(points: np.ndarray, step: float) -> np.ndarray:
    """A smooth curve through ``points`` (k, 2), resampled every ``step`` (normalised units)."""
    p = np.vstack([2 * points[0] - points[1], points, 2 * points[-1] - points[-2]])
    out = []
    for i in range(1, len(p) - 2):
        p0, p1, p2, p3 = p[i - 1], p[i], p[i + 1], p[i + 2]
        n = max(2, int(np.ceil(np.linalg.norm(p2 - p1) / step)))
        t = np.linspace(0, 1, n, endpoint=False)[:, None]
        out.append(
            0.5
            * ((2 * p1) + (-p0 + p2) * t + (2 * p0 - 5 * p1 + 4 * p2 - p3) * t**2 + (-p0 + 3 * p1 - 3 * p2 + p3) * t**3)
        )
    out.append(points[-1:])
    return np.vstack(out)


def resample_polyline(points: np.ndarray, step: float) -> np.ndarray:
    """A polyline resampled every ``step`` along its length."""
    seg = np.linalg.norm(np.diff(points, axis=0), axis=1)
    arc = np.concatenate([[0.0], np.cumsum(seg)])
    s = np.arange(0.0, arc[-1] + 1e-9, step)
    return np.column_stack([np.interp(s, arc, points[:, 0]), np.interp(s, arc, points[:, 1])])


def splat(shape: tuple[int, int], px: np.ndarray, py: np.ndarray, weight: np.ndarray) -> np.ndarray:
    """Bilinear splat of weighted points (pixel coordinates) into an image of ``shape``."""
    h, w = shape
    x0, y0 = np.floor(px - 0.5).astype(np.int64), np.floor(py - 0.5).astype(np.int64)
    fx, fy = px - 0.5 - x0, py - 0.5 - y0
    xi = np.concatenate([x0, x0 + 1, x0, x0 + 1])
    yi = np.concatenate([y0, y0, y0 + 1, y0 + 1])
    wt = np.concatenate([(1 - fx) * (1 - fy), fx * (1 - fy), (1 - fx) * fy, fx * fy]) * np.tile(weight, 4)
    ok = (xi >= 0) & (xi < w) & (yi >= 0) & (yi < h)
    return np.bincount(yi[ok] * w + xi[ok], weights=wt[ok], minlength=h * w).reshape(h, w).astype(np.float32)


def segment_distance(win: Window, points: np.ndarray) -> np.ndarray:
    """Distance from every pixel of ``win`` to a polyline."""
    best = np.full(np.broadcast_shapes(win.x.shape, win.y.shape), np.inf, dtype=np.float32)
    for (ax, ay), (bx, by) in zip(points[:-1], points[1:]):
        dx, dy = bx - ax, by - ay
        t = np.clip(((win.x - ax) * dx + (win.y - ay) * dy) / max(dx * dx + dy * dy, 1e-12), 0, 1)
        best = np.minimum(best, np.hypot(win.x - ax - t * dx, win.y - ay - t * dy))
    return best
