"""How well the labeler agrees with NLM's MeSH coding of the IU X-ray reports.

NLM's indexers coded each IU X-ray report with MeSH major terms: an independent, if imperfect,
reference (it does not say "negative", coders differ, and a few terms mix observations). We map
MeSH terms to CheXpert observations (``MESH_REFERENCE``) and score the labeler's "present" calls
against them per observation.

The labeler was developed and calibrated only on the odd-numbered reports (``1.xml``, ``3.xml``,
...); the even-numbered ones are held out for judging it (``bench/labeler.py --reports even``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np

from fedmrg.data.iuxray import read_archive, report_number, resolve_reports_archive
from fedmrg.labels.labeler import label_matrix
from fedmrg.labels.observations import OBSERVATIONS, POSITIVE, UNCERTAIN

# observation -> MeSH major terms (lower-case, "head" or "head/qualifier...") that mean it is present.
# A term matches when it equals an entry or starts with the entry followed by "/".
# "No Finding" follows CheXpert's rule on the mapped terms: present when no other observation
# (Support Devices aside) is.
MESH_REFERENCE: dict[str, tuple[str, ...]] = {
    "Enlarged Cardiomediastinum": (
        "mediastinum/prominent",
        "mediastinum/widened",
        "mediastinum/enlarged",
        "mediastinum/lymph nodes/enlarged",
    ),
    "Cardiomegaly": ("cardiomegaly", "cardiac shadow/enlarged", "heart/enlarged"),
    "Lung Lesion": ("nodule", "mass", "cavitation"),
    "Lung Opacity": (
        "opacity",
        "airspace disease",
        "density",
        "infiltrate",
        "cicatrix/lung",
        "pulmonary fibrosis",
        "lung diseases, interstitial",
        "markings/lung/interstitial",
    ),
    "Edema": ("pulmonary edema", "pulmonary congestion", "heart failure"),
    "Consolidation": ("consolidation",),
    "Pneumonia": ("pneumonia",),
    "Atelectasis": ("pulmonary atelectasis",),
    "Pneumothorax": ("pneumothorax", "hydropneumothorax", "hemopneumothorax"),
    "Pleural Effusion": ("pleural effusion", "hydropneumothorax", "hemothorax"),
    "Pleural Other": ("thickening/pleura", "pleura"),
    "Fracture": ("fractures, bone",),
    "Support Devices": (
        "catheters, indwelling",
        "implanted medical device",
        "tube, inserted",
        "stents",
        "medical device",
    ),
}


def mesh_observations(terms: Sequence[str]) -> set[str]:
    """The observations that a report's MeSH major terms say are present."""
    found = set()
    for term in terms:
        term = " ".join(term.lower().split())
        for observation, entries in MESH_REFERENCE.items():
            if any(term == e or term.startswith(e + "/") for e in entries):
                found.add(observation)
    if not found - {"Support Devices"}:
        found.add("No Finding")
    return found


def iu_validation_set(parity: Literal["odd", "even"], archive=None) -> tuple[list[str], list[set[str]]]:
    """Text (FINDINGS + IMPRESSION, as the indexers read) and MeSH reference of the reports of one parity.

    Reports the indexers did not code ("No Indexing") have no reference and are left out.
    """
    reports, _ = read_archive(resolve_reports_archive(archive), progress=False)
    wanted = 1 if parity == "odd" else 0
    texts, references = [], []
    for report in reports:
        text = " ".join(t for t in (report.findings, report.impression) if t)
        indexed = not any(t.lower().startswith("no indexing") for t in report.mesh_major)
        if text and indexed and report_number(report.source_file) % 2 == wanted:
            texts.append(text)
            references.append(mesh_observations(report.mesh_major))
    return texts, references


@dataclass(frozen=True)
class Agreement:
    observation: str
    support: int  # reports whose MeSH terms say present
    predicted: int  # reports the labeler calls present
    precision: float
    recall: float
    f1: float


def agreement(texts: Sequence[str], references: Sequence[set[str]], count_uncertain: bool = True) -> list[Agreement]:
    """Per observation: the labeler's present calls (1, and -1 if ``count_uncertain``) vs MeSH."""
    labels = label_matrix(texts)
    present = (labels == POSITIVE) | ((labels == UNCERTAIN) & count_uncertain)
    rows = []
    for j, observation in enumerate(OBSERVATIONS):
        truth = np.array([observation in ref for ref in references])
        tp = int(np.sum(present[:, j] & truth))
        predicted, support = int(present[:, j].sum()), int(truth.sum())
        precision = tp / predicted if predicted else 0.0
        recall = tp / support if support else 0.0
        f1 = 2 * tp / (predicted + support) if predicted + support else 0.0
        rows.append(Agreement(observation, support, predicted, precision, recall, f1))
    return rows


def format_agreement(rows: Sequence[Agreement]) -> str:
    lines = [f"{'observation':<28}{'MeSH':>6}{'called':>8}{'prec':>7}{'recall':>8}{'F1':>7}"]
    for r in rows:
        lines.append(
            f"{r.observation:<28}{r.support:>6}{r.predicted:>8}{r.precision:>7.3f}{r.recall:>8.3f}{r.f1:>7.3f}"
        )
    return "\n".join(lines)
