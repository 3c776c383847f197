"""Clinical efficacy (CE): do the generated reports state the same findings as the references?

Both sides are labeled for the 14 CheXpert observations (1 positive, 0 negative, -1 uncertain,
NaN not mentioned) and binarised: positive iff the label is 1, so uncertain and not mentioned count
as negative, as R2Gen and PromptMRG do. Precision, recall and F1 then come in named variants:

- ``micro``: true/false positives and false negatives summed over every report and observation;
- ``macro``: P/R/F1 per observation, averaged over the 14 observations;
- ``example``: P/R/F1 per report, averaged over the reports (PromptMRG's example-based CE);
- ``micro5``: ``micro`` restricted to atelectasis, cardiomegaly, consolidation, edema and pleural
  effusion;
- ``abnormal``: ``micro`` restricted to the 13 findings, every observation but "No Finding". A
  report that calls every study normal has no positive finding, so it scores 0 here, however
  many studies are normal (on ``micro`` and ``example`` it gets credit for each "No Finding").

F1 is TP / (TP + (FP + FN) / 2), the harmonic mean of P and R. A ratio whose denominator is 0
(no predicted positives, no reference positives) is 0.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping

import numpy as np

from fedmrg.errors import DataError
from fedmrg.eval.nlg import prepare_text
from fedmrg.io import some
from fedmrg.labels.labeler import label_matrix
from fedmrg.labels.observations import ABNORMAL_COLUMNS, MICRO5, OBSERVATIONS, POSITIVE, label_array

log = logging.getLogger(__name__)

VARIANTS = ("micro", "macro", "example", "micro5", "abnormal")
_MICRO5_COLUMNS = [OBSERVATIONS.index(name) for name in MICRO5]


def _ratio(numerator: np.ndarray, denominator: np.ndarray) -> np.ndarray:
    """numerator / denominator, 0 where the denominator is 0."""
    numerator, denominator = np.asarray(numerator, float), np.asarray(denominator, float)
    return np.divide(numerator, denominator, out=np.zeros_like(numerator), where=denominator > 0)


def _prf(tp: np.ndarray, fp: np.ndarray, fn: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Precision, recall and F1 from counts (element-wise), 0 where undefined."""
    return _ratio(tp, tp + fp), _ratio(tp, tp + fn), _ratio(tp, tp + (fp + fn) / 2)


def _as_dict(precision, recall, f1) -> dict[str, float]:
    return {"precision": float(precision), "recall": float(recall), "f1": float(f1)}


def _counts(pred: np.ndarray, ref: np.ndarray, axis: int | None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """TP, FP, FN of boolean matrices, summed along ``axis`` (None: everything)."""
    return (pred & ref).sum(axis=axis), (pred & ~ref).sum(axis=axis), (~pred & ref).sum(axis=axis)


def _micro(pred: np.ndarray, ref: np.ndarray, columns: list[int] | None = None) -> dict[str, float]:
    """P/R/F1 of the counts summed over every report and the given columns (None: all 14)."""
    if columns is not None:
        pred, ref = pred[:, columns], ref[:, columns]
    return _as_dict(*_prf(*_counts(pred, ref, axis=None)))


def _positive(labels: np.ndarray, name: str) -> np.ndarray:
    return label_array(labels, name) == POSITIVE  # NaN == 1 is False: not mentioned counts as negative


def ce_scores(pred_labels: np.ndarray, ref_labels: np.ndarray) -> dict:
    """CE precision/recall/F1 per variant, plus ``per_observation`` with the reference ``support``.

    ``pred_labels`` and ``ref_labels`` are [N, 14] matrices in ``OBSERVATIONS`` order, row ``i`` of
    both describing the same study.
    """
    pred, ref = _positive(pred_labels, "pred_labels"), _positive(ref_labels, "ref_labels")
    if pred.shape != ref.shape:
        raise ValueError(f"pred_labels {pred.shape} and ref_labels {ref.shape} differ in shape")
    if not len(pred):
        raise ValueError("no reports to score")
    per_obs = _prf(*_counts(pred, ref, axis=0))
    per_report = _prf(*_counts(pred, ref, axis=1))
    scores = {
        "micro": _micro(pred, ref),
        "macro": _as_dict(*(values.mean() for values in per_obs)),
        "example": _as_dict(*(values.mean() for values in per_report)),
        "micro5": _micro(pred, ref, _MICRO5_COLUMNS),
        "abnormal": _micro(pred, ref, ABNORMAL_COLUMNS),
    }
    support = ref.sum(axis=0)
    scores["per_observation"] = {
        name: {**_as_dict(*(values[k] for values in per_obs)), "support": int(support[k])}
        for k, name in enumerate(OBSERVATIONS)
    }
    return scores


def ce_from_texts(predictions: Mapping[str, str], references: Mapping[str, str], dataset: str | None = None) -> dict:
    """Label both sides with the rule-based labeler and compute :func:`ce_scores` on their common ids.

    With ``dataset`` (``iu_xray`` or ``mimic_cxr``), both sides are first cleaned like the training
    text, as the NLG metrics see them, so that generated and reference reports reach the labeler
    in the same form.
    """

    ids = sorted(predictions.keys() & references.keys())
    if not ids:
        raise DataError("predictions and references have no id in common")
    dropped = (predictions.keys() | references.keys()) - set(ids)
    if dropped:
        log.warning("CE: %d ids present on one side only are left out (%s)", len(dropped), some(dropped))

    def texts(side: Mapping[str, str]) -> list[str]:
        return [side[key] if dataset is None else prepare_text(side[key], dataset) for key in ids]

    return ce_scores(label_matrix(texts(predictions)), label_matrix(texts(references)))
