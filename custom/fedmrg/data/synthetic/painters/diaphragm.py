"""Diaphragm and upper-abdomen findings: elevated hemidiaphragm, free air under the diaphragm,
abdominal calcifications and contrast media."""

from __future__ import annotations

import numpy as np

from fedmrg.data.synthetic.anatomy import (
    SIGN,
    Anatomy,
    diaphragm_y,
    dome_y,
    lateral_diaphragm_y,
    lateral_spine_centre,
    mediastinum_x,
    raise_dome,
)
from fedmrg.data.synthetic.canvas import stroke
from fedmrg.data.synthetic.findings import Finding
from fedmrg.data.synthetic.primitives import catmull_rom, ring_points, soft_edge
from fedmrg.data.synthetic.scene import Scene, finding_sides, has_qualifier, lung_window, view_point


def elevate_dome(anat: Anatomy, finding: Finding, rng: np.random.Generator) -> Anatomy:
    for side in finding_sides(finding, rng, "right"):
        anat = raise_dome(anat, side, 0.035 + 0.07 * finding.severity)
    return anat


def paint_subdiaphragmatic_air(scene: Scene, finding: Finding, rng: np.random.Generator) -> None:
    """A dark crescent of free gas under a hemidiaphragm, the muscle a thin white line above it."""
    anat, sev = scene.anatomy, finding.severity
    thickness = 0.008 + 0.02 * sev
    for side in finding_sides(finding, rng, "right"):
        for view in scene.views:
            win = lung_window(view, anat, side)
            if view.kind == "frontal":
                dome = diaphragm_y(anat, side, win.x)
                centre = anat.midline_x + SIGN[side] * 0.45 * anat.thorax_half_width
                across = np.clip(1 - ((win.x - centre) / (0.45 * anat.thorax_half_width)) ** 2, 0, 1)
            else:
                dome = lateral_diaphragm_y(anat, side, win.x)
                across = np.clip(1 - ((win.x - anat.lat_front_x - 0.2) / 0.18) ** 2, 0, 1)
            depth = win.y - dome - 0.005
            crescent = soft_edge(depth, view.size) * soft_edge(thickness * across - depth, view.size)
            view.add(win, -0.45 * crescent * view.body[win.rows, win.cols])


def paint_abdominal_calcification(scene: Scene, finding: Finding, rng: np.random.Generator) -> None:
    """Faceted calcified stones below a hemidiaphragm (gallstones on the right)."""
    anat = scene.anatomy
    side = finding_sides(finding, rng, "right")[0]
    centre_x = anat.midline_x + SIGN[side] * 0.45 * anat.thorax_half_width
    centre_y = dome_y(anat, side) + 0.09
    stones = [(rng.normal(0, 0.012, 2), rng.uniform(0.005, 0.009)) for _ in range(int(rng.integers(2, 7)))]
    lateral = (anat.lat_front_x + 0.08, centre_y)
    for view in scene.views:
        x, y = view_point(view, (centre_x, centre_y), lateral)
        for (dx, dy), radius in stones:
            ring = ring_points(x + dx, y + dy, radius, radius)
            stroke(view, ring, 1.2, 0.35)


def paint_contrast(scene: Scene, finding: Finding, rng: np.random.Generator) -> None:
    """Dense contrast: a column in the oesophagus, or colon with haustra in the upper abdomen."""
    anat = scene.anatomy
    medc = mediastinum_x(anat)
    spine_front = float(lateral_spine_centre(anat, np.array(0.5))) - 0.05
    if has_qualifier(finding, "esophagus"):
        heights = (0.02, anat.knob_y + 0.1, anat.dome_y_left + 0.02)
        frontal = np.column_stack([medc + np.array([0.005, 0.012, 0.03]), heights])
        lateral = np.column_stack([spine_front - np.array([0.07, 0.03, 0.06]), heights])
        width, amount = 5.0, 0.9
    else:
        y = max(anat.dome_y_right, anat.dome_y_left) + 0.12
        frontal = catmull_rom(
            np.array(
                [
                    [anat.midline_x - 0.3, y + 0.05],
                    [anat.midline_x, y + rng.uniform(0.0, 0.06)],
                    [anat.midline_x + 0.3, y - 0.04],
                ]
            ),
            0.02,
        )
        lateral = np.array([[anat.lat_front_x + 0.02, y + 0.02], [anat.lat_front_x + 0.3, y + 0.05]])
        width, amount = 9.0, 0.8
    for view in scene.views:
        stroke(view, frontal if view.kind == "frontal" else lateral, width, amount)
