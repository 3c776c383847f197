"""The normal frontal (PA) radiograph: body, lungs with their vessels, heart and mediastinum, airways,
breasts, gastric bubble, ribs, spine, clavicles and shoulders."""

from __future__ import annotations

import numpy as np

from fedmrg.data.synthetic.anatomy import (
    LUNG_SIDES,
    SIGN,
    Anatomy,
    clavicle_ends,
    descending_aorta_reach,
    diaphragm_y,
    dome_y,
    heart_half_width,
    hilum_centre,
    humeral_head,
    lung_bounds,
    mediastinum_x,
    rib_rise,
    spine_centre,
    vertebra_phase,
)
from fedmrg.data.synthetic.canvas import View, new_view
from fedmrg.data.synthetic.primitives import (
    cortical_band,
    ellipse,
    pixel_centres,
    segment_distance,
    smooth_noise,
    soft_edge,
)
from fedmrg.data.synthetic.vessels import draw_vessels, vessel_tree


def frontal_view(anat: Anatomy, size: int, rng: np.random.Generator) -> View:
    axis = pixel_centres(size)
    x, y = axis[None, :], axis[:, None]
    body = _frontal_body(anat, x, y, size)
    view = new_view("frontal", size, body)
    below = _frontal_below_diaphragm(anat, x, y, size)
    heart = _frontal_heart(anat, x, y, size) * (1 - below)
    view.density += body * (0.95 + 0.3 * below + 0.4 * heart)
    lateral = 0.8 + 0.2 * soft_edge(np.abs(x - anat.midline_x) - 0.12, size, 25)
    depth = lateral * (0.85 + 0.15 * np.clip((y - anat.apex_y) / 0.15, 0, 1))  # thinner lung medially, at the apex
    trees = []
    for side in LUNG_SIDES:
        view.lung[side] = _frontal_lung(anat, side, x, y, size)
        view.air[side] = anat.lung_air * body * view.lung[side] * depth
        hx, hy = hilum_centre(anat, side)
        angles = (0.45 * np.pi, 1.55 * np.pi) if side == "right" else (-0.55 * np.pi, 0.55 * np.pi)
        trees.append(vessel_tree(rng, (hx, hy), angles, 12, 0.07))
    lungs = view.lung["right"] + view.lung["left"]
    texture = 0.018 * smooth_noise(rng, (size, size), 4.0 * size / 256)
    view.markings = (draw_vessels(size, trees, anat.marking_gain) + texture + _hila(anat, x, y)) * lungs
    for side in LUNG_SIDES:
        view.air[side] -= view.markings * view.lung[side]
        view.density -= view.air[side]
    _descending_aorta(view, anat)
    _breasts(view, anat)
    _gastric_bubble(view, anat)
    _frontal_airways(view, anat)
    _frontal_ribs(view, anat, rng)
    _frontal_spine(view, anat)
    _clavicles(view, anat)
    _shoulders(view, anat)
    return view


def _frontal_body(anat: Anatomy, x: np.ndarray, y: np.ndarray, size: int) -> np.ndarray:
    """Projected soft-tissue thickness: an elliptic cross-section with shoulders at the top corners."""
    dx = np.abs(x - anat.midline_x)
    shoulder = 0.035 * np.exp(-(((y - anat.clavicle_y) / 0.1) ** 2))
    half = anat.body_half_width * (1 - 0.05 * np.clip((y - 0.8) / 0.2, 0, 1)) + shoulder
    shoulder_top = 0.07 * np.clip((dx - 0.12) / (half - 0.12), 0, 1) ** 2
    thickness = np.sqrt(np.clip(1 - (dx / half) ** 2, 0, 1)) * soft_edge(y - shoulder_top, size, 3)
    return thickness.astype(np.float32)


