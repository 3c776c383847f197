"""Hostile jobs, hostile sites and a faulty server: what each can no longer do.

Each test here stands for a hole a security review found: a job naming a folder outside the site's
state root, a pickled trainer state, malformed or oversized update payloads that used to stop the
round for everyone, a site claiming an outsized weight, a tensor hidden from the privacy filter,
non-finite global weights, and a server that re-sends a round to a site under differential privacy.
"""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from nvflare.app_common.abstract.fl_model import FLModel, ParamsType
from safetensors.torch import save

from fedmrg.config import load_config
from fedmrg.errors import ConfigError, DataError
from fedmrg.fl import messages as msg
from fedmrg.fl.aggregator import DenseAggregator, LowRankAggregator, capped_shares
from fedmrg.fl.codec import CodecSpec, encode, round_delta
from fedmrg.fl.controller import FedMRGController, numeric_metrics, submitter_folder
from fedmrg.fl.executor import MRGExecutor
from fedmrg.fl.privacy import param_problems
from fedmrg.fl.site import SiteSettings, SiteTrainer
from fedmrg.io import checked_name, path_inside
from fedmrg.labels.observations import OBSERVATIONS
from fedmrg.model.prototypes import PrototypeBank
from fedmrg.model.state_files import load_tree, save_tree

PACKAGE = Path(__file__).resolve().parents[1] / "custom" / "fedmrg"
A, B, W, BIAS = "llm.q.lora_A.generic.weight", "llm.q.lora_B.generic.weight", "encoder.w", "encoder.b"
PRODUCT = "llm.q.lora_AB.generic.weight"
DIM = 8


def start_state() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return {
        A: torch.randn(4, 40, generator=g) * 0.1,
        B: torch.randn(24, 4, generator=g) * 0.1,
        W: torch.randn(32, 48, generator=g),
        BIAS: torch.zeros(32),
    }


def honest_result(site: str, start: dict, seed: int, studies: int = 10) -> FLModel:
    g = torch.Generator().manual_seed(seed)
    after = {k: v + 0.05 * torch.randn(v.shape, generator=g) for k, v in start.items()}
    payload, _ = encode(round_delta(start, after), CodecSpec(rank=4, dense_below=64))
    return lowrank_model(site, payload, studies)


def lowrank_model(site: str, payload: bytes, studies=10, **meta) -> FLModel:
    meta = {msg.CLIENT_NAME: site, msg.TRAIN_STUDIES: studies, **meta}
    return FLModel(params_type=ParamsType.DIFF, params={msg.UPDATE: msg.payload_to_array(payload)}, meta=meta)


def crafted(tensors: dict[str, torch.Tensor], header: dict[str, dict]) -> bytes:
    """A payload written by hand: any tensors, any header, in the codec's container format."""
    return save(tensors, metadata={"format": "fedmrg-lowrank-1", "precision": "fp16", "entries": json.dumps(header)})


def honest_rest(start: dict) -> tuple[dict[str, torch.Tensor], dict[str, dict]]:
    """Well-formed entries for everything but the LoRA product, to pair with one bad entry."""
    tensors = {
        f"{W}:u": torch.zeros(32, 2, dtype=torch.float16),
        f"{W}:v": torch.zeros(2, 48, dtype=torch.float16),
        f"{BIAS}:dense": torch.zeros(32, dtype=torch.float16),
    }
    header = {
        W: {"kind": "lowrank", "shape": [32, 48], "rank": 2, "factored": False},
        BIAS: {"kind": "dense", "shape": [32]},
    }
    return tensors, header


def with_product(tensors: dict, entry: dict) -> bytes:
    base, header = honest_rest(start_state())
    return crafted({**base, **tensors}, {**header, PRODUCT: entry})


