"""A site's side of federated training: its own settings, one round, local state that survives restarts."""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from peft import LoraConfig

from fedmrg.config import load_config
from fedmrg.errors import ConfigError
from fedmrg.fl.codec import as_dense, decode, payload_header
from fedmrg.fl.merge import expected_delta_shapes
from fedmrg.fl.site import (
    DEFAULT_STATE_DIR,
    SETTINGS_ENV,
    SETTINGS_FILE,
    SPECIALIZED_DIR,
    STATE_FILE,
    SiteSettings,
    SiteTrainer,
    apply_site_settings,
    load_site_settings,
    site_run_config,
    site_state_root,
)
from fedmrg.labels.states import STATE_POSITIVE


# ----------------------------------------------------------------------------------- settings
def test_the_sites_own_file_wins_over_the_environment(tmp_path, monkeypatch):
    local = tmp_path / "local"
    local.mkdir()
    (local / SETTINGS_FILE).write_text(yaml.safe_dump({"data_dir": str(tmp_path), "device": "cpu", "batch_size": 2}))
    shared = tmp_path / "sites.yaml"
    shared.write_text(yaml.safe_dump({"site-1": {"data_dir": "/elsewhere"}}))
    monkeypatch.setenv(SETTINGS_ENV, str(shared))
    settings, source = load_site_settings("site-1", local)
    assert source == str(local / SETTINGS_FILE) and settings.batch_size == 2
    job = load_config("tiny")
    cfg = apply_site_settings(job, settings)
    assert (cfg.train.batch_size, cfg.train.device) == (2, "cpu")
    assert (job.train.batch_size, job.train.device) == (4, "auto")  # the job's own config is left as it was


def test_one_environment_file_serves_several_simulated_sites(tmp_path, monkeypatch):
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    shared = tmp_path / "sites.yaml"
    shared.write_text(
        yaml.safe_dump(
            {"site-1": {"data_dir": str(tmp_path / "a")}, "site-2": {"data_dir": str(tmp_path / "b"), "threads": 1}}
        )
    )
    monkeypatch.setenv(SETTINGS_ENV, str(shared))
    assert load_site_settings("site-2", tmp_path / "no-local")[0].data_dir == str(tmp_path / "b")


@pytest.mark.parametrize(
    "content, message",
    [
        ({"data_dir": "/no/such/folder"}, "data_dir: /no/such/folder is not a folder"),
        ({"data_dir": ".", "batch": 3}, "batch: unknown setting"),
        ({"data_dir": ".", "batch_size": 0}, "batch_size: must be an integer >= 1"),
        ({"data_dir": ".", "device": 1}, "device: must be a string"),
        ({"site-9": {"data_dir": "."}}, "nor a section for site 'site-1'"),
    ],
)
def test_bad_settings_name_the_file_and_the_field(tmp_path, content, message):
    (tmp_path / SETTINGS_FILE).write_text(yaml.safe_dump(content))
    with pytest.raises(ConfigError, match=message) as err:
        load_site_settings("site-1", tmp_path)
    assert str(tmp_path / SETTINGS_FILE) in str(err.value)


def test_missing_settings_say_what_to_write(tmp_path, monkeypatch):
    monkeypatch.delenv(SETTINGS_ENV, raising=False)
    with pytest.raises(
        ConfigError, match=f"write {SETTINGS_FILE} into the site's local/ folder with at least 'data_dir"
    ):
        load_site_settings("site-1", tmp_path)


def test_a_named_settings_file_is_the_only_one_read(tmp_path, monkeypatch):
    local = tmp_path / "local"
    local.mkdir()
    (local / SETTINGS_FILE).write_text(yaml.safe_dump({"data_dir": str(tmp_path), "batch_size": 2}))
    monkeypatch.setenv(SETTINGS_ENV, str(local / SETTINGS_FILE))
    named = tmp_path / "named.yaml"
    named.write_text(yaml.safe_dump({"site-1": {"data_dir": str(tmp_path), "batch_size": 3}}))
    settings, source = load_site_settings("site-1", local, named)
    assert (settings.batch_size, source) == (3, str(named))
    missing = tmp_path / "missing.yaml"
    with pytest.raises(ConfigError, match=f"no FedMRG site settings found \\({missing}\\); write {missing} with"):
        load_site_settings("site-1", local, missing)