def _frontal_below_diaphragm(anat: Anatomy, x: np.ndarray, y: np.ndarray, size: int) -> np.ndarray:
    dome = np.where(x < anat.midline_x, diaphragm_y(anat, "right", x), diaphragm_y(anat, "left", x))
    return soft_edge(y - dome, size)


def _frontal_heart(anat: Anatomy, x: np.ndarray, y: np.ndarray, size: int) -> np.ndarray:
    medc = mediastinum_x(anat)
    right, left = heart_half_width(anat, "right", y), heart_half_width(anat, "left", y)
    return soft_edge(x - (medc - right), size) * soft_edge(medc + left - x, size) * (right + left > 0)


def _frontal_lung(anat: Anatomy, side: str, x: np.ndarray, y: np.ndarray, size: int) -> np.ndarray:
    """Where one lung is: fully outside the cardiomediastinal silhouette, partly behind the heart."""
    low, high = lung_bounds(anat, side, y)
    below_dome = soft_edge(diaphragm_y(anat, side, x) - y, size)
    visible = soft_edge(x - low, size) * soft_edge(high - x, size)
    spine_edge = mediastinum_x(anat) + SIGN[side] * (anat.spine_half_width + 0.012)
    heart_rows = heart_half_width(anat, side, y) > 0
    if side == "right":
        behind = soft_edge(spine_edge - x, size) * soft_edge(x - high, size)
    else:
        behind = soft_edge(x - spine_edge, size) * soft_edge(low - x, size)
    return (visible + (0.15 if side == "right" else 0.3) * behind * heart_rows) * below_dome


