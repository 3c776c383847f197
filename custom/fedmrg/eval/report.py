"""Scores of one run (``fedmrg score``) and a comparison of several runs (``fedmrg report``).

A scores file is ``{"n": N, "nlg": {metric: value}, "ce": {variant: {"precision", "recall",
"f1"}}, "ce_per_observation": {...}}`` plus ``"per_study"`` on request; METEOR is ``null`` when
Java was unavailable. Files written before the ``abnormal`` CE variant existed lack it and are
still read: their value for it is ``n/a``. The report is a markdown table with one row per
scores file and a grouped bar plot (PNG) beside it.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from fedmrg.errors import DataError
from fedmrg.eval.ce import VARIANTS, ce_from_texts
from fedmrg.eval.nlg import METRICS, nlg_scores
from fedmrg.io import load_json, write_json

# CE variants added after scores files were first written: an older file without one is read, the value is n/a.
LATER_VARIANTS = frozenset({"abnormal"})


def score_reports(
    predictions: Mapping[str, str],
    references: Mapping[str, str],
    dataset: str = "iu_xray",
    per_study: bool = False,
) -> dict[str, Any]:
    """NLG and CE scores of ``predictions`` against ``references`` (same ids), as written to scores.json."""
    nlg = nlg_scores(predictions, references, dataset=dataset, per_study=per_study)
    ce = ce_from_texts(predictions, references, dataset=dataset)
    scores: dict[str, Any] = {
        "n": len(predictions),
        "nlg": {metric: nlg[metric] for metric in METRICS},
        "ce": {variant: ce[variant] for variant in VARIANTS},
        "ce_per_observation": ce["per_observation"],
    }
    if per_study:
        scores["per_study"] = nlg["per_study"]
    return scores


def write_scores(path: str | os.PathLike, scores: Mapping[str, Any]) -> None:
    write_json(path, scores)


def _value(value: float | None, digits: int = 3) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


def format_scores(scores: Mapping[str, Any]) -> str:
    """A readable table of a scores dict: the NLG metrics, then P/R/F1 of each CE variant."""
    lines = [f"{scores['n']} studies", ""]
    lines += [f"  {metric:<10} {_value(scores['nlg'][metric], 4)}" for metric in METRICS]
    lines += ["", f"  {'CE':<10} {'precision':>9} {'recall':>9} {'f1':>9}"]
    for variant in VARIANTS:
        row = scores["ce"].get(variant, {})
        lines.append(
            f"  {variant:<10} " + " ".join(f"{_value(row.get(k), 4):>9}" for k in ("precision", "recall", "f1"))
        )
    return "\n".join(lines)


def read_scores(path: str | os.PathLike) -> dict[str, Any]:
    """A scores.json written by ``fedmrg score``; anything else is a DataError naming the file."""
    data = load_json(path)
    problem = _scores_problem(data)
    if problem:
        raise DataError(f"{path}: not a scores file from 'fedmrg score' ({problem})")
    return data


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _scores_problem(data: Any) -> str | None:
    if not isinstance(data, dict):
        return f"a {type(data).__name__}, expected an object"
    if not _is_number(data.get("n")):
        return "no 'n'"
    nlg, ce = data.get("nlg"), data.get("ce")
    if not isinstance(nlg, dict) or not all(
        _is_number(nlg.get(m)) or (m == "METEOR" and nlg.get(m) is None) for m in METRICS
    ):
        return f"'nlg' must hold {', '.join(METRICS)}"
    if not isinstance(ce, dict) or not all(
        isinstance(ce.get(v), dict) and _is_number(ce[v].get("f1"))
        for v in VARIANTS
        if v in ce or v not in LATER_VARIANTS
    ):
        return f"'ce' must hold {', '.join(VARIANTS)} with an 'f1'"
    return None


def result_label(path: str | os.PathLike) -> str:
    """A row's name: the file's stem, or its folder's name for ``.../NAME/scores.json``."""
    path = Path(path)
    return path.parent.resolve().name if path.stem == "scores" else path.stem


COLUMNS = (*METRICS, *(f"CE-F1 {variant}" for variant in VARIANTS))


def ce_f1(scores: Mapping[str, Any], variant: str) -> float | None:
    """The CE F1 of ``variant``; None where the scores predate it (see ``LATER_VARIANTS``)."""
    row = scores["ce"].get(variant) if variant in LATER_VARIANTS else scores["ce"][variant]
    return None if row is None else row["f1"]


def row_values(scores: Mapping[str, Any]) -> list[float | None]:
    """The values of ``COLUMNS``: the NLG metrics, then the CE F1 of each variant (None: n/a)."""
    return [*(scores["nlg"][m] for m in METRICS), *(ce_f1(scores, v) for v in VARIANTS)]


def markdown_table(results: Sequence[tuple[str, Mapping[str, Any]]]) -> str:
    """One row per (label, scores): n, the 7 NLG metrics and the CE-F1 variants, 3 decimals (n/a: none)."""
    header = ["result", "n", *COLUMNS]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * 2 + "---:|" * len(COLUMNS)]
    for label, scores in results:
        cells = [label, str(scores["n"]), *(_value(v) for v in row_values(scores))]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def plot_results(results: Sequence[tuple[str, Mapping[str, Any]]], path: str | os.PathLike) -> None:
    """A grouped bar plot: one group per metric, one bar per result (METEOR left out where n/a)."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(max(10.0, len(COLUMNS) * (0.5 + 0.25 * len(results))), 4.5))
    ax = fig.subplots()
    width = 0.8 / len(results)
    x = np.arange(len(COLUMNS))
    for k, (label, scores) in enumerate(results):
        heights = [np.nan if v is None else v for v in row_values(scores)]
        ax.bar(x - 0.4 + (k + 0.5) * width, heights, width, label=f"{label} (n={scores['n']})")
    ax.set_xticks(x, COLUMNS, rotation=30, ha="right")
    ax.set_ylabel("score")
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize="small")
    fig.tight_layout()
    fig.savefig(path, dpi=100)


def write_report(paths: Sequence[str | os.PathLike], out: str | os.PathLike) -> tuple[Path, Path]:
    """Write the markdown table to ``out`` and the plot beside it (same name, ``.png``)."""
    out = Path(out)
    png = out.with_suffix(".png")
    if png == out:
        raise DataError(f"{out}: the report is markdown; name it .md (the plot goes to {png.stem}.png)")
    results = [(result_label(path), read_scores(path)) for path in paths]
    out.parent.mkdir(parents=True, exist_ok=True)
    plot_results(results, png)
    text = f"# Evaluation report\n\n{markdown_table(results)}\n\n![scores]({png.name})\n"
    out.write_text(text, encoding="utf-8")
    return out, png
