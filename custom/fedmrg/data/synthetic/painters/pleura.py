"""Pleural findings: effusion, pneumothorax and pleural thickening."""

from __future__ import annotations

import numpy as np

from fedmrg.data.synthetic.anatomy import SIGN, dome_y, hilum_centre, lateral_hilum_centre
from fedmrg.data.synthetic.canvas import fill_air
from fedmrg.data.synthetic.findings import Finding
from fedmrg.data.synthetic.scene import Scene, collapsed_lung, finding_sides, lung_window, zone_weight


def paint_effusion(scene: Scene, finding: Finding, rng: np.random.Generator) -> None:
    """Dependent fluid: blunts the costophrenic angle and rises laterally in a meniscus; hides the
    dome. On the lateral view it fills the posterior sulcus first."""
    anat, sev = scene.anatomy, finding.severity
    height = 0.025 + 0.22 * sev**1.3
    for side in finding_sides(finding, rng, "bilateral"):
        for view in scene.views:
            win = lung_window(view, anat, side)
            if view.kind == "frontal":
                lateral = np.clip(np.abs(win.x - anat.midline_x) / anat.thorax_half_width, 0, 1)
                top = dome_y(anat, side) + anat.sulcus_depth - height * (0.3 + 0.7 * lateral**3)
            else:
                depth = np.clip((win.x - anat.lat_front_x) / (anat.lat_back_x - anat.lat_front_x), 0, 1)
                sulcus = dome_y(anat, side) + 0.5 * anat.sulcus_depth
                top = sulcus - (1.2 * height + 0.01) * (0.15 + 0.85 * depth**2.5)
            fluid = np.clip((win.y - top) / 0.03, 0, 1)
            fill_air(view, side, win, fluid, extra=0.3)


def paint_pneumothorax(scene: Scene, finding: Finding, rng: np.random.Generator) -> None:
    """The lung falls away from the chest wall toward the hilum: a white visceral pleural line with
    dark, markingless air outside it, widest at the apex and lateral wall."""
    anat, sev = scene.anatomy, finding.severity
    factor = 1 - (0.06 + 0.3 * sev)
    for side in finding_sides(finding, rng):
        hx, hy = hilum_centre(anat, side)
        centres = {
            "frontal": (hx + SIGN[side] * 0.02, 0.5 * (hy + dome_y(anat, side))),
            "lateral": (lateral_hilum_centre(anat)[0], dome_y(anat, side)),
        }
        for view in scene.views:
            win = lung_window(view, anat, side)
            lung = view.lung[side][win.rows, win.cols]
            collapsed = collapsed_lung(view, side, win, centres[view.kind], factor)
            gap = np.clip(lung - collapsed, 0, 1)
            share = 1.0 if view.kind == "frontal" else 0.5
            view.add(win, -share * gap * (view.markings[win.rows, win.cols] + 0.1 * view.body[win.rows, win.cols]))
            pleural_line = 4 * collapsed * (1 - collapsed) * (lung > 0.5)
            view.add(win, share * 0.16 * pleural_line)
            fill_air(view, side, win, 0.15 * sev * collapsed)


def paint_pleural_thickening(scene: Scene, finding: Finding, rng: np.random.Generator) -> None:
    """A band of soft tissue lining the chest wall (an apical cap at the apex)."""
    anat, sev = scene.anatomy, finding.severity
    factor = 1 - (0.025 + 0.03 * sev)
    region = finding.region or "lower"
    for side in finding_sides(finding, rng):
        hx, hy = hilum_centre(anat, side)
        centres = {"frontal": (hx, hy + 0.05), "lateral": (lateral_hilum_centre(anat)[0], hy + 0.05)}
        for view in scene.views:
            win = lung_window(view, anat, side)
            lung = view.lung[side][win.rows, win.cols]
            rim = np.clip(lung - collapsed_lung(view, side, win, centres[view.kind], factor), 0, 1)
            fill_air(view, side, win, 0.85 * rim * zone_weight(view, anat, side, win, region, False))
