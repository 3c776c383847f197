"""NLG metrics: pycocoevalcap's scorers called R2Gen-style on cleaned text, METEOR without Java."""

from __future__ import annotations

import logging
import shutil
import stat

import pytest
from pycocoevalcap.bleu.bleu import Bleu
from pycocoevalcap.cider.cider import Cider
from pycocoevalcap.rouge.rouge import Rouge

from fedmrg.data.cleaning import clean_report
from fedmrg.errors import DataError
from fedmrg.eval import nlg
from fedmrg.eval.nlg import METRICS, nlg_scores

# Realistic IU X-ray style pairs (generated, reference): several sentences, "x-XXXX" anonymisation,
# list numbering, a newline, parentheses and a semicolon (all handled by the training cleaner).
PAIRS = {
    "CXR1": (
        "The heart is normal in size. The mediastinum is unremarkable. The lungs are clear.",
        "The cardiac silhouette and mediastinum size are within normal limits. There is no pulmonary edema. "
        "There is no focal consolidation. There are no XXXX of a pleural effusion. There is no evidence of "
        "pneumothorax.",
    ),
    "CXR2": (
        "Heart size is normal. No focal consolidation, pleural effusion or pneumothorax.",
        "Heart size normal. Lungs are clear. XXXX are normal. No pneumonia, effusions, edema, pneumothorax, "
        "adenopathy, nodules or masses.",
    ),
    "CXR3": (
        "1. Mild cardiomegaly. 2. Small bilateral pleural effusions. 3. No pneumothorax.",
        "1. Cardiomegaly with small bilateral pleural effusions. 2. Bibasilar atelectasis. 3. No pneumothorax.",
    ),
    "CXR4": (
        "Stable calcified granuloma in the right upper lobe. Otherwise the lungs are clear.",
        "Calcified granuloma in the right upper lobe is unchanged. The lungs are otherwise clear. Heart size is "
        "normal.",
    ),
    "CXR5": (
        "There are degenerative changes of the thoracic spine. Heart and lungs are normal.",
        "Degenerative changes of the thoracic spine. The heart is normal in size. The lungs are clear bilaterally.",
    ),
    "CXR6": (
        "Left lower lobe airspace disease, possibly pneumonia. No pleural effusion.",
        "Airspace opacity in the left lower lobe concerning for pneumonia. Small left pleural effusion. "
        "Heart size within normal limits.",
    ),
    "CXR7": (
        "Right-sided PICC line with tip in the SVC. No pneumothorax. Lungs are clear.",
        "Right PICC line tip projects over the cavoatrial junction. Lungs are clear. No pneumothorax or effusion.",
    ),
    "CXR8": (
        "Normal chest x-XXXX.",
        "The heart is normal in size. The mediastinum is unremarkable. The lungs are clear. Normal chest x-XXXX.",
    ),
    "CXR9": (
        "Hyperexpanded lungs consistent with COPD. No acute cardiopulmonary abnormality.",
        "The lungs are hyperexpanded with flattening of the diaphragms, consistent with emphysema. "
        "No focal airspace disease. Heart size is normal.",
    ),
    "CXR10": (
        "Interval increase in pulmonary vascular congestion and interstitial edema. Cardiomegaly (stable).",
        "Cardiomegaly. Increased interstitial markings compatible with mild edema; small effusions.\nNo pneumothorax.",
    ),
}
PRED = {key: pair[0] for key, pair in PAIRS.items()}
REF = {key: pair[1] for key, pair in PAIRS.items()}

# Measured once with pycocoevalcap 1.2 on PAIRS (a library change that moves them is caught here).
PINNED = {
    "BLEU-1": 0.3611842908156107,
    "BLEU-2": 0.2586731276843599,
    "BLEU-3": 0.19899859664684472,
    "BLEU-4": 0.15473885576123542,
    "ROUGE-L": 0.4459526967441129,
    "CIDEr": 1.468698896164736,
}


def _r2gen(texts: dict[str, str]) -> dict[str, list[str]]:
    """R2Gen's scorer input: cleaned like training text, single-spaced, {id: [text]}."""
    return {key: [" ".join(clean_report(text, "iu_xray").split())] for key, text in texts.items()}


