"""A consortium across hosts, on one machine: each participant on its own network, from its own kit.

:func:`run_consortium` gives the server, every hospital and the admin a Linux network namespace of
their own, joined by a private bridge (in a namespace of its own too, so the machine's own network
is never touched), each with an address of its own and a hosts file that resolves the provisioned
server name (``ip netns exec`` puts ``/etc/netns/<namespace>/hosts`` in place of ``/etc/hosts``).
It provisions the consortium (``nvflare provision`` of a project file with those names: mutual TLS
between every participant), starts the server and each hospital from its startup kit inside its
namespace, and has the admin, from its own namespace, submit the exported job through the FLARE API,
follow it and download the result. A hospital's link can be shaped (``tc``: a bandwidth cap,
added latency, packet loss) and cut for a while during the job.

Everything it creates (namespaces, the bridge, the hosts files, every process) is removed on every
way out: the end of the job, a failure, Ctrl-C or SIGTERM. The workspace keeps the kits, the logs
and the downloaded result. Without the rights to create namespaces (root, or CAP_SYS_ADMIN) it
stops at once with one line saying so.
"""

from __future__ import annotations

import argparse
import itertools
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from contextlib import suppress
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import psutil
import yaml

from fedmrg.errors import ConfigError, FedMRGError
from fedmrg.ops.poc import (
    JobOutcome,
    PocRun,
    end_processes,
    find_results,
    processes_under,
    signals_deferred,
    submit_as,
    wire_site_kit,
)
from fedmrg.ops.server_kit import prepare_server_kit

log = logging.getLogger(__name__)

PROJECT = "cxr_consortium"
SERVER = "fl.cxr-consortium.example.org"
ADMIN = "admin@cxr-consortium.example.org"
PORTS = (8002, 8003)  # inside the server's namespace: no clash with anything on the machine
SUBNET = "10.77.0"
NETNS_DIR = Path("/etc/netns")
_NETWORKS = itertools.count()  # distinct namespace names for each network of a process


class ConsortiumError(FedMRGError):
    """A consortium that cannot be set up or run here."""


def hospitals(count: int) -> list[str]:
    """hospital-a, hospital-b, ...: the provisioned site names (data from the benchmark's site-1, site-2, ...)."""
    if not 1 <= count <= 26:
        raise ConfigError(f"sites: between 1 and 26, got {count}")
    return [f"hospital-{chr(ord('a') + k)}" for k in range(count)]


# ------------------------------------------------------------------------------------ links
_LINK_UNITS = {"mbit": "rate_mbit", "ms": "delay_ms", "%": "loss_percent"}


@dataclass(frozen=True)
class Link:
    """How a hospital's link is shaped, each way (``tc`` on both ends of its cable)."""

    rate_mbit: float | None = None
    delay_ms: float | None = None
    loss_percent: float | None = None

    @classmethod
    def parse(cls, text: str) -> Link:
        """``10mbit``, ``10mbit,20ms``, ``10mbit,20ms,0.1%`` (any of the three, in any order)."""
        values: dict[str, float] = {}
        for part in (p.strip().lower() for p in text.split(",") if p.strip()):
            unit = next((u for u in _LINK_UNITS if part.endswith(u)), "")
            try:
                number = float(part[: -len(unit)]) if unit else -1.0
            except ValueError:
                number = -1.0
            if number < 0 or (unit == "mbit" and number == 0):
                raise ConfigError(f"link {text!r}: {part!r} is none of RATEmbit (> 0), DELAYms, LOSS%")
            values[_LINK_UNITS[unit]] = number
        if not values:
            raise ConfigError(f"link {text!r}: give a rate (10mbit), a delay (20ms) or a loss (0.1%)")
        return cls(**values)

    def qdisc(self) -> list[str]:
        """The ``tc qdisc`` that shapes it: ``tbf`` for a rate alone (a token bucket holding 10 ms of
        traffic, at least one full packet), ``netem`` once there is latency or loss (the kernel's
        sch_netem module, which not every kernel has)."""
        if not (self.delay_ms or self.loss_percent):
            burst = max(15_000, int(self.rate_mbit * 1e6 / 8 / 100))
            return ["tbf", "rate", f"{self.rate_mbit:g}mbit", "burst", str(burst), "latency", "1s"]
        args = ["netem"]
        if self.delay_ms:
            args += ["delay", f"{self.delay_ms:g}ms"]
        if self.loss_percent:
            args += ["loss", f"{self.loss_percent:g}%"]
        if self.rate_mbit:
            args += ["rate", f"{self.rate_mbit:g}mbit"]
        return [*args, "limit", "100000"]

    def __str__(self) -> str:
        parts = [
            f"{self.rate_mbit:g} Mbit/s" if self.rate_mbit else "",
            f"+{self.delay_ms:g} ms" if self.delay_ms else "",
            f"{self.loss_percent:g}% loss" if self.loss_percent else "",
        ]
        return ", ".join(p for p in parts if p)


