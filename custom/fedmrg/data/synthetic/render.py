"""Synthetic chest radiographs (frontal PA and lateral) drawn from a study's findings: the entry point
:func:`render_study` and the tables that map each finding kind to its anatomy modifier and its painter."""

from __future__ import annotations

import dataclasses
import zlib
from collections.abc import Sequence

import numpy as np

from fedmrg.data.synthetic.anatomy import sample_anatomy
from fedmrg.data.synthetic.findings import FINDING_KINDS, Finding
from fedmrg.data.synthetic.frontal import frontal_view
from fedmrg.data.synthetic.lateral import lateral_view
from fedmrg.data.synthetic.painters import bones, chest_wall, devices, diaphragm, heart, lungs, pleura
from fedmrg.data.synthetic.scene import Modifier, Painter, Scene

# The picture is built as a projected *density* (a line integral of attenuation, one float per
# pixel) and shown as ``1 - exp(-density)``: air is dark, soft tissue grey, bone and metal bright, as
# radiographs are displayed. Acquisition effects (contrast curves, noise, detector blur) are left to
# :mod:`fedmrg.data.synthetic.acquisition`.
#
# Randomness: the patient's anatomy comes from ``np.random.default_rng(seed)`` (``sample_anatomy``),
# textures of each view and each finding from their own streams derived from the seed, so adding a
# finding never changes the patient or the other findings.
#
# Rendering has two steps per finding kind: a *modifier* changes the anatomy (cardiomegaly widens
# the heart, hyperinflation lowers and flattens the diaphragm, scoliosis bends the spine) and a
# *painter* adds density on the views (an effusion fills the base, a pacemaker adds metal).
# Lung findings replace the air of a lung (``fill_air``), so overlapping findings never make a
# lung denser than solid tissue. Kind ``"other"`` has neither and draws nothing.

_TEXTURE_STREAM, _FINDING_STREAM = 0x7E47, 0xF1D

# Finding kind -> the function that changes the anatomy before the views are drawn.
MODIFIERS: dict[str, Modifier] = {
    "hyperinflation": lungs.hyperinflate,
    "hypoinflation": lungs.hypoinflate,
    "volume_loss": lungs.lose_volume,
    "pneumonectomy": lungs.lose_volume,
    "cardiomegaly": heart.enlarge_heart,
    "pericardial_effusion": heart.enlarge_heart,
    "tortuous_aorta": heart.ectatic_aorta,
    "mediastinal_widening": heart.widen_mediastinum,
    "mediastinal_shift": heart.shift_mediastinum,
    "pulmonary_artery_enlargement": heart.enlarge_pulmonary_trunk,
    "elevated_hemidiaphragm": diaphragm.elevate_dome,
    "mastectomy": chest_wall.remove_breast,
    "pectus_excavatum": chest_wall.bow_sternum,
    "pectus_carinatum": chest_wall.bow_sternum,
    "osteopenia": bones.demineralise,
    "scoliosis": bones.bend_spine,
    "kyphosis": bones.round_back,
}

