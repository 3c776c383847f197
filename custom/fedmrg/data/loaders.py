"""From annotation rows to training batches: cleaned target text and diagnosis targets.

The report generator learns and is scored on R2Gen-cleaned text, and its diagnosis head learns the
labeler's reading of the site's own ground-truth reports; both are computed once per split here.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from monai.transforms import Randomizable
from torch.utils.data import ConcatDataset, DataLoader, Sampler

from fedmrg.config import Config
from fedmrg.data.annotation import read_annotation
from fedmrg.data.cleaning import clean_report
from fedmrg.data.dataset import StudyDataset, collate_studies
from fedmrg.data.transforms import eval_transforms, train_transforms
from fedmrg.errors import DataError
from fedmrg.labels.labeler import label_matrix
from fedmrg.labels.states import states_from_labels


def with_targets(records: Sequence[dict], dataset: str) -> list[dict]:
    """Copies of ``records`` with ``report`` cleaned and ``states`` ([14] diagnosis classes) added."""
    cleaned = [clean_report(str(record["report"]), dataset) for record in records]
    states = states_from_labels(label_matrix(cleaned)).numpy() if cleaned else np.zeros((0, 14), np.int64)
    return [{**record, "report": text, "states": row} for record, text, row in zip(records, cleaned, states)]


def collate_with_targets(batch: list[dict]) -> dict:
    """:func:`collate_studies`, with ``states`` stacked into a LongTensor ``[B, 14]``."""
    out = collate_studies(batch)
    if "states" in out:
        out["states"] = torch.as_tensor(np.stack(out["states"]), dtype=torch.long)
    return out


def split_records(site_dir: str | os.PathLike, split: str, dataset: str) -> tuple[list[dict], Path]:
    """Rows of one split of a site's annotation.json, with targets, and the folder images are under."""
    site = Path(site_dir)
    annotation = read_annotation(site / "annotation.json" if site.is_dir() else site, check_images=False)
    rows = annotation.splits.get(split, [])
    return with_targets(rows, dataset), annotation.image_root


def study_loader(
    cfg: Config,
    sites: Sequence[str | os.PathLike],
    split: str,
    *,
    train: bool,
    batch_size: int | None = None,
    seed: int = 0,
    limit: int | None = None,
    skip_bad: bool | None = None,
) -> DataLoader:
    """One loader over the ``split`` studies of every site in ``sites`` (each with its own image root).

    ``limit`` keeps the first studies of each site (quick checks). ``skip_bad`` (default: ``train``)
    leaves out studies whose files cannot be used and lists them in the batch (``"skipped"``), for
    training and its validation loss; a split to be scored must be whole, so there a bad file stops
    with its name and reason.
    """
    datasets = []
    for site in sites:
        records, image_root = split_records(site, split, cfg.data.dataset)
        records = records[:limit] if limit else records
        if records:
            datasets.append(
                StudyDataset(
                    records,
                    image_root,
                    _transform(cfg, image_root, train),
                    skip_bad=train if skip_bad is None else skip_bad,
                )
            )
    if not datasets:
        raise DataError(f"{', '.join(map(str, sites))}: no '{split}' studies to {'train on' if train else 'use'}")
    dataset = datasets[0] if len(datasets) == 1 else torch.utils.data.ConcatDataset(datasets)
    generator = torch.Generator().manual_seed(seed)
    return DataLoader(
        dataset,
        batch_size=batch_size or cfg.train.batch_size,
        shuffle=train,
        drop_last=False,
        collate_fn=collate_with_targets,
        num_workers=cfg.train.num_workers,
        generator=generator,
        worker_init_fn=_seed_worker,
        persistent_workers=cfg.train.num_workers > 0,
    )


REHEARSED = "rehearsed"  # a training batch's list: which studies are rehearsed public ones


