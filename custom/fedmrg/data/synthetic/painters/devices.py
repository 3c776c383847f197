"""Devices and surgical material, drawn as metal far denser than bone: catheters, pacemakers, sternotomy
wires, clips, tubes, stents and valves, spinal fusion, prostheses, foreign bodies, ECG leads, implants."""

from __future__ import annotations

import numpy as np

from fedmrg.data.synthetic.anatomy import (
    LUNG_SIDES,
    SIGN,
    Anatomy,
    dome_y,
    heart_top_bottom,
    hilum_centre,
    humeral_head,
    lateral_front,
    lateral_heart,
    lateral_spine_centre,
    mediastinum_x,
    spine_centre,
    sternum_x,
    vertebra_top,
)
from fedmrg.data.synthetic.canvas import View, stroke
from fedmrg.data.synthetic.findings import Finding
from fedmrg.data.synthetic.primitives import catmull_rom, ellipse, ring_points, soft_edge
from fedmrg.data.synthetic.scene import (
    ZONES,
    Scene,
    finding_sides,
    has_qualifier,
    lateral_point,
    point_in_zone,
    spine_levels,
    view_point,
    window_around,
)

_METAL = 3.0  # solid metal (generators, clips, rods)
_WIRE = 2.2  # thin wires and radiopaque catheter lines


def paint_catheter(scene: Scene, finding: Finding, rng: np.random.Generator) -> None:
    """A thin radiopaque line from a jugular or subclavian entry (sometimes a port) down the
    superior vena cava to the cavoatrial junction."""
    anat = scene.anatomy
    side = finding_sides(finding, rng, "right" if rng.random() < 0.7 else "left")[0]
    sign = SIGN[side]
    medc = mediastinum_x(anat)
    top, bottom = heart_top_bottom(anat)
    svc_x = medc - 0.8 * anat.mediastinum_half_width
    tip = (svc_x + 0.004, top + rng.uniform(0.0, 0.05))
    jugular = rng.random() < 0.5
    if jugular:
        entry = (anat.spine_x + sign * 0.05, 0.0)
        frontal = [entry, (anat.spine_x + sign * 0.045, anat.clavicle_y + 0.02), (svc_x, anat.knob_y), tip]
    else:
        entry = (anat.midline_x + sign * 0.7 * anat.thorax_half_width, anat.clavicle_y + 0.035)
        frontal = [
            entry,
            (anat.midline_x + sign * 0.35 * anat.thorax_half_width, anat.clavicle_y + 0.05),
            (svc_x + (0.01 if side == "right" else 0.03), anat.knob_y - 0.01),
            (svc_x, anat.knob_y + 0.04),
            tip,
        ]
    port = not jugular and rng.random() < 0.5
    hx, hy, hd, hh = lateral_heart(anat)
    lateral_entry = (anat.lat_front_x + 0.15, 0.0) if jugular else (anat.lat_front_x - 0.02, entry[1] + 0.01)
    lateral = [lateral_entry, (anat.lat_front_x + 0.12, anat.knob_y - 0.02), (hx - 0.45 * hd, tip[1])]
    for view in scene.views:
        points = np.array(frontal if view.kind == "frontal" else lateral)
        stroke(view, catmull_rom(points, 0.02), 1.5, _WIRE)
        if port:
            x, y = points[0]
            win = window_around(view, x, y, 0.03)
            view.add(win, _METAL * ellipse(win, x, y, 0.016, 0.014 if view.kind == "frontal" else 0.008, view.size))


