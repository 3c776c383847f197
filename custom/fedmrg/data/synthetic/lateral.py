"""The normal lateral radiograph: body, overlapping lungs with their vessels, heart, trachea and
aorta, spine, ribs, sternum and gastric bubble."""

from __future__ import annotations

import numpy as np

from fedmrg.data.synthetic.anatomy import (
    LUNG_SIDES,
    Anatomy,
    lateral_diaphragm_y,
    lateral_front,
    lateral_heart,
    lateral_heart_bounds,
    lateral_hilum_centre,
    lateral_spine_centre,
    sternum_x,
    vertebra_phase,
)
from fedmrg.data.synthetic.canvas import View, new_view
from fedmrg.data.synthetic.primitives import (
    catmull_rom,
    cortical_band,
    ellipse,
    pixel_centres,
    segment_distance,
    smooth_noise,
    soft_edge,
)
from fedmrg.data.synthetic.vessels import draw_vessels, vessel_tree


def lateral_view(anat: Anatomy, size: int, rng: np.random.Generator) -> View:
    axis = pixel_centres(size)
    x, y = axis[None, :], axis[:, None]
    front = lateral_front(anat, axis)[:, None]
    body = _lateral_body(anat, x, y, front, size)
    view = new_view("lateral", size, body)
    shoulders = 0.45 * np.clip((0.34 - y) / 0.24, 0, 1)
    below = 0.5 * sum(soft_edge(y - lateral_diaphragm_y(anat, side, x), size) for side in LUNG_SIDES)
    anterior, posterior = lateral_heart_bounds(anat, y)
    heart = soft_edge(x - anterior, size, 3) * soft_edge(posterior - x, size, 3) * (1 - below)
    view.density += body * (1.2 + shoulders + 0.25 * below + 0.08 * heart)
    air = anat.lung_air * 0.85
    for side in LUNG_SIDES:
        view.lung[side] = _lateral_lung(anat, side, x, y, front, size) * (1 - 0.5 * heart)
        view.air[side] = 0.5 * air * 1.2 * body * view.lung[side]
    lungs = 0.5 * (view.lung["right"] + view.lung["left"])
    hilum = lateral_hilum_centre(anat)
    tree = vessel_tree(rng, hilum, (-np.pi, np.pi), 14, 0.075)
    texture = 0.018 * smooth_noise(rng, (size, size), 4.0 * size / 256)
    hila = 0.25 * np.exp(-0.5 * (((x - hilum[0]) / 0.025) ** 2 + ((y - hilum[1]) / 0.03) ** 2))
    view.markings = (draw_vessels(size, [tree], anat.marking_gain) + texture + hila) * lungs
    for side in LUNG_SIDES:
        view.air[side] -= 0.5 * view.markings * view.lung[side]
        view.density -= view.air[side]
    _lateral_mediastinum(view, anat)
    _lateral_spine(view, anat)
    _lateral_ribs(view, anat)
    _sternum(view, anat, front[:, 0])
    _lateral_gastric_bubble(view, anat)
    return view


def _lateral_body(anat: Anatomy, x: np.ndarray, y: np.ndarray, front: np.ndarray, size: int) -> np.ndarray:
    """Chest outline: convex anterior wall (breasts below), convex back, the neck above."""
    breast = 0.035 * anat.breast_size * np.exp(-(((y - anat.dome_y_right + 0.05) / 0.1) ** 2))
    curve = np.sin(np.pi * np.clip((y - 0.05) / 0.9, 0, 1))
    neck = 0.2 * np.clip((0.1 - y) / 0.1, 0, 1) ** 1.5
    skin_front = front - 0.035 - 0.02 * curve - breast + neck
    skin_back = anat.lat_back_x + 0.05 + 0.02 * curve
    return (soft_edge(x - skin_front, size, 2) * soft_edge(skin_back - x, size, 2)).astype(np.float32)


def _lateral_lung(anat: Anatomy, side: str, x: np.ndarray, y: np.ndarray, front: np.ndarray, size: int) -> np.ndarray:
    """Both lungs overlap on the lateral view; each keeps its own hemidiaphragm."""
    back = anat.lat_back_x
    rounding_end = anat.apex_y + 0.16
    r = np.clip((rounding_end - y) / (rounding_end - anat.apex_y + 0.005), 0, None)
    s = np.sqrt(np.clip(1 - r**2, 0, 1))
    centre = 0.5 * (anat.lat_front_x + back) + 0.05
    low = centre + (front + 0.008 - centre) * s
    high = centre + (back - centre) * s
    inside = soft_edge(x - low, size) * soft_edge(high - x, size)
    return inside * soft_edge(lateral_diaphragm_y(anat, side, x) - y, size)


