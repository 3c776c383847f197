"""The server's aggregator: exact merging of what sites send, and refusal of what must not be used."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from nvflare.app_common.abstract.fl_model import FLModel, ParamsType

from fedmrg.fl import messages as msg
from fedmrg.fl.aggregator import DenseAggregator, LowRankAggregator
from fedmrg.fl.codec import CodecSpec, Factored, decode, encode, round_delta
from fedmrg.fl.merge import clip_update, robust_mean
from fedmrg.labels.observations import OBSERVATIONS
from fedmrg.model.prototypes import PrototypeBank

A, B = "llm.q.lora_A.generic.weight", "llm.q.lora_B.generic.weight"
W, BIAS = "encoder.w", "encoder.b"
DIM = 8


def gen(seed):
    return torch.Generator().manual_seed(seed)


def global_state():
    return {
        A: torch.randn(4, 40, generator=gen(0)) * 0.1,
        B: torch.randn(24, 4, generator=gen(1)) * 0.1,
        W: torch.randn(32, 48, generator=gen(2)),
        BIAS: torch.zeros(32),
    }


def trained(start, seed, scale=0.05):
    g = gen(seed)
    return {name: value + scale * torch.randn(value.shape, generator=g) for name, value in start.items()}


SPEC = CodecSpec(rank=4, dense_below=64)


def lowrank_result(site, delta, studies=10, spec=SPEC, bank=None):
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
    mean_product = (
        0.75 * sent[0]["llm.q.lora_AB.generic.weight"].dense() + 0.25 * sent[1]["llm.q.lora_AB.generic.weight"].dense()
    )
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
        "unreadable update payload": FLModel(
            params_type=ParamsType.DIFF, params={msg.UPDATE: np.arange(40, dtype=np.uint8)}, meta={msg.TRAIN_STUDIES: 3}
        ),
        "train_studies": lowrank_result("s", delta, studies=0),
        "params_type": FLModel(
            params_type=ParamsType.FULL, params={msg.UPDATE: np.zeros(4, np.uint8)}, meta={msg.TRAIN_STUDIES: 3}
        ),
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
    assert merged.meta["merged"] is True


def test_with_fewer_accepted_updates_than_min_sites_the_round_changes_nothing():
    start = global_state()
    agg = aggregator(start, max_rank=4, min_updates=2)
    agg.accept_model(bad_updates(start)["not finite"])
    agg.accept_model(lowrank_result("site-2", round_delta(start, trained(start, 11))))
    merged = agg.aggregate_model()
    assert merged.meta["accepted"] == ["site-2"] and merged.meta["merged"] is False
    for name, value in start.items():
        assert torch.equal(merged.params[name], value)


def bank(seed, counts):
    features = torch.randn(sum(counts), DIM, generator=gen(seed))
    positives = torch.zeros(sum(counts), len(OBSERVATIONS), dtype=torch.bool)
    row = 0
    for finding, count in enumerate(counts):
        positives[row : row + count, finding] = True
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
    # by hand: a finding's prototype is the direction of the sum of the unit features of every study
    # (at either site) that has it
    one, two = torch.randn(6, DIM, generator=gen(1)), torch.randn(4, DIM, generator=gen(2))  # bank()'s draws
    studies = {0: [one[0:5], two[0:1]], 1: [one[5:6]], 2: [two[1:4]]}
    expected = np.zeros((len(OBSERVATIONS), DIM), dtype=np.float32)
    for finding, parts in studies.items():
        rows = torch.cat(parts)
        total = (rows / rows.norm(dim=1, keepdim=True)).sum(dim=0)
        expected[finding] = (total / total.norm()).numpy()
    np.testing.assert_allclose(merged.meta[msg.PROTOTYPES], expected, atol=1e-6)
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
        model = FLModel(
            params_type=ParamsType.FULL,
            params=msg.to_numpy(state),
            meta={msg.CLIENT_NAME: f"site-{k}", msg.TRAIN_STUDIES: 10},
        )
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
    assert not agg.accept_model(
        FLModel(params_type=ParamsType.FULL, params=params, meta={msg.CLIENT_NAME: "site-1", msg.TRAIN_STUDIES: 5})
    )
    assert "specialized" in agg.refused["site-1"]


PRODUCT = "llm.q.lora_AB.generic.weight"
SPEC = CodecSpec(rank=4, dense_below=64)


def sent(delta):
    """What the server reconstructs from a site's payload, entry by entry, dense."""
    return {name: v.dense() if isinstance(v, Factored) else v for name, v in decode(encode(delta, SPEC)[0]).items()}


def global_change(start, merged):
    """The change of every entry, the LoRA pair as its product."""
    return {
        W: merged.params[W] - start[W],
        BIAS: merged.params[BIAS] - start[BIAS],
        PRODUCT: merged.params[B] @ merged.params[A] - start[B] @ start[A],
    }


