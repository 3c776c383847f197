"""Bytes of one site per round: FedMRG's low-rank codec against dense fp32 FedAvg, and both directions
on the wire against FedAvg with FLARE's quantization filters.

    python bench/comm.py                         # the demo config: fl.rank, fl.precision, fl.energy
    python bench/comm.py --precision int8
    python bench/comm.py --rank 8 --energy 0.9 --decay 0.5
    python bench/comm.py --precision int8 --dense-below 1024

Demo model. The shared (federated) parameters of the config's report generator, built on a random
LLaMA of the demo base LLM's shape (``BASE_LLM_SIZES["tiny"]``), so no data is needed. One round is
simulated: every 2-D tensor (LoRA A and B included, so the LoRA entry is the change of ``B A`` that
``round_delta`` computes) gets ``U diag(s) V^T`` with random orthonormal ``U``, ``V`` and a decaying
spectrum ``s_i = s_0 decay^i``; every other tensor gets small gaussian noise. The spectrum only
matters with ``--energy``: the bytes of a rank-r entry do not depend on its values.

- sent: the codec payload (``len`` of the bytes: safetensors header, codec metadata, factors and the
  small tensors sent dense in fp16), plus the prototype sums and counts (14 x contrastive_dim + 14
  fp32) that a site also uploads;
- dense: ``dense_bytes(after)``, every shared value in fp32, what FedAvg sends (and what the
  controller records as ``dense_bytes_up``; it does not count FedAvg's prototypes).

On the wire: the messages of one round as FLARE serializes them (what ``results.json`` records as
``bytes_up`` / ``bytes_down``): fedmrg's payload and prototypes up and, down, the round's change of the global
model (``fedmrg.fl.downlink``: the same simulated change, compressed by the same codec) with the
global prototypes and the two digests, or with ``fl.download: state`` the dense global state;
dense fp32 FedAvg each way; FedAvg through FLARE's quantizer (float16, blockwise8, normfloat4:
``fl.quantization``) each way.

Information minimum: a rank-r ``d x k`` matrix has ``r (d + k - r)`` degrees of freedom; at the
factor precision (2 bytes for fp16/bf16, 1 for int8 plus the fp32 scales the codec sends) that
is the least any rank-r code could send. Payload / minimum shows the cost of the header, of the
tensors sent dense and of the ``U``/``V`` parametrisation.

7B shape. The generic LoRA adapter alone (nothing of the vision side) of a LLaMA-2-7B-shaped LLM:
hidden 4096, intermediate 11008, 32 layers, LoRA rank 16 on q, k, v, o, gate, up, down. No model is
built: dense fp32 A and B against the codec's factor bytes for the change of ``B A`` sent at the
codec rank, counted analytically and checked against a real ``encode`` of one random rank-32
product of each distinct shape. Values only on both sides (no safetensors header), as
``dense_bytes`` counts.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from collections import Counter
from pathlib import Path

import numpy as np
import torch
from nvflare.apis.fl_context import FLContext
from nvflare.app_common.abstract.fl_model import FLModel, ParamsType
from nvflare.app_common.utils.fl_model_utils import FLModelUtils
from transformers.utils import logging as hf_logging

from fedmrg.config import Config, encoder_weights, load_config
from fedmrg.fl import messages as msg
from fedmrg.fl.codec import (
    CodecSpec,
    Factored,
    dense_bytes,
    encode,
    lora_modules,
    matricized,
    payload_header,
    round_delta,
)
from fedmrg.fl.downlink import Downlink
from fedmrg.fl.messages import payload_to_array, state_bytes, to_numpy
from fedmrg.fl.quantization import HostQuantizer
from fedmrg.fl.wire import serialized_size
from fedmrg.labels.observations import OBSERVATIONS
from fedmrg.model.base_llm import BASE_LLM_SIZES, train_tokenizer
from fedmrg.model.llm import random_llm  # first: it quiets a bitsandbytes import notice
from fedmrg.model.mrg import MRGModel
from fedmrg.model.prototypes import PrototypeBank

GROUPS = {
    "encoder.": "encoder",
    "projector.": "projector",
    "customizer.": "customizer",
    "diagnosis.": "diagnosis",
    "contrastive.generic.": "contrastive head",
    "llm.": "LoRA generic adapter",
}
OTHER = "other"
HEADER = "payload header"
PROTOTYPES = "prototypes (sums + counts)"
VALUE_BYTES = {"fp16": 2, "bf16": 2, "int8": 1}
SCALE_BYTES = 4  # int8: one fp32 scale per singular component of each factor
SPECTRUM_SCALE = 1e-2  # s_0 of the simulated matrix deltas
NOISE_STD = 1e-3  # of the simulated deltas of the other tensors
GOAL = 25.0

LLAMA2_7B_LAYERS = 32
LLAMA2_7B_LORA_RANK = 16
LLAMA2_7B_MODULES = {  # LoRA target -> (out features, in features) of its linear layer
    "q_proj": (4096, 4096),
    "k_proj": (4096, 4096),
    "v_proj": (4096, 4096),
    "o_proj": (4096, 4096),
    "gate_proj": (11008, 4096),
    "up_proj": (11008, 4096),
    "down_proj": (4096, 11008),
}


# ------------------------------------------------------------------------------------- demo model
def demo_shared_state(cfg: Config, folder: Path, seed: int) -> dict[str, torch.Tensor]:
    """The shared parameters of ``cfg``'s report generator on a random LLM of the demo base LLM's shape."""
    size = BASE_LLM_SIZES["tiny"]
    tokenizer = train_tokenizer(["the heart is normal in size . the lungs are clear ."] * 4, vocab_size=300)
    tokenizer.save_pretrained(folder / "tokenizer")
    checkpoint = random_llm(
        folder / "llm",
        "llama",
        folder / "tokenizer",
        hidden_size=size.hidden_size,
        layers=size.layers,
        heads=size.heads,
        intermediate_size=size.intermediate_size,
        vocab_size=size.vocab_size,
        seed=seed,
    )
    torch.manual_seed(seed)
    return MRGModel.build(cfg, base_llm=checkpoint, device="cpu").shared_state_dict()


def decaying_matrix(rows: int, cols: int, decay: float, generator: torch.Generator) -> torch.Tensor:
    """``U diag(s) V^T`` with random orthonormal ``U``, ``V`` and ``s_i = SPECTRUM_SCALE * decay^i``."""
    rank = min(rows, cols)
    u = torch.linalg.qr(torch.randn(rows, rank, generator=generator)).Q
    v = torch.linalg.qr(torch.randn(cols, rank, generator=generator)).Q
    s = SPECTRUM_SCALE * decay ** torch.arange(rank, dtype=torch.float32)
    return (u * s) @ v.T


def simulate_round(before: dict[str, torch.Tensor], decay: float, seed: int) -> dict[str, torch.Tensor]:
    """``before`` plus one round's change: decaying-spectrum matrices for 2-D tensors, noise otherwise."""
    generator = torch.Generator().manual_seed(seed)
    after = {}
    for name, value in before.items():
        if value.dim() == 2:
            change = decaying_matrix(*value.shape, decay, generator)
        else:
            change = NOISE_STD * torch.randn(value.shape, generator=generator)
        after[name] = value + change
    return after


