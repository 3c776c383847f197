"""The R2Gen ``annotation.json`` layout, for IU X-ray, MIMIC-CXR and our benchmark sites.

``{"train": [row, ...], "val": [...], "test": [...]}`` where a row is
``{"id": str, "report": str, "image_path": [str, ...], "split": str}``; MIMIC-CXR rows also carry
``study_id`` and ``subject_id``. Image paths are relative to an image root: by default the
``images/`` folder beside annotation.json (R2Gen's ``--image_dir``). Extra keys are kept.

A wrong schema (not JSON, missing keys, wrong types, unknown split) is an error naming the file,
the row and the key. Rows whose images are missing are skipped, counted and listed, because the
rest of the file is still usable; a file with no usable row is an error. A row without its
``report`` or ``image_path`` key, in a file whose other rows have it, is one unusable study, not a
schema error: it is marked (``UNUSABLE``) so that training skips and counts it and scoring, which
needs every row, stops naming it.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fedmrg.data.reports import Skipped
from fedmrg.errors import DataError
from fedmrg.io import load_json, write_json

log = logging.getLogger(__name__)

SPLITS = ("train", "val", "test")
UNUSABLE = "unusable"  # a row's key: why the study cannot be used (the dataset skips or refuses it)
_STUDY_KEYS = ("report", "image_path")


@dataclass
class Annotation:
    """A validated annotation file: rows per split, the image root, and what was skipped."""

    path: Path
    image_root: Path
    splits: dict[str, list[dict[str, Any]]]
    skipped: list[Skipped] = field(default_factory=list)

    def rows(self, split: str) -> list[dict[str, Any]]:
        if split not in SPLITS:
            raise DataError(f"{self.path}: unknown split '{split}' (expected one of {', '.join(SPLITS)})")
        return self.splits.get(split, [])

    def __len__(self) -> int:
        return sum(len(rows) for rows in self.splits.values())


def read_annotation(
    path: str | os.PathLike, image_root: str | os.PathLike | None = None, check_images: bool = True
) -> Annotation:
    """Read and validate an R2Gen-layout annotation file."""
    path = Path(path)
    root = Path(image_root) if image_root is not None else path.parent / "images"
    data = load_json(path, what="annotation file")
    if not isinstance(data, dict):
        raise DataError(f"{path}: the top level must be an object with keys {', '.join(SPLITS)}")
    unknown = [k for k in data if k not in SPLITS]
    if unknown:
        raise DataError(f"{path}: unknown split '{unknown[0]}' (expected keys {', '.join(SPLITS)})")
    if not data:
        raise DataError(f"{path}: no split (expected keys {', '.join(SPLITS)})")
    somewhere = {
        key
        for rows in data.values()
        if isinstance(rows, list)
        for row in rows
        if isinstance(row, dict)
        for key in _STUDY_KEYS
        if key in row
    }
    splits: dict[str, list[dict[str, Any]]] = {}
    skipped: list[Skipped] = []
    seen: dict[str, str] = {}
    for split, rows in data.items():
        if not isinstance(rows, list):
            raise DataError(f"{path}: {split}: must be a list of rows, got {type(rows).__name__}")
        kept = []
        for index, row in enumerate(rows):
            row = _validated_row(row, f"{path}: {split}[{index}]", somewhere)
            if row["id"] in seen:
                raise DataError(f"{path}: {split}[{index}]: id '{row['id']}' appears twice (also in {seen[row['id']]})")
            seen[row["id"]] = split
            _check_inside(root, row, f"{path}: {split}[{index}]")
            if check_images and row.get(UNUSABLE):
                skipped.append(Skipped(f"{split}/{row['id']}", row[UNUSABLE]))
                continue
            unusable = [_image_problem(root / p) for p in row["image_path"]] if check_images else []
            problem = next((problem for problem in unusable if problem), None)
            if problem:
                skipped.append(Skipped(f"{split}/{row['id']}", problem))
                continue
            kept.append(row)
        splits[split] = kept
    if not any(splits.values()):
        reason = f"; first: {skipped[0].reason}" if skipped else ""
        raise DataError(f"{path}: no usable study ({len(skipped)} skipped{reason})")
    if skipped:
        log.warning("%s: skipped %d studies with missing images (first: %s)", path, len(skipped), skipped[0].reason)
    return Annotation(path=path, image_root=root, splits=splits, skipped=skipped)


def _check_inside(root: Path, row: dict[str, Any], where: str) -> None:
    """An image path must stay inside the image root once resolved (``..``, an absolute path or a
    link to elsewhere would let an annotation file make a site read any file)."""
    base = root.resolve()
    for image in row["image_path"]:
        resolved = (root / image).resolve()
        if base not in resolved.parents:
            raise DataError(f"{where} (id={row['id']}): image_path {image!r} leaves the image root {root}")


def _image_problem(image: Path) -> str | None:
    if image.is_dir():
        return f"is a folder, not an image: {image}"
    if not image.is_file():
        return f"image not found: {image}"
    return None


def _validated_row(row: Any, where: str, somewhere: set[str]) -> dict[str, Any]:
    """The row checked, with its image paths as a list; ``somewhere``: the study keys some row of
    the file has (a key no row has is a schema error; one only this row lacks makes it unusable)."""
    if not isinstance(row, dict):
        raise DataError(f"{where}: a row must be an object, got {type(row).__name__}")
    for key in ("id", *_STUDY_KEYS):
        if key not in row and key not in somewhere:
            raise DataError(f"{where}: missing key '{key}'")
    lacking = [key for key in _STUDY_KEYS if key not in row]
    if lacking:
        if not isinstance(row["id"], (str, int)) or isinstance(row["id"], bool) or not str(row["id"]).strip():
            raise DataError(f"{where}: 'id' must be a non-empty string")
        return {
            **row,
            "id": str(row["id"]),
            "report": row.get("report", ""),
            "image_path": row.get("image_path", []),
            UNUSABLE: f"no '{lacking[0]}' in the annotation row",
        }
    if not isinstance(row["id"], (str, int)) or isinstance(row["id"], bool):
        raise DataError(f"{where}: 'id' must be a string")
    if not str(row["id"]).strip():
        raise DataError(f"{where}: 'id' must be a non-empty string")
    if not isinstance(row["report"], str):
        raise DataError(f"{where} (id={row['id']}): 'report' must be a string")
    paths = row["image_path"]
    if isinstance(paths, str):
        paths = [paths]
    if not isinstance(paths, list) or not paths or not all(isinstance(p, str) and p for p in paths):
        raise DataError(f"{where} (id={row['id']}): 'image_path' must be a non-empty list of paths")
    return {**row, "id": str(row["id"]), "image_path": paths}


def write_annotation(path: str | os.PathLike, splits: dict[str, list[dict[str, Any]]]) -> None:
    """Write rows per split in the R2Gen layout (every split key present, even if empty)."""
    write_json(path, {split: [{**row, "split": split} for row in splits.get(split, [])] for split in SPLITS})
