"""A FLARE POC federation on this machine, end to end: the path from a clone to a running federation.

:func:`run_poc` prepares a POC system (``nvflare poc prepare``: a server, one client per site and
admin kits, all with certificates), wires each site to its benchmark folder (``local/fedmrg_site.yaml``)
and, optionally, installs hospital policies in the site kits, starts everything (``nvflare poc
start``), exports the FedMRG job and submits it through the FLARE API as the project admin, follows
the rounds in the server's log, downloads the result and prints the summary, ending with the job's
final status. Whatever happens (a failed step, Ctrl-C, SIGTERM), :class:`PocSystem` stops every
process it started (``nvflare poc stop``, then a kill of any process still running from the
workspace) and checks that the server's ports are free again.

FLARE's ``poc prepare`` records the kits it made in ``~/.nvflare/config.conf`` (and makes them the
active ones). To leave the user's own file alone, every ``nvflare`` command here runs with ``HOME``
set to ``<workspace>/home``.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import psutil
import yaml

from fedmrg.errors import ConfigError, FedMRGError
from fedmrg.fl.recipe import allow_fedmrg_components
from fedmrg.fl.site import SETTINGS_FILE

log = logging.getLogger(__name__)

POC_PROJECT = "example_project"  # what `nvflare poc prepare` names its project
PROJECT_ADMIN = "admin@nvidia.com"  # and its project admin
SERVER_PORTS = (8002, 8003)  # POC defaults: federated learning, admin
POLICY_FILES = ("authorization.json", "privacy.json", "resources.json")
FINISHED_OK = "FINISHED:COMPLETED"
PROGRESS = re.compile(r"round \d+/\d+|refused|initial global|results in|ERROR")


class PocError(FedMRGError):
    """A POC step failed; the message says which and where its log is."""


@dataclass
class PocSystem:
    """One POC workspace and the processes started from it (a context manager that always stops them)."""

    workspace: Path
    sites: list[str]
    timeout: float = 120.0  # for each nvflare command
    python: str = sys.executable  # the environment the federation's processes run in (its bin/ leads PATH)
    started: bool = field(default=False, init=False)

    def __post_init__(self) -> None:
        self.workspace = Path(self.workspace).resolve()

    # ------------------------------------------------------------------------------- layout
    @property
    def poc_dir(self) -> Path:
        return self.workspace / "poc"

    @property
    def prod_dir(self) -> Path:
        return self.poc_dir / POC_PROJECT / "prod_00"

    def kit(self, participant: str) -> Path:
        return self.prod_dir / participant

    @property
    def admin_kit(self) -> Path:
        return self.kit(PROJECT_ADMIN)

    def env(self) -> dict[str, str]:
        """The environment of every nvflare command and so of every process of the federation."""
        bin_dir = str(Path(self.python).parent)
        home = self.workspace / "home"
        home.mkdir(parents=True, exist_ok=True)
        return {**os.environ, "NVFLARE_POC_WORKSPACE": str(self.poc_dir), "HOME": str(home),
                "PATH": bin_dir + os.pathsep + os.environ.get("PATH", ""), "OMP_NUM_THREADS": "1",
                "PYTHONUNBUFFERED": "1"}

    # ------------------------------------------------------------------------------ commands
    def nvflare(self, *args: str, timeout: float | None = None) -> str:
        """Run ``nvflare ARGS`` in this workspace's environment; a failure raises with its output."""
        command = [self.python, "-m", "nvflare.cli", *args]
        try:
            done = subprocess.run(command, env=self.env(), capture_output=True, text=True,
                                  timeout=timeout or self.timeout, stdin=subprocess.DEVNULL)
        except subprocess.TimeoutExpired:
            raise PocError(f"`nvflare {' '.join(args)}` did not finish in {timeout or self.timeout:.0f} s") from None
        output = done.stdout + done.stderr
        if done.returncode != 0:
            raise PocError(f"`nvflare {' '.join(args)}` failed (exit {done.returncode}):\n{output.strip()[-2000:]}")
        return output

    def prepare(self) -> None:
        busy = [port for port in SERVER_PORTS if not port_is_free(port)]
        if busy:
            raise PocError(f"port {busy[0]} is in use (another POC or FLARE server?); stop it first "
                           f"(`nvflare poc stop` in its workspace) and try again")
        self.nvflare("poc", "prepare", "-c", *self.sites, "--force")
        log.info("POC prepared in %s (server, %s, admin kits)", self.prod_dir, ", ".join(self.sites))

    def start(self) -> None:
        self.started = True  # from here on, stop() has processes to end
        self.nvflare("poc", "start", "--timeout", str(int(self.timeout)), timeout=self.timeout + 30)
        log.info("POC started: server and %d sites connected", len(self.sites))

    def stop(self, grace: float = 30.0) -> list[int]:
        """Stop the federation; kill what is still running from the workspace after ``grace`` seconds.
        Returns the pids that had to be killed."""
        if not self.started:
            return []
        try:
            self.nvflare("poc", "stop", timeout=grace + 30)
        except PocError as exc:
            log.warning("nvflare poc stop: %s", exc)
        killed = end_processes(self.processes, grace)
        self.started = False
        busy = [port for port in SERVER_PORTS if not port_is_free(port)]
        if busy:
            log.warning("port %d is still in use after the POC stopped", busy[0])
        log.info("POC stopped%s; ports %s free", f" ({len(killed)} processes killed)" if killed else "",
                 "/".join(map(str, SERVER_PORTS)) if not busy else "NOT")
        return killed

    def processes(self) -> list[psutil.Process]:
        """Every live process of the federation: server, clients, job workers and their watchdogs."""
        return processes_under(self.poc_dir)

    def __enter__(self) -> PocSystem:
        return self

    def __exit__(self, *exc_info) -> None:
        self.stop()

    # --------------------------------------------------------------------------------- sites
    def wire_site(self, site: str, data_dir: Path, base_llm: Path | None, policies: Path | None) -> Path:
        """Write the site's settings into its kit and, with ``policies``, the hospital's policy files."""
        local = self.kit(site) / "local"
        settings = {"data_dir": str(Path(data_dir).resolve()), "threads": 1}
        if base_llm:
            settings["base_llm"] = str(Path(base_llm).resolve())
        (local / SETTINGS_FILE).write_text(yaml.safe_dump(settings, sort_keys=True), encoding="utf-8")
        install_policies(local, policies)
        if not policies or not (Path(policies) / "resources.json").is_file():
            allow_fedmrg_components(local)
        return local


