"""FedMRG's dual LoRA adapters on the frozen LLM, with mutual boosting.

The ``generic`` adapter is federated; the ``specialized`` adapter stays at its site. Training runs
the generic-only path and the generic+specialized path (PEFT sums the outputs of every active
adapter) and ties them with a symmetric KL between their token distributions, each side's target
detached, so each path learns from the other without being dragged by its own gradient.

Adapters are stored in PEFT's own format (``<dir>/<name>/adapter_config.json`` +
``adapter_model.safetensors``), so ``PeftModel.from_pretrained(base, <dir>/<name>)`` reads them.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import torch
import torch.nn.functional as F
from peft import LoraConfig, PeftModel, get_peft_model, set_peft_model_state_dict
from safetensors.torch import load_file
from transformers import PreTrainedModel

from fedmrg.config import ModelConfig
from fedmrg.errors import ConfigError
from fedmrg.model.layout import ADAPTER_WEIGHTS, adapter_dir, lora_settings
from fedmrg.model.parameters import GENERIC, SPECIALIZED


def adapter_names(cfg: ModelConfig) -> tuple[str, ...]:
    """The adapters a model of this config carries, generic first."""
    return (GENERIC, SPECIALIZED) if cfg.adapters == "dual" else (GENERIC,)


def lora_config(cfg: ModelConfig) -> LoraConfig:
    return LoraConfig(**lora_settings(cfg))


def attach_adapters(llm: PreTrainedModel, cfg: ModelConfig) -> PeftModel:
    """Wrap the frozen LLM in a PeftModel carrying the config's adapters, all trainable."""
    names = adapter_names(cfg)
    try:
        with warnings.catch_warnings():  # PEFT asks transformers 5 about checkpointing by a deprecated name
            warnings.filterwarnings("ignore", message="`is_gradient_checkpointing` is deprecated")
            model = get_peft_model(llm, lora_config(cfg), adapter_name=names[0])
            for name in names[1:]:
                model.add_adapter(name, lora_config(cfg))
    except ValueError as exc:  # PEFT: unknown family without target_modules, or no module matched
        raise ConfigError(
            f"model.target_modules: cannot place LoRA adapters on this '{llm.config.model_type}' model ({exc}); "
            "name the linear layers to adapt, e.g. [q_proj, v_proj]"
        ) from None
    set_active_adapters(model, names)
    return model


def adapter_parameters(model: PeftModel, name: str) -> dict[str, torch.nn.Parameter]:
    """The LoRA parameters of one adapter, by their names in ``model``."""
    marker = f".{name}."
    return {key: p for key, p in model.named_parameters() if "lora_" in key and marker in key}


def set_active_adapters(model: PeftModel, names: Sequence[str]) -> None:
    """Activate ``names`` for the next forward passes; every adapter stays trainable.

    PEFT's ``set_adapter`` also freezes the adapters it deactivates; a training step that runs
    both paths needs gradients for all of them, so the flags are put back afterwards.
    """
    trainable = [p for p in model.parameters() if p.requires_grad]
    model.base_model.set_adapter(list(names))
    for parameter in trainable:
        parameter.requires_grad_(True)


@contextmanager
def active_adapters(model: PeftModel, names: Sequence[str]) -> Iterator[None]:
    """Run the block with only ``names`` active, then restore the previous set."""
    previous = list(model.base_model.active_adapters)
    set_active_adapters(model, names)
    try:
        yield
    finally:
        set_active_adapters(model, previous)


def symmetric_kl(logits_a: torch.Tensor, logits_b: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """KL(sg(p_b) || p_a) + KL(sg(p_a) || p_b), averaged over the positions where ``mask`` is True.

    Each direction treats the other path's distribution as a fixed target, so the gradient of the
    first term reaches only path a and that of the second only path b.
    """
    log_a = F.log_softmax(logits_a.float(), dim=-1)
    log_b = F.log_softmax(logits_b.float(), dim=-1)
    a_from_b = (log_b.detach().exp() * (log_b.detach() - log_a)).sum(-1)
    b_from_a = (log_a.detach().exp() * (log_a.detach() - log_b)).sum(-1)
    weights = mask.float()
    return ((a_from_b + b_from_a) * weights).sum() / weights.sum().clamp(min=1.0)


def save_adapters(model: PeftModel, directory: str | os.PathLike, names: Sequence[str]) -> list[Path]:
    """Write each adapter in PEFT's layout: ``directory/<name>/adapter_config.json`` + safetensors."""
    directory = Path(directory)
    model.save_pretrained(str(directory), selected_adapters=list(names))
    return [adapter_dir(directory, name) for name in names]


def load_adapter_weights(model: PeftModel, folder: str | os.PathLike, name: str) -> None:
    """Load PEFT adapter weights from ``folder`` into the existing adapter ``name``, strictly."""
    weights_file = Path(folder) / ADAPTER_WEIGHTS
    if not weights_file.is_file():
        raise ConfigError(f"{weights_file}: adapter weights not found (expected PEFT's {ADAPTER_WEIGHTS})")
    weights = load_file(str(weights_file))
    expected = len(adapter_parameters(model, name))
    if len(weights) != expected:
        raise ConfigError(
            f"{weights_file}: holds {len(weights)} tensors, adapter '{name}' has {expected}: "
            "was it trained with other target_modules or on another base LLM?"
        )
    try:
        result = set_peft_model_state_dict(model, weights, adapter_name=name)
    except RuntimeError as exc:  # size mismatch: another rank or base LLM
        raise ConfigError(
            f"{weights_file}: does not fit adapter '{name}': {str(exc).splitlines()[-1].strip()}"
        ) from None
    unexpected = [key for key in result.unexpected_keys if "lora_" in key]
    if unexpected:
        raise ConfigError(f"{weights_file}: weights for modules this model does not adapt: {unexpected[:3]}")
