"""Weight memory of the frozen LLM in bf16 and in 4-bit NF4, with its input embedding in bf16, NF4 or int8.

    python bench/model_memory.py                       # TinyLlama-1.1B shape, random bf16 weights (2.2 GB temp dir)
    python bench/model_memory.py --size llama3-1b      # Llama 3.2 1B shape: 128k vocabulary, head tied to the embedding
    python bench/model_memory.py --size llama3-1b-untied   # the same with a head of its own
    python bench/model_memory.py --size tiny           # the shape of the tiny demo base LLM (seconds)
    python bench/model_memory.py --checkpoint DIR      # a local Hugging Face checkpoint

Weight memory = the bytes of every parameter and buffer (each tensor once) plus the quantization
state of each quantized layer (NF4 absmax, nested absmax and code books; int8 row scales) as its
state dict stores it. The 4-bit linear layers cost about 0.52 byte per weight. The output head
(lm_head) and the norms stay in bf16; the input embedding does too unless it is quantized
(``model.quantize_embeddings``: NF4 at 0.56 byte per weight, int8 at 1). A head tied to the input
embedding keeps the shared matrix in bf16, so there the embedding option changes nothing.
"""

from __future__ import annotations

import argparse
import gc
import tempfile
import time
from collections import Counter
from pathlib import Path

import bitsandbytes as bnb
import torch

from fedmrg.model.base_llm import BASE_LLM_SIZES, train_tokenizer
from fedmrg.model.llm import LLAMA_1B_SHAPE, load_llm, random_llm  # first: it quiets a bitsandbytes import notice

TINY = BASE_LLM_SIZES["tiny"]
# Llama 3.2 1B: 16 layers, grouped-query attention with 8 key-value heads, a 128,256-row vocabulary
LLAMA3_1B_SHAPE = dict(
    hidden_size=2048, layers=16, heads=32, kv_heads=8, intermediate_size=8192, vocab_size=128256, tie_embeddings=True
)
SHAPES = {
    "tinyllama": dict(LLAMA_1B_SHAPE),
    "llama3-1b": LLAMA3_1B_SHAPE,
    "llama3-1b-untied": {**LLAMA3_1B_SHAPE, "tie_embeddings": False},
    "tiny": dict(
        hidden_size=TINY.hidden_size,
        layers=TINY.layers,
        heads=TINY.heads,
        intermediate_size=TINY.intermediate_size,
        vocab_size=TINY.vocab_size,
    ),
}
QUANTIZED, LINEAR, HEAD, EMBEDDINGS, OTHER = (
    "4-bit linear layers",
    "linear layers",
    "lm_head",
    "embeddings",
    "norms, other",
)
MB = 1e6
# label -> (load_in_4bit, quantize_embeddings)
LOADS = {
    "bf16": (False, "none"),
    "4-bit, embedding bf16 (QLoRA)": (True, "none"),
    "4-bit, embedding NF4": (True, "nf4"),
    "4-bit, embedding int8": (True, "int8"),
}


def build_checkpoint(folder: Path, size: str) -> Path:
    """A LLaMA checkpoint of the named shape with random bf16 weights."""
    tokenizer_dir = folder / "tokenizer"
    train_tokenizer(["the heart is normal in size . the lungs are clear ."] * 4, vocab_size=300).save_pretrained(
        tokenizer_dir
    )
    return random_llm(folder / "llm", "llama", tokenizer_dir, dtype=torch.bfloat16, **SHAPES[size])


def _kind(module: torch.nn.Module, head: torch.nn.Module) -> str:
    if isinstance(module, bnb.nn.Linear4bit):
        return QUANTIZED
    if module is head:
        return HEAD
    if isinstance(module, torch.nn.Linear):
        return LINEAR
    return EMBEDDINGS if isinstance(module, torch.nn.Embedding) else OTHER


def _nbytes(tensor: torch.Tensor) -> int:
    return tensor.numel() * tensor.element_size()


def _quantization_state_bytes(module: torch.nn.Module) -> int:
    """What a quantized layer stores beside its packed weight: NF4 scales and code books, int8 row scales."""
    weight = getattr(module, "weight", None)
    if getattr(weight, "quant_state", None) is not None:
        return sum(
            _nbytes(value) for value in weight.quant_state.as_dict(packed=True).values() if torch.is_tensor(value)
        )
    if isinstance(weight, bnb.nn.Int8Params) and weight.SCB is not None:
        return _nbytes(weight.SCB)
    return 0


def weight_bytes(model: torch.nn.Module) -> Counter:
    """Bytes of weights by kind of module (tied tensors counted once), quantization state included."""
    parts: Counter = Counter()
    seen: set[int] = set()
    head = model.get_output_embeddings()
    for module in model.modules():
        kind = _kind(module, head)
        for tensor in [*module.parameters(recurse=False), *module.buffers(recurse=False)]:
            if id(tensor) not in seen:
                seen.add(id(tensor))
                parts[kind] += _nbytes(tensor)
        parts[kind] += _quantization_state_bytes(module)
    return parts


def measure(checkpoint: Path, label: str) -> Counter:
    load_in_4bit, embeddings = LOADS[label]
    started = time.perf_counter()
    model, _, _ = load_llm(
        checkpoint, load_in_4bit=load_in_4bit, quantize_embeddings=embeddings, dtype="bfloat16", device="cpu"
    )
    parts = weight_bytes(model)
    print(
        f"\n{label}: loaded in {time.perf_counter() - started:.1f} s, {model.num_parameters() / 1e6:.1f}M "
        f"parameters, get_memory_footprint() = {model.get_memory_footprint() / MB:.2f} MB"
    )
    total = sum(parts.values())
    for kind in (QUANTIZED, LINEAR, EMBEDDINGS, HEAD, OTHER):
        if parts[kind]:
            print(f"  {kind:<20} {parts[kind] / MB:10.2f} MB  {parts[kind] / total:6.1%}")
    print(f"  {'weight memory':<20} {total / MB:10.2f} MB")
    del model
    gc.collect()
    return parts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", choices=sorted(SHAPES), default="tinyllama", help="shape of the random checkpoint")
    parser.add_argument("--checkpoint", type=Path, help="measure this local checkpoint instead of a random one")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="fedmrg-memory-") as tmp:
        checkpoint = args.checkpoint
        if checkpoint is None:
            started = time.perf_counter()
            checkpoint = build_checkpoint(Path(tmp), args.size)
            print(
                f"built a random {args.size} LLaMA checkpoint ({SHAPES[args.size]}) in "
                f"{time.perf_counter() - started:.1f} s"
            )
        totals = {label: sum(measure(checkpoint, label).values()) for label in LOADS}
    plain = totals["bf16"]
    print("\n| load | weight memory | vs bf16 |\n|---|---:|---:|")
    for label, total in totals.items():
        print(f"| {label} | {total / MB:.1f} MB | {total / plain:.3f}x |")


if __name__ == "__main__":
    main()