def paint_pacemaker(scene: Scene, finding: Finding, rng: np.random.Generator) -> None:
    """A pulse generator in the upper chest wall with leads down the SVC into the right atrium and
    right ventricle (a thicker shock coil on defibrillator leads)."""
    anat = scene.anatomy
    side = finding_sides(finding, rng, "left" if rng.random() < 0.85 else "right")[0]
    sign = SIGN[side]
    medc = mediastinum_x(anat)
    top, bottom = heart_top_bottom(anat)
    generator = (
        anat.midline_x + sign * rng.uniform(0.5, 0.68) * anat.thorax_half_width,
        anat.clavicle_y + rng.uniform(0.04, 0.08),
    )
    angle = rng.uniform(-0.4, 0.4)
    n_leads = int(rng.choice([1, 2, 3], p=[0.3, 0.6, 0.1]))
    icd = rng.random() < 0.3
    svc_x = medc - 0.8 * anat.mediastinum_half_width
    route = [
        (anat.midline_x + sign * 0.28 * anat.thorax_half_width, anat.clavicle_y + 0.035),
        (medc + 0.2 * sign * anat.mediastinum_half_width, anat.knob_y - 0.025),
        (svc_x, anat.knob_y + 0.04),
        (svc_x - 0.004, top + 0.08),
    ]
    height = bottom - top
    leads = [
        [(medc + 0.1 * anat.heart_left, bottom - 0.12), (medc + 0.55 * anat.heart_left, bottom - 0.06)],  # RV apex
        [(medc - 0.55 * anat.heart_right, top + 0.3 * height), (medc - 0.35 * anat.heart_right, top + 0.12)],  # RA
        # coronary sinus, to the left ventricle
        [(medc + 0.3 * anat.heart_left, top + 0.25 * height), (medc + 0.85 * anat.heart_left, top + 0.45 * height)],
    ][:n_leads]
    slack = [(generator[0] - sign * rng.uniform(0.0, 0.03), generator[1] + rng.uniform(0.02, 0.04)) for _ in leads]
    hx, hy, hd, hh = lateral_heart(anat)
    lateral_generator = (anat.lat_front_x - 0.025, generator[1] + 0.01)
    lateral_route = [
        (anat.lat_front_x + 0.06, anat.clavicle_y + 0.06),
        (hx - 0.15 * hd, anat.knob_y + 0.04),
        (hx - 0.1 * hd, hy - 0.75 * hh),
    ]
    lateral_leads = [
        [(hx - 0.5 * hd, hy + 0.1 * hh), (hx - 0.8 * hd, hy + 0.45 * hh)],
        [(hx - 0.3 * hd, hy - 0.5 * hh), (hx - 0.55 * hd, hy - 0.55 * hh)],
        [(hx + 0.3 * hd, hy - 0.3 * hh), (hx + 0.6 * hd, hy)],
    ][:n_leads]
    for view in scene.views:
        if view.kind == "frontal":
            x, y = generator
            for lead, loop in zip(leads, slack):
                _draw_lead(view, catmull_rom(np.array([generator, loop, *route, *lead]), 0.015), icd)
            rx, ry = 0.036, 0.027
        else:
            x, y = lateral_generator
            for lead in lateral_leads:
                _draw_lead(view, catmull_rom(np.array([lateral_generator, *lateral_route, *lead]), 0.015), icd)
            rx, ry, angle = 0.012, 0.03, 0.0
        win = window_around(view, x, y, 0.06)
        c, s = np.cos(angle), np.sin(angle)
        u, v = ((win.x - x) * c + (win.y - y) * s) / rx, (-(win.x - x) * s + (win.y - y) * c) / ry
        can = soft_edge((1 - (u**4 + v**4) ** 0.25) * min(rx, ry), view.size)
        view.add(win, _METAL * can)


def _draw_lead(view: View, path: np.ndarray, icd: bool) -> None:
    stroke(view, path, 1.6, _WIRE)
    if icd:
        stroke(view, path[int(0.7 * len(path)) :], 3.2, _WIRE)


