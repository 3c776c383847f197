"""Reports (and predicted findings) for studies: one study from image files, or a whole split."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from fedmrg.data.dataset import StudyDataset, collate_studies
from fedmrg.data.transforms import eval_transforms
from fedmrg.errors import DataError
from fedmrg.eval.observations import OBSERVATIONS
from fedmrg.model.diagnosis import STATES
from fedmrg.model.mrg import MRGModel


def findings_of(states_row: Sequence[int]) -> dict[str, str]:
    """Predicted states as ``{observation: state}``, the observations the head leaves blank omitted."""
    return {name: STATES[int(s)] for name, s in zip(OBSERVATIONS, states_row) if STATES[int(s)] != "blank"}


def study_batch(model: MRGModel, images: Sequence[str | os.PathLike]) -> dict:
    """One study made of ``images`` (its views, PNG/JPG/DICOM), as a batch of one."""
    if not images:
        raise DataError("no images given: a study needs at least one view")
    if len(images) > model.cfg.data.max_views:
        raise DataError(f"{len(images)} images given, but the model reads at most {model.cfg.data.max_views} views "
                        "per study (data.max_views)")
    missing = [str(path) for path in images if not Path(path).is_file()]
    if missing:
        raise DataError(f"{missing[0]}: image not found")
    record = {"id": "study", "image_path": [str(Path(path).resolve()) for path in images]}
    transform = eval_transforms(model.cfg.data.image_size, Path("/"), model.cfg.data.max_views)
    return collate_studies([StudyDataset([record], Path("/"), transform)[0]])


def generate_for(model: MRGModel, batch: dict, adapters: str = "auto") -> list[dict]:
    """``[{"report", "findings"}]`` for every study of a batch."""
    states = model.predict_states(batch)
    reports = model.generate(batch, adapters=adapters)
    rows = []
    for index, text in enumerate(reports):
        rows.append({"report": text, "findings": findings_of(states[index]) if states is not None else {}})
    return rows


def generate_split(model: MRGModel, loader: DataLoader, *, adapters: str = "auto",
                   progress: bool = True) -> dict[str, dict]:
    """``{id: {"report", "findings"}}`` for every study of ``loader``."""
    results: dict[str, dict] = {}
    for batch in tqdm(loader, desc="generating", disable=not progress):
        for study_id, row in zip(batch["id"], generate_for(model, batch, adapters)):
            results[str(study_id)] = row
    return results