def install_policies(local_dir: Path, policies: Path | None) -> list[str]:
    """Copy the policy files found in ``policies`` into a kit's ``local/`` (they override FLARE's .default ones)."""
    if policies is None:
        return []
    copied = [name for name in POLICY_FILES if (Path(policies) / name).is_file()]
    if not copied:
        raise ConfigError(f"{policies}: none of {', '.join(POLICY_FILES)} found")
    for name in copied:
        shutil.copy2(Path(policies) / name, Path(local_dir) / name)
    return copied


def processes_under(folder: str | os.PathLike) -> list[psutil.Process]:
    """Live processes (other than this one) with a command-line argument that is ``folder`` or a path
    inside it: what FLARE starts from a workspace names its kit folders so (``-m <kit>``, scripts)."""
    root = str(Path(folder).resolve())
    inside = root + os.sep
    found = []
    for proc in psutil.process_iter(["pid", "cmdline"]):
        try:
            if proc.pid != os.getpid() and any(part == root or part.startswith(inside)
                                               for part in proc.info["cmdline"] or ()):
                found.append(proc)
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
    return found


def port_is_free(port: int, host: str = "0.0.0.0") -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


def end_processes(list_processes: Callable[[], list[psutil.Process]], grace: float) -> list[int]:
    """Wait up to ``grace`` seconds for the listed processes to end by themselves, then terminate and
    finally kill those still alive. Returns the pids that had to be ended."""
    deadline = time.monotonic() + grace
    while list_processes() and time.monotonic() < deadline:
        time.sleep(0.5)
    left = list_processes()
    for proc in left:
        log.warning("still running after the POC stopped, terminating: %d %s", proc.pid,
                    " ".join(proc.info.get("cmdline") or [])[:160])
        _signal(proc, signal.SIGTERM)
    _, alive = psutil.wait_procs(left, timeout=5)
    for proc in alive:
        _signal(proc, signal.SIGKILL)
    psutil.wait_procs(alive, timeout=5)
    return [proc.pid for proc in left]


def _signal(proc: psutil.Process, sig: int) -> None:
    try:
        proc.send_signal(sig)
    except psutil.NoSuchProcess:
        pass


# ---------------------------------------------------------------------------------- the job
@dataclass
class JobOutcome:
    job_id: str
    status: str
    result_dir: Path | None  # the downloaded job folder (None when the download failed)

    @property
    def completed(self) -> bool:
        return self.status == FINISHED_OK


