"""FLARE's quantization filters, usable on hosts without a GPU.

``nvflare.app_opt.pt.quantization`` (``ModelQuantizer`` / ``ModelDequantizer``: float16, blockwise8,
float4, normfloat4) is FLARE's answer to dense traffic, and what the dense baseline job offers with
``fl.quantization``. FLARE 2.9 moves every tensor to CUDA before its 8- and 4-bit bitsandbytes calls,
so those fail on a CPU-only server or site, although bitsandbytes 0.50 runs them on the CPU. The two
classes here are FLARE's, unchanged, except that on a host without CUDA their ``.cuda()`` calls leave
tensors where they are: the same arithmetic and the same messages, on any host.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np
import torch
from nvflare.apis.dxo import DXO
from nvflare.apis.fl_context import FLContext
from nvflare.apis.shareable import Shareable
from nvflare.app_opt.pt.quantization.dequantizer import ModelDequantizer
from nvflare.app_opt.pt.quantization.quantizer import ModelQuantizer

_patch_lock = threading.Lock()
_patch_users = 0
_real_cuda = torch.Tensor.cuda


def _stay(tensor: torch.Tensor, *args, **kwargs) -> torch.Tensor:
    return tensor


@contextmanager
def cuda_calls_stay_on_cpu() -> Iterator[None]:
    """Within the block, ``Tensor.cuda()`` returns the tensor itself when this host has no CUDA device
    (shared by concurrent blocks: the first one in patches, the last one out restores)."""
    global _patch_users
    if torch.cuda.is_available():
        yield
        return
    with _patch_lock:
        _patch_users += 1
        torch.Tensor.cuda = _stay
    try:
        yield
    finally:
        with _patch_lock:
            _patch_users -= 1
            if _patch_users == 0:
                torch.Tensor.cuda = _real_cuda


class HostQuantizer(ModelQuantizer):
    """FLARE's ``ModelQuantizer``, also on a host without CUDA (see the module doc)."""

    def process_dxo(self, dxo: DXO, shareable: Shareable, fl_ctx: FLContext) -> DXO | None:
        with cuda_calls_stay_on_cpu():
            return super().process_dxo(dxo, shareable, fl_ctx)


class HostDequantizer(ModelDequantizer):
    """FLARE's ``ModelDequantizer``, also on a host without CUDA (see the module doc), and with each
    tensor in the shape it was quantized from (bitsandbytes 0.50 on the CPU gives a 4-bit dequantized
    ``[n]`` back as ``[1, n]``)."""

    def process_dxo(self, dxo: DXO, shareable: Shareable, fl_ctx: FLContext) -> DXO | None:
        states = dxo.get_meta_prop("quant_state") or {}
        shapes = {name: tuple(state["shape"]) for name, state in states.items() if state and "shape" in state}
        with cuda_calls_stay_on_cpu():
            out = super().process_dxo(dxo, shareable, fl_ctx)
        for name, shape in shapes.items():
            value = out.data.get(name)
            if value is not None and tuple(value.shape) != shape and value.size == int(np.prod(shape)):
                out.data[name] = value.reshape(shape)
        out.update_shareable(shareable)
        return out
