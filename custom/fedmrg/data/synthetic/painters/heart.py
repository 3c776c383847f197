"""Heart, mediastinum and aorta findings: cardiomegaly, aortic ectasia and calcification, mediastinal
widening and shift, hilar and pulmonary artery enlargement, epicardial fat, pneumomediastinum, hiatal hernia."""

from __future__ import annotations

import dataclasses

import numpy as np

from fedmrg.data.synthetic.anatomy import (
    SIGN,
    Anatomy,
    dome_y,
    heart_half_width,
    heart_top_bottom,
    hilum_centre,
    lateral_heart,
    lateral_hilum_centre,
    lateral_spine_centre,
    mediastinum_x,
)
from fedmrg.data.synthetic.canvas import fill_air, stroke
from fedmrg.data.synthetic.findings import Finding
from fedmrg.data.synthetic.primitives import ellipse, gaussian, ring_points, soft_edge
from fedmrg.data.synthetic.scene import Scene, finding_sides, has_qualifier, view_point, window_around


def enlarge_heart(anat: Anatomy, finding: Finding, rng: np.random.Generator) -> Anatomy:
    """Cardiothoracic ratio from ~0.55 (mild) to ~0.72 (severe), mostly to the left; pericardial
    fluid makes the silhouette globular (water bottle)."""
    target = (0.52 + 0.22 * finding.severity) * 2 * anat.thorax_half_width
    width = anat.heart_left + anat.heart_right
    growth = max(target / width, 1.0)
    right = anat.heart_right * (1 + 0.7 * (growth - 1))
    globular = finding.kind == "pericardial_effusion"
    return dataclasses.replace(
        anat,
        heart_right=right,
        heart_left=max(target, width) - right,
        heart_half_height=anat.heart_half_height * (1 + (0.5 if globular else 0.25) * (growth - 1)),
        heart_roundness=1.0 if globular else anat.heart_roundness,
        lat_heart_depth=anat.lat_heart_depth * (1 + 0.3 * (growth - 1)),
    )


def ectatic_aorta(anat: Anatomy, finding: Finding, rng: np.random.Generator) -> Anatomy:
    return dataclasses.replace(anat, aorta_ectasia=max(anat.aorta_ectasia, 0.3 + 0.7 * finding.severity))


def widen_mediastinum(anat: Anatomy, finding: Finding, rng: np.random.Generator) -> Anatomy:
    return dataclasses.replace(anat, mediastinal_widening=anat.mediastinal_widening + 0.02 + 0.045 * finding.severity)


def shift_mediastinum(anat: Anatomy, finding: Finding, rng: np.random.Generator) -> Anatomy:
    """The side names where the mediastinum has moved to."""
    side = finding_sides(finding, rng)[0]
    shift = SIGN[side] * (0.012 + 0.035 * finding.severity)
    return dataclasses.replace(anat, mediastinal_shift=anat.mediastinal_shift + shift)


def enlarge_pulmonary_trunk(anat: Anatomy, finding: Finding, rng: np.random.Generator) -> Anatomy:
    return dataclasses.replace(anat, pulmonary_trunk=max(anat.pulmonary_trunk, 0.4 + 0.6 * finding.severity))


def paint_hilar_enlargement(scene: Scene, finding: Finding, rng: np.random.Generator) -> None:
    """Enlarged, lobulated hilar shadows (nodes) or smooth enlarged pulmonary arteries; nodes may
    also sit in the right paratracheal stripe."""
    anat, sev = scene.anatomy, finding.severity
    nodes = finding.kind == "hilar_adenopathy"
    paratracheal = nodes and (finding.region == "paratracheal" or has_qualifier(finding, "paratracheal", "trachea"))
    lobes = []
    for side in ("right",) if paratracheal else finding_sides(finding, rng, "bilateral"):
        if paratracheal:
            centre = (mediastinum_x(anat) - anat.mediastinum_half_width - 0.005, anat.knob_y - 0.01)
        else:
            hx, hy = hilum_centre(anat, side)
            centre = (hx + SIGN[side] * 0.008, hy)
        for _ in range(int(rng.integers(2, 4)) if nodes else 1):
            offset = rng.normal(0, 0.012, 2) if nodes else np.zeros(2)
            radius = (0.014 + 0.012 * sev) * rng.uniform(0.8, 1.2) if nodes else 0.022 + 0.012 * sev
            lateral = lateral_hilum_centre(anat)
            lateral = (lateral[0] + offset[0] - 0.02, lateral[1] + offset[1] - (0.06 if paratracheal else 0))
            lobes.append((side, (centre[0] + offset[0], centre[1] + offset[1]), lateral, radius))
    for view in scene.views:
        for side, frontal, lateral, radius in lobes:
            x, y = view_point(view, frontal, lateral)
            win = window_around(view, x, y, 4 * radius)
            if nodes:
                shape = ellipse(win, x, y, radius, 1.3 * radius, view.size)
            else:
                shape = gaussian(win, x, y, radius, 1.4 * radius)
            fill_air(view, side, win, shape, extra=0.2)
            view.add(win, 0.12 * shape * view.body[win.rows, win.cols])