def group_of(name: str) -> str:
    return next((group for prefix, group in GROUPS.items() if name.startswith(prefix)), OTHER)


def prototype_bytes(cfg: Config) -> int:
    """What a site uploads besides its payload: the prototype sums and counts, fp32."""
    if not cfg.model.contrastive:
        return 0
    return state_bytes(PrototypeBank(len(OBSERVATIONS), cfg.model.contrastive_dim).state())


# -------------------------------------------------------------------------------- payload bytes
def entry_bytes(payload: bytes) -> tuple[dict[str, int], int]:
    """Data bytes of each delta entry in a payload (factors and scales summed), and the header bytes."""
    size = int.from_bytes(payload[:8], "little")
    tensors = json.loads(payload[8 : 8 + size])
    per_entry: Counter = Counter()
    for key, info in tensors.items():
        if key != "__metadata__":
            start, stop = info["data_offsets"]
            per_entry[key.rsplit(":", 1)[0]] += stop - start
    header = 8 + size
    if header + sum(per_entry.values()) != len(payload):
        raise RuntimeError("payload bytes do not add up to header + tensor data")
    return dict(per_entry), header


def factor_bytes(rows: int, cols: int, rank: int, precision: str) -> int:
    """Codec bytes of a rank-r ``rows x cols`` entry: ``U*S [rows, r]`` and ``V^T [r, cols]``."""
    scales = SCALE_BYTES * 2 * rank if precision == "int8" else 0
    return VALUE_BYTES[precision] * rank * (rows + cols) + scales


