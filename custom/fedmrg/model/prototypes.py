"""Per-finding prototype bank: class-wise sums and counts of unit-normalised image features.

A site adds the generic contrastive head's features of its studies; it sends the bank's state
(rows of too few studies zeroed); the server merges the sites' banks and sends back the means, the
global prototypes. Torch only, so that the server can pool banks without the model stack.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor


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
        if (
            features.shape[0] != positives.shape[0]
            or tuple(positives.shape[1:]) != (self.sums.shape[0],)
            or tuple(features.shape[1:]) != (self.sums.shape[1],)
        ):
            raise ValueError(
                f"expected features [B, {self.sums.shape[1]}] and positives [B, {self.sums.shape[0]}], "
                f"got {list(features.shape)} and {list(positives.shape)}"
            )
        weights = positives.to(self.sums.device, torch.float32)
        unit = F.normalize(features.detach().to(self.sums.device, torch.float32), dim=-1)
        self.sums += weights.T @ unit
        self._counts += weights.sum(dim=0)

    def merge(self, other: PrototypeBank) -> None:
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
    def from_state(cls, state: Mapping[str, Tensor | np.ndarray]) -> PrototypeBank:
        """Rebuild a bank from :meth:`state` (tensors or arrays), validating what a site sent."""
        if not isinstance(state, Mapping) or set(state) != {"sums", "counts"}:
            keys = sorted(map(str, state)) if isinstance(state, Mapping) else type(state).__name__
            raise ValueError(f"prototype state must have exactly the keys 'counts' and 'sums', got {keys}")
        sums, counts = _as_float(state["sums"], "sums"), _as_float(state["counts"], "counts")
        if sums.dim() != 2 or counts.dim() != 1 or counts.shape[0] != sums.shape[0]:
            raise ValueError(
                f"prototype sums must be [C, d] and counts [C], got {list(sums.shape)} and {list(counts.shape)}"
            )
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
