"""Weight memory of the frozen LLM loaded in 4-bit NF4 versus bf16, on the CPU.

    python bench/model_memory.py                   # TinyLlama-1.1B shape, random bf16 weights (2.2 GB temp dir)
    python bench/model_memory.py --size tiny       # the shape of the tiny demo base LLM (seconds)
    python bench/model_memory.py --checkpoint DIR  # a local Hugging Face checkpoint

Weight memory = the bytes of every parameter and buffer (each tensor once) plus the 4-bit
quantization state of each NF4 layer (absmax, nested absmax, code books) as its state dict stores
it. NF4 costs about 0.52 byte per weight; the input embeddings, the output head (lm_head) and the
norms are not quantized and stay in bf16, so the ratio is bounded below by their share.
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
SHAPES = {
    "tinyllama": dict(LLAMA_1B_SHAPE),
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


def weight_bytes(model: torch.nn.Module) -> Counter:
    """Bytes of weights by kind of module (tied tensors counted once), 4-bit state included."""
    parts: Counter = Counter()
    seen: set[int] = set()
    head = model.get_output_embeddings()
    for module in model.modules():
        kind = _kind(module, head)
        for tensor in [*module.parameters(recurse=False), *module.buffers(recurse=False)]:
            if id(tensor) not in seen:
                seen.add(id(tensor))
                parts[kind] += _nbytes(tensor)
        if kind == QUANTIZED:
            state = module.weight.quant_state.as_dict(packed=True)
            parts[kind] += sum(_nbytes(value) for value in state.values() if torch.is_tensor(value))
    return parts


def measure(checkpoint: Path, load_in_4bit: bool) -> Counter:
    started = time.perf_counter()
    model, _, info = load_llm(checkpoint, load_in_4bit=load_in_4bit, dtype="bfloat16", device="cpu")
    parts = weight_bytes(model)
    label = "4-bit NF4" if load_in_4bit else "bf16"
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
        quantized = sum(measure(checkpoint, load_in_4bit=True).values())
        plain = sum(measure(checkpoint, load_in_4bit=False).values())
    print(f"\n4-bit/bf16 weight memory ratio: {quantized / plain:.2f}")


if __name__ == "__main__":
    main()