# ---------------------------------------------------------------------------------- network
def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    done = subprocess.run(["ip", *args], capture_output=True, text=True, stdin=subprocess.DEVNULL)
    if check and done.returncode != 0:
        raise ConsortiumError(f"`ip {' '.join(args)}` failed: {(done.stderr or done.stdout).strip()[:300]}")
    return done


@dataclass
class Network:
    """Namespaces joined by a bridge, one address and one hosts file each; :meth:`remove` undoes all."""

    participants: list[str]  # the server first
    tag: str = field(default_factory=lambda: f"fm{os.getpid() % 100000}x{next(_NETWORKS)}")
    created: list[str] = field(default_factory=list, init=False)
    made_netns_dir: bool = field(default=False, init=False)

    def namespace(self, participant: str) -> str:
        return f"{self.tag}-{self.participants.index(participant)}"

    @property
    def switch(self) -> str:
        return f"{self.tag}-net"

    def address(self, participant: str) -> str:
        return f"{SUBNET}.{self.participants.index(participant) + 1}"

    def create(self, names: dict[str, str]) -> None:
        """Build the network; ``names`` maps host names to participants (resolved in every namespace)."""
        self.made_netns_dir = not NETNS_DIR.exists()
        probe = f"{self.tag}-probe"
        done = _ip("netns", "add", probe, check=False)
        if done.returncode != 0:
            raise ConsortiumError(
                "cannot create network namespaces here (needs root or CAP_SYS_ADMIN): "
                + (done.stderr or done.stdout).strip().splitlines()[-1][:200]
            )
        _ip("netns", "del", probe)
        self._add(self.switch)
        _ip("-n", self.switch, "link", "add", "br0", "type", "bridge")
        _ip("-n", self.switch, "link", "set", "br0", "up")
        hosts = "127.0.0.1 localhost\n" + "".join(f"{self.address(p)} {name}\n" for name, p in names.items())
        for index, participant in enumerate(self.participants):
            namespace = self.namespace(participant)
            self._add(namespace)
            (NETNS_DIR / namespace).mkdir(parents=True, exist_ok=True)
            (NETNS_DIR / namespace / "hosts").write_text(hosts, encoding="utf-8")
            port = f"p{index}"
            _ip("link", "add", port, "netns", self.switch, "type", "veth", "peer", "name", "eth0", "netns", namespace)
            _ip("-n", self.switch, "link", "set", port, "master", "br0", "up")
            _ip("-n", namespace, "addr", "add", f"{self.address(participant)}/24", "dev", "eth0")
            _ip("-n", namespace, "link", "set", "eth0", "up")
            _ip("-n", namespace, "link", "set", "lo", "up")

    def _add(self, namespace: str) -> None:
        _ip("netns", "add", namespace)
        self.created.append(namespace)

    def shape(self, participant: str, link: Link) -> None:
        """Shape the participant's link both ways: its own end (uplink) and the bridge's end (downlink)."""
        port = f"p{self.participants.index(participant)}"
        for namespace, device in ((self.namespace(participant), "eth0"), (self.switch, port)):
            done = _ip(
                "netns", "exec", namespace, "tc", "qdisc", "replace", "dev", device, "root", *link.qdisc(), check=False
            )
            if done.returncode != 0:
                missing = "unknown" in done.stderr and link.qdisc()[0] == "netem"
                raise ConsortiumError(
                    f"cannot shape {participant}'s link as {link}: "
                    + (
                        "this kernel has no netem (sch_netem): latency and loss cannot be added here, a rate can"
                        if missing
                        else done.stderr.strip()[:300]
                    )
                )

    def set_link(self, participant: str, up: bool) -> None:
        """Plug or unplug the participant's cable (its bridge port)."""
        port = f"p{self.participants.index(participant)}"
        _ip("-n", self.switch, "link", "set", port, "up" if up else "down")

    def command(self, participant: str, *command: str) -> list[str]:
        return ["ip", "netns", "exec", self.namespace(participant), *command]

    def pids(self) -> list[int]:
        found = []
        for namespace in self.created:
            done = _ip("netns", "pids", namespace, check=False)
            found += [int(pid) for pid in done.stdout.split() if pid.isdigit()]
        return found

    def remove(self) -> None:
        """Kill every process left in the namespaces, then remove them (the veth pairs and the bridge go
        with them) and their hosts files."""
        for pid in self.pids():
            with suppress(psutil.NoSuchProcess, ProcessLookupError):
                psutil.Process(pid).kill()
        for namespace in reversed(self.created):
            _ip("netns", "del", namespace, check=False)
            shutil.rmtree(NETNS_DIR / namespace, ignore_errors=True)
        self.created.clear()
        if self.made_netns_dir:
            with suppress(OSError):
                NETNS_DIR.rmdir()  # only when empty: another tool's namespaces keep theirs


