"""Encoder backbones: the default MONAI ViT, a MONAI DenseNet, and Hugging Face vision models
from local folders (tiny random models written with ``save_pretrained``; nothing is downloaded)."""

from __future__ import annotations

import json

import pytest
import torch
import transformers
from monai.networks.nets import ViT
from safetensors.torch import save_file

from fedmrg.config import EncoderConfig, parse_config
from fedmrg.errors import ConfigError
from fedmrg.fl.codec import CodecSpec, as_dense, decode_checked, encode, round_delta
from fedmrg.model import encoder as encoder_module
from fedmrg.model.encoder import (
    HFBackbone,
    StudyEncoder,
    build_backbone,
    load_backbone_weights,
    load_encoder_weights,
)
from fedmrg.model.projector import VisualProjector

SMALL_CNN = EncoderConfig(backbone="cnn", init_features=16, growth_rate=8, block_config=[2, 4, 6, 4])
VIEW_MASK = torch.tensor([[True, True], [True, False]])

_VIT_LIKE = {"hidden_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2, "intermediate_size": 64}
_TOWER = {**_VIT_LIKE, "image_size": 32, "patch_size": 8}
_TEXT = {**_VIT_LIKE, "vocab_size": 64, "max_position_embeddings": 16}


def _tiny(family: str):
    """A tiny random model of ``family`` at 32 px (8 px patches: a 4 x 4 grid, Swin: 4 x 4 after one merge)."""
    if family == "vit":
        return transformers.ViTModel(transformers.ViTConfig(**_TOWER), add_pooling_layer=False)
    if family == "swin":
        config = transformers.SwinConfig(
            image_size=32, patch_size=4, embed_dim=16, depths=[1, 1], num_heads=[1, 2], window_size=4
        )
        return transformers.SwinModel(config)
    if family == "dinov2":
        return transformers.Dinov2Model(transformers.Dinov2Config(**_TOWER, mlp_ratio=2))
    if family == "dinov2_registers":
        config = transformers.Dinov2WithRegistersConfig(**_TOWER, mlp_ratio=2, num_register_tokens=2)
        return transformers.Dinov2WithRegistersModel(config)
    if family == "siglip":
        return transformers.SiglipVisionModel(transformers.SiglipVisionConfig(**_TOWER))
    if family == "clip":
        return transformers.CLIPVisionModel(transformers.CLIPVisionConfig(**_TOWER))
    if family == "siglip_full":
        return transformers.SiglipModel(transformers.SiglipConfig(text_config=_TEXT, vision_config=_TOWER))
    if family == "clip_full":
        config = transformers.CLIPConfig(text_config=_TEXT, vision_config=_TOWER, projection_dim=16)
        return transformers.CLIPModel(config)
    raise AssertionError(family)


def _hf_config(folder) -> EncoderConfig:
    return EncoderConfig(backbone="hf", pretrained=str(folder))


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.fixture(scope="module")
def hf_folders(tmp_path_factory):
    """Every family saved once (saving is the slow part)."""
    root = tmp_path_factory.mktemp("hf")
    folders = {}
    for family in ("vit", "swin", "dinov2", "dinov2_registers", "siglip", "clip", "siglip_full", "clip_full"):
        torch.manual_seed(0)
        _tiny(family).save_pretrained(root / family)
        folders[family] = root / family
    return folders


# --- Hugging Face -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "family", ["vit", "swin", "dinov2", "dinov2_registers", "siglip", "clip", "siglip_full", "clip_full"]
)
def test_hf_backbones_give_patch_tokens_through_the_study_encoder(hf_folders, family):
    encoder = StudyEncoder(_hf_config(hf_folders[family]), image_size=32, max_views=2).eval()
    assert encoder.grid == (4, 4) and encoder.out_dim == 32
    image = torch.rand(2, 2, 1, 32, 32)
    with torch.no_grad():
        out = encoder(image, VIEW_MASK)
    assert out.tokens.shape == (2, 2, 16, 32) and out.pooled.shape == (2, 32)
    assert torch.equal(out.tokens[1, 1], torch.zeros(16, 32))
    assert all(name.startswith("hf.model.") or name == "view_embedding" for name, _ in encoder.named_parameters())
    # The tokens feed the projector unchanged.
    embeds, mask = VisualProjector(32, 24, encoder.grid, 4)(out.tokens, out.view_mask)
    assert embeds.shape == (2, 8, 24) and mask.tolist() == [[True] * 8, [True] * 4 + [False] * 4]


