"""The POC driver's own steps, without a federation: what it refuses before starting, and how it ends
processes."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from fedmrg.errors import ConfigError
from fedmrg.ops.poc import PocRun, end_processes, poc_down, processes_under


def job_folder(tmp_path: Path, **meta) -> Path:
    job = tmp_path / f"job-{len(list(tmp_path.glob('job-*')))}"
    job.mkdir()
    (job / "meta.json").write_text(json.dumps({"name": "fedmrg", "min_clients": 2, **meta}))
    return job


def plan(tmp_path: Path, tiny_bench: Path, meta: dict | None = None, **changes) -> PocRun:
    return PocRun(
        **{
            "workspace": tmp_path / "ws",
            "job_dir": job_folder(tmp_path, **(meta or {})),
            "data": tiny_bench,
            "sites": 2,
            **changes,
        }
    )


def test_a_plan_that_could_run_passes(tiny_bench, tmp_path):
    plan(tmp_path, tiny_bench, policies=Path(__file__).resolve().parents[1] / "provisioning").validate()


@pytest.mark.parametrize(
    "meta, message",
    [
        ({"min_clients": 3}, "min_clients: the job needs 3 sites, the POC has 2"),
        ({"resource_spec": {"@default": {"num_of_gpus": 1}}}, "resource_spec: the job asks each site for 1 GPU"),
    ],
)
def test_a_job_the_poc_could_never_schedule_is_refused_before_starting(tiny_bench, tmp_path, meta, message):
    with pytest.raises(ConfigError, match=message):
        plan(tmp_path, tiny_bench, meta).validate()


def test_missing_site_data_and_broken_policies_are_named(tiny_bench, tmp_path):
    with pytest.raises(ConfigError, match="no benchmark folder for site-3"):
        plan(tmp_path, tiny_bench, {"min_clients": 3}, sites=3).validate()
    policies = tmp_path / "policies"
    policies.mkdir()
    with pytest.raises(ConfigError, match="none of authorization.json"):
        plan(tmp_path, tiny_bench, policies=policies).validate()
    (policies / "privacy.json").write_text("{not json")
    with pytest.raises(ConfigError, match=r"privacy.json: not readable JSON"):
        plan(tmp_path, tiny_bench, policies=policies).validate()


def test_processes_left_under_a_folder_are_ended_and_others_spared(tmp_path):
    inside, outside = tmp_path / "poc", tmp_path / "poc_old"  # a sibling whose name starts the same
    for folder in (inside, outside):
        folder.mkdir()
    ignores_term = "import signal, time, sys; signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(60)"
    procs = {
        folder: subprocess.Popen([sys.executable, "-c", ignores_term, str(folder / "startup")])
        for folder in (inside, outside)
    }
    try:
        assert [p.pid for p in processes_under(inside)] == [procs[inside].pid]
        ended = end_processes(lambda: processes_under(inside), grace=0.5)
        assert ended == [procs[inside].pid] and procs[inside].wait(timeout=10) is not None  # killed after SIGTERM
        assert procs[outside].poll() is None
    finally:
        for proc in procs.values():
            proc.kill()
            proc.wait()


def test_poc_down_where_no_federation_was_started_says_so_and_succeeds(tmp_path):
    said: list[str] = []
    assert poc_down(tmp_path / "ws", said.append)
    assert said == [f"no POC federation in {tmp_path / 'ws'} (no poc/ folder); nothing to stop"]
