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

import json
import logging
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path

import psutil
import yaml

from fedmrg.errors import ConfigError, FedMRGError
from fedmrg.fl.packaging import allow_fedmrg_components
from fedmrg.fl.results import RESULTS_FILE
from fedmrg.fl.site import DEFAULT_STATE_DIR, SETTINGS_FILE
from fedmrg.io import replace_directory

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
        tmp = self.workspace / "tmp"  # FLARE's server stages the sites' streamed logs in the temp folder
        tmp.mkdir(parents=True, exist_ok=True)
        return {
            **os.environ,
            "NVFLARE_POC_WORKSPACE": str(self.poc_dir),
            "HOME": str(home),
            "TMPDIR": str(tmp),
            "PATH": bin_dir + os.pathsep + os.environ.get("PATH", ""),
            "OMP_NUM_THREADS": "1",
            "PYTHONUNBUFFERED": "1",
        }

    # ------------------------------------------------------------------------------ commands
    def nvflare(self, *args: str, timeout: float | None = None) -> str:
        """Run ``nvflare ARGS`` in this workspace's environment; a failure raises with its output."""
        command = [self.python, "-m", "nvflare.cli", *args]
        try:
            done = subprocess.run(
                command,
                env=self.env(),
                capture_output=True,
                text=True,
                timeout=timeout or self.timeout,
                stdin=subprocess.DEVNULL,
            )
        except subprocess.TimeoutExpired:
            raise PocError(f"`nvflare {' '.join(args)}` did not finish in {timeout or self.timeout:.0f} s") from None
        output = done.stdout + done.stderr
        if done.returncode != 0:
            raise PocError(f"`nvflare {' '.join(args)}` failed (exit {done.returncode}):\n{output.strip()[-2000:]}")
        return output

    def prepare(self) -> None:
        busy = [port for port in SERVER_PORTS if not port_is_free(port)]
        if busy:
            raise PocError(
                f"port {busy[0]} is in use (another POC or FLARE server?); stop it first "
                f"(`make poc-down`, or `nvflare poc stop` in its workspace) and try again"
            )
        self.nvflare("poc", "prepare", "-c", *self.sites, "--force")
        allow_fedmrg_components(self.kit("server") / "local")  # the server runs FedMRG's controller in every job
        log.info("POC prepared in %s (server, %s, admin kits)", self.prod_dir, ", ".join(self.sites))

    def start(self) -> None:
        self.started = True  # from here on, stop() has processes to end
        self.nvflare("poc", "start", "--timeout", str(int(self.timeout)), timeout=self.timeout + 30)
        log.info("POC started: server and %d sites connected", len(self.sites))

    def stop(self, grace: float = 30.0) -> list[int]:
        """Stop the federation; kill what is still running from the workspace after ``grace`` seconds.
        Returns the pids that had to be killed. Ctrl-C and SIGTERM wait until this is done."""
        if not self.started:
            return []
        with signals_deferred():
            try:
                self.nvflare("poc", "stop", timeout=grace + 30)
            except PocError as exc:
                log.warning("nvflare poc stop: %s", exc)
            finally:
                killed = end_processes(self.processes, grace)
                self.started = False
        busy = [port for port in SERVER_PORTS if not port_is_free(port)]
        if busy:
            log.warning("port %d is still in use after the POC stopped", busy[0])
        log.info(
            "POC stopped%s; ports %s free",
            f" ({len(killed)} processes killed)" if killed else "",
            "/".join(map(str, SERVER_PORTS)) if not busy else "NOT",
        )
        return killed

    def processes(self) -> list[psutil.Process]:
        """Every live process of the federation: server, clients, job workers and their watchdogs."""
        return processes_under(self.poc_dir)

    def __enter__(self) -> PocSystem:
        return self

    def __exit__(self, *exc_info) -> None:
        self.stop()

    def secure_server(self, policies: Path) -> list[str]:
        """Install the hospital authorization policy at the server too: FLARE's default server policy
        lets any lead bring code (``byoc``), and a job with code only in its server app would pass
        every site's check. The server's allow list already admits FedMRG's classes (:meth:`prepare`)."""
        source = Path(policies) / "authorization.json"
        if not source.is_file():
            return []
        shutil.copy2(source, self.kit("server") / "local" / source.name)
        return [source.name]

    # --------------------------------------------------------------------------------- sites
    def wire_site(self, site: str, data_dir: Path, base_llm: Path | None, policies: Path | None) -> dict[str, str]:
        """Write the site's settings into its kit and, with ``policies``, the hospital's policy files.
        Returns where the site's data and state are (a ``sites.yaml`` entry for the summary's examples)."""
        data = wire_site_kit(self.kit(site) / "local", data_dir, base_llm, policies)
        return {"data_dir": data, "state_dir": str(self.kit(site) / DEFAULT_STATE_DIR)}