def leftovers(tag: str) -> list[str]:
    """Namespaces and hosts folders of a harness that are still there (none after every run)."""
    names = [line.split()[0] for line in _ip("netns", "list", check=False).stdout.splitlines() if line.strip()]
    folders = [p.name for p in NETNS_DIR.glob(f"{tag}-*")] if NETNS_DIR.is_dir() else []
    return sorted({n for n in names if n.startswith(f"{tag}-")} | set(folders))


# ------------------------------------------------------------------------------- consortium
@dataclass
class ConsortiumRun:
    """What ``fedmrg consortium`` does, as data."""

    workspace: Path
    job_dir: Path  # an exported job folder
    data: Path  # the benchmark folder (site-1, site-2, ...)
    sites: int = 2
    base_llm: Path | None = None
    policies: Path | None = None  # hospital policy files installed at every site (and the server's authorization)
    links: dict[str, Link] = field(default_factory=dict)  # hospital name -> its link
    cut: tuple[str, float, float] | None = None  # (hospital or server, seconds after the submission, for seconds)
    timeout: float = 3600.0
    project: Path = Path("provisioning/project.yml")  # its builders; the participants are this run's

    def validate(self) -> None:
        PocRun(self.workspace, self.job_dir, self.data, self.sites, self.base_llm, self.policies).validate()
        if not Path(self.project).is_file():
            raise ConfigError(f"{self.project}: no FLARE project file (run from the repository, or give --project)")
        names = set(hospitals(self.sites))
        for name in self.links:
            if name not in names:
                raise ConfigError(f"{name}: not a hospital of this consortium ({', '.join(sorted(names))})")
        if self.cut and self.cut[0] not in names | {SERVER}:
            raise ConfigError(f"{self.cut[0]}: neither the server nor a hospital ({', '.join(sorted(names))})")


