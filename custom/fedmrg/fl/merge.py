"""The server's arithmetic for low-rank updates: check, average exactly, apply, re-factorize.

The weighted mean of the sites' factored deltas is itself factored (the sites' factors side by
side, each left factor scaled by its weight), so it is exact: the mean of the products, not the
product of means that averaging LoRA A and B separately (FedIT) gives. A LoRA module's new product
``B A + mean delta (+ what the server kept from the previous round)`` is cut back to the adapter
rank by QR of both sides and a small SVD, split evenly between B and A; what the cut leaves out is
kept for the next round instead of being dropped. The FLARE aggregator (next step of the federated
issue) wraps these functions.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from fedmrg.fl.codec import RESIDUAL_RANK_FACTOR, Delta, Factored, as_dense, components, like, lora_modules

_ZERO = 1e-12  # relative size under which a singular value counts as zero


def expected_delta_shapes(global_state: dict[str, torch.Tensor]) -> dict[str, tuple[int, ...]]:
    """The entries (and shapes) a site's delta must hold: LoRA pairs as their product ``[d, k]``."""
    pairs = lora_modules(set(global_state))
    paired = {key for a, b in pairs.values() for key in (a, b)}
    shapes = {name: tuple(t.shape) for name, t in global_state.items() if name not in paired}
    for product, (a, b) in pairs.items():
        shapes[product] = (global_state[b].shape[0], global_state[a].shape[1])
    return shapes


def _norm(value: Delta) -> float:
    if isinstance(value, Factored):
        return float(torch.linalg.vector_norm(value.svd()[1]))
    return float(torch.linalg.vector_norm(value.float()))


def _finite(value: Delta) -> bool:
    tensors = (value.left, value.right) if isinstance(value, Factored) else (value,)
    return all(bool(torch.isfinite(t).all()) for t in tensors)


def update_problem(
    delta: dict[str, Delta], expected: dict[str, tuple[int, ...]], max_rank: int, max_norm: float
) -> str | None:
    """Why a site's decoded delta must not be used, or None when it is acceptable.

    Only the expected (shared) entries; each with its shape, a rank of at most ``max_rank``,
    finite values and a Frobenius norm of at most ``max_norm``.
    """
    unexpected = sorted(delta.keys() - expected.keys())
    if unexpected:
        return f"unexpected entries (local or unknown parameters): {', '.join(unexpected[:3])}"
    missing = sorted(expected.keys() - delta.keys())
    if missing:
        return f"missing entries: {', '.join(missing[:3])}"
    for name, value in sorted(delta.items()):
        if tuple(value.shape) != tuple(expected[name]):
            return f"{name}: shape {list(value.shape)}, expected {list(expected[name])}"
        if isinstance(value, Factored) and value.left.shape[1] > max_rank:
            return f"{name}: rank {value.left.shape[1]} above the bound {max_rank}"
        if not _finite(value):
            return f"{name}: values that are not finite"
        norm = _norm(value)
        if norm > max_norm:
            return f"{name}: norm {norm:.3g} above the bound {max_norm:.3g}"
    return None


def weighted_mean(deltas: Sequence[dict[str, Delta]], weights: Sequence[float]) -> dict[str, Delta]:
    """Exact weighted mean; factored entries stay factored (factors side by side)."""
    if not deltas or len(deltas) != len(weights) or min(weights) <= 0:
        raise ValueError("need one positive weight per delta, and at least one delta")
    total = float(sum(weights))
    shares = [w / total for w in weights]
    mean: dict[str, Delta] = {}
    for name in deltas[0]:
        values = [delta[name] for delta in deltas]
        if isinstance(values[0], Factored):
            mean[name] = Factored(
                torch.cat([share * v.left for share, v in zip(shares, values)], 1),
                torch.cat([v.right for v in values], 0),
                values[0].view,
            )
        else:
            mean[name] = sum(share * v.float() for share, v in zip(shares, values))
    return mean


def update_norm(delta: dict[str, Delta]) -> float:
    """The L2 norm of a whole update (all entries)."""
    return math.sqrt(sum(_norm(value) ** 2 for value in delta.values()))


def clip_update(delta: dict[str, Delta], clip_norm: float) -> dict[str, Delta]:
    """The update scaled down to a whole norm of at most ``clip_norm`` (a factored entry scales its left side)."""
    scale = min(1.0, clip_norm / max(update_norm(delta), 1e-30))
    if scale == 1.0:
        return delta
    return {
        name: Factored(scale * v.left, v.right, v.view) if isinstance(v, Factored) else scale * v
        for name, v in delta.items()
    }


