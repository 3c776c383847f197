"""The report generator as a whole: parameters, mechanisms, generation, save/load, training."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from bitsandbytes.nn import Linear4bit
from peft import PeftModel

from fedmrg.cli import main
from fedmrg.config import load_config
from fedmrg.data.images import load_image, save_dicom
from fedmrg.data.loaders import study_loader
from fedmrg.errors import ConfigError
from fedmrg.model.adapters import adapter_parameters
from fedmrg.model.inference import generate_for, study_batch
from fedmrg.model.layout import ADAPTERS_DIR
from fedmrg.model.llm import load_llm, random_llm
from fedmrg.model.mrg import MRGModel
from fedmrg.model.parameters import GENERIC, SPECIALIZED, model_part
from fedmrg.model.training import Trainer, train_centralized

ALLOWED_TRAINABLE = (
    "encoder.",
    "projector.",
    "customizer.",
    "diagnosis.",
    "contrastive.generic.",
    "contrastive.client.",
)


def tiny_cfg(**model_overrides):
    return load_config("tiny", {f"model.{key}": value for key, value in model_overrides.items()})


def first_batch(cfg, site, split="train", batch_size=4):
    return next(iter(study_loader(cfg, [site], split, train=False, batch_size=batch_size)))


@pytest.fixture(scope="module")
def site(tiny_bench):
    return tiny_bench / "site-1"


@pytest.fixture(scope="module")
def model(tiny_base_llm):
    torch.manual_seed(0)
    return MRGModel.build(tiny_cfg(), tiny_base_llm, device="cpu")


def losses_of(model, batch, seed=0):
    """The training losses (the reference findings in the prompt, as in training), with the same dropout
    masks for the same seed: comparable before and after training, whatever the head now predicts."""
    torch.manual_seed(seed)
    model.train()
    with torch.no_grad():
        return {key: float(value) for key, value in model(batch).items()}


def test_llm_is_frozen_4bit_and_only_listed_parameters_train(model):
    linears = [m for m in model.llm.modules() if isinstance(m, Linear4bit)]
    assert linears, "the LLM's linear layers should be bitsandbytes Linear4bit"
    for name, parameter in model.named_parameters():
        if parameter.requires_grad:
            assert name.startswith(ALLOWED_TRAINABLE) or (
                name.startswith("llm.") and "lora_" in name and (f".{GENERIC}." in name or f".{SPECIALIZED}." in name)
            ), name
        elif name.startswith("llm."):
            assert "lora_" not in name, f"adapter parameter {name} should train"
    frozen_llm = [p for n, p in model.llm.named_parameters() if "lora_" not in n]
    assert frozen_llm and not any(p.requires_grad for p in frozen_llm)


@pytest.mark.parametrize("kind", ["nf4", "int8"])
def test_a_quantized_input_embedding_starts_the_prompts_at_the_spread_of_its_rows(tiny_base_llm, site, kind):
    """Prompts and visual tokens start at the scale of the words they sit among, read from the rows the
    table gives, not from its packed bytes; the model then trains and generates."""
    torch.manual_seed(0)
    quantized = MRGModel.build(tiny_cfg(quantize_embeddings=kind), tiny_base_llm, device="cpu")
    plain, _, _ = load_llm(tiny_base_llm, load_in_4bit=False, device="cpu")
    spread = float(plain.get_input_embeddings().weight.std())
    assert type(quantized.llm.get_input_embeddings()).__name__ in ("NF4Embedding", "Int8Embedding")
    assert quantized.projector.norm.weight[0].item() == pytest.approx(spread, rel=0.1)
    batch = first_batch(quantized.cfg, site)
    loss = quantized(batch)["loss"]
    loss.backward()
    assert torch.isfinite(loss) and quantized.customizer.prompts.grad.abs().sum() > 0
    assert len(generate_for(quantized, batch)) == len(batch["report"])


def test_shared_and_local_state_partition_the_trainable_parameters(model):
    shared, local = model.shared_state_dict(), model.local_state_dict()
    trainable = {name for name, p in model.named_parameters() if p.requires_grad}
    assert not shared.keys() & local.keys()
    assert shared.keys() | local.keys() == trainable
    assert any(f".{GENERIC}." in key for key in shared) and not any(f".{SPECIALIZED}." in key for key in shared)
    assert any(f".{SPECIALIZED}." in key for key in local) and any(
        key.startswith("contrastive.client.") for key in local
    )
    assert not any(key.startswith("contrastive.client.") for key in shared)


def test_each_trainable_parameter_is_named_by_its_model_part(model):
    parts = {model_part(name) for name, p in model.named_parameters() if p.requires_grad}
    assert {"LoRA generic", "LoRA specialized", "projector", "customizer", "diagnosis"} <= parts
    assert {"contrastive.generic", "contrastive.client"} <= parts and "contrastive" not in parts
    assert all(part.startswith("encoder.") for part in parts if "encoder" in part)
    assert model_part("llm.base_model.model.layers.0.mlp.up_proj.lora_AB.specialized.weight") == "LoRA specialized"


def test_loading_a_shared_state_changes_only_shared_parameters(model):
    shared, local = model.shared_state_dict(), model.local_state_dict()
    model.load_shared_state_dict({key: value + 1 for key, value in shared.items()})
    try:
        assert all(torch.equal(model.shared_state_dict()[key], value + 1) for key, value in shared.items())
        assert all(torch.equal(model.local_state_dict()[key], value) for key, value in local.items())
        with pytest.raises(ValueError, match="keys do not match"):
            model.load_shared_state_dict({**shared, "encoder.extra": torch.zeros(1)})
        key = next(iter(shared))
        with pytest.raises(ValueError, match="shape"):
            model.load_shared_state_dict({**shared, key: torch.zeros(3, 3, 3)})
    finally:
        model.load_shared_state_dict(shared)


def test_prompts_are_static_at_initialisation(model, site):
    batch = first_batch(model.cfg, site)
    encoded = model.encoder(batch["image"], batch["view_mask"])
    prompts = model.customizer(encoded.pooled)
    assert torch.equal(prompts, model.customizer.static_prompts().expand_as(prompts))


@pytest.mark.parametrize(
    "switch, expect_gone, expect_new",
    [
        ({"adapters": "single"}, {"lm_dual", "mutual_kl"}, set()),
        ({"mutual_boosting": 0.0}, {"mutual_kl"}, set()),
        ({"diagnosis": False}, {"diagnosis"}, set()),
        ({"contrastive": False}, {"contrastive_prototype", "contrastive_generic", "contrastive_client"}, set()),
    ],
)
def test_each_loss_switch_removes_its_terms(tiny_base_llm, site, switch, expect_gone, expect_new):
    torch.manual_seed(0)
    variant = MRGModel.build(tiny_cfg(**switch), tiny_base_llm, device="cpu")
    losses = losses_of(variant, first_batch(variant.cfg, site))
    assert not expect_gone & losses.keys()
    assert {"loss", "lm_generic"} <= losses.keys()


@pytest.mark.parametrize(
    "switch, prompts, visual, diagnosis",
    [
        ({}, 4, 4, True),
        ({"prompt_mode": "none"}, 0, 4, True),
        ({"prompt_mode": "prompt", "num_prompts": 3}, 3, 4, True),
        ({"visual_tokens": 1}, 4, 1, True),
        ({"diagnosis": False}, 4, 4, False),
    ],
)
def test_each_input_switch_changes_what_the_llm_reads(tiny_base_llm, site, switch, prompts, visual, diagnosis):
    torch.manual_seed(0)
    variant = MRGModel.build(tiny_cfg(**switch), tiny_base_llm, device="cpu")
    batch = first_batch(variant.cfg, site, batch_size=1)
    encoded = variant.encoder(batch["image"], batch["view_mask"])
    embeds, mask, _, _ = variant._sequences(encoded, batch["states"], None)
    views = int(batch["num_views"][0])
    tail = variant._ids(variant._diagnosis_text(batch["states"][0]))
    assert embeds.shape[1] == len(variant._head_ids()) + prompts + visual * variant.cfg.data.max_views + len(tail)
    assert int(mask.sum()) == embeds.shape[1] - visual * (variant.cfg.data.max_views - views)
    assert ("diagnosis:" in variant._diagnosis_text(batch["states"][0])) == diagnosis


def test_mutual_boosting_kl_is_zero_while_the_specialized_adapter_is_zero(model, site):
    losses = losses_of(model, first_batch(model.cfg, site))
    assert losses["lm_generic"] == pytest.approx(losses["lm_dual"])  # LoRA B starts at zero
    assert losses["mutual_kl"] == pytest.approx(0.0, abs=1e-6)


def gradient_reach(loss, params) -> float:
    """How much gradient one loss term puts on ``params`` (sum of absolute values; 0 when none)."""
    grads = torch.autograd.grad(loss, [p for p in params if p.requires_grad], retain_graph=True, allow_unused=True)
    return sum(float(g.abs().sum()) for g in grads if g is not None)


def test_the_dual_paths_loss_trains_the_generic_adapter_only_when_asked(tiny_base_llm, site):
    """generic_from_dual: false keeps the federated adapter to its own path's loss; the losses are the same."""
    reach, values = {}, {}
    for setting in (True, False):
        torch.manual_seed(0)
        variant = MRGModel.build(tiny_cfg(generic_from_dual=setting), tiny_base_llm, device="cpu")
        variant.train()
        torch.manual_seed(1)
        losses = variant(first_batch(variant.cfg, site))
        values[setting] = losses["lm_dual"].item()
        reach[setting] = {
            name: gradient_reach(losses["lm_dual"], adapter_parameters(variant.llm, name).values())
            for name in (GENERIC, SPECIALIZED)
        }
    assert values[True] == pytest.approx(values[False])
    assert reach[True][GENERIC] > 0 and reach[True][SPECIALIZED] > 0
    assert reach[False][GENERIC] == 0 and reach[False][SPECIALIZED] > 0


