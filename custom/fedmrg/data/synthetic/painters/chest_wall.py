"""Chest wall and soft-tissue findings: mastectomy, pectus deformities, subcutaneous emphysema."""

from __future__ import annotations

import dataclasses

import numpy as np

from fedmrg.data.synthetic.anatomy import SIGN, Anatomy, dome_y, heart_borders, mediastinum_x
from fedmrg.data.synthetic.canvas import fill_air, stroke
from fedmrg.data.synthetic.findings import Finding
from fedmrg.data.synthetic.primitives import gaussian
from fedmrg.data.synthetic.scene import Scene, finding_sides, has_qualifier, window_around


def remove_breast(anat: Anatomy, finding: Finding, rng: np.random.Generator) -> Anatomy:
    """One breast shadow missing: the remaining one makes the operated side look hyperlucent."""
    side = finding_sides(finding, rng)[0]
    return dataclasses.replace(anat, breast_absent=side, breast_size=max(anat.breast_size, 0.75))


def bow_sternum(anat: Anatomy, finding: Finding, rng: np.random.Generator) -> Anatomy:
    """The sternum bows in (excavatum: heart pushed left, blurred right border) or out (carinatum)."""
    amount = 0.4 + 0.6 * finding.severity
    if finding.kind == "pectus_carinatum":
        return dataclasses.replace(anat, pectus=amount)
    return dataclasses.replace(
        anat,
        pectus=-amount,
        mediastinal_shift=anat.mediastinal_shift + 0.015 * amount,
        heart_right=anat.heart_right * (1 - 0.2 * amount),
    )


def paint_pectus_excavatum(scene: Scene, finding: Finding, rng: np.random.Generator) -> None:
    """The depressed anterior chest wall blurs the right heart border on the frontal view."""
    anat = scene.anatomy
    view = scene.views[0]
    x, y = mediastinum_x(anat) - anat.heart_right - 0.015, heart_borders(anat)[2]
    win = window_around(view, x, y, 0.08)
    fill_air(view, "right", win, 0.4 * gaussian(win, x, y, 0.025, 0.06))


def paint_subcutaneous_emphysema(scene: Scene, finding: Finding, rng: np.random.Generator) -> None:
    """Streaks of gas dissecting the soft tissues of the chest wall (or neck)."""
    anat, sev = scene.anatomy, finding.severity
    neck = has_qualifier(finding, "neck")
    streaks = []
    for side in finding_sides(finding, rng, "bilateral" if neck else "random"):
        sign = SIGN[side]
        for _ in range(int(5 + 10 * sev)):
            if neck:
                start = (anat.spine_x + sign * rng.uniform(0.05, 0.12), rng.uniform(0.0, anat.apex_y + 0.02))
            else:
                wall = rng.uniform(anat.thorax_half_width + 0.01, anat.body_half_width - 0.02)
                start = (anat.midline_x + sign * wall, rng.uniform(anat.clavicle_y, dome_y(anat, side)))
            heading = rng.normal(0.5 * np.pi, 0.5) + np.cumsum(rng.normal(0, 0.4, 5))
            path = np.cumsum(np.column_stack([np.cos(heading), np.sin(heading)]) * rng.uniform(0.006, 0.012), axis=0)
            lateral_x = rng.uniform(anat.lat_front_x - 0.04, anat.lat_front_x)
            streaks.append((np.vstack([[0.0, 0.0], path]) + start, lateral_x))
    for view in scene.views:
        for path, lateral_x in streaks:
            if view.kind == "lateral":
                path = path - [path[0, 0] - lateral_x, 0.0]
            stroke(view, path, 1.3, -0.2)