def _lateral_mediastinum(view: View, anat: Anatomy) -> None:
    """Trachea, aortic arch and descending aorta."""
    size = view.size
    carina_y = anat.knob_y + 0.055
    spine_front = float(lateral_spine_centre(anat, np.array(anat.knob_y))) - 0.045
    trachea_x = spine_front - 0.14
    trachea = np.array([[trachea_x - 0.05, 0.0], [trachea_x - 0.01, anat.knob_y - 0.04], [trachea_x + 0.02, carina_y]])
    win = view.window(trachea_x - 0.08, trachea_x + 0.06, 0.0, carina_y + 0.02)
    if win is not None:
        radius = 0.015 - 0.006 * np.clip((win.y - carina_y + 0.04) / 0.04, 0, 1)
        column = soft_edge(radius - segment_distance(win, trachea), size, 2)
        view.add(win, -0.22 * column * view.body[win.rows, win.cols])
    hx, hy, hd, hh = lateral_heart(anat)
    ectasia = anat.aorta_ectasia
    arch = np.array(
        [
            [hx - 0.25 * hd, hy - 0.8 * hh],
            [hx - 0.3 * hd - 0.025 * ectasia, anat.knob_y + 0.05],
            [trachea_x - 0.005, anat.knob_y - 0.03 - 0.02 * ectasia],
            [spine_front - 0.025, anat.knob_y + 0.0],
            [spine_front - 0.02 + 0.02 * ectasia, anat.knob_y + 0.15],
            [spine_front - 0.018, anat.dome_y_left + 0.03],
        ]
    )
    path = catmull_rom(arch, 0.03)
    win = view.window(path[:, 0].min() - 0.05, path[:, 0].max() + 0.05, path[:, 1].min() - 0.04, path[:, 1].max())
    if win is not None:
        radius = 0.024 + 0.01 * ectasia - 0.007 * np.clip((win.y - anat.knob_y) / 0.2, 0, 1)
        tube = soft_edge(radius - segment_distance(win, path), size, 3)
        view.add(win, 0.07 * tube * view.body[win.rows, win.cols])


def _lateral_spine(view: View, anat: Anatomy) -> None:
    """Vertebral bodies (blocks with end plates and disc spaces) and the posterior elements."""
    size = view.size
    win = view.window(anat.lat_spine_x - 0.1, anat.lat_back_x + 0.06, 0.0, 1.0)
    dx = win.x - lateral_spine_centre(anat, win.y)
    half = 0.04
    phase = vertebra_phase(anat, win.y)
    t = phase - np.floor(phase)
    height_px = size * anat.vertebra_height
    block = (
        soft_edge(half - np.abs(dx), size) * soft_edge(t - 0.04, height_px, 0.04) * soft_edge(0.82 - t, height_px, 0.04)
    )
    endplate = np.exp(-(((t - 0.82) / 0.03) ** 2)) + np.exp(-(((t - 0.04) / 0.03) ** 2))
    cortex = np.exp(-(((np.abs(dx) - half) * size / 1.3) ** 2)) * soft_edge(0.84 - t, height_px, 0.04)
    arch = (
        soft_edge(dx - half - 0.006, size)
        * soft_edge(half + 0.055 - dx, size)
        * (0.5 + 0.5 * np.cos(2 * np.pi * (t - 0.4)))
    )
    bone = 0.16 * block + 0.08 * endplate * block + 0.07 * cortex + 0.06 * arch
    view.add(win, bone * anat.bone_density * view.body[win.rows, win.cols])


def _lateral_ribs(view: View, anat: Anatomy) -> None:
    """Posterior ribs of both sides (slightly magnified apart), sloping down and forward."""
    size = view.size
    win = view.window(anat.lat_spine_x - 0.3, anat.lat_back_x + 0.05, anat.apex_y - 0.02, 0.95)
    spine = lateral_spine_centre(anat, win.y)
    reach = soft_edge(win.x - spine + 0.28, size, 30) * soft_edge(anat.lat_back_x + 0.04 - win.x, size, 3)
    for offset in (0.0, 0.45):
        phase = (win.y - 0.5 * (spine - win.x) - anat.rib_start_y) / anat.rib_spacing + offset
        t = phase - np.floor(phase)
        band = cortical_band(t * anat.rib_spacing, 0.4 * anat.rib_spacing, size)
        view.add(win, 0.045 * band * reach * anat.bone_density)


def _sternum(view: View, anat: Anatomy, front: np.ndarray) -> None:
    """The sternum along the anterior chest wall, the manubrium wider at the top."""
    size = view.size
    top, bottom = anat.clavicle_y + 0.06, anat.dome_y_right - 0.02
    centre_x = sternum_x(anat, front)
    win = view.window(centre_x.min() - 0.04, centre_x.max() + 0.03, top - 0.01, bottom + 0.01)
    if win is None:
        return
    centre = centre_x[win.rows, None]
    half = 0.009 * (1 + 0.7 * np.clip((top + 0.06 - win.y) / 0.06, 0, 1))
    band = cortical_band(win.x - centre + half, 2 * half, size)
    band *= soft_edge(win.y - top, size, 3) * soft_edge(bottom - win.y, size, 3)
    view.add(win, 0.28 * band * anat.bone_density)


def _lateral_gastric_bubble(view: View, anat: Anatomy) -> None:
    if anat.gastric_bubble <= 0:
        return
    size = view.size
    cx = anat.lat_front_x + 0.15
    top = float(lateral_diaphragm_y(anat, "left", np.array(cx))) + 0.012
    rx, ry = 0.035 + 0.02 * anat.gastric_bubble, 0.018 + 0.01 * anat.gastric_bubble
    win = view.window(cx - rx, cx + rx, top, top + 2 * ry)
    if win is not None:
        bubble = ellipse(win, cx, top + ry, rx, ry, size) * soft_edge(top + 1.2 * ry - win.y, size)
        view.add(win, -0.3 * bubble)
