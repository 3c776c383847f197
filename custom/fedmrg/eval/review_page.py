"""``fedmrg review-page``: one static HTML file for a radiologist to review generated reports.

For each study of a split that has a prediction, the page shows every view (a PNG thumbnail
embedded as base64, so the page is a single file that opens anywhere, offline), the reference and
the generated report, and how the rule-based labeler reads each of them for the 14 CheXpert
observations (positive / negative / uncertain / not mentioned). Agreement is judged as CE judges
it, positive iff the label is 1: a finding positive in both reports, *missed* (in the reference
only) or *extra* (in the generated report only). The header gives the split, the counts and the CE
scores of the whole prediction set (:func:`fedmrg.eval.ce.ce_scores` of those labels, every variant
it returns).

Studies whose reference has a positive finding come first, and within each group those with the
most missed findings, then the most extra findings: the cases a reviewer most needs to see are at
the top, and ``limit`` keeps the first of them. Images are decoded by
:func:`fedmrg.data.images.load_image`, so 8/16-bit PNGs and DICOMs (MONOCHROME1 included) look as
the model sees them; a view that cannot be read is shown as a box with the reason.
"""

from __future__ import annotations

import base64
import html
import io
import logging
import math
import os
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from fedmrg.data.annotation import SPLITS, Annotation, read_annotation
from fedmrg.data.images import load_image
from fedmrg.errors import DataError
from fedmrg.eval.ce import ce_scores
from fedmrg.eval.nlg import prepare_text
from fedmrg.eval.texts import check_nonempty, read_id_texts
from fedmrg.io import atomic_write, some
from fedmrg.labels.labeler import label_matrix
from fedmrg.labels.observations import NEGATIVE, OBSERVATIONS, POSITIVE, UNCERTAIN

log = logging.getLogger(__name__)

THUMBNAIL_PX = 256
DEFAULT_LIMIT = 50
# Observations that make a reference "abnormal": all but No Finding and Support Devices (a device is
# not a finding of the patient, as the labeler's own No Finding rule has it).
_NOT_ABNORMAL = ("No Finding", "Support Devices")
_ABNORMAL_COLUMNS = [k for k, name in enumerate(OBSERVATIONS) if name not in _NOT_ABNORMAL]
_STATUS = {POSITIVE: "positive", NEGATIVE: "negative", UNCERTAIN: "uncertain"}
_STATUS_CLASS = {"positive": "positive", "negative": "negative", "uncertain": "uncertain", "not mentioned": "absent"}
_AGREEMENT = {"both": "in both", "missed": "missed", "extra": "extra"}
ORDER_TEXT = (
    "studies whose reference has a positive finding first; within each group, most missed findings "
    "first, then most extra findings, then by id"
)


@dataclass
class Study:
    """One study of the page: its texts, its views and both reports' labels ([14], NaN = not mentioned)."""

    id: str
    reference: str
    generated: str
    image_paths: list[Path]
    ref_labels: np.ndarray
    gen_labels: np.ndarray
    views: list[str] = field(default_factory=list)  # HTML of each view, filled for shown studies only

    def agreement(self, k: int) -> str | None:
        """``both``, ``missed``, ``extra`` or None for observation ``k`` (positive iff label 1)."""
        ref, gen = self.ref_labels[k] == POSITIVE, self.gen_labels[k] == POSITIVE
        if ref and gen:
            return "both"
        return "missed" if ref else "extra" if gen else None

    def names(self, kind: str) -> list[str]:
        return [name for k, name in enumerate(OBSERVATIONS) if self.agreement(k) == kind]

    @property
    def abnormal(self) -> bool:
        return bool((self.ref_labels[_ABNORMAL_COLUMNS] == POSITIVE).any())


@dataclass
class ReviewPage:
    """What :func:`write_review_page` wrote: the file, studies shown of those predicted, unreadable views."""

    path: Path
    shown: int
    total: int
    unreadable_views: int


# ------------------------------------------------------------------------------------------ inputs


def annotation_path(data: str | os.PathLike) -> Path:
    """The annotation.json of a site or split folder (or the file itself)."""
    data = Path(data)
    if data.is_file():
        return data
    if not data.is_dir():
        raise DataError(f"{data}: folder not found (expected a site or split folder with annotation.json)")
    path = data / "annotation.json"
    if path.is_file():
        return path
    inner = sorted(p.name for p in data.iterdir() if (p / "annotation.json").is_file())
    hint = f"; its folders {', '.join(inner[:5])} have one: pass one of them" if inner else ""
    raise DataError(f"{data}: no annotation.json (expected a site or split folder in the R2Gen layout){hint}")


