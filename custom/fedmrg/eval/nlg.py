"""Report-level NLG metrics with the COCO caption evaluation code, as R2Gen and R2GenGPT report them.

BLEU-1..4, METEOR, ROUGE-L and CIDEr come from pycocoevalcap's scorers, called the way R2Gen's
``compute_scores`` calls them: no PTB tokenizer, one hypothesis and one reference per study, as
``{id: [text]}``. Every text is first cleaned exactly like the training text
(:func:`fedmrg.data.cleaning.clean_report`) and its whitespace collapsed to single spaces, which is
what R2Gen's ``decode(encode(report))`` gives.

METEOR runs a Java process. Where ``java`` is missing or the JVM fails, METEOR is ``None``
(unavailable) and a warning says why; it is never reported as 0. The JVM takes seconds to load
METEOR's paraphrase tables, so one process serves every scoring of a Python process (a benchmark
scores dozens of splits) and is stopped at exit, or at once after an error.
"""

from __future__ import annotations

import atexit
import contextlib
import logging
import shutil
from collections.abc import Iterator, Mapping
from contextlib import contextmanager

from pycocoevalcap.bleu.bleu import Bleu
from pycocoevalcap.cider.cider import Cider
from pycocoevalcap.meteor.meteor import Meteor
from pycocoevalcap.rouge.rouge import Rouge

from fedmrg.data.cleaning import CLEANERS, clean_report
from fedmrg.eval.texts import check_nonempty, check_same_ids

log = logging.getLogger(__name__)

BLEU = ("BLEU-1", "BLEU-2", "BLEU-3", "BLEU-4")
METRICS = (*BLEU, "METEOR", "ROUGE-L", "CIDEr")

Texts = dict[str, list[str]]  # pycocoevalcap's input: id -> [text]


def prepare_text(text: str, dataset: str = "iu_xray") -> str:
    """The text a scorer sees: cleaned like the training text, then single-spaced."""
    return " ".join(clean_report(text, dataset).split())


def nlg_scores(
    predictions: Mapping[str, str],
    references: Mapping[str, str],
    dataset: str = "iu_xray",
    per_study: bool = False,
) -> dict:
    """Corpus-level BLEU-1..4, METEOR, ROUGE-L and CIDEr of ``predictions`` against ``references``.

    Both mappings go from study id to report text and must hold the same ids. METEOR is ``None``
    when Java is unavailable. With ``per_study``, ``"per_study"`` maps each id to its own scores
    (CIDEr per study still uses the document frequencies of the whole set).
    """
    if dataset not in CLEANERS:
        raise ValueError(f"unknown dataset '{dataset}' (expected one of {', '.join(CLEANERS)})")
    check_same_ids(predictions, references)
    check_nonempty(predictions, "predictions")
    check_nonempty(references, "references")
    ids = sorted(predictions)
    res = {key: [prepare_text(predictions[key], dataset)] for key in ids}
    gts = {key: [prepare_text(references[key], dataset)] for key in ids}
    corpus, studies = _coco_scores(gts, res)
    scores: dict = dict(corpus)
    if per_study:
        scores["per_study"] = {key: {metric: studies[metric][k] for metric in METRICS} for k, key in enumerate(ids)}
    return scores


def _coco_scores(gts: Texts, res: Texts) -> tuple[dict[str, float | None], dict[str, list[float | None]]]:
    """Corpus scores and per-study lists (in ``gts`` order) of every metric."""
    corpus: dict[str, float | None] = {}
    studies: dict[str, list[float | None]] = {}
    bleu, bleu_studies = Bleu(4).compute_score(gts, res, verbose=0)
    for n, name in enumerate(BLEU):
        corpus[name], studies[name] = float(bleu[n]), [float(v) for v in bleu_studies[n]]
    meteor = meteor_scores(gts, res)
    corpus["METEOR"], studies["METEOR"] = meteor if meteor is not None else (None, [None] * len(gts))
    for name, scorer in (("ROUGE-L", Rouge()), ("CIDEr", Cider())):
        score, per = scorer.compute_score(gts, res)
        corpus[name], studies[name] = float(score), [float(v) for v in per]
    return corpus, studies


class MeteorUnavailable(RuntimeError):
    """METEOR cannot be computed here (no Java, or the JVM failed)."""


class _Meteor(Meteor):
    """pycocoevalcap's METEOR scorer, closed by :func:`_meteor_scorer` instead of ``__del__``.

    The original ``__del__`` waits on a lock that a failed ``compute_score`` leaves held (so it
    would hang at garbage collection) and raises when the JVM never started.
    """

    def __del__(self) -> None:
        pass


_running: list[Meteor] = []  # the process-wide scorer, once started


@contextmanager
def _meteor_scorer() -> Iterator[Meteor]:
    """The shared METEOR scorer; after an error its Java process is stopped and reaped, and the next
    call starts a new one."""
    if shutil.which("java") is None:
        raise MeteorUnavailable("'java' is not on PATH (install Java 8 or later to compute METEOR)")
    if _running and _running[0].meteor_p.poll() is not None:  # the JVM died between two scorings
        _close(_running.pop())
    if not _running:
        try:
            _running.append(_Meteor())
        except OSError as exc:
            raise MeteorUnavailable(f"cannot start java ({exc})") from None
    scorer = _running[0]
    try:
        yield scorer
    except (OSError, ValueError) as exc:  # a dead JVM: broken pipe, or an empty line where a score was due
        _running.clear()
        _stop(scorer)
        reason = _last_line(scorer.meteor_p.stderr.read()) or f"{type(exc).__name__}: {exc}"
        _close(scorer)
        raise MeteorUnavailable(f"the METEOR JVM failed ({reason})") from None
    except BaseException:
        _running.clear()
        _close(scorer)
        raise


@atexit.register
def _close_shared_scorer() -> None:
    while _running:
        _close(_running.pop())


def _close(scorer: Meteor) -> None:
    _stop(scorer)
    for stream in (scorer.meteor_p.stdin, scorer.meteor_p.stdout, scorer.meteor_p.stderr):
        _close_quietly(stream)


def _stop(scorer: Meteor) -> None:
    scorer.meteor_p.kill()  # no-op once the process has been reaped
    scorer.meteor_p.wait()


def _close_quietly(stream) -> None:
    with contextlib.suppress(OSError):  # unflushed bytes for a process that is gone
        stream.close()


def _last_line(data: bytes) -> str:
    lines = [line.strip() for line in data.decode("utf-8", "replace").splitlines() if line.strip()]
    return lines[-1] if lines else ""


def _meteor_input(texts: Texts) -> Texts:
    """METEOR's stdin protocol separates fields with ``|||`` and records with newlines."""
    return {key: [" ".join(t.replace("|||", " ").split()) for t in values] for key, values in texts.items()}


def meteor_scores(gts: Texts, res: Texts) -> tuple[float, list[float]] | None:
    """pycocoevalcap's METEOR (corpus score, per-study scores), or ``None`` with a warning."""
    try:
        with _meteor_scorer() as scorer:
            score, scores = scorer.compute_score(_meteor_input(gts), _meteor_input(res))
    except MeteorUnavailable as exc:
        log.warning("METEOR unavailable: %s", exc)
        return None
    return float(score), [float(v) for v in scores]
