"""Lung findings: volume (hyper- and hypoinflation, volume loss, pneumonectomy), airspace opacities,
atelectasis, nodules and masses, calcifications, cavities and bullae, edema, interstitial patterns."""

from __future__ import annotations

import dataclasses

import numpy as np

from fedmrg.data.synthetic.anatomy import (
    LUNG_SIDES,
    SIGN,
    Anatomy,
    dome_y,
    hilum_centre,
    lateral_hilum_centre,
    lung_bounds,
    mediastinum_x,
    raise_dome,
    zone_box,
)
from fedmrg.data.synthetic.canvas import View, fill_air, stroke
from fedmrg.data.synthetic.findings import Finding
from fedmrg.data.synthetic.painters.devices import clip_plan, draw_clips
from fedmrg.data.synthetic.painters.pleura import paint_effusion
from fedmrg.data.synthetic.primitives import (
    Window,
    catmull_rom,
    ellipse,
    gaussian,
    ring_points,
    smooth_noise,
    soft_edge,
)
from fedmrg.data.synthetic.scene import (
    ZONES,
    Scene,
    finding_sides,
    has_qualifier,
    lateral_point,
    lobules,
    lung_window,
    opacity_cloud,
    point_in_zone,
    view_point,
    window_around,
    zone_weight,
)


def hyperinflate(anat: Anatomy, finding: Finding, rng: np.random.Generator) -> Anatomy:
    """Low flat domes, lucent lungs with sparse markings, a narrow heart, a deep chest on the lateral."""
    sev = finding.severity
    drop = 0.04 + 0.06 * sev
    return dataclasses.replace(
        anat,
        dome_y_right=min(anat.dome_y_right + drop, 0.82),
        dome_y_left=min(anat.dome_y_left + drop, 0.84),
        sulcus_depth=anat.sulcus_depth * (1 - 0.5 * sev),
        thorax_half_width=anat.thorax_half_width * (1 + 0.03 * sev),
        lung_air=min(anat.lung_air + 0.1 * sev, 0.95),
        marking_gain=anat.marking_gain * (1 - 0.4 * sev),
        heart_left=anat.heart_left * (1 - 0.15 * sev),
        heart_right=anat.heart_right * (1 - 0.1 * sev),
        rib_spacing=anat.rib_spacing * (1 + 0.08 * sev),
        vertebra_height=anat.vertebra_height * (1 + 0.08 * sev),
        lat_front_x=anat.lat_front_x - 0.05 * sev,
    )


def hypoinflate(anat: Anatomy, finding: Finding, rng: np.random.Generator) -> Anatomy:
    """High domes, crowded markings and ribs, a broad-looking heart."""
    sev = finding.severity
    rise = 0.035 + 0.06 * sev
    return dataclasses.replace(
        anat,
        dome_y_right=anat.dome_y_right - rise,
        dome_y_left=anat.dome_y_left - rise,
        lung_air=anat.lung_air - 0.07 * sev,
        marking_gain=anat.marking_gain * (1 + 0.5 * sev),
        heart_left=anat.heart_left * (1 + 0.08 * sev),
        rib_spacing=anat.rib_spacing * (1 - 0.08 * sev),
        vertebra_height=anat.vertebra_height * (1 - 0.08 * sev),
    )


def lose_volume(anat: Anatomy, finding: Finding, rng: np.random.Generator) -> Anatomy:
    """The mediastinum shifts toward the smaller side and its hemidiaphragm rises."""
    side = finding_sides(finding, rng)[0]
    amount = (0.4 + 0.6 * finding.severity) * (2.0 if finding.kind == "pneumonectomy" else 1.0)
    anat = dataclasses.replace(anat, mediastinal_shift=anat.mediastinal_shift + SIGN[side] * 0.022 * amount)
    anat = raise_dome(anat, side, 0.035 * amount)
    if finding.region in ("upper", "apex"):
        field = "hilum_y_right" if side == "right" else "hilum_y_left"
        anat = dataclasses.replace(anat, **{field: getattr(anat, field) - 0.03})
    return anat


def paint_pneumonectomy(scene: Scene, finding: Finding, rng: np.random.Generator) -> None:
    """An opaque hemithorax (fluid fills the space) with clips at the bronchial stump."""
    side = finding_sides(finding, rng)[0]
    clips = clip_plan(scene.anatomy, rng, "hilum", side, 4)
    for view in scene.views:
        win = lung_window(view, scene.anatomy, side)
        fill_air(view, side, win, np.ones((1, 1), dtype=np.float32), extra=0.15)
        draw_clips(view, clips)


