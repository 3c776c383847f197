"""The site's result guard (fedmrg.fl.privacy.ResultGuard): FedMRG's own results pass unchanged,
anything carrying site-local state, unexpected metadata or headers, text or too many bytes is refused."""

from __future__ import annotations

import copy
import logging

import numpy as np
import pytest
import torch
from nvflare.apis.fl_constant import FilterKey, FLContextKey, FLMetaKey, ReturnCode
from nvflare.apis.fl_context import FLContext
from nvflare.apis.shareable import ReservedHeaderKey, Shareable, make_reply
from nvflare.apis.utils.task_utils import apply_filters
from nvflare.app_common.abstract.fl_model import FLModel, ParamsType
from nvflare.app_common.app_constant import AppConstants
from nvflare.app_common.filters.exclude_vars import ExcludeVars
from nvflare.app_common.utils.fl_model_utils import FLModelUtils
from nvflare.private.privacy_manager import Scope

from fedmrg.fl import messages as msg
from fedmrg.fl.codec import CodecSpec, encode, round_delta
from fedmrg.fl.privacy import ResultGuard, ResultRefused
from fedmrg.model.parameters import is_local_parameter, local_parameters

LORA = "llm.base_model.model.model.layers.0.self_attn.q_proj"
A, B = f"{LORA}.lora_A.generic.weight", f"{LORA}.lora_B.generic.weight"
LOCAL_A = f"{LORA}.lora_A.specialized.weight"
CLIENT_HEAD = "contrastive.client.image.weight"
SPEC = CodecSpec(rank=2, dense_below=64)


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def shared_state() -> dict[str, torch.Tensor]:
    """Shared parameters named as MRGModel names them (generic adapter, encoder, generic head)."""
    return {
        A: torch.randn(4, 40, generator=gen(0)),
        B: torch.randn(24, 4, generator=gen(1)),
        "encoder.blocks.0.attn.qkv.weight": torch.randn(32, 48, generator=gen(2)),
        "encoder.norm.bias": torch.zeros(32),
        "contrastive.generic.image.weight": torch.randn(8, 16, generator=gen(3)),
    }


def after_training(state: dict[str, torch.Tensor], seed: int = 10) -> dict[str, torch.Tensor]:
    g = gen(seed)
    return {name: value + 0.05 * torch.randn(value.shape, generator=g) for name, value in state.items()}


def train_meta(**extra) -> dict:
    return {
        msg.TRAIN_STUDIES: 30,
        msg.BYTES_DOWN: 56789,
        "steps": 8,
        msg.PROTOTYPE_SUMS: np.ones((14, 8), np.float32),
        msg.PROTOTYPE_COUNTS: np.arange(14, dtype=np.float32),
        **extra,
    }


def lowrank_result(delta=None, meta=None) -> Shareable:
    """A ``train`` result as MRGExecutor sends it with low-rank updates."""
    start = shared_state()
    delta = delta if delta is not None else round_delta(start, after_training(start))
    payload, _ = encode(delta, SPEC)
    return FLModelUtils.to_shareable(
        FLModel(
            params_type=ParamsType.DIFF,
            params={msg.UPDATE: msg.payload_to_array(payload)},
            metrics={"val_loss": 2.5, "train_loss": 2.1},
            meta=train_meta() if meta is None else meta,
        )
    )


def dense_result(params=None, meta=None, **rounds) -> Shareable:
    """A ``train`` result of the dense FedAvg baseline (every shared parameter, fp32); ``rounds``:
    FLModel's round fields."""
    params = params if params is not None else msg.to_numpy(after_training(shared_state()))
    return FLModelUtils.to_shareable(
        FLModel(
            params_type=ParamsType.FULL,
            params=params,
            metrics={"val_loss": 2.5},
            meta=train_meta() if meta is None else meta,
            **rounds,
        )
    )


def scores(**extra) -> dict:
    one = {
        "n": 10,
        "nlg": {"BLEU-4": 0.1, "CIDEr": None},
        "ce": {"micro": {"precision": 0.5, "recall": 0.4, "f1": 0.44}},
        "ce_per_observation": {"Cardiomegaly": {"f1": 0.3}},
        **extra,
    }
    return {"generic": one, "personalized": copy.deepcopy(one)}


