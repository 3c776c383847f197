"""The demo base encoder: public renders, `make_base_encoder`, a frozen pretrained backbone, and how
the weights reach a job and a site."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from fedmrg.config import BASE_ENCODER_WEIGHTS, load_config
from fedmrg.data.annotation import read_annotation
from fedmrg.errors import ConfigError, DataError
from fedmrg.fl.site import SiteSettings, apply_site_settings
from fedmrg.model.base_encoder import make_base_encoder
from fedmrg.model.encoder import StudyEncoder, load_encoder_weights

SMALL_CNN = {
    "model.encoder.backbone": "cnn",
    "model.encoder.init_features": 8,
    "model.encoder.growth_rate": 4,
    "model.encoder.block_config": [1, 2],
}


def cnn_config(**more):
    return load_config("tiny", {**SMALL_CNN, **more})


@pytest.fixture(scope="module")
def base_encoder(tiny_bench, tmp_path_factory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("encoder") / "base-encoder"
    torch.manual_seed(0)
    return out, make_base_encoder(cnn_config(), tiny_bench, out, epochs=2, progress=False)


def test_public_renders_are_other_patients_of_the_public_reports_only(tiny_bench):
    public = read_annotation(tiny_bench / "public" / "annotation.json", check_images=True)
    rows = public.splits["train"]
    reports = {row["id"]: row["report"] for row in map(json.loads, (tiny_bench / "public" / "reports.jsonl").open())}
    assert len(rows) == 2 * len(reports)  # public_renders: 2 in the tiny config
    for row in rows:
        uid, render = row["id"].rsplit("-r", 1)
        assert render in ("0", "1") and row["report"] == reports[uid] and row["categories"]
    site_ids = {
        row["id"] for site in ("site-1", "site-2", "test-global") for rows_ in read_annotation(
            tiny_bench / site / "annotation.json", check_images=False
        ).splits.values() for row in rows_
    }  # fmt: skip
    assert not site_ids & set(reports)
    first = sorted((public.image_root / rows[0]["id"]).iterdir())[0].read_bytes()
    second = sorted((public.image_root / rows[1]["id"]).iterdir())[0].read_bytes()
    assert rows[0]["id"][:-3] == rows[1]["id"][:-3] and first != second  # the same report, another patient


def test_the_same_benchmark_gives_the_same_encoder_bytes(base_encoder, tiny_bench, tmp_path):
    """Order and augmentations follow the seed, so a rebuild in another checkout is the same encoder (a
    published benchmark run is reused only when the encoder's bytes match)."""
    out, _ = base_encoder
    torch.manual_seed(123)  # whatever the process drew before
    make_base_encoder(cnn_config(), tiny_bench, tmp_path / "again", epochs=2, progress=False)
    assert (tmp_path / "again" / BASE_ENCODER_WEIGHTS).read_bytes() == (out / BASE_ENCODER_WEIGHTS).read_bytes()


def test_the_base_encoder_is_saved_for_model_encoder_pretrained(base_encoder):
    out, summary = base_encoder
    assert json.loads((out / "base_encoder.json").read_text()) == summary
    assert summary["public_studies"] == 34 and summary["encoder"]["backbone"] == "cnn"
    assert set(summary["test_global_auc"]) == {"drawn", "report"} and summary["test_global_auc"]["drawn"]
    assert all(0 <= auc <= 1 for group in summary["test_global_auc"].values() for auc in group.values())
    cfg = cnn_config(**{"model.encoder.pretrained": str(out / BASE_ENCODER_WEIGHTS)})
    encoder = StudyEncoder(cfg.model.encoder, cfg.data.image_size, cfg.data.max_views)
    load_encoder_weights(encoder, cfg.model.encoder.pretrained)
    from safetensors.torch import load_file

    saved = load_file(str(out / BASE_ENCODER_WEIGHTS))
    assert all(torch.equal(encoder.backbone.state_dict()[key], value) for key, value in saved.items())


def test_a_benchmark_without_public_renders_is_named(tmp_path):
    (tmp_path / "public").mkdir()
    with pytest.raises(DataError, match="no rendered public studies.*--public-renders"):
        make_base_encoder(cnn_config(), tmp_path, tmp_path / "out", epochs=1, progress=False)


def test_a_frozen_backbone_is_not_trained_not_shared_and_comes_back_from_its_file(
    base_encoder, tiny_base_llm, tmp_path
):
    from fedmrg.model.layout import save_shared_model
    from fedmrg.model.mrg import MRGModel

    out, _ = base_encoder
    weights = str(out / BASE_ENCODER_WEIGHTS)
    cfg = cnn_config(**{"model.encoder.pretrained": weights, "model.encoder.freeze": True})
    model = MRGModel.build(cfg, base_llm=tiny_base_llm, device="cpu")
    model.train()
    assert not model.encoder.backbone.training  # BatchNorm statistics and dropout stay as pretrained
    assert not any(p.requires_grad for p in model.encoder.backbone.parameters())
    shared = model.shared_state_dict()
    assert "encoder.view_embedding" in shared and not any(k.startswith("encoder.cnn.") for k in shared)
    save_shared_model(tmp_path / "global", model.model_meta(), shared)
    loaded = MRGModel.load(tmp_path / "global", base_llm=tiny_base_llm, device="cpu")
    assert loaded.cfg.model.encoder.pretrained == weights
    for key, value in model.encoder.backbone.state_dict().items():
        assert torch.equal(loaded.encoder.backbone.state_dict()[key], value), key


def test_freeze_without_weights_and_a_trained_cnn_in_a_federation_are_refused():
    frozen = cnn_config(**{"model.encoder.freeze": True})
    with pytest.raises(ConfigError, match="model.encoder.freeze: needs pretrained weights"):
        StudyEncoder(frozen.model.encoder, frozen.data.image_size, frozen.data.max_views)
    from fedmrg.fl.recipe import FedMRGRecipe

    with pytest.raises(ConfigError, match="model.encoder.freeze: needs pretrained weights"):
        FedMRGRecipe(frozen, sites=2)  # refused when the job is built, before any site runs it
    with pytest.raises(ConfigError, match="cnn is federated only with freeze: true"):
        FedMRGRecipe(cnn_config(), sites=2)


def test_a_site_uses_its_own_copy_of_the_encoder_weights(tmp_path):
    job = cnn_config(**{"model.encoder.pretrained": "/job/path/model.safetensors", "model.encoder.freeze": True})
    cfg = apply_site_settings(job, SiteSettings(data_dir=str(tmp_path), base_encoder="/site/copy.safetensors"))
    assert cfg.model.encoder.pretrained == "/site/copy.safetensors"
    assert job.model.encoder.pretrained == "/job/path/model.safetensors"  # the job's config is left alone


def test_a_job_takes_a_base_encoder_folder_or_file(base_encoder, tmp_path):
    from fedmrg.fl.job_cli import job_arguments, job_config

    out, _ = base_encoder
    args = job_arguments("fedmrg", "", ["--base-encoder", str(out), "--config", "tiny"])
    assert args.base_encoder == str((out / BASE_ENCODER_WEIGHTS).resolve())
    assert job_config(args, tmp_path).model.encoder.pretrained == args.base_encoder
    with pytest.raises(ConfigError, match=f"no {BASE_ENCODER_WEIGHTS} in the folder"):
        job_arguments("fedmrg", "", ["--base-encoder", str(tmp_path)])


def test_a_saved_model_finds_its_frozen_encoder_where_it_moved(base_encoder, tiny_base_llm, tmp_path):
    import shutil

    from fedmrg.model.mrg import MRGModel

    out, _ = base_encoder
    moved = tmp_path / "first-home" / BASE_ENCODER_WEIGHTS
    moved.parent.mkdir()
    shutil.copy(out / BASE_ENCODER_WEIGHTS, moved)
    cfg = cnn_config(**{"model.encoder.pretrained": str(moved), "model.encoder.freeze": True})
    model = MRGModel.build(cfg, base_llm=tiny_base_llm, device="cpu")
    model.save(tmp_path / "run")
    shutil.move(moved.parent, tmp_path / "new-home")  # the weights moved (another host, another disk)
    with pytest.raises(ConfigError, match="first-home"):
        MRGModel.load(tmp_path / "run", base_llm=tiny_base_llm)
    loaded = MRGModel.load(tmp_path / "run", base_llm=tiny_base_llm, base_encoder=tmp_path / "new-home" / moved.name)
    assert loaded.cfg.model.encoder.pretrained == str(tmp_path / "new-home" / moved.name)
    trained = MRGModel.build(cnn_config(**{"model.encoder.backbone": "vit"}), base_llm=tiny_base_llm, device="cpu")
    trained.save(tmp_path / "vit-run")
    with pytest.raises(ConfigError, match="applies to a frozen or hf encoder only"):
        MRGModel.load(tmp_path / "vit-run", base_llm=tiny_base_llm, base_encoder=moved)


def test_base_encoder_names_the_weights_of_a_build_folder_and_keeps_a_hugging_face_folder(base_encoder, tmp_path):
    from fedmrg.config import encoder_weights

    out, _ = base_encoder
    assert encoder_weights(str(out)) == str(out / BASE_ENCODER_WEIGHTS)
    hf = tmp_path / "rad-dino"
    hf.mkdir()
    (hf / "config.json").write_text("{}")
    (hf / BASE_ENCODER_WEIGHTS).write_bytes(b"")
    assert encoder_weights(str(hf)) == str(hf)  # loaded whole by backbone: hf
    assert encoder_weights("/weights/encoder.pt") == "/weights/encoder.pt"