def paint_airspace(scene: Scene, finding: Finding, rng: np.random.Generator) -> None:
    """Patchy (opacity, infiltrate) or confluent (consolidation, pneumonia) airspace filling."""
    anat, sev = scene.anatomy, finding.severity
    confluent = finding.kind == "consolidation"
    plans = []
    for side in finding_sides(finding, rng):
        region = finding.region or ZONES[int(rng.integers(3))]
        frontal = point_in_zone(anat, side, region, rng)
        lateral = lateral_point(anat, region, frontal[1], rng)
        radius = (
            (0.04 + 0.05 * sev)
            * (1.4 if confluent else 1.0)
            * (0.7 if has_qualifier(finding, "round", "focal") else 1.0)
        )
        blobs = lobules(rng, radius, int(rng.integers(5, 9) if confluent else rng.integers(3, 7)))
        plans.append((side, frontal, lateral, radius, blobs, int(rng.integers(2**31))))
    amount = 0.8 + 0.2 * sev if confluent else 0.55 + 0.4 * sev
    for index, view in enumerate(scene.views):
        for side, frontal, lateral, radius, blobs, texture in plans:
            x, y = view_point(view, frontal, lateral)
            win = window_around(view, x, y, 2.2 * radius)
            field = opacity_cloud(win, x, y, blobs, np.random.default_rng([texture, index]), confluent, view.size)
            if confluent and side == "right" and finding.region in ("upper", "middle"):
                field = field * _minor_fissure(anat, win, finding.region, view.size)
            fill_air(view, side, win, amount * field)


def _minor_fissure(anat: Anatomy, win: Window, region: str, size: int) -> np.ndarray:
    """Lobar consolidation stops sharply at the horizontal fissure (right upper / middle lobe)."""
    fissure = anat.hilum_y_right + 0.01
    return soft_edge(fissure - win.y, size) if region == "upper" else soft_edge(win.y - fissure, size)


def paint_atelectasis(scene: Scene, finding: Finding, rng: np.random.Generator) -> None:
    """Plate-like (discoid) linear densities, mostly horizontal, with a little surrounding haze."""
    anat, sev = scene.anatomy, finding.severity
    plans = []
    for side in finding_sides(finding, rng):
        region = finding.region or "base"
        for _ in range(1 + int(round(2 * sev))):
            frontal = point_in_zone(anat, side, region, rng)
            lateral = lateral_point(anat, region, frontal[1], rng)
            length = (0.05 + 0.06 * rng.random()) * (0.7 + 0.6 * sev)
            plans.append((side, frontal, lateral, length, rng.uniform(-0.3, 0.3), 0.004 + 0.006 * sev))
    for view in scene.views:
        for side, frontal, lateral, length, angle, thickness in plans:
            x, y = view_point(view, frontal, lateral)
            win = window_around(view, x, y, 0.6 * length + 0.02)
            if win is None:
                continue
            along = (win.x - x) * np.cos(angle) + (win.y - y) * np.sin(angle)
            across = -(win.x - x) * np.sin(angle) + (win.y - y) * np.cos(angle)
            plate = np.exp(-((across / thickness) ** 2)) * soft_edge(0.5 * length - np.abs(along), view.size, 4)
            haze = gaussian(win, x, y, 0.5 * length, 2.5 * thickness)
            fill_air(view, side, win, np.maximum(0.95 * plate, 0.25 * sev * haze))


def paint_nodule(scene: Scene, finding: Finding, rng: np.random.Generator) -> None:
    """Round soft-tissue densities: nodules small and sharp, masses large and lobulated."""
    anat, sev = scene.anatomy, finding.severity
    many = has_qualifier(finding, "multiple", "scattered", "diffuse")
    if finding.kind == "nipple_shadow":
        _paint_nipples(scene, finding, rng)
        return
    count = int(rng.integers(2, 6)) if many else 1
    sides = finding_sides(finding, rng)
    plans = []
    for index in range(count):
        side = sides[index % len(sides)]
        region = finding.region or ZONES[int(rng.integers(3))]
        frontal = point_in_zone(anat, side, region, rng)
        lateral = lateral_point(anat, region, frontal[1], rng)
        if finding.kind == "mass":  # lobulated: three overlapping lobes
            radius = 0.03 + 0.035 * sev
            lobes, lobe_radius = lobules(rng, radius, 3)[:, :2] * 0.8, 0.75 * radius
        else:
            radius = (0.01 + 0.012 * sev) * (0.75 if many else 1.0) * rng.uniform(0.8, 1.2)
            lobes, lobe_radius = np.zeros((1, 2)), radius
        plans.append((side, frontal, lateral, radius, lobes, lobe_radius))
    for view in scene.views:
        for side, frontal, lateral, radius, lobes, lobe_radius in plans:
            x, y = view_point(view, frontal, lateral)
            win = window_around(view, x, y, 2 * radius + 0.01)
            shape = np.max(
                [ellipse(win, x + dx, y + dy, lobe_radius, lobe_radius, view.size) for dx, dy in lobes], axis=0
            )
            fill_air(view, side, win, shape, extra=0.25)