@pytest.mark.parametrize("features", ["encoder", "projector"])
def test_contrastive_features_decide_whether_the_contrastive_losses_train_the_projector(tiny_base_llm, site, features):
    """On the projector's tokens the contrastive losses shape what the LLM reads, even with a frozen encoder."""
    torch.manual_seed(0)
    variant = MRGModel.build(tiny_cfg(contrastive_features=features), tiny_base_llm, device="cpu")
    variant.train()
    losses = variant(first_batch(variant.cfg, site))
    reach = gradient_reach(losses["contrastive_generic"], variant.projector.parameters())
    assert (reach > 0) == (features == "projector")
    assert gradient_reach(losses["contrastive_generic"], variant.encoder.parameters()) > 0


def test_a_short_run_lowers_the_loss_on_its_own_batch(tiny_base_llm, site):
    torch.manual_seed(0)
    cfg = tiny_cfg()
    fresh = MRGModel.build(cfg, tiny_base_llm, device="cpu")
    batch = first_batch(cfg, site)
    before = losses_of(fresh, batch)["loss"]
    trainer = Trainer(fresh, cfg, total_steps=12)
    for _ in range(12):
        trainer.train_step(batch)
    after = losses_of(fresh, batch)
    assert after["loss"] < before
    assert after["lm_generic"] != pytest.approx(after["lm_dual"])  # the specialized adapter learned something


