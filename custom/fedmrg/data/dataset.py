"""Study dataset and the collate function that batches studies with different view counts."""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Sequence
from pathlib import Path

import torch
from monai.data import Dataset

from fedmrg.data.annotation import UNUSABLE
from fedmrg.data.transforms import as_path_list, surfacing_user_errors
from fedmrg.errors import DataError

PathLike = str | os.PathLike
_STUDY_KEYS = ("image", "num_views")
SKIPPED = "skipped"


class StudyDataset(Dataset):
    """Records (``{"id", "report", "image_path", ...}``) through a study transform.

    View paths are resolved against ``image_root`` up front, so items are self-contained and the
    transform's own root does not matter. Each item keeps the record's other keys and has
    ``"image"`` ``[V, 1, S, S]``.
    """

    def __init__(
        self, records: Sequence[dict], image_root: PathLike, transform: Callable | None, *, skip_bad: bool = False
    ) -> None:
        root = Path(image_root).absolute()  # absolute, so a transform's own root cannot prefix it again
        super().__init__([_with_resolved_paths(record, root) for record in records], transform)
        self.skip_bad = skip_bad

    def _transform(self, index: int) -> dict:
        """The study, or with ``skip_bad`` a ``{"id", "skipped": reason}`` marker for one whose files
        cannot be used (the reason names the file; the collate function leaves the study out)."""
        try:
            if self.data[index].get(UNUSABLE):
                raise DataError(f"study {self.data[index].get('id')!r}: {self.data[index][UNUSABLE]}")
            report = self.data[index].get("report")
            if isinstance(report, str) and not re.search(r"\w", report):
                raise DataError(f"study {self.data[index].get('id')!r}: empty report")
            with surfacing_user_errors():
                return super()._transform(index)
        except DataError as exc:
            if not self.skip_bad:
                raise
            return {"id": self.data[index].get("id"), SKIPPED: str(exc)}


def _with_resolved_paths(record: dict, root: Path) -> dict:
    paths = as_path_list(record.get("image_path"))
    return {**record, "image_path": [str(root / path) for path in paths]}


def collate_studies(batch: list[dict]) -> dict:
    """Batch studies, padding the view axis with zero images.

    Returns ``"image"`` ``[B, Vmax, 1, S, S]``, ``"view_mask"`` bool ``[B, Vmax]`` (True for real
    views), ``"num_views"`` long ``[B]``, and every other key as a list; studies the dataset marked
    unusable are left out and listed in ``"skipped"`` (id -> reason), the only key when none is left.
    """
    if not batch:
        raise ValueError("cannot collate an empty batch")
    skipped = {str(item["id"]): item[SKIPPED] for item in batch if SKIPPED in item}
    batch = [item for item in batch if SKIPPED not in item]
    if not batch:  # every study of the batch was unusable
        return {SKIPPED: skipped}
    images = [item["image"] for item in batch]
    view_shapes = {tuple(image.shape[1:]) for image in images}
    if len(view_shapes) > 1:
        raise ValueError(f"studies in a batch must share the view shape, got {sorted(view_shapes)}")
    num_views = torch.tensor([image.shape[0] for image in images], dtype=torch.long)
    padded = images[0].new_zeros((len(batch), int(num_views.max()), *images[0].shape[1:]))
    for index, image in enumerate(images):
        padded[index, : image.shape[0]] = image
    view_mask = torch.arange(padded.shape[1]) < num_views[:, None]
    others = {key: [item[key] for item in batch] for key in batch[0] if key not in _STUDY_KEYS}
    return {
        "image": padded,
        "view_mask": view_mask,
        "num_views": num_views,
        **others,
        **({SKIPPED: skipped} if skipped else {}),
    }