def paint_sternotomy(scene: Scene, finding: Finding, rng: np.random.Generator) -> None:
    """Twisted cerclage wires down the midline sternum (small loops), crossing the sternum on the lateral view."""
    anat = scene.anatomy
    medc = mediastinum_x(anat)
    top, _ = heart_top_bottom(anat)
    count = int(rng.integers(5, 8))
    ys = np.linspace(anat.knob_y - 0.03, top + 0.1, count) + rng.normal(0, 0.004, count)
    wires = [
        (medc + rng.normal(0, 0.004), y, rng.uniform(0.01, 0.014), rng.uniform(0.004, 0.007), rng.uniform(-0.2, 0.2))
        for y in ys
    ]
    front = lateral_front(anat, ys)
    for view in scene.views:
        for index, (x, y, rx, ry, angle) in enumerate(wires):
            if view.kind == "frontal":
                stroke(view, ring_points(x, y, rx, ry, angle), 1.3, _WIRE)
                stroke(view, np.array([[x + rx, y], [x + rx + 0.006, y + 0.006]]), 1.6, _WIRE)
            else:
                sx = float(sternum_x(anat, front[index]))
                stroke(view, np.array([[sx - 0.012, y - 0.002], [sx + 0.01, y + 0.003]]), 1.6, _WIRE)


_Clip = tuple[tuple[float, float], tuple[float, float], float, float]


def clip_plan(anat: Anatomy, rng: np.random.Generator, where: str, side: str, count: int) -> list[_Clip]:
    """Surgical clips: (frontal point, lateral point, angle, length) around a named site."""
    medc = mediastinum_x(anat)
    top, bottom = heart_top_bottom(anat)
    hx, hy, hd, hh = lateral_heart(anat)
    if where == "abdomen":
        centre, spread = (anat.midline_x + SIGN[side] * 0.4 * anat.thorax_half_width, dome_y(anat, side) + 0.08), 0.03
        lateral = (anat.lat_front_x + 0.12, centre[1])
    elif where == "mediastinum":
        centre, spread = (medc + 0.6 * anat.heart_left, top + 0.1), 0.05
        lateral = (hx - 0.3 * hd, hy - 0.6 * hh)
    elif where == "neck":
        centre, spread = (anat.spine_x + SIGN[side] * 0.05, 0.04), 0.02
        lateral = (anat.lat_front_x + 0.1, 0.04)
    elif where == "axilla":
        centre, spread = (anat.midline_x + SIGN[side] * (anat.thorax_half_width + 0.02), anat.clavicle_y + 0.12), 0.03
        lateral = (anat.lat_front_x + 0.15, centre[1])
    else:
        centre, spread = hilum_centre(anat, side) if where == "hilum" else point_in_zone(anat, side, where, rng), 0.025
        lateral = lateral_point(anat, "hilum" if where == "hilum" else where, centre[1], rng)
    clips = []
    for _ in range(count):
        dx, dy = rng.normal(0, spread, 2)
        clips.append(
            (
                (centre[0] + dx, centre[1] + dy),
                (lateral[0] + 0.5 * dx, lateral[1] + dy),
                rng.uniform(0, np.pi),
                rng.uniform(0.01, 0.016),
            )
        )
    return clips


def draw_clips(view: View, clips: list[_Clip]) -> None:
    for frontal, lateral, angle, length in clips:
        x, y = view_point(view, frontal, lateral)
        half = 0.5 * length * np.array([np.cos(angle), np.sin(angle)])
        stroke(view, np.array([[x, y] - half, [x, y] + half]), 1.6, _METAL)


def paint_clips(scene: Scene, finding: Finding, rng: np.random.Generator) -> None:
    anat = scene.anatomy
    side = finding_sides(finding, rng, "right")[0]
    if has_qualifier(finding, "abdomen"):
        where = "abdomen"
    elif has_qualifier(finding, "mediastinum", "heart"):
        where = "mediastinum"
    elif has_qualifier(finding, "neck"):
        where = "neck"
    elif has_qualifier(finding, "breast", "shoulder"):
        where = "axilla"
    elif finding.region is not None:
        where = finding.region
    else:
        where = ("mediastinum", "abdomen", "axilla")[int(rng.integers(3))]
    count = int(rng.integers(4, 9)) if has_qualifier(finding, "multiple") else int(rng.integers(2, 6))
    clips = clip_plan(anat, rng, where, side, count)
    for view in scene.views:
        draw_clips(view, clips)


