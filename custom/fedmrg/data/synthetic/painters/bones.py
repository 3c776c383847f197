"""Bone findings: osteopenia, scoliosis, kyphosis, spondylosis, vertebral compression, fractures,
bone lesions, shoulder arthritis and dislocation."""

from __future__ import annotations

import dataclasses

import numpy as np

from fedmrg.data.synthetic.anatomy import (
    SIGN,
    Anatomy,
    clavicle_ends,
    humeral_head,
    lateral_front,
    lateral_spine_centre,
    rib_y,
    spine_centre,
    sternum_x,
    vertebra_top,
)
from fedmrg.data.synthetic.canvas import View, stroke
from fedmrg.data.synthetic.findings import Finding
from fedmrg.data.synthetic.primitives import ellipse, ring_points, soft_edge, tilted_ellipse
from fedmrg.data.synthetic.scene import Scene, finding_sides, has_qualifier, spine_levels, window_around


def demineralise(anat: Anatomy, finding: Finding, rng: np.random.Generator) -> Anatomy:
    return dataclasses.replace(anat, bone_density=anat.bone_density * (1 - 0.4 * finding.severity))


def bend_spine(anat: Anatomy, finding: Finding, rng: np.random.Generator) -> Anatomy:
    """A C-curve convex to the named side (patient's right convexity bows toward the image left)."""
    side = finding_sides(finding, rng)[0]
    height = 0.78 if has_qualifier(finding, "lumbar") else anat.spine_curve_y
    return dataclasses.replace(anat, spine_curve=SIGN[side] * (0.012 + 0.045 * finding.severity), spine_curve_y=height)


def round_back(anat: Anatomy, finding: Finding, rng: np.random.Generator) -> Anatomy:
    return dataclasses.replace(anat, kyphosis=anat.kyphosis + 0.025 + 0.05 * finding.severity)


def paint_spondylosis(scene: Scene, finding: Finding, rng: np.random.Generator) -> None:
    """Marginal osteophytes: bony beaks at the end-plate corners (lateral on the frontal view,
    anterior on the lateral view), with end-plate sclerosis; DISH-like bridging when severe."""
    anat, sev = scene.anatomy, finding.severity
    levels = spine_levels(anat, finding, rng, int(round(2 + 6 * sev)))
    spurs = [
        (level, corner, rng.uniform(0.6, 1.2)) for level in levels for corner in (0.0, 0.84) if rng.random() < 0.75
    ]
    sides = {level: rng.choice([-1.0, 1.0], size=2, replace=rng.random() < 0.4) for level in levels}
    size_scale = 0.006 + 0.012 * sev
    for view in scene.views:
        for level, corner, scale in spurs:
            y = vertebra_top(anat, level + corner)
            reach = size_scale * scale
            if view.kind == "frontal":
                centre = float(spine_centre(anat, np.array(y)))
                for sign in sides[level]:
                    edge = centre + sign * anat.spine_half_width
                    tip = (edge + sign * reach, y + (0.003 if corner else -0.003))
                    beak = np.array([[edge - sign * 0.004, y], tip])
                    stroke(view, beak, 2.6, 0.35)
            else:
                front = float(lateral_spine_centre(anat, np.array(y))) - 0.04
                beak = np.array([[front + 0.004, y], [front - reach, y + (0.004 if corner else -0.004)]])
                stroke(view, beak, 2.6, 0.3)
            stroke(view, _endplate(view, anat, y), 1.2, 0.05 * sev)


def _endplate(view: View, anat: Anatomy, y: float) -> np.ndarray:
    if view.kind == "frontal":
        centre = float(spine_centre(anat, np.array(y)))
        return np.array([[centre - anat.spine_half_width, y], [centre + anat.spine_half_width, y]])
    centre = float(lateral_spine_centre(anat, np.array(y)))
    return np.array([[centre - 0.04, y], [centre + 0.04, y]])


