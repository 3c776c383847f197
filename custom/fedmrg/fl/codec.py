"""Low-rank update codec (FedMRG's communication compression): what a site sends instead of dense weights.

A round's update is the change of the shared parameters, ``{name: delta}``:

- a LoRA module's two matrices are replaced by the change of their product, ``B1 A1 - B0 A0``
  (rank <= 2r), kept in factored form (:class:`Factored`) so that no ``d x k`` matrix is built;
- every other tensor of at least ``dense_below`` values and two or more dimensions is a matrix delta
  (a conv kernel or a position embedding is first matricized: :func:`matricized`);
- 1-D and small tensors are sent dense in fp16.

Matrices are truncated by SVD (a randomized one for large dense matrices) to ``rank``, or to the
smallest rank that keeps ``energy`` of the squared singular values, and sent as two factors,
``U*S`` and ``V^T``, in fp16, bf16 or 8-bit with one scale per singular component. With error
feedback, what the truncation and the rounding dropped is kept
by the site (:class:`ErrorFeedback`, saved on its disk) and added to the next round's delta, so
that the applied updates track the true ones over the rounds.

A payload is serialised with safetensors (tensors + a JSON header); its size in bytes is exactly
what goes over the wire (:func:`payload_bytes`).
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch
from safetensors.torch import load as load_bytes
from safetensors.torch import load_file, save, save_file

Precision = Literal["fp16", "bf16", "int8"]
_FLOAT_DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16}
_FORMAT = "fedmrg-lowrank-1"
LORA_A, LORA_B, LORA_PRODUCT = ".lora_A.", ".lora_B.", ".lora_AB."
RESIDUAL_RANK_FACTOR = 4  # residuals (site and server) are kept at <= 4 x the rank that is sent


@dataclass(frozen=True)
class Factored:
    """A matrix kept as ``left @ right`` (``[d, m]`` and ``[m, k]``): a LoRA product or its change,
    or a tensor of more dimensions (``view``) whose matricization ``[d, k]`` is factored."""

    left: torch.Tensor
    right: torch.Tensor
    view: tuple[int, ...] | None = None

    @property
    def shape(self) -> tuple[int, ...]:
        return self.view or (self.left.shape[0], self.right.shape[1])

    def dense(self) -> torch.Tensor:
        product = self.left @ self.right
        return product.reshape(self.view) if self.view else product

    def __add__(self, other: Factored) -> Factored:
        return Factored(torch.cat([self.left, other.left], 1), torch.cat([self.right, other.right], 0), self.view)

    def svd(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Thin SVD of ``left @ right`` through QR of each side: O((d + k) m^2), never d x k."""
        q_left, r_left = torch.linalg.qr(self.left.double())
        q_right, r_right = torch.linalg.qr(self.right.double().T)
        u, s, vh = torch.linalg.svd(r_left @ r_right.T, full_matrices=False)
        return q_left @ u, s, vh @ q_right.T


Delta = torch.Tensor | Factored


def as_dense(value: Delta) -> torch.Tensor:
    """The delta as a plain float tensor (a factored one multiplied out)."""
    return (value.dense() if isinstance(value, Factored) else value).float()


def like(matrix: torch.Tensor, template: Delta) -> Delta:
    """A dense result in ``template``'s kind: for a factored template, the exact factorization
    ``matrix @ I`` (what the codec, the error feedback and the server's merge expect of a LoRA product)."""
    if not isinstance(template, Factored):
        return matrix
    d, k = template.left.shape[0], template.right.shape[1]
    return Factored(matrix.reshape(d, k), torch.eye(k), template.view)


def components(u: torch.Tensor, s: torch.Tensor, vh: torch.Tensor, start: int, stop: int) -> Factored:
    """Singular components ``start .. stop-1`` of an SVD as factors ``U*S`` and ``V^T`` (float32)."""
    return Factored((u[:, start:stop] * s[start:stop]).float(), vh[start:stop].float())