def _paint_nipples(scene: Scene, finding: Finding, rng: np.random.Generator) -> None:
    """Small soft round densities over the lower zones, often on both sides (frontal only)."""
    anat = scene.anatomy
    plans = []
    for side in finding_sides(finding, rng, "bilateral"):
        x = anat.midline_x + SIGN[side] * rng.uniform(0.45, 0.62) * anat.thorax_half_width
        plans.append((side, x, dome_y(anat, side) - rng.uniform(0.05, 0.1), rng.uniform(0.008, 0.011)))
    view = scene.views[0]
    for side, x, y, radius in plans:
        win = window_around(view, x, y, 2 * radius)
        fill_air(view, side, win, 0.6 * ellipse(win, x, y, radius, radius, view.size))


def paint_granulomas(scene: Scene, finding: Finding, rng: np.random.Generator) -> None:
    """Small, very dense calcified nodules; granulomatous disease scatters several, with calcified nodes."""
    anat = scene.anatomy
    disease = finding.kind == "granulomatous_disease"
    many = disease or has_qualifier(finding, "multiple", "scattered")
    count = int(rng.integers(3, 8)) if disease else int(rng.integers(2, 6)) if many else 1
    sides = finding_sides(finding, rng, "bilateral" if disease else "random")
    dots = []
    for _ in range(count):
        side = sides[int(rng.integers(len(sides)))]
        zones = ZONES[:2] if disease else ZONES
        region = finding.region or zones[int(rng.integers(len(zones)))]
        frontal = point_in_zone(anat, side, region, rng)
        dots.append((side, frontal, lateral_point(anat, region, frontal[1], rng), rng.uniform(0.004, 0.007)))
    nodes = _node_plan(anat, finding, rng) if disease else []
    for view in scene.views:
        for side, frontal, lateral, radius in dots + nodes:
            x, y = view_point(view, frontal, lateral)
            win = window_around(view, x, y, 3 * radius)
            fill_air(view, side, win, ellipse(win, x, y, radius, radius, view.size))
            view.add(win, 0.9 * ellipse(win, x, y, radius, radius, view.size))


def _node_plan(anat: Anatomy, finding: Finding, rng: np.random.Generator) -> list:
    """Clusters of calcified lymph nodes at a hilum, or paratracheal / subcarinal."""
    mediastinal = has_qualifier(finding, "paratracheal", "mediastinum", "trachea", "aorta")
    if mediastinal:
        medc = mediastinum_x(anat)
        paratracheal = (medc - anat.mediastinum_half_width + 0.005, anat.knob_y + rng.uniform(-0.03, 0.03))
        sites = [("right", paratracheal, "paratracheal"), ("left", (medc + 0.01, anat.knob_y + 0.08), "hilum")]
        sites = sites[: 1 + int(rng.random() < 0.5)]
    else:
        sites = [(side, hilum_centre(anat, side), "hilum") for side in finding_sides(finding, rng)]
    nodes = []
    for side, (x, y), region in sites:
        lateral = lateral_point(anat, region, y, rng)
        for _ in range(int(rng.integers(2, 5))):
            dx, dy = rng.normal(0, 0.009, 2)
            lx, ly = lateral
            nodes.append((side, (x + dx, y + dy), (lx + dx, ly + dy), rng.uniform(0.005, 0.009)))
    return nodes


def paint_calcified_nodes(scene: Scene, finding: Finding, rng: np.random.Generator) -> None:
    nodes = _node_plan(scene.anatomy, finding, rng)
    for view in scene.views:
        for _side, frontal, lateral, radius in nodes:
            x, y = view_point(view, frontal, lateral)
            win = window_around(view, x, y, 3 * radius)
            view.add(win, 0.8 * ellipse(win, x, y, radius, radius, view.size))


