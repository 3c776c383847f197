"""The methods the FL-MRG benchmark compares, as data: each is a training setting plus config overrides.

Every method trains the same model family on the same benchmark with the same seeds and the same
budget. The budget is the federation's: R rounds of E local epochs (``fl.local_epochs``) or of S
optimizer steps (``fl.local_steps``) at each site. A local-only run gets R x E epochs (or R x S
steps) on its one site; a centralized run gets R x E epochs (or R x S x sites steps) on the pooled
training data of all sites, so it sees as many studies as the whole federation does.

A federated method runs its FLARE job (``jobs/<job>/job.py``), whose own settings (the job
folder's ``overrides.yaml``: FedAvg-LoRA's dense updates and single adapter) come with it.
``fedavg_lora-nf4`` is the same baseline behind FLARE's NF4 quantization filters, both ways: the
cheapest way to send less that FLARE offers out of the box. The ablations change one FedMRG
mechanism each and keep everything else as in ``fedmrg``: most switch one off, ``fedmrg-rank16``
loosens the codec's rank, and two try a remedy for a mechanism that does nothing or harm at the
benchmark's budget (``fedmrg-contrastive-projector``, ``fedmrg-generic-own-loss``).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Literal

from fedmrg.config import Config
from fedmrg.errors import ConfigError

Setting = Literal["local", "centralized", "federated"]


@dataclass(frozen=True)
class Method:
    name: str
    setting: Setting
    description: str
    overrides: Mapping[str, Any] = field(default_factory=dict)  # on top of the job's own settings
    job: str | None = None  # the jobs/<job>/job.py of a federated method
    ablation: bool = False  # fedmrg with one mechanism changed (usually switched off)

    def budget_overrides(self, cfg: Config, sites: int) -> dict[str, Any]:
        """The overrides that give this method the benchmark's budget (see the module docstring)."""
        if cfg.train.max_steps is not None:  # it would cap local and centralized runs, not the federation
            raise ConfigError(
                f"config {cfg.name!r}: train.max_steps: the benchmark's budget is fl.rounds x "
                f"fl.local_epochs (or fl.local_steps); leave train.max_steps unset"
            )
        if self.setting == "federated":
            return dict(self.overrides)
        rounds = cfg.fl.rounds
        if cfg.fl.local_steps is None:
            return {**self.overrides, "train.epochs": rounds * cfg.fl.local_epochs}
        steps = rounds * cfg.fl.local_steps * (sites if self.setting == "centralized" else 1)
        # epochs is only an upper bound here (an epoch has at least one step): max_steps decides.
        return {**self.overrides, "train.epochs": steps, "train.max_steps": steps}


METHODS: tuple[Method, ...] = (
    Method("local", "local", "each site trains alone on its own data"),
    Method("centralized", "centralized", "one model on the pooled training data of every site (not private)"),
    Method("fedavg_lora", "federated", "FedIT: dense fp32 FedAvg, one LoRA adapter", {}, "fedavg_lora"),
    Method(
        "fedavg_lora-nf4",
        "federated",
        "FedIT behind FLARE's NF4 quantization filters, both ways",
        {"fl.quantization": "normfloat4"},
        "fedavg_lora",
    ),
    Method("fedmrg", "federated", "FedMRG, every mechanism on", {}, "fedmrg"),
    Method(
        "fedmrg-no-compression",
        "federated",
        "FedMRG sending dense fp32 updates",
        {"fl.update": "dense", "fl.error_feedback": False, "fl.server_residual": False},
        "fedmrg",
        ablation=True,
    ),
    Method(
        "fedmrg-rank16",
        "federated",
        "FedMRG with the codec at the LoRA rank (16, not 4): a round's adapter change sent whole",
        {"fl.rank": 16},
        "fedmrg",
        ablation=True,
    ),
    Method(
        "fedmrg-contrastive-projector",
        "federated",
        "FedMRG with contrastive learning on the projector's visual tokens (what the LLM reads), not the encoder's",
        {"model.contrastive_features": "projector"},
        "fedmrg",
        ablation=True,
    ),
    Method(
        "fedmrg-generic-own-loss",
        "federated",
        "FedMRG whose generic adapter learns from its own path and the KL, not from the dual path's loss",
        {"model.generic_from_dual": False},
        "fedmrg",
        ablation=True,
    ),
    Method(
        "fedmrg-single-adapter",
        "federated",
        "FedMRG with the generic adapter only (no specialized one)",
        {"model.adapters": "single", "model.mutual_boosting": 0.0},
        "fedmrg",
        ablation=True,
    ),
    Method(
        "fedmrg-no-contrastive",
        "federated",
        "FedMRG without client-aware contrastive learning",
        {"model.contrastive": False},
        "fedmrg",
        ablation=True,
    ),
    Method(
        "fedmrg-no-diagnosis",
        "federated",
        "FedMRG without the diagnosis head and its prompt",
        {"model.diagnosis": False},
        "fedmrg",
        ablation=True,
    ),
    Method(
        "fedmrg-prompt-none",
        "federated",
        "FedMRG without instance-specific prompts",
        {"model.prompt_mode": "none"},
        "fedmrg",
        ablation=True,
    ),
    Method(
        "fedmrg-prompt",
        "federated",
        "FedMRG with prompt-wise (not promptbook-wise) prompts",
        {"model.prompt_mode": "prompt"},
        "fedmrg",
        ablation=True,
    ),
)
BY_NAME = MappingProxyType({method.name: method for method in METHODS})


def select_methods(names: list[str] | None) -> list[Method]:
    """The methods named (all when ``names`` is empty), in the registry's order; an unknown name is an error."""
    if not names:
        return list(METHODS)
    unknown = [name for name in names if name not in BY_NAME]
    if unknown:
        raise ConfigError(f"{unknown[0]}: unknown method (known: {', '.join(BY_NAME)})")
    return [method for method in METHODS if method.name in names]