@dataclass(frozen=True)
class CodecSpec:
    """How a site compresses its update."""

    rank: int = 8  # the most singular values kept per matrix
    energy: float | None = None  # keep the smallest rank reaching this share of sum(s^2) (<= rank)
    precision: Precision = "fp16"
    dense_below: int = 4096  # 2-D tensors with fewer values go dense

    @classmethod
    def of(cls, fl) -> CodecSpec:
        """The codec a job's ``fl`` config section (:class:`fedmrg.config.FLConfig`) asks for."""
        return cls(rank=fl.rank, energy=fl.energy, precision=fl.precision, dense_below=fl.dense_below)

    def __post_init__(self) -> None:
        if self.rank < 1:
            raise ValueError(f"rank must be at least 1, got {self.rank}")
        if self.energy is not None and not 0 < self.energy <= 1:
            raise ValueError(f"energy must be in (0, 1], got {self.energy}")
        if self.precision not in ("fp16", "bf16", "int8"):
            raise ValueError(f"precision must be fp16, bf16 or int8, got {self.precision!r}")


# ------------------------------------------------------------------------------------- deltas
def lora_modules(names) -> dict[str, tuple[str, str]]:
    """``{product key: (A key, B key)}`` for every LoRA pair among ``names``."""
    pairs = {}
    for name in names:
        if LORA_A in name:
            b_name = name.replace(LORA_A, LORA_B)
            if b_name in names:
                pairs[name.replace(LORA_A, LORA_PRODUCT)] = (name, b_name)
    return pairs


def round_delta(before: dict[str, torch.Tensor], after: dict[str, torch.Tensor]) -> dict[str, Delta]:
    """The change from ``before`` to ``after``; LoRA pairs become the change of ``B @ A``."""
    if before.keys() != after.keys():
        raise ValueError("before and after must hold the same parameters")
    pairs = lora_modules(set(before))
    paired = {key for a, b in pairs.values() for key in (a, b)}
    delta: dict[str, Delta] = {
        name: after[name].float() - before[name].float() for name in before if name not in paired
    }
    for product, (a, b) in pairs.items():
        delta[product] = Factored(
            torch.cat([after[b].float(), -before[b].float()], 1), torch.cat([after[a].float(), before[a].float()], 0)
        )
    return delta


# ------------------------------------------------------------------------------------ encoding
def _kept_rank(s: torch.Tensor, total_energy: float, spec: CodecSpec) -> int:
    """``spec.rank``, or fewer: the smallest rank whose ``s**2`` reach ``spec.energy`` of the total
    (``total_energy`` = the squared Frobenius norm, so a partial spectrum serves as well)."""
    rank = min(spec.rank, int((s > 0).sum()))
    if spec.energy is not None and rank > 0 and total_energy > 0:
        share = torch.cumsum(s**2, 0) / total_energy
        rank = min(rank, int((share < spec.energy - 1e-12).sum()) + 1)
    return max(rank, 1)


def matricized(tensor: torch.Tensor) -> torch.Tensor:
    """A tensor as the matrix its SVD is taken of: singleton dimensions dropped, then the first
    dimension against the rest (a conv kernel ``[out, in, h, w]`` becomes ``[out, in*h*w]``)."""
    kept = [n for n in tensor.shape if n != 1] or [1]
    return tensor.reshape(kept[0], -1)


RANDOMIZED_ABOVE = 1024  # dense matrices whose smaller side is larger get a randomized SVD
_OVERSAMPLING = 10


def _svd(value: Delta, spec: CodecSpec) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, float]:
    """``U, S, V^T`` (the leading components at least) and the total energy ``sum(S**2)``.

    A factored product's SVD is exact and cheap (QR of its factors). A large dense matrix gets a
    randomized SVD of ``rank + 10`` components (Halko et al.: seconds instead of minutes for a
    4096 x 11008 matrix); what it misses is not lost, it is in the left-out part that error
    feedback carries to the next round. Its random draws come from a fixed seed and leave the
    global generator alone, so training runs stay reproducible.
    """
    if isinstance(value, Factored):
        u, s, vh = value.svd()
        return u, s, vh, float((s**2).sum())
    matrix = matricized(value).double()
    total = float(matrix.pow(2).sum())
    if min(matrix.shape) <= RANDOMIZED_ABOVE:
        u, s, vh = torch.linalg.svd(matrix, full_matrices=False)
        return u, s, vh, total
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        u, s, v = torch.svd_lowrank(matrix, q=spec.rank + _OVERSAMPLING, niter=4)
    return u, s, v.T, total


