"""The 14 CheXpert observations and their label values, shared by the labeler and the CE metrics."""

from __future__ import annotations

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
