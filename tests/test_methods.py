"""The benchmark's methods: each one a valid config, one mechanism off per ablation, the same budget."""

from __future__ import annotations

from pathlib import Path

import pytest

from fedmrg.config import config_to_dict, load_config
from fedmrg.errors import ConfigError
from fedmrg.experiments.methods import BY_NAME, METHODS, select_methods
from fedmrg.fl.job_cli import job_overrides

REPO = Path(__file__).resolve().parents[1]


def flat(mapping: dict, prefix: str = "") -> dict:
    out = {}
    for key, value in mapping.items():
        if isinstance(value, dict):
            out.update(flat(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


@pytest.mark.parametrize("config", ["tiny", "demo"])
def test_every_method_is_a_valid_config_that_differs_from_fedmrg_exactly_where_it_says(config):
    base = load_config(config)
    fedmrg = flat(config_to_dict(load_config(config, BY_NAME["fedmrg"].budget_overrides(base, 3))))
    for method in METHODS:
        settings = {
            **(job_overrides(REPO / "jobs" / method.job) if method.job else {}),
            **method.budget_overrides(base, 3),
        }
        cfg = flat(config_to_dict(load_config(config, settings)))
        changed = {key for key in cfg if cfg[key] != fedmrg[key]}
        assert changed == {key for key, value in settings.items() if fedmrg[key] != value}, method.name
        if method.setting == "federated" and method.name != "fedmrg":  # an ablation that changes nothing is a typo
            assert changed, f"{method.name} changes nothing in {config}"


# What each federated method must change against fedmrg, written out by hand from the method's meaning
# (its job's settings included), not read from the registry.
FEDAVG_LORA = {
    "fl.update": "dense",
    "fl.error_feedback": False,
    "fl.server_residual": False,
    "model.adapters": "single",
    "model.contrastive": False,
    "model.mutual_boosting": 0.0,
}
ABLATIONS = {
    "fedavg_lora": FEDAVG_LORA,
    "fedavg_lora-nf4": {**FEDAVG_LORA, "fl.quantization": "normfloat4"},
    "fedmrg-no-compression": {"fl.update": "dense", "fl.error_feedback": False, "fl.server_residual": False},
    "fedmrg-rank16": {"fl.rank": 16},
    "fedmrg-contrastive-projector": {"model.contrastive_features": "projector"},
    "fedmrg-generic-own-loss": {"model.generic_from_dual": False},
    "fedmrg-single-adapter": {"model.adapters": "single", "model.mutual_boosting": 0.0},
    "fedmrg-no-contrastive": {"model.contrastive": False},
    "fedmrg-no-diagnosis": {"model.diagnosis": False},
    "fedmrg-prompt-none": {"model.prompt_mode": "none"},
    "fedmrg-prompt": {"model.prompt_mode": "prompt"},
}


def test_each_federated_method_changes_exactly_what_it_means_against_fedmrg():
    base = load_config("demo")
    fedmrg = flat(config_to_dict(load_config("demo", BY_NAME["fedmrg"].budget_overrides(base, 3))))
    federated = {m.name for m in METHODS if m.setting == "federated"} - {"fedmrg"}
    assert federated == set(ABLATIONS)
    for name, expected in ABLATIONS.items():
        method = BY_NAME[name]
        settings = {
            **(job_overrides(REPO / "jobs" / method.job) if method.job else {}),
            **method.budget_overrides(base, 3),
        }
        cfg = flat(config_to_dict(load_config("demo", settings)))
        assert {key: cfg[key] for key in cfg if cfg[key] != fedmrg[key]} == expected, name


def test_every_method_gets_the_same_number_of_passes_over_the_data():
    base = load_config("demo")
    passes = base.fl.rounds * base.fl.local_epochs
    for method in METHODS:
        job = job_overrides(REPO / "jobs" / method.job) if method.job else {}
        cfg = load_config("demo", {**job, **method.budget_overrides(base, 3)})
        assert (cfg.fl.rounds * cfg.fl.local_epochs if method.setting == "federated" else cfg.train.epochs) == passes


def test_the_fedavg_baseline_runs_its_jobs_own_settings():
    assert BY_NAME["fedavg_lora"].job == "fedavg_lora" and BY_NAME["fedavg_lora"].overrides == {}
    cfg = load_config("tiny", job_overrides(REPO / "jobs" / "fedavg_lora"))
    assert (cfg.fl.update, cfg.model.adapters, cfg.model.contrastive, cfg.fl.error_feedback) == (
        "dense",
        "single",
        False,
        False,
    )
    assert {m.job for m in METHODS if m.setting == "federated"} == {"fedmrg", "fedavg_lora"}


def test_the_ablations_are_fedmrg_with_one_mechanism_off_and_the_baselines_are_not():
    ablations = {m.name for m in METHODS if m.ablation}
    assert ablations == {name for name in ABLATIONS if name.startswith("fedmrg-")}
    assert all(BY_NAME[name].job == "fedmrg" for name in ablations)


def test_methods_are_selected_by_name_in_the_registrys_order():
    assert [m.name for m in select_methods(["fedmrg", "local"])] == ["local", "fedmrg"]
    assert len(select_methods(None)) == len(METHODS) == len(BY_NAME)
    with pytest.raises(ConfigError, match="fedmgr: unknown method"):
        select_methods(["fedmgr"])


def test_a_budget_in_steps_gives_local_the_sites_steps_and_centralized_the_federations():
    base = load_config("tiny", {"fl.local_steps": 5, "fl.rounds": 3})
    for name, steps in (("local", 15), ("centralized", 30), ("fedmrg", None)):
        cfg = load_config("tiny", {"fl.local_steps": 5, "fl.rounds": 3, **BY_NAME[name].budget_overrides(base, 2)})
        assert cfg.train.max_steps == steps, name
        assert steps is None or cfg.train.epochs >= steps  # max_steps decides, not an epoch count
