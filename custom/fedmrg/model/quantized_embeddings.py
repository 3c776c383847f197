"""The frozen LLM's input embedding in NF4 or 8-bit (bitsandbytes), looked up in the compute dtype.

QLoRA quantizes the linear layers and keeps the embeddings in the compute dtype. For a 1B model
with a 32k vocabulary the input embedding is then a sixth of the 4-bit model's weights, and with
a 128k vocabulary a third. It is only a lookup table: a batch dequantizes the rows of its own
tokens (bitsandbytes' ``EmbeddingNF4`` with the row width a multiple of its 64-value block,
``Embedding8bit`` always), so every token, prompt and visual token still enters the LLM in the
compute dtype, and nothing trains through the table.

The output head stays as it is: it scores every vocabulary entry at every step. A model whose
head shares the input embedding's matrix (``tie_word_embeddings``: GPT-2, Llama 3.2 1B) keeps the
matrix unquantized: a quantized copy for the input would add memory, not remove it.

bitsandbytes' embedding classes refuse ``state_dict()``; PEFT and the site checks call it on the
whole model, so the classes here return what the layer holds (the packed weight with its
quantization state), as ``Linear4bit`` does.
"""

from __future__ import annotations

import logging

import bitsandbytes as bnb
import torch
from torch import nn
from transformers import PreTrainedModel

from fedmrg.config import EmbeddingQuant

log = logging.getLogger(__name__)


class NF4Embedding(bnb.nn.EmbeddingNF4):
    """``EmbeddingNF4`` whose state dict holds the packed weight and its quantization state."""

    def _save_to_state_dict(self, destination, prefix, keep_vars):
        nn.Module._save_to_state_dict(self, destination, prefix, keep_vars)
        for key, value in self.weight.quant_state.as_dict(packed=True).items():
            destination[prefix + "weight." + key] = value if keep_vars else value.detach()


class Int8Embedding(bnb.nn.Embedding8bit):
    """``Embedding8bit`` whose state dict holds the int8 rows and their scales (``SCB``)."""

    def _save_to_state_dict(self, destination, prefix, keep_vars):
        nn.Module._save_to_state_dict(self, destination, prefix, keep_vars)
        destination[prefix + "SCB"] = self.weight.SCB if keep_vars else self.weight.SCB.detach()


def quantized_embedding(embedding: nn.Embedding, kind: EmbeddingQuant) -> nn.Embedding:
    """A frozen NF4 or int8 copy of ``embedding`` on its device, returning rows in its dtype."""
    weight = embedding.weight.detach()
    args = (embedding.num_embeddings, embedding.embedding_dim)
    if kind == "nf4":
        layer = NF4Embedding(*args, dtype=weight.dtype, device="meta")  # meta: no second table in memory
        # one fp32 scale per 64 values, not double-quantized: a lookup dequantizes its rows' scales
        # alone, which nested scales (one per 256 scales) would get wrong
        layer.weight = bnb.nn.Params4bit(
            weight,
            requires_grad=False,
            compress_statistics=False,
            quant_type="nf4",
            quant_storage=torch.uint8,
            module=layer,
        )
    elif kind == "int8":
        layer = Int8Embedding(*args, dtype=weight.dtype, device="meta")
        # Int8Params quantizes when it moves from the CPU: a table already on a GPU goes there via the CPU
        layer.weight = bnb.nn.Int8Params(weight.cpu(), requires_grad=False, has_fp16_weights=False)
    else:
        raise ValueError(f"embedding quantization {kind!r}: must be nf4 or int8")
    layer.padding_idx = embedding.padding_idx
    return layer.to(weight.device)


def quantize_input_embeddings(model: PreTrainedModel, kind: EmbeddingQuant) -> EmbeddingQuant:
    """Replace ``model``'s input embedding by a ``kind`` copy; returns the quantization it now has.

    ``none``, and a model whose output head shares the embedding's matrix, keep the table as it is.
    """
    embedding = model.get_input_embeddings()
    if kind == "none":
        return "none"
    head = model.get_output_embeddings()
    if head is not None and head.weight is embedding.weight:
        log.info("the input embedding is tied to the output head, so it stays in %s", embedding.weight.dtype)
        return "none"
    model.set_input_embeddings(quantized_embedding(embedding, kind))
    return kind
