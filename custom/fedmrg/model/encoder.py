"""The learnable visual encoder: an image backbone applied to every real view of a study.

A study is ``[B, V, 1, S, S]`` with a ``[B, V]`` view mask (padded view slots are zero images).
The backbone runs only on the real views, so a padded slot costs nothing and cannot leak into a
real study's features; a learnable embedding per view slot (frontal, lateral, ...) tells the
tokens of one view from another's.

Backbones (``model.encoder.backbone``), each mapping ``[n, 1, S, S]`` images in ``[0, 1]`` to
patch tokens ``[n, N, out_dim]`` on a ``grid`` of ``N = h * w``:

- ``vit``: a MONAI ViT (the default; weights from scratch or an optional state-dict file);
- ``cnn``: a MONAI DenseNet, its last feature map (after a ReLU) as tokens, so that a hospital's
  own CNN weights can be used (an optional state-dict file);
- ``hf``: a Hugging Face vision model (ViT, Swin, DINOv2, SigLIP or CLIP vision tower) from a
  local ``save_pretrained`` folder, loaded offline; its patch tokens (CLS and registers dropped).
"""

from __future__ import annotations

import inspect
import json
import logging
import math
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from monai.networks.nets import DenseNet, ViT
from torch import Tensor, nn

from fedmrg.config import EncoderConfig
from fedmrg.errors import ConfigError

log = logging.getLogger(__name__)

_SHOWN = 5  # keys named in an error message


# ------------------------------------------------------------------------------------ backbones
class ViTBackbone(ViT):
    """MONAI's ViT returning its patch tokens only; a subclass, so that the parameter names (and
    old checkpoints of ``encoder.vit.*``) stay those of MONAI's ViT."""

    label = "ViT"
    # Keys that MONAI's TransformerBlock keeps "for checkpoint compatibility" but never uses
    # without cross-attention; checkpoints from older MONAI versions lack them.
    optional_weights: tuple[str, ...] = ("norm_cross_attn.",)

    def __init__(self, cfg: EncoderConfig, image_size: int) -> None:
        if image_size % cfg.patch_size:
            raise ConfigError(
                f"model.encoder.patch_size: {cfg.patch_size} does not divide data.image_size {image_size}"
            )
        super().__init__(
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
        for name, parameter in self.named_parameters():
            if "norm_cross_attn" in name:  # MONAI builds it in every block; unused without cross-attention
                parameter.requires_grad_(False)
        side = image_size // cfg.patch_size
        self.grid: tuple[int, int] = (side, side)
        self.out_dim: int = cfg.hidden_size

    def forward(self, x: Tensor) -> Tensor:
        tokens, _ = super().forward(x)
        return tokens


class DenseNetBackbone(nn.Module):
    """MONAI DenseNet (2-D, one channel) without its classifier: the final feature map, after
    the ReLU the classifier would apply, flattened to ``[n, h*w, C]`` tokens.

    The state dict is the DenseNet's own (``features.*``), so a MONAI ``DenseNet`` checkpoint
    loads as is (its ``class_layers.*`` are ignored).
    """

    label = "DenseNet"
    # Older torch checkpoints lack BatchNorm's step counter; it only matters for momentum=None.
    optional_weights: tuple[str, ...] = ("num_batches_tracked",)

    def __init__(self, cfg: EncoderConfig, image_size: int) -> None:
        super().__init__()
        net = DenseNet(
            spatial_dims=2,
            in_channels=1,
            out_channels=1,
            init_features=cfg.init_features,
            growth_rate=cfg.growth_rate,
            block_config=tuple(cfg.block_config),
            dropout_prob=cfg.dropout,
        )
        self.features = net.features
        self.out_dim: int = net.class_layers.out.in_features
        side = densenet_grid_side(image_size, len(cfg.block_config))
        if side < 1:
            raise ConfigError(
                f"data.image_size: {image_size} is too small for the cnn backbone with "
                f"{len(cfg.block_config)} dense blocks (its last feature map would be empty)"
            )
        self.grid: tuple[int, int] = (side, side)

    def forward(self, x: Tensor) -> Tensor:
        features = F.relu(self.features(x))  # [n, C, h, w]
        return features.flatten(2).transpose(1, 2)


def densenet_grid_side(image_size: int, blocks: int) -> int:
    """Side of MONAI DenseNet's last feature map: the stride-2 stem conv (k7, p3) and max pool
    (k3, p1) round up, each of the ``blocks - 1`` transitions' 2x2 average pools rounds down."""
    side = (image_size - 1) // 2 + 1
    side = (side - 1) // 2 + 1
    for _ in range(blocks - 1):
        side //= 2
    return side


# Hugging Face families: model_type -> (class name, vision tower of a dual-encoder model,
# leading non-patch tokens, default mean, default std). Means and stds are the families' usual
# preprocessing (transformers' image processors), used when the folder has no
# preprocessor_config.json.
_IMAGENET = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
_HALF = ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5))
_CLIP = ((0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711))


