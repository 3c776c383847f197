"""Loading the frozen LLM: 4-bit NF4 or plain, any causal LM family, offline only, clear errors."""

from __future__ import annotations

import socket

import bitsandbytes as bnb
import pytest
import torch
from transformers import AutoTokenizer

from fedmrg.errors import ConfigError
from fedmrg.model.base_llm import train_tokenizer
from fedmrg.model.llm import load_llm, random_llm, resolve_device, resolve_dtype

TEXTS = [
    "the heart is normal in size . the lungs are clear .",
    "mild cardiomegaly . small right pleural effusion . no pneumothorax .",
] * 5


@pytest.fixture(autouse=True)
def no_network(monkeypatch):
    """Loading must never reach for the Hub: any connection attempt fails the test."""

    def refuse(*args, **kwargs):
        raise AssertionError("network access attempted")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)


@pytest.fixture(scope="module")
def tokenizer_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tokenizer")
    train_tokenizer(TEXTS, vocab_size=300).save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory, tokenizer_dir):
    """Tiny random checkpoints by family, built on first use."""
    built = {}

    def get(family: str):
        if family not in built:
            kv_heads = None if family == "gpt2" else 2
            built[family] = random_llm(
                tmp_path_factory.mktemp(family),
                family,
                tokenizer_dir,
                hidden_size=64,
                layers=2,
                heads=4,
                kv_heads=kv_heads,
                intermediate_size=128,
            )
        return built[family]

    return get


def _linear_layers(model) -> dict[str, torch.nn.Module]:
    return {
        name: m for name, m in model.named_modules() if isinstance(m, torch.nn.Linear) or type(m).__name__ == "Conv1D"
    }


def test_4bit_load_quantizes_every_decoder_linear_and_freezes_everything(checkpoint):
    model, tokenizer, info = load_llm(checkpoint("llama"))
    layers = _linear_layers(model)
    assert isinstance(model.model.layers[0].self_attn.q_proj, bnb.nn.Linear4bit)
    assert all(isinstance(m, bnb.nn.Linear4bit) for name, m in layers.items() if name != "lm_head")
    assert model.model.layers[0].mlp.down_proj.weight.quant_state.quant_type == "nf4"
    assert not any(p.requires_grad for p in model.parameters())
    assert not model.training
    assert (info.family, info.embed_dim, info.quantized, info.embedding_quant) == ("llama", 64, True, "nf4")
    assert info.compute_dtype == torch.float32 and info.device == torch.device("cpu")


def test_plain_load_keeps_linear_layers_in_the_requested_dtype(checkpoint):
    model, _, info = load_llm(checkpoint("llama"), load_in_4bit=False, dtype="bfloat16")
    layers = _linear_layers(model)
    assert not any(isinstance(m, bnb.nn.Linear4bit) for m in layers.values())
    assert {p.dtype for p in model.parameters()} == {torch.bfloat16}
    assert not any(p.requires_grad for p in model.parameters())
    assert not info.quantized and info.compute_dtype == torch.bfloat16


@pytest.mark.parametrize("family", ["gpt2", "qwen2", "mistral"])
def test_other_families_load_in_4bit_and_generate(checkpoint, family):
    model, tokenizer, info = load_llm(checkpoint(family))
    layers = _linear_layers(model)
    assert info.family == family
    assert all(isinstance(m, bnb.nn.Linear4bit) for name, m in layers.items() if name != "lm_head")
    assert sum(isinstance(m, bnb.nn.Linear4bit) for m in layers.values()) == 2 * (4 if family == "gpt2" else 7)
    batch = tokenizer(["the heart is"], return_tensors="pt")
    logits = model(**batch).logits
    assert logits.shape == (1, batch["input_ids"].shape[1], model.get_input_embeddings().num_embeddings)
    out = model.generate(**batch, max_new_tokens=4, min_new_tokens=4, do_sample=False)
    assert out.shape[1] == batch["input_ids"].shape[1] + 4


def test_gradients_reach_the_inputs_through_4bit_layers_after_an_inference_pass(checkpoint):
    """A no-grad pass (validation, generate) must not break later training through the frozen LLM."""
    model, tokenizer, _ = load_llm(checkpoint("llama"))
    ids = tokenizer(["the lungs are clear"], return_tensors="pt")["input_ids"]

    def input_gradient() -> torch.Tensor:
        embeds = model.get_input_embeddings()(ids).detach().requires_grad_(True)
        model(inputs_embeds=embeds).logits.square().sum().backward()
        return embeds.grad

    before = input_gradient()
    with torch.no_grad():
        model.generate(ids, max_new_tokens=2, do_sample=False)
    assert before.abs().sum() > 0
    torch.testing.assert_close(input_gradient(), before)


def _plain_table(folder) -> torch.Tensor:
    model, _, _ = load_llm(folder, load_in_4bit=False)
    return model.get_input_embeddings().weight.detach()


