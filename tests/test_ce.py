"""Clinical efficacy variants on small label matrices whose scores are worked out by hand."""

from __future__ import annotations

import numpy as np
import pytest

from fedmrg.errors import DataError
from fedmrg.eval import ce
from fedmrg.eval.ce import ce_from_texts, ce_scores
from fedmrg.labels.observations import ABNORMAL, MICRO5, OBSERVATIONS

COL = {name: k for k, name in enumerate(OBSERVATIONS)}


def labels(*rows: dict[str, float]) -> np.ndarray:
    """A [len(rows), 14] matrix, NaN (not mentioned) except the given observations."""
    matrix = np.full((len(rows), len(OBSERVATIONS)), np.nan, dtype=np.float32)
    for i, row in enumerate(rows):
        for name, value in row.items():
            matrix[i, COL[name]] = value
    return matrix


def prf(scores: dict) -> tuple[float, float, float]:
    return scores["precision"], scores["recall"], scores["f1"]


# Two reports. Report 0: predicted Cardiomegaly, Edema; reference Cardiomegaly, Pleural Effusion.
# Report 1: predicted Atelectasis, Fracture, Support Devices; reference Atelectasis.
PRED = labels({"Cardiomegaly": 1, "Edema": 1}, {"Atelectasis": 1, "Fracture": 1, "Support Devices": 1})
REF = labels({"Cardiomegaly": 1, "Pleural Effusion": 1}, {"Atelectasis": 1})


def test_micro():
    # TP: Cardiomegaly(0), Atelectasis(1) = 2; FP: Edema(0), Fracture(1), Support Devices(1) = 3;
    # FN: Pleural Effusion(0) = 1.  P = 2/5, R = 2/3, F1 = 2 / (2 + (3+1)/2) = 1/2.
    assert prf(ce_scores(PRED, REF)["micro"]) == pytest.approx((0.4, 2 / 3, 0.5))


def test_macro():
    # Per observation: Cardiomegaly and Atelectasis P=R=F1=1; Edema, Fracture, Support Devices
    # (FP only) and Pleural Effusion (FN only) all 0; the other 8 have no positive anywhere: 0.
    # Mean over 14: P = R = F1 = 2/14.
    assert prf(ce_scores(PRED, REF)["macro"]) == pytest.approx((2 / 14, 2 / 14, 2 / 14))


def test_example():
    # Report 0: TP 1, FP 1, FN 1 -> P 1/2, R 1/2, F1 1/2.
    # Report 1: TP 1, FP 2, FN 0 -> P 1/3, R 1,   F1 1 / (1 + 1) = 1/2.
    # Mean: P = (1/2 + 1/3)/2 = 5/12, R = 3/4, F1 = 1/2.
    assert prf(ce_scores(PRED, REF)["example"]) == pytest.approx((5 / 12, 3 / 4, 0.5))


def test_micro5_ignores_the_other_columns():
    # Over Atelectasis, Cardiomegaly, Consolidation, Edema, Pleural Effusion only:
    # TP: Cardiomegaly, Atelectasis = 2; FP: Edema = 1; FN: Pleural Effusion = 1 (Fracture and
    # Support Devices do not count). P = 2/3, R = 2/3, F1 = 2 / (2 + 1) = 2/3.
    assert prf(ce_scores(PRED, REF)["micro5"]) == pytest.approx((2 / 3, 2 / 3, 2 / 3))
    # Anything outside the five changes nothing.
    noisy = PRED.copy()
    others = [COL[name] for name in OBSERVATIONS if name not in MICRO5]
    noisy[:, others] = 1
    assert ce_scores(noisy, REF)["micro5"] == ce_scores(PRED, REF)["micro5"]


def test_abnormal_is_micro_without_no_finding():
    # Four reports (predicted / reference):
    #   0: No Finding / No Finding;  1: No Finding / Cardiomegaly;
    #   2: Cardiomegaly, Fracture / Cardiomegaly;  3: Pleural Effusion / No Finding.
    pred = labels({"No Finding": 1}, {"No Finding": 1}, {"Cardiomegaly": 1, "Fracture": 1}, {"Pleural Effusion": 1})
    ref = labels({"No Finding": 1}, {"Cardiomegaly": 1}, {"Cardiomegaly": 1}, {"No Finding": 1})
    scores = ce_scores(pred, ref)
    # Abnormal (13 findings): TP Cardiomegaly(2) = 1; FP Fracture(2), Pleural Effusion(3) = 2;
    # FN Cardiomegaly(1) = 1.  P = 1/3, R = 1/2, F1 = 1 / (1 + 3/2) = 2/5.
    assert prf(scores["abnormal"]) == pytest.approx((1 / 3, 1 / 2, 2 / 5))
    # Micro adds No Finding: TP (0), FP (1), FN (3) -> TP 2, FP 3, FN 2: P = 2/5, R = 1/2, F1 = 2 / 4.5 = 4/9.
    assert prf(scores["micro"]) == pytest.approx((2 / 5, 1 / 2, 4 / 9))
    assert len(ABNORMAL) == 13 and "No Finding" not in ABNORMAL


