"""What a round moves: the receiver's measure of each message, and FLARE's quantization filters on
hosts without a GPU (the dense baseline's fl.quantization)."""

from __future__ import annotations

import numpy as np
import pytest
from nvflare.apis.dxo import DXO, DataKind, from_shareable
from nvflare.apis.fl_constant import ReturnCode
from nvflare.apis.fl_context import FLContext
from nvflare.apis.shareable import make_reply

from fedmrg.config import load_config
from fedmrg.errors import ConfigError
from fedmrg.fl.quantization import HostDequantizer, HostQuantizer
from fedmrg.fl.wire import WIRE_BYTES, WireMeter, serialized_size


def model_message(values: dict[str, np.ndarray]):
    return DXO(data_kind=DataKind.WEIGHTS, data=values, meta={"train_studies": 3}).to_shareable()


def weights(rows: int = 256) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    return {
        "lora_B.weight": rng.standard_normal((rows, 16)).astype(np.float32),
        "norm.bias": rng.standard_normal(64).astype(np.float32),  # 1-D: bitsandbytes' CPU path reshapes it
    }


def test_the_meter_records_the_serialized_size_of_what_arrived():
    message = model_message(weights())
    size = serialized_size(message)
    assert size > sum(v.nbytes for v in weights().values())  # payload and metadata
    measured = from_shareable(WireMeter().process(message, FLContext()))
    assert measured.get_meta_prop(WIRE_BYTES) == size
    assert measured.get_meta_prop("train_studies") == 3 and set(measured.data) == set(weights())


def test_the_meter_lets_an_error_reply_through():
    reply = make_reply(ReturnCode.EXECUTION_EXCEPTION)
    assert WireMeter().process(reply, FLContext()) is reply


@pytest.mark.parametrize(
    "kind, smaller, tolerance",
    [("float16", 1.9, 1e-3), ("blockwise8", 3.5, 0.05), ("float4", 6.0, 0.5), ("normfloat4", 6.0, 0.3)],
)
def test_flares_quantization_round_trips_on_the_cpu_in_the_original_shapes(kind, smaller, tolerance):
    original = weights(rows=4096)  # large enough that the quantizers' tables and metadata do not dominate
    message = model_message({name: value.copy() for name, value in original.items()})
    dense = serialized_size(message)
    sent = HostQuantizer(quantization_type=kind).process(message, FLContext())
    assert dense / serialized_size(sent) > smaller
    received = from_shareable(HostDequantizer().process(sent, FLContext()))
    for name, value in original.items():
        restored = np.asarray(received.data[name])
        assert restored.shape == value.shape and restored.dtype == np.float32
        assert np.abs(restored - value).mean() < tolerance
    assert "quant_state" not in received.meta


def test_quantization_filters_apply_to_the_dense_baseline_only():
    load_config("tiny", {"fl.update": "dense", "fl.quantization": "normfloat4"})
    with pytest.raises(ConfigError, match="fl.quantization: applies to update: dense"):
        load_config("tiny", {"fl.quantization": "normfloat4"})
    with pytest.raises(ConfigError, match="quantization"):
        load_config("tiny", {"fl.update": "dense", "fl.quantization": "int3"})


def test_the_summary_gives_both_directions_and_the_round_trip_against_dense():
    from fedmrg.fl.results import traffic, traffic_sentence

    rounds = [
        {
            "bytes_up": {"site-1": 1 << 20, "site-2": None},  # site-2's result carried no measure
            "bytes_down": {"site-1": 2 << 20, "site-2": 2 << 20},
            "dense_bytes_up": {"site-1": 8 << 20, "site-2": 8 << 20},
            "dense_bytes_down": {"site-1": 8 << 20, "site-2": 8 << 20},
        }
    ]
    totals = traffic({"rounds": rounds})
    assert totals == {
        "bytes_up": 1 << 20,
        "bytes_down": 4 << 20,
        "dense_bytes_up": 16 << 20,
        "dense_bytes_down": 16 << 20,
    }
    assert traffic_sentence(totals) == (
        "On the wire: up 1.00 MiB (dense fp32 / this: 16.0x), down 4.00 MiB (dense fp32 / this: 4.0x), "
        "both ways 5.00 MiB (dense fp32 / this: 6.4x); dense fp32 FedAvg of the same parameters moves "
        "16.00 MiB each way."
    )
    older = {**totals, "dense_bytes_down": 0}  # a run recorded before the download had a dense size
    assert "both ways 5.00 MiB;" in traffic_sentence(older) and "down 4.00 MiB," in traffic_sentence(older)