def test_next_token_does_not_depend_on_batch_company(model, site):
    """Left padding, masked missing views and positions: a study reads the same alone or in a batch."""
    batch = first_batch(model.cfg, site, batch_size=4)
    assert batch["view_mask"].all(), "expected two-view studies"
    batch["view_mask"][0, 1] = False  # study 0 becomes a frontal-only study (the padded view is zeros)
    batch["image"][0, 1] = 0

    def next_token_logits(part):
        encoded = model.encoder(part["image"], part["view_mask"])
        embeds, mask, positions, _ = model._sequences(encoded, part["states"], None)
        with torch.no_grad():
            return model.llm(inputs_embeds=embeds, attention_mask=mask, position_ids=positions).logits[:, -1]

    model.eval()
    together = next_token_logits(batch)
    for i in range(len(batch["id"])):
        alone = {k: v[i : i + 1] for k, v in batch.items()}
        if i == 0:
            alone["image"], alone["view_mask"] = alone["image"][:, :1], alone["view_mask"][:, :1]
        alone = next_token_logits(alone)
        assert torch.allclose(together[i], alone[0], atol=1e-4), f"study {i} reads differently in a batch"


def test_generate_returns_one_report_per_study(model, site):
    batch = first_batch(model.cfg, site, batch_size=3)
    reports = model.generate(batch)
    assert len(reports) == 3 and all(isinstance(text, str) and text for text in reports)