def _check_ids(
    predictions: Mapping[str, str], annotation: Annotation, split: str, pred_path: str | os.PathLike
) -> None:
    rows = {row["id"] for row in annotation.rows(split)}
    unknown = predictions.keys() - rows
    if not unknown:
        return
    elsewhere = sorted({s for s in SPLITS if s != split and unknown & {r["id"] for r in annotation.rows(s)}})
    hint = f"; some are in the {'/'.join(elsewhere)} split (see --split)" if elsewhere else ""
    raise DataError(
        f"{pred_path}: {len(unknown)} ids not in the '{split}' split of {annotation.path}: {some(unknown)}{hint}"
    )


def read_studies(
    pred_path: str | os.PathLike, data: str | os.PathLike, split: str = "test", dataset: str = "iu_xray"
) -> tuple[list[Study], int, Path]:
    """The predicted studies of ``split`` with their labels, the split's size and the annotation file.
    Labels are read from the texts as CE reads them (cleaned for ``dataset``)."""
    predictions = read_id_texts(pred_path)
    if not predictions:
        raise DataError(f"{pred_path}: no predictions (an empty JSON object)")
    check_nonempty(predictions, str(pred_path))
    annotation = read_annotation(annotation_path(data), check_images=False)  # unreadable views are shown as such
    _check_ids(predictions, annotation, split, pred_path)
    rows = {row["id"]: row for row in annotation.rows(split) if row["id"] in predictions}
    ids = sorted(rows, key=_natural_key)
    references = {key: rows[key]["report"] for key in ids}
    check_nonempty(references, str(annotation.path))
    ref_labels = label_matrix([prepare_text(references[key], dataset) for key in ids])
    gen_labels = label_matrix([prepare_text(predictions[key], dataset) for key in ids])
    studies = [
        Study(
            id=key,
            reference=references[key],
            generated=predictions[key],
            image_paths=[annotation.image_root / p for p in rows[key]["image_path"]],
            ref_labels=ref_labels[i],
            gen_labels=gen_labels[i],
        )
        for i, key in enumerate(ids)
    ]
    return studies, len(annotation.rows(split)), annotation.path


def _natural_key(text: str) -> list[int | str]:
    """``SYN6`` before ``SYN17``: digit runs compare as numbers (they sit at odd positions)."""
    return [int(part) if k % 2 else part.lower() for k, part in enumerate(re.split(r"(\d+)", text))]


def review_order(studies: Iterable[Study]) -> list[Study]:
    """Abnormal references first; then most missed, most extra findings; then by id."""
    return sorted(
        studies,
        key=lambda s: (not s.abnormal, -len(s.names("missed")), -len(s.names("extra")), _natural_key(s.id)),
    )


# ------------------------------------------------------------------------------------------ images


def thumbnail_uri(path: str | os.PathLike, size: int = THUMBNAIL_PX) -> str:
    """A ``data:image/png;base64,...`` URI of the image, at most ``size`` px on its longer side."""
    from PIL import Image

    pixels = np.rint(np.clip(load_image(path), 0.0, 1.0) * 255.0).astype(np.uint8)
    image = Image.fromarray(pixels)  # uint8 H x W: 8-bit grey
    image.thumbnail((size, size), Image.Resampling.LANCZOS)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", optimize=True)
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def _view_html(study: Study, index: int, path: Path) -> tuple[str, bool]:
    """A view's ``<figure>`` and whether it could be read."""
    caption = f"view {index + 1}: {path.name}"
    try:
        image = f'<img src="{thumbnail_uri(path)}" alt="{_e(study.id)} {_e(caption)}">'
        readable = True
    except DataError as exc:
        log.warning("review page: study %s: %s", study.id, exc)
        image = f'<div class="noimg">cannot show this view: {_e(exc)}</div>'
        readable = False
    return f"<figure>{image}<figcaption>{_e(caption)}</figcaption></figure>", readable


# ------------------------------------------------------------------------------------------ HTML


def _e(value: object) -> str:
    return html.escape(str(value), quote=True)


def _status(value: float) -> str:
    return "not mentioned" if math.isnan(value) else _STATUS[int(value)]


def _status_cell(value: float) -> str:
    """A label cell; not mentioned is a dash (the legend says so), to keep the table narrow."""
    status = _status(value)
    shown = "\u2013" if status == "not mentioned" else status
    return f'<td class="{_STATUS_CLASS[status]}" title="{status}">{shown}</td>'