def test_hf_patch_tokens_drop_cls_and_register_tokens(hf_folders):
    backbone = build_backbone(_hf_config(hf_folders["dinov2_registers"]), 32).eval()
    image = torch.rand(3, 1, 32, 32)
    with torch.no_grad():
        hidden = backbone.model(pixel_values=(image.expand(-1, 3, -1, -1) - backbone.mean) / backbone.std)
        tokens = backbone(image)
    assert backbone.skip == 3 and hidden.last_hidden_state.shape[1] == 19
    assert torch.equal(tokens, hidden.last_hidden_state[:, 3:])
    assert torch.allclose(backbone.mean.flatten(), torch.tensor([0.485, 0.456, 0.406]))  # DINOv2: ImageNet's


def test_hf_dual_models_use_the_vision_tower_with_the_vision_only_keys(hf_folders):
    tower = build_backbone(_hf_config(hf_folders["siglip_full"]), 32)
    alone = build_backbone(_hf_config(hf_folders["siglip"]), 32)
    assert isinstance(tower.model, transformers.SiglipVisionModel)
    assert set(tower.state_dict()) == set(alone.state_dict())
    assert not any(name.startswith("head.") for name in tower.model.state_dict())  # the unused pooling head
    clip = build_backbone(_hf_config(hf_folders["clip_full"]), 32)
    assert isinstance(clip.model, transformers.CLIPVisionModel)
    assert not any(p.requires_grad for p in clip.model.post_layernorm.parameters())  # CLS only


def test_hf_normalisation_comes_from_the_preprocessor_config(tmp_path, hf_folders):
    folder = tmp_path / "rad-dino-like"
    _tiny("dinov2").save_pretrained(folder)
    (folder / "preprocessor_config.json").write_text(
        json.dumps({"image_mean": [0.53, 0.53, 0.53], "image_std": [0.26, 0.26, 0.26]})
    )
    backbone = build_backbone(_hf_config(folder), 32)
    assert torch.allclose(backbone.mean.flatten(), torch.tensor([0.53] * 3))
    assert torch.allclose(backbone.std.flatten(), torch.tensor([0.26] * 3))
    siglip = build_backbone(_hf_config(hf_folders["siglip"]), 32)  # no preprocessor file: the family's 0.5
    assert torch.equal(siglip.mean.flatten(), torch.tensor([0.5] * 3))


@pytest.mark.parametrize("family", ["vit", "dinov2", "siglip", "clip", "swin"])
def test_hf_other_image_size_interpolates_the_position_embeddings(hf_folders, family):
    backbone = build_backbone(_hf_config(hf_folders[family]), 48).eval()
    assert backbone.grid == (6, 6)
    with torch.no_grad():
        assert backbone(torch.rand(2, 1, 48, 48)).shape == (2, 36, 32)


def test_hf_size_the_model_cannot_take_names_the_image_size(hf_folders, monkeypatch):
    monkeypatch.setattr(encoder_module, "_needs_interpolation", lambda *args: False)
    with pytest.raises(ConfigError, match=r"model\.encoder\.pretrained: .*cannot encode 48 x 48.*data\.image_size: 32"):
        build_backbone(_hf_config(hf_folders["vit"]), 48)


@pytest.mark.parametrize("where", ["microsoft/rad-dino", "missing-folder"])
def test_hf_needs_an_existing_local_folder(tmp_path, where, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ConfigError, match=r"model\.encoder\.pretrained: .* must be given a local folder"):
        build_backbone(_hf_config(where), 32)