NORMAL = "the heart is normal. the lungs are clear. no pleural effusion or pneumothorax."


def test_a_normal_report_copied_to_every_study_scores_0_on_abnormal():
    references = {
        "normal-1": "heart size is normal. no acute cardiopulmonary abnormality.",
        "normal-2": "the lungs are clear. no pneumothorax.",
        "effusion": "the heart is enlarged. small left pleural effusion.",
        "edema": "there is mild pulmonary edema. no pneumothorax.",
    }
    scores = ce_from_texts(dict.fromkeys(references, NORMAL), references, dataset="iu_xray")
    assert prf(scores["abnormal"]) == (0.0, 0.0, 0.0)
    # "No Finding" is right on the two normal studies: micro and example give it credit.
    assert scores["micro"]["f1"] > 0 and scores["example"]["f1"] > 0
    assert scores["per_observation"]["No Finding"]["support"] == 2


def test_uncertain_and_blank_count_as_negative():
    # The predicted -1, 0 and NaN are all "not positive"; the reference -1 is not positive either.
    # Only Edema is positive on both sides: TP 1, FP 0, FN 0 -> every variant P = R = F1 = 1 (micro).
    pred = labels({"Edema": 1, "Cardiomegaly": -1, "Atelectasis": 0, "Pneumonia": -1})
    ref = labels({"Edema": 1, "Cardiomegaly": 0, "Pneumonia": -1, "Lung Opacity": -1})
    scores = ce_scores(pred, ref)
    assert prf(scores["micro"]) == (1.0, 1.0, 1.0)
    assert prf(scores["example"]) == (1.0, 1.0, 1.0)
    # Macro: only Edema has P=R=F1=1; the 13 others have no positive on either side: 0 -> 1/14.
    assert prf(scores["macro"]) == pytest.approx((1 / 14, 1 / 14, 1 / 14))
    assert scores["per_observation"]["Pneumonia"] == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 0}


def test_zero_division_is_zero():
    # Nothing positive anywhere: every denominator is 0, every score 0 (not NaN, no warning).
    empty = labels({}, {"Edema": 0})
    with np.errstate(all="raise"):
        scores = ce_scores(empty, empty)
    for variant in ce.VARIANTS:
        assert prf(scores[variant]) == (0.0, 0.0, 0.0)
    # Predicted positives but no reference positive: P = 0/1 = 0, R undefined -> 0, F1 = 0/(0+1/2) = 0.
    scores = ce_scores(labels({"Edema": 1}), labels({}))
    assert prf(scores["micro"]) == (0.0, 0.0, 0.0)


def test_per_observation_support():
    scores = ce_scores(PRED, REF)["per_observation"]
    assert list(scores) == list(OBSERVATIONS)
    assert scores["Cardiomegaly"] == {"precision": 1.0, "recall": 1.0, "f1": 1.0, "support": 1}
    assert scores["Edema"] == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 0}
    assert scores["Pleural Effusion"]["support"] == 1
    assert all(isinstance(v, float) for s in scores.values() for k, v in s.items() if k != "support")


def test_bad_shapes():
    with pytest.raises(ValueError, match="14"):
        ce_scores(np.zeros((2, 5)), np.zeros((2, 5)))
    with pytest.raises(ValueError, match="differ"):
        ce_scores(PRED, REF[:1])
    with pytest.raises(ValueError, match="no reports"):
        ce_scores(PRED[:0], REF[:0])


def _fake_label_matrix(texts):
    """Positive for each observation whose name appears in the text, else blank."""
    return labels(*({name: 1 for name in OBSERVATIONS if name.lower() in text.lower()} for text in texts))


def test_ce_from_texts_aligns_sorted_common_ids(monkeypatch, caplog):

    monkeypatch.setattr(ce, "label_matrix", _fake_label_matrix)
    pred = {"b": "Edema.", "a": "Cardiomegaly.", "only-pred": "Edema."}
    ref = {"a": "Cardiomegaly.", "b": "Atelectasis.", "only-ref": "Fracture."}
    scores = ce_from_texts(pred, ref)
    # a: TP Cardiomegaly; b: FP Edema, FN Atelectasis -> micro P 1/2, R 1/2, F1 1/2.
    assert prf(scores["micro"]) == pytest.approx((0.5, 0.5, 0.5))
    assert "2 ids present on one side only" in caplog.text
    with pytest.raises(DataError, match="no id in common"):
        ce_from_texts({"x": "Edema."}, {"y": "Edema."})


def test_ce_from_texts_cleans_both_sides_for_a_dataset(monkeypatch):

    seen = []
    monkeypatch.setattr(ce, "label_matrix", lambda texts: seen.extend(texts) or _fake_label_matrix(texts))
    ce_from_texts({"a": "1. Edema (mild)."}, {"a": "Edema, mild."}, dataset="iu_xray")
    assert seen == ["edema mild .", "edema mild ."]