@pytest.fixture(scope="module")
def scores():
    """Scores of PAIRS with per-study values (real METEOR where Java exists: one JVM for the module)."""
    return nlg_scores(PRED, REF, per_study=True)


@pytest.fixture
def no_java(tmp_path, monkeypatch):
    """A PATH on which there is no java."""
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    assert shutil.which("java") is None


def _fake_java(tmp_path, monkeypatch, body: str) -> None:
    """Put a shell script named java first on PATH (after stopping the real JVM an earlier scoring left)."""
    nlg._close_shared_scorer()
    folder = tmp_path / "fakebin"
    folder.mkdir()
    script = folder / "java"
    script.write_text("#!/bin/sh\n" + body + "\n")
    script.chmod(script.stat().st_mode | stat.S_IEXEC)
    monkeypatch.setenv("PATH", f"{folder}:/usr/bin:/bin")


def test_equals_pycocoevalcap_called_directly(scores):
    gts, res = _r2gen(REF), _r2gen(PRED)
    bleu, bleu_studies = Bleu(4).compute_score(gts, res, verbose=0)
    rouge, rouge_studies = Rouge().compute_score(gts, res)
    cider, cider_studies = Cider().compute_score(gts, res)
    expected = {
        "BLEU-1": bleu[0],
        "BLEU-2": bleu[1],
        "BLEU-3": bleu[2],
        "BLEU-4": bleu[3],
        "ROUGE-L": rouge,
        "CIDEr": cider,
    }
    for metric, value in expected.items():
        assert scores[metric] == pytest.approx(value, abs=1e-12), metric
    for k, key in enumerate(gts):
        study = scores["per_study"][key]
        assert study["BLEU-4"] == pytest.approx(bleu_studies[3][k], abs=1e-12)
        assert study["ROUGE-L"] == pytest.approx(rouge_studies[k], abs=1e-12)
        assert study["CIDEr"] == pytest.approx(cider_studies[k], abs=1e-12)


def test_pinned_values(scores):
    for metric, value in PINNED.items():
        assert scores[metric] == pytest.approx(value, abs=1e-12), metric
    assert all(isinstance(scores[m], float) for m in PINNED)


def test_texts_are_cleaned_and_single_spaced():
    # R2Gen's quirks stay: "1. " is dropped, " 2. " becomes ". " (an empty sentence), no split at ".\n".
    text = "1. Mild cardiomegaly.  2. Normal chest x-XXXX.\nNo effusion (small)."
    assert nlg.prepare_text(text) == "mild cardiomegaly . . normal chest x-xxxx no effusion small ."


@pytest.mark.skipif(shutil.which("java") is None, reason="no Java: METEOR cannot run here")
def test_meteor_equals_pycocoevalcaps_own_scorer_and_is_pinned(scores):
    """The shared JVM scores what a fresh pycocoevalcap Meteor() scores, corpus and per study; the
    corpus value is pinned (METEOR 1.5 as pycocoevalcap 1.2 ships it, on the R2Gen-cleaned texts)."""
    gts, res = _r2gen(REF), _r2gen(PRED)
    scorer = nlg._Meteor()  # pycocoevalcap's Meteor, whose __del__ (a lock and a wait) is left out
    try:
        corpus, studies = scorer.compute_score(gts, res)
    finally:
        nlg._close(scorer)
    assert scores["METEOR"] == pytest.approx(corpus, abs=1e-12)
    assert [scores["per_study"][key]["METEOR"] for key in gts] == pytest.approx(studies, abs=1e-12)
    assert scores["METEOR"] == pytest.approx(0.218323725452783, abs=1e-9)


@pytest.mark.skipif(shutil.which("java") is None, reason="no Java: METEOR cannot run here")
def test_one_jvm_serves_every_scoring_of_a_process_and_a_dead_one_is_replaced(monkeypatch):
    started = _record_scorers(monkeypatch)
    first, second = nlg_scores(PRED, REF), nlg_scores(PRED, REF)
    assert len(started) <= 1 and first["METEOR"] == second["METEOR"]  # none when an earlier test left one
    jvm = nlg._running[0].meteor_p
    jvm.kill()
    jvm.wait()
    assert nlg_scores(PRED, REF)["METEOR"] == first["METEOR"] and nlg._running[0].meteor_p is not jvm
    nlg._close_shared_scorer()
    assert not nlg._running and started and started[-1].meteor_p.returncode is not None