def test_hf_folder_errors(tmp_path, hf_folders):
    with pytest.raises(ConfigError, match="has no config.json"):
        build_backbone(_hf_config(tmp_path), 32)
    bert = tmp_path / "bert"
    bert.mkdir()
    (bert / "config.json").write_text(json.dumps({"model_type": "bert"}))
    with pytest.raises(ConfigError, match="holds a 'bert' model; backbone 'hf' supports"):
        build_backbone(_hf_config(bert), 32)
    empty = tmp_path / "no-weights"
    empty.mkdir()
    (empty / "config.json").write_text((hf_folders["vit"] / "config.json").read_text())
    with pytest.raises(ConfigError, match=r"no-weights: cannot load the ViTModel"):
        build_backbone(_hf_config(empty), 32)
    with pytest.raises(ConfigError, match=r"model\.encoder\.pretrained: backbone 'hf' needs a local"):
        parse_config({"model": {"encoder": {"backbone": "hf"}}})


def test_load_encoder_weights_with_the_hf_folder_keeps_the_folder_weights(hf_folders):
    encoder = StudyEncoder(_hf_config(hf_folders["vit"]), 32, 2)
    before = {k: v.clone() for k, v in encoder.state_dict().items()}
    load_encoder_weights(encoder, hf_folders["vit"])  # what MRGModel does with model.encoder.pretrained
    assert all(torch.equal(before[k], v) for k, v in encoder.state_dict().items())
    assert isinstance(encoder.backbone, HFBackbone)


# --- cnn (MONAI DenseNet) -------------------------------------------------------------------------


@pytest.mark.parametrize(("size", "grid"), [(64, (2, 2)), (128, (4, 4))])
def test_cnn_shapes_for_two_image_sizes(size, grid):
    encoder = StudyEncoder(SMALL_CNN, image_size=size, max_views=2).eval()
    assert encoder.grid == grid
    with torch.no_grad():
        out = encoder(torch.rand(2, 2, 1, size, size), VIEW_MASK)
    assert out.tokens.shape == (2, 2, grid[0] * grid[1], encoder.out_dim)
    assert torch.equal(out.tokens[1, 1], torch.zeros(grid[0] * grid[1], encoder.out_dim))
    assert bool((out.tokens[0] >= 0).all())  # after the ReLU (the view embedding starts at zero)


def test_cnn_out_dim_is_the_last_feature_maps_channels():
    # DenseNet: init + growth * layers per block, halved at each transition.
    channels = 16
    for index, layers in enumerate(SMALL_CNN.block_config):
        channels += 8 * layers
        if index < len(SMALL_CNN.block_config) - 1:
            channels //= 2
    assert build_backbone(SMALL_CNN, 64).out_dim == channels == 68
    default = build_backbone(EncoderConfig(backbone="cnn"), 224)  # DenseNet-121
    assert default.out_dim == 1024 and default.grid == (7, 7)


def test_cnn_too_small_an_image_is_a_config_error():
    with pytest.raises(ConfigError, match=r"data\.image_size: 16 is too small for the cnn backbone"):
        build_backbone(SMALL_CNN, 16)


def _trained_cnn(size: int = 64):
    """A DenseNet whose BatchNorm statistics moved away from their fresh values."""
    backbone = build_backbone(SMALL_CNN, size).train()
    with torch.no_grad():
        backbone(torch.rand(4, 1, size, size) * 3 + 1)
    return backbone.eval()


def test_cnn_state_dict_round_trip_reproduces_the_outputs(tmp_path):
    source = _trained_cnn()
    path = tmp_path / "cnn.safetensors"
    save_file(source.state_dict(), str(path))  # what the base-encoder command writes
    image = torch.rand(3, 1, 64, 64)
    with torch.no_grad():
        expected = source(image)

    backbone = build_backbone(SMALL_CNN, 64)
    load_backbone_weights(backbone, path)
    with torch.no_grad():
        assert torch.equal(backbone.eval()(image), expected)

    cfg = EncoderConfig(**{**SMALL_CNN.__dict__, "pretrained": str(path)})
    encoder = StudyEncoder(cfg, 64, 2)
    load_encoder_weights(encoder, cfg.pretrained)  # what MRGModel does
    encoder.eval()
    with torch.no_grad():
        out = encoder(image[:, None], torch.ones(3, 1, dtype=torch.bool))
    assert torch.equal(out.tokens[:, 0], expected)
    assert torch.equal(encoder.cnn.features.norm5.running_var, source.features.norm5.running_var)


