"""A POC federation end to end (tiny data, tiny LLM, 2 sites, 1 round): prepared, started, jobs submitted
through the FLARE API, a hospital's policy enforced, the result downloaded, and everything stopped."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

import fedmrg
from fedmrg.fl.poc import SERVER_PORTS, PocSystem, find_results, port_is_free, submit_and_follow

REPO = Path(__file__).resolve().parents[1]
POLICIES = REPO / "provisioning"

pytestmark = pytest.mark.slow


def export_job(out: Path, *flags: str, sites: int = 2) -> Path:
    done = subprocess.run([sys.executable, str(REPO / "jobs" / "fedmrg" / "job.py"), "--config", "tiny", "--rounds", "1",
                           "--sites", str(sites), "--test-limit", "4", "--export", "--export-dir", str(out), *flags],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    return out / "fedmrg"


@pytest.fixture(scope="module")
def poc_run(tiny_bench, tiny_base_llm, tmp_path_factory):
    """One POC system: site-1 with FLARE's default policies, site-2 with the hospital templates of
    provisioning/ (no job-supplied code, FedMRG classes allowed, privacy filter on every result).
    Two jobs: the package shipped in the job (byoc), then the same job without code."""
    if not all(port_is_free(port) for port in SERVER_PORTS):
        pytest.fail(f"POC ports {SERVER_PORTS} are in use before the test; stop the other FLARE system")
    root = tmp_path_factory.mktemp("poc")
    shipped, plain = export_job(root / "shipped", "--ship-code"), export_job(root / "plain")
    lines: list[str] = []
    system = PocSystem(root / "ws", ["site-1", "site-2"])
    with system:
        system.prepare()
        system.wire_site("site-1", tiny_bench / "site-1", tiny_base_llm, policies=None)
        system.wire_site("site-2", tiny_bench / "site-2", tiny_base_llm, policies=POLICIES)
        system.start()
        refused = submit_and_follow(system, shipped, 300, root / "results", lines.append)
        completed = submit_and_follow(system, plain, 600, root / "results", lines.append)
        running_before_stop = len(system.processes())
    return {"system": system, "refused": refused, "completed": completed, "lines": lines,
            "running_before_stop": running_before_stop}


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


def test_everything_is_stopped_and_the_ports_are_free(poc_run):
    assert poc_run["running_before_stop"] > 0  # the check below can see the federation's processes
    assert poc_run["system"].processes() == []
    assert all(port_is_free(port) for port in SERVER_PORTS)


def environment_without_fedmrg(root: Path) -> Path:
    """A virtual environment that sees every package of this one except the (editable) fedmrg install:
    its .pth adds our site-packages to the path, and .pth files there (fedmrg's finder) are not run."""
    import sysconfig
    import venv

    venv.create(root, with_pip=False)
    purelib = Path(sysconfig.get_paths()["purelib"])
    python = root / "bin" / "python"
    target = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                            capture_output=True, text=True, check=True).stdout.strip()
    (Path(target) / "shared.pth").write_text(f"{purelib}\n", encoding="utf-8")
    return python


def test_a_job_that_ships_its_code_runs_where_the_package_is_not_installed(tiny_bench, tiny_base_llm, tmp_path):
    python = environment_without_fedmrg(tmp_path / "bare")
    probe = subprocess.run([str(python), "-c", "import nvflare, torch, peft\ntry:\n import fedmrg\nexcept ImportError:"
                            "\n print('no fedmrg')"], capture_output=True, text=True, cwd=tmp_path, timeout=300)
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