def _quantize(factor: torch.Tensor, precision: Precision, component_dim: int) -> dict[str, torch.Tensor]:
    """fp16 / bf16, or int8 with one fp32 scale per singular component (the columns of ``U*S``,
    the rows of ``V^T``): r scales per factor, not one per row of a tall factor."""
    if precision != "int8":
        return {"": factor.to(_FLOAT_DTYPES[precision]).contiguous()}
    scale = factor.abs().amax(dim=1 - component_dim, keepdim=True).clamp(min=1e-30) / 127.0
    return {"": torch.round(factor / scale).to(torch.int8).contiguous(), "_scale": scale.float().contiguous()}


def _dequantize(tensors: dict[str, torch.Tensor], key: str) -> torch.Tensor:
    value = tensors[key].float()
    scale = tensors.get(f"{key}_scale")
    return value * scale if scale is not None else value


def _is_matrix(value: Delta, spec: CodecSpec) -> bool:
    if isinstance(value, Factored):
        return True
    return matricized(value).shape[0] > 1 and value.dim() >= 2 and value.numel() >= spec.dense_below


def encode(delta: dict[str, Delta], spec: CodecSpec) -> tuple[bytes, dict[str, Delta]]:
    """Compress a round's delta; returns the payload and what it left out (for error feedback).

    The left-out part is exact: ``decode(payload)[name] + left_out[name] == delta[name]`` up to
    float rounding, as a dense tensor or, for LoRA products, as a :class:`Factored`.
    """
    tensors: dict[str, torch.Tensor] = {}
    header: dict[str, dict] = {}
    left_out: dict[str, Delta] = {}
    for name, value in sorted(delta.items()):
        if not _is_matrix(value, spec):
            sent = value.to(torch.float16).contiguous()
            tensors[f"{name}:dense"] = sent
            header[name] = {"kind": "dense", "shape": list(value.shape)}
            left_out[name] = value.float() - sent.float()
            continue
        u, s, vh, total_energy = _svd(value, spec)
        rank = _kept_rank(s, total_energy, spec)
        kept = components(u, s, vh, 0, rank)
        for part, factor, component_dim in (("u", kept.left, 1), ("v", kept.right, 0)):
            for suffix, tensor in _quantize(factor, spec.precision, component_dim).items():
                tensors[f"{name}:{part}{suffix}"] = tensor
        header[name] = {
            "kind": "lowrank",
            "shape": list(value.shape),
            "rank": rank,
            "factored": isinstance(value, Factored),
        }
        sent = Factored(_dequantize(tensors, f"{name}:u"), _dequantize(tensors, f"{name}:v"), _view(value.shape))
        if isinstance(value, Factored):
            left_out[name] = value + Factored(-sent.left, sent.right)
        else:
            left_out[name] = value.float() - sent.dense()
    metadata = {"format": _FORMAT, "precision": spec.precision, "entries": json.dumps(header)}
    return save(tensors, metadata=metadata), left_out


def decode(payload: bytes) -> dict[str, Delta]:
    """The delta a payload carries: dense tensors, and :class:`Factored` for low-rank entries.

    For a payload from someone else, use :func:`decode_checked`, which checks it first.
    """
    header = payload_header(payload)
    tensors = load_bytes(payload)
    out: dict[str, Delta] = {}
    for name, entry in header.items():
        if entry["kind"] == "dense":
            out[name] = tensors[f"{name}:dense"].float()
        else:
            out[name] = Factored(
                _dequantize(tensors, f"{name}:u"), _dequantize(tensors, f"{name}:v"), _view(entry["shape"])
            )
    return out


_SENT_DTYPES = (torch.float16, torch.bfloat16, torch.float32)