def wire_site_kit(local: Path, data_dir: Path, base_llm: Path | None, policies: Path | None) -> str:
    """A site kit's ``local/``: its settings (data, base LLM, one thread) and, with ``policies``, the
    hospital's policy files; FedMRG's classes allowed where no policy's resources.json does it.
    Returns the data folder as the settings name it."""
    settings = {"data_dir": str(Path(data_dir).resolve()), "threads": 1}
    if base_llm:
        settings["base_llm"] = str(Path(base_llm).resolve())
    (local / SETTINGS_FILE).write_text(yaml.safe_dump(settings, sort_keys=True), encoding="utf-8")
    install_policies(local, policies)
    if not policies or not (Path(policies) / "resources.json").is_file():
        allow_fedmrg_components(local)
    return settings["data_dir"]


def policy_files(folder: str | os.PathLike) -> list[Path]:
    """The policy files a folder holds (at least one, else ConfigError)."""
    found = [Path(folder) / name for name in POLICY_FILES if (Path(folder) / name).is_file()]
    if not found:
        raise ConfigError(f"{folder}: none of {', '.join(POLICY_FILES)} found")
    return found


def install_policies(local_dir: Path, policies: Path | None) -> list[str]:
    """Copy the policy files found in ``policies`` into a kit's ``local/`` (they override FLARE's .default ones)."""
    if policies is None:
        return []
    copied = policy_files(policies)
    for path in copied:
        shutil.copy2(path, Path(local_dir) / path.name)
    return [path.name for path in copied]


def processes_under(folder: str | os.PathLike) -> list[psutil.Process]:
    """Live processes (other than this one) with a command-line argument that is ``folder`` or a path
    inside it: what FLARE starts from a workspace names its kit folders so (``-m <kit>``, scripts)."""
    root = str(Path(folder).resolve())
    inside = root + os.sep
    found = []
    for proc in psutil.process_iter(["pid", "cmdline"]):
        try:
            if proc.pid != os.getpid() and any(
                part == root or part.startswith(inside) for part in proc.info["cmdline"] or ()
            ):
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


def end_processes(list_processes: Callable[[], list[psutil.Process]], grace: float, passes: int = 3) -> list[int]:
    """Wait up to ``grace`` seconds for the listed processes to end by themselves, then terminate and
    kill those still alive; list again and repeat, since FLARE's watchdog script (``sub_start.sh``)
    restarts a process that dies. Returns the pids that had to be ended."""
    deadline = time.monotonic() + grace
    while list_processes() and time.monotonic() < deadline:
        time.sleep(0.5)
    ended = []
    for _ in range(passes):
        left = list_processes()
        if not left:
            break
        for proc in left:
            log.warning(
                "still running after the POC stopped, terminating: %d %s",
                proc.pid,
                " ".join(proc.info.get("cmdline") or [])[:160],
            )
            _signal(proc, signal.SIGTERM)
        _, alive = psutil.wait_procs(left, timeout=5)
        for proc in alive:
            _signal(proc, signal.SIGKILL)
        psutil.wait_procs(alive, timeout=5)
        ended += [proc.pid for proc in left]
    survivors = list_processes()
    if survivors:
        log.error("could not end processes %s; end them by hand", ", ".join(str(p.pid) for p in survivors))
    return ended