def test_the_site_run_config_is_the_jobs_with_the_sites_choices(tmp_path):
    job = load_config("tiny")
    threads = torch.get_num_threads()
    cfg = site_run_config(job, SiteSettings(data_dir=str(tmp_path), threads=threads + 1), "/job/llm", set_threads=False)
    assert cfg.model.base_llm == "/job/llm" and torch.get_num_threads() == threads
    assert job.model.base_llm is None  # the job's own config is left as it was
    site = SiteSettings(data_dir=str(tmp_path), base_llm="/site/llm", device="cpu")
    assert site_run_config(job, site, "/job/llm").model.base_llm == "/site/llm"  # the site's setting wins
    job.model.base_llm = "/config/llm"
    assert site_run_config(job, SiteSettings(data_dir=str(tmp_path)), "/job/llm").model.base_llm == "/config/llm"
    job.train.public_data = "/job/public"
    rehearsed = SiteSettings(data_dir=str(tmp_path), public_data="/site/public")
    assert site_run_config(job, rehearsed).train.public_data == "/site/public"  # the site's copy of the public set
    assert job.train.public_data == "/job/public"


def test_the_state_root_is_the_setting_else_in_the_workspace(tmp_path):
    assert site_state_root(SiteSettings(data_dir="."), tmp_path) == tmp_path / DEFAULT_STATE_DIR
    assert site_state_root(SiteSettings(data_dir=".", state_dir="/var/state"), tmp_path) == Path("/var/state")


# ---------------------------------------------------------------------------------- one round
def test_a_round_sends_only_shared_entries_and_keeps_local_state_on_disk(site_cfg, tiny_bench, tmp_path):
    site = SiteTrainer(site_cfg, "site-1", tiny_bench / "site-1", tmp_path / "state")
    shared = site.model.shared_state_dict()
    update = site.train_round(0)
    entries = payload_header(update.payload)
    assert set(entries) == set(expected_delta_shapes(shared))
    assert not [name for name in entries if "specialized" in name or "contrastive.client" in name]
    assert update.train_studies == len(site.train_loader.dataset) and update.steps == 2
    assert update.metrics["train_loss"] > 0
    assert update.metrics["train_seconds"] > 0 and update.metrics["peak_memory_mib"] > 100  # what a round cost
    assert any(v.abs().sum() > 0 for v in decode(update.payload).values() if isinstance(v, torch.Tensor))
    adapter = tmp_path / "state" / SPECIALIZED_DIR
    assert LoraConfig.from_pretrained(str(adapter)).r == site_cfg.model.lora_rank
    assert json.loads((tmp_path / "state" / STATE_FILE).read_text())["rounds_done"] == 1


def test_rehearsed_public_studies_count_neither_as_the_sites_studies_nor_in_its_prototypes(
    site_cfg, tiny_bench, tmp_path
):
    """Public studies are the same at every site: they must not weigh a site's update or prototypes
    (the server refuses prototype counts above the studies a site says it trained on)."""
    public = str(tiny_bench / "public")
    cfg = dataclasses.replace(
        site_cfg,
        train=dataclasses.replace(site_cfg.train, public_data=public, public_share=0.5),
        fl=dataclasses.replace(site_cfg.fl, local_steps=None, local_epochs=1),  # one whole epoch
    )
    site = SiteTrainer(cfg, "site-1", tiny_bench / "site-1", tmp_path / "state")
    own = len(site.train_loader.dataset.datasets[0])
    assert len(site.train_loader.sampler) == own + round(0.5 * own)
    update = site.train_round(0)
    assert update.train_studies == own
    own_states = torch.as_tensor(np.stack([r["states"] for r in site.train_loader.dataset.datasets[0].data]))
    expected = (own_states == STATE_POSITIVE).sum(0).float()
    expected[expected < cfg.fl.prototype_min_studies] = 0  # rows of too few studies stay at the site
    assert expected.sum() > 0
    assert update.prototypes["counts"].tolist() == expected.tolist()


def test_with_differential_privacy_a_round_sends_a_noised_update_no_prototypes_and_equal_weight(
    site_cfg, tiny_bench, tmp_path
):
    import copy

    from fedmrg.fl.dp import epsilon

    cfg = copy.deepcopy(site_cfg)
    cfg.fl.dp_noise_multiplier, cfg.fl.dp_clip = 0.8, 0.5
    site = SiteTrainer(cfg, "site-1", tiny_bench / "site-1", tmp_path / "state")
    update = site.train_round(0)
    assert update.prototypes is None and update.train_studies == 1
    assert update.metrics["dp_epsilon"] == pytest.approx(epsilon(1, 0.8, cfg.fl.dp_delta))
    sent = decode(update.payload)
    assert set(sent) == set(expected_delta_shapes(site.model.shared_state_dict()))
    # noise of std 0.4 on every coordinate of every entry: the sent update is mostly noise, far above the clip
    total = sum(float((v.dense() if hasattr(v, "dense") else v).pow(2).sum()) for v in sent.values())
    assert total**0.5 > 10 * cfg.fl.dp_clip