def paint_vertebral_compression(scene: Scene, finding: Finding, rng: np.random.Generator) -> None:
    """Loss of vertebral height: a wedge (anterior height lost) on the lateral view, a flattened
    sclerotic body on the frontal view."""
    anat, sev = scene.anatomy, finding.severity
    levels = spine_levels(anat, finding, rng, 2 if has_qualifier(finding, "multiple") else 1)
    loss = 0.3 + 0.4 * sev
    for view in scene.views:
        for level in levels:
            top = vertebra_top(anat, level)
            height = 0.84 * anat.vertebra_height
            if view.kind == "frontal":
                centre = float(spine_centre(anat, np.array(top)))
                half = anat.spine_half_width
                win = view.window(centre - half, centre + half, top, top + height)
                lost = soft_edge(top + loss * height - win.y, view.size)
                view.add(win, (0.12 * (1 - lost) - 0.14 * lost) * anat.bone_density)
            else:
                centre = float(lateral_spine_centre(anat, np.array(top)))
                win = view.window(centre - 0.04, centre + 0.04, top, top + height)
                anterior = np.clip((centre + 0.04 - win.x) / 0.08, 0, 1)
                lost = soft_edge(top + loss * height * anterior - win.y, view.size)
                view.add(win, -0.17 * lost * anat.bone_density)
                stroke(view, np.array([[centre - 0.04, top + loss * height], [centre + 0.04, top]]), 1.3, 0.12)


def paint_fracture(scene: Scene, finding: Finding, rng: np.random.Generator) -> None:
    """A cortical break with a step (acute) or a fusiform callus (healed) on ribs, a clavicle, the
    proximal humerus or, on the lateral view, the sternum."""
    anat = scene.anatomy
    healed = has_qualifier(finding, "healed", "chronic", "old")
    site = next((s for s in ("clavicle", "humerus", "sternum") if has_qualifier(finding, s)), "ribs")
    count = int(rng.integers(2, 5)) if has_qualifier(finding, "multiple") else 1
    sides = finding_sides(finding, rng)
    breaks = []
    for index in range(count):
        side = sides[index % len(sides)]
        breaks.append((side, *_fracture_site(anat, site, side, rng)))
    for view in scene.views:
        for _side, point, direction, thickness, lateral_only in breaks:
            if lateral_only != (view.kind == "lateral"):
                continue
            if healed:
                _draw_callus(view, point, direction, thickness)
            else:
                _draw_break(view, point, direction, thickness)


def _fracture_site(anat: Anatomy, site: str, side: str, rng: np.random.Generator):
    """(point, unit direction of the bone, bone thickness, drawn on the lateral view only)."""
    sign = SIGN[side]
    if site == "clavicle":
        (x0, y0), (x1, y1) = clavicle_ends(anat, side)
        t = rng.uniform(0.35, 0.7)
        point = (x0 + t * (x1 - x0), y0 + t * (y1 - y0) - 0.012 * np.sin(2 * np.pi * t))
        direction = np.array([x1 - x0, y1 - y0]) / np.hypot(x1 - x0, y1 - y0)
        return point, direction, 0.024, False
    if site == "humerus":
        cx, cy, r = humeral_head(anat, side)
        return (cx + sign * 0.015, cy + 1.4 * r), np.array([0.0, 1.0]), 1.1 * r, False
    if site == "sternum":
        y = rng.uniform(anat.clavicle_y + 0.1, anat.dome_y_right - 0.08)
        x = float(sternum_x(anat, lateral_front(anat, np.array(y))))
        return (x, y), np.array([0.0, 1.0]), 0.02, True
    k = int(rng.integers(3, 10))
    x = anat.spine_x + sign * rng.uniform(0.55, 0.95) * anat.thorax_half_width
    y = rib_y(anat, side, k, x)
    slope = (rib_y(anat, side, k, x + 0.005) - y) / 0.005
    direction = np.array([1.0, slope]) / np.hypot(1.0, slope)
    return (x, y), direction, 0.42 * anat.rib_spacing, False


