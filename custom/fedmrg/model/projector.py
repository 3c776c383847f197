"""Maps the encoder's patch tokens to visual tokens in the LLM's embedding space."""

from __future__ import annotations

import math

import torch.nn.functional as F
from torch import Tensor, nn

from fedmrg.errors import ConfigError


class VisualProjector(nn.Module):
    """Pool each view's patch grid to g x g, then Linear + LayerNorm into the LLM's embedding space.

    Pooling comes first so that the Linear runs on ``g*g`` tokens per view, not on every patch, and
    the LLM sees ``g*g`` tokens per view (``tokens_per_view = 0`` keeps every patch). The LayerNorm's
    gain starts at ``init_std``, the spread of the LLM's own token embeddings: at a gain of 1 the
    visual tokens would be about ``1 / init_std`` times larger than any word (14x for the demo LLM,
    50x for LLaMA-sized ones), and would drown the text prompt around them.
    """

    def __init__(
        self, in_dim: int, out_dim: int, grid: tuple[int, int], tokens_per_view: int, init_std: float = 1.0
    ) -> None:
        super().__init__()
        self.grid = grid
        self.side = math.isqrt(tokens_per_view)
        if self.side * self.side != tokens_per_view:
            raise ConfigError(f"model.visual_tokens: {tokens_per_view} is not a square number (g x g per view)")
        if self.side > min(grid):
            raise ConfigError(
                f"model.visual_tokens: {tokens_per_view} tokens per view need a {self.side} x "
                f"{self.side} grid, but the encoder's patch grid is only {grid[0]} x {grid[1]}"
            )
        self.tokens_per_view: int = tokens_per_view or grid[0] * grid[1]
        self.proj = nn.Linear(in_dim, out_dim)
        self.norm = nn.LayerNorm(out_dim)
        nn.init.constant_(self.norm.weight, init_std)

    def forward(self, tokens: Tensor, view_mask: Tensor) -> tuple[Tensor, Tensor]:
        """``tokens`` [B, V, N, H] -> embeds [B, V*M, D] and mask [B, V*M] (False for padded views)."""
        batch, views, patches, hidden = tokens.shape
        if patches != self.grid[0] * self.grid[1]:
            raise ValueError(f"expected {self.grid[0]}x{self.grid[1]} patch tokens per view, got {patches}")
        x = tokens.reshape(batch * views, patches, hidden)
        if self.side:
            x = x.transpose(1, 2).reshape(batch * views, hidden, *self.grid)
            x = F.adaptive_avg_pool2d(x, self.side).flatten(2).transpose(1, 2)
        embeds = self.norm(self.proj(x)).reshape(batch, views * self.tokens_per_view, -1)
        mask = view_mask.repeat_interleave(self.tokens_per_view, dim=1)
        return embeds * mask[..., None].to(embeds.dtype), mask
