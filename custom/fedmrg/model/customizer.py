"""Instance-specific prompts by conditional affine transforms of learnable prompts (MRG-LLM).

Two forms, both driven by the pooled image feature ``v``:

- ``prompt`` (prompt-wise): learnable prompts ``B`` [n, D]; an MLP of ``v`` gives every prompt token
  its own ``(gamma_i, beta_i)`` in R^D, and ``p_i = gamma_i * B_i + beta_i``.
- ``promptbook``: K learnable prompt sets ``B`` [K, n, D]; ``a = softmax(W v)`` mixes them,
  ``P = sum_k a_k B_k``, and one shared ``(gamma, beta)`` in R^D from an MLP of ``v`` is applied to
  every token of ``P``.

The layers that produce ``gamma - 1``, ``beta`` and the book logits start at zero, so at
initialisation every input gets exactly the static prompts (:meth:`PromptCustomizer.static_prompts`)
and training starts from plain prompt tuning.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

MODES = ("none", "prompt", "promptbook")


class PromptCustomizer(nn.Module):
    """``n`` prompt embeddings [B, n, D] customised per study from its pooled image feature.

    Parameters (f = feature_dim, h = hidden, D = embed_dim):

    - prompt: ``n*D`` prompts + ``f*h + h`` trunk + ``(h + 1) * n * 2 * D`` output layer;
    - promptbook: ``K*n*D`` books + ``(f + 1) * K`` selector + ``f*h + h`` trunk + ``(h + 1) * 2 * D``.

    The output layer dominates with a large LLM: at D = 4096, n = 8, K = 4, h = 128 it is 8.5 M
    parameters prompt-wise (1.1 M for the promptbook), which is why ``hidden`` is kept small.
    """

    def __init__(
        self,
        mode: str,
        num_prompts: int,
        num_books: int,
        feature_dim: int,
        embed_dim: int,
        hidden: int,
        init_std: float = 0.02,
    ) -> None:
        super().__init__()
        if mode not in MODES:
            raise ValueError(f"prompt mode must be one of {', '.join(MODES)}, got {mode!r}")
        self.mode = mode
        self.embed_dim = embed_dim
        self.num_tokens: int = 0 if mode == "none" else num_prompts
        if mode == "none":
            return
        books = 1 if mode == "prompt" else num_books
        self.prompts = nn.Parameter(torch.randn(books, num_prompts, embed_dim) * init_std)
        self.trunk = nn.Sequential(nn.Linear(feature_dim, hidden), nn.GELU())
        affine_tokens = num_prompts if mode == "prompt" else 1
        self.affine = _zero(nn.Linear(hidden, affine_tokens * 2 * embed_dim))
        if mode == "promptbook":
            self.selector = _zero(nn.Linear(feature_dim, num_books))

    def forward(self, pooled: Tensor) -> Tensor:
        """[B, feature_dim] -> [B, n, D] ([B, 0, D] in mode ``none``)."""
        if self.mode == "none":
            return pooled.new_zeros(pooled.shape[0], 0, self.embed_dim)
        delta = self.affine(self.trunk(pooled)).reshape(pooled.shape[0], -1, 2, self.embed_dim)
        gamma, beta = 1 + delta[:, :, 0], delta[:, :, 1]  # [B, n or 1, D]
        if self.mode == "prompt":
            base = self.prompts[0].expand(pooled.shape[0], -1, -1)
        else:
            base = self._mix(torch.softmax(self.selector(pooled), dim=-1))
        return gamma * base + beta

    def static_prompts(self) -> Tensor:
        """[n, D]: the prompts every input gets at initialisation."""
        if self.mode == "none":
            return torch.zeros(0, self.embed_dim)
        if self.mode == "prompt":
            return self.prompts[0]
        uniform = torch.softmax(self.prompts.new_zeros(1, self.prompts.shape[0]), dim=-1)
        return self._mix(uniform)[0]

    def _mix(self, weights: Tensor) -> Tensor:
        """[B, K] book weights -> [B, n, D]; an explicit weighted sum, so that uniform weights give
        exactly the same result for every batch size."""
        return (weights[:, :, None, None] * self.prompts).sum(dim=1)


def _zero(layer: nn.Linear) -> nn.Linear:
    nn.init.zeros_(layer.weight)
    nn.init.zeros_(layer.bias)
    return layer
