"""Which parameters does each training loss move? Prints the gradient norm that every weighted loss
term of the model puts on each trainable part, averaged over a few training batches.

    python bench/loss_reach.py --data data/demo/bench/site-1 --base-llm data/demo/base-llm \
        --base-encoder data/demo/base-encoder/model.safetensors [--config demo] [--batches 4] [--set k=v ...]

A term that reaches only its own head cannot change the reports. With the demo's frozen encoder,
for instance, the contrastive terms can move their projection heads and the view embedding only.
The prototype term is measured against random unit prototypes: what it reaches, not its value.
"""

from __future__ import annotations

import argparse
from collections import defaultdict

import torch
import yaml
from tqdm import tqdm

from fedmrg.config import load_config
from fedmrg.data.loaders import study_loader
from fedmrg.labels.observations import OBSERVATIONS
from fedmrg.model.mrg import MRGModel
from fedmrg.model.parameters import model_part


def loss_reach(model: MRGModel, loader, batches: int) -> dict[str, dict[str, float]]:
    """term -> part -> mean gradient norm of the weighted term over ``batches`` batches."""
    params = {name: p for name, p in model.named_parameters() if p.requires_grad}
    reach: dict[str, dict[str, float]] = defaultdict(lambda: defaultdict(float))
    model.train()
    for _, batch in zip(range(batches), tqdm(loader, total=batches, desc="batches")):
        losses = model(batch)
        for term, value in losses.items():
            if term == "loss" or not value.requires_grad:
                continue
            weighted = model.weighted_loss({term: value})
            grads = torch.autograd.grad(weighted, list(params.values()), retain_graph=True, allow_unused=True)
            squares: dict[str, float] = defaultdict(float)
            for name, grad in zip(params, grads):
                squares[model_part(name)] += 0.0 if grad is None else float(grad.float().pow(2).sum())
            for part, square in squares.items():
                reach[term][part] += square**0.5 / batches
    return reach


def table(reach: dict[str, dict[str, float]]) -> str:
    parts = sorted({part for row in reach.values() for part in row})
    lines = ["| loss term | " + " | ".join(parts) + " |", "|---|" + "---:|" * len(parts)]
    for term, row in reach.items():
        cells = [f"{row[part]:.2e}" if row.get(part) else "0" for part in parts]
        lines.append(f"| {term} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", required=True, help="a site folder (train split)")
    parser.add_argument("--base-llm", required=True)
    parser.add_argument("--base-encoder", help="the frozen backbone's weights (model.encoder.pretrained)")
    parser.add_argument("--config", default="demo")
    parser.add_argument("--batches", type=int, default=4)
    parser.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="config overrides")
    args = parser.parse_args()
    overrides = {key: yaml.safe_load(value) for key, value in (item.split("=", 1) for item in args.set)}
    if args.base_encoder:
        overrides["model.encoder.pretrained"] = args.base_encoder
    torch.manual_seed(0)
    cfg = load_config(args.config, {"train.device": "cpu", **overrides})
    model = MRGModel.build(cfg, args.base_llm)
    if model.contrastive is not None:
        model.set_prototypes(torch.randn(len(OBSERVATIONS), cfg.model.contrastive_dim), torch.ones(len(OBSERVATIONS)))
    print(table(loss_reach(model, study_loader(cfg, [args.data], "train", train=True), args.batches)))


if __name__ == "__main__":
    main()
