"""Client-aware contrastive learning (DESIGN 3, FedMRG).

Two projection heads on the pooled image feature: ``generic`` (federated) and ``client`` (stays at
its site). Both are trained with image-report InfoNCE within the batch; the generic head is also
pulled toward global per-finding prototypes (:func:`prototype_nce`). Prototypes are built from
per-class sums and counts (:class:`PrototypeBank`): a site sends its bank's state, the server
merges the banks, and the merged means are the global prototypes.
"""

from __future__ import annotations

from typing import Mapping

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn


class _HeadPair(nn.Module):
    def __init__(self, image_dim: int, text_dim: int, out_dim: int) -> None:
        super().__init__()
        self.image = nn.Sequential(nn.Linear(image_dim, image_dim), nn.GELU(), nn.Linear(image_dim, out_dim))
        self.text = nn.Linear(text_dim, out_dim)


class ContrastiveHeads(nn.Module):
    """Generic and client projection heads; parameter names start with ``generic.`` / ``client.``."""

    def __init__(self, image_dim: int, text_dim: int, out_dim: int) -> None:
        super().__init__()
        self.generic = _HeadPair(image_dim, text_dim, out_dim)
        self.client = _HeadPair(image_dim, text_dim, out_dim)

    def forward(self, pooled: Tensor, text: Tensor) -> dict[str, Tensor]:
        """Pooled image [B, image_dim] and pooled report [B, text_dim] -> L2-normalised [B, out_dim]."""
        out = {}
        for name, heads in (("generic", self.generic), ("client", self.client)):
            out[f"{name}_image"] = F.normalize(heads.image(pooled), dim=-1)
            out[f"{name}_text"] = F.normalize(heads.text(text), dim=-1)
        return out


def info_nce(a: Tensor, b: Tensor, temperature: float) -> Tensor:
    """Symmetric in-batch InfoNCE: row ``a_i`` matches ``b_i``, every other row is a negative.

    ``a`` and ``b`` are [B, d] and L2-normalised (the similarities are cosines).
    """
    with torch.autocast(a.device.type, enabled=False):  # cosines / 0.07 need more than bf16's 3 digits
        logits = a.float() @ b.float().T / temperature
    target = torch.arange(a.shape[0], device=a.device)
    return (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target)) / 2


def prototype_nce(features: Tensor, positives: Tensor, prototypes: Tensor, available: Tensor,
                  temperature: float) -> Tensor:
    """InfoNCE of features against class prototypes.

    For every (sample, class) pair where the class is positive for the sample and has a prototype,
    ``-log softmax_c'(cos(f, p_c') / temperature)`` at that class, the softmax running over the
    available prototypes; the mean over pairs. Zero (with a graph to ``features``) without pairs.
    """
    with torch.autocast(features.device.type, enabled=False):  # as in info_nce: fp32 cosines
        logits = features.float() @ prototypes.float().T / temperature  # [B, C]
    logits = logits.masked_fill(~available[None, :], torch.finfo(logits.dtype).min)
    log_prob = F.log_softmax(logits, dim=-1)
    pairs = positives & available[None, :]
    total = torch.where(pairs, -log_prob, torch.zeros_like(log_prob)).sum()
    return total / pairs.sum().clamp(min=1)


class PrototypeBank:
    """Per-class sums of L2-normalised, detached features and their counts.

    Sums and counts (not means) are what a site sends, so that merging banks gives exactly the
    bank of the pooled data, and the server's prototypes weight every site by its positives.
    """

    def __init__(self, num_classes: int, dim: int) -> None:
        self.sums = torch.zeros(num_classes, dim)
        self._counts = torch.zeros(num_classes)

    @property
    def counts(self) -> Tensor:
        """[C] number of features added per class."""
        return self._counts

    def add(self, features: Tensor, positives: Tensor) -> None:
        """Add features [B, d] to every class that is positive for them (``positives`` bool [B, C])."""
        if features.shape[0] != positives.shape[0] or tuple(positives.shape[1:]) != (self.sums.shape[0],) \
                or tuple(features.shape[1:]) != (self.sums.shape[1],):
            raise ValueError(f"expected features [B, {self.sums.shape[1]}] and positives [B, {self.sums.shape[0]}], "
                             f"got {list(features.shape)} and {list(positives.shape)}")
        weights = positives.to(self.sums.device, torch.float32)
        unit = F.normalize(features.detach().to(self.sums.device, torch.float32), dim=-1)
        self.sums += weights.T @ unit
        self._counts += weights.sum(dim=0)

    def merge(self, other: "PrototypeBank") -> None:
        """Add another bank's sums and counts to this one."""
        if other.sums.shape != self.sums.shape:
            raise ValueError(f"cannot merge a bank of shape {list(other.sums.shape)} into {list(self.sums.shape)}")
        self.sums += other.sums.to(self.sums.device)
        self._counts += other.counts.to(self.sums.device)

    def means(self) -> tuple[Tensor, Tensor]:
        """(prototypes [C, d] L2-normalised, zero where unavailable; available bool [C])."""
        available = self._counts > 0
        return F.normalize(self.sums, dim=-1) * available[:, None], available

    def state(self, min_count: int = 1) -> dict[str, Tensor]:
        """``{"sums": [C, d], "counts": [C]}`` on the CPU, for sending. Rows summed over fewer than
        ``min_count`` features are sent as zeros: a row of one study *is* that study's feature."""
        sums, counts = self.sums.cpu().clone(), self._counts.cpu().clone()
        few = counts < min_count
        sums[few], counts[few] = 0.0, 0.0
        return {"sums": sums, "counts": counts}

    @classmethod
    def from_state(cls, state: Mapping[str, Tensor | np.ndarray]) -> "PrototypeBank":
        """Rebuild a bank from :meth:`state` (tensors or arrays), validating what a site sent."""
        if not isinstance(state, Mapping) or set(state) != {"sums", "counts"}:
            keys = sorted(map(str, state)) if isinstance(state, Mapping) else type(state).__name__
            raise ValueError(f"prototype state must have exactly the keys 'counts' and 'sums', got {keys}")
        sums, counts = _as_float(state["sums"], "sums"), _as_float(state["counts"], "counts")
        if sums.dim() != 2 or counts.dim() != 1 or counts.shape[0] != sums.shape[0]:
            raise ValueError(f"prototype sums must be [C, d] and counts [C], got {list(sums.shape)} "
                             f"and {list(counts.shape)}")
        if not bool(torch.isfinite(sums).all() and torch.isfinite(counts).all()):
            raise ValueError("prototype sums and counts must be finite")
        if bool((counts < 0).any()):
            raise ValueError("prototype counts must be non-negative")
        # A sum of n unit vectors has norm at most n: anything larger did not come from add().
        if bool((sums.norm(dim=-1) > counts * (1 + 1e-3) + 1e-3).any()):
            raise ValueError("prototype sums exceed their counts (a sum of n unit features has norm <= n)")
        bank = cls(*sums.shape)
        bank.sums, bank._counts = sums.clone(), counts.clone()
        return bank


def _as_float(value: Tensor | np.ndarray, name: str) -> Tensor:
    try:
        return torch.as_tensor(value, dtype=torch.float32)
    except (TypeError, ValueError, RuntimeError) as exc:
        raise ValueError(f"prototype {name} must be numeric: {exc}") from None