def _hila(anat: Anatomy, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """The hilar shadows: pulmonary arteries and veins where they enter the lungs."""
    total = np.zeros(np.broadcast_shapes(x.shape, y.shape), dtype=np.float32)
    for side in LUNG_SIDES:
        hx, hy = hilum_centre(anat, side)
        total += 0.2 * np.exp(-0.5 * (((x - hx) / 0.02) ** 2 + ((y - hy) / 0.035) ** 2))
    return total


def _descending_aorta(view: View, anat: Anatomy) -> None:
    """The descending aorta's soft band left of the spine, its wall seen through the heart."""
    size = view.size
    medc = mediastinum_x(anat)
    win = view.window(medc - 0.02, medc + 0.15, anat.knob_y, anat.dome_y_left + 0.02)
    wall = medc + descending_aorta_reach(anat, win.y)
    band = soft_edge(wall - win.x, size, 2) * soft_edge(win.x - wall + 0.045, size, 4)
    view.add(win, 0.06 * band * view.body[win.rows, win.cols])


def _breasts(view: View, anat: Anatomy) -> None:
    """Breast shadows over the lower zones: a soft density with a sharp inferior margin."""
    size = view.size
    for side in LUNG_SIDES:
        if anat.breast_size <= 0 or anat.breast_absent == side:
            continue
        cx = anat.midline_x + SIGN[side] * 0.58 * anat.thorax_half_width
        cy = dome_y(anat, side) - 0.02
        rx, ry = 0.12 + 0.06 * anat.breast_size, 0.08 + 0.05 * anat.breast_size
        win = view.window(cx - rx, cx + rx, cy - ry, cy + ry)
        if win is not None:
            lower = np.clip((win.y - (cy - ry)) / (1.6 * ry), 0, 1)
            view.add(win, 0.22 * anat.breast_size * ellipse(win, cx, cy, rx, ry, size) * lower)


def _gastric_bubble(view: View, anat: Anatomy) -> None:
    """Gas in the gastric fundus under the left dome, with a flat fluid level."""
    if anat.gastric_bubble <= 0:
        return
    size = view.size
    cx = anat.midline_x + 0.5 * anat.thorax_half_width
    top = float(diaphragm_y(anat, "left", np.array(cx))) + 0.012
    rx, ry = 0.03 + 0.025 * anat.gastric_bubble, 0.018 + 0.012 * anat.gastric_bubble
    win = view.window(cx - rx, cx + rx, top, top + 2 * ry)
    if win is not None:
        bubble = ellipse(win, cx, top + ry, rx, ry, size) * soft_edge(top + 1.2 * ry - win.y, size)
        view.add(win, -0.4 * bubble * view.body[win.rows, win.cols])


def _frontal_airways(view: View, anat: Anatomy) -> None:
    """Trachea (a dark air column) and the main bronchi."""
    size = view.size
    carina_y = anat.knob_y + 0.055
    top_x = float(spine_centre(anat, np.array(0.05)))
    medc = mediastinum_x(anat)
    carina_x = 0.5 * (top_x + medc) - 0.004
    trachea = np.array([[top_x, 0.0], [0.5 * (top_x + carina_x) - 0.006, anat.knob_y], [carina_x, carina_y]])
    right = np.array([[carina_x, carina_y], [carina_x - 0.045, carina_y + 0.04], [carina_x - 0.065, carina_y + 0.075]])
    left = np.array([[carina_x, carina_y], [carina_x + 0.045, carina_y + 0.028], [carina_x + 0.075, carina_y + 0.06]])
    win = view.window(carina_x - 0.09, carina_x + 0.09, 0.0, carina_y + 0.09)
    if win is None:
        return
    air = soft_edge(0.014 - segment_distance(win, trachea), size, 2)
    bronchi = np.maximum(
        soft_edge(0.008 - segment_distance(win, right), size, 2),
        soft_edge(0.007 - segment_distance(win, left), size, 2),
    )
    fade = np.clip(win.y / 0.08, 0.3, 1)
    view.add(win, -0.22 * np.maximum(air, 0.7 * bronchi) * fade * view.body[win.rows, win.cols])


def _frontal_ribs(view: View, anat: Anatomy, rng: np.random.Generator) -> None:
    """Posterior ribs (arching bands) and fainter anterior ribs (descending toward the sternum);
    each rib a little different in density."""
    size = view.size
    axis = pixel_centres(size)
    y = axis[:, None]
    rib_density = rng.uniform(0.85, 1.15, (2, 13)).astype(np.float32)
    for side_index, side in enumerate(LUNG_SIDES):
        cols = np.flatnonzero(axis < anat.spine_x if side == "right" else axis >= anat.spine_x)
        part = slice(cols[0], cols[-1] + 1)
        x = axis[None, part]
        lateral = (x - anat.spine_x) * SIGN[side] / anat.thorax_half_width
        fade = soft_edge(lateral - 0.08, size, 5) * soft_edge(1.08 - lateral, size, 4)
        phase = (y + rib_rise(anat, lateral, y) - anat.rib_start_y) / anat.rib_spacing
        index, t = np.floor(phase), phase - np.floor(phase)
        thickness = (0.36 + 0.12 * np.clip(lateral, 0, 1)) * anat.rib_spacing
        posterior = cortical_band(t * anat.rib_spacing, thickness, size) * ((index >= 0) & (index < 12))
        posterior *= rib_density[side_index, np.clip(index, 0, 12).astype(int)]
        a_phase = (y - 0.2 * (1 - lateral) - anat.rib_start_y - 0.03) / (1.2 * anat.rib_spacing)
        a_index, a_t = np.floor(a_phase), a_phase - np.floor(a_phase)
        anterior = cortical_band(a_t * 1.2 * anat.rib_spacing, 0.45 * anat.rib_spacing, size)
        anterior *= (a_index >= 0) & (a_index < 6)
        anterior *= soft_edge(lateral - 0.4, size, 12)
        bone = (0.16 * posterior + 0.07 * anterior) * fade * anat.bone_density
        view.density[:, part] += bone * view.body[:, part]


def _frontal_spine(view: View, anat: Anatomy) -> None:
    """Vertebral bodies with end plates, pedicles and spinous processes, along the spine curve."""
    size = view.size
    half = anat.spine_half_width
    span = abs(anat.spine_curve) + half + 0.03
    win = view.window(anat.spine_x - span, anat.spine_x + span, 0.0, 1.0)
    dx = win.x - spine_centre(anat, win.y)
    phase = vertebra_phase(anat, win.y)
    t = phase - np.floor(phase)
    body = soft_edge(half - np.abs(dx), size)
    disc = soft_edge(t - 0.84, size * anat.vertebra_height, 0.04)
    endplate = np.exp(-(((t - 0.84) / 0.035) ** 2)) + np.exp(-((np.minimum(t, 1 - t) / 0.035) ** 2))
    cortex = np.exp(-(((np.abs(dx) - half) * size / 1.2) ** 2))
    ring = np.sqrt(((np.abs(dx) - 0.62 * half) / (0.2 * half)) ** 2 + ((t - 0.32) / 0.17) ** 2)
    pedicle = np.exp(-(((ring - 1) / 0.3) ** 2))
    spinous = np.exp(-((dx / (0.16 * half)) ** 2 + ((t - 0.62) / 0.18) ** 2))
    bone = body * (0.18 * (1 - 0.55 * disc) + 0.07 * endplate * (1 - disc)) + 0.09 * cortex * (1 - disc)
    bone += 0.09 * pedicle * body + 0.07 * spinous
    view.add(win, bone * anat.bone_density * view.body[win.rows, win.cols])


def _clavicles(view: View, anat: Anatomy) -> None:
    size = view.size
    for side in LUNG_SIDES:
        (x_med, y_med), (x_lat, y_lat) = clavicle_ends(anat, side)
        win = view.window(min(x_med, x_lat), max(x_med, x_lat), anat.clavicle_y - 0.07, anat.clavicle_y + 0.07)
        if win is None:
            continue
        t = (win.x - x_med) / (x_lat - x_med)
        centre = y_med + (y_lat - y_med) * t - 0.012 * np.sin(2 * np.pi * np.clip(t, 0, 1))
        half = 0.014 * (1.2 - 0.35 * t)
        length_px = abs(x_lat - x_med) * size
        band = cortical_band(win.y - centre + half, 2 * half, size) * np.clip(t * length_px / 2, 0, 1)
        band *= np.clip((1 - t) * length_px / 2, 0, 1)
        view.add(win, 0.42 * band * anat.bone_density)


def _shoulders(view: View, anat: Anatomy) -> None:
    """Humeral heads with the proximal shafts, and the scapulae's lateral borders."""
    size = view.size
    for side in LUNG_SIDES:
        sign = SIGN[side]
        cx, cy, r = humeral_head(anat, side)
        win = view.window(cx - r - 0.05, cx + r + 0.05, cy - r, cy + 4 * r)
        if win is not None:
            head = ellipse(win, cx, cy, r, r, size)
            shaft = soft_edge(0.6 * r - np.abs(win.x - cx - sign * 0.015), size) * soft_edge(win.y - cy, size)
            bone = np.maximum(head, 0.9 * shaft) * np.clip(view.body[win.rows, win.cols] * 4, 0, 1)
            view.add(win, 0.32 * bone * anat.bone_density)
        glenoid = (cx - sign * (r + 0.01), cy + 0.02)
        tip = (anat.midline_x + sign * (anat.thorax_half_width - 0.05), anat.apex_y + 0.3)
        border = np.array([glenoid, (0.5 * (glenoid[0] + tip[0]) + sign * 0.012, 0.5 * (glenoid[1] + tip[1])), tip])
        x0, x1 = sorted((glenoid[0], tip[0]))
        win = view.window(x0 - 0.03, x1 + 0.03, glenoid[1] - 0.02, tip[1] + 0.02)
        if win is not None:
            distance = segment_distance(win, border)
            view.add(win, 0.05 * soft_edge(0.01 - distance, size, 2) * anat.bone_density)
