"""The 14 CheXpert observations, their label values and the check of a label matrix, shared by the
labeler, the diagnosis states and the CE metrics."""

from __future__ import annotations

import numpy as np

OBSERVATIONS: tuple[str, ...] = (
    "No Finding",
    "Enlarged Cardiomediastinum",
    "Cardiomegaly",
    "Lung Lesion",
    "Lung Opacity",
    "Edema",
    "Consolidation",
    "Pneumonia",
    "Atelectasis",
    "Pneumothorax",
    "Pleural Effusion",
    "Pleural Other",
    "Fracture",
    "Support Devices",
)
POSITIVE, NEGATIVE, UNCERTAIN = 1, 0, -1  # "not mentioned" is None (blank in CSV, NaN in arrays)
MICRO5: tuple[str, ...] = ("Atelectasis", "Cardiomegaly", "Consolidation", "Edema", "Pleural Effusion")
ABNORMAL: tuple[str, ...] = tuple(name for name in OBSERVATIONS if name != "No Finding")  # a normal report names none
ABNORMAL_COLUMNS: list[int] = [OBSERVATIONS.index(name) for name in ABNORMAL]


def label_array(labels: np.ndarray, name: str = "labels") -> np.ndarray:
    """A labeler matrix [N, 14] in ``OBSERVATIONS`` order (NaN / 1 / 0 / -1) as floats; any other
    shape is a ValueError naming ``name``."""
    labels = np.asarray(labels, dtype=float)
    if labels.ndim != 2 or labels.shape[1] != len(OBSERVATIONS):
        raise ValueError(f"{name}: expected a [N, {len(OBSERVATIONS)}] label matrix, got shape {labels.shape}")
    return labels