@pytest.mark.parametrize(
    ("kind", "layer", "tolerance"), [("nf4", "NF4Embedding", 0.12), ("int8", "Int8Embedding", 0.01)]
)
def test_4bit_load_quantizes_the_input_embedding_and_looks_up_rows_in_the_compute_dtype(
    checkpoint, kind, layer, tolerance
):
    folder = checkpoint("llama")
    model, tokenizer, info = load_llm(folder, quantize_embeddings=kind)
    embedding = model.get_input_embeddings()
    assert type(embedding).__name__ == layer and info.embedding_quant == kind
    assert type(model.get_output_embeddings()) is torch.nn.Linear  # the head, which scores every token, stays
    ids = torch.arange(embedding.num_embeddings)
    rows, plain = embedding(ids), _plain_table(folder)
    assert rows.dtype == info.compute_dtype and not rows.requires_grad
    assert float((rows - plain).norm() / plain.norm()) < tolerance
    stored = {k: v for k, v in model.state_dict().items() if k.startswith("model.embed_tokens.")}  # PEFT calls it
    assert stored["model.embed_tokens.weight"].element_size() == 1
    assert sum(v.numel() * v.element_size() for v in stored.values()) < plain.numel() * plain.element_size() / 2
    batch = tokenizer(["the heart is"], return_tensors="pt")
    out = model.generate(inputs_embeds=embedding(batch["input_ids"]), max_new_tokens=3, min_new_tokens=3)
    assert out.shape[1] == 3


def test_no_embedding_quantization_and_a_plain_load_keep_the_table(checkpoint):
    folder = checkpoint("llama")
    kept, _, info = load_llm(folder, quantize_embeddings="none")
    assert type(kept.get_input_embeddings()) is torch.nn.Embedding and info.embedding_quant == "none"
    plain, _, info = load_llm(folder, load_in_4bit=False)
    assert type(plain.get_input_embeddings()) is torch.nn.Embedding and info.embedding_quant == "none"


def test_an_input_embedding_tied_to_the_output_head_stays_unquantized(checkpoint):
    model, _, info = load_llm(checkpoint("gpt2"))  # GPT-2 ties them
    assert info.embedding_quant == "none"
    assert model.get_output_embeddings().weight is model.get_input_embeddings().weight
    assert model.get_input_embeddings().weight.dtype == info.compute_dtype


def test_pad_token_falls_back_to_eos(tmp_path, tokenizer_dir):
    no_pad = AutoTokenizer.from_pretrained(tokenizer_dir)
    no_pad.pad_token = None
    no_pad.save_pretrained(tmp_path / "tok")
    folder = random_llm(tmp_path / "llm", "llama", tmp_path / "tok", hidden_size=32, layers=1, heads=2)
    model, tokenizer, _ = load_llm(folder)
    assert tokenizer.pad_token == tokenizer.eos_token == "</s>"
    assert model.generation_config.pad_token_id == tokenizer.eos_token_id


def test_tokenizer_larger_than_the_embeddings_is_refused(tmp_path, checkpoint):
    folder = tmp_path / "mixed"
    folder.mkdir()
    for path in checkpoint("llama").iterdir():
        (folder / path.name).write_bytes(path.read_bytes())
    bigger = AutoTokenizer.from_pretrained(folder)
    bigger.add_tokens([f"extra{i}" for i in range(10)])
    bigger.save_pretrained(folder)
    with pytest.raises(ConfigError, match="does not belong to these weights"):
        load_llm(folder)


@pytest.mark.parametrize("hub_id", ["meta-llama/Llama-3.2-1B", "gpt2"])
def test_a_hub_id_is_refused_with_how_to_get_a_local_copy(hub_id):
    with pytest.raises(ConfigError) as error:
        load_llm(hub_id)
    message = str(error.value)
    assert repr(hub_id) in message and "not a local directory" in message
    assert "never downloads weights" in message
    assert f"hf download {hub_id} --local-dir DIR" in message


def test_a_missing_directory_is_named(tmp_path):
    with pytest.raises(ConfigError, match="no such directory") as error:
        load_llm(tmp_path / "nowhere")
    assert str(tmp_path / "nowhere") in str(error.value) and "local Hugging Face checkpoint" in str(error.value)


def test_a_directory_without_config_json_is_refused(tmp_path, tokenizer_dir):
    AutoTokenizer.from_pretrained(tokenizer_dir).save_pretrained(tmp_path)
    with pytest.raises(ConfigError, match="no config.json") as error:
        load_llm(tmp_path)
    assert str(tmp_path) in str(error.value)


def test_a_directory_without_tokenizer_is_refused(tmp_path, checkpoint):
    for path in checkpoint("llama").iterdir():
        if not path.name.startswith("tokenizer"):
            (tmp_path / path.name).write_bytes(path.read_bytes())
    with pytest.raises(ConfigError, match="no tokenizer files") as error:
        load_llm(tmp_path)
    assert str(tmp_path) in str(error.value)


def test_random_checkpoints_are_reproducible_for_a_seed(tmp_path, tokenizer_dir):
    state = torch.random.get_rng_state()
    weights = []
    for name in ("a", "b"):
        folder = random_llm(tmp_path / name, "qwen2", tokenizer_dir, hidden_size=32, layers=1, heads=2, seed=3)
        weights.append((folder / "model.safetensors").read_bytes())
    assert weights[0] == weights[1]
    assert torch.equal(torch.random.get_rng_state(), state)


def test_device_and_dtype_names():
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_dtype("auto", torch.device("cpu")) == torch.float32
    assert resolve_dtype("bfloat16", torch.device("cpu")) == torch.bfloat16
    with pytest.raises(ConfigError, match="dtype 'int8'"):
        resolve_dtype("int8", torch.device("cpu"))
    with pytest.raises(ConfigError, match="not a device"):
        resolve_device("gpu")
