"""FedMRG's client-aware contrastive learning.

Two projection heads on the pooled image feature: ``generic`` (federated) and ``client`` (stays at
its site). Both are trained with image-report InfoNCE within the batch; the generic head is also
pulled toward global per-finding prototypes (:func:`prototype_nce`). Prototypes are built from
per-class sums and counts (:class:`PrototypeBank`): a site sends its bank's state, the server
merges the banks, and the merged means are the global prototypes.
"""

from __future__ import annotations

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


def prototype_nce(
    features: Tensor, positives: Tensor, prototypes: Tensor, available: Tensor, temperature: float
) -> Tensor:
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