def test_a_restarted_site_resumes_its_local_state(site_cfg, tiny_bench, tmp_path):
    first = SiteTrainer(site_cfg, "site-1", tiny_bench / "site-1", tmp_path / "state")
    first.train_round(0)
    local, step = first.model.local_state_dict(), first.trainer.state.step
    again = SiteTrainer(site_cfg, "site-1", tiny_bench / "site-1", tmp_path / "state")
    assert (again.rounds_done, again.trainer.state.step) == (1, step)
    for name, value in again.model.local_state_dict().items():
        assert torch.equal(value, local[name])
    again.train_round(1)
    assert again.trainer.state.step == step + 2


def same(a, b, where: str = "") -> None:
    """``a`` and ``b`` hold equal values: tensors and arrays bit for bit, containers entry by entry."""
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and a.dtype == b.dtype and torch.equal(a, b), where
    elif isinstance(a, np.ndarray):
        assert np.array_equal(a, b), where
    elif isinstance(a, dict):
        assert a.keys() == b.keys(), where
        for key in a:
            same(a[key], b[key], f"{where}/{key}")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            same(x, y, f"{where}/{i}")
    else:
        assert a == b, where


def restarted_before_round_2(cfg, bench: Path, folder: Path, restart: bool) -> SiteTrainer:
    """Site-1 after round 1 (from its initial model), holding the server's next model (a moved one);
    with ``restart``, a new trainer that resumed from the state folder."""
    site = SiteTrainer(cfg, "site-1", bench / "site-1", folder)
    site.load_global(site.model.shared_state_dict(), None)
    site.train_round(0)
    if restart:
        site = SiteTrainer(cfg, "site-1", bench / "site-1", folder)
    noise = torch.Generator().manual_seed(7)
    held = site.global_state
    site.load_global({k: held[k] + 0.01 * torch.randn(held[k].shape, generator=noise) for k in sorted(held)}, None)
    return site


def test_a_restart_between_rounds_changes_nothing_the_site_computes(site_cfg, tiny_bench, tmp_path):
    """Optimizer moments, schedule, random state, loop counters, error feedback, prototypes, local and
    global parameters all come back from the state folder, bit for bit. The next round's update is
    then close to the uninterrupted site's, not equal: once tensors were reloaded, the backward pass
    sums in another order (about 3e-7 of a gradient), and Adam's normalization enlarges that for
    entries whose gradients are near zero (a few percent of such an entry's change, about 0.4% of
    the whole update, measured)."""
    kept = restarted_before_round_2(site_cfg, tiny_bench, tmp_path / "kept", restart=False)
    again = restarted_before_round_2(site_cfg, tiny_bench, tmp_path / "again", restart=True)
    trainer, resumed = kept.trainer.state_dict(), again.trainer.state_dict()
    for part in ("optimizer", "scheduler", "loop", "total_steps", "rng"):
        same(trainer[part], resumed[part], part)
    same(kept.model.state_dict(), again.model.state_dict(), "model")  # local, shared, prototypes, frozen
    same(kept.global_state, again.global_state, "global")
    assert kept.feedback.residual.keys() == again.feedback.residual.keys() and kept.feedback.residual
    for name, value in kept.feedback.residual.items():
        assert torch.equal(as_dense(value), as_dense(again.feedback.residual[name])), name
    sent, sent_again = decode(kept.train_round(1).payload), decode(again.train_round(1).payload)
    assert sent.keys() == sent_again.keys()
    gap = sum(float((as_dense(v) - as_dense(sent_again[n])).pow(2).sum()) for n, v in sent.items()) ** 0.5
    size = sum(float(as_dense(v).pow(2).sum()) for v in sent.values()) ** 0.5
    assert gap < 0.01 * size, (gap, size)


def test_a_site_ahead_of_the_server_without_its_previous_state_trains_on_and_says_so(
    site_cfg, tiny_bench, tmp_path, caplog
):
    site = SiteTrainer(site_cfg, "site-1", tiny_bench / "site-1", tmp_path / "state")
    site.train_round(0)
    site.train_round(1)
    step = site.trainer.state.step
    shutil.rmtree(site.previous_dir)
    restarted = SiteTrainer(site_cfg, "site-1", tiny_bench / "site-1", tmp_path / "state")
    with caplog.at_level("WARNING", logger="fedmrg.fl.site"):
        restarted.align_with_server(1)
    assert "no state of round 1 is kept; training on from it" in caplog.text
    assert (restarted.rounds_done, restarted.trainer.state.step) == (2, step)


