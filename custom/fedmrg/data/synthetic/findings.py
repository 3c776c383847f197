"""The finding vocabulary: :class:`Finding`, every kind the renderer draws with its coarse category,
the lung regions and the severity levels."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass


@dataclass(frozen=True)
class Finding:
    """One radiographic finding. ``side`` is the patient's side; ``region`` a lung zone."""

    kind: str  # one of FINDING_KINDS
    side: str | None  # "left" | "right" | "bilateral" | None
    region: str | None  # see REGIONS, or None
    severity: float  # 0..1: 0.3 mild/small, 0.6 default/moderate, 0.9 severe/large
    qualifiers: tuple[str, ...]  # the raw lower-cased qualifiers of the MeSH term


CATEGORIES: tuple[str, ...] = (
    "normal",
    "cardiomegaly",
    "effusion",
    "opacity",
    "atelectasis",
    "nodule",
    "hyperinflation",
    "edema",
    "pneumothorax",
    "device",
    "fracture",
    "spine",
    "aorta",
    "scarring",
    "other",
)

# Every kind the renderer knows, in the order it paints them (parenchyma first, hardware last),
# with its coarse category.
KIND_CATEGORY: dict[str, str] = {
    # lung volume and parenchyma
    "hyperinflation": "hyperinflation",
    "hypoinflation": "other",
    "bulla": "hyperinflation",
    "edema": "edema",
    "interstitial_markings": "scarring",
    "fibrosis": "scarring",
    "bronchiectasis": "scarring",
    "opacity": "opacity",
    "consolidation": "opacity",
    "atelectasis": "atelectasis",
    "volume_loss": "atelectasis",
    "scarring": "scarring",
    "nodule": "nodule",
    "mass": "nodule",
    "cavity": "nodule",
    "calcified_granuloma": "nodule",
    "granulomatous_disease": "nodule",
    "calcified_lymph_nodes": "nodule",
    "azygos_fissure": "other",
    # pleura
    "pleural_effusion": "effusion",
    "pleural_thickening": "scarring",
    "pneumothorax": "pneumothorax",
    # heart, mediastinum, aorta
    "cardiomegaly": "cardiomegaly",
    "pericardial_effusion": "cardiomegaly",
    "epicardial_fat": "other",
    "hilar_adenopathy": "other",
    "pulmonary_artery_enlargement": "other",
    "mediastinal_widening": "other",
    "mediastinal_shift": "other",
    "pneumomediastinum": "other",
    "hiatal_hernia": "other",
    "tortuous_aorta": "aorta",
    "aortic_calcification": "aorta",
    # diaphragm and upper abdomen
    "elevated_hemidiaphragm": "other",
    "subdiaphragmatic_air": "other",
    "abdominal_calcification": "other",
    "contrast_media": "other",
    # chest wall and soft tissue
    "pneumonectomy": "other",
    "mastectomy": "other",
    "nipple_shadow": "other",
    "pectus_excavatum": "other",
    "pectus_carinatum": "other",
    "subcutaneous_emphysema": "other",
    # bones
    "osteopenia": "other",
    "scoliosis": "spine",
    "kyphosis": "spine",
    "spine_degenerative": "spine",
    "vertebral_deformity": "spine",
    "vertebral_fracture": "fracture",
    "fracture": "fracture",
    "sclerotic_bone_lesion": "other",
    "lytic_bone_lesion": "other",
    "shoulder_degenerative": "other",
    "shoulder_dislocation": "other",
    # devices
    "breast_implant": "device",
    "stent": "device",
    "prosthetic_valve": "device",
    "spinal_fusion": "device",
    "orthopedic_hardware": "device",
    "surgical_clips": "device",
    "sternotomy_wires": "device",
    "central_catheter": "device",
    "tube": "device",
    "pacemaker": "device",
    "ecg_leads": "device",
    "foreign_body": "device",
    # coded but not drawn
    "other": "other",
}
FINDING_KINDS: tuple[str, ...] = tuple(KIND_CATEGORY)

REGIONS: tuple[str, ...] = (
    "apex",
    "upper",
    "middle",
    "lower",
    "base",
    "hilum",
    "retrocardiac",
    "lingula",
    "paratracheal",
)

MILD, DEFAULT_SEVERITY, SEVERE = 0.3, 0.6, 0.9


def finding_categories(findings: Iterable[Finding]) -> list[str]:
    """Coarse categories of ``findings`` in CATEGORIES order; ``["normal"]`` when there are none."""
    present = {KIND_CATEGORY[f.kind] for f in findings}
    return [c for c in CATEGORIES if c in present] or ["normal"]