def submit_and_follow(system: PocSystem, job_dir: Path, timeout: float, download_to: Path,
                      echo: Callable[[str], None] = print) -> JobOutcome:
    """Submit ``job_dir`` as the project admin, print the server's progress lines until the job ends
    (or ``timeout`` seconds pass: the job is then aborted), and download its result."""
    from nvflare.fuel.flare_api.flare_api import new_secure_session

    session = new_secure_session(PROJECT_ADMIN, str(system.admin_kit), timeout=30)
    try:
        job_id = session.submit_job(str(job_dir))
        echo(f"submitted job {job_id} ({job_dir.name}) through the FLARE API as {PROJECT_ADMIN}")
        log_file = system.kit("server") / job_id / "log.txt"
        follower = LogFollower(log_file, echo)
        deadline = time.monotonic() + timeout
        status = session.get_job_status(job_id) or "SUBMITTED"
        while not status.startswith("FINISHED"):
            if time.monotonic() > deadline:
                echo(f"job {job_id}: no end after {timeout:.0f} s; aborting it")
                session.abort_job(job_id)
                time.sleep(5)
                status = session.get_job_status(job_id) or status
                break
            follower.poll()
            time.sleep(2)
            status = session.get_job_status(job_id) or status
        follower.poll()
        result_dir = None
        try:
            result_dir = Path(session.download_job_result(job_id, destination=str(download_to)))
        except Exception as exc:  # noqa: BLE001 -- FLARE raises several kinds; the status still tells
            echo(f"job {job_id}: download failed: {exc}")
        return JobOutcome(job_id, status, result_dir)
    finally:
        session.close()


class LogFollower:
    """Prints the new progress lines of a growing log file each time it is polled."""

    def __init__(self, path: Path, echo: Callable[[str], None]) -> None:
        self.path, self.echo, self.offset = path, echo, 0

    def poll(self) -> None:
        if not self.path.is_file():
            return
        with self.path.open("rb") as handle:
            handle.seek(self.offset)
            chunk = handle.read()
        complete = chunk[: chunk.rfind(b"\n") + 1]  # a line still being written waits for the next poll
        self.offset += len(complete)
        for line in complete.decode("utf-8", errors="replace").splitlines():
            if PROGRESS.search(line):
                self.echo("  " + line.split(" - ")[-1].strip())


def find_results(result_dir: Path | None) -> Path | None:
    """The run folder (with results.json) inside a downloaded job."""
    if result_dir is None:
        return None
    from fedmrg.fl.controller import RESULTS_FILE

    found = sorted(result_dir.rglob(RESULTS_FILE))
    return found[0].parent if found else None


# ------------------------------------------------------------------------------ the whole run
@dataclass
class PocRun:
    """What ``fedmrg poc`` does, as data: where, which sites, which job."""

    workspace: Path
    job_dir: Path  # an exported job folder (jobs/<job>/job.py --export)
    data: Path  # the benchmark folder (site-1, site-2, ...)
    sites: int = 2
    base_llm: Path | None = None
    policies: Path | None = None  # a folder of hospital policy files installed at every site
    timeout: float = 3600.0  # for the job

    def site_names(self) -> list[str]:
        return [f"site-{k}" for k in range(1, self.sites + 1)]

    def validate(self) -> None:
        if not (Path(self.job_dir) / "meta.json").is_file():
            raise ConfigError(f"{self.job_dir}: not an exported job folder (no meta.json); "
                              f"write one with `python jobs/fedmrg/job.py --export --export-dir DIR`")
        missing = [s for s in self.site_names() if not (Path(self.data) / s / "annotation.json").is_file()]
        if missing:
            raise ConfigError(f"{self.data}: no benchmark folder for {', '.join(missing)} (annotation.json)")
        if self.base_llm and not (Path(self.base_llm) / "config.json").is_file():
            raise ConfigError(f"{self.base_llm}: not a model folder (no config.json)")


def run_poc(plan: PocRun, echo: Callable[[str], None] = print) -> JobOutcome:
    """Prepare, wire, start, submit, follow, download, and stop: the returned outcome has the final
    status and the downloaded folder. Every process started is stopped before this returns or raises."""
    plan.validate()
    system = PocSystem(plan.workspace, plan.site_names())
    with system:
        echo(f"preparing a POC federation with {plan.sites} sites in {system.poc_dir}")
        system.prepare()
        allow_fedmrg_components(system.kit("server") / "local")
        sites = {}
        for site in system.sites:
            system.wire_site(site, Path(plan.data) / site, plan.base_llm, plan.policies)
            sites[site] = {"data_dir": str((Path(plan.data) / site).resolve()),
                           "state_dir": str(system.kit(site) / "fedmrg-state")}
        (system.workspace / "sites.yaml").write_text(yaml.safe_dump(sites), encoding="utf-8")
        if plan.policies:
            echo(f"site policies from {plan.policies} installed at every site")
        echo("starting the server and the sites (nvflare poc start)")
        system.start()
        outcome = submit_and_follow(system, Path(plan.job_dir).resolve(), plan.timeout,
                                    system.workspace / "results", echo)
        echo("stopping the POC federation")
    return outcome
