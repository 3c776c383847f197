"""Optimisation of an :class:`MRGModel`: one loop for centralized runs and for a site's local rounds.

AdamW on the trainable parameters (no weight decay on biases, norms and other 1-D tensors), linear
warm-up then cosine decay, gradient accumulation, gradient clipping, bf16 autocast on CUDA. The
client-aware contrastive prototypes of an epoch come from the generic-head features of the
previous one (a centralized run supplies its own; a federated site receives the server's).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import random
import time
from collections import defaultdict
from collections.abc import Sequence
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from fedmrg.config import Config, config_to_dict
from fedmrg.data.dataset import SKIPPED
from fedmrg.data.loaders import loader_records, own_studies, seed_epoch, study_loader, training_loader
from fedmrg.errors import ConfigError, DataError
from fedmrg.io import recover_directory, replace_directory, write_json
from fedmrg.labels.observations import OBSERVATIONS
from fedmrg.labels.states import STATE_POSITIVE
from fedmrg.model.diagnosis import class_counts
from fedmrg.model.layout import MODEL_FILE
from fedmrg.model.mrg import MRGModel
from fedmrg.model.prototypes import PrototypeBank
from fedmrg.model.state_files import load_tree, save_tree, tree_files

log = logging.getLogger(__name__)

CHECKPOINT_DIR = "checkpoint"
TRAINER_STATE = "trainer"  # trainer.json + trainer.safetensors (model.state_files)
SUMMARY_FILE = "train_summary.json"
# Settings that may differ when a run resumes: how long, where, and how it logs or decodes.
_RESUMABLE_CHANGES = {
    ("train", "epochs"),
    ("train", "max_steps"),
    ("train", "device"),
    ("train", "num_workers"),
    ("train", "log_every"),
    ("model", "base_llm"),
}
_RESUMABLE_SECTIONS = {"benchmark", "generate"}


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def peak_memory_mib(device: torch.device) -> float:
    """This process's peak memory so far: allocated CUDA memory on a GPU, resident set size on a CPU."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def make_optimizer(model: MRGModel, cfg: Config) -> torch.optim.AdamW:
    decay, no_decay = [], []
    for parameter in model.parameters():
        if parameter.requires_grad:
            (decay if parameter.ndim >= 2 else no_decay).append(parameter)
    groups = [{"params": decay, "weight_decay": cfg.train.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=cfg.train.lr)


def warmup_cosine(optimizer: torch.optim.Optimizer, total_steps: int, warmup_ratio: float):
    """Linear warm-up over ``warmup_ratio`` of the steps, then cosine decay to 0."""
    warmup = max(1, round(warmup_ratio * total_steps)) if warmup_ratio > 0 else 0

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = (step - warmup) / max(1, total_steps - warmup)
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def planned_steps(cfg: Config, batches_per_epoch: int, max_steps: int | None = None) -> int:
    per_epoch = math.ceil(batches_per_epoch / cfg.train.grad_accum)
    total = cfg.train.epochs * per_epoch
    limit = max_steps or cfg.train.max_steps
    return min(total, limit) if limit else total


@dataclass
class LoopState:
    """Where an optimisation stands: steps taken, epochs done, losses per epoch."""

    step: int = 0
    epochs_done: int = 0
    batches_done: int = 0  # of the epoch in progress (a step limit can stop mid-epoch)
    history: list[dict] = field(default_factory=list)


class Trainer:
    """Owns the optimizer and schedule of one model; runs epochs over a loader."""

    def __init__(self, model: MRGModel, cfg: Config, total_steps: int, writer=None) -> None:
        self.model, self.cfg, self.total_steps = model, cfg, total_steps
        self.optimizer = make_optimizer(model, cfg)
        self.scheduler = warmup_cosine(self.optimizer, total_steps, cfg.train.warmup_ratio)
        self.state = LoopState()
        self.writer = writer
        self.prototype_bank: PrototypeBank | None = None  # generic-head features of the last pass
        self.skipped: dict[str, str] = {}  # studies left out (unusable files): id -> reason
        self._params = [p for p in model.parameters() if p.requires_grad]

    def _usable(self, batch: dict) -> bool:
        """Note the batch's skipped studies (a warning the first time each is seen); False when none is left."""
        for study, reason in batch.pop(SKIPPED, {}).items():
            if study not in self.skipped:
                self.skipped[study] = reason
                log.warning("study %s left out: %s (%d so far)", study, reason, len(self.skipped))
        return "image" in batch

    def set_class_counts(self, loader: DataLoader) -> None:
        """Diagnosis priors from the training studies' label states (for balanced / logit-adjusted losses)."""
        if self.model.diagnosis is not None:
            states = torch.as_tensor(np.stack([row["states"] for row in loader_records(loader)]))
            self.model.diagnosis.set_class_counts(class_counts(states).to(self.model.info.device))

    def run_epoch(self, loader: DataLoader, *, progress: bool = True, abort=None) -> dict[str, float]:
        """One pass over ``loader``, or the rest of one (stops at the step limit or when ``abort()``).

        The first ``state.batches_done`` batches are skipped: they were trained before a resume
        (the loader must give the same order, i.e. be seeded per epoch). An epoch counts as done
        only when the loader is used up. Returns the mean of every loss of this call and sets the
        next prototypes from this pass's generic-head features (kept in ``prototype_bank``).
        """
        model, accum, total = self.model, self.cfg.train.grad_accum, len(loader)
        model.train()
        bank = PrototypeBank(len(OBSERVATIONS), self.cfg.model.contrastive_dim)
        model.prototype_collector = bank
        sums: dict[str, float] = defaultdict(float)
        batches, finished = 0, True
        bar = tqdm(loader, desc=f"epoch {self.state.epochs_done + 1}", disable=not progress, leave=False)
        try:
            for index, batch in enumerate(bar):
                if index < self.state.batches_done:
                    continue
                if self.done or (abort is not None and abort()):
                    finished = False
                    break
                if not self._usable(batch):
                    continue
                model.predicted_prompt_prob = self.cfg.model.predicted_prompt_mix * self.state.step / self.total_steps
                with self._autocast():
                    losses = model(batch)
                group = min(accum, total - (index - index % accum))  # the last group may be short
                (losses["loss"] / group).backward()
                for name, value in losses.items():
                    sums[name] += float(value.detach())
                batches += 1
                if (index + 1) % accum == 0 or index + 1 == total:
                    self._optimizer_step(losses)
                    self.state.batches_done = index + 1
                    bar.set_postfix(loss=f"{losses['loss'].item():.3f}", step=self.state.step)
        finally:
            self.optimizer.zero_grad(set_to_none=True)  # an interrupted accumulation group is dropped
            model.prototype_collector = None
            bar.close()
        self.prototype_bank = bank  # a federated site sends its sums and counts
        if self.cfg.model.contrastive and bank.counts.sum() > 0:
            model.set_prototypes(*bank.means())
        if finished:
            self.state.epochs_done += 1
            self.state.batches_done = 0
        means = {name: value / max(1, batches) for name, value in sums.items()}
        self.state.history.append(
            {
                "epoch": self.state.epochs_done + (0 if finished else 1),
                "step": self.state.step,
                "complete": finished,
                **means,
            }
        )
        return means

    def train_step(self, batch: dict) -> dict[str, torch.Tensor]:
        """One optimizer step on one batch (no accumulation): forward, backward, update."""
        self.model.train()
        with self._autocast():
            losses = self.model(batch)
        losses["loss"].backward()
        self._optimizer_step(losses)
        return losses

    @property
    def done(self) -> bool:
        return self.state.step >= self.total_steps

    def _optimizer_step(self, losses: dict[str, torch.Tensor]) -> None:
        if self.cfg.train.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(self._params, self.cfg.train.grad_clip)
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.state.step += 1
        if self.writer is not None and self.state.step % self.cfg.train.log_every == 0:
            for name, value in losses.items():
                self.writer.add_scalar(f"train/{name}", float(value.detach()), self.state.step)
            self.writer.add_scalar("train/lr", self.scheduler.get_last_lr()[0], self.state.step)

    def _autocast(self):
        device = self.model.info.device
        if device.type == "cuda" and self.cfg.train.bf16:
            return torch.autocast("cuda", dtype=torch.bfloat16)
        return nullcontext()

    @torch.no_grad()
    def evaluate_loss(self, loader: DataLoader, progress: bool = False) -> dict[str, float]:
        """Mean losses on held-out studies, the diagnosis prompt built from predictions."""
        self.model.eval()
        sums: dict[str, float] = defaultdict(float)
        batches = 0
        for batch in tqdm(loader, desc="val", disable=not progress, leave=False):
            if not self._usable(batch):
                continue
            batches += 1
            with self._autocast():
                for name, value in self.model(batch).items():
                    sums[name] += float(value)
        return {name: total / max(1, batches) for name, total in sums.items()}

    @torch.no_grad()
    def calibrate(self, loader: DataLoader) -> dict[str, float]:
        """Calibrate the diagnosis head's thresholds on ``loader``'s studies (validation); those set."""
        head = self.model.diagnosis
        if head is None:
            return {}
        self.model.eval()
        probabilities, positives = [], []
        for batch in loader:
            if not self._usable(batch):
                continue
            probabilities.append(head.positive_probability(self.model.diagnosis_logits(batch)).cpu())
            positives.append(batch["states"] == STATE_POSITIVE)
        if not probabilities:
            return {}
        chosen = head.calibrate(torch.cat(probabilities), torch.cat(positives))
        log.info("diagnosis thresholds calibrated on %d studies: %s", sum(len(p) for p in positives), chosen)
        return chosen

    def state_dict(self) -> dict:
        return {
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "loop": dataclasses.asdict(self.state),
            "total_steps": self.total_steps,
            "rng": {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate()},
        }

    def load_state_dict(self, state: dict) -> None:
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.state = LoopState(**state["loop"])
        torch.set_rng_state(state["rng"]["torch"])
        np.random.set_state(state["rng"]["numpy"])
        random.setstate(state["rng"]["python"])


def train_centralized(
    cfg: Config,
    sites: Sequence[str | os.PathLike],
    out: str | os.PathLike,
    *,
    base_llm: str | os.PathLike | None = None,
    max_steps: int | None = None,
    progress: bool = True,
) -> dict:
    """``fedmrg train``: train on the train split of ``sites``, checkpoint each epoch, resume if stopped.

    The run folder gets the final model (``MRGModel.save`` layout), ``checkpoint/`` (model and
    trainer state of the last finished epoch), ``tb/`` (TensorBoard) and ``train_summary.json``.
    """
    from torch.utils.tensorboard import SummaryWriter

    out = Path(out)
    seed_everything(cfg.train.seed)
    train_loader = training_loader(cfg, sites, seed=cfg.train.seed)
    val_loader = _optional_loader(cfg, sites, "val")
    total = planned_steps(cfg, len(train_loader), max_steps)
    checkpoint = out / CHECKPOINT_DIR
    trainer_json = tree_files(checkpoint / TRAINER_STATE)[0]
    recover_directory(checkpoint, trainer_json.name)
    resumed = trainer_json.is_file()
    if resumed:
        _check_resumable(checkpoint, cfg)
        model = MRGModel.load(checkpoint, base_llm=base_llm, device=cfg.train.device)
        model.cfg.train, model.cfg.generate = cfg.train, cfg.generate  # what may change on resume
    else:
        _check_fresh_run_folder(out)
        model = MRGModel.build(cfg, base_llm=base_llm)
    out.mkdir(parents=True, exist_ok=True)
    writer = SummaryWriter(str(out / "tb"))
    trainer = Trainer(model, cfg, total, writer)
    trainer.set_class_counts(train_loader)
    if resumed:
        trainer.load_state_dict(load_tree(checkpoint / TRAINER_STATE))
        trainer.total_steps = total
        log.info("resuming %s after epoch %d (step %d)", out, trainer.state.epochs_done, trainer.state.step)
    started = time.perf_counter()
    while trainer.state.epochs_done < cfg.train.epochs and not trainer.done:
        epoch = trainer.state.epochs_done
        seed_epoch(train_loader, cfg.train.seed + epoch)
        trainer.run_epoch(train_loader, progress=progress)
        if val_loader is not None:
            trainer.calibrate(val_loader)
            val = trainer.evaluate_loss(val_loader)
            trainer.state.history[-1].update({f"val_{k}": v for k, v in val.items()})
            for name, value in val.items():
                writer.add_scalar(f"val/{name}", value, trainer.state.step)
        log.info("epoch %d: %s", epoch + 1, _format_losses(trainer.state.history[-1]))
        _save_checkpoint(model, trainer, checkpoint)
    writer.close()
    model.save(out)
    summary = {
        "steps": trainer.state.step,
        "epochs": trainer.state.epochs_done,
        "planned_steps": total,
        "train_studies": own_studies(train_loader),
        "seconds_this_run": round(time.perf_counter() - started, 1),
        "resumed": resumed,
        "history": trainer.state.history,
        "skipped_studies": trainer.skipped,
        "trainable_parameters": sum(p.numel() for p in model.parameters() if p.requires_grad),
    }
    write_json(out / SUMMARY_FILE, summary)
    return summary


def _optional_loader(cfg: Config, sites, split: str) -> DataLoader | None:
    try:
        return study_loader(cfg, sites, split, train=False, skip_bad=True)
    except DataError as exc:  # no studies in that split: validation is optional
        log.info("no %s loss: %s", split, exc)
        return None


def _format_losses(row: dict) -> str:
    return ", ".join(f"{k} {v:.3f}" for k, v in row.items() if isinstance(v, float))


def _check_fresh_run_folder(out: Path) -> None:
    """Start in an empty folder, a finished run's folder, or one a killed run left before its first checkpoint."""
    own = {"tb", f"{CHECKPOINT_DIR}.tmp", f"{CHECKPOINT_DIR}.old"}
    if out.exists() and not (out / MODEL_FILE).is_file() and any(p.name not in own for p in out.iterdir()):
        raise ConfigError(f"{out}: exists and is not a FedMRG run folder; give a new --out")


def _check_resumable(checkpoint: Path, cfg: Config) -> None:
    """A run resumes only under the config it started with (epochs and max_steps may change)."""
    saved = json.loads((checkpoint / MODEL_FILE).read_text(encoding="utf-8"))["config"]
    current = config_to_dict(cfg)
    changed = [
        f"{section}.{key}"
        for section, values in current.items()
        if isinstance(values, dict)
        for key, value in values.items()
        if (section, key) not in _RESUMABLE_CHANGES
        and section not in _RESUMABLE_SECTIONS
        and saved.get(section, {}).get(key, value) != value
    ]
    if changed:
        raise ConfigError(
            f"{checkpoint}: the run was started with another config ({', '.join(changed[:5])} "
            "differ); resume with the same config or give a new --out"
        )


def _save_checkpoint(model: MRGModel, trainer: Trainer, checkpoint: Path) -> None:
    def write(staging: Path) -> None:
        model.save(staging)
        save_tree(staging / TRAINER_STATE, trainer.state_dict())

    replace_directory(checkpoint, write)