@contextmanager
def signals_deferred():
    """Hold Ctrl-C and SIGTERM while the federation is being stopped (a second Ctrl-C would otherwise
    leave it half stopped); a signal that arrives is logged and the stop goes on. Main thread only."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def note(signum, frame):
        log.warning("%s received: still stopping the federation", signal.Signals(signum).name)

    previous = {sig: signal.signal(sig, note) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _signal(proc: psutil.Process, sig: int) -> None:
    with suppress(psutil.NoSuchProcess):
        proc.send_signal(sig)


# ---------------------------------------------------------------------------------- the job
@dataclass
class JobOutcome:
    job_id: str
    status: str
    result_dir: Path | None  # the downloaded job folder (None when the download failed)

    @property
    def completed(self) -> bool:
        return self.status == FINISHED_OK


def submit_and_follow(
    system: PocSystem, job_dir: Path, timeout: float, download_to: Path, echo: Callable[[str], None] = print
) -> JobOutcome:
    """Submit ``job_dir`` as the POC's project admin, print the server's progress lines until the job
    ends (or ``timeout`` seconds pass: the job is then aborted), and download its result."""
    return submit_as(PROJECT_ADMIN, system.admin_kit, system.kit("server"), job_dir, timeout, download_to, echo)


def submit_as(
    admin: str,
    admin_kit: Path,
    server_kit: Path,
    job_dir: Path,
    timeout: float,
    download_to: Path,
    echo: Callable[[str], None] = print,
) -> JobOutcome:
    """Submit ``job_dir`` through the FLARE API with an admin's startup kit, print the progress lines
    of the server's job log (``server_kit`` is the server's workspace, on this machine) until the job
    ends or ``timeout`` seconds pass (it is then aborted), and download its result."""
    from nvflare.fuel.flare_api.flare_api import new_secure_session

    server_log = Path(server_kit) / "log.txt"
    # The FLARE API raises many exception types (connection, authentication, command errors): each
    # becomes one PocError line naming what failed and where the server's log is.
    try:
        session = new_secure_session(admin, str(admin_kit), timeout=30)
    except Exception as exc:  # noqa: BLE001
        raise PocError(f"cannot log in as {admin} with {admin_kit}: {exc} (server log: {server_log})") from None
    try:
        try:
            job_id = session.submit_job(str(job_dir))
        except Exception as exc:  # noqa: BLE001
            raise PocError(f"submit_job {job_dir} failed: {exc} (server log: {server_log})") from None
        echo(f"submitted job {job_id} ({Path(job_dir).name}) through the FLARE API as {admin}")
        status = follow_job(session, job_id, LogFollower(Path(server_kit) / job_id / "log.txt", echo), timeout, echo)
        return JobOutcome(job_id, status, download_result(session, job_id, download_to, echo))
    finally:
        session.close()


SCHEDULING_NOTICE_S = 60.0  # a job still waiting after this long gets one line saying what it waits for
LOST_AFTER_POLLS = 10  # consecutive failed status polls (2 s apart) before the server counts as lost


def follow_job(session, job_id: str, follower: LogFollower, timeout: float, echo: Callable[[str], None]) -> str:
    """Poll the job's status until it is FINISHED:* (aborting it after ``timeout`` s); its final status."""
    start = time.monotonic()
    poller = StatusPoller(session, job_id)
    status = poller.status("SUBMITTED")
    noticed = False
    while not status.startswith("FINISHED"):
        waited = time.monotonic() - start
        if waited > timeout:
            echo(f"job {job_id}: no end after {timeout:.0f} s; aborting it")
            session.abort_job(job_id)
            return poller.wait_finished(status, 60.0)
        if status == "SUBMITTED" and waited > SCHEDULING_NOTICE_S and not noticed:
            echo(
                f"job {job_id}: not scheduled after {waited:.0f} s; the server starts it once min_clients sites "
                f"are connected and grant its resource_spec (meta.json)"
            )
            noticed = True
        follower.poll()
        time.sleep(2)
        status = poller.status(status)
    follower.poll()
    return status


class StatusPoller:
    """``get_job_status`` that rides out a few failed polls (a busy server) before giving up."""

    def __init__(self, session, job_id: str) -> None:
        self.session, self.job_id, self.failures = session, job_id, 0

    def status(self, last: str) -> str:
        try:
            current = self.session.get_job_status(self.job_id)
        except Exception as exc:  # noqa: BLE001 -- see submit_and_follow
            self.failures += 1
            if self.failures >= LOST_AFTER_POLLS:
                raise PocError(f"job {self.job_id}: the server stopped answering ({exc})") from None
            log.warning("job %s: status poll failed (%s); trying again", self.job_id, exc)
            return last
        self.failures = 0
        return current or last

    def wait_finished(self, last: str, limit: float) -> str:
        deadline = time.monotonic() + limit
        status = self.status(last)
        while not status.startswith("FINISHED") and time.monotonic() < deadline:
            time.sleep(2)
            status = self.status(status)
        return status


def download_result(session, job_id: str, download_to: Path, echo: Callable[[str], None]) -> Path | None:
    """The downloaded job folder, or None (said on one line) when the server cannot give it."""
    try:
        location = session.download_job_result(job_id, destination=str(download_to))
    except Exception as exc:  # noqa: BLE001 -- see submit_and_follow; the status still tells the outcome
        echo(f"job {job_id}: download failed: {exc}")
        return None
    if not location:
        echo(f"job {job_id}: the server gave no result to download")
        return None
    return Path(location)


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
    timeout: float = 7200.0  # for the job (then it is aborted)

    def site_names(self) -> list[str]:
        return [f"site-{k}" for k in range(1, self.sites + 1)]

    def validate(self) -> None:
        """Refuse, before anything starts, a run that could not complete: a job this POC could never
        schedule, missing site data, unreadable policy files."""
        self._validate_job_meta()
        missing = [s for s in self.site_names() if not (Path(self.data) / s / "annotation.json").is_file()]
        if missing:
            raise ConfigError(f"{self.data}: no benchmark folder for {', '.join(missing)} (annotation.json)")
        if self.base_llm and not (Path(self.base_llm) / "config.json").is_file():
            raise ConfigError(f"{self.base_llm}: not a model folder (no config.json)")
        if self.policies is not None:
            self._validate_policies()

    def _validate_job_meta(self) -> None:
        path = Path(self.job_dir) / "meta.json"
        if not path.is_file():
            raise ConfigError(
                f"{self.job_dir}: not an exported job folder (no meta.json); "
                f"write one with `python jobs/fedmrg/job.py --export --export-dir DIR`"
            )
        meta = _read_json(path)
        if int(meta.get("min_clients", 1)) > self.sites:
            raise ConfigError(
                f"{path}: min_clients: the job needs {meta['min_clients']} sites, the POC has "
                f"{self.sites} (export it with --sites {self.sites})"
            )
        gpus = [
            spec.get("num_of_gpus", 0) for spec in (meta.get("resource_spec") or {}).values() if isinstance(spec, dict)
        ]
        if any(gpus):
            raise ConfigError(
                f"{path}: resource_spec: the job asks each site for {max(gpus)} GPU(s); POC sites "
                f"grant none (export it without --gpus-per-site)"
            )

    def _validate_policies(self) -> None:
        for path in policy_files(self.policies):
            _read_json(path)