def paint_epicardial_fat(scene: Scene, finding: Finding, rng: np.random.Generator) -> None:
    """A soft, fat-density triangle filling the cardiophrenic angle."""
    anat, sev = scene.anatomy, finding.severity
    medc = mediastinum_x(anat)
    for side in finding_sides(finding, rng, "left"):
        width = anat.heart_left if side == "left" else anat.heart_right
        frontal = (medc + SIGN[side] * 0.9 * width, dome_y(anat, side) - 0.005)
        lateral = (anat.lat_front_x + 0.03, dome_y(anat, side) - 0.015)
        for view in scene.views:
            x, y = view_point(view, frontal, lateral)
            win = window_around(view, x, y, 0.06)
            fill_air(view, side, win, 0.55 * gaussian(win, x, y, 0.02 + 0.015 * sev, 0.018 + 0.01 * sev))


def paint_pneumomediastinum(scene: Scene, finding: Finding, rng: np.random.Generator) -> None:
    """Air outlining the mediastinum: a dark stripe along the left heart border, streaks above."""
    anat = scene.anatomy
    medc = mediastinum_x(anat)
    top, bottom = heart_top_bottom(anat)
    rows = np.linspace(top + 0.02, bottom - 0.04, 12)
    border = np.column_stack([medc + heart_half_width(anat, "left", rows) + 0.006, rows])
    streaks = [
        np.array([[medc + dx, anat.apex_y], [medc + dx + rng.normal(0, 0.01), anat.knob_y]])
        for dx in rng.uniform(-0.04, 0.04, 3)
    ]
    hx, hy, hd, hh = lateral_heart(anat)
    lateral = ring_points(hx, hy, hd + 0.008, hh + 0.008, -0.5, np.pi, 1.7 * np.pi)
    for view in scene.views:
        lines = [border, *streaks] if view.kind == "frontal" else [lateral]
        for line in lines:
            stroke(view, line, 1.6, -0.18)


def paint_hiatal_hernia(scene: Scene, finding: Finding, rng: np.random.Generator) -> None:
    """A round retrocardiac soft-tissue mass above the diaphragm with an air-fluid level."""
    anat, sev = scene.anatomy, finding.severity
    radius = 0.028 + 0.03 * sev
    _, bottom = heart_top_bottom(anat)
    frontal = (mediastinum_x(anat) + rng.uniform(0.0, 0.025), anat.dome_y_left - radius * 0.8)
    hx, hy, hd, hh = lateral_heart(anat)
    lateral = (hx + hd + 0.01, frontal[1])
    for view in scene.views:
        x, y = view_point(view, frontal, lateral)
        win = window_around(view, x, y, radius + 0.01)
        sac = ellipse(win, x, y, radius, 0.85 * radius, view.size)
        gas = sac * soft_edge(y - 0.15 * radius - win.y, view.size) * (1.0 if view.kind == "frontal" else 0.6)
        view.add(win, (0.16 * sac - 0.42 * gas) * view.body[win.rows, win.cols])


def paint_aortic_calcification(scene: Scene, finding: Finding, rng: np.random.Generator) -> None:
    """Curvilinear calcium along the outer wall of the aortic knob (frontal) and arch (lateral)."""
    anat, sev = scene.anatomy, finding.severity
    medc = mediastinum_x(anat)
    knob_r = anat.knob_radius * (1 + 0.5 * anat.aorta_ectasia)
    knob_x = medc + anat.knob_offset + 0.03 * anat.aorta_ectasia
    pieces = int(rng.integers(2, 5))
    starts = np.sort(rng.uniform(-0.9 * np.pi, 0.2 * np.pi, pieces))
    lengths = rng.uniform(0.25, 0.6, pieces)
    amount = 0.45 + 0.5 * sev
    hx, hy, hd, hh = lateral_heart(anat)
    spine_front = float(lateral_spine_centre(anat, np.array(anat.knob_y))) - 0.045
    arch_x, arch_y = 0.5 * (hx - 0.3 * hd + spine_front - 0.025), anat.knob_y + 0.005
    arch_rx = 0.5 * (spine_front - 0.025 - hx + 0.3 * hd) + 0.01
    for view in scene.views:
        for start, length in zip(starts, lengths):
            if view.kind == "frontal":
                arc = ring_points(knob_x, anat.knob_y, 0.85 * knob_r, 0.85 * knob_r, 0, start, start + length, 12)
            else:
                begin = np.pi + 0.6 * (start + np.pi)
                arc = ring_points(arch_x, arch_y, arch_rx, 0.05, 0, begin, begin + 0.6 * length, 12)
            stroke(view, arc, 1.4, amount)