def validate_result(meta_scores=None) -> Shareable:
    return FLModelUtils.to_shareable(
        FLModel(
            params_type=ParamsType.FULL,
            params={},
            metrics={"test_generic_BLEU-4": 0.1},
            meta={msg.SCORES: meta_scores or scores()},
        )
    )


def error_reply() -> Shareable:
    """What MRGExecutor sends when a task fails."""
    return make_reply(ReturnCode.EXECUTION_EXCEPTION)


def submit_model_result() -> Shareable:
    model_meta = {"fedmrg_version": "0.1.0", "config": {"model": {"lora_rank": 4}}, "llm": {"family": "llama"}}
    return FLModelUtils.to_shareable(
        FLModel(params_type=ParamsType.FULL, params=msg.to_numpy(shared_state()), meta={msg.MODEL_META: model_meta})
    )


def context(task: str | None) -> FLContext:
    fl_ctx = FLContext()
    if task is not None:
        fl_ctx.set_prop(FLContextKey.TASK_NAME, task, private=True, sticky=False)
    return fl_ctx


def site_scope(*filters) -> FLContext:
    """A ``train`` task's context under a site scope whose result filters are ``filters``, in order."""
    scope = Scope()
    scope.set_name("fedmrg")
    for result_filter in filters:
        scope.add_task_result_filter(result_filter, FilterKey.OUT)
    fl_ctx = context(msg.TRAIN)
    fl_ctx.set_prop(FLContextKey.SCOPE_OBJECT, scope, private=True, sticky=False)
    return fl_ctx


def send(result: Shareable, fl_ctx: FLContext) -> Shareable:
    """As the client runner does: the scope's result filters, then the job's (none here)."""
    return apply_filters(Scope.TASK_RESULT_FILTERS_NAME, result, fl_ctx, {}, msg.TRAIN, FilterKey.OUT)


def refusal(guard: ResultGuard, result: Shareable, task: str | None = msg.TRAIN) -> str:
    with pytest.raises(ResultRefused) as info:
        guard.process(result, context(task))
    return str(info.value)


# ------------------------------------------------------------------------------- what passes
@pytest.mark.parametrize(
    "task, make",
    [
        (msg.TRAIN, lowrank_result),
        (msg.TRAIN, dense_result),
        (msg.VALIDATE, validate_result),
        (msg.SUBMIT_MODEL, submit_model_result),
    ],
)
def test_fedmrg_results_pass_unchanged(task, make):
    result = make()
    before = copy.deepcopy(result)
    out = ResultGuard(max_result_mib=1).process(result, context(task))
    assert out is result
    assert out.keys() == before.keys() and out["DXO"]["meta"].keys() == before["DXO"]["meta"].keys()
    for name, value in before["DXO"]["data"].items():
        np.testing.assert_array_equal(out["DXO"]["data"][name], value)


def test_the_headers_flare_writes_into_a_result_pass():
    """FLModelUtils.to_shareable writes the content type and FLModel's rounds (start_round 0 by default)."""
    result = dense_result(current_round=3, total_rounds=5)
    assert set(result[ReservedHeaderKey.HEADERS]) == {
        ReservedHeaderKey.CONTENT_TYPE,
        AppConstants.START_ROUND,
        AppConstants.CURRENT_ROUND,
        AppConstants.NUM_ROUNDS,
    }
    assert ResultGuard().process(result, context(msg.TRAIN)) is result


def test_a_filter_history_flare_writes_passes():
    """A site filter before the guard (FLARE's ExcludeVars) changes the result and records itself."""
    result = dense_result()
    out = send(result, site_scope(ExcludeVars(exclude_vars=["encoder.norm.bias"]), ResultGuard()))
    assert out is result and out["DXO"]["meta"][FLMetaKey.FILTER_HISTORY] == ["ExcludeVars"]
    assert "encoder.norm.bias" not in out["DXO"]["data"]


def test_error_replies_and_other_tasks_pass():
    guard = ResultGuard()
    error = error_reply()
    assert guard.process(error, context(msg.TRAIN)) is error
    other = dense_result(meta={"NUM_STEPS_CURRENT_ROUND": 1})  # not FedMRG's, but not its task either
    assert guard.process(other, context("fed_stats")) is other


