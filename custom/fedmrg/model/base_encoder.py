"""The demo base encoder (``fedmrg make-base-encoder``): an image backbone pretrained on public renders.

Hospitals start from a pretrained vision backbone of their own (``model.encoder.backbone: hf`` with a
local folder, or a MONAI network's state dict). For the offline demo and the tests, this module
builds a stand-in the way :mod:`fedmrg.model.base_llm` builds the demo LLM: only from the
benchmark's ``public/`` folder, whose reports belong to no site and no test set. ``fedmrg
prepare-data`` renders each public report ``benchmark.public_renders`` times (other patients,
hospitals outside the federation: ``public/annotation.json``); the backbone of ``model.encoder``
learns, with a linear head it then drops, to tell from the images both what the renderer drew (the
finding categories) and what the labeler reads in the report (the 13 abnormal observations).

The output folder holds ``model.safetensors`` (the backbone's state dict, which
``model.encoder.pretrained`` loads) and ``base_encoder.json``: the encoder config it fits, the
training losses, and the per-finding AUC of a linear probe on ``test-global`` (the held-out studies;
read, never trained on).
"""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file
from sklearn.metrics import roc_auc_score
from torch import Tensor, nn
from tqdm import tqdm

from fedmrg import __version__
from fedmrg.config import BASE_ENCODER_WEIGHTS, Config, config_to_dict
from fedmrg.data.loaders import seed_epoch, study_loader
from fedmrg.data.synthetic import CATEGORIES
from fedmrg.errors import ConfigError, DataError
from fedmrg.io import replacing_directory, write_json
from fedmrg.labels.observations import ABNORMAL, ABNORMAL_COLUMNS
from fedmrg.labels.states import STATE_POSITIVE
from fedmrg.model.encoder import build_backbone

log = logging.getLogger(__name__)

SUMMARY = "base_encoder.json"
KIND = "fedmrg-base-encoder"


class PretrainingNet(nn.Module):
    """Backbone + one linear layer over (finding categories, abnormal observations), on a study's
    mean token (the real views only)."""

    def __init__(self, backbone: nn.Module) -> None:
        super().__init__()
        self.backbone = backbone
        self.head = nn.Linear(backbone.out_dim, len(CATEGORIES) + len(ABNORMAL_COLUMNS))

    def features(self, image: Tensor, view_mask: Tensor) -> Tensor:
        per_view = self.backbone(image[view_mask]).mean(dim=1)  # [n_real, C]
        study = view_mask.nonzero()[:, 0]
        summed = per_view.new_zeros(view_mask.shape[0], per_view.shape[1]).index_add_(0, study, per_view)
        return summed / view_mask.sum(dim=1, keepdim=True).to(per_view.dtype)

    def forward(self, batch: dict) -> Tensor:
        return self.head(self.features(batch["image"], batch["view_mask"]))


def targets(batch: dict) -> Tensor:
    """[B, categories + abnormal observations] of 0/1: what was drawn, what the report says."""
    drawn = torch.tensor([[c in found for c in CATEGORIES] for found in batch["categories"]], dtype=torch.float)
    said = (batch["states"][:, ABNORMAL_COLUMNS] == STATE_POSITIVE).float()
    return torch.cat([drawn, said], dim=1)