def information_minimum(rows: int, cols: int, rank: int, precision: str) -> int:
    """Bytes of the ``r (d + k - r)`` degrees of freedom of a rank-r matrix (int8: plus the sent scales)."""
    scales = SCALE_BYTES * 2 * rank if precision == "int8" else 0
    return VALUE_BYTES[precision] * rank * (rows + cols - rank) + scales


def matrix_shape(shape: list[int]) -> tuple[int, int]:
    """The ``[d, k]`` the codec factors for an entry of this shape (see ``codec.matricized``)."""
    return tuple(matricized(torch.empty(shape, device="meta")).shape)


# ------------------------------------------------------------------------------------- printing
def ratio(dense: int, sent: int) -> str:
    return f"{dense / sent:8.1f}x" if sent else f"{'-':>9}"


def print_row(label: str, tensors: str, lowrank: str, dense: str, sent: str, share: str) -> None:
    print(f"  {label:<28}{tensors:>8}{lowrank:>10}{dense:>14}{sent:>12}{share:>10}")


def print_group_table(after: dict[str, torch.Tensor], payload: bytes, prototypes: int) -> tuple[int, int]:
    """Per-group tensors, dense fp32 bytes and sent bytes; returns (dense total, sent total)."""
    per_entry, header = entry_bytes(payload)
    kinds = {name: entry["kind"] for name, entry in payload_header(payload).items()}
    tensors, dense, sent, lowrank = Counter(), Counter(), Counter(), Counter()
    for name, value in after.items():
        tensors[group_of(name)] += 1
        dense[group_of(name)] += dense_bytes({name: value})
    for name, size in per_entry.items():
        sent[group_of(name)] += size
        lowrank[group_of(name)] += kinds[name] == "lowrank"
    print_row("group", "tensors", "low-rank", "dense fp32 B", "sent B", "ratio")
    for group in [*GROUPS.values(), OTHER]:
        if tensors[group]:
            print_row(
                group,
                str(tensors[group]),
                str(lowrank[group]),
                f"{dense[group]:,}",
                f"{sent[group]:,}",
                ratio(dense[group], sent[group]),
            )
    print_row(HEADER, "", "", "", f"{header:,}", "")
    print_row(PROTOTYPES, "", "", "", f"{prototypes:,}", "")
    dense_total, sent_total = dense_bytes(after), len(payload) + prototypes
    print_row(
        "total",
        str(len(after)),
        str(sum(lowrank.values())),
        f"{dense_total:,}",
        f"{sent_total:,}",
        ratio(dense_total, sent_total),
    )
    return dense_total, sent_total


def print_information_minimum(payload: bytes, precision: str) -> None:
    """The rank-r information minimum of the low-rank entries against the whole payload."""
    per_entry, header = entry_bytes(payload)
    entries = payload_header(payload)
    lowrank = {name: entry for name, entry in entries.items() if entry["kind"] == "lowrank"}
    minimum = sum(
        information_minimum(*matrix_shape(entry["shape"]), entry["rank"], precision) for entry in lowrank.values()
    )
    factors = sum(per_entry[name] for name in lowrank)
    analytic = sum(factor_bytes(*matrix_shape(entry["shape"]), entry["rank"], precision) for entry in lowrank.values())
    small = sum(size for name, size in per_entry.items() if name not in lowrank)
    ranks = Counter(entry["rank"] for entry in lowrank.values())
    scales = " (int8 values + one fp32 scale per component)" if precision == "int8" else ""
    print(
        f"\ninformation minimum of the {len(lowrank)} low-rank entries (ranks sent: "
        f"{', '.join(f'{r} x{n}' for r, n in sorted(ranks.items()))}), {precision}{scales}:"
    )
    print(f"  r(d+k-r) values                 {minimum:>12,} B")
    print(f"  U*S and V^T factors, r(d+k)     {factors:>12,} B  (analytic {analytic:,} B)")
    if precision == "int8":
        scale_bytes = sum(SCALE_BYTES * 2 * entry["rank"] for entry in lowrank.values())
        print(f"    of which fp32 scales          {scale_bytes:>12,} B  (counted in the minimum too)")
    print(f"  {len(entries) - len(lowrank)} small tensors, dense fp16    {small:>12,} B")
    print(f"  header and codec metadata       {header:>12,} B")
    print(
        f"  payload                         {len(payload):>12,} B  = {len(payload) / minimum:.2f} x the minimum "
        f"(factors alone: {factors / minimum:.3f} x)"
    )


