"""Encoder, projector, prompt customizer, diagnosis head and contrastive heads, on tiny sizes."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import save_file

from fedmrg.config import EncoderConfig
from fedmrg.errors import ConfigError
from fedmrg.labels.labeler import label_matrix
from fedmrg.labels.observations import OBSERVATIONS
from fedmrg.labels.states import STATES, labels_from_states, states_from_labels
from fedmrg.model.contrastive import ContrastiveHeads, info_nce, prototype_nce
from fedmrg.model.customizer import PromptCustomizer
from fedmrg.model.diagnosis import NOTHING_MENTIONED, DiagnosisHead, class_counts, diagnosis_prompt
from fedmrg.model.encoder import StudyEncoder, load_encoder_weights
from fedmrg.model.projector import VisualProjector
from fedmrg.model.prototypes import PrototypeBank

SIZE, PATCH, HIDDEN = 32, 8, 32  # a 4 x 4 patch grid
CFG = EncoderConfig(patch_size=PATCH, hidden_size=HIDDEN, mlp_dim=64, layers=1, heads=4)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


def make_encoder() -> StudyEncoder:
    return StudyEncoder(CFG, image_size=SIZE, max_views=2).eval()


# --- encoder -------------------------------------------------------------------------------------


def test_encoder_shapes_for_one_and_two_views():
    encoder = make_encoder()
    image = torch.randn(2, 2, 1, SIZE, SIZE)
    mask = torch.tensor([[True, True], [True, False]])
    out = encoder(image, mask)
    assert encoder.grid == (4, 4) and encoder.out_dim == HIDDEN
    assert out.tokens.shape == (2, 2, 16, HIDDEN) and out.pooled.shape == (2, HIDDEN)
    assert torch.equal(out.tokens[1, 1], torch.zeros(16, HIDDEN))
    assert torch.allclose(out.pooled[1], out.tokens[1, 0].mean(dim=0), atol=1e-6)


def test_padded_views_do_not_change_a_single_view_study():
    encoder = make_encoder()
    with torch.no_grad():
        encoder.view_embedding.normal_()
    one_view = torch.randn(1, 1, 1, SIZE, SIZE)
    alone = encoder(one_view, torch.tensor([[True]])).pooled[0]
    batch = torch.cat([torch.randn(1, 2, 1, SIZE, SIZE), F.pad(one_view, (0, 0, 0, 0, 0, 0, 0, 1), value=7.0)])
    mixed = encoder(batch, torch.tensor([[True, True], [True, False]])).pooled[1]
    assert torch.allclose(alone, mixed, atol=1e-5)


def test_encoder_rejects_a_patch_size_that_does_not_divide_the_image():
    with pytest.raises(ConfigError, match=r"model\.encoder\.patch_size.*data\.image_size"):
        StudyEncoder(CFG, image_size=36, max_views=2)


def test_load_encoder_weights_round_trip(tmp_path):
    source, target = make_encoder(), make_encoder()
    save_file(source.state_dict(), tmp_path / "encoder.safetensors")
    load_encoder_weights(target, tmp_path / "encoder.safetensors")
    assert all(torch.equal(a, b) for a, b in zip(source.state_dict().values(), target.state_dict().values()))

    # The inner ViT alone, under another prefix: the view embedding keeps its value.
    other = make_encoder()
    torch.save({f"module.{k}": v for k, v in source.vit.state_dict().items()}, tmp_path / "vit.pt")
    load_encoder_weights(other, tmp_path / "vit.pt")
    assert torch.equal(other.vit.patch_embedding.position_embeddings, source.vit.patch_embedding.position_embeddings)


def test_load_encoder_weights_errors(tmp_path):
    encoder = make_encoder()
    vit_state = encoder.vit.state_dict()
    with pytest.raises(ConfigError, match="not found"):
        load_encoder_weights(encoder, tmp_path / "missing.pt")
    torch.save([1, 2, 3], tmp_path / "list.pt")
    with pytest.raises(ConfigError, match="list.pt: not a state dict"):
        load_encoder_weights(encoder, tmp_path / "list.pt")
    (tmp_path / "junk.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(ConfigError, match="junk.safetensors: cannot read"):
        load_encoder_weights(encoder, tmp_path / "junk.safetensors")
    torch.save({"foo.weight": torch.zeros(3)}, tmp_path / "foreign.pt")
    with pytest.raises(ConfigError, match="foreign.pt: no key matches"):
        load_encoder_weights(encoder, tmp_path / "foreign.pt")
    wider = StudyEncoder(EncoderConfig(patch_size=PATCH, hidden_size=64, mlp_dim=64, layers=1, heads=4), SIZE, 2)
    torch.save(wider.state_dict(), tmp_path / "wider.pt")
    with pytest.raises(ConfigError, match=r"wider.pt: .*wrong shape.*\[1, 16, 64\] vs \[1, 16, 32\]"):
        load_encoder_weights(encoder, tmp_path / "wider.pt")
    partial = {k: v for k, v in vit_state.items() if not k.startswith("norm.")}
    torch.save(partial, tmp_path / "partial.pt")
    with pytest.raises(ConfigError, match=r"partial.pt: 2 ViT weights are not in the file: vit\.norm\.weight"):
        load_encoder_weights(encoder, tmp_path / "partial.pt")


# --- projector -----------------------------------------------------------------------------------


def test_projector_pools_each_view_and_masks_padded_views():
    tokens = torch.randn(2, 2, 16, HIDDEN)
    mask = torch.tensor([[True, True], [True, False]])
    projector = VisualProjector(HIDDEN, 24, grid=(4, 4), tokens_per_view=4)
    embeds, token_mask = projector(tokens, mask)
    assert projector.tokens_per_view == 4
    assert embeds.shape == (2, 8, 24) and token_mask.tolist() == [[True] * 8, [True] * 4 + [False] * 4]
    assert torch.equal(embeds[1, 4:], torch.zeros(4, 24))
    # The top-left pooled token of the first view is the mean of its top-left 2 x 2 patches.
    corner = tokens[0, 0].reshape(4, 4, HIDDEN)[:2, :2].reshape(4, HIDDEN).mean(dim=0)
    assert torch.allclose(embeds[0, 0], projector.norm(projector.proj(corner)), atol=1e-5)


def test_projector_keeps_every_patch_with_zero_tokens_and_rejects_too_many():
    embeds, token_mask = VisualProjector(HIDDEN, 24, grid=(4, 4), tokens_per_view=0)(
        torch.randn(1, 2, 16, HIDDEN), torch.tensor([[True, True]])
    )
    assert embeds.shape == (1, 32, 24) and token_mask.all()
    with pytest.raises(ConfigError, match="model.visual_tokens"):
        VisualProjector(HIDDEN, 24, grid=(4, 4), tokens_per_view=25)


# --- prompt customizer ---------------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["prompt", "promptbook"])
def test_customizer_is_the_static_prompt_at_init_and_learns_to_depend_on_the_image(mode):
    customizer = PromptCustomizer(mode, num_prompts=3, num_books=3, feature_dim=8, embed_dim=6, hidden=5)
    features = torch.randn(4, 8)
    prompts = customizer(features)
    assert customizer.num_tokens == 3 and prompts.shape == (4, 3, 6)
    assert torch.equal(prompts, customizer.static_prompts().expand(4, -1, -1))

    optimizer = torch.optim.SGD(customizer.parameters(), lr=0.5)
    (customizer(features) * torch.randn(4, 3, 6)).sum().backward()
    optimizer.step()
    after = customizer(features)
    assert not torch.allclose(after[0], after[1])


def test_customizer_none_gives_no_tokens():
    customizer = PromptCustomizer("none", num_prompts=3, num_books=3, feature_dim=8, embed_dim=6, hidden=5)
    assert customizer.num_tokens == 0 and not list(customizer.parameters())
    assert customizer(torch.randn(2, 8)).shape == (2, 0, 6)
    assert customizer.static_prompts().shape == (0, 6)


# --- diagnosis -----------------------------------------------------------------------------------


def test_states_labels_round_trip_and_prompt_text():
    labels = label_matrix(["The heart is enlarged. No pleural effusion. Possible edema.", "Normal study"])
    states = states_from_labels(labels)
    cardio, edema, effusion = (OBSERVATIONS.index(n) for n in ("Cardiomegaly", "Edema", "Pleural Effusion"))
    assert [STATES[s] for s in states[0, [cardio, edema, effusion]]] == ["positive", "uncertain", "negative"]
    np.testing.assert_array_equal(labels_from_states(states), labels.astype(np.float32))
    assert diagnosis_prompt(states[0]) == "cardiomegaly: positive; edema: uncertain; pleural effusion: negative"
    assert diagnosis_prompt([0] * 14) == NOTHING_MENTIONED
    with pytest.raises(ValueError, match="NaN, 1, 0 or -1"):
        states_from_labels(np.full((1, 14), 2.0))


def test_diagnosis_losses_differ_once_counts_are_skewed_and_predict_uses_raw_logits():
    heads = {mode: DiagnosisHead(8, loss=mode) for mode in ("ce", "balanced", "logit_adjusted")}
    for head in heads.values():
        head.load_state_dict(heads["ce"].state_dict())
    features, states = torch.randn(6, 8), torch.randint(0, 4, (6, 14))
    logits = heads["ce"](features)
    assert logits.shape == (6, 14, 4)
    unset = [head.loss(logits, states) for head in heads.values()]
    assert torch.allclose(unset[0], unset[1]) and torch.allclose(unset[0], unset[2])

    skewed = torch.cat([torch.zeros(6, 14, dtype=torch.long), states]).clamp(max=1)  # mostly blank
    counts = class_counts(skewed)
    assert counts.shape == (14, 4) and counts.sum() == 12 * 14
    for head in heads.values():
        head.set_class_counts(counts)
    losses = [head.loss(logits, states).item() for head in heads.values()]
    assert len(set(losses)) == 3
    assert torch.equal(heads["logit_adjusted"].predict(logits), heads["ce"].predict(logits))  # the raw logits
    assert torch.equal(heads["balanced"].state_dict()["class_counts"], counts.float())


def test_calibrated_thresholds_decide_when_the_prompt_says_positive():
    head = DiagnosisHead(8)
    cardio = OBSERVATIONS.index("Cardiomegaly")
    edema = OBSERVATIONS.index("Edema")
    # Cardiomegaly: the positives have probabilities 0.35, 0.4 and 0.45, the negatives 0.1, 0.2 and 0.3:
    # every threshold in (0.3, 0.35] separates them (F1 1); the lowest candidate there is 0.35.
    # Edema: the same positives, ranked below every negative (AUC 0): the head cannot tell, and the
    # best F1 (call all six positive) would put edema in every prompt; its threshold stays.
    probability = torch.zeros(6, 14)
    probability[:, cardio] = torch.tensor([0.35, 0.4, 0.45, 0.1, 0.2, 0.3])
    probability[:, edema] = torch.tensor([0.1, 0.1, 0.1, 0.3, 0.3, 0.3])
    positive = torch.zeros(6, 14, dtype=torch.bool)
    positive[:3, cardio] = positive[:3, edema] = True
    chosen = head.calibrate(probability, positive)
    assert chosen == {"Cardiomegaly": 0.35}  # the others had no positive, or no ranking: left at 0.5
    assert head.thresholds[cardio].item() == pytest.approx(0.35) and head.thresholds[0].item() == 0.5
    # logits whose positive-state probability is 0.4 (the rest: blank 0.45, negative and uncertain 0.075)
    logits = torch.log(torch.tensor([0.45, 0.4, 0.075, 0.075])).expand(1, 14, 4)
    states = head.predict(logits)
    assert STATES[states[0, cardio]] == "positive"  # 0.4 >= 0.35, though blank is more likely
    assert STATES[states[0, 0]] == "blank"  # 0.4 < 0.5: the most likely of the other states
    head.loss(head(torch.randn(3, 8)), states.expand(3, -1)).backward()
    assert head.thresholds.grad is None and head.classifier.weight.grad is not None  # no optimizer step moves it


# --- contrastive ---------------------------------------------------------------------------------


def test_contrastive_heads_are_normalised_and_named_for_federation():
    heads = ContrastiveHeads(image_dim=8, text_dim=6, out_dim=4)
    out = heads(torch.randn(3, 8), torch.randn(3, 6))
    assert set(out) == {"generic_image", "generic_text", "client_image", "client_text"}
    assert all(torch.allclose(v.norm(dim=-1), torch.ones(3)) and v.shape == (3, 4) for v in out.values())
    assert all(name.split(".")[0] in ("generic", "client") for name, _ in heads.named_parameters())


def test_info_nce_prefers_matched_pairs():
    a = F.normalize(torch.randn(8, 16), dim=-1)
    b = F.normalize(a + 0.1 * torch.randn(8, 16), dim=-1)
    assert info_nce(a, b, 0.1) < info_nce(a, b[torch.roll(torch.arange(8), 1)], 0.1)


def test_prototype_nce_is_zero_without_pairs_and_falls_as_features_reach_their_prototype():
    prototypes = F.normalize(torch.randn(14, 16), dim=-1)
    available = torch.ones(14, dtype=torch.bool)
    available[3] = False
    features = F.normalize(torch.randn(4, 16), dim=-1).requires_grad_()
    none = prototype_nce(features, torch.zeros(4, 14, dtype=torch.bool), prototypes, available, 0.1)
    none.backward()
    assert none.item() == 0 and torch.equal(features.grad, torch.zeros(4, 16))

    positives = torch.zeros(4, 14, dtype=torch.bool)
    positives[torch.arange(4), torch.tensor([0, 1, 2, 3])] = True  # class 3 is unavailable: skipped
    start = features.detach()
    losses = [
        prototype_nce(
            F.normalize((1 - t) * start + t * prototypes[:4], dim=-1), positives, prototypes, available, 0.1
        ).item()
        for t in (0.0, 0.5, 1.0)
    ]
    assert losses[0] > losses[1] > losses[2]


def test_prototype_bank_merge_equals_the_bank_of_the_pooled_data():
    features, positives = torch.randn(10, 16), torch.rand(10, 14) < 0.3
    positives[:, 5] = False
    whole, first, second = PrototypeBank(14, 16), PrototypeBank(14, 16), PrototypeBank(14, 16)
    whole.add(features, positives)
    first.add(features[:6], positives[:6])
    second.add(features[6:], positives[6:])
    first.merge(PrototypeBank.from_state(second.state()))
    assert torch.equal(first.counts, whole.counts) and torch.allclose(first.sums, whole.sums, atol=1e-6)
    prototypes, available = first.means()
    assert available.tolist() == (whole.counts > 0).tolist() and not available[5]
    assert torch.allclose(prototypes[available].norm(dim=-1), torch.ones(int(available.sum())))
    assert torch.equal(prototypes[5], torch.zeros(16))


@pytest.mark.parametrize(
    "state, message",
    [
        ({"sums": torch.zeros(14, 4)}, "exactly the keys"),
        ({"sums": torch.zeros(14, 4), "counts": torch.zeros(13)}, r"\[C, d\]"),
        ({"sums": torch.full((14, 4), float("nan")), "counts": torch.ones(14)}, "finite"),
        ({"sums": torch.zeros(14, 4), "counts": -torch.ones(14)}, "non-negative"),
        ({"sums": torch.full((14, 4), 5.0), "counts": np.ones(14)}, "exceed"),
        ({"sums": [["a"]], "counts": [1]}, "numeric"),
    ],
)
def test_prototype_bank_rejects_bad_state(state, message):
    with pytest.raises(ValueError, match=message):
        PrototypeBank.from_state(state)
