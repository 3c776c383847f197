"""The on-disk layout of a FedMRG model folder, and the writers that need no model stack.

A model folder holds ``fedmrg_model.json`` (config, base-LLM identity, scope), ``modules.safetensors``
(encoder, projector, customizer, diagnosis and contrastive heads, prototypes) and ``adapters/<name>/``
in PEFT's format (``adapter_config.json`` + ``adapter_model.safetensors``), which
``PeftModel.from_pretrained(base, <folder>/adapters/<name>)`` reads. The server writes the global
model with :func:`save_shared_model` without importing PEFT or transformers: the adapter config is
the handful of LoRA settings PEFT needs, and PEFT fills in its defaults when it reads them.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch
from safetensors.torch import save_file

from fedmrg.config import ModelConfig, parse_config
from fedmrg.errors import ConfigError
from fedmrg.io import write_json
from fedmrg.model.parameters import GENERIC

MODEL_FILE = "fedmrg_model.json"
MODULES_FILE = "modules.safetensors"
ADAPTERS_DIR = "adapters"
ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"
SHARED_SCOPE = "shared"  # fedmrg_model.json "scope" of a model folder without local parameters


def lora_settings(cfg: ModelConfig) -> dict:
    """The keyword arguments of PEFT's ``LoraConfig`` for this model config."""
    return {
        "r": cfg.lora_rank,
        "lora_alpha": cfg.lora_alpha,
        "lora_dropout": cfg.lora_dropout,
        "target_modules": list(cfg.target_modules) if cfg.target_modules else None,
        "bias": "none",
        "task_type": "CAUSAL_LM",
    }


def adapter_dir(directory: str | os.PathLike, name: str) -> Path:
    """Where PEFT's ``save_pretrained`` puts an adapter that is not called "default"."""
    return Path(directory) / name


def save_peft_adapter(
    folder: str | os.PathLike, state: dict[str, torch.Tensor], name: str, cfg: ModelConfig, base_model: str
) -> Path:
    """Write one adapter's weights (keys as in the PeftModel, adapter name included) in PEFT's layout,
    without the model: what a server that never loads the LLM writes for the global adapter."""
    marker = f".{name}."
    weights = {}
    for key, value in state.items():
        if marker not in key:
            raise ValueError(f"{key}: not a parameter of adapter '{name}'")
        weights[key.replace(marker, ".")] = value.detach().cpu().contiguous()
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    config = {"peft_type": "LORA", **lora_settings(cfg), "base_model_name_or_path": base_model}
    write_json(folder / ADAPTER_CONFIG, config)
    save_file(weights, str(folder / ADAPTER_WEIGHTS))
    return folder


def save_shared_model(
    directory: str | os.PathLike,
    meta: dict,
    shared: dict[str, torch.Tensor],
    prototypes: torch.Tensor | None = None,
    available: torch.Tensor | None = None,
) -> Path:
    """Write a model folder from shared parameters alone (the federated global model).

    ``meta`` is a site's ``MRGModel.model_meta()``; ``shared`` is an ``MRGModel.shared_state_dict()``.
    The generic adapter goes to ``adapters/generic/`` in PEFT's format, the other shared modules
    (and the prototypes) to ``modules.safetensors``; nothing local is written. ``MRGModel.load``
    reads the folder (with ``site_adapter`` for a site's own specialized adapter).
    """
    directory = Path(directory)
    cfg = parse_config(meta["config"], "model meta: config")
    modules = {name: value.detach().cpu().contiguous() for name, value in shared.items() if not name.startswith("llm.")}
    if prototypes is not None and available is not None:
        modules["prototypes"], modules["prototype_available"] = prototypes.float(), available.bool()
    directory.mkdir(parents=True, exist_ok=True)
    save_file(modules, str(directory / MODULES_FILE))
    adapter = {name[len("llm.") :]: value for name, value in shared.items() if name.startswith("llm.")}
    save_peft_adapter(adapter_dir(directory / ADAPTERS_DIR, GENERIC), adapter, GENERIC, cfg.model, meta["llm"]["path"])
    write_model_file(directory, {**meta, "scope": SHARED_SCOPE})
    return directory


def write_model_file(directory: Path, meta: dict) -> None:
    write_json(directory / MODEL_FILE, meta)


def read_model_file(directory: Path) -> dict:
    """The ``fedmrg_model.json`` of a model folder, checked for the keys every reader needs."""
    path = directory / MODEL_FILE
    if not path.is_file():
        raise ConfigError(f"{directory}: not a FedMRG model folder ({MODEL_FILE} missing)")
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ConfigError(f"{path}: not valid JSON ({exc})") from None
    if not isinstance(meta, dict) or not {"config", "llm"} <= meta.keys():
        raise ConfigError(f"{path}: expected the keys 'config' and 'llm'")
    return meta
