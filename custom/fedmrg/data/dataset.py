"""Study dataset and the collate function that batches studies with different view counts."""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from pathlib import Path

import torch
from monai.data import Dataset

from fedmrg.data.transforms import as_path_list, surfacing_user_errors

PathLike = str | os.PathLike
_STUDY_KEYS = ("image", "num_views")


class StudyDataset(Dataset):
    """Records (``{"id", "report", "image_path", ...}``) through a study transform.

    View paths are resolved against ``image_root`` up front, so items are self-contained and the
    transform's own root does not matter. Each item keeps the record's other keys and has
    ``"image"`` ``[V, 1, S, S]``.
    """

    def __init__(
        self, records: Sequence[dict], image_root: PathLike, transform: Callable | None
    ) -> None:
        root = Path(image_root).absolute()  # absolute, so a transform's own root cannot prefix it again
        super().__init__([_with_resolved_paths(record, root) for record in records], transform)

    def _transform(self, index: int) -> dict:
        with surfacing_user_errors():
            return super()._transform(index)


def _with_resolved_paths(record: dict, root: Path) -> dict:
    paths = as_path_list(record.get("image_path"))
    return {**record, "image_path": [str(root / path) for path in paths]}


def collate_studies(batch: list[dict]) -> dict:
    """Batch studies, padding the view axis with zero images.

    Returns ``"image"`` ``[B, Vmax, 1, S, S]``, ``"view_mask"`` bool ``[B, Vmax]`` (True for real
    views), ``"num_views"`` long ``[B]``, and every other key as a list.
    """
    if not batch:
        raise ValueError("cannot collate an empty batch")
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
    return {"image": padded, "view_mask": view_mask, "num_views": num_views, **others}