def paint_lucent_lesion(scene: Scene, finding: Finding, rng: np.random.Generator) -> None:
    """Cavity: a thick-walled ring with an air centre. Bulla / lucency: air without markings, a
    hairline wall. With no zone a whole hemithorax is hyperlucent."""
    anat, sev = scene.anatomy, finding.severity
    cavity = finding.kind == "cavity"
    plans = []
    for side in finding_sides(finding, rng):
        region = finding.region or ("upper" if cavity else None)
        if region is None:
            x0, x1, y0, y1 = zone_box(anat, side, None)
            frontal, radius = (0.5 * (x0 + x1), 0.45 * y0 + 0.55 * y1), 0.16
        else:
            frontal = point_in_zone(anat, side, region, rng)
            radius = 0.025 + 0.03 * sev if cavity else 0.04 + 0.05 * sev
        plans.append((side, frontal, lateral_point(anat, region, frontal[1], rng), radius))
    for view in scene.views:
        for side, frontal, lateral, radius in plans:
            x, y = view_point(view, frontal, lateral)
            win = window_around(view, x, y, radius + 0.01)
            if win is None:
                continue
            lung = view.lung[side][win.rows, win.cols]
            inner_radius = radius * (0.65 if cavity else 1.0)
            inner = ellipse(win, x, y, inner_radius, inner_radius, view.size) * lung
            if cavity:
                fill_air(view, side, win, ellipse(win, x, y, radius, radius, view.size) * (1 - inner), extra=0.2)
            else:
                wall = np.exp(-(((np.hypot(win.x - x, win.y - y) - radius) * view.size / 0.9) ** 2)) * lung
                view.add(win, 0.07 * wall)
            view.add(win, -inner * (view.markings[win.rows, win.cols] + 0.07 * view.body[win.rows, win.cols]))


def paint_edema(scene: Scene, finding: Finding, rng: np.random.Generator) -> None:
    """Prominent upper-zone vessels, perihilar haze (bat wing when severe), Kerley B lines at the
    lateral bases; severe edema adds small effusions."""
    anat, sev = scene.anatomy, finding.severity
    kerley = {
        side: [(rng.uniform(0.012, 0.03), rng.uniform(0.02, 0.14)) for _ in range(int(3 + 7 * sev))]
        for side in LUNG_SIDES
    }
    textures = [int(rng.integers(2**31)) for _ in scene.views]
    haze = 0.12 + 0.6 * sev**1.5
    for index, view in enumerate(scene.views):
        for side in LUNG_SIDES:
            win = lung_window(view, anat, side)
            lung = view.lung[side][win.rows, win.cols]
            view.add(win, 0.9 * sev * view.markings[win.rows, win.cols] * lung)
            if view.kind == "frontal":
                hx, hy = hilum_centre(anat, side)
                centre = (hx + SIGN[side] * 0.03, hy + 0.04)
                spread = (0.07 + 0.05 * sev, 0.1 + 0.05 * sev)
            else:
                centre, spread = lateral_hilum_centre(anat), (0.12 + 0.06 * sev, 0.1 + 0.05 * sev)
            texture_rng = np.random.default_rng([textures[index], LUNG_SIDES.index(side)])
            noise = smooth_noise(texture_rng, lung.shape, 4 * view.size / 256)
            field = gaussian(win, *centre, *spread) * np.clip(0.8 + 0.3 * noise, 0, 1)
            fill_air(view, side, win, haze * field)
            if view.kind == "frontal":
                _draw_kerley_lines(view, anat, side, kerley[side])
    if sev >= 0.75:
        small_effusions = dataclasses.replace(finding, kind="pleural_effusion", side="bilateral", severity=0.2)
        paint_effusion(scene, small_effusions, rng)


def _draw_kerley_lines(view: View, anat: Anatomy, side: str, lines: list[tuple[float, float]]) -> None:
    """Short horizontal septal lines reaching the pleura at the lateral costophrenic region."""
    cp = dome_y(anat, side) + anat.sulcus_depth
    for length, height in lines:
        y = cp - height - 0.02
        low, high = lung_bounds(anat, side, np.array(y))
        edge = float(low if side == "right" else high) - SIGN[side] * 0.004
        stroke(view, np.array([[edge, y], [edge - SIGN[side] * length, y]]), 1.0, 0.09)


