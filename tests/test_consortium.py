"""A consortium across hosts on one machine: each participant in its own network namespace, started from
its provisioned kit, mutual TLS between them; a shaped link, a certificate from another provisioning."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import pytest

from conftest import REPO
from fedmrg.errors import ConfigError
from fedmrg.ops import consortium as harness
from fedmrg.ops.consortium import SERVER, Consortium, ConsortiumError, ConsortiumRun, Link, leftovers
from fedmrg.ops.poc import find_results, processes_under

needs_namespaces = pytest.mark.skipif(
    subprocess.run(["ip", "netns", "list"], capture_output=True).returncode != 0 or shutil.which("tc") is None,
    reason="no ip netns / tc here",
)


# ---------------------------------------------------------------------------------------- links
@pytest.mark.parametrize(
    "text, link",
    [
        ("10mbit", Link(rate_mbit=10)),
        ("10mbit,20ms,0.1%", Link(rate_mbit=10, delay_ms=20, loss_percent=0.1)),
        ("50ms, 2%", Link(delay_ms=50, loss_percent=2)),
    ],
)
def test_a_link_is_read_from_its_rate_delay_and_loss(text, link):
    assert Link.parse(text) == link


@pytest.mark.parametrize("text", ["", "10", "fast", "0mbit", "-5ms", "10mbit,x%"])
def test_a_bad_link_says_what_a_link_is(text):
    with pytest.raises(ConfigError, match="RATEmbit|give a rate"):
        Link.parse(text)


def test_without_the_rights_to_create_namespaces_it_stops_with_one_line(monkeypatch, tmp_path, capsys):
    from fedmrg import cli

    def refused(*args, check=True):
        return subprocess.CompletedProcess(
            ["ip", *args], 1, "", "mount --make-shared /run/netns failed: Operation not permitted\n"
        )

    monkeypatch.setattr(harness, "_ip", refused)
    with pytest.raises(ConsortiumError, match="needs root or CAP_SYS_ADMIN"):
        harness.Network(["server"]).create({})
    job = tmp_path / "job"
    job.mkdir()
    (job / "meta.json").write_text(json.dumps({"min_clients": 2}))
    data = tmp_path / "bench"
    for site in ("site-1", "site-2"):
        (data / site).mkdir(parents=True)
        (data / site / "annotation.json").write_text("{}")
    argv = ["consortium", "--job", str(job), "--data", str(data), "--workspace", str(tmp_path / "ws")]
    argv += ["--project", str(REPO / "provisioning" / "project.yml")]
    assert cli.main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "needs root or CAP_SYS_ADMIN" in err[0] and "Operation not permitted" in err[0]


# ---------------------------------------------------------------------------------- the harness
@pytest.fixture(scope="module")
def tiny_job(tiny_bench, tiny_base_llm, tmp_path_factory):
    out = tmp_path_factory.mktemp("consortium-job")
    command = [sys.executable, str(REPO / "jobs" / "fedmrg" / "job.py"), "--config", "tiny", "--sites", "2"]
    command += ["--rounds", "2", "--test-limit", "2", "--export", "--export-dir", str(out)]
    done = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    return out / "fedmrg"


def plan(tiny_job, tiny_bench, tiny_base_llm, workspace, **extra) -> ConsortiumRun:
    return ConsortiumRun(
        workspace=workspace,
        job_dir=tiny_job,
        data=tiny_bench,
        base_llm=tiny_base_llm,
        policies=REPO / "provisioning",
        project=REPO / "provisioning" / "project.yml",
        timeout=600,
        **extra,
    )


def run(consortium: Consortium):
    with consortium:
        consortium.bring_up()
        outcome = consortium.run_job()
    return outcome


def assert_nothing_left(consortium: Consortium) -> None:
    assert leftovers(consortium.network.tag) == []
    assert not processes_under(consortium.workspace)
    links = subprocess.run(["ip", "-o", "link"], capture_output=True, text=True).stdout
    assert "br0" not in links and not any(f" p{k}@" in links for k in range(4))


CAP = Link(rate_mbit=0.1)  # hospital-b's link, each way (not the site that submits the initial model)


@pytest.fixture(scope="module")
def capped_run(tiny_job, tiny_bench, tiny_base_llm, tmp_path_factory):
    """The tiny job, 2 rounds, hospital-b behind 100 kbit/s: one run serves the tests below (CI time)."""
    workspace = tmp_path_factory.mktemp("consortium")
    consortium = Consortium(
        plan(tiny_job, tiny_bench, tiny_base_llm, workspace, links={"hospital-b": CAP}), lambda _: None
    )
    return consortium, run(consortium)


def rounds(outcome) -> list[dict]:
    return json.loads((find_results(outcome.result_dir) / "results.json").read_text())["rounds"]


@pytest.mark.slow
@needs_namespaces
def test_the_job_completes_between_namespaces_over_mutual_tls_and_nothing_is_left(capped_run):
    consortium, outcome = capped_run
    assert outcome.completed, outcome.status
    assert [r["round"] for r in rounds(outcome)] == [0, 1]
    server_log = (consortium.kit(SERVER) / "log.txt").read_text()
    for index, hospital in enumerate(consortium.hospitals, start=2):  # each from its own address, over TLS
        assert f"10.77.0.1:8002 <= 10.77.0.{index}:" in server_log and f"SSL {hospital}]" in server_log
    assert_nothing_left(consortium)


@pytest.mark.slow
@needs_namespaces
def test_a_capped_hospital_link_shows_in_the_round_time(capped_run):
    """The rounds last at least most of what hospital-b's bytes alone take at the cap (about 14 s for
    both rounds; uncapped, the two rounds of this job take about 7 s on 2 cores)."""
    records = rounds(capped_run[1])
    moved = sum(r["bytes_up"]["hospital-b"] + r["bytes_down"]["hospital-b"] for r in records)
    at_the_cap = moved * 8 / (CAP.rate_mbit * 1e6)
    assert sum(r["seconds"] for r in records) > 0.8 * at_the_cap > 10, ([r["seconds"] for r in records], at_the_cap)


@pytest.mark.slow
@needs_namespaces
def test_a_site_kit_from_another_provisioning_cannot_join(tiny_job, tiny_bench, tiny_base_llm, tmp_path):
    """hospital-b starts from a kit of the same name made by another provisioning (another root CA): the
    TLS handshake fails (its kit does not trust the server's certificate, nor the server its own), it
    never registers; hospital-a connects as usual."""
    consortium = Consortium(plan(tiny_job, tiny_bench, tiny_base_llm, tmp_path / "ws"), lambda _: None)
    other = Consortium(plan(tiny_job, tiny_bench, tiny_base_llm, tmp_path / "other"), lambda _: None)
    other.workspace.mkdir(parents=True)
    other.provision()
    with consortium:
        consortium.workspace.mkdir(parents=True)
        consortium.provision()
        consortium.wire()
        shutil.rmtree(consortium.kit("hospital-b") / "startup")
        shutil.copytree(other.kit("hospital-b") / "startup", consortium.kit("hospital-b") / "startup")
        consortium.network.create({SERVER: SERVER})
        consortium.start(SERVER)
        for hospital in consortium.hospitals:
            consortium.start(hospital)
        server_log = consortium.kit(SERVER) / "log.txt"
        harness.wait_for(lambda: "New client hospital-a" in _text(server_log), 90)
        harness.wait_for(lambda: "certificate verify failed" in _text(consortium.workspace / "hospital-b.out"), 60)
        assert "New client hospital-b" not in _text(server_log)
    assert_nothing_left(consortium)


def _text(path) -> str:
    return path.read_text(errors="replace") if path.is_file() else ""
