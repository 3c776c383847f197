"""Report cleaning that gives the same text as R2Gen's cleaners (IU X-ray and MIMIC-CXR).

Published BLEU/METEOR/ROUGE-L/CIDEr numbers on these datasets are computed on text cleaned this
way, so we reproduce its behaviour exactly, quirks included, and pin it with tests:

- runs of ``..`` are halved a fixed number of times (3 passes for IU X-ray, 8 for MIMIC-CXR), so
  a run of more than 2**passes dots keeps a few;
- list numbering is removed by plain substring rules (``"1. "`` anywhere, so ``"21. "`` loses its
  ``"1. "`` too);
- sentences are split on ``". "``; inside a sentence the characters ``. , ? ; * ! % ^ & _ + ( )``,
  ``[ ] { }`` and everything from ``:`` to ``[`` in ASCII (``: ; < = > ? @`` and A-Z, already
  lower-cased) are deleted, so hyphens and digits survive ("x-xxxx", "t11");
- quotes, slashes and backslashes are deleted;
- empty sentences are kept (R2Gen's emptiness test never fires), which can yield ``" .  . "``;
- the result is the sentences joined by ``" . "`` plus a final ``" ."``.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Literal

#  The class deletes . , ? ; * ! % ^ & _ + ( ) [ ] { } and the ASCII range ':'..'['.
_SENTENCE_PUNCTUATION = re.compile(r"[.,?;*!%^&_+():-\[\]{}]")
_NUMBERING_RULES = (
    ("1. ", ""),
    (". 2. ", ". "),
    (". 3. ", ". "),
    (". 4. ", ". "),
    (". 5. ", ". "),
    (" 2. ", ". "),
    (" 3. ", ". "),
    (" 4. ", ". "),
    (" 5. ", ". "),
)


def _halve_runs(text: str, token: str, passes: int) -> str:
    """Replace ``token*2`` by ``token`` ``passes`` times (left to right, non-overlapping)."""
    for _ in range(passes):
        text = text.replace(token * 2, token)
    return text


def _strip_numbering(text: str) -> str:
    for old, new in _NUMBERING_RULES:
        text = text.replace(old, new)
    return text


def _clean_sentence(sentence: str) -> str:
    for char in ('"', "/", "\\", "'"):
        sentence = sentence.replace(char, "")
    return _SENTENCE_PUNCTUATION.sub("", sentence.strip().lower())


def _join_sentences(text: str) -> str:
    sentences = text.strip().lower().split(". ")
    return " . ".join(_clean_sentence(s) for s in sentences) + " ."


def clean_iu_xray(report: str) -> str:
    """Clean an IU X-ray report the way R2Gen does."""
    return _join_sentences(_strip_numbering(_halve_runs(report, ".", 3)))


def clean_mimic_cxr(report: str) -> str:
    """Clean a MIMIC-CXR report the way R2Gen does (newlines, underscores and spaces first)."""
    text = report.replace("\n", " ")
    text = _halve_runs(text, "_", 7)
    text = _halve_runs(text, " ", 6)
    text = _halve_runs(text, ".", 8)
    return _join_sentences(_strip_numbering(text))


CLEANERS: dict[str, Callable[[str], str]] = {"iu_xray": clean_iu_xray, "mimic_cxr": clean_mimic_cxr}


def clean_report(report: str, dataset: Literal["iu_xray", "mimic_cxr"] = "iu_xray") -> str:
    """Clean ``report`` with the rules of ``dataset`` (``iu_xray`` or ``mimic_cxr``)."""
    return CLEANERS[dataset](report)