LOWRANK = {"kind": "lowrank", "shape": [24, 40], "rank": 3, "factored": True}
MALFORMED = {
    "inner ranks that disagree": with_product(
        {
            f"{PRODUCT}:u": torch.zeros(24, 3, dtype=torch.float16),
            f"{PRODUCT}:v": torch.zeros(2, 40, dtype=torch.float16),
        },
        LOWRANK,
    ),
    "a dense entry for a LoRA product": with_product(
        {f"{PRODUCT}:dense": torch.zeros(24, 40, dtype=torch.float16)}, {"kind": "dense", "shape": [24, 40]}
    ),
    "a view that does not match the factors": with_product(
        {
            f"{PRODUCT}:u": torch.zeros(24, 3, dtype=torch.float16),
            f"{PRODUCT}:v": torch.zeros(3, 40, dtype=torch.float16),
        },
        {**LOWRANK, "shape": [2, 12, 40]},
    ),
    "a broadcasting scale (a 3000 x 3000 factor from a few KB)": with_product(
        {
            f"{PRODUCT}:u": torch.zeros(24, 3, dtype=torch.int8),
            f"{PRODUCT}:u_scale": torch.ones(3000, 1),
            f"{PRODUCT}:v": torch.zeros(3, 40, dtype=torch.float16),
        },
        LOWRANK,
    ),
    "a tensor the header hides": with_product(
        {
            f"{PRODUCT}:u": torch.zeros(24, 3, dtype=torch.float16),
            f"{PRODUCT}:v": torch.zeros(3, 40, dtype=torch.float16),
            "llm.q.lora_AB.specialized.weight:dense": torch.ones(24, 40, dtype=torch.float16),
        },
        LOWRANK,
    ),
    "garbage": b"\x10\x00\x00\x00\x00\x00\x00\x00{not json at all}",
}


def one_vector_as_factors() -> bytes:
    tensors, header = honest_rest(start_state())
    tensors.pop(f"{BIAS}:dense")
    tensors.update(
        {f"{BIAS}:u": torch.ones(32, 1, dtype=torch.float16), f"{BIAS}:v": torch.ones(1, 1, dtype=torch.float16)}
    )
    header[BIAS] = {"kind": "lowrank", "shape": [32], "rank": 1, "factored": False}
    product = {
        f"{PRODUCT}:u": torch.zeros(24, 3, dtype=torch.float16),
        f"{PRODUCT}:v": torch.zeros(3, 40, dtype=torch.float16),
    }
    return crafted({**tensors, **product}, {**header, PRODUCT: LOWRANK})


MALFORMED["a vector sent as 1 x 1 factors with a view"] = one_vector_as_factors()


# ----------------------------------------------------------------------------- a hostile site
@pytest.mark.parametrize("what", sorted(MALFORMED))
def test_a_malformed_payload_is_that_sites_refusal_and_the_others_still_merge(what):
    start = start_state()
    agg = LowRankAggregator(max_rank=8, prototype_dim=DIM)
    agg.start_round(start, 0)
    assert agg.accept_model(honest_result("site-1", start, 1))
    assert not agg.accept_model(lowrank_model("site-2", MALFORMED[what]))
    assert agg.accept_model(honest_result("site-3", start, 3))
    merged = agg.aggregate_model()
    assert merged.meta["accepted"] == ["site-1", "site-3"] and merged.meta["merged"]
    assert list(merged.meta["refused"]) == ["site-2"] and merged.meta["refused"]["site-2"]
    assert all(bool(torch.isfinite(v).all()) for v in merged.params.values())


def test_the_well_formed_half_of_the_crafted_payloads_is_accepted():
    """The fixtures are only wrong where each says: the same payload with an honest product passes."""
    start = start_state()
    agg = LowRankAggregator(max_rank=8, prototype_dim=DIM)
    agg.start_round(start, 0)
    honest = with_product(
        {
            f"{PRODUCT}:u": torch.zeros(24, 3, dtype=torch.float16),
            f"{PRODUCT}:v": torch.zeros(3, 40, dtype=torch.float16),
        },
        LOWRANK,
    )
    assert agg.accept_model(lowrank_model("site-1", honest)), agg.refused


