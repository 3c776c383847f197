"""The frozen LLM: any local Hugging Face causal LM, loaded in 4-bit NF4 (bitsandbytes) or plain.

FedMRG never downloads weights at run time: ``load_llm`` takes a local checkpoint directory
(``config.json``, weights, tokenizer files) and reads it with ``local_files_only=True``. A Hub id
is an error whose message says how to fetch a local copy where there is internet.

4-bit loading quantizes every linear layer of the decoder blocks (GPT-2's ``Conv1D`` layers too)
to NF4 with double quantization, and by default the input embedding to NF4 as well
(:mod:`fedmrg.model.quantized_embeddings`); the output head and the norms stay in the compute
dtype. Every parameter is frozen and the model is returned in eval mode: the report
generator trains only its own modules and the LoRA adapters it adds.

The tokenizer always has an eos token and a pad token (eos when the checkpoint has none; the
embeddings are never resized). Its ``padding_side`` is left as the checkpoint sets it: callers
build padded batches themselves.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import re
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType

import torch
from transformers import (
    AutoConfig,
    AutoModelForCausalLM,
    AutoTokenizer,
    BitsAndBytesConfig,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)

from fedmrg.config import EmbeddingQuant
from fedmrg.errors import ConfigError

log = logging.getLogger(__name__)

TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "vocab.json", "spiece.model", "vocab.txt")
WEIGHT_SUFFIXES = (".safetensors", ".bin")
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


@dataclass(frozen=True)
class LLMInfo:
    """What the rest of the model needs to know about the loaded LLM."""

    path: str
    family: str  # config.model_type: "llama", "qwen2", "mistral", "gpt2", ...
    embed_dim: int  # width of the input embeddings (visual tokens and prompts are projected to it)
    quantized: bool
    embedding_quant: EmbeddingQuant  # the input embedding's quantization ("none" when it is in compute_dtype)
    compute_dtype: torch.dtype
    device: torch.device


def resolve_device(name: str = "auto") -> torch.device:
    """``auto`` = the current CUDA device when there is one, else the CPU."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ConfigError(f"device {name!r}: not a device (use auto, cpu, cuda, cuda:N or mps)") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError(f"device {name!r}: CUDA is not available on this machine (use auto or cpu)")
        if device.index is None:
            device = torch.device("cuda", torch.cuda.current_device())
    return device


def resolve_dtype(name: str, device: torch.device) -> torch.dtype:
    """``auto`` = bfloat16 on a CUDA device that supports it, else float32."""
    if name == "auto":
        cuda_bf16 = device.type == "cuda" and torch.cuda.is_bf16_supported()
        return torch.bfloat16 if cuda_bf16 else torch.float32
    if name not in DTYPES:
        raise ConfigError(f"dtype {name!r}: must be auto, {', '.join(DTYPES)}")
    return DTYPES[name]


def _local_copy_hint(name: str) -> str:
    return (
        "FedMRG never downloads weights at run time; pass a local Hugging Face checkpoint directory "
        "(config.json, weights, tokenizer files). Where there is internet, fetch one with "
        f"`hf download {name} --local-dir DIR` (or save it with save_pretrained), then pass DIR"
    )


_HUB_ID = re.compile(r"[\w.-]+(/[\w.-]+)?")  # "gpt2", "meta-llama/Llama-3.2-1B"


def _missing(path: str) -> str:
    if _HUB_ID.fullmatch(path):
        return f"not a local directory (it looks like a Hugging Face Hub id). {_local_copy_hint(path)}"
    return f"no such directory. {_local_copy_hint('MODEL_ID')}"