def paint_tube(scene: Scene, finding: Finding, rng: np.random.Generator) -> None:
    """Endotracheal tube (tip above the carina), enteric tube (into the stomach) or chest tube
    (entering laterally, curving to the apex): a faint tube wall with a radiopaque stripe."""
    anat = scene.anatomy
    medc = mediastinum_x(anat)
    spine_front = float(lateral_spine_centre(anat, np.array(anat.knob_y))) - 0.045
    if has_qualifier(finding, "abdomen", "stomach"):
        frontal = [
            (anat.spine_x + 0.01, 0.0),
            (medc + 0.012, anat.knob_y + 0.1),
            (medc + 0.03, anat.dome_y_left),
            (anat.midline_x + 0.45 * anat.thorax_half_width, anat.dome_y_left + 0.06),
        ]
        lateral = [
            (spine_front - 0.08, 0.0),
            (spine_front - 0.02, anat.knob_y + 0.12),
            (spine_front - 0.06, anat.dome_y_left),
            (anat.lat_front_x + 0.15, anat.dome_y_left + 0.06),
        ]
        wall = 0.0
    elif finding.side in LUNG_SIDES or has_qualifier(finding, "thorax"):
        sign = SIGN[finding_sides(finding, rng)[0]]
        entry_y = dome_y(anat, finding.side if finding.side in LUNG_SIDES else "right") - rng.uniform(0.02, 0.08)
        frontal = [
            (anat.midline_x + sign * (anat.body_half_width - 0.01), entry_y + 0.03),
            (anat.midline_x + sign * (anat.thorax_half_width - 0.02), entry_y),
            (anat.midline_x + sign * 0.75 * anat.thorax_half_width, anat.knob_y),
            (anat.midline_x + sign * 0.5 * anat.thorax_half_width, anat.apex_y + 0.04),
        ]
        lateral = [(anat.lat_back_x - 0.05, entry_y), (anat.lat_back_x - 0.12, anat.knob_y), (0.5, anat.apex_y + 0.05)]
        wall = 0.12
    else:
        carina_y = anat.knob_y + 0.055
        tip = carina_y - rng.uniform(0.03, 0.07)
        top_x = float(spine_centre(anat, np.array(0.05)))
        frontal = [(top_x, 0.0), (0.5 * (top_x + medc), tip)]
        trachea_x = spine_front - 0.14
        lateral = [(trachea_x - 0.05, 0.0), (trachea_x + 0.005, tip)]
        wall = 0.1
    for view in scene.views:
        path = catmull_rom(np.array(frontal if view.kind == "frontal" else lateral), 0.02)
        if wall:
            stroke(view, path, 6.0, wall)
        stroke(view, path + [0.003, 0.0], 1.4, 1.2)