def test_a_dense_update_of_text_is_refused_not_a_crash():
    start = start_state()
    agg = DenseAggregator(prototype_dim=DIM)
    agg.start_round(start, 0)
    params = {name: value.numpy() for name, value in start.items()}
    params[W] = np.full((32, 48), "x")
    model = FLModel(params_type=ParamsType.FULL, params=params, meta={msg.CLIENT_NAME: "s", msg.TRAIN_STUDIES: 5})
    assert not agg.accept_model(model) and "not a numeric array" in agg.refused["s"]


def test_a_site_claiming_a_huge_study_count_gets_at_most_the_capped_share():
    assert capped_shares([1e15, 10, 10], 0.5) == pytest.approx([0.5, 0.25, 0.25])
    assert capped_shares([30, 10], 0.5) == pytest.approx([0.5, 0.5])  # two sites: equal weights
    assert capped_shares([30, 10, 10], None) == pytest.approx([0.6, 0.2, 0.2])
    assert sum(capped_shares([100, 1, 1, 1], 0.4)) == pytest.approx(1.0)
    assert load_config("demo").fl.max_weight_share == 0.5  # the shipped default caps


def test_prototype_counts_above_the_sites_studies_are_refused():
    start = start_state()
    agg = LowRankAggregator(max_rank=8, prototype_dim=DIM)
    agg.start_round(start, 0)
    bank = PrototypeBank(len(OBSERVATIONS), DIM)
    bank.add(torch.randn(3, DIM), torch.ones(3, len(OBSERVATIONS), dtype=torch.bool))
    inflated = {msg.PROTOTYPE_SUMS: bank.sums.numpy() * 1e6, msg.PROTOTYPE_COUNTS: bank.counts.numpy() * 1e6}
    result = honest_result("site-1", start, 1, studies=10)
    result.meta.update(inflated)
    assert not agg.accept_model(result) and "at most 10 studies" in agg.refused["site-1"]


def test_non_numeric_metrics_are_left_out_of_the_records():
    assert numeric_metrics({"val_loss": 1.5, "note": "study 123 is odd", "x" * 200: 1.0, "n": float("nan")}) == {
        "val_loss": 1.5
    }
    assert numeric_metrics(["not", "a", "mapping"]) == {}


def test_the_privacy_filter_sees_a_tensor_the_header_hides():
    payload = MALFORMED["a tensor the header hides"]
    problems = param_problems({msg.UPDATE: msg.payload_to_array(payload)})
    assert any("site-local entries" in p for p in problems)
    assert any("does not announce" in p for p in problems)


# ----------------------------------------------------------------------------- a hostile job
@pytest.mark.parametrize("name", ["../data", "/etc", "..", ".hidden", "a/b", "", "x" * 65, None])
def test_a_job_name_that_is_not_one_folder_is_refused(name):
    with pytest.raises(ConfigError, match="is not a name"):
        checked_name(name, "run_name")


def test_a_path_that_leaves_its_root_is_refused(tmp_path):
    (tmp_path / "root").mkdir()
    (tmp_path / "root" / "link").symlink_to(tmp_path)
    assert path_inside(tmp_path / "root", "job") == (tmp_path / "root" / "job").resolve()
    for parts in (("..", "x"), ("/etc",), ("link", "x")):
        with pytest.raises(ConfigError, match="outside"):
            path_inside(tmp_path / "root", *parts)


def test_the_executor_refuses_a_run_name_outside_the_state_root_before_touching_anything(tmp_path):
    victim = tmp_path / "hospital-data"
    victim.mkdir()
    (victim / "annotation.json").write_text("{}")
    executor = MRGExecutor(config={}, run_name="../hospital-data")
    executor.settings = SiteSettings(data_dir=str(victim), state_dir=str(tmp_path / "state"))
    executor.site_root = tmp_path
    with pytest.raises(ConfigError, match="is not a name"):
        executor._trainer()
    assert (victim / "annotation.json").read_text() == "{}"


@pytest.mark.parametrize("limit", [0, -5, "10", 2.5])
def test_the_executor_refuses_a_test_limit_that_is_not_a_positive_whole_number(limit, tmp_path):
    executor = MRGExecutor(config={}, test_limit=limit)
    executor.settings = SiteSettings(data_dir=str(tmp_path), state_dir=str(tmp_path / "state"))
    executor.site_root = tmp_path
    with pytest.raises(ConfigError, match="test_limit"):
        executor._trainer()