def test_cnn_weights_missing_batchnorm_statistics_are_named(tmp_path):
    state = {k: v for k, v in _trained_cnn().state_dict().items() if not k.endswith("running_var")}
    torch.save(state, tmp_path / "partial.pt")
    encoder = StudyEncoder(SMALL_CNN, 64, 2)
    with pytest.raises(
        ConfigError, match=r"partial.pt: \d+ DenseNet weights are not in the file: cnn\.features\.norm0"
    ):
        load_encoder_weights(encoder, tmp_path / "partial.pt")
    # A step counter alone may be absent (older checkpoints).
    state = {k: v for k, v in _trained_cnn().state_dict().items() if not k.endswith("num_batches_tracked")}
    torch.save({f"module.{k}": v for k, v in state.items()}, tmp_path / "old.pt")
    load_encoder_weights(encoder, tmp_path / "old.pt")


def test_cnn_weights_of_another_size_are_a_shape_error(tmp_path):
    save_file(
        build_backbone(
            EncoderConfig(backbone="cnn", init_features=8, growth_rate=8, block_config=[2, 4, 6, 4]), 64
        ).state_dict(),
        str(tmp_path / "w.safetensors"),
    )
    with pytest.raises(ConfigError, match=r"w.safetensors: \d+ weights have the wrong shape"):
        load_encoder_weights(StudyEncoder(SMALL_CNN, 64, 2), tmp_path / "w.safetensors")


def test_cnn_update_goes_through_the_codec():
    before = {f"encoder.cnn.{k}": v.detach().clone() for k, v in build_backbone(SMALL_CNN, 64).named_parameters()}
    after = {k: v + 0.01 * torch.randn_like(v) for k, v in before.items()}
    delta = round_delta(before, after)
    payload, left_out = encode(delta, CodecSpec(rank=4, dense_below=256))
    decoded = decode_checked(payload, {k: tuple(v.shape) for k, v in before.items()}, max_rank=4)
    for name, value in delta.items():
        assert torch.allclose(as_dense(decoded[name]) + as_dense(left_out[name]), value, atol=1e-5)
    conv = "encoder.cnn.features.denseblock1.denselayer1.layers.conv2.weight"  # [8, 32, 3, 3]
    assert decoded[conv].shape == before[conv].shape


# --- default: the MONAI ViT -----------------------------------------------------------------------


def test_default_config_builds_the_monai_vit_with_its_parameter_names():
    cfg = EncoderConfig()
    assert cfg.backbone == "vit"
    encoder = StudyEncoder(cfg, image_size=224, max_views=2)
    reference = ViT(
        in_channels=1,
        img_size=(224, 224),
        patch_size=(16, 16),
        hidden_size=256,
        mlp_dim=512,
        num_layers=4,
        num_heads=4,
        proj_type="conv",
        classification=False,
        spatial_dims=2,
    )
    assert list(encoder.state_dict()) == ["view_embedding"] + [f"vit.{k}" for k in reference.state_dict()]
    frozen = {name for name, p in encoder.named_parameters() if not p.requires_grad}
    assert frozen and all("norm_cross_attn" in name for name in frozen)  # unused, as before
    assert isinstance(encoder.vit, ViT) and encoder.grid == (14, 14) and encoder.out_dim == 256
    encoder.vit.load_state_dict(reference.state_dict())  # an old checkpoint's ViT
    image = torch.rand(1, 1, 1, 224, 224)
    with torch.no_grad():
        assert torch.equal(
            encoder.eval()(image, torch.ones(1, 1, dtype=torch.bool)).tokens[0, 0], reference.eval()(image[0])[0][0]
        )


def test_hf_folder_missing_a_weight_is_named(tmp_path, hf_folders):
    from safetensors.torch import load_file

    folder = tmp_path / "partial"
    _tiny("dinov2").save_pretrained(folder)
    state = load_file(str(folder / "model.safetensors"))
    dropped = next(key for key in state if key.endswith("mlp.fc2.weight"))
    save_file({k: v for k, v in state.items() if k != dropped}, str(folder / "model.safetensors"), {"format": "pt"})
    with pytest.raises(ConfigError, match=r"partial: 1 weights are not in the folder \(they would be random\)"):
        build_backbone(_hf_config(folder), 32)