@dataclass(frozen=True)
class _HFFamily:
    cls: str  # transformers class that from_pretrained loads
    tower: bool  # a dual (image-text) model whose ``vision_model`` is taken
    cls_tokens: int  # CLS tokens before the patch tokens (registers are counted from the config)
    norm: tuple[tuple[float, ...], tuple[float, ...]]
    kwargs: tuple[tuple[str, Any], ...] = ()


_HF_FAMILIES = {
    "vit": _HFFamily("ViTModel", False, 1, _HALF, (("add_pooling_layer", False),)),
    "swin": _HFFamily("SwinModel", False, 0, _IMAGENET, (("add_pooling_layer", False),)),
    "dinov2": _HFFamily("Dinov2Model", False, 1, _IMAGENET),
    "dinov2_with_registers": _HFFamily("Dinov2WithRegistersModel", False, 1, _IMAGENET),
    "siglip_vision_model": _HFFamily("SiglipVisionModel", False, 0, _HALF),
    "siglip": _HFFamily("SiglipModel", True, 0, _HALF),
    "clip_vision_model": _HFFamily("CLIPVisionModel", False, 1, _CLIP),
    "clip": _HFFamily("CLIPModel", True, 1, _CLIP),
}


class HFBackbone(nn.Module):
    """A Hugging Face vision model from a local folder, loaded offline, as a patch-token encoder.

    Grayscale images in ``[0, 1]`` are repeated to the model's channels and normalised as its
    image processor would (``preprocessor_config.json``'s ``image_mean``/``image_std``, else the
    family's usual values); an image size other than the model's is handled by interpolating the
    position embeddings. Tokens are ``last_hidden_state`` without CLS and register tokens.
    """

    label = "Hugging Face model"
    optional_weights: tuple[str, ...] = ()

    def __init__(self, folder: str | os.PathLike | None, image_size: int) -> None:
        super().__init__()
        folder = _hf_folder(folder)
        family, model = _load_hf_model(folder)
        config = model.config
        self.model = model
        self.image_size = image_size
        self.channels = int(getattr(config, "num_channels", 3))
        mean, std = _hf_normalisation(folder, family, self.channels)
        self.register_buffer("mean", torch.tensor(mean).view(1, -1, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std).view(1, -1, 1, 1), persistent=False)
        self.skip = family.cls_tokens + int(getattr(config, "num_register_tokens", 0) or 0)
        self.interpolate = _needs_interpolation(model, config, folder, image_size)
        patch = getattr(config, "patch_size", None)
        if isinstance(patch, int) and image_size % patch:
            log.warning(
                "%s: patch size %d does not divide data.image_size %d; the last %d pixel rows and columns are not seen",
                folder,
                patch,
                image_size,
                image_size % patch,
            )
        self.out_dim: int = int(config.hidden_size)
        self.grid: tuple[int, int] = self._probe_grid(folder, config)
        self.train()  # like every freshly built module; the trainer sets the mode

    def forward(self, x: Tensor) -> Tensor:
        x = (x.expand(-1, self.channels, -1, -1) - self.mean) / self.std
        kwargs = {"interpolate_pos_encoding": True} if self.interpolate else {}
        hidden = self.model(pixel_values=x, **kwargs).last_hidden_state
        return hidden[:, self.skip :]

    def _probe_grid(self, folder: Path, config: Any) -> tuple[int, int]:
        """Run one blank image through the model: the real token count, and a clear error if
        the model cannot take this image size."""
        self.eval()
        try:
            with torch.no_grad():
                tokens = self(torch.zeros(1, 1, self.image_size, self.image_size))
        except Exception as exc:  # transformers raises ValueError, RuntimeError ... on a size it cannot take
            raise ConfigError(
                f"model.encoder.pretrained: {folder} cannot encode {self.image_size} x {self.image_size} "
                f"images ({exc.__class__.__name__}: {exc}); set data.image_size: {_hf_image_size(config)}"
            ) from None
        count = tokens.shape[1]
        side = math.isqrt(count)
        if side * side != count or side < 1:
            raise ConfigError(
                f"model.encoder.pretrained: {folder} gives {count} patch tokens per image (after "
                f"dropping {self.skip} CLS/register tokens), not a square grid"
            )
        if tokens.shape[2] != self.out_dim:
            raise ConfigError(
                f"model.encoder.pretrained: {folder}: tokens of width {tokens.shape[2]}, config says {self.out_dim}"
            )
        return (side, side)