def make_base_encoder(
    cfg: Config,
    bench: str | os.PathLike,
    out: str | os.PathLike,
    *,
    epochs: int = 5,
    lr: float = 3e-3,
    seed: int = 0,
    progress: bool = True,
) -> dict[str, Any]:
    """Pretrain ``cfg.model.encoder``'s backbone on ``bench/public`` and save it to ``out``; the summary."""
    bench, out = Path(bench), Path(out).resolve()
    public = bench / "public"
    if not (public / "annotation.json").is_file():
        raise DataError(
            f"{public}: no rendered public studies (annotation.json); build the benchmark with "
            f"benchmark.public_renders above 0 (`fedmrg prepare-data --public-renders 4 ...`)"
        )
    if cfg.model.encoder.backbone == "hf":
        raise ConfigError("model.encoder.backbone: hf models come pretrained; make-base-encoder builds vit or cnn")
    _check_out(out)
    started = time.time()
    torch.manual_seed(seed)
    train = study_loader(cfg, [public], "train", train=True, seed=seed)
    net = PretrainingNet(build_backbone(cfg.model.encoder, cfg.data.image_size))
    losses = _train(net, train, epochs, lr, seed, progress)
    aucs = probe_aucs(net, cfg, bench / "test-global", progress) if (bench / "test-global").is_dir() else {}
    summary = {
        "kind": KIND,
        "created_by": f"fedmrg {__version__}",
        "public_studies": len(train.dataset),
        "image_size": cfg.data.image_size,
        "encoder": {k: v for k, v in config_to_dict(cfg)["model"]["encoder"].items() if k != "pretrained"},
        "epochs": epochs,
        "lr": lr,
        "seed": seed,
        "params": sum(p.numel() for p in net.backbone.parameters()),
        "losses": [round(loss, 4) for loss in losses],
        "test_global_auc": aucs,
        "seconds": round(time.time() - started, 1),
    }
    with replacing_directory(out, per_process=True) as tmp:
        state = {k: v.detach().contiguous().cpu() for k, v in net.backbone.state_dict().items()}
        save_file(state, str(tmp / BASE_ENCODER_WEIGHTS))
        write_json(tmp / SUMMARY, summary)
    log.info("base encoder saved to %s in %.0f s; test-global AUC %s", out, summary["seconds"], aucs)
    return summary


def _train(net: PretrainingNet, loader, epochs: int, lr: float, seed: int, progress: bool) -> list[float]:
    """The mean loss of each epoch. Each epoch's order and augmentations follow from ``seed``, so the same
    benchmark gives the same weights in every checkout."""
    optimizer = torch.optim.AdamW(net.parameters(), lr=lr, weight_decay=1e-4)
    total = epochs * len(loader)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=lr, total_steps=total, pct_start=0.1)
    losses = []
    net.train()
    with tqdm(total=total, desc="training base encoder", unit="step", disable=not progress) as bar:
        for epoch in range(epochs):
            seed_epoch(loader, seed + epoch)
            running = 0.0
            for batch in loader:
                loss = nn.functional.binary_cross_entropy_with_logits(net(batch), targets(batch))
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                schedule.step()
                running += loss.item() / len(loader)
                bar.update()
                bar.set_postfix(epoch=epoch + 1, loss=f"{loss.item():.3f}")
            losses.append(running)
    net.eval()
    return losses


@torch.no_grad()
def probe_aucs(net: PretrainingNet, cfg: Config, split_dir: Path, progress: bool = False) -> dict[str, dict]:
    """AUC of the pretraining head on ``split_dir``'s test studies, per target with both classes present:
    ``drawn`` (the renderer's finding categories) and ``report`` (the labeler's abnormal observations)."""
    loader = study_loader(cfg, [split_dir], "test", train=False)
    scores, truth = [], []
    for batch in tqdm(loader, desc="probe on test-global", unit="batch", disable=not progress):
        scores.append(torch.sigmoid(net(batch)))
        truth.append(targets(batch))
    score, true = torch.cat(scores).numpy(), torch.cat(truth).numpy()
    aucs: dict[str, dict] = {"drawn": {}, "report": {}}
    for k, name in enumerate([*CATEGORIES, *ABNORMAL]):
        if 0 < true[:, k].sum() < len(true):
            group = "drawn" if k < len(CATEGORIES) else "report"
            aucs[group][name] = round(float(roc_auc_score(true[:, k], score[:, k])), 3)
    return aucs


def _check_out(out: Path) -> None:
    if out.exists() and (not out.is_dir() or (any(out.iterdir()) and not (out / SUMMARY).is_file())):
        raise DataError(f"{out}: exists and holds no base encoder build ({SUMMARY}); refusing to replace it")
