"""A POC federation end to end (tiny data, tiny LLM, 2 sites, 1 round): prepared, started, jobs submitted
through the FLARE API, a hospital's policy enforced, the result downloaded, and everything stopped."""

from __future__ import annotations

import contextlib
import json
import os
import re
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import yaml

import fedmrg
from fedmrg.config import config_to_dict, load_config
from fedmrg.ops.poc import (
    FINISHED_OK,
    PROJECT_ADMIN,
    SERVER_PORTS,
    LogFollower,
    PocSystem,
    download_result,
    find_results,
    follow_job,
    port_is_free,
    processes_under,
    submit_and_follow,
)

REPO = Path(__file__).resolve().parents[1]
POLICIES = REPO / "provisioning"

pytestmark = pytest.mark.slow
OUTCOME_WAIT = "NVFLARE_CLIENT_OUTCOME_WAIT_TIMEOUT"


def export_job(
    out: Path, *flags: str, sites: int = 2, config: str = "tiny", rounds: int = 1, name: str = "fedmrg"
) -> Path:
    done = subprocess.run(
        [
            sys.executable,
            str(REPO / "jobs" / "fedmrg" / "job.py"),
            "--config",
            config,
            "--rounds",
            str(rounds),
            "--sites",
            str(sites),
            "--test-limit",
            "4",
            "--name",
            name,
            "--export",
            "--export-dir",
            str(out),
            *flags,
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    return out / name


def tolerant_config(root: Path) -> str:
    """The tiny config, with rounds that go on once one site answered (waiting 5 s for the other)."""
    cfg = load_config("tiny", {"fl.min_sites": 1, "fl.wait_after_min_sites": 5})
    path = root / "tolerant.yaml"
    path.write_text(yaml.safe_dump(config_to_dict(cfg), sort_keys=False), encoding="utf-8")
    return str(path)


def power_off_when(system: PocSystem, site: str, ready) -> threading.Thread:
    """In the background: once ``ready()``, kill every process of the site (its client, the job's
    trainer, FLARE's restart loop), as a power cut or a lost network would: the site just goes silent.
    (A trainer process that crashes alone is reported by its client, and FLARE 2.9 then fails the job.)"""

    def watch() -> None:
        deadline = time.monotonic() + 600
        while time.monotonic() < deadline and not ready():
            time.sleep(0.2)
        for proc in processes_under(system.kit(site)):
            proc.kill()

    thread = threading.Thread(target=watch, daemon=True)
    thread.start()
    return thread


def power_on(system: PocSystem, site: str, timeout: float = 120) -> None:
    """Start the site again and wait until the server has registered it (`poc start` returns earlier)."""
    server_log = system.kit("server") / "log.txt"
    joined = f"New client {site}@"
    before = server_log.read_text(encoding="utf-8").count(joined)
    system.nvflare("poc", "start", "-p", site, "--timeout", str(int(timeout)), timeout=timeout + 30)
    deadline = time.monotonic() + timeout
    while server_log.read_text(encoding="utf-8").count(joined) == before:
        assert time.monotonic() < deadline, f"{site} did not connect again within {timeout:.0f} s"
        time.sleep(0.5)


def next_round(system: PocSystem, job_name: str) -> int | None:
    """The server's checkpoint of a job, which lives in its workspace under the submitter and the job's name."""
    states = list((system.kit("server") / "fedmrg-state").glob(f"*/{job_name}/server_state/state.json"))
    try:
        return json.loads(states[0].read_text(encoding="utf-8"))["next_round"] if len(states) == 1 else None
    except (FileNotFoundError, json.JSONDecodeError, KeyError):
        return None


@contextlib.contextmanager
def restored_environment(name: str):
    try:
        yield
    finally:
        os.environ.pop(name, None)


@pytest.fixture(scope="module")
def poc_run(tiny_bench, tiny_base_llm, tmp_path_factory):
    """One POC system: site-1 with FLARE's default policies, site-2 with the hospital templates of
    provisioning/ (no job-supplied code, FedMRG classes allowed, privacy filter on every result).
    Two jobs: the package shipped in the job (byoc), then the same job without code. Then a job that
    tolerates one site of two (fl.min_sites 1): site-2 loses power in round 2; it comes back, and the
    job is resubmitted with a third round, which site-2 joins again."""
    if not all(port_is_free(port) for port in SERVER_PORTS):
        pytest.fail(f"POC ports {SERVER_PORTS} are in use before the test; stop the other FLARE system")
    root = tmp_path_factory.mktemp("poc")
    shipped, plain = export_job(root / "shipped", "--ship-code"), export_job(root / "plain")
    lines: list[str] = []
    system = PocSystem(root / "ws", ["site-1", "site-2"])
    # FLARE 2.9 ends a job only once every site reported its outcome, or after this many seconds
    # (default 900): a site that lost power never reports.
    os.environ[OUTCOME_WAIT] = "20"
    with system, restored_environment(OUTCOME_WAIT):
        system.prepare()
        system.wire_site("site-1", tiny_bench / "site-1", tiny_base_llm, policies=None)
        system.wire_site("site-2", tiny_bench / "site-2", tiny_base_llm, policies=POLICIES)
        system.start()
        refused = submit_and_follow(system, shipped, 300, root / "results", lines.append)
        completed = submit_and_follow(system, plain, 600, root / "results", lines.append)
        tolerant = tolerant_config(root)
        dropping, rejoining = (
            export_job(root / f"faults-{rounds}", config=tolerant, rounds=rounds, name="faults") for rounds in (2, 3)
        )
        power_cut = power_off_when(system, "site-2", lambda: next_round(system, "faults") == 1)
        dropped = submit_and_follow(system, dropping, 600, root / "results", lines.append)
        power_cut.join(timeout=5)
        power_on(system, "site-2")
        rejoined = submit_and_follow(system, rejoining, 600, root / "results", lines.append)
        running_before_stop = len(system.processes())
    return {
        "system": system,
        "refused": refused,
        "completed": completed,
        "lines": lines,
        "dropped": dropped,
        "rejoined": rejoined,
        "running_before_stop": running_before_stop,
    }


def test_a_site_without_byoc_refuses_a_job_that_carries_code(poc_run):
    outcome, system = poc_run["refused"], poc_run["system"]
    assert outcome.status == "FINISHED:FAILED_TO_RUN"
    server_log = (system.kit("server") / "log.txt").read_text(encoding="utf-8")
    refusal = next(line for line in server_log.splitlines() if outcome.job_id in line and "deploy failure" in line)
    assert "site-2: NVFLARE_ERROR: BYOC not permitted" in refusal
    assert "site-1: OK" in refusal  # FLARE's default policy lets the project admin bring code


def test_the_same_job_runs_on_the_preinstalled_package(poc_run):
    outcome = poc_run["completed"]
    assert outcome.completed, outcome.status
    run_dir = find_results(outcome.result_dir)
    results = json.loads((run_dir / "results.json").read_text(encoding="utf-8"))
    assert len(results["rounds"]) == 1
    assert sorted(results["rounds"][0]["accepted"]) == ["site-1", "site-2"]
    assert sorted(results["final"]) == ["site-1", "site-2"]
    assert (run_dir / "global_model" / "adapters" / "generic" / "adapter_config.json").is_file()
    assert any("round 1/1" in line for line in poc_run["lines"])  # progress followed from the server's log
    site_log = (poc_run["system"].kit("site-2") / outcome.job_id / "log.txt").read_text(encoding="utf-8")
    assert f"fedmrg {fedmrg.__version__} from {Path(fedmrg.__file__).parent}\n" in site_log  # the installed package
    # the privacy scope of provisioning/privacy.json was forced on every result site-2 sent
    assert "ResultGuard: result of task train checked" in site_log
    assert "ResultGuard: result of task validate checked" in site_log


def downloaded_results(outcome) -> dict:
    assert outcome.completed, outcome.status
    return json.loads((find_results(outcome.result_dir) / "results.json").read_text(encoding="utf-8"))


def test_a_site_that_drops_out_mid_round_does_not_stop_a_job_that_needs_one_site(poc_run):
    results = downloaded_results(poc_run["dropped"])
    first, second = results["rounds"]
    assert sorted(first["accepted"]) == ["site-1", "site-2"]
    assert second["accepted"] == ["site-1"] and second["merged"]  # site-2 went silent during round 2
    assert sorted(results["final"]) == ["site-1"]


def test_a_resubmitted_job_resumes_on_the_server_and_the_dropped_site_rejoins(poc_run):
    outcome = poc_run["rejoined"]
    results = downloaded_results(outcome)
    assert [r["round"] for r in results["rounds"]] == [0, 1, 2]  # rounds 1-2 from the server's checkpoint
    assert sorted(results["rounds"][2]["accepted"]) == ["site-1", "site-2"]
    assert sorted(results["final"]) == ["site-1", "site-2"]
    # site-2, killed in round 2, held the model of round 1: it asked for the whole state, site-1 applied the
    # change; both trained from the server's model and scored the final one, bit for bit
    third = results["rounds"][2]
    assert third["site_digests"] == {"site-1": third["global_digest"], "site-2": third["global_digest"]}
    assert third["bytes_down"]["site-2"] > third["dense_bytes_down"]["site-2"] > 2 * third["bytes_down"]["site-1"]
    assert results["site_digests"] == {"site-1": results["global_digest"], "site-2": results["global_digest"]}
    site_log = (poc_run["system"].kit("site-2") / outcome.job_id / "log.txt").read_text(encoding="utf-8")
    assert "resumed local state after round 1" in site_log  # its adapter and codec state of round 1
    assert "rejoining at round 3; its last round was round 1" in site_log


def test_everything_is_stopped_and_the_ports_are_free(poc_run):
    assert poc_run["running_before_stop"] > 0  # the check below can see the federation's processes
    assert poc_run["system"].processes() == []
    assert all(port_is_free(port) for port in SERVER_PORTS)


def fedmrg_cli(*args: str, timeout: float) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "fedmrg.cli", *args]
    return subprocess.run(command, capture_output=True, text=True, env=env, timeout=timeout)


def follow_from_the_api(system: PocSystem, job_id: str, download_to: Path, lines: list[str]) -> tuple[str, Path | None]:
    from nvflare.fuel.flare_api.flare_api import new_secure_session

    session = new_secure_session(PROJECT_ADMIN, str(system.admin_kit), timeout=30)
    try:
        follower = LogFollower(system.kit("server") / job_id / "log.txt", lines.append)
        status = follow_job(session, job_id, follower, 600, lines.append)
        return status, download_result(session, job_id, download_to, lines.append)
    finally:
        session.close()


def test_a_job_typed_into_the_admin_console_of_a_poc_up_federation_completes(tiny_bench, tiny_base_llm, tmp_path):
    """What `make poc-up` tells a user to do: open the console with the command it prints and type
    `submit_job fedmrg` at the prompt. The job completes under the hospital policies (the server's allow
    list admits FedMRG's controller), and `poc-down` leaves nothing running."""
    job, ws = export_job(tmp_path / "jobs"), tmp_path / "ws"
    up = fedmrg_cli("poc-up", "--job", str(job), "--data", str(tiny_bench), "--base-llm", str(tiny_base_llm),
                "--sites", "2", "--workspace", str(ws), "--policies", str(POLICIES), timeout=300)  # fmt: skip
    lines: list[str] = []
    try:
        assert up.returncode == 0, up.stderr[-3000:]
        said = dict(line.split(":", 1) for line in up.stdout.splitlines() if ":" in line)
        console, typed = said["admin console"].strip(), said["submit the job"].split("(")[0].strip()
        assert typed == "submit_job fedmrg"
        assert processes_under(ws)  # still running after poc-up returned
        session = subprocess.run(
            ["bash", "-c", console], input=typed + "\n", capture_output=True, text=True, timeout=120, cwd=tmp_path
        )
        submitted = re.search(r"Submitted job: ([0-9a-f-]{36})", session.stdout)
        assert submitted, session.stdout[-2000:] + session.stderr[-2000:]
        status, downloaded = follow_from_the_api(PocSystem(ws, []), submitted[1], tmp_path / "results", lines)
    finally:
        down = fedmrg_cli("poc-down", "--workspace", str(ws), timeout=180)
    assert status == FINISHED_OK, lines
    results = json.loads((find_results(downloaded) / "results.json").read_text(encoding="utf-8"))
    assert sorted(results["rounds"][0]["accepted"]) == ["site-1", "site-2"]
    assert down.returncode == 0, down.stdout + down.stderr
    assert processes_under(ws) == []
    assert all(port_is_free(port) for port in SERVER_PORTS)


def environment_without_fedmrg(root: Path) -> Path:
    """A virtual environment that sees every package of this one except the (editable) fedmrg install:
    its .pth adds our site-packages to the path, and .pth files there (fedmrg's finder) are not run."""
    import sysconfig
    import venv

    venv.create(root, with_pip=False)
    purelib = Path(sysconfig.get_paths()["purelib"])
    python = root / "bin" / "python"
    target = subprocess.run(
        [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    (Path(target) / "shared.pth").write_text(f"{purelib}\n", encoding="utf-8")
    return python


def test_a_job_that_ships_its_code_runs_where_the_package_is_not_installed(tiny_bench, tiny_base_llm, tmp_path):
    python = environment_without_fedmrg(tmp_path / "bare")
    probe = subprocess.run(
        [
            str(python),
            "-c",
            "import nvflare, torch, peft\ntry:\n import fedmrg\nexcept ImportError:\n print('no fedmrg')",
        ],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=300,
    )
    assert probe.stdout.strip() == "no fedmrg", probe.stderr[-2000:]
    job = export_job(tmp_path / "job", "--ship-code", sites=1)
    system = PocSystem(tmp_path / "ws", ["site-1"], python=str(python))
    with system:
        system.prepare()  # FLARE's default policies: the project admin may bring code, no allow list applies
        system.wire_site("site-1", tiny_bench / "site-1", tiny_base_llm, policies=None)
        system.start()
        outcome = submit_and_follow(system, job, 600, tmp_path / "results", lambda line: None)
    assert outcome.completed, outcome.status
    site_log = (system.kit("site-1") / outcome.job_id / "log.txt").read_text(encoding="utf-8")
    assert f"fedmrg {fedmrg.__version__} from {system.kit('site-1') / outcome.job_id}" in site_log  # the job's copy
    assert json.loads((find_results(outcome.result_dir) / "results.json").read_text())["final"]["site-1"]
    assert system.processes() == []