def demo_section(cfg: Config, spec: CodecSpec, decay: float, seed: int) -> float:
    """Encode one simulated round of the demo model; prints the tables, returns the upload reduction."""
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="fedmrg-comm-") as tmp:
        before = demo_shared_state(cfg, Path(tmp), seed)
    after = simulate_round(before, decay, seed)
    delta = round_delta(before, after)
    built = time.perf_counter()
    payload, _ = encode(delta, spec)
    encoded = time.perf_counter()
    pairs = len(lora_modules(set(before)))
    print(
        f"demo model ({cfg.name} config): {len(before)} shared tensors, "
        f"{sum(v.numel() for v in before.values()):,} values, {pairs} LoRA pairs sent as the change of B A; "
        f"built in {built - started:.1f} s, encoded in {encoded - built:.2f} s"
    )
    print(
        f"simulated round: 2-D deltas U diag(s) V^T with s_i = {SPECTRUM_SCALE:g} * {decay:g}^i, "
        f"other tensors + N(0, {NOISE_STD:g}^2)"
    )
    print(
        f"codec: rank {spec.rank}, precision {spec.precision}, energy {spec.energy}, "
        f"dense below {spec.dense_below} values\n"
    )
    dense_total, sent_total = print_group_table(after, payload, prototype_bytes(cfg))
    print_information_minimum(payload, spec.precision)
    wire_section(cfg, before, after, payload, spec)
    return dense_total / sent_total


# ------------------------------------------------------------------------------------ on the wire
def wire_size(params: dict[str, np.ndarray], meta: dict, params_type: ParamsType = ParamsType.FULL) -> int:
    """Bytes of a message as FLARE serializes it (what the jobs record as bytes_up / bytes_down)."""
    return serialized_size(FLModelUtils.to_shareable(FLModel(params_type=params_type, params=params, meta=meta)))


def quantized_size(params: dict[str, np.ndarray], meta: dict, kind: str) -> int:
    """The same dense message after FLARE's quantizer (what fl.quantization sends each way)."""
    copies = {name: value.copy() for name, value in params.items()}  # FLARE's quantizer works in place
    message = FLModelUtils.to_shareable(FLModel(params_type=ParamsType.FULL, params=copies, meta=meta))
    return serialized_size(HostQuantizer(quantization_type=kind).process(message, FLContext()))


def wire_section(
    cfg: Config, before: dict[str, torch.Tensor], after: dict[str, torch.Tensor], payload: bytes, spec: CodecSpec
) -> None:
    """One round of one site, both directions, as the jobs measure it: fedmrg (low-rank up; down the
    compressed change, or the dense state), dense fp32 FedAvg, and FedAvg with FLARE's quantization filters."""
    dense = to_numpy(after)
    prototypes = PrototypeBank(len(OBSERVATIONS), cfg.model.contrastive_dim).state() if cfg.model.contrastive else {}
    up_meta = {msg.TRAIN_STUDIES: 500, **{f"prototype_{k}": v.numpy() for k, v in prototypes.items()}}
    down_meta = {msg.PROTOTYPES: np.zeros((len(OBSERVATIONS), cfg.model.contrastive_dim), np.float32)}
    change, _ = Downlink(spec).step(before, after)
    change_meta = {**down_meta, msg.GLOBAL_DIGEST: msg.state_digest(after), msg.BASE_DIGEST: msg.state_digest(before)}
    up = wire_size({msg.UPDATE: payload_to_array(payload)}, up_meta, ParamsType.DIFF)
    rows = [
        ("fedmrg", up, wire_size({msg.GLOBAL_CHANGE: payload_to_array(change)}, change_meta)),
        ("fedmrg, download: state", up, wire_size(dense, {**down_meta, msg.GLOBAL_DIGEST: msg.state_digest(after)})),
        ("fedavg_lora, dense fp32", wire_size(dense, {msg.TRAIN_STUDIES: 500}), wire_size(dense, {})),
    ]
    for kind in ("float16", "blockwise8", "normfloat4"):
        size = quantized_size(dense, {msg.TRAIN_STUDIES: 500}, kind)
        rows.append((f"fedavg_lora + FLARE {kind}", size, size))
    reference = rows[2][1] + rows[2][2]
    print("\none round of one site on the wire (FOBS-serialized messages, as results.json records them):")
    print(f"  {'job':<30}{'up B':>12}{'down B':>12}{'round trip B':>15}{'vs dense fp32':>15}")
    for label, up, down in rows:
        print(f"  {label:<30}{up:>12,}{down:>12,}{up + down:>15,}{ratio(reference, up + down):>15}")