def test_no_module_unpickles_anything():
    loads = [
        f"{path.relative_to(PACKAGE)}:{n}"
        for path in PACKAGE.rglob("*.py")
        for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1)
        if "weights_only=False" in line
        or "pickle.load" in line
        or "torch.load(" in line
        and "weights_only=True" not in line
    ]
    assert loads == []


def test_a_crafted_trainer_state_cannot_run_code(tmp_path):
    marker = tmp_path / "pwned"

    class Exploit:
        def __reduce__(self):
            return (Path.touch, (marker,))

    # what an attacker could leave where the trainer state is read: a pickle in place of either file
    (tmp_path / "trainer.safetensors").write_bytes(pickle.dumps(Exploit()))
    (tmp_path / "trainer.json").write_text(json.dumps({"format": "fedmrg-tree/1", "tree": {"__tensor__": "0"}}))
    with pytest.raises(DataError):
        load_tree(tmp_path / "trainer")
    (tmp_path / "trainer.json").write_bytes(pickle.dumps(Exploit()))
    with pytest.raises(DataError):
        load_tree(tmp_path / "trainer")
    assert not marker.exists()


def test_trainer_state_round_trips_without_pickle(tmp_path):
    import random

    model = torch.nn.Linear(3, 2)
    optimizer = torch.optim.AdamW(model.parameters())
    model(torch.ones(1, 3)).sum().backward()
    optimizer.step()
    state = {
        "optimizer": optimizer.state_dict(),
        "rng": {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate()},
        "loop": {"step": 3, "history": [{"loss": 1.0}]},
    }
    save_tree(tmp_path / "trainer", state)
    back = load_tree(tmp_path / "trainer")
    restored = torch.optim.AdamW(model.parameters())
    restored.load_state_dict(back["optimizer"])  # int keys and tensors as they were
    torch.testing.assert_close(
        restored.state_dict()["state"][0]["exp_avg"], optimizer.state_dict()["state"][0]["exp_avg"]
    )
    np.random.set_state(back["rng"]["numpy"])
    random.setstate(back["rng"]["python"])
    assert back["loop"] == state["loop"] and torch.equal(back["rng"]["torch"], state["rng"]["torch"])


def test_the_server_writes_a_jobs_results_dir_only_inside_the_allowed_root(tmp_path, monkeypatch):
    controller = FedMRGController(config={}, rounds=1, results_dir="/etc/cron.d")
    monkeypatch.delenv("FEDMRG_RESULTS_ROOT", raising=False)
    with pytest.raises(ConfigError, match="FEDMRG_RESULTS_ROOT"):
        controller._output_dir()
    monkeypatch.setenv("FEDMRG_RESULTS_ROOT", str(tmp_path))
    with pytest.raises(ConfigError, match="outside"):
        controller._output_dir()
    controller.results_dir = str(tmp_path / "ws")
    assert controller._output_dir() == (tmp_path / "ws").resolve()


def test_submitters_get_distinct_checkpoint_folders():
    names = {submitter_folder(s) for s in ("lead@a.org", "lead_a.org", "lead@b.org", "../../x")}
    assert len(names) == 4 and all(checked_name(n, "folder") for n in names)


# ----------------------------------------------------------------------------- a faulty server
def test_a_site_refuses_non_finite_global_weights(site_cfg, tiny_bench, tmp_path):
    site = SiteTrainer(site_cfg, "site-1", tiny_bench / "site-1", tmp_path / "state")
    shared = site.model.shared_state_dict()
    before = {k: v.clone() for k, v in shared.items()}
    poisoned = dict(shared)
    name = sorted(poisoned)[0]
    poisoned[name] = torch.full_like(poisoned[name], float("nan"))
    with pytest.raises(ValueError, match="not finite"):
        site.load_global(poisoned, None)
    wrong = dict(shared)
    wrong[name] = torch.zeros(3)
    with pytest.raises(ValueError, match="shape"):
        site.load_global(wrong, None)
    for key, value in site.model.shared_state_dict().items():
        assert torch.equal(value, before[key]), key