def _scores_html(ce: Mapping[str, object]) -> str:
    """Every CE variant the dict holds (a dict with precision/recall/f1), in its own order."""
    rows = [
        f"<tr><td>{_e(name)}</td>"
        + "".join(f"<td>{values[k]:.3f}</td>" for k in ("precision", "recall", "f1"))
        + "</tr>"
        for name, values in ce.items()
        if isinstance(values, Mapping) and all(k in values for k in ("precision", "recall", "f1"))
    ]
    head = "<tr><th>CE variant</th><th>precision</th><th>recall</th><th>F1</th></tr>"
    return f'<table class="scores">{head}{"".join(rows)}</table>'


def _per_observation_html(ce: Mapping[str, object]) -> str:
    per_obs = ce.get("per_observation")
    if not isinstance(per_obs, Mapping):
        return ""
    rows = "".join(
        f"<tr><td>{_e(name)}</td><td>{v['precision']:.3f}</td><td>{v['recall']:.3f}</td>"
        f"<td>{v['f1']:.3f}</td><td>{v.get('support', '')}</td></tr>"
        for name, v in per_obs.items()
    )
    head = "<tr><th>observation</th><th>precision</th><th>recall</th><th>F1</th><th>reference positives</th></tr>"
    return f'<details><summary>CE per observation</summary><table class="scores">{head}{rows}</table></details>'


def _findings_html(study: Study) -> str:
    rows = []
    for k, name in enumerate(OBSERVATIONS):
        ref, gen, agreement = study.ref_labels[k], study.gen_labels[k], study.agreement(k)
        quiet = math.isnan(ref) and math.isnan(gen)
        mark = f'<span class="mark {agreement}">{_AGREEMENT[agreement]}</span>' if agreement else ""
        rows.append(
            f"<tr{' class=quiet' if quiet else ''}><td>{_e(name)}</td>"
            f"{_status_cell(ref)}{_status_cell(gen)}<td>{mark}</td></tr>"
        )
    head = "<tr><th>observation</th><th>reference</th><th>generated</th><th>agreement</th></tr>"
    return f'<table class="findings">{head}{"".join(rows)}</table>'


def _badges(study: Study) -> str:
    badges = ['<span class="badge abnormal">abnormal reference</span>'] if study.abnormal else []
    for kind in ("missed", "extra"):
        names = study.names(kind)
        if names:
            badges.append(f'<span class="mark {kind}">{len(names)} {kind}: {_e(", ".join(names))}</span>')
    if not study.names("missed") and not study.names("extra"):
        badges.append('<span class="mark both">findings agree</span>')
    return " ".join(badges)


def _study_html(study: Study, number: int) -> str:
    return (
        f'<section class="study{" abnormal" if study.abnormal else ""}" id="study-{number}">'
        f"<h2>{number}. {_e(study.id)} {_badges(study)}</h2>"
        f'<div class="body"><div class="views">{"".join(study.views)}</div>'
        f'<div class="reports"><h3>Reference report</h3><p class="report ref">{_e(study.reference)}</p>'
        f'<h3>Generated report</h3><p class="report gen">{_e(study.generated)}</p></div>'
        f"{_findings_html(study)}</div></section>"
    )


def _index_html(shown: Sequence[Study]) -> str:
    rows = "".join(
        f'<tr><td>{n}</td><td><a href="#study-{n}">{_e(s.id)}</a></td><td>{"yes" if s.abnormal else ""}</td>'
        f"<td>{_e(', '.join(s.names('missed')))}</td><td>{_e(', '.join(s.names('extra')))}</td></tr>"
        for n, s in enumerate(shown, 1)
    )
    head = "<tr><th>#</th><th>study</th><th>abnormal reference</th><th>missed</th><th>extra</th></tr>"
    summary = "<summary>Index of the studies shown</summary>"
    return f'<details open>{summary}<table class="index">{head}{rows}</table></details>'