def _draw_break(view: View, point: tuple[float, float], direction: np.ndarray, thickness: float) -> None:
    """A dark fracture line across the bone, the distal fragment stepped by a pixel or two."""
    normal = np.array([-direction[1], direction[0]])
    centre = np.asarray(point)
    gap = np.vstack([centre - 0.6 * thickness * normal, centre + 0.6 * thickness * normal])
    stroke(view, gap, 2.0, -0.25)
    step = centre + 0.006 * direction + 0.3 * thickness * normal
    stroke(view, np.vstack([step, step + 0.018 * direction]), 2.5, 0.14)


def _draw_callus(view: View, point: tuple[float, float], direction: np.ndarray, thickness: float) -> None:
    """A fusiform bony swelling around a healed fracture."""
    x, y = point
    win = window_around(view, x, y, 0.04)
    angle = float(np.arctan2(direction[1], direction[0]))
    callus = tilted_ellipse(win, x, y, 0.022, 0.85 * thickness, angle, view.size, px=2)
    view.add(win, 0.26 * callus)


def paint_bone_lesion(scene: Scene, finding: Finding, rng: np.random.Generator) -> None:
    """A focal dense (sclerotic) or lucent (lytic) lesion in a rib, vertebra or clavicle."""
    anat = scene.anatomy
    side = finding_sides(finding, rng)[0]
    if has_qualifier(finding, "vertebrae", "spine"):
        level = spine_levels(anat, finding, rng, 1)[0]
        y = vertebra_top(anat, level + 0.42)
        frontal = (float(spine_centre(anat, np.array(y))) + rng.uniform(-0.01, 0.01), y)
        lateral = (float(lateral_spine_centre(anat, np.array(y))), y)
    else:
        site = (
            "clavicle"
            if has_qualifier(finding, "clavicle")
            else "humerus"
            if has_qualifier(finding, "humerus")
            else "ribs"
        )
        frontal, _, _, _ = _fracture_site(anat, site, side, rng)
        lateral = None
    radius = 0.007 + 0.01 * finding.severity
    sclerotic = finding.kind == "sclerotic_bone_lesion"
    for view in scene.views:
        point = frontal if view.kind == "frontal" else lateral
        if point is None:
            continue
        win = window_around(view, *point, 2 * radius)
        lesion = ellipse(win, *point, radius, radius, view.size)
        view.add(win, (0.28 if sclerotic else -0.14) * lesion)
        if not sclerotic:
            stroke(view, ring_points(*point, radius, radius), 1.0, 0.06)


def paint_shoulder(scene: Scene, finding: Finding, rng: np.random.Generator) -> None:
    """Osteoarthritis: an inferior humeral-head osteophyte and a sclerotic rim. Dislocation: the head
    displaced below and medial to the glenoid (frontal view only)."""
    anat = scene.anatomy
    view = scene.views[0]
    dislocated = finding.kind == "shoulder_dislocation"
    for side in finding_sides(finding, rng, "random" if dislocated else "bilateral"):
        sign = SIGN[side]
        cx, cy, r = humeral_head(anat, side)
        if dislocated:
            win = window_around(view, cx, cy + 0.03, r + 0.06)
            body = np.clip(view.body[win.rows, win.cols] * 4, 0, 1)
            moved = ellipse(win, cx - sign * 0.03, cy + 0.055, r, r, view.size)
            view.add(win, 0.3 * (moved - ellipse(win, cx, cy, r, r, view.size)) * body)
        else:
            stroke(view, ring_points(cx, cy, 0.95 * r, 0.95 * r, 0, 0.2 * np.pi, 1.2 * np.pi), 1.6, 0.12)
            spur = (cx - sign * 0.4 * r, cy + 0.95 * r)
            stroke(view, np.array([spur, (spur[0] - sign * 0.01, spur[1] + 0.008)]), 2.2, 0.25)