def check_checkpoint(path: str | os.PathLike) -> Path:
    """The checkpoint directory ``path``; a ConfigError names it and what is missing otherwise."""
    folder = Path(path).expanduser()
    if not folder.exists():
        raise ConfigError(f"LLM {str(path)!r}: {_missing(str(path))}")
    if not folder.is_dir():
        raise ConfigError(f"LLM {folder}: not a directory. {_local_copy_hint('MODEL_ID')}")
    names = {p.name for p in folder.iterdir()}
    if "config.json" not in names:
        raise ConfigError(
            f"LLM {folder}: no config.json, so not a Hugging Face checkpoint. {_local_copy_hint('MODEL_ID')}"
        )
    if not names & set(TOKENIZER_FILES):
        raise ConfigError(
            f"LLM {folder}: no tokenizer files (one of {', '.join(TOKENIZER_FILES)}); save the "
            "model's tokenizer into the same directory (tokenizer.save_pretrained(DIR))"
        )
    if not any(name.endswith(WEIGHT_SUFFIXES) for name in names):
        raise ConfigError(f"LLM {folder}: no weight files (*.safetensors or *.bin)")
    return folder.resolve()


def load_tokenizer(folder: Path) -> PreTrainedTokenizerBase:
    """The checkpoint's tokenizer, with an eos token and a pad token (eos if it has none)."""
    try:
        tokenizer = AutoTokenizer.from_pretrained(folder, local_files_only=True)
    except (OSError, ValueError) as exc:
        raise ConfigError(f"LLM {folder}: cannot load its tokenizer: {exc}") from None
    if tokenizer.eos_token is None:
        raise ConfigError(f"LLM {folder}: the tokenizer has no eos token, so generated reports could not end")
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def _quantization_config(compute_dtype: torch.dtype) -> BitsAndBytesConfig:
    if importlib.util.find_spec("bitsandbytes") is None:  # say so here, not deep inside transformers
        raise ConfigError(
            "load_in_4bit needs the bitsandbytes package: pip install bitsandbytes (or set model.load_in_4bit: false)"
        )
    return BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type="nf4",
        bnb_4bit_use_double_quant=True,
        bnb_4bit_compute_dtype=compute_dtype,
    )


def _load_model(folder: Path, load_in_4bit: bool, dtype: torch.dtype, device: torch.device) -> PreTrainedModel:
    kwargs = {"quantization_config": _quantization_config(dtype)} if load_in_4bit else {}
    try:
        return AutoModelForCausalLM.from_pretrained(
            folder, dtype=dtype, device_map={"": device}, local_files_only=True, **kwargs
        )
    except (OSError, ValueError) as exc:
        raise ConfigError(f"LLM {folder}: cannot load it as a causal language model: {exc}") from None


def _keep_cpu_gradients(model: PreTrainedModel) -> None:
    """Stop bitsandbytes from repacking 4-bit weights for its CPU inference kernel.

    On a CPU with AVX512-BF16, the first no-grad forward of a ``Linear4bit`` in eval mode (a
    validation pass, ``generate``) repacks its weight for a kernel that has no backward; every later
    training step then silently loses the gradient through that layer. The frozen LLM stays in
    eval mode while the generator trains through it, so the repacking is turned off.
    """
    for module in model.modules():
        if hasattr(module, "support_avx512bf16_for_cpu"):
            module.support_avx512bf16_for_cpu = False


def load_llm(
    path: str | os.PathLike,
    *,
    load_in_4bit: bool = True,
    quantize_embeddings: EmbeddingQuant = "nf4",
    dtype: str = "auto",
    device: str | torch.device = "auto",
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase, LLMInfo]:
    """Load a local causal LM checkpoint, frozen and in eval mode, with its tokenizer.

    ``dtype`` is the compute dtype of the 4-bit layers and the dtype of every unquantized weight.
    ``quantize_embeddings`` applies with ``load_in_4bit`` only: a plain model stays plain.
    """
    folder = check_checkpoint(path)
    device = device if isinstance(device, torch.device) else resolve_device(device)
    compute_dtype = resolve_dtype(dtype, device)
    tokenizer = load_tokenizer(folder)
    model = _load_model(folder, load_in_4bit, compute_dtype, device)
    embedding_quant = "none"
    if load_in_4bit:
        _keep_cpu_gradients(model)
        from fedmrg.model.quantized_embeddings import quantize_input_embeddings  # bitsandbytes: 4-bit only

        embedding_quant = quantize_input_embeddings(model, quantize_embeddings)
    model.requires_grad_(False)
    model.eval()
    embeddings = model.get_input_embeddings()
    if len(tokenizer) > embeddings.num_embeddings:
        raise ConfigError(
            f"LLM {folder}: the tokenizer has {len(tokenizer)} tokens but the model embeds only "
            f"{embeddings.num_embeddings}; the tokenizer does not belong to these weights"
        )
    if model.generation_config.pad_token_id is None:
        model.generation_config.pad_token_id = tokenizer.pad_token_id
    info = LLMInfo(
        path=str(folder),
        family=model.config.model_type,
        embed_dim=embeddings.embedding_dim,
        quantized=load_in_4bit,
        embedding_quant=embedding_quant,
        compute_dtype=compute_dtype,
        device=device,
    )
    log.info(
        "LLM %s (%s, embed dim %d) loaded %s on %s",
        folder,
        info.family,
        info.embed_dim,
        f"in 4-bit NF4, input embedding {embedding_quant}" if load_in_4bit else f"in {compute_dtype}",
        device,
    )
    return model, tokenizer, info