def test_a_round_re_sent_under_dp_gets_the_same_update_and_no_new_epsilon(site_cfg, tiny_bench, tmp_path):
    import copy

    cfg = copy.deepcopy(site_cfg)
    cfg.fl.dp_noise_multiplier = 1.0
    site = SiteTrainer(cfg, "site-1", tiny_bench / "site-1", tmp_path / "state")
    first = site.train_round(0)
    again = site.train_round(0)  # the server lost the round and asks again
    assert again.payload == first.payload and again.metrics["dp_epsilon"] == first.metrics["dp_epsilon"]
    restarted = SiteTrainer(cfg, "site-1", tiny_bench / "site-1", tmp_path / "state")
    assert restarted.train_round(0).payload == first.payload  # also after a restart
    second = restarted.train_round(1)
    assert second.metrics["dp_epsilon"] > first.metrics["dp_epsilon"] and restarted.dp_releases == 2


# ----------------------------------------------------------------------------- the site's own floors
def test_a_job_cannot_lower_the_sites_privacy_floors(tmp_path):
    from fedmrg.fl.executor import scored_limit, without_support
    from fedmrg.fl.site import apply_site_settings

    settings = SiteSettings(data_dir=str(tmp_path), min_scored_studies=50, min_prototype_studies=8, require_dp=True)
    job = load_config("tiny", {"fl.prototype_min_studies": 1})
    with pytest.raises(ConfigError, match="differential privacy"):
        apply_site_settings(job, settings)
    private = load_config("tiny", {"fl.prototype_min_studies": 1, "fl.dp_noise_multiplier": 1.0})
    assert apply_site_settings(private, settings).fl.prototype_min_studies == 8
    assert (
        apply_site_settings(
            load_config("tiny", {"fl.prototype_min_studies": 12, "fl.dp_noise_multiplier": 1.0}), settings
        ).fl.prototype_min_studies
        == 12
    )  # a job may ask for more
    assert (scored_limit(1, settings), scored_limit(80, settings), scored_limit(None, settings)) == (50, 80, None)
    scores = {"generic": {"ce": {"per_observation": {"Edema": {"f1": 1.0, "support": 1}}, "micro": {"f1": 0.5}}}}
    assert without_support(scores) == {
        "generic": {"ce": {"per_observation": {"Edema": {"f1": 1.0}}, "micro": {"f1": 0.5}}}
    }


def test_a_site_answers_no_more_validate_tasks_than_it_allows(tmp_path):
    class Scored:
        state_dir = tmp_path / "state"
        global_digest = "ab" * 32

        def test_scores(self, out_dir=None, limit=None):
            return {"generic": {"nlg": {"BLEU-4": 0.1}, "ce": {"micro": {"f1": 0.5}}}}

        def validation_losses(self):
            return {}

    executor = MRGExecutor(config={}, writer_id=None)
    executor.settings = SiteSettings(data_dir=str(tmp_path), max_validate_calls=1)
    request = FLModel(params={}, current_round=0)
    assert executor._validate(Scored(), request).metrics["test_generic_BLEU-4"] == 0.1
    with pytest.raises(ConfigError, match="at most 1 validate"):
        executor._validate(Scored(), request)


@pytest.mark.parametrize(
    "content, message",
    [
        ("min_scored_studies: 0", "min_scored_studies: must be an integer >= 1"),
        ("require_dp: yes please", "require_dp"),
    ],
)
def test_floor_settings_are_checked(tmp_path, content, message):
    from fedmrg.fl.site import load_site_settings

    (tmp_path / "fedmrg_site.yaml").write_text(f"data_dir: {tmp_path}\n{content}\n")
    with pytest.raises(ConfigError, match=message):
        load_site_settings("site-1", tmp_path)


