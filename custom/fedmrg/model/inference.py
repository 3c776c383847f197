"""Reports (and predicted findings) for studies: one study from image files, or a whole split."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from fedmrg.data.dataset import StudyDataset, collate_studies
from fedmrg.data.loaders import loader_records, study_loader
from fedmrg.data.transforms import eval_transforms
from fedmrg.errors import DataError
from fedmrg.eval.report import score_reports
from fedmrg.io import write_json
from fedmrg.labels.observations import OBSERVATIONS
from fedmrg.labels.states import STATES
from fedmrg.model.adapters import adapter_names
from fedmrg.model.mrg import MRGModel
from fedmrg.model.parameters import SPECIALIZED


def findings_of(states_row: Sequence[int]) -> dict[str, str]:
    """Predicted states as ``{observation: state}``, the observations the head leaves blank omitted."""
    return {name: STATES[int(s)] for name, s in zip(OBSERVATIONS, states_row) if STATES[int(s)] != "blank"}


def study_batch(model: MRGModel, images: Sequence[str | os.PathLike]) -> dict:
    """One study made of ``images`` (its views, PNG/JPG/DICOM), as a batch of one."""
    if not images:
        raise DataError("no images given: a study needs at least one view")
    if len(images) > model.cfg.data.max_views:
        raise DataError(
            f"{len(images)} images given, but the model reads at most {model.cfg.data.max_views} views "
            "per study (data.max_views)"
        )
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


def generate_split(
    model: MRGModel, loader: DataLoader, *, adapters: str = "auto", progress: bool = True
) -> dict[str, dict]:
    """``{id: {"report", "findings"}}`` for every study of ``loader``."""
    results: dict[str, dict] = {}
    for batch in tqdm(loader, desc="generating", disable=not progress):
        for study_id, row in zip(batch["id"], generate_for(model, batch, adapters)):
            results[str(study_id)] = row
    return results


def adapter_scores(
    model: MRGModel,
    data_dir: str | os.PathLike,
    *,
    split: str = "test",
    limit: int | None = None,
    generic_only: bool = False,
    out_dir: str | os.PathLike | None = None,
) -> dict[str, dict]:
    """Scores of a site folder's split with the generic adapter alone and with both adapters.

    ``{"generic": scores, "personalized": scores}``; a model with one adapter has one model for
    every site, so its ``personalized`` is its ``generic``. ``generic_only`` skips the second pass
    (a held-out population has no specialized adapter of its own). The generated reports are
    written to ``out_dir`` (``<label>.predictions.json``) when one is given.
    """

    loader = study_loader(
        model.cfg, [data_dir], split, train=False, batch_size=model.cfg.generate.batch_size, limit=limit
    )
    references = {str(r["id"]): r["report"] for r in loader_records(loader)}
    modes = {"generic": "generic"}
    if not generic_only and SPECIALIZED in adapter_names(model.cfg.model):
        modes["personalized"] = "dual"
    scores = {}
    for label, adapters in modes.items():
        rows = generate_split(model, loader, adapters=adapters, progress=False)
        predictions = {key: row["report"] for key, row in rows.items()}
        if out_dir is not None:
            write_json(Path(out_dir) / f"{label}.predictions.json", predictions)
        scores[label] = score_reports(predictions, references, dataset=model.cfg.data.dataset)
    if not generic_only and "personalized" not in scores:
        scores["personalized"] = scores["generic"]
    return scores