def attacked_round(start, **kwargs):
    """Two honest sites and one that scales its update up 10,000x (still under the norm bound it is given)."""
    honest = [round_delta(start, trained(start, seed)) for seed in (10, 11)]
    hostile = {
        name: Factored(1e4 * v.left, v.right, v.view) if isinstance(v, Factored) else 1e4 * v
        for name, v in round_delta(start, trained(start, 12)).items()
    }
    agg = aggregator(start, max_norm=1e9, **kwargs)
    for site, delta in (("site-1", honest[0]), ("site-2", honest[1]), ("site-3", hostile)):
        assert agg.accept_model(lowrank_result(site, delta))
    return agg, agg.aggregate_model(), [sent(d) for d in honest]


@pytest.mark.parametrize("rule", ["median", "trimmed_mean"])
def test_one_hostile_site_of_three_cannot_move_the_global_model_beyond_the_honest_sites(rule):
    """The stated bound: every merged coordinate lies within the honest sites' range; a plain entry of
    the global model moves no further; a LoRA product, cut back to the adapter rank, moves at most
    twice the honest sites' combined norm (its best rank-r approximation is no further from the
    merged target than the old product is)."""
    start = global_state()
    agg, merged, honest = attacked_round(start, aggregation=rule)
    change = global_change(start, merged)
    for name in (W, BIAS):
        low, high = torch.minimum(honest[0][name], honest[1][name]), torch.maximum(honest[0][name], honest[1][name])
        assert bool((change[name] >= low - 1e-5).all() and (change[name] <= high + 1e-5).all()), name
    honest_norm = float(torch.sqrt(honest[0][PRODUCT].pow(2).sum() + honest[1][PRODUCT].pow(2).sum()))
    assert float(change[PRODUCT].norm()) <= 2 * honest_norm + 1e-4
    _, plain, _ = attacked_round(start)  # the attack is real: the plain mean follows it
    assert float((plain.params[W] - start[W]).abs().max()) > 100 * float((high - low).abs().max())


def test_the_robust_merge_keeps_every_coordinate_within_the_honest_range_lora_products_included():
    start = global_state()
    deltas = [decode(encode(round_delta(start, trained(start, seed)), SPEC)[0]) for seed in (10, 11, 12)]
    deltas[2] = {
        name: Factored(1e4 * v.left, v.right, v.view) if isinstance(v, Factored) else 1e4 * v
        for name, v in deltas[2].items()
    }
    merged = robust_mean(deltas, "median")
    for name, value in merged.items():
        dense = [v[name].dense() if isinstance(v[name], Factored) else v[name] for v in deltas[:2]]
        result = value.dense() if isinstance(value, Factored) else value
        assert bool((result >= torch.minimum(*dense) - 1e-5).all() and (result <= torch.maximum(*dense) + 1e-5).all())


def test_clipping_bounds_each_sites_update_and_so_the_merged_one():
    start = global_state()
    agg, merged, _ = attacked_round(start, clip_norm=0.5)
    change = global_change(start, merged)
    plain = {name: change[name] for name in (W, BIAS)}  # the LoRA product's cut adds at most as much again
    assert float(torch.sqrt(sum(v.pow(2).sum() for v in plain.values()))) <= 0.5 + 1e-5
    assert float(change[PRODUCT].norm()) <= 2 * 0.5 + 1e-5


def test_a_second_update_from_a_site_in_one_round_is_refused_and_the_first_counts():
    start = global_state()
    first, second = (round_delta(start, trained(start, seed)) for seed in (10, 11))
    agg = aggregator(start)
    assert agg.accept_model(lowrank_result("site-1", first))
    assert not agg.accept_model(lowrank_result("site-1", second))
    merged = agg.aggregate_model()
    assert merged.meta["accepted"] == ["site-1"] and "second update" in merged.meta["refused"]["site-1"]
    torch.testing.assert_close(merged.params[W], start[W] + sent(first)[W])


# ------------------------------------------------------------------- state across two rounds
def merged_round(agg, start, round_number, sites):
    """One round on ``agg`` from ``start``: each (seed, studies) site trains and sends; returns the new
    global state and the study-weighted mean of the LoRA product changes the sites sent (dense)."""
    agg.start_round(start, round_number)
    total = sum(studies for _, studies in sites)
    mean = torch.zeros(start[B].shape[0], start[A].shape[1])
    for number, (seed, studies) in enumerate(sites):
        delta = round_delta(start, trained(start, seed))
        assert agg.accept_model(lowrank_result(f"site-{number + 1}", delta, studies=studies))
        mean += studies / total * sent(delta)[PRODUCT]
    return agg.aggregate_model().params, mean


def best_rank(matrix, rank):
    u, s, vh = torch.linalg.svd(matrix.double(), full_matrices=False)
    return ((u[:, :rank] * s[:rank]) @ vh[:rank]).float()