def test_save_load_round_trips_exactly_in_peft_format(model, tiny_base_llm, site, tmp_path):
    with torch.no_grad():  # give every parameter a non-initial value so that nothing passes by luck
        for parameter in model.parameters():
            if parameter.requires_grad:
                parameter.add_(torch.randn_like(parameter) * 0.01)
    model.save(tmp_path / "run")
    loaded = MRGModel.load(tmp_path / "run", device="cpu")
    for ours, theirs in (
        (model.shared_state_dict(), loaded.shared_state_dict()),
        (model.local_state_dict(), loaded.local_state_dict()),
    ):
        assert ours.keys() == theirs.keys()
        assert all(torch.equal(ours[key], theirs[key]) for key in ours)
    batch = first_batch(model.cfg, site, batch_size=2)
    assert model.generate(batch) == loaded.generate(batch)
    assert (tmp_path / "run" / ADAPTERS_DIR / GENERIC / "adapter_config.json").is_file()
    base, _, _ = load_llm(tiny_base_llm, load_in_4bit=False, device="cpu")
    peft = PeftModel.from_pretrained(base, str(tmp_path / "run" / ADAPTERS_DIR / GENERIC), adapter_name=GENERIC)
    ours = {k: v for k, v in model.llm.state_dict().items() if f"lora_A.{GENERIC}" in k}
    theirs = {k: v for k, v in peft.state_dict().items() if f"lora_A.{GENERIC}" in k}
    assert ours.keys() == theirs.keys() and all(torch.equal(ours[k], theirs[k]) for k in ours)


def test_load_rejects_folders_that_are_not_models(tmp_path):
    with pytest.raises(ConfigError, match="not a FedMRG model folder"):
        MRGModel.load(tmp_path, device="cpu")


def test_dual_generation_needs_a_specialized_adapter(tiny_base_llm, site):
    single = MRGModel.build(tiny_cfg(adapters="single"), tiny_base_llm, device="cpu")
    with pytest.raises(ConfigError, match="no specialized adapter"):
        single.generate(first_batch(single.cfg, site, batch_size=1), adapters="dual")


def test_generate_reads_png_and_dicom_studies(model, site, tmp_path):
    record = json.loads((site / "annotation.json").read_text())["test"][0]
    pngs = [site / "images" / path for path in record["image_path"]]
    dicom = tmp_path / "view.dcm"
    save_dicom(load_image(pngs[0]), dicom)
    for images in (pngs, [dicom]):
        row = generate_for(model, study_batch(model, images))[0]
        assert isinstance(row["report"], str) and row["report"].strip()
        assert set(row["findings"].values()) <= {"positive", "negative", "uncertain"}


@pytest.mark.parametrize("family", ["gpt2", "qwen2"])
def test_other_llm_families_load_train_and_generate(family, tiny_base_llm, site, tmp_path):
    checkpoint = random_llm(tmp_path / family, family, tiny_base_llm, hidden_size=64, layers=2, heads=2)
    torch.manual_seed(0)
    cfg = tiny_cfg()
    variant = MRGModel.build(cfg, checkpoint, device="cpu")
    assert any(isinstance(m, Linear4bit) for m in variant.llm.modules())
    batch = first_batch(cfg, site)
    before = losses_of(variant, batch)["lm_generic"]
    trainer = Trainer(variant, cfg, total_steps=8)
    for _ in range(8):
        trainer.train_step(batch)
    assert losses_of(variant, batch)["lm_generic"] < before
    assert len(variant.generate(batch, max_new_tokens=5)) == len(batch["id"])


