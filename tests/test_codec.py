"""The low-rank update codec: exactness, compression, error feedback, byte counts."""

from __future__ import annotations

import pytest
import torch

from fedmrg.fl.codec import (
    CodecSpec,
    ErrorFeedback,
    Factored,
    decode,
    dense_bytes,
    encode,
    payload_bytes,
    payload_header,
    round_delta,
)


def dense(value):
    return value.dense() if isinstance(value, Factored) else value


def low_rank(d, k, rank, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(d, rank, generator=g) @ torch.randn(rank, k, generator=g)


def shared_state(seed=0, r=4):
    g = torch.Generator().manual_seed(seed)
    return {
        "encoder.w": torch.randn(64, 96, generator=g),
        "encoder.bias": torch.randn(64, generator=g),
        "llm.q.lora_A.generic.weight": torch.randn(r, 80, generator=g),
        "llm.q.lora_B.generic.weight": torch.randn(48, r, generator=g) * 0.1,
    }


def test_lora_pairs_travel_as_the_change_of_their_product():
    before, after = shared_state(0), shared_state(1)
    delta = round_delta(before, after)
    assert set(delta) == {"encoder.w", "encoder.bias", "llm.q.lora_AB.generic.weight"}
    product = delta["llm.q.lora_AB.generic.weight"]
    expected = (
        after["llm.q.lora_B.generic.weight"] @ after["llm.q.lora_A.generic.weight"]
        - before["llm.q.lora_B.generic.weight"] @ before["llm.q.lora_A.generic.weight"]
    )
    assert isinstance(product, Factored) and torch.allclose(product.dense(), expected, atol=1e-5)


def test_full_rank_round_trip_is_exact_up_to_the_factor_precision():
    delta = round_delta(shared_state(0), shared_state(1))
    payload, _ = encode(delta, CodecSpec(rank=96, precision="fp16", dense_below=1))
    decoded = decode(payload)
    for name, value in delta.items():
        error = (dense(decoded[name]) - dense(value)).norm() / dense(value).norm()
        assert error < 2e-3, name


def test_error_falls_with_rank_and_left_out_part_is_exact():
    matrix = low_rank(64, 96, 32) + 0.01 * torch.randn(64, 96)
    errors = []
    for rank in (2, 8, 32):
        payload, left_out = encode({"m": matrix}, CodecSpec(rank=rank, precision="fp16", dense_below=1))
        sent = dense(decode(payload)["m"])
        errors.append(float((sent - matrix).norm()))
        assert torch.allclose(sent + left_out["m"], matrix, atol=1e-4)
        assert payload_header(payload)["m"]["rank"] == rank
    assert errors[0] > errors[1] > errors[2]


def test_energy_picks_the_smallest_rank_that_keeps_that_share():
    u, _ = torch.linalg.qr(torch.randn(64, 64))
    v, _ = torch.linalg.qr(torch.randn(96, 64))
    s = torch.tensor([10.0, 5.0, 1.0] + [0.01] * 61)
    matrix = (u * s) @ v.T
    payload, _ = encode({"m": matrix}, CodecSpec(rank=16, energy=0.99, dense_below=1))
    assert payload_header(payload)["m"]["rank"] == 2  # (100 + 25) / 126 > 0.99 > 100 / 126


@pytest.mark.parametrize("precision", ["fp16", "bf16", "int8"])
def test_payload_is_much_smaller_than_dense_fp32(precision):
    state = {"w": torch.randn(512, 512)}
    payload, _ = encode({"w": low_rank(512, 512, 8)}, CodecSpec(rank=8, precision=precision))
    assert payload_bytes(payload) == len(payload)
    assert dense_bytes(state) / payload_bytes(payload) > (20 if precision != "int8" else 40)


def test_int8_factors_keep_the_update_close():
    matrix = low_rank(128, 64, 4)
    payload, _ = encode({"m": matrix}, CodecSpec(rank=4, precision="int8", dense_below=1))
    assert (dense(decode(payload)["m"]) - matrix).norm() / matrix.norm() < 0.02


def run_rounds(steps, spec, feedback_path=None):
    """Cumulative applied update over the rounds; with ``feedback_path``, error feedback saved and
    reloaded between rounds, as a restarted site would."""
    feedback, applied = ErrorFeedback(), torch.zeros_like(steps[0])
    for step in steps:
        delta = feedback.compensate({"m": step}) if feedback_path else {"m": step}
        payload, left_out = encode(delta, spec)
        applied += dense(decode(payload)["m"])
        if feedback_path:
            feedback.keep(left_out, spec)
            feedback.save(feedback_path)
            feedback = ErrorFeedback.load(feedback_path)
    return applied, feedback


def test_error_feedback_makes_the_applied_updates_track_the_true_ones(tmp_path):
    spec = CodecSpec(rank=2, precision="fp16", dense_below=1)
    basis = torch.linalg.qr(torch.randn(48, 4, generator=torch.Generator().manual_seed(0)))[0]
    # rank-4 steps in one subspace, as successive rounds of fine-tuning tend to be; 2 go per round
    steps = [basis @ torch.randn(4, 64, generator=torch.Generator().manual_seed(i)) for i in range(12)]
    truth = sum(steps)
    plain, _ = run_rounds(steps, spec)
    tracked, feedback = run_rounds(steps, spec, tmp_path / "ef.safetensors")
    gap_plain = float((plain - truth).norm() / truth.norm())
    gap_tracked = float((tracked - truth).norm() / truth.norm())
    assert gap_tracked < 0.5 * gap_plain
    # what is still missing is exactly what the site holds back for the next round
    assert torch.allclose(tracked + dense(feedback.residual["m"]), truth, atol=1e-3)


def test_factored_residuals_stay_small_and_exact_below_the_cap():
    before, after = shared_state(0, r=4), shared_state(1, r=4)
    spec = CodecSpec(rank=2, dense_below=1)
    payload, left_out = encode(round_delta(before, after), spec)
    feedback = ErrorFeedback()
    feedback.keep(left_out, spec)
    key = "llm.q.lora_AB.generic.weight"
    kept = feedback.residual[key]
    assert isinstance(kept, Factored) and kept.left.shape[1] <= 8
    assert torch.allclose(kept.dense(), left_out[key].dense(), atol=1e-3)


def test_decode_rejects_other_payloads():
    from safetensors.torch import save

    with pytest.raises(ValueError, match="not a FedMRG low-rank payload"):
        decode(save({"x": torch.zeros(2)}))


def test_spec_rejects_bad_settings():
    for bad in ({"rank": 0}, {"energy": 1.5}, {"precision": "fp8"}):
        with pytest.raises(ValueError):
            CodecSpec(**bad)


def test_tensors_of_more_dimensions_travel_as_matricized_factors():
    g = torch.Generator().manual_seed(5)
    kernel = (torch.randn(32, 2, generator=g) @ torch.randn(2, 64, generator=g)).reshape(32, 1, 8, 8)
    position = torch.randn(1, 16, 2, generator=g) @ torch.randn(2, 48, generator=g)
    payload, left_out = encode({"patch.weight": kernel, "position": position}, CodecSpec(rank=2, dense_below=64))
    header = payload_header(payload)
    assert header["patch.weight"]["kind"] == header["position"]["kind"] == "lowrank"
    decoded = decode(payload)
    for name, value in (("patch.weight", kernel), ("position", position)):
        assert decoded[name].shape == value.shape
        torch.testing.assert_close(dense(decoded[name]) + left_out[name], value)
        assert (dense(decoded[name]) - value).norm() / value.norm() < 1e-2
    assert len(payload) < 0.4 * (kernel.numel() + position.numel()) * 2  # far below dense fp16


def test_large_matrices_use_a_randomized_svd_that_stays_near_optimal():
    from fedmrg.fl.codec import RANDOMIZED_ABOVE

    g = torch.Generator().manual_seed(7)
    d = RANDOMIZED_ABOVE + 76
    matrix = low_rank(d, d + 20, 6, seed=3) + 0.01 * torch.randn(d, d + 20, generator=g)
    state = torch.get_rng_state()
    payload, left_out = encode({"big": matrix}, CodecSpec(rank=6, dense_below=1))
    assert torch.equal(torch.get_rng_state(), state)  # training's random stream is not disturbed
    sent = dense(decode(payload)["big"])
    torch.testing.assert_close(sent + left_out["big"], matrix)
    u, s, vh = torch.linalg.svd(matrix.double(), full_matrices=False)
    best = float(s[6:].pow(2).sum().sqrt())
    assert float((sent - matrix).norm()) < 1.01 * best + 1e-4 * float(matrix.norm())  # + fp16 rounding
