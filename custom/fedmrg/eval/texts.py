"""Files of the evaluation commands: id -> report text (JSON), reports and labels (CSV).

Every problem a user can cause (a missing file, bytes that are not UTF-8, a missing column, ids
present on one side only, an empty report) raises :class:`~fedmrg.errors.DataError` with a one-line
message that names the file and, where it helps, the offending ids.
"""

from __future__ import annotations

import csv
import io
import math
import os
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from fedmrg.data.annotation import SPLITS, read_annotation
from fedmrg.errors import DataError
from fedmrg.io import load_json, read_utf8, some
from fedmrg.labels.observations import OBSERVATIONS


def read_id_texts(path: str | os.PathLike) -> dict[str, str]:
    """A JSON object mapping id -> report text."""
    data = load_json(path)
    if not isinstance(data, dict):
        raise DataError(f"{path}: expected a JSON object mapping id to report text, got a {type(data).__name__}")
    not_text = [key for key, value in data.items() if not isinstance(value, str)]
    if not_text:
        raise DataError(f"{path}: {len(not_text)} values are not report text (strings): ids {some(not_text)}")
    return data


def is_annotation(data: Any) -> bool:
    """Whether parsed JSON looks like an R2Gen annotation.json (split keys holding lists of rows)."""
    return isinstance(data, dict) and any(isinstance(data.get(split), list) for split in SPLITS)


def read_references(path: str | os.PathLike, split: str = "test") -> dict[str, str]:
    """Reference reports: an id -> text JSON object, or the rows of ``split`` of an annotation.json."""
    if not is_annotation(load_json(path)):
        return read_id_texts(path)
    rows = read_annotation(path, check_images=False).rows(split)
    if not rows:
        raise DataError(f"{path}: annotation file has no '{split}' rows")
    return {row["id"]: row["report"] for row in rows}


def check_same_ids(
    predictions: Mapping[str, str],
    references: Mapping[str, str],
    pred_name: str = "predictions",
    ref_name: str = "references",
) -> None:
    """Both sides must hold the same ids; the message lists some missing on each side, and counts."""
    only_pred = predictions.keys() - references.keys()
    only_ref = references.keys() - predictions.keys()
    if only_pred or only_ref:
        parts = [
            f"{len(ids)} only in {name}" + (f" ({some(ids)})" if ids else "")
            for ids, name in ((only_pred, pred_name), (only_ref, ref_name))
        ]
        raise DataError(f"{pred_name} and {ref_name} have different ids: {'; '.join(parts)}")
    if not predictions:
        raise DataError(f"{pred_name} and {ref_name} hold no reports")


def check_nonempty(texts: Mapping[str, str], name: str) -> None:
    """Every report must have text after stripping whitespace."""
    empty = [key for key, text in texts.items() if not text.strip()]
    if empty:
        raise DataError(f"{name}: {len(empty)} empty reports: ids {some(empty)}")


def read_reports_csv(path: str | os.PathLike) -> dict[str, str]:
    """A CSV with a header and columns ``id`` and ``report`` (others ignored), as id -> text."""
    reader = csv.reader(io.StringIO(read_utf8(path), newline=""))
    try:
        header = next(reader)
    except StopIteration:
        raise DataError(f"{path}: empty file (expected a header with columns id,report)") from None
    except csv.Error as exc:
        raise DataError(f"{path}: not a readable CSV ({exc})") from None
    columns = [name.strip() for name in header]
    missing = [name for name in ("id", "report") if name not in columns]
    if missing:
        raise DataError(
            f"{path}: no column {' or '.join(repr(m) for m in missing)} in the header "
            f"(found: {', '.join(repr(c) for c in columns) or 'nothing'})"
        )
    return _rows_by_id(path, reader, columns.index("id"), columns.index("report"))


def _rows_by_id(path: str | os.PathLike, reader: Iterable[list[str]], id_col: int, report_col: int) -> dict[str, str]:
    reports: dict[str, str] = {}
    twice, empty = set(), []
    try:
        for row in reader:
            if not any(cell.strip() for cell in row):
                continue  # blank line
            key = row[id_col].strip() if id_col < len(row) else ""
            text = row[report_col] if report_col < len(row) else ""
            if key in reports:
                twice.add(key)
            if not key or not text.strip():
                empty.append(key or f"(no id, line {reader.line_num})")
            reports[key] = text
    except csv.Error as exc:
        raise DataError(f"{path}: not a readable CSV ({exc})") from None
    if twice:
        raise DataError(f"{path}: {len(twice)} ids appear more than once: {some(twice)}")
    if empty:
        raise DataError(f"{path}: {len(empty)} rows with an empty id or report: {some(empty)}")
    if not reports:
        raise DataError(f"{path}: no reports (only a header)")
    return reports


def format_label(value: float) -> str:
    """A label cell: ``1``, ``0``, ``-1``, or empty for not mentioned (NaN)."""
    return "" if math.isnan(value) else str(int(value))


def write_labels_csv(path: str | os.PathLike, ids: Sequence[str], labels: np.ndarray) -> None:
    """Write ``id`` plus the 14 observation columns, one row per report."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["id", *OBSERVATIONS])
        for key, row in zip(ids, labels):
            writer.writerow([key, *(format_label(float(v)) for v in row)])