@pytest.mark.slow
def test_train_resume_evaluate_and_retrieve_from_the_command_line(tiny_bench, tiny_base_llm, site, tmp_path, capsys):
    run = tmp_path / "run"
    common = ["--config", "tiny", "--data", str(site), "--base-llm", str(tiny_base_llm), "--out", str(run), "--quiet"]
    assert main(["train", *common, "--max-steps", "2"]) == 0
    first = json.loads((run / "train_summary.json").read_text())
    assert first["steps"] == 2 and not first["resumed"]
    assert main(["train", *common, "--max-steps", "5"]) == 0
    second = json.loads((run / "train_summary.json").read_text())
    assert second["resumed"] and second["steps"] == 5
    assert main(["train", *common]) == 0  # no limit: finishes the interrupted epoch, then the rest
    third = json.loads((run / "train_summary.json").read_text())
    assert third["steps"] == third["planned_steps"] and third["epochs"] == 2
    record = json.loads((site / "annotation.json").read_text())["test"][0]
    capsys.readouterr()
    assert (
        main(["generate", "--model", str(run), "--json", *(str(site / "images" / p) for p in record["image_path"])])
        == 0
    )
    generated = json.loads(capsys.readouterr().out)
    assert generated["report"] and isinstance(generated["findings"], dict)
    scores = tmp_path / "eval" / "scores.json"
    assert (
        main(
            [
                "evaluate",
                "--model",
                str(run),
                "--data",
                str(tiny_bench / "test-global"),
                "--out",
                str(scores),
                "--limit",
                "6",
                "--quiet",
            ]
        )
        == 0
    )
    result = json.loads(scores.read_text())
    assert result["n"] == 6 and {"nlg", "ce"} <= result.keys()
    predictions = json.loads((scores.parent / "scores.predictions.json").read_text())
    assert len(predictions) == 6
    baseline = tmp_path / "eval" / "retrieval.json"
    assert (
        main(
            [
                "retrieve-baseline",
                "--model",
                str(run),
                "--data",
                str(tiny_bench / "test-global"),
                "--train-data",
                str(site),
                "--out",
                str(baseline),
                "--limit",
                "6",
                "--quiet",
            ]
        )
        == 0
    )
    assert json.loads(baseline.read_text()).keys() == result.keys()
    normal = tmp_path / "eval" / "normal.json"
    assert (
        main(
            [
                "retrieve-baseline",
                "--normal",
                "--config",
                "tiny",
                "--data",
                str(site),
                "--out",
                str(normal),
                "--limit",
                "6",
                "--quiet",
            ]
        )
        == 0
    )
    assert len(set(json.loads((normal.parent / "normal.retrieved.json").read_text()).values())) == 1
    retrieved = json.loads((baseline.parent / "retrieval.retrieved.json").read_text())
    train_ids = {row["id"] for row in json.loads((site / "annotation.json").read_text())["train"]}
    assert set(retrieved.values()) <= train_ids


def test_resume_refuses_another_config(tiny_base_llm, site, tmp_path):
    run = tmp_path / "run"
    train_centralized(tiny_cfg(), [site], run, base_llm=tiny_base_llm, max_steps=1, progress=False)
    with pytest.raises(ConfigError, match="another config"):
        train_centralized(tiny_cfg(lora_rank=2), [site], run, base_llm=tiny_base_llm, max_steps=2, progress=False)


def test_retrieval_prefers_the_same_positive_findings():
    from fedmrg.eval.retrieval import retrieve

    nan = np.nan
    candidates = np.full((3, 14), nan)
    candidates[0, 1] = 1  # a different positive
    candidates[1, 2] = 1
    candidates[1, 3] = 0
    candidates[2, 2] = 1  # same positive, fewer equal states than candidate 1 for the query below
    query = np.full((1, 14), nan)
    query[0, 2], query[0, 3] = 1, 0
    assert retrieve(query, candidates).tolist() == [1]
    query2 = np.full((1, 14), nan)
    query2[0, 1] = 1
    assert retrieve(query2, candidates).tolist() == [0]


def test_a_hub_id_as_base_llm_fails_with_how_to_copy_it(site, tmp_path, capsys):
    code = main(
        [
            "train",
            "--config",
            "tiny",
            "--data",
            str(site),
            "--base-llm",
            "meta-llama/Llama-3.2-1B",
            "--out",
            str(tmp_path / "run"),
            "--quiet",
        ]
    )
    err = capsys.readouterr().err
    assert code == 2 and "meta-llama/Llama-3.2-1B" in err and "--local-dir" in err
    assert not (tmp_path / "run" / "checkpoint").exists()