# ----------------------------------------------------------------------------------- 7B shape
def encoded_factor_bytes(rows: int, cols: int, spec: CodecSpec, generator: torch.Generator) -> tuple[int, int]:
    """(rank sent, payload data bytes) of a real ``encode`` of a random rank-2*16 LoRA product change."""
    inner = 2 * LLAMA2_7B_LORA_RANK
    change = Factored(torch.randn(rows, inner, generator=generator), torch.randn(inner, cols, generator=generator))
    payload, _ = encode({"lora_AB": change}, spec)
    per_entry, _ = entry_bytes(payload)
    return payload_header(payload)["lora_AB"]["rank"], per_entry["lora_AB"]


def lora_7b_section(spec: CodecSpec, seed: int) -> None:
    """Dense fp32 LoRA A and B of a LLaMA-2-7B shape against the codec bytes, by distinct layer shape."""
    generator = torch.Generator().manual_seed(seed)
    shapes = Counter(LLAMA2_7B_MODULES.values())
    print(
        f"\nLLaMA-2-7B shape, the generic LoRA adapter alone (LoRA rank {LLAMA2_7B_LORA_RANK} on "
        f"{', '.join(LLAMA2_7B_MODULES)}; {LLAMA2_7B_LAYERS} layers); codec rank {spec.rank}, {spec.precision}:"
    )
    print(
        f"  {'d x k':<14}{'matrices':>9}{'rank sent':>10}{'dense fp32 B':>16}{'codec B':>14}{'ratio':>10}"
        f"   check against encode"
    )
    dense_total = sent_total = 0
    for (rows, cols), per_layer in shapes.items():
        count = per_layer * LLAMA2_7B_LAYERS
        rank, measured = encoded_factor_bytes(rows, cols, spec, generator)
        analytic = factor_bytes(rows, cols, rank, spec.precision)
        if analytic != measured:
            raise RuntimeError(f"{rows} x {cols}: analytic {analytic} B, encode sent {measured} B")
        dense = count * 4 * LLAMA2_7B_LORA_RANK * (rows + cols)
        dense_total, sent_total = dense_total + dense, sent_total + count * analytic
        print(
            f"  {f'{rows} x {cols}':<14}{count:>9}{rank:>10}{dense:>16,}{count * analytic:>14,}"
            f"{ratio(dense, count * analytic):>10}   {measured:,} B per matrix, equal"
        )
    print(
        f"  {'total':<14}{sum(shapes.values()) * LLAMA2_7B_LAYERS:>9}{'':>10}{dense_total:>16,}"
        f"{sent_total:>14,}{ratio(dense_total, sent_total):>10}"
    )


# ----------------------------------------------------------------------------------------- main
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="demo", help="a named config or a YAML file (default: demo)")
    parser.add_argument("--rank", type=int, help="singular values kept per matrix (default: the config's fl.rank)")
    parser.add_argument("--precision", choices=sorted(VALUE_BYTES), help="factor precision (default: fl.precision)")
    parser.add_argument("--energy", type=float, help="keep the smallest rank reaching this energy share")
    parser.add_argument(
        "--dense-below", type=int, help="2-D tensors with fewer values go dense (default: fl.dense_below)"
    )
    parser.add_argument("--decay", type=float, default=0.7, help="spectrum decay of the simulated deltas")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--base-encoder", help="weights of a frozen encoder (default: data/demo/base-encoder)")
    args = parser.parse_args()
    hf_logging.disable_progress_bar()

    encoder = encoder_weights(args.base_encoder or "data/demo/base-encoder")
    overrides = {
        "fl.rank": args.rank,
        "fl.precision": args.precision,
        "fl.energy": args.energy,
        "fl.dense_below": args.dense_below,
    }
    cfg = load_config(args.config, {**overrides, "model.encoder.pretrained": encoder})
    spec = CodecSpec.of(cfg.fl)
    reduction = demo_section(cfg, spec, args.decay, args.seed)
    lora_7b_section(spec, args.seed)
    print(
        f"\ngoal: >= {GOAL:g}x fewer upload bytes than dense fp32 FedAvg: {'met' if reduction >= GOAL else 'not met'}"
    )
    print(f"upload reduction (demo model): {reduction:.1f}x")


if __name__ == "__main__":
    main()