class RehearsalSampler(Sampler[int]):
    """An epoch of every own study once and ``extra`` public studies drawn anew, shuffled together.

    Indices below ``own`` are the own studies, the rest the public ones (a ``ConcatDataset`` of the
    two). The draw uses the loader's generator, so seeding it per epoch repeats the epoch's order
    (what a resumed epoch relies on).
    """

    def __init__(self, own: int, public: int, extra: int, generator: torch.Generator) -> None:
        self.own, self.public, self.extra, self.generator = own, public, min(extra, public), generator

    def __iter__(self):
        drawn = torch.randperm(self.public, generator=self.generator)[: self.extra] + self.own
        epoch = torch.cat([torch.arange(self.own), drawn])
        yield from epoch[torch.randperm(len(epoch), generator=self.generator)].tolist()

    def __len__(self) -> int:
        return self.own + self.extra


def training_loader(cfg: Config, sites: Sequence[str | os.PathLike], *, seed: int = 0) -> DataLoader:
    """The ``train`` studies of ``sites``, shuffled; with ``train.public_data``, each epoch also
    rehearses ``train.public_share`` times as many public studies (drawn anew each epoch).

    Rehearsal keeps the frozen LLM's prompt-following (which it learned from public reports) while the
    adapters learn a site's reports; the public studies are the same at every site and leave none.
    Batches then list which studies are rehearsed (``"rehearsed"``), which a site's prototypes leave out.
    """
    own = study_loader(cfg, sites, "train", train=True, seed=seed)
    if not cfg.train.public_data:
        return own
    public = study_loader(cfg, [cfg.train.public_data], "train", train=True, seed=seed).dataset
    for dataset, rehearsed in ((own.dataset, False), (public, True)):
        for part in study_datasets(dataset):
            for record in part.data:
                record[REHEARSED] = rehearsed
    sampler = RehearsalSampler(
        len(own.dataset), len(public), round(cfg.train.public_share * len(own.dataset)), own.generator
    )
    return DataLoader(
        ConcatDataset([own.dataset, public]),
        batch_size=own.batch_size,
        sampler=sampler,
        collate_fn=collate_with_targets,
        num_workers=cfg.train.num_workers,
        generator=own.generator,
        worker_init_fn=_seed_worker,
        persistent_workers=cfg.train.num_workers > 0,
    )


def seed_epoch(loader: DataLoader, seed: int) -> None:
    """Seed a training loader for one epoch: its order and its random augmentations. An epoch then
    draws the same studies in the same order with the same augmentations whenever it is run, so a
    site or a run that resumes mid-epoch (skipping the batches it trained) continues exactly where
    an uninterrupted one would."""
    loader.generator.manual_seed(seed)
    _seed_augmentations(loader.dataset, seed)


def _seed_worker(worker_id: int) -> None:
    """A loader process's augmentations, seeded from the seed torch gives that process (distinct per
    process, and fixed by the loader's generator)."""
    info = torch.utils.data.get_worker_info()
    _seed_augmentations(info.dataset, info.seed)


def _seed_augmentations(dataset, seed: int) -> None:
    for transform in _random_transforms(dataset):
        transform.set_random_state(seed % 2**32)


def _random_transforms(dataset) -> list[Randomizable]:
    transforms = (getattr(part, "transform", None) for part in study_datasets(dataset))
    return [transform for transform in transforms if isinstance(transform, Randomizable)]


def study_datasets(dataset) -> list[StudyDataset]:
    """The study datasets behind a loader's dataset: several sites, and rehearsed public studies beside
    them, are nested ``ConcatDataset``s."""
    parts = getattr(dataset, "datasets", None)
    return [leaf for part in parts for leaf in study_datasets(part)] if parts is not None else [dataset]


def own_studies(loader: DataLoader) -> int:
    """How many of a :func:`training_loader`'s studies are the sites' own (not rehearsed public ones)."""
    sampler = loader.sampler
    return sampler.own if isinstance(sampler, RehearsalSampler) else len(loader.dataset)


def _transform(cfg: Config, image_root: Path, train: bool):
    if train:
        return train_transforms(cfg.data.image_size, image_root, cfg.data.max_views, augment=cfg.data.augment)
    return eval_transforms(cfg.data.image_size, image_root, cfg.data.max_views)


def loader_records(loader: DataLoader) -> list[dict]:
    """The records behind a :func:`study_loader`, in loader order when it does not shuffle."""
    return [record for part in study_datasets(loader.dataset) for record in part.data]