def paint_reticular(scene: Scene, finding: Finding, rng: np.random.Generator) -> None:
    """A reticular net of fine lines; fibrosis is coarser, basal, with some ground-glass haze.
    Bronchovascular markings gather around the hila."""
    anat, sev = scene.anatomy, finding.severity
    fibrosis = finding.kind == "fibrosis"
    hilar = has_qualifier(finding, "bronch") or finding.region == "hilum"
    region = finding.region or ("lower" if fibrosis else None)
    sides = finding_sides(finding, rng, "bilateral")
    textures = [int(rng.integers(2**31)) for _ in scene.views]
    amount = (0.05 + 0.07 * sev) * (1.4 if fibrosis else 1.0)
    cell = 10.0 if fibrosis else 7.0
    for index, view in enumerate(scene.views):
        for side in sides:
            win = lung_window(view, anat, side)
            lung = view.lung[side][win.rows, win.cols]
            texture_rng = np.random.default_rng([textures[index], LUNG_SIDES.index(side)])
            net = sum(
                weight * np.exp(-((smooth_noise(texture_rng, lung.shape, cell * view.size / 256) / 0.2) ** 2))
                for weight in (1.0, 0.7)
            )
            weight = zone_weight(view, anat, side, win, region, hilar)
            view.add(win, amount * net * weight * lung)
            if fibrosis:
                fill_air(view, side, win, 0.2 * sev * weight)


def paint_scarring(scene: Scene, finding: Finding, rng: np.random.Generator) -> None:
    """Irregular streaky linear densities (scars), with a little local volume of density."""
    anat, sev = scene.anatomy, finding.severity
    plans = []
    for side in finding_sides(finding, rng):
        region = finding.region or ("apex" if rng.random() < 0.5 else "base")
        for _ in range(int(rng.integers(2, 5))):
            frontal = point_in_zone(anat, side, region, rng)
            lateral = lateral_point(anat, region, frontal[1], rng)
            steps = rng.normal(0, 0.35, 6).cumsum() + rng.uniform(0, np.pi)
            length = rng.uniform(0.04, 0.1)
            path = np.column_stack([np.cos(steps), np.sin(steps)]).cumsum(axis=0) * (length / 6)
            plans.append((frontal, lateral, path - path.mean(axis=0)))
    for view in scene.views:
        for frontal, lateral, path in plans:
            x, y = view_point(view, frontal, lateral)
            stroke(view, path + [x, y], 1.4, 0.12 + 0.08 * sev)


def paint_bronchiectasis(scene: Scene, finding: Finding, rng: np.random.Generator) -> None:
    """Tram-track bronchial walls radiating from the hilum and small ring shadows."""
    anat = scene.anatomy
    plans = []
    for side in finding_sides(finding, rng, "bilateral"):
        region = finding.region or "lower"
        hilum = hilum_centre(anat, side)
        for _ in range(int(rng.integers(3, 6))):
            frontal = point_in_zone(anat, side, region, rng)
            lateral = lateral_point(anat, region, frontal[1], rng)
            plans.append((frontal, lateral, hilum, rng.random() < 0.4))
    for view in scene.views:
        for frontal, lateral, hilum, ring in plans:
            x, y = view_point(view, frontal, lateral)
            if ring:
                stroke(view, ring_points(x, y, 0.009, 0.009), 1.2, 0.1)
                continue
            hx, hy = hilum if view.kind == "frontal" else lateral_hilum_centre(anat)
            direction = np.array([x - hx, y - hy]) / max(np.hypot(x - hx, y - hy), 1e-6)
            normal = np.array([-direction[1], direction[0]]) * 0.005
            for offset in (normal, -normal):
                start = np.array([x, y]) + offset
                stroke(view, np.vstack([start, start + 0.05 * direction]), 1.1, 0.1)


def paint_azygos_fissure(scene: Scene, finding: Finding, rng: np.random.Generator) -> None:
    """A hairline curving down from the right apex to the azygos vein's teardrop (frontal only)."""
    anat = scene.anatomy
    medc = mediastinum_x(anat)
    bottom = (medc - anat.mediastinum_half_width - 0.006, anat.knob_y + 0.025)
    top = (medc - anat.mediastinum_half_width - rng.uniform(0.03, 0.06), anat.apex_y + 0.01)
    view = scene.views[0]
    middle = (0.5 * (top[0] + bottom[0]) - 0.015, 0.5 * (top[1] + bottom[1]))
    curve = catmull_rom(np.array([top, middle, bottom]), 0.01)
    stroke(view, curve, 1.0, 0.12)
    win = window_around(view, *bottom, 0.02)
    fill_air(view, "right", win, ellipse(win, *bottom, 0.007, 0.01, view.size))