# ----------------------------------------------------------------------------- what reaches the server
def test_the_initial_model_description_holds_no_site_path_or_settings():
    from fedmrg.fl.executor import shareable_model_meta

    site_meta = {
        "fedmrg_version": "0.1.0",
        "config": {"train": {"device": "cuda:3"}, "model": {"base_llm": "/hospital/models/llm"}},
        "llm": {"path": "/hospital/models/llm", "family": "llama", "fingerprint": "abc"},
    }
    job_config = {"train": {"device": "auto"}, "model": {"base_llm": None}}
    sent = shareable_model_meta(site_meta, job_config, None)
    assert "/hospital" not in json.dumps(sent) and sent["llm"]["path"] == "llm" and sent["config"] == job_config
    assert shareable_model_meta(site_meta, job_config, "/shared/llm")["llm"]["path"] == "/shared/llm"


def test_an_initial_model_that_is_not_finite_or_of_another_config_is_not_used():
    from fedmrg.fl.controller import initial_model_problem

    config = {"model": {"lora_rank": 4}}
    meta = {msg.MODEL_META: {"config": config, "llm": {"family": "llama"}}}
    good = FLModel(params={"w": np.ones((2, 2), np.float32)}, meta=meta)
    assert initial_model_problem(good, config) is None
    assert "not finite" in initial_model_problem(FLModel(params={"w": np.full((2, 2), np.nan)}, meta=meta), config)
    assert "config" in initial_model_problem(good, {"model": {"lora_rank": 8}})
    assert initial_model_problem(None, config) == "no initial model"


def test_names_a_site_chose_are_recorded_only_when_plain():
    from fedmrg.fl.controller import plain_names

    assert plain_names(["val_loss", "report: no effusion\n", "x" * 300]) == [
        "<name of 20 characters>",
        "<name of 300 characters>",
        "val_loss",
    ]


def test_a_failed_task_streams_no_reason_to_the_server(caplog):
    from nvflare.apis.fl_context import FLContext
    from nvflare.apis.shareable import Shareable
    from nvflare.apis.signal import Signal

    executor = MRGExecutor(config={})
    executor.startup_error = "/hospital/data/site-1/annotation.json: study 12345 has no report"
    with caplog.at_level("WARNING"):
        reply = executor.execute(msg.TRAIN, Shareable(), FLContext(), Signal())
    assert reply.get_return_code() != "OK"
    errors = [r.getMessage() for r in caplog.records if r.levelname == "ERROR"]
    assert errors and not any("/hospital" in e or "12345" in e for e in errors)
    assert any("/hospital" in r.getMessage() for r in caplog.records if r.levelname == "WARNING")


def test_the_initial_model_comes_from_the_next_site_when_one_is_down_or_refused():
    """A site that is down (no answer), fails (no parameters) or sends an unusable model does not stop
    the job while another site can answer; when none can, the panic names every site's reason."""
    config = {"model": {"lora_rank": 4}}
    meta = {msg.MODEL_META: {"config": config, "llm": {"family": "llama"}}}
    replies = {
        "site-1": [],  # down
        "site-2": [FLModel(params={}, meta={})],  # failed
        "site-3": [FLModel(params={"w": np.full((2,), np.inf, np.float32)}, meta=meta)],  # not finite
        "site-4": [FLModel(params={"w": np.ones((2,), np.float32)}, meta=meta)],
    }

    class Client:
        def __init__(self, name):
            self.name = name

    def controller(sites):
        c = FedMRGController(config=config, rounds=1)
        c.engine = type("Engine", (), {"get_clients": lambda self: [Client(s) for s in sites]})()
        c.send_model_and_wait = lambda task, data, targets: replies[targets[0]]
        c.panics = []
        c.system_panic = lambda reason, fl_ctx: c.panics.append(reason)
        c.info = c.warning = lambda text: None
        return c

    chosen = controller(["site-1", "site-2", "site-3", "site-4"])
    state = chosen._initial_state()
    assert state is not None and torch.equal(state["global"]["w"], torch.ones(2)) and not chosen.panics
    stuck = controller(["site-1", "site-2", "site-3"])
    assert stuck._initial_state() is None
    assert "site-1: no initial model" in stuck.panics[0] and "site-3: values that are not finite" in stuck.panics[0]
