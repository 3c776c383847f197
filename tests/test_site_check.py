"""`fedmrg site-check`: what a hospital checks before joining; each problem is a FAIL that names its cause."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
import yaml

from fedmrg.cli import main
from fedmrg.config import load_config
from fedmrg.fl.site import SETTINGS_ENV, SETTINGS_FILE
from fedmrg.ops.site_check import (
    FAIL,
    PASS,
    SKIP,
    WARN,
    CheckRequest,
    check_allow_list,
    check_kit,
    read_job,
    run_site_check,
)

HUB_ID = "meta-llama/Llama-3.2-1B"


@pytest.fixture(autouse=True)
def no_settings_from_the_environment(monkeypatch):
    monkeypatch.delenv(SETTINGS_ENV, raising=False)


def make_kit(root: Path, settings: dict, site: str = "site-1", allow: list[str] | None = None) -> Path:
    """A site kit as FLARE 2.9 provisions it (startup/ with fed_client.json and certificates, local/)."""
    from fedmrg.fl.packaging import COMPONENT_CLASSES

    kit = root / site
    (kit / "startup").mkdir(parents=True)
    (kit / "local").mkdir()
    client = {
        "format_version": 2,
        "servers": [
            {"name": "project", "service": {"target": "fl.example.org:8002", "scheme": "grpc"}, "identity": "server"}
        ],
        "client": {
            "ssl_private_key": "client.key",
            "ssl_cert": "client.crt",
            "ssl_root_cert": "rootCA.pem",
            "fqsn": site,
            "is_leaf": True,
            "connection_security": "mtls",
        },
    }
    (kit / "startup" / "fed_client.json").write_text(json.dumps(client))
    for name in ("client.key", "client.crt", "rootCA.pem", "start.sh"):
        (kit / "startup" / name).write_text("x")
    allowed = ["nvflare."] + list(COMPONENT_CLASSES) if allow is None else allow
    (kit / "local" / "resources.json").write_text(json.dumps({"format_version": 2, "class_allow_list": allowed}))
    (kit / "local" / SETTINGS_FILE).write_text(yaml.safe_dump(settings))
    return kit


@pytest.fixture
def good_settings(tiny_bench, tiny_base_llm, tmp_path) -> dict:
    return {
        "data_dir": str(tiny_bench / "site-1"),
        "base_llm": str(tiny_base_llm),
        "device": "cpu",
        "state_dir": str(tmp_path / "state"),
    }


@pytest.fixture
def site_copy(tiny_bench, tmp_path) -> Path:
    """A copy of the tiny benchmark's site-1 that a test may damage."""
    return Path(shutil.copytree(tiny_bench / "site-1", tmp_path / "data"))


def by_name(report) -> dict:
    return {r.name: r for r in report.results}


def export_job(tmp_path: Path, overrides: dict | None = None, meta: dict | None = None) -> Path:
    """An exported FedMRG job (the recipe's own export), with meta.json keys replaced by ``meta``."""
    from fedmrg.fl.recipe import FedMRGRecipe

    FedMRGRecipe(load_config("tiny", overrides), name="fedmrg", sites=2).export(job_dir=str(tmp_path / "jobs"))
    folder = tmp_path / "jobs" / "fedmrg"
    meta_path = folder / "meta.json"
    meta_path.write_text(json.dumps(json.loads(meta_path.read_text()) | (meta or {})))
    return folder


# ---------------------------------------------------------------------------------- a good site
def test_a_good_site_passes_every_check(tmp_path, good_settings, tiny_bench):
    kit = make_kit(tmp_path, good_settings)
    report = run_site_check(CheckRequest(kit=kit, config="tiny"))
    checks = by_name(report)
    assert {r.status for r in report.results} == {PASS}, [r for r in report.results if r.status != PASS]
    assert report.site == "site-1" and not report.failed
    annotation = json.loads((tiny_bench / "site-1" / "annotation.json").read_text())
    assert checks["splits"].detail == ", ".join(f"{s} {len(annotation[s])}" for s in ("train", "val", "test"))
    assert checks["settings"].where == str(kit / "local" / SETTINGS_FILE)
    assert "64 px" in checks["images"].detail and "20 studies decoded" in checks["images"].detail
    assert f"{len(annotation['train'])} train reports labeled" in checks["labels"].detail
    for name in ("kit", "allow list", "base LLM", "device", "4-bit", "disk", "versions"):
        assert name in checks


def test_the_jobs_config_is_the_one_checked(tmp_path, good_settings):
    kit = make_kit(tmp_path, good_settings)
    job = export_job(tmp_path, {"data.image_size": 32}, meta={"fedmrg_version": "0.1.0", "nvflare_version": None})
    report = run_site_check(CheckRequest(kit=kit, job=job.parent))  # the export folder holding one job
    checks = by_name(report)
    assert report.config_source.endswith("config_fed_client.json")
    assert "32 px" in checks["images"].detail
    assert checks["allow list"].status == PASS and "job's client classes" in checks["allow list"].detail
    assert checks["job nvflare_version"].status == WARN and "not recorded" in checks["job nvflare_version"].detail
    assert not report.failed