def decode_checked(payload: bytes, expected: dict[str, tuple[int, ...]], max_rank: int) -> dict[str, Delta]:
    """:func:`decode` of an untrusted payload, checked against the entries it must hold before any
    arithmetic: ValueError naming the first problem.

    ``expected`` maps each entry to its shape (LoRA pairs as their product). Every tensor in the
    payload must be one its header announces, of the kind, shape, rank (at most ``max_rank``),
    dtype and scale shape the entry allows, so that decoding allocates no more than the expected
    shapes: the payload's own bytes, and ``d x k`` floats for no entry.
    """
    header = payload_header(payload)
    if not isinstance(header, dict):
        raise ValueError("payload header: not a mapping of entries")
    unexpected = sorted(set(header) - set(expected))
    if unexpected:
        raise ValueError(f"unexpected entries (local or unknown parameters): {', '.join(unexpected[:3])}")
    missing = sorted(set(expected) - set(header))
    if missing:
        raise ValueError(f"missing entries: {', '.join(missing[:3])}")
    tensors = load_bytes(payload)
    announced = set()
    for name, entry in sorted(header.items()):
        announced |= _check_entry(name, entry, tuple(expected[name]), tensors, max_rank)
    hidden = sorted(set(tensors) - announced)
    if hidden:
        raise ValueError(f"tensors the header does not announce: {', '.join(hidden[:3])}")
    return decode(payload)


def _check_entry(
    name: str, entry: dict, shape: tuple[int, ...], tensors: dict[str, torch.Tensor], max_rank: int
) -> set[str]:
    """The payload keys of one entry, after checking them against its expected ``shape``."""
    if not isinstance(entry, dict) or entry.get("kind") not in ("dense", "lowrank"):
        raise ValueError(f"{name}: entry kind must be 'dense' or 'lowrank'")
    if list(entry.get("shape") or []) != list(shape):
        raise ValueError(f"{name}: shape {entry.get('shape')}, expected {list(shape)}")
    rows = ([n for n in shape if n != 1] or [1])[0]
    cols = math.prod(shape) // rows
    # The kinds the encoder sends: a LoRA product only as factors, a vector or a single row only dense.
    if entry["kind"] == "dense":
        if LORA_PRODUCT in name:
            raise ValueError(f"{name}: a LoRA product must be sent as low-rank factors, not dense")
        _check_tensor(name, tensors, f"{name}:dense", shape, _SENT_DTYPES)
        return {f"{name}:dense"}
    if len(shape) < 2 or rows == 1:
        raise ValueError(f"{name}: a tensor of shape {list(shape)} must be sent dense, not as factors")
    rank = entry.get("rank")
    if not isinstance(rank, int) or isinstance(rank, bool) or rank < 1:
        raise ValueError(f"{name}: rank {str(rank)[:20]!r}, expected a whole number from 1")
    if rank > max_rank:
        raise ValueError(f"{name}: rank {rank} above the bound {max_rank}")
    keys = set()
    for part, factor_shape, scale_shape in (("u", (rows, rank), (1, rank)), ("v", (rank, cols), (rank, 1))):
        key = f"{name}:{part}"
        value = _check_tensor(name, tensors, key, factor_shape, (*_SENT_DTYPES, torch.int8))
        keys.add(key)
        if value.dtype == torch.int8:
            scale = _check_tensor(name, tensors, f"{key}_scale", scale_shape, (torch.float32,))
            if not bool(torch.isfinite(scale).all()):
                raise ValueError(f"{name}: scales that are not finite")
            keys.add(f"{key}_scale")
    return keys


def _check_tensor(
    name: str, tensors: dict[str, torch.Tensor], key: str, shape: tuple[int, ...], dtypes: tuple[torch.dtype, ...]
) -> torch.Tensor:
    if key not in tensors:
        raise ValueError(f"{name}: no tensor {key!r} in the payload")
    value = tensors[key]
    if tuple(value.shape) != tuple(shape):
        raise ValueError(f"{name}: {key} has shape {list(value.shape)}, expected {list(shape)}")
    if value.dtype not in dtypes:
        raise ValueError(f"{name}: {key} has dtype {value.dtype}")
    return value