def test_retrieval_ranks_by_positive_f1_before_equal_states():
    from fedmrg.eval.retrieval import retrieve

    query = np.full((1, 14), np.nan)
    query[0, :2] = 1
    a = np.zeros(14)  # positives {0..3}: F1 0.67, every other state differs from the query's
    a[:4] = 1
    b = np.full(14, np.nan)  # positives {0..4}: F1 0.57, but 9 more states equal the query's
    b[:5] = 1
    assert retrieve(query, np.stack([b, a])).tolist() == [1]


def test_a_saved_model_loads_without_the_pretrained_encoder_file(tiny_base_llm, tmp_path):
    from safetensors.torch import save_file

    weights = tmp_path / "vit.safetensors"
    donor = MRGModel.build(tiny_cfg(), tiny_base_llm, device="cpu")
    save_file({k: v.contiguous() for k, v in donor.encoder.vit.state_dict().items()}, str(weights))
    cfg = tiny_cfg()
    cfg.model.encoder.pretrained = str(weights)
    model = MRGModel.build(cfg, tiny_base_llm, device="cpu")
    assert all(
        torch.equal(a, b)
        for a, b in zip(model.encoder.vit.state_dict().values(), donor.encoder.vit.state_dict().values())
    )
    model.save(tmp_path / "run")
    weights.unlink()
    loaded = MRGModel.load(tmp_path / "run", device="cpu")
    assert torch.equal(
        loaded.shared_state_dict()["encoder.view_embedding"], model.shared_state_dict()["encoder.view_embedding"]
    )


def test_load_refuses_another_base_llm(model, tiny_bench, tmp_path):
    from fedmrg.model.base_llm import make_base_llm

    model.save(tmp_path / "run")
    make_base_llm(tiny_bench / "public", tmp_path / "other-llm", "tiny", epochs=1, seed=7, progress=False)
    with pytest.raises(ConfigError, match="not the base LLM this model was trained on"):
        MRGModel.load(tmp_path / "run", base_llm=tmp_path / "other-llm", device="cpu")


def test_a_run_killed_before_its_first_checkpoint_can_start_again(tiny_base_llm, site, tmp_path):
    run = tmp_path / "run"
    (run / "tb").mkdir(parents=True)  # what a run killed during its first epoch leaves
    summary = train_centralized(tiny_cfg(), [site], run, base_llm=tiny_base_llm, max_steps=1, progress=False)
    assert summary["steps"] == 1 and not summary["resumed"]


def test_a_site_calibrates_the_prompts_findings_on_its_validation_studies(tiny_base_llm, site, monkeypatch):
    """The trainer's calibration reads the head on validation studies and moves the thresholds that the
    predicted prompt then uses; the new thresholds are part of the shared state a site sends."""
    from fedmrg.labels.observations import OBSERVATIONS
    from fedmrg.labels.states import STATE_POSITIVE

    torch.manual_seed(0)
    variant = MRGModel.build(tiny_cfg(), tiny_base_llm, device="cpu")
    loader = study_loader(variant.cfg, [site], "train", train=False, batch_size=8)
    k = OBSERVATIONS.index("Lung Opacity")
    positives = sum(int((b["states"][:, k] == STATE_POSITIVE).sum()) for b in loader)
    assert positives >= 3  # the tiny benchmark's train split has some

    def separable(batch):  # a head that ranks Lung Opacity perfectly, at probabilities 0.26 vs 0.096
        logits = torch.zeros(len(batch["id"]), 14, 4)
        logits[..., 0] = 2.0
        chosen = batch["states"][:, k] == STATE_POSITIVE
        logits[:, k, STATE_POSITIVE] = torch.where(chosen, torch.tensor(1.2), torch.tensor(0.0))
        return logits

    monkeypatch.setattr(variant, "diagnosis_logits", separable)
    before = variant.shared_state_dict()["diagnosis.thresholds"].clone()
    chosen = Trainer(variant, variant.cfg, total_steps=1).calibrate(loader)
    assert list(chosen) == ["Lung Opacity"] and 0.096 < chosen["Lung Opacity"] <= 0.26
    after = variant.shared_state_dict()["diagnosis.thresholds"]
    assert after[k] == pytest.approx(chosen["Lung Opacity"]) and torch.equal(after[:k], before[:k])
    batch = next(iter(loader))
    predicted = variant.diagnosis.predict(separable(batch))
    assert torch.equal(predicted[:, k] == STATE_POSITIVE, batch["states"][:, k] == STATE_POSITIVE)
