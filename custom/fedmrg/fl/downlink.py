"""The download: the round's change of the global model, compressed, and applied alike everywhere.

After a merge the server does not send the new global state. It sends the change from the state
every site holds to the new one, compressed by the upload's codec (:func:`fedmrg.fl.codec.encode`:
low-rank factors of the large matrices, small and 1-D tensors dense, in ``fl.precision``), with
error feedback at the server: what the compression leaves out of one round's change is added to
the next one's, so the sites' model tracks the merged one instead of drifting from it.

Server and sites then hold the same model, bit for bit, because both apply the same payload with
:func:`apply_change`: dequantizing and adding are elementwise, and a factored change is multiplied
out one rank-1 term after another in a fixed order, never by a matrix product whose summation order
depends on the machine's math library. IEEE 754 rounds each such operation the same way on every
CPU and GPU. Every message names the state it applies to and the state it yields by their digests
(:func:`fedmrg.fl.messages.state_digest`); a site that holds another state, or gets another result,
asks for the full state instead of training from a wrong model.
"""

from __future__ import annotations

import torch

from fedmrg.fl.codec import CodecSpec, Delta, Factored, decode, decode_checked, encode


def expanded(change: Factored) -> torch.Tensor:
    """``left @ right``, summed one rank-1 term at a time in a fixed order (the same bits on every host)."""
    left, right = change.left.float(), change.right.float()
    product = torch.zeros(left.shape[0], right.shape[1])
    for i in range(left.shape[1]):
        product = product + left[:, i : i + 1] * right[i : i + 1, :]
    return product.reshape(change.view) if change.view else product


def apply_change(state: dict[str, torch.Tensor], change: dict[str, Delta]) -> dict[str, torch.Tensor]:
    """``state`` plus a decoded change: fp32, and the same bits wherever it is computed."""
    if change.keys() != state.keys():
        raise ValueError("a change must hold every parameter of the global state, and nothing else")
    out = {}
    for name, value in state.items():
        step = expanded(change[name]) if isinstance(change[name], Factored) else change[name].float()
        out[name] = value.float() + step
    return out


def read_change(payload: bytes, state: dict[str, torch.Tensor], max_rank: int) -> dict[str, Delta]:
    """A change payload from the server, checked against the parameters of ``state`` before any
    arithmetic (ValueError naming the first problem)."""
    expected = {name: tuple(value.shape) for name, value in state.items()}
    try:
        return decode_checked(payload, expected, max_rank)
    except ValueError:
        raise
    except Exception as exc:  # safetensors has its own error type
        raise ValueError(f"unreadable global change ({exc.__class__.__name__}: {exc})") from None


class Downlink:
    """The server's side of the download: the compressed change of each round, and its residual.

    Args:
        spec: how a change is compressed (the job's upload codec: ``fl.rank``, ``fl.precision``, ...).
    """

    def __init__(self, spec: CodecSpec) -> None:
        self.spec = spec
        self.residual: dict[str, torch.Tensor] = {}

    def step(
        self, current: dict[str, torch.Tensor], target: dict[str, torch.Tensor]
    ) -> tuple[bytes, dict[str, torch.Tensor]]:
        """The payload that takes the sites from ``current`` towards ``target`` (plus what earlier
        rounds left out), and the state it yields: the new global model, at the server as at every site."""
        change = {name: target[name].float() - current[name].float() for name in current}
        for name, left_out in self.residual.items():
            change[name] = change[name] + left_out
        payload, _ = encode(change, self.spec)
        sent = apply_change(current, decode(payload))
        self.residual = {name: current[name].float() + change[name] - sent[name] for name in current}
        return payload, sent

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {name: value.contiguous() for name, value in self.residual.items()}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        self.residual = dict(state)