def test_meteor_without_java_is_none_with_a_warning(no_java, caplog):
    with caplog.at_level(logging.WARNING, logger="fedmrg.eval.nlg"):
        result = nlg_scores(PRED, REF, per_study=True)
    assert result["METEOR"] is None and result["per_study"]["CXR1"]["METEOR"] is None
    assert result["BLEU-4"] == pytest.approx(PINNED["BLEU-4"], abs=1e-12)
    assert "METEOR unavailable" in caplog.text and "java" in caplog.text


def test_meteor_when_the_jvm_fails(tmp_path, monkeypatch, caplog):
    _fake_java(tmp_path, monkeypatch, 'echo "Error: Could not create the Java Virtual Machine." >&2; exit 1')
    started = _record_scorers(monkeypatch)
    with caplog.at_level(logging.WARNING, logger="fedmrg.eval.nlg"):
        result = nlg_scores(PRED, REF)
    assert result["METEOR"] is None
    assert "Could not create the Java Virtual Machine" in caplog.text
    _assert_closed(started)


def test_meteor_process_is_closed_after_an_unexpected_error(tmp_path, monkeypatch):
    _fake_java(tmp_path, monkeypatch, "exec sleep 60")  # a JVM that never answers

    def fail(self, gts, res):
        raise RuntimeError("boom")

    started = _record_scorers(monkeypatch, compute_score=fail)
    with pytest.raises(RuntimeError, match="boom"):
        nlg_scores(PRED, REF)
    _assert_closed(started)


def _record_scorers(monkeypatch, **overrides) -> list:
    started = []

    class Recording(nlg._Meteor):
        def __init__(self):
            super().__init__()
            started.append(self)

    for name, method in overrides.items():
        setattr(Recording, name, method)
    monkeypatch.setattr(nlg, "_Meteor", Recording)
    return started


def _assert_closed(started: list) -> None:
    assert len(started) == 1
    process = started[0].meteor_p
    assert process.returncode is not None  # reaped: no zombie
    assert process.stdin.closed and process.stdout.closed and process.stderr.closed


def test_per_study_keys(scores):
    assert set(scores["per_study"]) == set(PAIRS)
    assert all(set(s) == set(METRICS) for s in scores["per_study"].values())
    assert set(scores) == {*METRICS, "per_study"}


def test_identical_reports_score_bleu_1(no_java):
    result = nlg_scores(REF, REF)
    for metric in ("BLEU-1", "BLEU-2", "BLEU-3", "BLEU-4", "ROUGE-L"):
        assert result[metric] == pytest.approx(1.0, abs=1e-6), metric
    assert "per_study" not in result


def test_ids_must_match():
    pred = {**{k: t for k, t in PRED.items() if k != "CXR3"}, "extra1": "No acute disease.", "extra2": "Clear."}
    with pytest.raises(DataError) as info:
        nlg_scores(pred, REF)
    message = str(info.value)
    assert "2 only in predictions ('extra1', 'extra2')" in message
    assert "1 only in references ('CXR3')" in message


def test_id_list_is_cut_at_five():
    pred = {f"p{k}": "Clear." for k in range(8)}
    with pytest.raises(DataError, match=r"8 only in predictions \('p0', 'p1', 'p2', 'p3', 'p4', \.\.\.\)"):
        nlg_scores(pred, {"r": "Clear."})


def test_empty_text_is_an_error():
    pred = {**PRED, "CXR2": "  \n ", "CXR5": ""}
    with pytest.raises(DataError, match=r"predictions: 2 empty reports: ids 'CXR2', 'CXR5'"):
        nlg_scores(pred, REF)


def test_no_reports_and_unknown_dataset():
    with pytest.raises(DataError, match="no reports"):
        nlg_scores({}, {})
    with pytest.raises(ValueError, match="unknown dataset"):
        nlg_scores(PRED, REF, dataset="chexpert")