# ---------------------------------------------------------------------------- each failure named
def test_a_missing_data_folder_fails_the_settings(tmp_path, good_settings):
    kit = make_kit(tmp_path, good_settings | {"data_dir": str(tmp_path / "no-such-data")})
    checks = by_name(run_site_check(CheckRequest(kit=kit, config="tiny")))
    assert checks["settings"].status == FAIL
    assert f"data_dir: {tmp_path / 'no-such-data'} is not a folder" in checks["settings"].detail
    assert str(kit / "local" / SETTINGS_FILE) in checks["settings"].detail
    assert checks["data folder"].status == SKIP and checks["base LLM"].status == SKIP


def test_a_broken_annotation_file_fails(tmp_path, good_settings, site_copy):
    (site_copy / "annotation.json").write_text('{"train": [')
    kit = make_kit(tmp_path, good_settings | {"data_dir": str(site_copy)})
    checks = by_name(run_site_check(CheckRequest(kit=kit, config="tiny")))
    assert checks["annotation"].status == FAIL and "not valid JSON" in checks["annotation"].detail
    assert checks["annotation"].where == str(site_copy / "annotation.json")
    assert checks["splits"].status == SKIP


def test_a_missing_image_fails_naming_the_file(tmp_path, good_settings, site_copy):
    row = json.loads((site_copy / "annotation.json").read_text())["val"][0]
    gone = site_copy / "images" / row["image_path"][0]
    gone.unlink()
    kit = make_kit(tmp_path, good_settings | {"data_dir": str(site_copy)})
    checks = by_name(run_site_check(CheckRequest(kit=kit, config="tiny")))
    assert checks["image files"].status == FAIL
    assert "1 of " in checks["image files"].detail and str(gone) in checks["image files"].detail
    assert checks["images"].status == PASS  # the other studies still decode


def test_empty_reports_fail_the_labels(tmp_path, good_settings, site_copy):
    annotation = json.loads((site_copy / "annotation.json").read_text())
    annotation["train"] = [row | {"report": "  "} for row in annotation["train"]]
    (site_copy / "annotation.json").write_text(json.dumps(annotation))
    kit = make_kit(tmp_path, good_settings | {"data_dir": str(site_copy)})
    checks = by_name(run_site_check(CheckRequest(kit=kit, config="tiny")))
    assert checks["labels"].status == FAIL and "empty after cleaning" in checks["labels"].detail


def test_a_hub_id_as_base_llm_fails(tmp_path, good_settings):
    kit = make_kit(tmp_path, good_settings | {"base_llm": HUB_ID})
    checks = by_name(run_site_check(CheckRequest(kit=kit, config="tiny")))
    assert checks["base LLM"].status == FAIL
    assert HUB_ID in checks["base LLM"].detail and "Hugging Face Hub id" in checks["base LLM"].detail
    assert checks["base LLM"].where == f"{kit / 'local' / SETTINGS_FILE}: base_llm"


def test_a_job_built_with_another_fedmrg_fails(tmp_path, good_settings):
    kit = make_kit(tmp_path, good_settings)
    job = export_job(tmp_path, meta={"fedmrg_version": "0.0.9"})
    report = run_site_check(CheckRequest(kit=kit, job=job))
    check = by_name(report)["job fedmrg_version"]
    assert report.failed and check.status == FAIL
    assert "built with 0.0.9" in check.detail and check.where == f"{job / 'meta.json'}: fedmrg_version"


def test_a_job_that_ships_another_fedmrg_still_fails(tmp_path, good_settings):
    """FLARE appends the job's custom/ folder to the import path: the installed fedmrg runs, and is checked."""
    from fedmrg.fl.packaging import ship_package

    kit = make_kit(tmp_path, good_settings, allow=["nvflare."])
    job = export_job(tmp_path, meta={"fedmrg_version": "0.0.9"})
    ship_package(job)
    checks = by_name(run_site_check(CheckRequest(kit=kit, job=job)))
    check = checks["job fedmrg_version"]
    assert check.status == FAIL and "built with 0.0.9" in check.detail and "the installed one runs" in check.detail
    assert checks["allow list"].status == PASS and "byoc" in checks["allow list"].detail