def paint_stent(scene: Scene, finding: Finding, rng: np.random.Generator) -> None:
    """A metal mesh tube (coronary, aortic stent graft, biliary) or a prosthetic valve ring."""
    anat = scene.anatomy
    medc = mediastinum_x(anat)
    top, bottom = heart_top_bottom(anat)
    hx, hy, hd, hh = lateral_heart(anat)
    if finding.kind == "prosthetic_valve":
        mitral = has_qualifier(finding, "mitral")
        frontal = (
            medc + (0.3 * anat.heart_left if mitral else 0.005),
            top + (0.5 if mitral else 0.25) * (bottom - top),
        )
        lateral = (hx + (0.2 if mitral else -0.2) * hd, hy - 0.3 * hh)
        for view in scene.views:
            x, y = view_point(view, frontal, lateral)
            stroke(view, ring_points(x, y, 0.016, 0.011, 0.5), 2.2, _METAL)
        return
    if has_qualifier(finding, "aorta"):
        frontal = (medc + 0.5 * anat.knob_offset + 0.02, anat.knob_y + 0.14, 0.16, 0.018, 1.5)
        spine_front = float(lateral_spine_centre(anat, np.array(anat.knob_y))) - 0.045
        lateral = (spine_front - 0.02, anat.knob_y + 0.14, 0.16, 0.018, 1.5)
    elif has_qualifier(finding, "abdomen"):
        frontal = (
            anat.midline_x - 0.3 * anat.thorax_half_width,
            anat.dome_y_right + 0.1,
            0.04,
            0.008,
            rng.uniform(0.3, 1.2),
        )
        lateral = (anat.lat_front_x + 0.15, anat.dome_y_right + 0.1, 0.04, 0.008, 1.2)
    else:
        y = top + rng.uniform(0.2, 0.5) * (bottom - top)
        frontal = (medc + rng.uniform(0.1, 0.5) * anat.heart_left, y, 0.025, 0.007, rng.uniform(0, np.pi))
        lateral = (hx - rng.uniform(0.2, 0.6) * hd, y, 0.025, 0.007, rng.uniform(0, np.pi))
    for view in scene.views:
        x, y, length, width, angle = view_point(view, frontal, lateral)
        along = np.array([np.cos(angle), np.sin(angle)])
        across = np.array([-along[1], along[0]]) * width / 2
        ends = np.array([[x, y] - along * length / 2, [x, y] + along * length / 2])
        zigzag = ends[0] + np.outer(np.linspace(0, 1, 14), ends[1] - ends[0]) + np.outer(np.tile([1, -1], 7), across)
        for wall in (across, -across):
            stroke(view, ends + wall, 1.0, 0.8)
        stroke(view, zigzag, 1.0, 0.8)


def paint_spinal_fusion(scene: Scene, finding: Finding, rng: np.random.Generator) -> None:
    """Posterior rods with pedicle screws over several levels (an anterior plate in the neck)."""
    anat = scene.anatomy
    levels = spine_levels(anat, finding, rng, int(rng.integers(3, 6)))
    levels = np.arange(levels.min(), levels.max() + 1)
    anterior_plate = has_qualifier(finding, "cervical") and not has_qualifier(finding, "posterior")
    y0, y1 = vertebra_top(anat, levels[0]) + 0.01, vertebra_top(anat, levels[-1] + 0.84) - 0.01
    ys = np.array([vertebra_top(anat, level + 0.4) for level in levels])
    for view in scene.views:
        if view.kind == "frontal":
            centre = lambda y: float(spine_centre(anat, np.array(y)))  # noqa: E731
            offsets = (0.0,) if anterior_plate else (-anat.spine_half_width - 0.006, anat.spine_half_width + 0.006)
            for offset in offsets:
                rod = np.array([[centre(y) + offset, y] for y in np.linspace(y0, y1, 6)])
                stroke(view, rod, 7.0 if anterior_plate else 2.4, _METAL * (0.5 if anterior_plate else 1.0))
                for y in ys:
                    tip = centre(y) + offset * 0.3
                    stroke(view, np.array([[centre(y) + offset, y], [tip, y]]), 2.0, _METAL)
        else:
            centre = lambda y: float(lateral_spine_centre(anat, np.array(y)))  # noqa: E731
            offset = -0.048 if anterior_plate else 0.06
            rod = np.array([[centre(y) + offset, y] for y in np.linspace(y0, y1, 6)])
            stroke(view, rod, 2.4, _METAL)
            for y in ys:
                stroke(view, np.array([[centre(y) + offset, y], [centre(y) + offset * 0.1, y + 0.004]]), 2.0, _METAL)