def _hf_folder(folder: str | os.PathLike | None) -> Path:
    if not folder:
        raise ConfigError(
            "model.encoder.pretrained: backbone 'hf' needs a local Hugging Face model folder (config.json + weights)"
        )
    path = Path(folder).expanduser()
    if not path.is_dir():
        raise ConfigError(
            f"model.encoder.pretrained: {folder} is not an existing folder; backbone 'hf' must be given a "
            "local folder written by save_pretrained (config.json + weights), never a hub id: nothing is "
            "downloaded (fetch e.g. microsoft/rad-dino on a connected machine and copy the folder)"
        )
    if not (path / "config.json").is_file():
        raise ConfigError(f"model.encoder.pretrained: {path} has no config.json (a save_pretrained folder is needed)")
    return path


def _load_hf_model(folder: Path) -> tuple[_HFFamily, nn.Module]:
    try:
        model_type = json.loads((folder / "config.json").read_text(encoding="utf-8")).get("model_type")
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, AttributeError) as exc:
        raise ConfigError(f"model.encoder.pretrained: {folder}/config.json: not a JSON object ({exc})") from None
    family = _HF_FAMILIES.get(model_type)
    if family is None:
        raise ConfigError(
            f"model.encoder.pretrained: {folder} holds a {model_type!r} model; backbone 'hf' supports "
            f"model_type {', '.join(sorted(_HF_FAMILIES))}"
        )
    import transformers

    cls = getattr(transformers, family.cls)
    try:
        model, info = cls.from_pretrained(
            folder,
            local_files_only=True,
            dtype=torch.float32,  # the other modules are float32; a bf16 folder would not mix
            output_loading_info=True,
            **dict(family.kwargs),
        )
    except Exception as exc:  # missing or corrupt weight files raise many kinds of errors
        raise ConfigError(
            f"model.encoder.pretrained: {folder}: cannot load the {family.cls} ({exc.__class__.__name__}: {exc})"
        ) from None
    missing = [key for key in info.get("missing_keys", ()) if not family.tower or key.startswith("vision_model.")]
    if missing:
        raise ConfigError(
            f"model.encoder.pretrained: {folder}: {len(missing)} weights are not in the folder "
            f"(they would be random): {_names(sorted(missing))}"
        )
    if family.tower:
        model = model.vision_model  # a SiglipVisionModel / CLIPVisionModel: the same keys as a vision-only folder
    _drop_unused(model)
    return family, model


def _drop_unused(model: nn.Module) -> None:
    """Parts that never touch the patch tokens get no gradient: SigLIP's attention-pooling head
    (removed, it would cost compute), CLIP's post-layernorm of the CLS token and mask tokens
    (frozen, so that they are neither trained nor sent to the federation)."""
    if getattr(model, "use_head", False) and hasattr(model, "head"):
        model.use_head = False
        del model.head
    for name, parameter in model.named_parameters():
        clip_post_norm = name.startswith("post_layernorm.") and "clip" in type(model).__name__.lower()
        if clip_post_norm or name.endswith("mask_token"):
            parameter.requires_grad_(False)