def _read_json(path: Path) -> dict:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ConfigError(f"{path}: not readable JSON ({exc})") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: must be a JSON object")
    return data


def bring_up(plan: PocRun, system: PocSystem, echo: Callable[[str], None] = print) -> None:
    """Prepare the POC system, give each site its data (and the policies), and start it."""
    echo(f"preparing a POC federation with {plan.sites} sites in {system.poc_dir}")
    system.prepare()
    sites = {
        site: system.wire_site(site, Path(plan.data) / site, plan.base_llm, plan.policies) for site in system.sites
    }
    (system.workspace / "sites.yaml").write_text(yaml.safe_dump(sites), encoding="utf-8")
    if plan.policies:
        echo(f"site policies from {plan.policies} installed at every site")
        if system.secure_server(plan.policies):
            echo(f"the server's authorization policy from {plan.policies} (no job may bring code)")
    echo("starting the server and the sites (nvflare poc start)")
    system.start()


def run_poc(plan: PocRun, echo: Callable[[str], None] = print) -> JobOutcome:
    """Prepare, wire, start, submit, follow, download, and stop: the returned outcome has the final
    status and the downloaded folder. Every process started is stopped before this returns or raises."""
    plan.validate()
    system = PocSystem(plan.workspace, plan.site_names())
    with system:
        bring_up(plan, system, echo)
        outcome = submit_and_follow(
            system, Path(plan.job_dir).resolve(), plan.timeout, system.workspace / "results", echo
        )
        echo("stopping the POC federation")
    return outcome


@dataclass
class Console:
    """How to reach a running POC federation from FLARE's admin console."""

    command: str  # a shell line that opens the console as the project admin
    job_name: str  # what to type after submit_job (the job's folder in the console's upload folder)
    transfer_dir: Path


def poc_up(plan: PocRun, echo: Callable[[str], None] = print) -> Console:
    """Bring a POC federation up and leave it running for the admin console: the job is copied into
    the admin kit's ``transfer/`` folder (the console's upload folder), so ``submit_job <job name>``
    finds it. A failed step stops whatever had started; :func:`poc_down` stops the rest later."""
    plan.validate()
    system = PocSystem(plan.workspace, plan.site_names())
    job_dir = Path(plan.job_dir).resolve()
    transfer = system.admin_kit / "transfer"
    try:
        bring_up(plan, system, echo)
        replace_directory(
            transfer / job_dir.name, lambda staging: shutil.copytree(job_dir, staging, dirs_exist_ok=True)
        )
    except BaseException:
        system.stop()
        raise
    bin_dir = Path(system.python).parent
    return Console(
        command=f"PATH={bin_dir}:$PATH {system.admin_kit / 'startup' / 'fl_admin.sh'}",
        job_name=job_dir.name,
        transfer_dir=transfer,
    )


def poc_down(workspace: Path, echo: Callable[[str], None] = print) -> bool:
    """Stop the POC federation of ``workspace`` (``nvflare poc stop``, then end what is left).
    True when nothing of it runs any more and its ports are free."""
    system = PocSystem(workspace, [])
    if not system.poc_dir.is_dir():
        echo(f"no POC federation in {system.workspace} (no {system.poc_dir.name}/ folder); nothing to stop")
        return True
    if not system.processes():
        echo(f"no process of the POC federation in {system.workspace} is running")
    system.started = True  # started by an earlier `poc-up`: stop() ends it
    system.stop()
    stopped = not system.processes() and all(port_is_free(port) for port in SERVER_PORTS)
    echo(f"POC federation in {system.workspace} {'stopped' if stopped else 'NOT fully stopped (see the log above)'}")
    return stopped
