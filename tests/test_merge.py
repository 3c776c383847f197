"""The server's merge of low-rank updates: exact means, re-factorization, refusals."""

from __future__ import annotations

import torch

from fedmrg.fl.codec import CodecSpec, Factored, decode, encode, round_delta
from fedmrg.fl.merge import apply_mean_delta, expected_delta_shapes, refactorize, update_problem, weighted_mean

A, B, AB = "q.lora_A.generic.weight", "q.lora_B.generic.weight", "q.lora_AB.generic.weight"


def gen(seed):
    return torch.Generator().manual_seed(seed)


def global_state(r=4, d=48, k=80):
    return {
        A: torch.randn(r, k, generator=gen(0)) * 0.1,
        B: torch.randn(d, r, generator=gen(1)) * 0.1,
        "head.w": torch.randn(16, 8, generator=gen(2)),
        "head.b": torch.zeros(16),
    }


def client_state(start, seed, change_a=True):
    g = gen(seed)
    return {
        name: value + (0.05 * torch.randn(value.shape, generator=g) if name != A or change_a else 0)
        for name, value in start.items()
    }


def product(state):
    return state[B] @ state[A]


def merged(start, clients, weights, spec=None):
    deltas = [round_delta(start, c) for c in clients]
    if spec is not None:
        deltas = [decode(encode(d, spec)[0]) for d in deltas]
    mean = weighted_mean(deltas, weights)
    return apply_mean_delta(start, mean, generator=gen(9))


def test_merged_product_plus_kept_residual_is_the_weighted_mean_of_products():
    start = global_state()
    clients = [client_state(start, s) for s in (10, 11, 12)]
    weights = [30, 10, 60]
    new, residual = merged(start, clients, weights)
    exact = sum(w * product(c) for w, c in zip(weights, clients)) / sum(weights)
    assert torch.allclose(product(new) + residual[AB].dense(), exact, atol=1e-5)
    assert new[A].shape == start[A].shape and new[B].shape == start[B].shape  # back to the adapter rank
    fedit = (sum(w * c[B] for w, c in zip(weights, clients)) / sum(weights)) @ (
        sum(w * c[A] for w, c in zip(weights, clients)) / sum(weights)
    )
    assert (fedit - exact).norm() > 1e-3  # averaging A and B separately is not the mean of products
    assert torch.allclose(
        new["head.w"], sum(w * c["head.w"] for w, c in zip(weights, clients)) / sum(weights), atol=1e-5
    )


def test_without_truncation_the_merge_is_exact():
    start = global_state()
    clients = [client_state(start, s, change_a=False) for s in (20, 21)]  # mean product keeps rank r
    new, residual = merged(start, clients, [1, 3])
    exact = (product(clients[0]) + 3 * product(clients[1])) / 4
    assert torch.allclose(product(new), exact, atol=1e-5)
    assert residual[AB].dense().norm() < 1e-4


def test_non_square_factors_keep_their_orientation():
    start = global_state(r=2, d=7, k=30)  # a transposed V^T or a swapped A/B would not even fit
    clients = [client_state(start, 30)]
    new, residual = merged(start, clients, [1])
    assert new[B].shape == (7, 2) and new[A].shape == (2, 30)
    assert torch.allclose(product(new) + residual[AB].dense(), product(clients[0]), atol=1e-5)


def test_the_merge_of_compressed_updates_stays_close():
    start = global_state()
    clients = [client_state(start, s) for s in (40, 41, 42)]
    new, _ = merged(start, clients, [1, 1, 1], spec=CodecSpec(rank=8, dense_below=1))
    exact = sum(product(c) for c in clients) / 3
    best_rank4_error = torch.linalg.svdvals(exact)[4:].norm()  # Eckart-Young: nothing of rank 4 does better
    assert (product(new) - exact).norm() <= best_rank4_error * 1.05 + 1e-3


def test_a_zero_product_keeps_every_adapter_direction_alive():
    b, a, rest = refactorize(Factored(torch.zeros(10, 3), torch.zeros(3, 20)), rank=3, generator=gen(0))
    assert torch.equal(b, torch.zeros(10, 3)) and (a.norm(dim=1) > 0).all()
    assert rest.dense().abs().max() == 0


def test_bad_updates_are_refused_with_a_reason():
    start = global_state()
    expected = expected_delta_shapes(start)
    good = round_delta(start, client_state(start, 50))
    assert update_problem(good, expected, max_rank=8, max_norm=100.0) is None
    nan = dict(good, **{"head.b": torch.full((16,), float("nan"))})
    assert "not finite" in update_problem(nan, expected, 8, 100.0)
    shape = dict(good, **{"head.w": torch.zeros(8, 16)})
    assert "shape" in update_problem(shape, expected, 8, 100.0)
    local = dict(good, **{"q.lora_AB.specialized.weight": good[AB]})
    assert "unexpected" in update_problem(local, expected, 8, 100.0)
    wide = dict(good, **{AB: Factored(torch.randn(48, 12), torch.randn(12, 80))})
    assert "rank 12" in update_problem(wide, expected, 8, 1e6)
    big = dict(good, **{"head.w": torch.full((16, 8), 100.0)})
    assert "norm" in update_problem(big, expected, 8, 100.0)
    missing = {k: v for k, v in good.items() if k != "head.b"}
    assert "missing" in update_problem(missing, expected, 8, 100.0)