def paint_shoulder_prosthesis(scene: Scene, finding: Finding, rng: np.random.Generator) -> None:
    """A metal humeral head replacement with its stem down the shaft (frontal view)."""
    anat = scene.anatomy
    view = scene.views[0]
    for side in finding_sides(finding, rng, "right"):
        cx, cy, r = humeral_head(anat, side)
        win = window_around(view, cx, cy, r + 0.01)
        view.add(
            win, _METAL * ellipse(win, cx, cy, 0.9 * r, 0.9 * r, view.size) * soft_edge(win.y - cy + 0.3 * r, view.size)
        )
        stroke(view, np.array([[cx + SIGN[side] * 0.01, cy], [cx + SIGN[side] * 0.018, cy + 0.12]]), 4.0, _METAL)


def paint_foreign_body(scene: Scene, finding: Finding, rng: np.random.Generator) -> None:
    """Small irregular metallic fragments at the named site."""
    anat = scene.anatomy
    side = finding_sides(finding, rng)[0]
    if has_qualifier(finding, "abdomen"):
        where = "abdomen"
    elif has_qualifier(finding, "neck"):
        where = "neck"
    elif has_qualifier(finding, "breast", "shoulder", "clavicle"):
        where = "axilla"
    else:
        where = finding.region or ZONES[int(rng.integers(3))]
    fragments = clip_plan(anat, rng, where, side, int(rng.integers(1, 4)))
    shapes = [rng.normal(0, 0.004, (3, 2)) for _ in fragments]
    radii = [rng.uniform(0.003, 0.007, 3) for _ in fragments]
    for view in scene.views:
        for (frontal, lateral, _, _), offsets, sizes in zip(fragments, shapes, radii):
            x, y = view_point(view, frontal, lateral)
            win = window_around(view, x, y, 0.03)
            shape = np.max(
                [ellipse(win, x + dx, y + dy, r, r, view.size) for (dx, dy), r in zip(offsets, sizes)], axis=0
            )
            view.add(win, _METAL * shape)


def paint_ecg_leads(scene: Scene, finding: Finding, rng: np.random.Generator) -> None:
    """Monitoring electrodes (a ring with a metal snap) on the chest wall and their trailing wires."""
    anat = scene.anatomy
    electrodes = []
    for _ in range(int(rng.integers(3, 6))):
        x = anat.midline_x + rng.uniform(-0.9, 0.9) * anat.thorax_half_width
        y = rng.uniform(anat.clavicle_y + 0.02, dome_y(anat, "right") + 0.1)
        heading = rng.uniform(0, 2 * np.pi) + np.cumsum(rng.normal(0, 0.3, 12))
        wire = np.vstack([[0, 0], np.cumsum(np.column_stack([np.cos(heading), np.sin(heading)]) * 0.035, axis=0)])
        electrodes.append(((x, y), wire, rng.uniform(anat.lat_front_x - 0.05, anat.lat_front_x - 0.03)))
    for view in scene.views:
        for (x, y), wire, lateral_x in electrodes:
            if view.kind == "lateral":
                x = lateral_x
            win = window_around(view, x, y, 0.02)
            view.add(win, _METAL * ellipse(win, x, y, 0.004, 0.004, view.size))
            if view.kind == "frontal":
                stroke(view, ring_points(x, y, 0.012, 0.012), 1.0, 0.35)
                stroke(view, wire + [x, y], 1.2, 0.6)


def paint_breast_implants(scene: Scene, finding: Finding, rng: np.random.Generator) -> None:
    """Dense, smoothly rounded implant shadows over the lower zones, with a thin shell."""
    anat = scene.anatomy
    for side in finding_sides(finding, rng, "bilateral"):
        cx = anat.midline_x + SIGN[side] * 0.55 * anat.thorax_half_width
        frontal = (cx, dome_y(anat, side) - 0.08, 0.13, 0.1)
        lateral = (anat.lat_front_x - 0.03, dome_y(anat, side) - 0.08, 0.05, 0.09)
        for view in scene.views:
            x, y, rx, ry = view_point(view, frontal, lateral)
            win = window_around(view, x, y, max(rx, ry) + 0.01)
            view.add(win, 0.3 * ellipse(win, x, y, rx, ry, view.size))
            stroke(view, ring_points(x, y, rx, ry), 1.3, 0.15)