def test_over_two_rounds_the_adapter_plus_the_server_residual_is_the_start_plus_both_means():
    """What re-factorization cut off in round 1 comes back in round 2: nothing of either round's mean is lost."""
    start = global_state()
    agg = LowRankAggregator(max_rank=8, prototype_dim=DIM)
    first, mean_1 = merged_round(agg, start, 0, [(10, 30), (11, 10)])
    second, mean_2 = merged_round(agg, first, 1, [(12, 20), (13, 20)])
    kept = agg.residual[PRODUCT].dense()
    expected = start[B] @ start[A] + mean_1 + mean_2
    torch.testing.assert_close(second[B] @ second[A] + kept, expected, atol=1e-5, rtol=1e-4)
    assert float(kept.norm()) > 1e-3  # the test has something to lose


def test_without_the_server_residual_each_round_keeps_the_best_rank_r_product_and_drops_the_rest():
    start = global_state()
    agg = LowRankAggregator(max_rank=8, prototype_dim=DIM, server_residual=False)
    first, mean_1 = merged_round(agg, start, 0, [(10, 30), (11, 10)])
    second, mean_2 = merged_round(agg, first, 1, [(12, 20), (13, 20)])
    assert agg.residual == {} and agg.state_dict() == {}
    rank = start[A].shape[0]
    torch.testing.assert_close(first[B] @ first[A], best_rank(start[B] @ start[A] + mean_1, rank), atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(
        second[B] @ second[A], best_rank(first[B] @ first[A] + mean_2, rank), atol=1e-5, rtol=1e-4
    )


# --------------------------------------------------------------- robust rules, pinned values
def plain_deltas(values):
    """One 2 x 3 dense entry per site, every coordinate of site i equal to ``values[i]`` (times a sign pattern)."""
    pattern = torch.tensor([[1.0, -1.0, 2.0], [0.5, 3.0, -2.0]])
    return [{W: value * pattern} for value in values]


@pytest.mark.parametrize(
    "values, rule, trim, expected",
    [
        ([1, 2, 10, 4, 20], "median", 1, 4.0),
        ([1, 2, 10, 4, 20], "trimmed_mean", 1, (2 + 4 + 10) / 3),
        ([1, 2, 10, 4, 20], "trimmed_mean", 2, 4.0),
        ([1, 2, 10, 4], "median", 1, (2 + 4) / 2),  # an even count: the mean of the middle two
        ([1, 2, 10, 4], "trimmed_mean", 1, (2 + 4) / 2),
        ([1, 2, 10, 4], "trimmed_mean", 2, (2 + 4) / 2),  # too few to cut 2 at each end: the median
    ],
)
def test_robust_rules_give_the_known_values_with_four_and_five_sites(values, rule, trim, expected):
    merged = robust_mean(plain_deltas(values), rule, trim)[W]
    pattern = plain_deltas([1])[0][W]
    # the pattern's negative coordinates order the sites the other way; the rules must not care
    torch.testing.assert_close(merged, expected * pattern, atol=1e-6, rtol=0)


def test_the_aggregator_applies_the_trimmed_mean_of_five_sites():
    start = global_state()
    agg = aggregator(start, aggregation="trimmed_mean", trim=1)
    for number, value in enumerate([1.0, 2.0, 10.0, 4.0, 20.0]):
        delta = round_delta(start, {**start, BIAS: start[BIAS] + value})
        assert agg.accept_model(lowrank_result(f"site-{number + 1}", delta))
    merged = agg.aggregate_model()
    torch.testing.assert_close(merged.params[BIAS], start[BIAS] + 16 / 3, atol=1e-3, rtol=0)


def test_clipping_scales_an_update_to_exactly_the_bound_and_leaves_a_smaller_one_alone():
    delta = {W: torch.tensor([[3.0, 0.0]]), BIAS: torch.tensor([0.0, 4.0])}  # whole norm 5
    clipped = clip_update(delta, 1.0)
    torch.testing.assert_close(clipped[W], torch.tensor([[0.6, 0.0]]))
    torch.testing.assert_close(clipped[BIAS], torch.tensor([0.0, 0.8]))
    assert clip_update(delta, 10.0) is delta


def test_a_clipped_site_still_moves_the_model_by_its_clipped_update():
    start = global_state()
    delta = round_delta(start, {**start, BIAS: start[BIAS] + 2.0})  # only the bias: norm 2 * sqrt(32)
    agg = aggregator(start, clip_norm=1.0)
    assert agg.accept_model(lowrank_result("site-1", delta))
    merged = agg.aggregate_model()
    change = merged.params[BIAS] - start[BIAS]
    assert float(change.norm()) == pytest.approx(1.0, rel=1e-3)  # not zero, not more
    torch.testing.assert_close(change, torch.full((32,), 2.0) / (2.0 * 32**0.5), atol=1e-3, rtol=0)
