"""MONAI dictionary transforms for studies (the unit of a report: one or more views).

A record is an R2Gen-style dict ``{"id", "report", "image_path": [frontal, lateral, ...], ...}``.
:class:`LoadStudyd` reads its views into ``"image"`` as a ``[V, S, S]`` array, one channel per
view; the augmentations then see all views of a study as channels of one image, so they share
one random draw; :class:`ToStudyTensord` finally gives ``[V, 1, S, S]`` float32 tensors.
"""

from __future__ import annotations

import os
from collections.abc import Hashable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch
from monai.config import KeysCollection
from monai.transforms import (
    Compose,
    MapTransform,
    RandAdjustContrastd,
    RandAffined,
    RandGaussianNoised,
    Resize,
    ScaleIntensityRanged,
    SpatialPad,
)
from monai.utils import convert_to_numpy, convert_to_tensor

from fedmrg.data.images import load_image
from fedmrg.errors import DataError, FedMRGError

PathLike = str | os.PathLike

_MAX_ROTATION_DEGREES = 5.0
_MAX_SCALE_CHANGE = 0.05
_MAX_TRANSLATION_FRACTION = 0.04


@contextmanager
def surfacing_user_errors() -> Iterator[None]:
    """Re-raise a :class:`FedMRGError` that MONAI wrapped in ``RuntimeError("applying transform")``.

    MONAI wraps every exception raised inside a transform, which would turn a one-line
    "file: reason" DataError into a traceback for the user.
    """
    try:
        yield
    except RuntimeError as exc:
        user_error = _user_error_in_chain(exc)
        if user_error is None:
            raise
        raise user_error from exc


def _user_error_in_chain(exc: BaseException | None) -> FedMRGError | None:
    while exc is not None and not isinstance(exc, FedMRGError):
        exc = exc.__cause__
    return exc


def as_path_list(paths: object) -> list:
    """A record's view paths as a list; a lone path (not R2Gen style, but easy to write) counts."""
    if paths is None:
        return []
    if isinstance(paths, (str, os.PathLike)):
        return [paths]
    return list(paths)


class StudyCompose(Compose):
    """A ``Compose`` whose user-facing errors (e.g. an unreadable view) reach the caller as is."""

    def __call__(self, input_, start=0, end=None, threading=False, lazy=None):
        with surfacing_user_errors():
            return super().__call__(input_, start=start, end=end, threading=threading, lazy=lazy)


class LoadStudyd(MapTransform):
    """Load a study's views into ``[V, S, S]`` float32, each view letterboxed to ``S x S``.

    Paths come from ``record[path_key]``, relative to ``image_root`` (absolute paths are kept).
    At most ``max_views`` views are kept, frontal first. Each view is resized so its longest side
    is ``S`` (aspect preserved) and padded symmetrically with zeros. Also sets ``"num_views"``.
    """

    def __init__(
        self,
        image_root: PathLike,
        image_size: int,
        max_views: int = 2,
        keys: KeysCollection = "image",
        path_key: str = "image_path",
    ) -> None:
        super().__init__(keys)
        if len(self.keys) != 1:
            raise ValueError(f"LoadStudyd writes one key, got {self.keys}")
        if max_views < 1:
            raise ValueError(f"max_views must be >= 1, got {max_views}")
        self.image_root = Path(image_root)
        self.max_views = max_views
        self.path_key = path_key
        self.image_size = image_size
        self._shrink = Resize(image_size, size_mode="longest", mode="area")
        self._enlarge = Resize(image_size, size_mode="longest", mode="bilinear")
        self._pad = SpatialPad((image_size, image_size), method="symmetric", mode="constant")

    def __call__(self, data: Mapping[Hashable, object]) -> dict:
        record = dict(data)
        record_id = record.get("id", "<no id>")
        views = [self._load_view(path, record_id) for path in self._view_paths(record, record_id)]
        record[self.keys[0]] = np.stack(views).astype(np.float32)
        record["num_views"] = len(views)
        return record

    def _view_paths(self, record: dict, record_id: object) -> list[Path]:
        paths = as_path_list(record.get(self.path_key))
        if not paths:
            reason = f"no image views ({self.path_key!r} is empty or missing)"
            raise DataError(f"study {record_id!r}: {reason}")
        return [self.image_root / path for path in paths[: self.max_views]]

    def _load_view(self, path: Path, record_id: object) -> np.ndarray:
        try:
            view = load_image(path)
        except DataError as exc:
            raise DataError(f"study {record_id!r}: {exc}") from exc
        return self._letterbox(view)

    def _letterbox(self, view: np.ndarray) -> np.ndarray:
        """Area-averaging when shrinking (anti-aliased, fast), bilinear when enlarging."""
        resize = self._shrink if max(view.shape) > self.image_size else self._enlarge
        channel_first = view[np.newaxis]
        return convert_to_numpy(self._pad(resize(channel_first)))[0]


class ToStudyTensord(MapTransform):
    """``[V, S, S]`` array or tensor -> plain float32 ``torch.Tensor`` ``[V, 1, S, S]``."""

    def __call__(self, data: Mapping[Hashable, object]) -> dict:
        record = dict(data)
        for key in self.key_iterator(record):
            tensor = convert_to_tensor(record[key], dtype=torch.float32, track_meta=False)
            record[key] = tensor.unsqueeze(1).contiguous()
        return record


def eval_transforms(image_size: int, image_root: PathLike, max_views: int = 2) -> StudyCompose:
    """Deterministic: load, letterbox, clip to [0, 1], to tensor."""
    return _study_pipeline(image_size, image_root, max_views, augmentations=[])


def train_transforms(image_size: int, image_root: PathLike, max_views: int = 2, augment: bool = True) -> StudyCompose:
    """Eval pipeline plus small random affine, gamma and noise augmentations.

    The views of one study are one acquisition, so they share each random draw: they are the
    channels of one ``[V, S, S]`` image, which MONAI transforms as a whole (one affine, one gamma;
    the noise is per pixel anyway).
    Reproducible with ``Compose.set_random_state(seed)``.
    """
    augmentations = _augmentations(image_size) if augment else []
    return _study_pipeline(image_size, image_root, max_views, augmentations)


def _augmentations(image_size: int) -> list[MapTransform]:
    max_shift = _MAX_TRANSLATION_FRACTION * image_size
    return [
        RandAffined(
            keys="image",
            prob=0.5,
            rotate_range=(np.deg2rad(_MAX_ROTATION_DEGREES),),
            scale_range=(_MAX_SCALE_CHANGE, _MAX_SCALE_CHANGE),
            translate_range=(max_shift, max_shift),
            mode="bilinear",
            padding_mode="zeros",
        ),
        RandAdjustContrastd(keys="image", prob=0.3, gamma=(0.8, 1.25)),
        RandGaussianNoised(keys="image", prob=0.2, std=0.01),
    ]


def _clip_to_unit_range(key: str) -> ScaleIntensityRanged:
    return ScaleIntensityRanged(keys=key, a_min=0.0, a_max=1.0, b_min=0.0, b_max=1.0, clip=True)


def _study_pipeline(
    image_size: int, image_root: PathLike, max_views: int, augmentations: Sequence[MapTransform]
) -> StudyCompose:
    return StudyCompose(
        [
            LoadStudyd(image_root, image_size, max_views),
            *augmentations,
            _clip_to_unit_range("image"),
            ToStudyTensord(keys="image"),
        ]
    )