class Consortium:
    """The provisioned kits, the network and the processes of one run (a context manager that always
    removes the network and stops every process)."""

    def __init__(self, plan: ConsortiumRun, echo: Callable[[str], None] = print) -> None:
        self.plan, self.echo = plan, echo
        self.workspace = Path(plan.workspace).resolve()
        self.hospitals = hospitals(plan.sites)
        self.network = Network([SERVER, *self.hospitals, ADMIN])
        self.processes: list[subprocess.Popen] = []

    def kit(self, participant: str) -> Path:
        return self.workspace / "kits" / PROJECT / "prod_00" / participant

    def env(self) -> dict[str, str]:
        home, tmp = self.workspace / "home", self.workspace / "tmp"
        for folder in (home, tmp):
            folder.mkdir(parents=True, exist_ok=True)
        return {
            **os.environ,
            "HOME": str(home),
            "TMPDIR": str(tmp),
            "PATH": str(Path(sys.executable).parent) + os.pathsep + os.environ.get("PATH", ""),
            "OMP_NUM_THREADS": "1",
            "PYTHONUNBUFFERED": "1",
        }

    # ---------------------------------------------------------------------------- set up
    def provision(self) -> None:
        """``nvflare provision`` of the consortium's project file, cut down to this run's hospitals and admin."""
        spec = yaml.safe_load(Path(self.plan.project).read_text(encoding="utf-8"))
        server = next(p for p in spec["participants"] if p["type"] == "server")
        server.update({"name": SERVER, "fed_learn_port": PORTS[0], "admin_port": PORTS[1]})
        spec["participants"] = [
            server,
            *({"name": h, "type": "client", "org": h.replace("-", "_")} for h in self.hospitals),
            {"name": ADMIN, "type": "admin", "org": PROJECT, "role": "project_admin"},
        ]
        project = self.workspace / "project.yml"
        project.write_text(yaml.safe_dump(spec, sort_keys=False), encoding="utf-8")
        shutil.rmtree(self.workspace / "kits", ignore_errors=True)
        done = subprocess.run(
            [sys.executable, "-m", "nvflare.cli", "provision", "-p", str(project), "-w", str(self.workspace / "kits")],
            env=self.env(),
            capture_output=True,
            text=True,
            timeout=300,
            stdin=subprocess.DEVNULL,
        )
        if done.returncode != 0 or not self.kit(SERVER).is_dir():
            raise ConsortiumError(f"nvflare provision failed: {(done.stdout + done.stderr).strip()[-1500:]}")

    def wire(self) -> None:
        """Each hospital's settings (its data and base LLM) and policies; the server's storage and classes."""
        plan = self.plan
        prepare_server_kit(self.kit(SERVER) / "local", self.workspace / "storage", plan.policies, temporary_ok=True)
        for index, hospital in enumerate(self.hospitals, start=1):
            wire_site_kit(self.kit(hospital) / "local", Path(plan.data) / f"site-{index}", plan.base_llm, plan.policies)

    def start(self, participant: str) -> subprocess.Popen:
        """The participant's kit (``startup/sub_start.sh --once``) inside its namespace, in its own session."""
        kit = self.kit(participant)
        with open(self.workspace / f"{participant}.out", "ab") as out:
            process = subprocess.Popen(
                self.network.command(participant, "bash", str(kit / "startup" / "sub_start.sh"), "--once"),
                cwd=kit,
                env=self.env(),
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
        self.processes.append(process)
        return process

    def bring_up(self) -> None:
        plan = self.plan
        self.workspace.mkdir(parents=True, exist_ok=True)
        self.echo(f"provisioning {SERVER}, {', '.join(self.hospitals)} and {ADMIN} (mutual TLS)")
        self.provision()
        self.wire()
        self.network.create({SERVER: SERVER, **{h: h for h in self.hospitals}, ADMIN: ADMIN})
        for participant in (SERVER, *self.hospitals, ADMIN):
            address, namespace = self.network.address(participant), self.network.namespace(participant)
            self.echo(f"  {participant:<34} {address:<12} netns {namespace}")
        for hospital, link in plan.links.items():
            self.network.shape(hospital, link)
            self.echo(f"  {hospital}'s link: {link}")
        self.start(SERVER)
        for hospital in self.hospitals:
            self.start(hospital)

    # ------------------------------------------------------------------------------- job
    def run_job(self) -> JobOutcome:
        """The admin, in its namespace, submits the job, follows it and downloads the result."""
        out = self.workspace / "admin"
        out.mkdir(parents=True, exist_ok=True)
        command = self.network.command(
            ADMIN,
            sys.executable,
            "-m",
            "fedmrg.ops.consortium",
            "--admin-kit",
            str(self.kit(ADMIN)),
            "--server-kit",
            str(self.kit(SERVER)),
            "--job",
            str(Path(self.plan.job_dir).resolve()),
            "--sites",
            ",".join(self.hospitals),
            "--out",
            str(out),
            "--timeout",
            str(self.plan.timeout),
        )
        admin = subprocess.Popen(
            command, env=self.env(), stdout=subprocess.PIPE, text=True, stdin=subprocess.DEVNULL, start_new_session=True
        )
        self.processes.append(admin)
        cut = None
        for line in admin.stdout:
            self.echo(line.rstrip())
            if self.plan.cut and cut is None and line.startswith("submitted job"):
                cut = LinkCut(self.network, *self.plan.cut, self.echo)
                cut.start()
        admin.wait()
        if cut is not None:
            cut.cancelled.set()
            cut.join()
        outcome = json.loads((out / "outcome.json").read_text()) if (out / "outcome.json").is_file() else {}
        if not outcome:
            raise ConsortiumError(f"the admin ended without a job outcome (exit {admin.returncode})")
        result = Path(outcome["result_dir"]) if outcome.get("result_dir") else None
        return JobOutcome(outcome["job_id"], outcome["status"], result)

    # ---------------------------------------------------------------------------- tear down
    def stop(self) -> None:
        """Every process and the network, whatever state they are in; Ctrl-C waits until this is done."""
        with signals_deferred():
            for process in self.processes:
                if process.poll() is None:
                    with suppress(ProcessLookupError):
                        os.killpg(process.pid, signal.SIGKILL)
            end_processes(lambda: processes_under(self.workspace), grace=0)
            self.network.remove()
            for process in self.processes:
                with suppress(subprocess.TimeoutExpired):
                    process.wait(timeout=10)

    def __enter__(self) -> Consortium:
        return self

    def __exit__(self, *exc_info) -> None:
        self.stop()


class LinkCut(threading.Thread):
    """Unplugs a participant's cable ``after`` seconds, for ``seconds``, then plugs it back."""

    def __init__(self, network: Network, hospital: str, after: float, seconds: float, echo) -> None:
        super().__init__(daemon=True)
        self.network, self.hospital, self.after, self.seconds, self.echo = network, hospital, after, seconds, echo
        self.cancelled = threading.Event()

    def run(self) -> None:
        if self.cancelled.wait(self.after):
            return
        self.network.set_link(self.hospital, up=False)
        self.echo(f"{self.hospital}'s link cut for {self.seconds:g} s")
        self.cancelled.wait(self.seconds)
        with suppress(ConsortiumError):  # the network may be gone already
            self.network.set_link(self.hospital, up=True)
            self.echo(f"{self.hospital}'s link restored")


def run_consortium(plan: ConsortiumRun, echo: Callable[[str], None] = print) -> JobOutcome:
    """Set up, run the job, tear down: the outcome has the job's final status and the downloaded folder.
    The network and every process are gone before this returns or raises (also on Ctrl-C, and on
    SIGTERM where the caller turns it into KeyboardInterrupt, as ``fedmrg consortium`` does)."""
    plan.validate()
    with Consortium(plan, echo) as consortium:
        consortium.bring_up()
        outcome = consortium.run_job()
        echo("stopping the consortium")
    return outcome


def wait_for(condition: Callable[[], bool], timeout: float, interval: float = 0.5) -> None:
    """Poll ``condition`` until it holds; ConsortiumError after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise ConsortiumError(f"timed out after {timeout:g} s")
        time.sleep(interval)


# ------------------------------------------------------------------------------- the admin side
def _wait_for_sites(admin_kit: Path, sites: list[str], timeout: float) -> None:
    from nvflare.fuel.flare_api.flare_api import new_secure_session

    deadline = time.monotonic() + timeout
    last = ""
    while time.monotonic() < deadline:
        try:
            session = new_secure_session(ADMIN, str(admin_kit), timeout=10)
            try:
                connected = {c.name for c in session.get_system_info().client_info}
            finally:
                session.close()
            if set(sites) <= connected:
                return
            last = f"connected: {sorted(connected)}"
        except Exception as exc:  # noqa: BLE001 -- the server is still coming up
            last = str(exc)[:200]
        time.sleep(2)
    raise ConsortiumError(f"the sites did not all connect within {timeout:.0f} s ({last})")


def admin_main(argv: list[str] | None = None) -> int:
    """The admin's side, run inside its namespace: wait for the sites, submit, follow, download."""
    parser = argparse.ArgumentParser(prog="python -m fedmrg.ops.consortium")
    for name in ("--admin-kit", "--server-kit", "--job", "--out"):
        parser.add_argument(name, type=Path, required=True)
    parser.add_argument("--sites", required=True)
    parser.add_argument("--timeout", type=float, default=3600.0)
    args = parser.parse_args(argv)
    echo = partial(print, flush=True)
    _wait_for_sites(args.admin_kit, args.sites.split(","), 180)
    echo(f"every hospital connected to {SERVER} (mutual TLS)")
    outcome = submit_as(ADMIN, args.admin_kit, args.server_kit, args.job, args.timeout, args.out / "results", echo)
    record = {"job_id": outcome.job_id, "status": outcome.status, "result_dir": str(outcome.result_dir or "")}
    (args.out / "outcome.json").write_text(json.dumps(record), encoding="utf-8")
    found = find_results(outcome.result_dir)
    echo(f"result downloaded to {found or outcome.result_dir}")
    return 0 if outcome.completed else 1


if __name__ == "__main__":
    sys.exit(admin_main())