# --------------------------------------------------------------------------------------------
# Random checkpoints (tests and benchmarks)
# --------------------------------------------------------------------------------------------

_DECODER_FIELDS = {
    "hidden_size": "hidden_size",
    "layers": "num_hidden_layers",
    "heads": "num_attention_heads",
    "intermediate_size": "intermediate_size",
    "kv_heads": "num_key_value_heads",
}
FAMILY_FIELDS = {  # family -> our size names -> the family's config fields
    "llama": _DECODER_FIELDS,
    "qwen2": _DECODER_FIELDS,
    "mistral": _DECODER_FIELDS,
    "gpt2": {"hidden_size": "n_embd", "layers": "n_layer", "heads": "n_head", "intermediate_size": "n_inner"},
}


# TinyLlama-1.1B's shape (LLaMA architecture, grouped-query attention, a 32,000-row vocabulary):
# the "1B LLM" of the speed and memory benchmarks, built with random weights.
LLAMA_1B_SHAPE = MappingProxyType(
    dict(hidden_size=2048, layers=22, heads=32, kv_heads=4, intermediate_size=5632, vocab_size=32000)
)


def random_llm(
    out_dir: str | os.PathLike,
    family: str,
    tokenizer_dir: str | os.PathLike,
    *,
    hidden_size: int,
    layers: int,
    heads: int,
    intermediate_size: int | None = None,
    kv_heads: int | None = None,
    vocab_size: int | None = None,
    tie_embeddings: bool | None = None,
    seed: int = 0,
    dtype: torch.dtype = torch.float32,
) -> Path:
    """Save a randomly initialised ``family`` checkpoint with the tokenizer of ``tokenizer_dir``.

    For tests and memory/speed benchmarks, where the architecture matters and the weights do not.
    ``intermediate_size`` defaults to 4 * ``hidden_size``; ``kv_heads`` (grouped-query attention,
    not for gpt2) to ``heads``; ``vocab_size`` (rows of the embeddings) to the tokenizer's size,
    and may exceed it, as in real checkpoints; ``tie_embeddings`` (the output head shares the input
    embedding's matrix) to the family's default. The global random state is left untouched.
    """
    if family not in FAMILY_FIELDS:
        raise ConfigError(f"family {family!r}: must be one of {', '.join(FAMILY_FIELDS)}")
    fields = FAMILY_FIELDS[family]
    if kv_heads is not None and "kv_heads" not in fields:
        raise ConfigError(f"family {family!r} has no grouped-query attention; leave kv_heads unset")
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir, local_files_only=True)
    if vocab_size is not None and vocab_size < len(tokenizer):
        raise ConfigError(f"vocab_size {vocab_size}: the tokenizer of {tokenizer_dir} has {len(tokenizer)} tokens")
    sizes = {
        "hidden_size": hidden_size,
        "layers": layers,
        "heads": heads,
        "intermediate_size": intermediate_size or 4 * hidden_size,
        "kv_heads": kv_heads or heads,
    }
    config = AutoConfig.for_model(
        family,
        vocab_size=vocab_size or len(tokenizer),
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        **({} if tie_embeddings is None else {"tie_word_embeddings": tie_embeddings}),
        **{field: sizes[name] for name, field in fields.items()},
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = AutoModelForCausalLM.from_config(config, dtype=dtype)
    out = Path(out_dir)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out