def _hf_normalisation(folder: Path, family: _HFFamily, channels: int) -> tuple[list[float], list[float]]:
    """``image_mean``/``image_std`` of the folder's preprocessor_config.json, else the family's."""
    mean, std = family.norm
    file = folder / "preprocessor_config.json"
    if file.is_file():
        try:
            processor = json.loads(file.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise ConfigError(f"model.encoder.pretrained: {file}: not valid JSON ({exc})") from None
        if processor.get("do_normalize", True) is False:
            mean, std = (0.0,), (1.0,)
        else:
            mean, std = processor.get("image_mean", mean), processor.get("image_std", std)
    mean, std = _per_channel(mean, channels), _per_channel(std, channels)
    if any(s <= 0 for s in std):
        raise ConfigError(f"model.encoder.pretrained: {folder}: image_std must be positive, got {std}")
    return mean, std


def _per_channel(values: Any, channels: int) -> list[float]:
    values = [float(v) for v in (values if isinstance(values, (list, tuple)) else [values])]
    return values[:channels] if len(values) >= channels else values[:1] * channels


def _hf_image_size(config: Any) -> int | list[int] | None:
    size = getattr(config, "image_size", None)
    if isinstance(size, (list, tuple)) and len(set(size)) == 1:
        return int(size[0])
    return size


def _needs_interpolation(model: nn.Module, config: Any, folder: Path, image_size: int) -> bool:
    """True when the model was trained at another size and its forward can interpolate the
    position embeddings; a model that cannot is caught by the probe in :class:`HFBackbone`."""
    native = _hf_image_size(config)
    if native is None or native == image_size:
        return False
    if "interpolate_pos_encoding" in inspect.signature(model.forward).parameters:
        log.info("%s: trained at %s px; interpolating its position embeddings to %d px", folder, native, image_size)
        return True
    return False  # DINOv2 always interpolates


def build_backbone(cfg: EncoderConfig, image_size: int) -> nn.Module:
    """The image backbone ``model.encoder`` names, for ``image_size`` x ``image_size`` inputs.

    The module has ``grid: tuple[int, int]`` and ``out_dim: int`` and maps ``[n, 1, S, S]`` float
    images (in ``[0, 1]``) to tokens ``[n, grid[0] * grid[1], out_dim]``. ``vit`` and ``cnn`` are
    built with fresh weights (``pretrained`` files are read by :func:`load_backbone_weights` or
    :func:`load_encoder_weights`); ``hf`` loads architecture and weights from its folder.
    """
    if cfg.backbone == "vit":
        return ViTBackbone(cfg, image_size)
    if cfg.backbone == "cnn":
        return DenseNetBackbone(cfg, image_size)
    if cfg.backbone == "hf":
        return HFBackbone(cfg.pretrained, image_size)
    raise ConfigError(f"model.encoder.backbone: {cfg.backbone!r} is not one of 'vit', 'cnn', 'hf'")


# --------------------------------------------------------------------------------------- encoder
@dataclass
class EncodedStudy:
    tokens: Tensor  # [B, V, N, H] patch tokens of every view slot (zeros for padded views)
    view_mask: Tensor  # [B, V] bool
    pooled: Tensor  # [B, H] masked mean over the patch tokens of the real views


class StudyEncoder(nn.Module):
    """The backbone over the real views of each study, plus a learnable per-view-slot embedding.

    The backbone is the submodule named after its kind (``vit``, ``cnn``, ``hf``), so that the
    default ViT keeps the parameter names ``vit.*`` of earlier checkpoints.
    """

    def __init__(self, cfg: EncoderConfig, image_size: int, max_views: int) -> None:
        super().__init__()
        cfg.check_frozen_weights()
        self.backbone_kind: str = cfg.backbone
        backbone = build_backbone(cfg, image_size)
        self.add_module(self.backbone_kind, backbone)
        self.grid: tuple[int, int] = backbone.grid
        self.out_dim: int = backbone.out_dim
        self.image_size = image_size
        self.max_views = max_views
        # Zero at the start, so that a pretrained backbone's features are unchanged until training moves it.
        self.view_embedding = nn.Parameter(torch.zeros(max_views, self.out_dim))
        self.frozen = cfg.freeze
        if self.frozen:
            backbone.requires_grad_(False)
            backbone.eval()

    def train(self, mode: bool = True) -> StudyEncoder:
        """A frozen backbone stays in eval mode (its BatchNorm statistics and dropout as pretrained)."""
        super().train(mode)
        if self.frozen:
            self.backbone.eval()
        return self

    @property
    def backbone(self) -> nn.Module:
        return getattr(self, self.backbone_kind)

    def forward(self, image: Tensor, view_mask: Tensor) -> EncodedStudy:
        self._check_input(image, view_mask)
        batch, views = view_mask.shape
        real = self.backbone(image[view_mask])  # [n_real, N, H]
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


# --------------------------------------------------------------------------------------- weights
def load_encoder_weights(encoder: StudyEncoder, path: str | os.PathLike) -> None:
    """Load a local checkpoint of the whole :class:`StudyEncoder` or of its backbone alone.

    Keys may carry a prefix (``vit.``, ``module.``, ``encoder.`` ...): the prefix that matches the
    most encoder keys is used. Every backbone weight (BatchNorm statistics included) must be in
    the file with the encoder's shape; the view embedding may be absent (it then keeps its zero
    start). Keys of the file that match nothing are ignored (a classification head, say) and
    logged. For an ``hf`` backbone given its folder, the weights came with the folder: nothing to do.
    """
    backbone = encoder.backbone
    if isinstance(backbone, HFBackbone) and Path(path).is_dir():
        log.debug("%s: the hf backbone's weights were loaded with its folder", path)
        return
    _load_weights(encoder, path, f"{encoder.backbone_kind}.", backbone)


def load_backbone_weights(backbone: nn.Module, path: str | os.PathLike) -> None:
    """Load a local state-dict file into a module from :func:`build_backbone` (what
    ``backbone.state_dict()`` wrote, under any prefix), with :func:`load_encoder_weights`' checks."""
    _load_weights(backbone, path, "", backbone)


def _load_weights(module: nn.Module, path: str | os.PathLike, prefix: str, backbone: nn.Module) -> None:
    """``module``'s weights from ``path``; every key of ``module`` under ``prefix`` (the backbone's)
    must be in the file, except the backbone's ``optional_weights``."""
    path = Path(path)
    state = _read_state_dict(path)
    target = module.state_dict()
    mapping = _align_keys(list(state), set(target), prefix)
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
    optional = getattr(backbone, "optional_weights", ())
    missing = [
        name
        for name in target
        if name.startswith(prefix) and name not in loaded and not any(part in name for part in optional)
    ]
    if missing:
        label = getattr(backbone, "label", "backbone")
        raise ConfigError(f"{path}: {len(missing)} {label} weights are not in the file: {_names(missing)}")
    module.load_state_dict({name: state[key] for key, name in mapping.items()}, strict=False)
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


def _align_keys(source: list[str], target: set[str], prefix: str) -> dict[str, str]:
    """File key -> target key, for the (prefix removed, prefix added) pair that matches most keys;
    the added prefix is ``""`` or the backbone's (a file of the backbone alone). Counted in one
    pass over the keys' dot positions: a DenseNet has a thousand keys and as many prefixes."""
    adds = tuple(dict.fromkeys(("", prefix)))
    counts: dict[tuple[str, str], int] = {}
    for key in source:
        for cut in [0] + [i + 1 for i, char in enumerate(key) if char == "."]:
            for add in adds:
                if add + key[cut:] in target:
                    pair = (key[:cut], add)
                    counts[pair] = counts.get(pair, 0) + 1
    if not counts:
        return {}
    strip, add = min(counts, key=lambda pair: (-counts[pair], pair[0], adds.index(pair[1])))
    return {
        key: add + key[len(strip) :] for key in source if key.startswith(strip) and add + key[len(strip) :] in target
    }


def _names(keys) -> str:
    keys = list(keys)
    more = f", ... ({len(keys)} in all)" if len(keys) > _SHOWN else ""
    return ", ".join(keys[:_SHOWN]) + more
