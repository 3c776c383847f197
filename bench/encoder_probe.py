"""Can an image encoder trained from scratch on one site see the rendered findings? Prints AUCs.

    python bench/encoder_probe.py --data data/demo/bench/site-1 --encoder vit
    python bench/encoder_probe.py --data data/demo/bench/site-1 --encoder cnn --lr 1e-3

Targets are the benchmark's finding categories (what the renderer drew, from each study's MeSH
terms), not the labeler's reading of the report, so the probe measures the images alone: the
encoder (the config's MONAI ViT, or a small 4-layer CNN on the frontal view for comparison) and a
linear multi-label head are trained with binary cross-entropy on the train split; the AUC of every
category is printed on the test split after each epoch.
"""

from __future__ import annotations

import argparse
import time

import torch
from sklearn.metrics import roc_auc_score
from torch import nn

from fedmrg.config import load_config
from fedmrg.data.loaders import loader_records, study_loader
from fedmrg.model.encoder import StudyEncoder


def small_cnn(width: int) -> nn.Module:
    layers, channels = [], 1
    for out in (width // 8, width // 4, width // 2, width):
        layers += [nn.Conv2d(channels, out, 3, stride=2, padding=1), nn.GELU()]
        channels = out
    return nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="demo")
    parser.add_argument("--data", required=True, help="a site folder of the benchmark")
    parser.add_argument("--encoder", choices=["vit", "cnn"], default="vit")
    parser.add_argument("--lr", type=float, default=3e-4)
    parser.add_argument("--epochs", type=int, default=6)
    args = parser.parse_args()
    torch.manual_seed(0)
    cfg = load_config(args.config, {"data.augment": False, "model.encoder.freeze": False})  # trained from scratch
    train = study_loader(cfg, [args.data], "train", train=True)
    test = study_loader(cfg, [args.data], "test", train=False)
    categories = sorted({c for record in loader_records(train) for c in record.get("categories", [])})
    if not categories:
        raise SystemExit(f"{args.data}: no 'categories' in annotation.json (a benchmark site folder is needed)")

    if args.encoder == "vit":
        vit = StudyEncoder(cfg.model.encoder, cfg.data.image_size, cfg.data.max_views)
        features, width, modules = (lambda b: vit(b["image"], b["view_mask"]).pooled), vit.out_dim, [vit]
    else:
        cnn = small_cnn(cfg.model.encoder.hidden_size)
        features, width, modules = (lambda b: cnn(b["image"][:, 0])), cfg.model.encoder.hidden_size, [cnn]
    head = nn.Linear(width, len(categories))
    params = [p for module in (*modules, head) for p in module.parameters()]
    optimizer = torch.optim.AdamW(params, lr=args.lr)

    def targets(batch) -> torch.Tensor:
        return torch.tensor([[c in found for c in categories] for found in batch["categories"]], dtype=torch.float)

    start = time.perf_counter()
    for epoch in range(1, args.epochs + 1):
        for batch in train:
            loss = nn.functional.binary_cross_entropy_with_logits(head(features(batch)), targets(batch))
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        with torch.no_grad():
            scores = torch.cat([torch.sigmoid(head(features(b))) for b in test]).numpy()
            truth = torch.cat([targets(b) for b in test]).numpy()
        aucs = {
            c: roc_auc_score(truth[:, i], scores[:, i])
            for i, c in enumerate(categories)
            if 0 < truth[:, i].sum() < len(truth)
        }
        print(
            f"{args.encoder} epoch {epoch} ({time.perf_counter() - start:.0f} s): "
            + ", ".join(f"{c} {auc:.2f}" for c, auc in aucs.items()),
            flush=True,
        )


if __name__ == "__main__":
    main()
