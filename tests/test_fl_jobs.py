"""The FLARE jobs end to end in the simulator (2 sites x 2 rounds on the tiny benchmark), and export."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import psutil
import pytest
from safetensors.torch import load_file

from conftest import REPO
from fedmrg.fl.messages import state_digest
from fedmrg.fl.packaging import COMPONENT_CLASSES
from fedmrg.fl.results import RESULTS_FILE

pytestmark = pytest.mark.slow

LOCAL_MARKERS = ("specialized", "contrastive.client")  # the parameters that must never leave a site
SITES = ("site-1", "site-2")


def job_command(job: str, bench: Path, llm: Path, *extra: str) -> list[str]:
    return [
        sys.executable,
        str(REPO / "jobs" / job / "job.py"),
        "--data",
        str(bench),
        "--sites",
        "2",
        "--config",
        "tiny",
        "--base-llm",
        str(llm),
        *extra,
    ]


def job_env() -> dict[str, str]:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    env.pop("FEDMRG_SITE_SETTINGS", None)
    return env


def run_job(job: str, bench: Path, llm: Path, *extra: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        job_command(job, bench, llm, *extra), capture_output=True, text=True, env=job_env(), timeout=900
    )


def simulate(job, bench, llm, workspace) -> Path:
    done = run_job(job, bench, llm, "--workspace", str(workspace), "--test-limit", "4")
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return workspace


@pytest.fixture(scope="module")
def fedmrg_ws(tiny_bench, tiny_base_llm, tmp_path_factory):
    return simulate("fedmrg", tiny_bench, tiny_base_llm, tmp_path_factory.mktemp("fedmrg") / "ws")


@pytest.fixture(scope="module")
def fedavg_ws(quick_bench):
    """The FedAvg job as the benchmark runs it (its own config file, 2 rounds of 10 local steps)."""
    return quick_bench["work"] / "fedavg_lora" / "seed-0" / "workspace"


def results(ws: Path) -> dict:
    return json.loads((ws / RESULTS_FILE).read_text())


def test_results_record_every_round_and_final_scores_per_site(fedmrg_ws):
    data = results(fedmrg_ws)
    assert data["job"] == "fedmrg" and data["config"]["fl"]["rounds"] == 2
    assert [r["round"] for r in data["rounds"]] == [0, 1]
    for record in data["rounds"]:
        assert set(record["accepted"]) == set(SITES) and record["refused"] == {}
        for key in ("bytes_up", "bytes_down", "dense_bytes_up", "dense_bytes_down"):
            assert set(record[key]) == set(SITES) and all(n > 0 for n in record[key].values())
        for site in SITES:
            assert record["bytes_up"][site] * 3 < record["dense_bytes_up"][site]
            dense_down = record["dense_bytes_down"][site]
            if record["round"] == 0:  # every site built the initial model itself: it is named by its digest
                assert record["bytes_down"][site] < 4096
            else:  # the last round's change, compressed, with the prototypes and FLARE's framing, as measured
                assert 2 * record["bytes_down"][site] < dense_down
            assert {"val_loss", "train_loss", "train_lm_dual"} <= set(record["metrics"][site])
        # every site trained from the server's global model, bit for bit
        assert record["site_digests"] == {site: record["global_digest"] for site in SITES}
    assert data["site_digests"] == {site: data["global_digest"] for site in SITES}  # and scored the final one
    for site in SITES:
        for label in ("generic", "personalized"):
            scores = data["final"][site][label]
            assert scores["n"] == 4 and "BLEU-4" in scores["nlg"] and "f1" in scores["ce"]["micro"]
    assert Path(data["global_model"]) == (fedmrg_ws / "global_model").resolve()
    assert (fedmrg_ws / "rounds.png").stat().st_size > 0


def test_the_federated_run_lowers_the_sites_report_loss_from_the_initial_models(fedmrg_ws):
    """Round 1's validation losses are those of the initial model; the final ones, of the model after
    both rounds. The report (language model) loss, not the total: the total gains a prototype term once
    the server has prototypes to send."""
    data = results(fedmrg_ws)
    initial = np.mean([data["rounds"][0]["metrics"][site]["val_lm_generic"] for site in SITES])
    final = np.mean([data["final_metrics"][site]["val_lm_generic"] for site in SITES])
    assert final < initial, (initial, final)


def test_the_global_model_holds_the_shared_parts_only_and_loads(fedmrg_ws, tiny_base_llm):
    from peft import PeftModel

    from fedmrg.model.llm import load_llm
    from fedmrg.model.mrg import MRGModel

    folder = fedmrg_ws / "global_model"
    assert sorted(p.name for p in (folder / "adapters").iterdir()) == ["generic"]
    model = MRGModel.load(folder, device="cpu")
    assert model.cfg.model.adapters == "single"  # a new site generates with the generic adapter
    site_adapter = fedmrg_ws / "sites" / "site-1" / "fedmrg" / "specialized"
    assert MRGModel.load(folder, device="cpu", site_adapter=site_adapter).cfg.model.adapters == "dual"
    llm, _, _ = load_llm(tiny_base_llm, load_in_4bit=False, device="cpu")
    PeftModel.from_pretrained(llm, str(folder / "adapters" / "generic"))  # Hugging Face users load it as is


def test_each_specialized_adapter_exists_only_at_its_own_site(fedmrg_ws):
    found = [p.parent for p in fedmrg_ws.rglob("adapter_config.json") if "specialized" in str(p.parent.name)]
    assert sorted({p.relative_to(fedmrg_ws).parts[:2] for p in found}) == [("sites", s) for s in SITES]
    state = json.loads((fedmrg_ws / "sites" / "site-2" / "fedmrg" / "site_state.json").read_text())
    assert state["site"] == "site-2" and state["rounds_done"] == 2


def test_no_message_the_server_received_held_a_local_parameter(fedmrg_ws):
    audits = sorted((fedmrg_ws / "audit").glob("round-*.json"))
    assert len(audits) == 2
    for path in audits:
        for site, entry in json.loads(path.read_text()).items():
            assert entry["params"] == ["fedmrg_update"]
            names = entry["payload_entries"] + entry["meta"] + entry["metrics"]
            assert entry["payload_entries"] and not [n for n in names if any(m in n for m in LOCAL_MARKERS)], site


def test_no_log_of_the_job_holds_a_patients_report(fedmrg_ws, tiny_bench):
    """Server and site logs (FLARE's and ours) may name files and counts, never a patient's report."""
    logs = [path for path in (fedmrg_ws / "fedmrg").rglob("*.txt")]
    assert any(path.parent.name == "site-1" for path in logs) and any(path.parent.name == "server" for path in logs)
    text = "\n".join(path.read_text(errors="replace") for path in logs).lower()
    for site in SITES:
        rows = json.loads((tiny_bench / site / "annotation.json").read_text())
        for row in (row for split in rows.values() for row in split):
            assert row["report"].lower() not in text, f"{site} {row['id']}: its report is in a log"


def kill_when(process: subprocess.Popen, ready, timeout: float = 600) -> None:
    """Kill the job (the simulator, its server and its sites: SIGKILL, no clean-up) as soon as ``ready()``."""
    waited = 0.0
    while not ready():
        assert process.poll() is None, "the job ended before the point it was to be killed at"
        assert waited < timeout, "the job never reached the point it was to be killed at"
        time.sleep(0.05)
        waited += 0.05
    parent = psutil.Process(process.pid)
    tree = [parent, *parent.children(recursive=True)]  # FLARE starts its job processes in their own sessions
    for member in tree:
        member.kill()
    psutil.wait_procs(tree, timeout=60)


def round_sent(log: Path, done: int, rounds: int) -> bool:
    """The server logged round ``done`` of ``rounds`` as finished, then sent the next round's train task."""
    text = log.read_text(errors="replace") if log.is_file() else ""
    _, found, after = text.partition(f"round {done}/{rounds}:")
    return bool(found) and "Sending task train" in after


def test_a_job_killed_mid_round_resumes_from_its_last_checkpoint_with_more_rounds(fedmrg_ws, tiny_bench, tiny_base_llm):
    """The finished 2-round job is resubmitted for 4 rounds and killed (server and sites at once) right
    after the server sent round 4's task, as a power cut would; run again, it resumes at round 4 from the
    server's checkpoint of round 3 (global model, its last change, residuals, prototypes, records) and
    each site's own state, and round 4 sends the checkpoint's model."""
    extra = ("--workspace", str(fedmrg_ws), "--rounds", "4", "--test-limit", "4")
    killed_log = fedmrg_ws.parent / "killed.log"
    with open(killed_log, "w") as out:
        process = subprocess.Popen(
            job_command("fedmrg", tiny_bench, tiny_base_llm, *extra),
            stdout=out,
            stderr=subprocess.STDOUT,
            env=job_env(),
        )
        kill_when(process, lambda: round_sent(killed_log, 3, 4))
    assert checkpoint(fedmrg_ws)["next_round"] == 3
    assert results(fedmrg_ws).get("in_progress") and (fedmrg_ws / "server_state" / "residual.safetensors").is_file()
    saved = state_digest(load_file(str(fedmrg_ws / "server_state" / "global.safetensors")))
    done = run_job("fedmrg", tiny_bench, tiny_base_llm, *extra)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    server_log = (fedmrg_ws / "fedmrg" / "server" / "log.txt").read_text()
    assert "at round 4" in server_log.split("resuming from", 1)[1].splitlines()[0]
    data = results(fedmrg_ws)
    assert [r["round"] for r in data["rounds"]] == [0, 1, 2, 3] and "in_progress" not in data
    assert data["rounds"][3]["global_digest"] == saved  # the resumed round sent the checkpoint's model
    assert all(r["merged"] and sorted(r["accepted"]) == list(SITES) for r in data["rounds"][2:])
    # the sites, restarted from their state folders, applied the checkpointed change and trained from the
    # server's model, not from the state they held when killed
    assert all(r["site_digests"] == {site: r["global_digest"] for site in SITES} for r in data["rounds"])
    assert set(data["final"]) == set(SITES)
    for site in SITES:
        state = json.loads((fedmrg_ws / "sites" / site / "fedmrg" / "site_state.json").read_text())
        assert state["rounds_done"] == 4  # the site kept its local state across the three runs


def checkpoint(ws: Path) -> dict:
    try:
        return json.loads((ws / "server_state" / "state.json").read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return {}


def test_the_fedavg_baseline_sends_dense_fp32_and_keeps_no_local_adapter(fedavg_ws):
    data = results(fedavg_ws)
    for record in data["rounds"]:
        for site in SITES:  # the dense values, plus FLARE's framing, names and the site's metrics
            for way in ("up", "down") if record["round"] else ("up",):  # round 0 down: the digest
                dense = record[f"dense_bytes_{way}"][site]
                assert dense < record[f"bytes_{way}"][site] < 1.05 * dense
    assert not list(fedavg_ws.rglob("specialized"))
    for site in SITES:
        assert data["final"][site]["generic"] == data["final"][site]["personalized"]


def test_the_baseline_with_flares_nf4_filters_moves_a_quarter_of_the_bytes_both_ways(
    tiny_bench, tiny_base_llm, tmp_path
):
    """FLARE's quantization filters on both directions of the dense baseline, on CPU-only hosts."""
    ws = tmp_path / "ws"
    done = run_job(
        "fedavg_lora",
        tiny_bench,
        tiny_base_llm,
        "--workspace",
        str(ws),
        "--test-limit",
        "2",
        "--rounds",
        "2",  # the first round's download is the initial model's digest; the second sends the state
        "--quantization",
        "normfloat4",
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    data = results(ws)
    assert all(sorted(record["accepted"]) == list(SITES) for record in data["rounds"])
    record = data["rounds"][1]
    for site in SITES:
        for way in ("up", "down"):
            assert 3 * record[f"bytes_{way}"][site] < record[f"dense_bytes_{way}"][site]
        assert data["final"][site]["generic"]["n"] == 2


def test_a_job_without_data_says_what_is_missing(tiny_base_llm, tmp_path):
    done = run_job("fedmrg", tmp_path / "nothing-here", tiny_base_llm, "--workspace", str(tmp_path / "ws"))
    assert done.returncode == 2 and "no folder for site-1, site-2" in done.stderr


def export_only(tmp_path: Path, *flags: str) -> Path:
    """job.py --export as a user types it: no --data (no simulator run is prepared)."""
    command = [
        sys.executable,
        str(REPO / "jobs" / "fedmrg" / "job.py"),
        "--config",
        "tiny",
        "--sites",
        "3",
        "--export",
        "--export-dir",
        str(tmp_path / "job"),
        *flags,
    ]
    done = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "NVFlare reserves" not in done.stderr
    return tmp_path / "job" / "fedmrg"


def test_export_writes_a_job_without_code_and_a_meta_for_the_scheduler(tmp_path):
    import fedmrg
    from fedmrg.versions import installed_versions

    job = export_only(tmp_path, "--gpus-per-site", "1", "--gpu-mem-gib", "20")
    text = "\n".join(p.read_text() for p in job.rglob("*.json"))
    for component in (
        "fedmrg.fl.controller.FedMRGController",
        "fedmrg.fl.aggregator.LowRankAggregator",
        "fedmrg.fl.executor.MRGExecutor",
    ):
        assert component in text and component in COMPONENT_CLASSES
    assert not list(job.rglob("*.py"))  # by default the fedmrg package is installed at the sites, not shipped
    meta = json.loads((job / "meta.json").read_text())
    assert meta["min_clients"] == 3
    assert meta["fedmrg_version"] == fedmrg.__version__ == installed_versions()["fedmrg_version"]
    assert meta["nvflare_version"] == installed_versions()["nvflare_version"]
    assert meta["resource_spec"] == {"@default": {"num_of_gpus": 1, "mem_per_gpu_in_GiB": 20.0}}