def test_a_site_that_crashed_between_the_renames_of_its_state_resumes_from_the_last_whole_one(
    site_cfg, tiny_bench, tmp_path
):
    site = SiteTrainer(site_cfg, "site-1", tiny_bench / "site-1", tmp_path / "state")
    site.train_round(0)
    local, step = site.model.local_state_dict(), site.trainer.state.step
    state = tmp_path / "state"
    state.rename(tmp_path / "state.old")  # the next save's first rename happened, its second did not
    (tmp_path / "state.tmp").mkdir()
    (tmp_path / "state.tmp" / "local.safetensors").write_bytes(b"half written")
    restarted = SiteTrainer(site_cfg, "site-1", tiny_bench / "site-1", state)
    assert (restarted.rounds_done, restarted.trainer.state.step) == (1, step)
    same(restarted.model.local_state_dict(), local, "local")


def test_state_of_another_model_is_set_aside_not_used(site_cfg, tiny_bench, tmp_path):
    SiteTrainer(site_cfg, "site-1", tiny_bench / "site-1", tmp_path / "state").train_round(0)
    other = load_config("tiny", {"fl.rounds": 3, "fl.local_steps": 2, "model.lora_rank": 2, "train.device": "cpu"})
    other.model.base_llm = site_cfg.model.base_llm
    site = SiteTrainer(other, "site-1", tiny_bench / "site-1", tmp_path / "state")
    assert site.rounds_done == 0 and site.trainer.state.step == 0
    assert [p.name.startswith("state.stale-") for p in tmp_path.iterdir()].count(True) == 1


def test_an_aborted_round_sends_nothing_and_saves_nothing(site_cfg, tiny_bench, tmp_path):
    site = SiteTrainer(site_cfg, "site-1", tiny_bench / "site-1", tmp_path / "state")
    with pytest.raises(InterruptedError):
        site.train_round(0, abort=lambda: True)
    assert not (tmp_path / "state").exists()


def test_a_site_ahead_of_a_restarted_server_goes_back_to_the_round_the_server_merged(site_cfg, tiny_bench, tmp_path):
    """The server crashed after the sites trained round 2 but before its checkpoint of round 2:
    it resumes at round 2 again, and a site must not count its unmerged round 2 twice."""
    site = SiteTrainer(site_cfg, "site-1", tiny_bench / "site-1", tmp_path / "state")
    site.train_round(0)
    after_first = site.model.local_state_dict()
    step, residual = site.trainer.state.step, dict(site.feedback.residual)
    site.train_round(1)  # never merged
    assert any(not torch.equal(as_dense(site.feedback.residual[n]), as_dense(v)) for n, v in residual.items())
    assert any(not torch.equal(v, after_first[n]) for n, v in site.model.local_state_dict().items())
    restarted = SiteTrainer(site_cfg, "site-1", tiny_bench / "site-1", tmp_path / "state")
    assert restarted.rounds_done == 2
    sent = torch.nn.functional.normalize(torch.randn(restarted.model.prototypes.shape), dim=-1)
    everywhere = torch.ones(sent.shape[0], dtype=torch.bool)
    restarted.load_global(restarted.global_state, {"prototypes": sent, "available": everywhere})  # the server's
    restarted.align_with_server(1)
    assert (restarted.rounds_done, restarted.trainer.state.step) == (1, step)
    torch.testing.assert_close(restarted.model.prototypes, sent)  # going back keeps what the server just sent
    for name, value in restarted.model.local_state_dict().items():
        assert torch.equal(value, after_first[name]), name
    assert residual and set(restarted.feedback.residual) == set(residual)
    for name, value in residual.items():  # the error feedback of round 1, not of the unmerged round 2
        assert torch.equal(as_dense(restarted.feedback.residual[name]), as_dense(value)), name
    restarted.train_round(1)
    assert (restarted.rounds_done, restarted.trainer.state.step) == (2, 2 * step)


def test_a_site_that_missed_rounds_rejoins_from_its_own_last_round(site_cfg, tiny_bench, tmp_path, caplog):
    site = SiteTrainer(site_cfg, "site-1", tiny_bench / "site-1", tmp_path / "state")
    site.train_round(0)
    step = site.trainer.state.step
    with caplog.at_level("WARNING", logger="fedmrg.fl.site"):
        site.train_round(2)  # rounds 2 went on without this site
    assert "rejoining at round 3; its last round was round 1" in caplog.text
    assert (site.rounds_done, site.trainer.state.step) == (3, 2 * step)