# Finding kind -> the function that adds its density to the views.
PAINTERS: dict[str, Painter] = {
    "pneumonectomy": lungs.paint_pneumonectomy,
    "opacity": lungs.paint_airspace,
    "consolidation": lungs.paint_airspace,
    "atelectasis": lungs.paint_atelectasis,
    "nodule": lungs.paint_nodule,
    "mass": lungs.paint_nodule,
    "nipple_shadow": lungs.paint_nodule,
    "calcified_granuloma": lungs.paint_granulomas,
    "granulomatous_disease": lungs.paint_granulomas,
    "calcified_lymph_nodes": lungs.paint_calcified_nodes,
    "cavity": lungs.paint_lucent_lesion,
    "bulla": lungs.paint_lucent_lesion,
    "edema": lungs.paint_edema,
    "interstitial_markings": lungs.paint_reticular,
    "fibrosis": lungs.paint_reticular,
    "scarring": lungs.paint_scarring,
    "bronchiectasis": lungs.paint_bronchiectasis,
    "azygos_fissure": lungs.paint_azygos_fissure,
    "pleural_effusion": pleura.paint_effusion,
    "pneumothorax": pleura.paint_pneumothorax,
    "pleural_thickening": pleura.paint_pleural_thickening,
    "hilar_adenopathy": heart.paint_hilar_enlargement,
    "pulmonary_artery_enlargement": heart.paint_hilar_enlargement,
    "epicardial_fat": heart.paint_epicardial_fat,
    "pneumomediastinum": heart.paint_pneumomediastinum,
    "hiatal_hernia": heart.paint_hiatal_hernia,
    "aortic_calcification": heart.paint_aortic_calcification,
    "subdiaphragmatic_air": diaphragm.paint_subdiaphragmatic_air,
    "abdominal_calcification": diaphragm.paint_abdominal_calcification,
    "contrast_media": diaphragm.paint_contrast,
    "pectus_excavatum": chest_wall.paint_pectus_excavatum,
    "subcutaneous_emphysema": chest_wall.paint_subcutaneous_emphysema,
    "spine_degenerative": bones.paint_spondylosis,
    "vertebral_deformity": bones.paint_vertebral_compression,
    "vertebral_fracture": bones.paint_vertebral_compression,
    "fracture": bones.paint_fracture,
    "sclerotic_bone_lesion": bones.paint_bone_lesion,
    "lytic_bone_lesion": bones.paint_bone_lesion,
    "shoulder_degenerative": bones.paint_shoulder,
    "shoulder_dislocation": bones.paint_shoulder,
    "central_catheter": devices.paint_catheter,
    "pacemaker": devices.paint_pacemaker,
    "sternotomy_wires": devices.paint_sternotomy,
    "surgical_clips": devices.paint_clips,
    "tube": devices.paint_tube,
    "stent": devices.paint_stent,
    "prosthetic_valve": devices.paint_stent,
    "spinal_fusion": devices.paint_spinal_fusion,
    "orthopedic_hardware": devices.paint_shoulder_prosthesis,
    "foreign_body": devices.paint_foreign_body,
    "ecg_leads": devices.paint_ecg_leads,
    "breast_implant": devices.paint_breast_implants,
}


def _display(density: np.ndarray) -> np.ndarray:
    return np.clip(1.0 - np.exp(-np.maximum(density, 0.0)), 0.0, 1.0).astype(np.float32)


def render_study(findings: Sequence[Finding], seed: int, size: int = 256, n_views: int = 2) -> list[np.ndarray]:
    """Render a study's views: ``[frontal PA, lateral][:n_views]``, float32 ``(size, size)`` in [0, 1].

    Deterministic for the same arguments; the patient's anatomy depends on ``seed`` only.
    """
    if n_views not in (1, 2):
        raise ValueError(f"n_views must be 1 or 2, got {n_views}")
    base = sample_anatomy(np.random.default_rng(seed))
    ordered = sorted(findings, key=lambda f: (FINDING_KINDS.index(f.kind), repr(f)))  # order-independent
    streams = _finding_streams(seed, ordered)
    anatomy = base
    for finding, stream in zip(ordered, streams):
        modifier = MODIFIERS.get(finding.kind)
        if modifier is not None:
            anatomy = modifier(anatomy, finding, np.random.default_rng([*stream, 0]))
    views = [frontal_view(anatomy, size, np.random.default_rng([seed, _TEXTURE_STREAM, 0]))]
    if n_views == 2:
        views.append(lateral_view(anatomy, size, np.random.default_rng([seed, _TEXTURE_STREAM, 1])))
    scene = Scene(anatomy, views)
    for finding, stream in zip(ordered, streams):
        painter = PAINTERS.get(finding.kind)
        if painter is not None:
            painter(scene, finding, np.random.default_rng([*stream, 1]))
    return [_display(view.density) for view in views]


def _finding_streams(seed: int, findings: Sequence[Finding]) -> list[list[int]]:
    """A seed sequence per finding that depends on the finding itself, not on the other findings."""
    seen: dict[Finding, int] = {}
    streams = []
    for finding in findings:
        repeat = seen.get(finding, 0)
        seen[finding] = repeat + 1
        key = zlib.crc32(repr(dataclasses.astuple(finding)).encode())
        streams.append([seed, _FINDING_STREAM, key, repeat])
    return streams
