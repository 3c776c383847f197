"""The server's aggregator: exact merging of what sites send, and refusal of what must not be used."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from nvflare.app_common.abstract.fl_model import FLModel, ParamsType

from fedmrg.eval.observations import OBSERVATIONS
from fedmrg.fl import messages as msg
from fedmrg.fl.aggregator import DenseAggregator, LowRankAggregator
from fedmrg.fl.codec import CodecSpec, decode, encode, round_delta
from fedmrg.model.contrastive import PrototypeBank

A, B = "llm.q.lora_A.generic.weight", "llm.q.lora_B.generic.weight"
W, BIAS = "encoder.w", "encoder.b"
DIM = 8


def gen(seed):
    return torch.Generator().manual_seed(seed)


def global_state():
    return {A: torch.randn(4, 40, generator=gen(0)) * 0.1, B: torch.randn(24, 4, generator=gen(1)) * 0.1,
            W: torch.randn(32, 48, generator=gen(2)), BIAS: torch.zeros(32)}


def trained(start, seed, scale=0.05):
    g = gen(seed)
    return {name: value + scale * torch.randn(value.shape, generator=g) for name, value in start.items()}


def lowrank_result(site, delta, studies=10, spec=CodecSpec(rank=4, dense_below=64), bank=None):
    payload, _ = encode(delta, spec)
    meta = {msg.CLIENT_NAME: site, msg.TRAIN_STUDIES: studies}
    if bank is not None:
        meta[msg.PROTOTYPE_SUMS], meta[msg.PROTOTYPE_COUNTS] = bank.sums.numpy(), bank.counts.numpy()
    return FLModel(params_type=ParamsType.DIFF, params={msg.UPDATE: msg.payload_to_array(payload)}, meta=meta)


def aggregator(start, **kwargs):
    agg = LowRankAggregator(max_rank=kwargs.pop("max_rank", 8), prototype_dim=DIM, **kwargs)
    agg.start_round(start, 0)
    return agg


def test_merge_is_the_study_weighted_mean_of_what_sites_sent():
    start = global_state()
    deltas = [round_delta(start, trained(start, seed)) for seed in (10, 11)]
    agg = aggregator(start)
    assert agg.accept_model(lowrank_result("site-1", deltas[0], studies=30))
    assert agg.accept_model(lowrank_result("site-2", deltas[1], studies=10))
    merged = agg.aggregate_model()
    assert merged.meta["accepted"] == ["site-1", "site-2"] and merged.params_type == ParamsType.FULL
    sent = [decode(encode(d, CodecSpec(rank=4, dense_below=64))[0]) for d in deltas]
    mean_product = 0.75 * sent[0]["llm.q.lora_AB.generic.weight"].dense() + 0.25 * sent[1]["llm.q.lora_AB.generic.weight"].dense()
    product = merged.params[B] @ merged.params[A] + agg.residual["llm.q.lora_AB.generic.weight"].dense()
    torch.testing.assert_close(product, start[B] @ start[A] + mean_product, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(merged.params[W], start[W] + 0.75 * sent[0][W].dense() + 0.25 * sent[1][W].dense())
    torch.testing.assert_close(merged.params[BIAS], 0.75 * sent[0][BIAS] + 0.25 * sent[1][BIAS])
    assert merged.params[A].shape == start[A].shape  # back to the adapter rank


def test_server_residual_is_kept_for_the_next_round_and_survives_a_checkpoint():
    start = global_state()
    agg = aggregator(start)
    for seed, site in ((10, "site-1"), (11, "site-2")):
        agg.accept_model(lowrank_result(site, round_delta(start, trained(start, seed))))
    agg.aggregate_model()
    assert agg.residual, "two rank-4 updates of a rank-4 adapter leave something beyond rank 4"
    restored = LowRankAggregator()
    restored.load_state_dict(agg.state_dict())
    for name, value in agg.residual.items():
        torch.testing.assert_close(restored.residual[name].dense(), value.dense())


def bad_updates(start):
    delta = round_delta(start, trained(start, 10))
    nan = dict(delta, **{BIAS: torch.full((32,), float("nan"))})
    wrong_shape = dict(delta, **{W: torch.randn(48, 32, generator=gen(3))})
    local = dict(delta, **{"llm.q.lora_AB.specialized.weight": delta["llm.q.lora_AB.generic.weight"]})
    client_head = dict(delta, **{"contrastive.client.image.weight": torch.randn(8, 8)})
    huge = dict(delta, **{W: delta[W] * 3e3})  # a norm of about 6000, still finite in fp16
    return {
        "not finite": lowrank_result("s", nan),
        "shape": lowrank_result("s", wrong_shape),
        "site-local parameters sent (1): llm.q.lora_AB.specialized": lowrank_result("s", local),
        "contrastive.client": lowrank_result("s", client_head),
        "above the bound": lowrank_result("s", huge),
        "rank 8 above the bound 4": lowrank_result("s", delta, spec=CodecSpec(rank=8, dense_below=64)),
        "unreadable update payload": FLModel(params_type=ParamsType.DIFF, params={msg.UPDATE: np.arange(40, dtype=np.uint8)},
                                             meta={msg.TRAIN_STUDIES: 3}),
        "train_studies": lowrank_result("s", delta, studies=0),
        "params_type": FLModel(params_type=ParamsType.FULL, params={msg.UPDATE: np.zeros(4, np.uint8)},
                               meta={msg.TRAIN_STUDIES: 3}),
        "exactly": FLModel(params_type=ParamsType.DIFF, params={**msg.to_numpy(start)}, meta={msg.TRAIN_STUDIES: 3}),
    }


@pytest.mark.parametrize("reason", list(bad_updates(global_state())))
def test_a_bad_update_is_refused_with_its_reason_and_changes_nothing(reason):
    start = global_state()
    agg = aggregator(start, max_rank=4)
    assert agg.accept_model(bad_updates(start)[reason]) is False
    assert reason in agg.refused["s" if "s" in agg.refused else "unknown site"]
    merged = agg.aggregate_model()
    for name, value in start.items():
        assert torch.equal(merged.params[name], value)


def test_one_broken_site_does_not_stop_the_others():
    start = global_state()
    agg = aggregator(start, max_rank=4)
    agg.accept_model(bad_updates(start)["not finite"])
    assert agg.accept_model(lowrank_result("site-2", round_delta(start, trained(start, 11))))
    merged = agg.aggregate_model()
    assert merged.meta["accepted"] == ["site-2"] and "s" in merged.meta["refused"]
    assert all(bool(torch.isfinite(v).all()) for v in merged.params.values())


def bank(seed, counts):
    features = torch.randn(sum(counts), DIM, generator=gen(seed))
    positives = torch.zeros(sum(counts), len(OBSERVATIONS), dtype=torch.bool)
    row = 0
    for finding, count in enumerate(counts):
        positives[row: row + count, finding] = True
        row += count
    out = PrototypeBank(len(OBSERVATIONS), DIM)
    out.add(features, positives)
    return out


def test_prototypes_are_pooled_by_count():
    start = global_state()
    delta = round_delta(start, trained(start, 10))
    first, second = bank(1, [5, 1]), bank(2, [1, 0, 3])
    agg = aggregator(start)
    agg.accept_model(lowrank_result("site-1", delta, bank=first))
    agg.accept_model(lowrank_result("site-2", delta, bank=second))
    merged = agg.aggregate_model()
    pooled = PrototypeBank(len(OBSERVATIONS), DIM)
    pooled.merge(first)
    pooled.merge(second)
    expected, available = pooled.means()
    np.testing.assert_allclose(merged.meta[msg.PROTOTYPES], expected.numpy(), atol=1e-6)
    assert merged.meta[msg.AVAILABLE].tolist() == [True, True, True] + [False] * (len(OBSERVATIONS) - 3)


def test_forged_prototypes_are_refused():
    start = global_state()
    forged = bank(1, [2])
    forged.sums *= 50  # a sum of 2 unit vectors cannot be this long
    agg = aggregator(start)
    assert not agg.accept_model(lowrank_result("site-1", round_delta(start, trained(start, 10)), bank=forged))
    assert "exceed" in agg.refused["site-1"]


def test_dense_baseline_averages_lora_a_and_b_separately():
    start = global_state()
    sites = [trained(start, 10, 0.3), trained(start, 11, 0.3)]
    agg = DenseAggregator(prototype_dim=DIM)
    agg.start_round(start, 0)
    for k, state in enumerate(sites):
        model = FLModel(params_type=ParamsType.FULL, params=msg.to_numpy(state),
                        meta={msg.CLIENT_NAME: f"site-{k}", msg.TRAIN_STUDIES: 10})
        assert agg.accept_model(model)
    merged = agg.aggregate_model().params
    torch.testing.assert_close(merged[A], (sites[0][A] + sites[1][A]) / 2)
    torch.testing.assert_close(merged[B], (sites[0][B] + sites[1][B]) / 2)
    exact = (sites[0][B] @ sites[0][A] + sites[1][B] @ sites[1][A]) / 2
    assert not torch.allclose(merged[B] @ merged[A], exact, atol=1e-3)  # FedIT's inexactness


def test_dense_baseline_refuses_local_parameters():
    start = global_state()
    agg = DenseAggregator()
    agg.start_round(start, 0)
    params = {**msg.to_numpy(start), "llm.q.lora_A.specialized.weight": np.zeros((4, 40), np.float32)}
    assert not agg.accept_model(FLModel(params_type=ParamsType.FULL, params=params,
                                        meta={msg.CLIENT_NAME: "site-1", msg.TRAIN_STUDIES: 5}))
    assert "specialized" in agg.refused["site-1"]

