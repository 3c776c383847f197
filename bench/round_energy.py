"""How much of a real round's change does the low-rank codec send? Prints, per model part, the
share of the change's energy (squared norm) that the payload carries at each codec rank, and the
payload's bytes.

    python bench/round_energy.py --data data/demo/bench/site-1 --base-llm data/demo/base-llm \
        --base-encoder data/demo/base-encoder/model.safetensors [--steps 40] [--ranks 4 8 16] \
        [--public-data data/demo/bench/public]

One site trains its first round exactly as in a job (``SiteTrainer.train_round``: the config's
budget, ``--steps`` local steps, rehearsal of ``--public-data``); the change of its shared
parameters (LoRA pairs as the change of ``B A``) is then encoded at each rank. What a rank leaves
out waits in the site's error feedback for a later round, and what is left after the last round is
never sent: with few rounds, the share sent here is about the share of the training that reaches
the global model.
"""

from __future__ import annotations

import argparse
import dataclasses
import tempfile
from collections import defaultdict

from fedmrg.config import load_config
from fedmrg.fl.codec import CodecSpec, Delta, as_dense, encode, payload_bytes, round_delta
from fedmrg.fl.site import SiteTrainer
from fedmrg.model.parameters import model_part


def energy(value: Delta) -> float:
    return float(as_dense(value).float().pow(2).sum())


def part_energies(delta: dict[str, Delta]) -> dict[str, float]:
    """The energy of ``delta`` summed per model part."""
    energies: dict[str, float] = defaultdict(float)
    for name, value in delta.items():
        energies[model_part(name)] += energy(value)
    return energies


def sent_shares(
    delta: dict[str, Delta], total: dict[str, float], spec: CodecSpec
) -> tuple[dict[str, float], float, int]:
    """Per model part the share of the change's energy (``total``, per part) the payload carries, the
    overall share, the bytes."""
    payload, left_out = encode(delta, spec)
    lost = part_energies(left_out)
    shares = {part: 1 - lost[part] / total[part] for part in total if total[part] > 0}
    return shares, 1 - sum(lost.values()) / sum(total.values()), payload_bytes(payload)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", required=True, help="a site folder")
    parser.add_argument("--base-llm", required=True)
    parser.add_argument("--base-encoder", help="the frozen backbone's weights (model.encoder.pretrained)")
    parser.add_argument("--public-data", help="public studies rehearsed at the site (train.public_data)")
    parser.add_argument("--config", default="demo")
    parser.add_argument("--steps", type=int, default=40, help="local steps of the round (fl.local_steps)")
    parser.add_argument("--ranks", type=int, nargs="+", default=[4, 8, 16])
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    overrides = {
        "model.base_llm": args.base_llm,
        "train.device": "cpu",
        "train.seed": args.seed,
        "fl.local_steps": args.steps,
        "model.encoder.pretrained": args.base_encoder,
        "train.public_data": args.public_data,
    }
    cfg = load_config(args.config, {key: value for key, value in overrides.items() if value is not None})
    with tempfile.TemporaryDirectory(prefix="fedmrg-energy-") as state:
        site = SiteTrainer(cfg, "site", args.data, state)
        before = site.model.shared_state_dict()
        site.train_round(0)
        delta = round_delta(before, site.model.shared_state_dict())
    spec = CodecSpec.of(cfg.fl)
    total = part_energies(delta)
    rows = {rank: sent_shares(delta, total, dataclasses.replace(spec, rank=rank)) for rank in args.ranks}
    parts = sorted({part for shares, _, _ in rows.values() for part in shares})
    everything = sum(total.values())
    print(
        f"one round of {args.steps} steps at {args.data} ({cfg.name} config, seed {args.seed}); codec "
        f"{spec.precision}, dense below {spec.dense_below} values; share of the change's energy the payload carries:\n"
    )
    print("| part | share of the change | " + " | ".join(f"sent at rank {rank}" for rank in args.ranks) + " |")
    print("|---|---:|" + "---:|" * len(args.ranks))
    for part in parts:
        cells = " | ".join(f"{rows[rank][0].get(part, 0):.1%}" for rank in args.ranks)
        print(f"| {part} | {total[part] / everything:.1%} | {cells} |")
    print("| **all** | 100% | " + " | ".join(f"**{rows[rank][1]:.1%}**" for rank in args.ranks) + " |")
    print("| payload bytes | | " + " | ".join(f"{rows[rank][2]:,}" for rank in args.ranks) + " |")


if __name__ == "__main__":
    main()
