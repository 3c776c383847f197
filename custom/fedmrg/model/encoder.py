"""The learnable visual encoder: a 2-D MONAI ViT applied to every real view of a study.

A study is ``[B, V, 1, S, S]`` with a ``[B, V]`` view mask (padded view slots are zero images).
The ViT runs only on the real views, so a padded slot costs nothing and cannot leak into a real
study's features; a learnable embedding per view slot (frontal, lateral, ...) tells the tokens of
one view from another's.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import torch
from monai.networks.nets import ViT
from torch import Tensor, nn

from fedmrg.config import EncoderConfig
from fedmrg.errors import ConfigError

log = logging.getLogger(__name__)

# Keys that MONAI's TransformerBlock keeps "for checkpoint compatibility" but never uses without
# cross-attention; checkpoints from older MONAI versions lack them.
_UNUSED_VIT_KEYS = ("norm_cross_attn.",)
_SHOWN = 5  # keys named in an error message


@dataclass
class EncodedStudy:
    tokens: Tensor  # [B, V, N, H] patch tokens of every view slot (zeros for padded views)
    view_mask: Tensor  # [B, V] bool
    pooled: Tensor  # [B, H] masked mean over the patch tokens of the real views


class StudyEncoder(nn.Module):
    """MONAI ViT over the real views of each study, plus a learnable per-view-slot embedding."""

    def __init__(self, cfg: EncoderConfig, image_size: int, max_views: int) -> None:
        super().__init__()
        if image_size % cfg.patch_size:
            raise ConfigError(
                f"model.encoder.patch_size: {cfg.patch_size} does not divide data.image_size {image_size}"
            )
        self.vit = ViT(
            in_channels=1,
            img_size=(image_size, image_size),
            patch_size=(cfg.patch_size, cfg.patch_size),
            hidden_size=cfg.hidden_size,
            mlp_dim=cfg.mlp_dim,
            num_layers=cfg.layers,
            num_heads=cfg.heads,
            proj_type="conv",
            classification=False,
            dropout_rate=cfg.dropout,
            spatial_dims=2,
        )
        for name, parameter in self.vit.named_parameters():
            if "norm_cross_attn" in name:  # MONAI builds it in every block; unused without cross-attention
                parameter.requires_grad_(False)
        side = image_size // cfg.patch_size
        self.grid: tuple[int, int] = (side, side)
        self.out_dim: int = cfg.hidden_size
        self.image_size = image_size
        self.max_views = max_views
        # Zero at the start, so that a pretrained ViT's features are unchanged until training moves it.
        self.view_embedding = nn.Parameter(torch.zeros(max_views, cfg.hidden_size))

    def forward(self, image: Tensor, view_mask: Tensor) -> EncodedStudy:
        self._check_input(image, view_mask)
        batch, views = view_mask.shape
        real, _ = self.vit(image[view_mask])  # [n_real, N, H]
        slot = torch.arange(views, device=view_mask.device).expand(batch, views)[view_mask]
        real = real + self.view_embedding[slot][:, None, :]
        tokens = real.new_zeros(batch, views, *real.shape[1:])
        tokens[view_mask] = real
        patches = view_mask.sum(dim=1, keepdim=True) * tokens.shape[2]
        pooled = tokens.sum(dim=(1, 2)) / patches.clamp(min=1).to(tokens.dtype)
        return EncodedStudy(tokens=tokens, view_mask=view_mask, pooled=pooled)

    def _check_input(self, image: Tensor, view_mask: Tensor) -> None:
        size = self.image_size
        if image.dim() != 5 or tuple(image.shape[2:]) != (1, size, size):
            raise ValueError(f"image must be [B, V, 1, {size}, {size}], got {list(image.shape)}")
        if view_mask.dtype != torch.bool or tuple(view_mask.shape) != tuple(image.shape[:2]):
            raise ValueError(
                f"view_mask must be bool {list(image.shape[:2])}, got {view_mask.dtype} {list(view_mask.shape)}"
            )
        if view_mask.shape[1] > self.max_views:
            raise ValueError(f"{view_mask.shape[1]} view slots, but the encoder has {self.max_views}")
        if not bool(view_mask.any(dim=1).all()):
            raise ValueError("every study needs at least one real view")


def load_encoder_weights(encoder: StudyEncoder, path: str | os.PathLike) -> None:
    """Load a local checkpoint of the whole :class:`StudyEncoder` or of its inner ViT.

    Keys may carry a prefix (``vit.``, ``module.``, ``encoder.`` ...): the prefix that matches the
    most encoder keys is used. Every ViT weight must be in the file with the encoder's shape; the
    view embedding may be absent (it then keeps its zero start). Keys of the file that match
    nothing are ignored (a classification head, say) and logged.
    """
    path = Path(path)
    state = _read_state_dict(path)
    target = encoder.state_dict()
    mapping = _align_keys(list(state), set(target))
    if not mapping:
        raise ConfigError(
            f"{path}: no key matches the encoder (file keys: {_names(state)}; expected e.g. {_names(target)})"
        )
    mismatched = [
        f"{key} {list(state[key].shape)} vs {list(target[name].shape)}"
        for key, name in mapping.items()
        if state[key].shape != target[name].shape
    ]
    if mismatched:
        raise ConfigError(
            f"{path}: {len(mismatched)} weights have the wrong shape (file vs encoder): "
            f"{'; '.join(mismatched[:_SHOWN])} (check model.encoder and data.image_size)"
        )
    loaded = set(mapping.values())
    missing = [
        name
        for name in target
        if name.startswith("vit.") and name not in loaded and not any(part in name for part in _UNUSED_VIT_KEYS)
    ]
    if missing:
        raise ConfigError(f"{path}: {len(missing)} ViT weights are not in the file: {_names(missing)}")
    encoder.load_state_dict({name: state[key] for key, name in mapping.items()}, strict=False)
    unused = len(state) - len(mapping)
    log.info("loaded %d encoder weights from %s (%d file keys unused)", len(mapping), path, unused)


def _read_state_dict(path: Path) -> Mapping[str, Tensor]:
    if not path.is_file():
        raise ConfigError(f"{path}: encoder weights file not found (model.encoder.pretrained)")
    suffix = path.suffix.lower()
    if suffix not in (".safetensors", ".pt", ".pth"):
        raise ConfigError(f"{path}: encoder weights must be a .safetensors, .pt or .pth file")
    try:
        if suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(path), device="cpu")
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # corrupt or foreign files raise many kinds of errors
        raise ConfigError(f"{path}: cannot read encoder weights ({exc.__class__.__name__}: {exc})") from None
    if isinstance(state, Mapping) and isinstance(state.get("state_dict"), Mapping):
        state = state["state_dict"]  # a training checkpoint that wraps the weights
    if (
        not isinstance(state, Mapping)
        or not state
        or not all(isinstance(k, str) and isinstance(v, Tensor) for k, v in state.items())
    ):
        raise ConfigError(f"{path}: not a state dict (a mapping of parameter names to tensors)")
    return state


def _align_keys(source: list[str], target: set[str]) -> dict[str, str]:
    """File key -> encoder key, for the (prefix removed, prefix added) pair that matches most keys."""
    prefixes = {""} | {key[: i + 1] for key in source for i, char in enumerate(key) if char == "."}
    best: dict[str, str] = {}
    for strip in sorted(prefixes):
        for add in ("", "vit."):
            mapping = {
                key: add + key[len(strip) :]
                for key in source
                if key.startswith(strip) and add + key[len(strip) :] in target
            }
            if len(mapping) > len(best):
                best = mapping
    return best


def _names(keys) -> str:
    keys = list(keys)
    more = f", ... ({len(keys)} in all)" if len(keys) > _SHOWN else ""
    return ", ".join(keys[:_SHOWN]) + more