def _view(shape) -> tuple[int, ...] | None:
    """The shape a factored entry is viewed as, when it is not the plain matrix ``[d, k]``."""
    return tuple(shape) if len(shape) != 2 else None


def payload_header(payload: bytes) -> dict[str, dict]:
    """The per-entry description (kind, shape, rank) from a payload's safetensors header."""
    size = int.from_bytes(payload[:8], "little")
    try:
        metadata = json.loads(payload[8 : 8 + size]).get("__metadata__", {})
    except (ValueError, AttributeError) as exc:
        raise ValueError(f"unreadable update payload (header: {exc.__class__.__name__})") from None
    if not isinstance(metadata, dict) or metadata.get("format") != _FORMAT:
        raise ValueError("not a FedMRG low-rank payload (format)")
    try:
        return json.loads(metadata["entries"])
    except (ValueError, KeyError, TypeError) as exc:
        raise ValueError(f"unreadable update payload (entries: {exc.__class__.__name__})") from None


def payload_tensor_names(payload: bytes) -> list[str]:
    """The names of the tensors a payload holds (``<entry>:dense``, ``<entry>:u``, ...), read from its
    safetensors header, whatever its own entry list announces."""
    size = int.from_bytes(payload[:8], "little")
    try:
        tensors = json.loads(payload[8 : 8 + size])
    except ValueError as exc:
        raise ValueError(f"unreadable update payload (header: {exc.__class__.__name__})") from None
    if not isinstance(tensors, dict):
        raise ValueError("unreadable update payload (header is not a mapping)")
    return sorted(str(key) for key in tensors if key != "__metadata__")


def payload_bytes(payload: bytes) -> int:
    """Bytes on the wire: the whole serialised payload, header included."""
    return len(payload)


def dense_bytes(state: dict[str, torch.Tensor]) -> int:
    """What fp32 FedAvg would send for the same parameters (values only)."""
    return sum(4 * t.numel() for t in state.values())


# ------------------------------------------------------------------------------ error feedback
class ErrorFeedback:
    """What earlier rounds left out, added to the next delta; kept on the site's disk."""

    def __init__(self) -> None:
        self.residual: dict[str, Delta] = {}

    def compensate(self, delta: dict[str, Delta]) -> dict[str, Delta]:
        """``delta`` plus the stored residual, entry by entry."""
        out = dict(delta)
        for name, residual in self.residual.items():
            if name not in out:
                continue
            value = out[name]
            if isinstance(value, Factored) != isinstance(residual, Factored):
                raise ValueError(f"{name}: residual and delta are of different kinds")
            out[name] = value + residual
        return out

    def keep(self, left_out: dict[str, Delta], spec: CodecSpec) -> None:
        """Store what this round left out.

        A factored residual is re-factorized to its numerical rank, capped at ``4 * rank`` so that
        the state of a big matrix stays small; below the cap nothing is lost.
        """
        kept: dict[str, Delta] = {}
        for name, value in left_out.items():
            if isinstance(value, Factored):
                u, s, vh = value.svd()
                rank = max(1, min(RESIDUAL_RANK_FACTOR * spec.rank, int((s > s.max() * 1e-9).sum())))
                value = components(u, s, vh, 0, rank)
            kept[name] = value
        self.residual = kept

    def save(self, path: str | os.PathLike) -> None:
        tensors = {}
        for name, value in self.residual.items():
            if isinstance(value, Factored):
                tensors[f"{name}:left"], tensors[f"{name}:right"] = value.left.contiguous(), value.right.contiguous()
            else:
                tensors[f"{name}:dense"] = value.contiguous()
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        save_file(tensors, str(path))

    @classmethod
    def load(cls, path: str | os.PathLike) -> ErrorFeedback:
        feedback = cls()
        if Path(path).is_file():
            tensors = load_file(str(path))
            names = {key.rsplit(":", 1)[0] for key in tensors}
            for name in names:
                if f"{name}:dense" in tensors:
                    feedback.residual[name] = tensors[f"{name}:dense"]
                else:
                    feedback.residual[name] = Factored(tensors[f"{name}:left"], tensors[f"{name}:right"])
        return feedback