def test_cuda_on_a_machine_without_it_fails(tmp_path, good_settings, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    settings = tmp_path / "settings.yaml"
    settings.write_text(yaml.safe_dump(good_settings | {"device": "cuda"}))
    checks = by_name(run_site_check(CheckRequest(settings_file=settings, config="tiny")))
    assert checks["settings"].status == PASS and "kit" not in checks
    assert checks["device"].status == FAIL and "CUDA is not available" in checks["device"].detail
    assert checks["device"].where == f"{settings}: device" and checks["4-bit"].status == SKIP


def test_a_missing_settings_file_fails_naming_it(tmp_path):
    missing = tmp_path / "no-such-settings.yaml"
    check = by_name(run_site_check(CheckRequest(settings_file=missing, config="tiny")))["settings"]
    assert check.status == FAIL and check.where == str(missing)
    assert f"no FedMRG site settings found ({missing})" in check.detail


def test_too_little_disk_fails(tmp_path, good_settings):
    kit = make_kit(tmp_path, good_settings)
    check = by_name(run_site_check(CheckRequest(kit=kit, config="tiny", min_free_gib=1e9)))["disk"]
    assert check.status == FAIL and "below the 1e+09 GiB" in check.detail


# ------------------------------------------------------------------------------------ the kit
def test_the_kits_name_must_be_the_site(tmp_path, good_settings):
    kit = make_kit(tmp_path, good_settings)
    result, name = check_kit(kit, "site-2")
    assert (result.status, name) == (FAIL, "site-1") and "--site says 'site-2'" in result.detail
    (kit / "startup" / "client.key").unlink()
    result, _ = check_kit(kit, None)
    assert result.status == FAIL and "ssl_private_key client.key" in result.detail


@pytest.mark.parametrize(
    "servers, problem",
    [
        ({"name": "project"}, "servers must be a list of server objects, not dict"),
        (["fl.example.org:8002"], "servers [0] must be a server object, not str"),
        ([{"service": "fl.example.org:8002"}], "servers [0].service must be an object, not str"),
    ],
)
def test_unreadable_servers_fail_the_kit(tmp_path, good_settings, servers, problem):
    kit = make_kit(tmp_path, good_settings)
    client_json = kit / "startup" / "fed_client.json"
    client_json.write_text(json.dumps(json.loads(client_json.read_text()) | {"servers": servers}))
    result, name = check_kit(kit, None)
    assert (result.status, name) == (FAIL, "site-1") and problem in result.detail
    assert result.where == f"{client_json}: servers"


def test_an_allow_list_without_fedmrg_warns(tmp_path, good_settings):
    kit = make_kit(tmp_path, good_settings, allow=["nvflare."])
    result = check_allow_list(kit / "local", None)
    assert result.status == WARN and "fedmrg.fl.executor.MRGExecutor" in result.detail and "byoc" in result.detail
    (kit / "local" / "resources.json").write_text(json.dumps({"class_allow_list": ["fedmrg."]}))
    assert check_allow_list(kit / "local", None).status == PASS  # a package prefix admits its classes


def test_an_allow_list_refusing_a_job_without_code_fails(tmp_path, good_settings):
    kit = make_kit(tmp_path, good_settings, allow=["nvflare."])
    (kit / "local" / "resources.json").rename(kit / "local" / "resources.json.default")  # as provisioned
    result = check_allow_list(kit / "local", read_job(export_job(tmp_path), "site-1"))
    assert result.status == FAIL and "FLARE refuses this job here" in result.detail
    assert "fedmrg.fl.executor.MRGExecutor" in result.detail
    assert result.where == f"{kit / 'local' / 'resources.json.default'}: class_allow_list"


# ------------------------------------------------------------------------------------ the CLI
def test_exit_status_and_json_output(tmp_path, good_settings, capsys):
    kit = make_kit(tmp_path, good_settings)
    out = tmp_path / "check.json"
    assert main(["site-check", "--kit", str(kit), "--config", "tiny", "--json", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "ready to join" in printed and "PASS  settings" in printed
    data = json.loads(out.read_text())
    assert data["ok"] and data["site"] == "site-1" and data["counts"]["FAIL"] == 0
    assert {c["name"] for c in data["checks"]} >= {"settings", "images", "labels", "base LLM"}

    (kit / "local" / SETTINGS_FILE).write_text(yaml.safe_dump(good_settings | {"base_llm": HUB_ID}))
    assert main(["site-check", "--kit", str(kit), "--config", "tiny", "--json", str(out)]) == 1
    assert "NOT READY" in capsys.readouterr().out
    failed = [c for c in json.loads(out.read_text())["checks"] if c["status"] == FAIL]
    assert [c["name"] for c in failed] == ["base LLM"]


def test_unusable_input_is_exit_2(tmp_path, good_settings, capsys):
    kit = make_kit(tmp_path, good_settings)
    for argv in (
        ["--job", str(tmp_path), "--config", "tiny"],
        ["--job", str(tmp_path / "no-job")],
        ["--config", "no-such-config"],
    ):
        assert main(["site-check", "--kit", str(kit), *argv]) == 2
        err = capsys.readouterr().err
        assert err.startswith("fedmrg: error: ") and "Traceback" not in err


def test_executor_args_that_are_not_an_object_are_exit_2(tmp_path, good_settings, capsys):
    kit = make_kit(tmp_path, good_settings)
    job = export_job(tmp_path)
    client_config = job / "app" / "config" / "config_fed_client.json"
    client = json.loads(client_config.read_text())
    client["executors"][0]["executor"]["args"] = ["not", "an", "object"]
    client_config.write_text(json.dumps(client))
    assert main(["site-check", "--kit", str(kit), "--job", str(job)]) == 2
    err = capsys.readouterr().err
    assert f"{client_config}: fedmrg.fl.executor.MRGExecutor: args must be an object, not list" in err
