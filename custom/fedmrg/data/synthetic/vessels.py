"""Pulmonary vessel trees branching from the hila, drawn as density on both views."""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from fedmrg.data.synthetic.primitives import splat


def vessel_tree(
    rng: np.random.Generator, root: tuple[float, float], angles: tuple[float, float], n_trunks: int, length: float
) -> list[np.ndarray]:
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
        path = np.concatenate(
            [
                starts[:, None, :],
                starts[:, None, :] + np.cumsum(np.stack([np.cos(turn) * step, np.sin(turn) * step], axis=-1), axis=1),
            ],
            axis=1,
        )
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


def draw_vessels(size: int, trees: list[list[np.ndarray]], gain: float) -> np.ndarray:
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
        canvas = splat((size, size), p[:, 0] * size, p[:, 1] * size, w)
        sigma = sigma_px * size / 256
        layers.append(ndimage.gaussian_filter(canvas, sigma, truncate=2.5) * (0.7 * np.sqrt(2 * np.pi) * sigma * peak))
    return (layers[0] + layers[1]) * gain