# ------------------------------------------------------------------------------ what is refused
def test_a_low_rank_update_with_a_specialized_adapter_entry_is_refused():
    start = {**shared_state(), LOCAL_A: torch.randn(4, 40), LOCAL_A.replace("lora_A", "lora_B"): torch.randn(24, 4)}
    reason = refusal(ResultGuard(), lowrank_result(delta=round_delta(start, after_training(start))))
    assert "site-local entries in the update payload" in reason
    assert f"{LORA}.lora_AB.specialized.weight" in reason  # the codec's name for the pair


@pytest.mark.parametrize("name", [LOCAL_A, CLIENT_HEAD, "contrastive.client.text.bias"])
def test_dense_parameters_of_the_site_are_refused(name):
    params = {**msg.to_numpy(shared_state()), name: np.zeros((4, 4), np.float32)}
    assert f"site-local parameters: {name}" in refusal(ResultGuard(), dense_result(params=params))


def test_a_client_head_entry_in_a_low_rank_update_is_refused():
    start = shared_state()
    delta = {**round_delta(start, after_training(start)), CLIENT_HEAD: torch.randn(8, 16)}
    assert CLIENT_HEAD in refusal(ResultGuard(), lowrank_result(delta=delta))


def test_unexpected_meta_keys_are_refused_and_named():
    reason = refusal(ResultGuard(), lowrank_result(meta=train_meta(patient_ids=[1, 2])))
    assert "unexpected meta keys: patient_ids" in reason
    # a key FedMRG sends for another task is unexpected too
    assert msg.MODEL_META in refusal(ResultGuard(), dense_result(meta=train_meta(**{msg.MODEL_META: {}})))


def test_a_site_may_admit_more_meta_keys():
    result = lowrank_result(meta=train_meta(site_note_count=3))
    assert ResultGuard(extra_meta_keys=["site_note_count"]).process(result, context(msg.TRAIN)) is result


def test_an_oversize_result_is_refused():
    params = {**msg.to_numpy(shared_state()), "encoder.patch.weight": np.zeros((512, 1024), np.float32)}  # 2 MiB
    reason = refusal(ResultGuard(max_result_mib=1), dense_result(params=params))
    assert "above the site's limit of 1 MiB" in reason
    result = dense_result(params=params)
    assert ResultGuard(max_result_mib=4).process(result, context(msg.TRAIN)) is result


def test_text_in_scores_is_refused():
    leaked = scores(example="The heart is normal in size. The lungs are clear.")
    reason = refusal(ResultGuard(), validate_result(leaked), task=msg.VALIDATE)
    assert "scores.generic.example (str)" in reason


@pytest.mark.parametrize(
    "params, expected",
    [
        ({msg.UPDATE: np.arange(40, dtype=np.uint8)}, "unreadable update payload"),
        ({"encoder.norm.bias": "0.1 0.2"}, "not numeric arrays: encoder.norm.bias"),
    ],
)
def test_what_cannot_be_checked_is_refused(params, expected):
    result = FLModelUtils.to_shareable(FLModel(params_type=ParamsType.DIFF, params=params, meta=train_meta()))
    assert expected in refusal(ResultGuard(), result)


@pytest.mark.parametrize("history", ["ExcludeVars", ["The heart is normal in size."], [1], {"ExcludeVars": 1}, None])
def test_a_filter_history_that_is_not_filter_class_names_is_refused(history):
    result = lowrank_result(meta=train_meta(**{FLMetaKey.FILTER_HISTORY: history}))
    assert "meta.filter_history is not a list of filter class names" in refusal(ResultGuard(), result)


@pytest.mark.parametrize("make", [dense_result, error_reply])
@pytest.mark.parametrize(
    "key, value",
    [
        ("notes", "The heart is normal in size."),
        ("patients", np.arange(3)),
        (AppConstants.JOB_STATS_CLIENT_TELEMETRY, {"error": "no such study"}),
    ],
)
def test_a_header_flare_does_not_write_is_refused(make, key, value):
    result = make()
    result.set_header(key, value)
    assert f"unexpected headers: {key}" in refusal(ResultGuard(), result)