def robust_mean(deltas: Sequence[dict[str, Delta]], rule: str, trim: int = 1) -> dict[str, Delta]:
    """Coordinate-wise ``median`` or ``trimmed_mean`` of the sites' updates, reconstructed dense.

    With n sites of which f < n / 2 are hostile, every coordinate of the median lies between the
    smallest and the largest value the honest sites sent for it, however large the hostile values
    (the trimmed mean, with ``trim`` >= f, likewise). Sites count equally; a trimmed mean needs more
    than ``2 trim`` sites and falls back to the median otherwise. A factored (LoRA product) entry
    comes back as an exact factorization of the dense result, which the server then re-factorizes.
    """
    if rule not in ("median", "trimmed_mean"):
        raise ValueError(f"aggregation rule {rule!r}: must be median or trimmed_mean")
    combined: dict[str, Delta] = {}
    for name, first in deltas[0].items():
        values = torch.stack([as_dense(d[name]) for d in deltas])
        ordered = values.sort(dim=0).values
        n = len(deltas)
        if rule == "trimmed_mean" and n > 2 * trim:
            result = ordered[trim : n - trim].mean(dim=0)
        else:  # the median: the middle value, or the mean of the middle two
            result = ordered[(n - 1) // 2 : n // 2 + 1].mean(dim=0)
        combined[name] = like(result, first)
    return combined


def refactorize(
    product: Factored, rank: int, generator: torch.Generator | None = None
) -> tuple[torch.Tensor, torch.Tensor, Factored]:
    """``B [d, rank]``, ``A [rank, k]`` of the best rank-``rank`` approximation, and the rest.

    Singular values are split evenly (``B = U sqrt(S)``, ``A = sqrt(S) V^T``). Directions with a
    zero singular value get ``B = 0`` and a random unit row in ``A``, as PEFT initialises LoRA: with
    both zero, that direction could never learn again.
    """
    u, s, vh = product.svd()
    d, k = product.shape
    keep = min(rank, s.numel())
    live = int((s[:keep] > s.max() * _ZERO).sum()) if s.numel() and s.max() > 0 else 0
    root = s[:live].sqrt()
    b = torch.zeros(d, rank, dtype=torch.float64)
    a = torch.zeros(rank, k, dtype=torch.float64)
    b[:, :live] = u[:, :live] * root
    a[:live] = root[:, None] * vh[:live]
    if live < rank:
        fresh = torch.randn(rank - live, k, generator=generator, dtype=torch.float64)
        a[live:] = fresh / math.sqrt(3 * k)  # the variance of PEFT's kaiming-uniform init of A
    rest = components(u, s, vh, keep, min(s.numel(), keep + RESIDUAL_RANK_FACTOR * rank))
    return b.float(), a.float(), rest


def aligned(
    b: torch.Tensor, a: torch.Tensor, b_before: torch.Tensor, a_before: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """``B R``, ``R^T A`` with the rotation ``R`` that brings them closest to ``B_before``, ``A_before``.

    Any orthogonal ``R`` leaves the product ``B A`` unchanged; the one closest in both factors
    together is the orthogonal Procrustes solution, ``R = U V^T`` from the SVD of
    ``B^T B_before + A A_before^T``.
    """
    u, _, vh = torch.linalg.svd(b.double().T @ b_before.double() + a.double() @ a_before.double().T)
    rotation = u @ vh
    return (b.double() @ rotation).float(), (rotation.T @ a.double()).float()


def apply_mean_delta(
    global_state: dict[str, torch.Tensor],
    mean: dict[str, Delta],
    residual: dict[str, Factored] | None = None,
    generator: torch.Generator | None = None,
) -> tuple[dict[str, torch.Tensor], dict[str, Factored]]:
    """The next global state, and what the LoRA re-factorization left out (the server's residual)."""
    residual = residual or {}
    pairs = lora_modules(set(global_state))
    state = {name: t.clone() for name, t in global_state.items()}
    kept: dict[str, Factored] = {}
    for name, value in mean.items():
        if name in pairs:
            a_key, b_key = pairs[name]
            rank = global_state[a_key].shape[0]
            product = Factored(global_state[b_key].float(), global_state[a_key].float()) + _factored(value)
            if name in residual:
                product = product + residual[name]
            b, a, kept[name] = refactorize(product, rank, generator)
            b, a = aligned(b, a, global_state[b_key].float(), global_state[a_key].float())
            state[b_key], state[a_key] = b.to(global_state[b_key].dtype), a.to(global_state[a_key].dtype)
        else:
            update = as_dense(value)
            state[name] = (global_state[name].float() + update).to(global_state[name].dtype)
    return state, kept


def _factored(value: Delta) -> Factored:
    if isinstance(value, Factored):
        return value
    raise ValueError("a LoRA product delta must be factored")
