"""Differential privacy of a site's shared update: clip it, add Gaussian noise, account for epsilon.

The guarantee (``fl.dp_noise_multiplier`` set): *site-level, local* DP. Each round a site scales
its whole shared update (every shared entry, LoRA products included) to an L2 norm of at most
``C = fl.dp_clip`` and adds independent Gaussian noise of standard deviation ``sigma * C`` to
every coordinate, before compression and error feedback, so everything derived from it (the
low-rank factors sent, the residual kept) is post-processing. Neighbouring inputs are two
different training sets of the same site, so one round's release has L2 sensitivity ``2 C`` and is
a Gaussian mechanism with Renyi DP ``alpha * 2 / sigma**2`` at order alpha; T rounds compose to
``T`` times that, converted to (epsilon, delta) by ``rdp + log(1/delta) / (alpha - 1)`` minimized
over alpha (Mironov, 2017). The noise comes from the operating system's entropy, not from the
config's seed, which every party knows.

What it does not cover: with DP on, a site sends no prototype sums and a study count of 1 (equal
weights), but its metrics (losses on its own validation split, training losses, final test scores)
still leave it as scalars; see docs/security.md.
"""

from __future__ import annotations

import math
import os

import torch

from fedmrg.fl.codec import Delta, as_dense, like
from fedmrg.fl.merge import clip_update

# Renyi orders searched for the tightest conversion to (epsilon, delta).
ORDERS = tuple([1 + k / 20 for k in range(1, 100)] + list(range(6, 64)) + [64, 96, 128, 256, 512, 1024])


def noise_generator() -> torch.Generator:
    """Unpredictable noise: seeded from the OS, so no one can subtract it by replaying a known seed."""
    return torch.Generator().manual_seed(int.from_bytes(os.urandom(8), "little"))


def privatize(
    delta: dict[str, Delta], clip: float, noise_multiplier: float, generator: torch.Generator
) -> dict[str, Delta]:
    """The update clipped to a whole norm of ``clip`` plus N(0, (noise_multiplier * clip)^2) per coordinate.

    Factored entries (LoRA products) are reconstructed dense to be noised, and come back as an exact
    factorization of the noisy matrix, so the codec and the error feedback see the kind they expect.
    """
    clipped = clip_update(delta, clip)
    std = noise_multiplier * clip
    return {
        name: like(as_dense(value) + std * torch.randn(value.shape, generator=generator), delta[name])
        for name, value in clipped.items()
    }


def epsilon(rounds: int, noise_multiplier: float, delta: float) -> float:
    """The (epsilon, delta)-DP epsilon of ``rounds`` releases (0 for none)."""
    if rounds <= 0:
        return 0.0
    rdp_per_order = (rounds * 2 * alpha / noise_multiplier**2 for alpha in ORDERS)
    return min(rdp + math.log(1 / delta) / (alpha - 1) for rdp, alpha in zip(rdp_per_order, ORDERS))