_CSS = """
body{font:14px/1.45 system-ui,sans-serif;margin:0 24px 40px;color:#1b1b1b;background:#f3f4f6}
h1{font-size:22px;margin:18px 0 6px}h2{font-size:16px;margin:0 0 8px}h3{font-size:13px;margin:4px 0 2px;color:#444}
header p{margin:3px 0}.muted{color:#555}
table{border-collapse:collapse;margin:6px 0;background:#fff}th,td{padding:2px 7px;text-align:left}
th{border-bottom:1px solid #999}.scores td+td{text-align:right;font-variant-numeric:tabular-nums}
.index td{border-bottom:1px solid #e5e5e5}summary{cursor:pointer;font-weight:600;margin-top:8px}
.legend span{margin-right:6px}
.study{background:#fff;border:1px solid #c8c8c8;border-left:6px solid #9aa5b1;border-radius:6px;margin:16px 0;
padding:10px 14px}
.study.abnormal{border-left-color:#b3261e}
.body{display:flex;gap:18px;flex-wrap:wrap;align-items:flex-start}.views{display:flex;gap:8px;flex-wrap:wrap}
figure{margin:0;font-size:12px;color:#444;text-align:center}
figure img,.noimg{width:256px;height:256px;object-fit:contain;background:#000;display:block}
.noimg{background:#eee;color:#8c1d18;font-size:12px;overflow:auto;box-sizing:border-box;padding:8px;text-align:left}
.reports{flex:1 1 280px;min-width:260px}
.report{white-space:pre-wrap;margin:0 0 8px;padding:6px 10px;background:#f6f7f9;border-left:3px solid #9aa5b1}
.report.gen{border-left-color:#3b6fb6}
.findings{font-size:12.5px}.findings td{border-bottom:1px solid #eee}
.findings .quiet td,.findings td.absent{color:#6e6e6e}
.findings td.positive{font-weight:600}.findings td.uncertain{font-style:italic}
.mark,.badge{font-size:12.5px;font-weight:600;padding:1px 7px;border-radius:4px;white-space:nowrap}
.both{background:#d5efda;color:#0b4f1c}.missed{background:#f9d4d0;color:#7d1710}.extra{background:#fde4b8;color:#6b4100}
.badge.abnormal{background:#7d1710;color:#fff}
"""


def render_page(
    shown: Sequence[Study],
    studies: Sequence[Study],
    split: str,
    split_size: int,
    ce: Mapping[str, object],
    sources: Mapping[str, str],
) -> str:
    """The whole page as a string: ``shown`` (which carry their views' HTML already) of ``studies``."""
    total, abnormal = len(studies), sum(s.abnormal for s in studies)
    header = (
        f"<h1>Report review: {_e(split)} split</h1>"
        + "".join(f'<p class="muted">{_e(k)}: {_e(v)}</p>' for k, v in sources.items())
        + f"<p><strong>{len(shown)} of {total} studies shown</strong> ({total} with a prediction, of {split_size} "
        f"studies in the {_e(split)} split; {abnormal} of the {total} have an abnormal reference). "
        f"Order: {ORDER_TEXT}.</p>"
        f"<p>Clinical efficacy of all {total} predictions (positive iff the labeler says positive; "
        f"uncertain and not mentioned count as negative):</p>{_scores_html(ce)}{_per_observation_html(ce)}"
        '<p class="legend">Findings as the rule-based labeler reads each report: '
        '<span class="mark both">in both</span> positive in both, '
        '<span class="mark missed">missed</span> positive in the reference only, '
        '<span class="mark extra">extra</span> positive in the generated report only; '
        "\u2013 not mentioned. "
        "Abnormal reference: a positive finding other than No Finding and Support Devices.</p>"
    )
    body = "".join(_study_html(study, n) for n, study in enumerate(shown, 1))
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>Report review: {_e(split)} split ({len(shown)} of {total})</title><style>{_CSS}</style></head>"
        f"<body><header>{header}</header><nav>{_index_html(shown)}</nav><main>{body}</main></body></html>\n"
    )


def write_review_page(
    pred: str | os.PathLike,
    data: str | os.PathLike,
    out: str | os.PathLike,
    split: str = "test",
    limit: int = DEFAULT_LIMIT,
    dataset: str = "iu_xray",
) -> ReviewPage:
    """Read predictions and the split, write the review page to ``out`` (one self-contained HTML file)."""
    if limit < 1:
        raise ValueError(f"limit must be at least 1, got {limit}")
    studies, split_size, annotation_file = read_studies(pred, data, split, dataset)
    # CE of the labels already read, as ce_from_texts would compute them from the same cleaned texts
    ce = ce_scores(np.stack([s.gen_labels for s in studies]), np.stack([s.ref_labels for s in studies]))
    shown = review_order(studies)[:limit]
    unreadable = 0
    for study in shown:
        for index, path in enumerate(study.image_paths):
            view, readable = _view_html(study, index, path)
            study.views.append(view)
            unreadable += not readable
        if not study.image_paths:
            study.views.append('<div class="noimg">no image in the annotation row</div>')
    sources = {"predictions": str(pred), "data": str(annotation_file)}
    page = render_page(shown, studies, split, split_size, ce, sources)
    with atomic_write(out) as handle:
        handle.write(page.encode("utf-8"))
    return ReviewPage(path=Path(out), shown=len(shown), total=len(studies), unreadable_views=unreadable)