@pytest.mark.parametrize(
    "key, value",
    [
        (ReservedHeaderKey.CONTENT_TYPE, "DXO: the heart is normal"),
        (ReservedHeaderKey.RC, "OK, the heart is normal"),
        (AppConstants.CURRENT_ROUND, "3 (the heart is normal)"),
        (AppConstants.START_ROUND, -1),
    ],
)
def test_a_header_value_flare_does_not_write_is_refused(key, value):
    result = dense_result()
    result.set_header(key, value)
    assert f"header values FLARE does not write: {key} ({type(value).__name__})" in refusal(ResultGuard(), result)


def test_headers_that_are_not_a_mapping_are_refused():
    result = dense_result()
    result[ReservedHeaderKey.HEADERS] = ["The heart is normal in size."]
    assert "headers of type list" in refusal(ResultGuard(), result)


def test_content_outside_the_dxo_is_refused_even_on_an_error_reply():
    result = error_reply()
    result["site_files"] = ["annotation.json"]
    assert "content outside the DXO: site_files" in refusal(ResultGuard(), result)


def test_other_tasks_are_refused_when_the_site_says_so():
    assert "not a FedMRG task" in refusal(ResultGuard(refuse_other_tasks=True), dense_result(), task="fed_stats")


def test_the_refusal_is_logged_with_the_key():
    logger = logging.getLogger("test_privacy_filter.guard")
    records: list[logging.LogRecord] = []
    handler = logging.Handler()
    handler.emit = records.append
    logger.addHandler(handler)
    guard = ResultGuard()
    guard.logger = logger  # FLARE's component logger, captured here whatever FLARE's logging config
    try:
        refusal(guard, dense_result(params={**msg.to_numpy(shared_state()), CLIENT_HEAD: np.zeros(3, np.float32)}))
    finally:
        logger.removeHandler(handler)
    assert any(r.levelno == logging.ERROR and CLIENT_HEAD in r.getMessage() for r in records)


def test_flare_applies_the_guard_from_a_site_scope_and_the_refusal_stops_the_result():
    fl_ctx = site_scope(ResultGuard())
    ok = lowrank_result()
    assert send(ok, fl_ctx) is ok
    with pytest.raises(ResultRefused):
        send(lowrank_result(meta=train_meta(extra=1)), fl_ctx)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"max_result_mib": 0},
        {"max_result_mib": "64"},
        {"max_result_mib": True},
        {"extra_meta_keys": [1]},
        {"refuse_other_tasks": "yes"},
    ],
)
def test_bad_arguments_fail_when_the_site_loads_its_policy(kwargs):
    with pytest.raises((ValueError, TypeError)):
        ResultGuard(**kwargs)


# ------------------------------------------------------------------------------ the local rule
def test_local_rule_names_the_specialized_adapter_and_the_client_head_only():
    assert local_parameters(
        [
            A,
            B,
            LOCAL_A,
            CLIENT_HEAD,
            "encoder.norm.bias",
            f"{LORA}.lora_AB.specialized.weight",
            "contrastive.generic.text.weight",
        ]
    ) == sorted([LOCAL_A, CLIENT_HEAD, f"{LORA}.lora_AB.specialized.weight"])
    assert not is_local_parameter("encoder.specialized_norm.weight")  # the adapter is a whole name segment


@pytest.mark.slow
def test_local_rule_partitions_a_real_models_parameters(tiny_base_llm):
    """Every local parameter of a built model (and of its codec payload) is refused, no shared one is."""
    from fedmrg.config import load_config
    from fedmrg.model.mrg import MRGModel

    model = MRGModel.build(load_config("tiny"), tiny_base_llm, device="cpu")
    shared, local = model.shared_state_dict(), model.local_state_dict()
    assert any(".specialized." in n for n in local) and any(n.startswith("contrastive.client.") for n in local)
    assert local_parameters(shared) == [] and local_parameters(local) == sorted(local)
    guard, start = ResultGuard(), shared
    assert guard.process(lowrank_result(delta=round_delta(start, after_training(start))), context(msg.TRAIN))
    both = {**shared, **local}
    reason = refusal(guard, lowrank_result(delta=round_delta(both, after_training(both))))
    assert "site-local entries in the update payload" in reason
