"""provisioning/: the consortium's project.yml gives working startup kits, and the site policy
templates are accepted by FLARE 2.9's own loaders and do what provisioning/README.md says."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import pytest
import yaml
from cryptography import x509
from cryptography.x509.oid import NameOID
from nvflare.apis.app_validation import AppValidationKey
from nvflare.apis.fl_constant import FilterKey
from nvflare.apis.fl_exception import UnsafeComponentError
from nvflare.apis.workspace import Workspace
from nvflare.app_common.default_component_policy import DEFAULT_CLASS_ALLOW_LIST
from nvflare.app_common.widgets.component_path_authorizer import CLASS_ALLOW_LIST, ComponentPathAuthorizer
from nvflare.fuel.sec.authz import AuthorizationService, AuthzContext, Person
from nvflare.private.fed.app.fl_conf import create_privacy_manager
from nvflare.private.fed.utils.app_authz import AppAuthzService
from nvflare.security.security import FLAuthorizer

from fedmrg.ops.poc import PocSystem, end_processes, processes_under

REPO = Path(__file__).resolve().parents[1]
PROVISIONING = REPO / "provisioning"
BIN = Path(sys.executable).parent  # the environment the tests run in holds nvflare and fedmrg
SITE_POLICIES = ("authorization.json", "privacy.json", "resources.json")
ROLES = ("project_admin", "org_admin", "lead", "member")


def project() -> dict:
    return yaml.safe_load((PROVISIONING / "project.yml").read_text(encoding="utf-8"))


def participants(spec: dict, kind: str) -> list[dict]:
    return [p for p in spec["participants"] if p["type"] == kind]


def template(name: str) -> dict:
    return json.loads((PROVISIONING / name).read_text(encoding="utf-8"))


def tool_env(home: Path) -> dict[str, str]:
    """This environment's nvflare and python first on PATH, HOME in a temporary folder."""
    home.mkdir(parents=True, exist_ok=True)
    return {
        **os.environ,
        "HOME": str(home),
        "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",
        "OMP_NUM_THREADS": "1",
    }


def provision(spec_file: Path, workspace: Path, home: Path) -> Path:
    """Run `nvflare provision`; the folder holding one kit per participant."""
    result = subprocess.run(
        [str(BIN / "nvflare"), "provision", "-p", str(spec_file), "-w", str(workspace), "--force"],
        env=tool_env(home),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    name = yaml.safe_load(spec_file.read_text(encoding="utf-8"))["name"]
    return workspace / name / "prod_00"


@pytest.fixture(scope="module")
def provisioned(tmp_path_factory) -> tuple[Path, Path]:
    """The consortium's kits from provisioning/project.yml, and the HOME the command ran with."""
    root = tmp_path_factory.mktemp("provision")
    return provision(PROVISIONING / "project.yml", root / "ws", root / "home"), root / "home"


def site_workspace(kits: Path, site: str, dest: Path, with_policies: bool = True) -> Workspace:
    """A copy of a site's kit, with the policy templates installed in local/ as README says."""
    shutil.copytree(kits / site, dest)
    if with_policies:
        for name in SITE_POLICIES:
            shutil.copy(PROVISIONING / name, dest / "local" / name)
    return Workspace(root_dir=str(dest), site_name=site)


# ----------------------------------------------------------------------------- project.yml
def test_project_is_three_hospitals_with_their_own_admins():
    spec = project()
    assert spec["api_version"] == 3
    (server,) = participants(spec, "server")
    assert server["name"].endswith(".example.org") and (server["fed_learn_port"], server["admin_port"]) == (8002, 8003)
    sites = participants(spec, "client")
    assert len(sites) == 3 and len({s["org"] for s in sites} | {server["org"]}) == 4
    admins = participants(spec, "admin")
    assert all(a["name"].endswith(".example.org") for a in admins)
    assert [a["org"] for a in admins if a["role"] == "project_admin"] == [server["org"]]
    for site in sites:
        roles = sorted(a["role"] for a in admins if a["org"] == site["org"])
        assert roles == ["lead", "org_admin"], site["name"]
    builders = [b["path"].rsplit(".", 1)[1] for b in spec["builders"]]
    assert builders == ["WorkspaceBuilder", "StaticFileBuilder", "CertBuilder", "SignatureBuilder"]


def _subject(cert: x509.Certificate, oid) -> str:
    return cert.subject.get_attributes_for_oid(oid)[0].value


def test_provision_writes_a_kit_with_certificates_for_every_participant(provisioned):
    kits, home = provisioned
    spec = project()
    expected = {
        "server": ("server.crt", "server.key", "rootCA.pem", "fed_server.json", "start.sh", "sub_start.sh"),
        "client": ("client.crt", "client.key", "rootCA.pem", "fed_client.json", "start.sh", "sub_start.sh"),
        "admin": ("client.crt", "client.key", "rootCA.pem", "fed_admin.json", "fl_admin.sh"),
    }
    assert sorted(p.name for p in kits.iterdir()) == sorted(p["name"] for p in spec["participants"])
    for participant in spec["participants"]:
        startup = kits / participant["name"] / "startup"
        missing = [f for f in expected[participant["type"]] if not (startup / f).is_file()]
        assert not missing, f"{participant['name']}: {missing}"
        root = x509.load_pem_x509_certificate((startup / "rootCA.pem").read_bytes())
        cert = x509.load_pem_x509_certificate((startup / expected[participant["type"]][0]).read_bytes())
        cert.verify_directly_issued_by(root)
        assert _subject(cert, NameOID.COMMON_NAME) == participant["name"]
        assert _subject(cert, NameOID.ORGANIZATION_NAME) == participant["org"]
        if participant["type"] == "admin":  # the role the sites' authorization.json sees
            assert _subject(cert, NameOID.UNSTRUCTURED_NAME) == participant["role"]
    assert not any(home.iterdir()), "provision wrote into HOME"


def test_kits_point_at_the_consortium_server(provisioned):
    kits, _ = provisioned
    (server,) = participants(project(), "server")
    host, fl_port, admin_port = server["name"], server["fed_learn_port"], server["admin_port"]
    client = json.loads((kits / "hospital-b" / "startup" / "fed_client.json").read_text())
    assert client["servers"][0]["service"]["target"] == f"{host}:{fl_port}" and client["client"]["fqsn"] == "hospital-b"
    admin = json.loads((kits / "lead@hospital-b.example.org" / "startup" / "fed_admin.json").read_text())["admin"]
    assert (admin["host"], admin["port"], admin["username"]) == (host, admin_port, "lead@hospital-b.example.org")
    fed_server = json.loads((kits / host / "startup" / "fed_server.json").read_text())["servers"][0]
    assert fed_server["admin_port"] == admin_port


# ------------------------------------------------------------------------ authorization.json
def authorize(
    policy: dict,
    right: str,
    role: str,
    user_org: str = "hospital_b",
    site_org: str = "hospital_a",
    submitter_org: str | None = None,
) -> bool:
    user = Person("someone@example.org", user_org, role)
    submitter = Person("lead@example.org", submitter_org or user_org, "lead")
    allowed, _ = FLAuthorizer(site_org, policy).authorize(AuthzContext(right=right, user=user, submitter=submitter))
    return allowed


def test_site_authorization_is_a_valid_flare_policy_with_the_intended_rights():
    policy = template("authorization.json")
    FLAuthorizer("hospital_a", policy)  # raises SyntaxError on anything FLARE does not accept
    assert sorted(policy["permissions"]) == sorted(ROLES)
    # who may run jobs at this hospital: the project admin and any hospital's lead
    assert [authorize(policy, "submit_job", role) for role in ROLES] == [True, False, True, False]
    # files in the site's workspace: only the hospital's own admins
    assert not authorize(policy, "shell_commands", "project_admin", user_org="cxr_consortium")
    assert authorize(policy, "shell_commands", "org_admin", user_org="hospital_a")
    assert not authorize(policy, "shell_commands", "lead", user_org="hospital_b")
    assert authorize(policy, "operate", "org_admin", user_org="hospital_a")
    assert not authorize(policy, "operate", "org_admin", user_org="hospital_b")
    assert authorize(policy, "view", "member")


def test_make_poc_gives_the_server_the_same_no_code_policy(tmp_path, monkeypatch):
    """FLARE's default server policy lets leads bring code: a job with code only in its server app
    would pass every site's check. `make poc` installs the hospital template at the server too."""
    system = PocSystem(tmp_path / "ws", ["site-1"])
    with system:
        system.prepare()
        assert system.secure_server(PROVISIONING) == ["authorization.json"]
        installed = json.loads((system.kit("server") / "local" / "authorization.json").read_text())
    monkeypatch.setattr(AuthorizationService, "the_authorizer", FLAuthorizer("cxr_consortium", installed))
    for role in ROLES:
        allowed, why = AppAuthzService.authorize_app_info({AppValidationKey.BYOC: True}, "x@example.org", "x", role)
        assert (allowed, why) == (False, "BYOC not permitted"), role


@pytest.mark.parametrize("role", ROLES)
def test_no_role_may_bring_its_own_code(role, provisioned, monkeypatch):
    """FLARE's own check at job deployment: a job with a custom/ folder needs the submitter's `byoc`."""
    kits, _ = provisioned
    byoc_job, plain_job = {AppValidationKey.BYOC: True}, {}
    monkeypatch.setattr(
        AuthorizationService, "the_authorizer", FLAuthorizer("hospital_a", template("authorization.json"))
    )
    assert AppAuthzService.authorize_app_info(byoc_job, "x@example.org", "hospital_a", role) == (
        False,
        "BYOC not permitted",
    )
    assert AppAuthzService.authorize_app_info(plain_job, "x@example.org", "hospital_a", role) == (True, "")
    # FLARE's default site policy (what the kit has without our template) lets leads bring code
    default = json.loads((kits / "hospital-a" / "local" / "authorization.json.default").read_text())
    monkeypatch.setattr(AuthorizationService, "the_authorizer", FLAuthorizer("hospital_a", default))
    allowed, _ = AppAuthzService.authorize_app_info(byoc_job, "x@example.org", "hospital_a", role)
    assert allowed == (role in ("project_admin", "lead"))


# ------------------------------------------------------------------------------ privacy.json
def test_privacy_template_forces_the_result_guard_on_every_job(provisioned, tmp_path):
    from fedmrg.fl.privacy import ResultGuard

    kits, _ = provisioned
    workspace = site_workspace(kits, "hospital-a", tmp_path / "hospital-a")
    manager = create_privacy_manager(workspace, names_only=False)  # what a site's job process loads
    assert manager.is_policy_defined()
    scope = manager.get_scope("")  # a job that names no scope gets the default one
    assert scope.name == "fedmrg" and set(manager.name_to_scopes) == {"fedmrg"}
    (guard,) = scope.task_result_filters[FilterKey.OUT]
    assert isinstance(guard, ResultGuard) and guard.max_result_mib == 1024 and not guard.refuse_other_tasks
    assert scope.task_result_filters[FilterKey.IN] == [] and scope.task_data_filters[FilterKey.IN] == []
    assert manager.get_scope("public") is None  # a job naming another scope is not deployed at this site


# ---------------------------------------------------------------------------- resources.json
def test_resources_template_is_flares_client_default_plus_the_fedmrg_classes(provisioned):
    """Regenerated from the installed FLARE and fedmrg: fails when either changed and the template did not."""
    from fedmrg.fl.packaging import COMPONENT_CLASSES

    kits, _ = provisioned
    expected = json.loads((kits / "hospital-a" / "local" / "resources.json.default").read_text())
    assert expected[CLASS_ALLOW_LIST] == list(DEFAULT_CLASS_ALLOW_LIST)
    expected[CLASS_ALLOW_LIST] += [name for name in COMPONENT_CLASSES if name not in DEFAULT_CLASS_ALLOW_LIST]
    assert template("resources.json") == expected


def component_paths(config) -> set[str]:
    """Every component class a job config names (at any depth, as FLARE's authorizer walks it)."""
    found = set()
    if isinstance(config, dict):
        if isinstance(config.get("path"), str):
            found.add(config["path"])
        for value in config.values():
            found |= component_paths(value)
    elif isinstance(config, list):
        for value in config:
            found |= component_paths(value)
    return found


def exported_job_paths(out: Path) -> set[str]:
    from fedmrg.config import load_config
    from fedmrg.fl.recipe import FedMRGRecipe

    baseline = {"fl.update": "dense", "model.adapters": "single", "model.contrastive": False}
    paths = set()
    quantized = {**baseline, "fl.quantization": "normfloat4"}
    for name, overrides in (("fedmrg", {}), ("fedavg_lora", baseline), ("fedavg_nf4", quantized)):
        FedMRGRecipe(load_config("tiny", overrides), name=name, sites=2).export(str(out))
        assert not list((out / name).rglob("custom")), "the job would need byoc"
        for config in (out / name).rglob("config_fed_*.json"):
            paths |= component_paths(json.loads(config.read_text()))
    return paths


def test_resources_template_admits_every_component_of_the_fedmrg_jobs(provisioned, tmp_path):
    kits, _ = provisioned
    paths = exported_job_paths(tmp_path / "jobs")
    assert {
        "fedmrg.fl.aggregator.DenseAggregator",
        "fedmrg.fl.executor.MRGExecutor",
        "fedmrg.fl.wire.WireMeter",
        "fedmrg.fl.quantization.HostQuantizer",
        "nvflare.app_opt.tracking.tb.tb_writer.TBWriter",
        "nvflare.app_common.widgets.convert_to_fed_event.ConvertToFedEvent",
        "nvflare.app_opt.tracking.tb.tb_receiver.TBAnalyticsReceiver",
    } <= paths
    workspace = site_workspace(kits, "hospital-a", tmp_path / "hospital-a")
    authorizer = ComponentPathAuthorizer()
    for path in sorted(paths):
        authorizer.authorize_component_config({"path": path}, workspace=workspace)
    with pytest.raises(UnsafeComponentError):
        authorizer.authorize_component_config({"path": "fedmrg.fl.site.SiteTrainer"}, workspace=workspace)
    bare = site_workspace(kits, "hospital-a", tmp_path / "bare", with_policies=False)
    with pytest.raises(UnsafeComponentError):  # FLARE's default list alone refuses the FedMRG job
        authorizer.authorize_component_config({"path": "fedmrg.fl.executor.MRGExecutor"}, workspace=bare)


# --------------------------------------------------------------------------- fedmrg_site.yaml
def test_site_settings_example_sets_every_setting_and_loads(tmp_path):
    import dataclasses

    from fedmrg.fl.site import SETTINGS_FILE, SiteSettings, load_site_settings

    raw = yaml.safe_load((PROVISIONING / SETTINGS_FILE).read_text(encoding="utf-8"))
    assert set(raw) == {f.name for f in dataclasses.fields(SiteSettings)}
    (tmp_path / "data").mkdir()
    local = tmp_path / "local"
    local.mkdir()
    (local / SETTINGS_FILE).write_text(yaml.safe_dump({**raw, "data_dir": str(tmp_path / "data")}), encoding="utf-8")
    settings, source = load_site_settings("hospital-a", local)
    assert source == str(local / SETTINGS_FILE)
    assert dataclasses.asdict(settings) == {**raw, "data_dir": str(tmp_path / "data")}


# ------------------------------------------------------------------- a running provisioned system
PROBE_JOB = {  # a job of FLARE classes only: its train result is not FedMRG's, so the guard refuses it
    "meta.json": {"name": "probe", "resource_spec": {}, "min_clients": 1, "deploy_map": {"app": ["@ALL"]}},
    "app/config/config_fed_server.json": {
        "format_version": 2,
        "workflows": [
            {
                "id": "controller",
                "path": "nvflare.app_common.workflows.fedavg.FedAvg",
                "args": {"num_clients": 1, "num_rounds": 1},
            }
        ],
        "components": [
            {"id": "persistor", "path": "nvflare.app_common.np.np_model_persistor.NPModelPersistor", "args": {}}
        ],
    },
    "app/config/config_fed_client.json": {
        "format_version": 2,
        "executors": [
            {"tasks": ["train"], "executor": {"path": "nvflare.app_common.np.np_trainer.NPTrainer", "args": {}}}
        ],
    },
}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


def local_project(root: Path) -> tuple[Path, dict]:
    """project.yml for this machine: server `localhost` on free ports, hospital-a, the project admin."""
    spec = project()
    keep = []
    for p in spec["participants"]:
        if p["type"] == "server":
            keep.append({**p, "name": "localhost", "fed_learn_port": free_port(), "admin_port": free_port()})
        elif p["name"] == "hospital-a" or p.get("role") == "project_admin":
            keep.append(p)
    spec["participants"] = keep
    path = root / "project.yml"
    path.write_text(yaml.safe_dump(spec), encoding="utf-8")
    return path, spec


def install_server_resources(server_kit: Path, storage: Path) -> None:
    """The server's resources.json as README says (FedMRG classes admitted), with its job and snapshot
    storage in the test's folder instead of FLARE's default /tmp/nvflare/."""
    from fedmrg.fl.packaging import COMPONENT_CLASSES, allow_fedmrg_components

    local = server_kit / "local"
    allow_fedmrg_components(local)  # the README's command
    resources = json.loads((local / "resources.json").read_text())
    assert set(COMPONENT_CLASSES) <= set(resources[CLASS_ALLOW_LIST]) and "job_manager" in json.dumps(resources)
    resources["snapshot_persistor"]["args"]["storage"]["args"]["root_dir"] = str(storage / "snapshot-storage")
    for component in resources["components"]:
        if component["id"] == "job_manager":
            component["args"]["uri_root"] = str(storage / "jobs-storage")
    (local / "resources.json").write_text(json.dumps(resources, indent=2))


def start(kit: Path, env: dict, log: Path) -> subprocess.Popen:
    """The kit's own start script in the foreground (`sub_start.sh --once`), in its own process group."""
    with open(log, "w") as out:
        return subprocess.Popen(
            ["bash", str(kit / "startup" / "sub_start.sh"), "--once"],
            cwd=kit,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )


def wait_until(condition, timeout: float, what: str, interval: float = 0.5):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            value = condition()
        except Exception:  # the system is still coming up
            value = None
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout:g} s waiting for {what}")


def stop(procs: list[subprocess.Popen], root: Path) -> None:
    """Last-resort cleanup: each started process group, then anything left that runs from ``root``."""
    for proc in procs:
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)
    end_processes(lambda: processes_under(root), grace=0)


@pytest.mark.slow
def test_provisioned_kits_start_connect_enforce_the_site_policies_and_shut_down(tmp_path):
    """Among the policies: the site's privacy.json applies the result guard although the site's class
    allow list (resources.json) would refuse the guard's class in a job, as privacy filters are exempt."""
    from nvflare.fuel.flare_api.flare_api import new_secure_session

    spec_file, spec = local_project(tmp_path)
    kits = provision(spec_file, tmp_path / "ws", tmp_path / "home")
    admin = next(p["name"] for p in spec["participants"] if p.get("role") == "project_admin")
    for name in SITE_POLICIES:
        shutil.copy(PROVISIONING / name, kits / "hospital-a" / "local" / name)
    (scope,) = template("privacy.json")["scopes"]
    (guard,) = scope["task_result_filters"]
    with pytest.raises(UnsafeComponentError):
        ComponentPathAuthorizer().authorize_component_config(
            guard, workspace=Workspace(root_dir=str(kits / "hospital-a"), site_name="hospital-a")
        )
    install_server_resources(kits / "localhost", tmp_path / "storage")
    for relative, content in PROBE_JOB.items():
        (tmp_path / "probe" / relative).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / "probe" / relative).write_text(json.dumps(content))
    env = tool_env(tmp_path / "home")
    env["TMPDIR"] = str(tmp_path / "tmp")  # the server's log receiver writes sites' streamed logs there
    (tmp_path / "tmp").mkdir()
    procs = []
    try:
        procs.append(start(kits / "localhost", env, tmp_path / "server.out"))
        procs.append(start(kits / "hospital-a", env, tmp_path / "site.out"))
        session = wait_until(lambda: new_secure_session(admin, str(kits / admin), timeout=5), 60, "the admin login")
        wait_until(
            lambda: "hospital-a" in [c.name for c in session.get_system_info().client_info], 30, "hospital-a to connect"
        )
        assert session.check_status("client")["client_status"] == [{"client_name": "hospital-a", "status": "no_jobs"}]

        job_id = session.submit_job(str(tmp_path / "probe"))
        session.monitor_job(job_id, timeout=90)
        assert session.get_job_meta(job_id)["status"] == "FINISHED:EXECUTION_EXCEPTION"
        site_log = (kits / "hospital-a" / job_id / "log.txt").read_text()  # the guard ran at the site
        assert "ResultRefused" in site_log and "unexpected meta keys: NUM_STEPS_CURRENT_ROUND" in site_log
        assert "submit result: TASK_RESULT_FILTER_ERROR" in (kits / "hospital-a" / job_id / "audit.log").read_text()
        with zipfile.ZipFile(tmp_path / "storage" / "jobs-storage" / job_id / "workspace") as saved:
            server_log = saved.read("log.txt").decode()
        assert "peer_rc=TASK_RESULT_FILTER_ERROR" in server_log
        assert "Result from hospital-a is bad, error code: TASK_RESULT_FILTER_ERROR" in server_log

        session.shutdown("all", wait=True, timeout=30)
        for proc in procs:
            assert proc.wait(timeout=30) == 0
        wait_until(lambda: not processes_under(tmp_path), 15, "every process of the system to exit")
    finally:
        stop(procs, tmp_path)
    assert not processes_under(tmp_path)
    assert (tmp_path / "tmp" / job_id / "hospital-a").is_dir()  # nothing written to the machine's /tmp
    assert not Path("/tmp/nvflare/jobs-storage", job_id).exists() and not Path("/tmp", job_id).exists()


def test_server_kit_moves_job_and_snapshot_storage_off_tmp_and_allows_fedmrg(
    provisioned, tmp_path, capsys, monkeypatch
):
    """A provisioned server keeps jobs and snapshots under /tmp/nvflare by default: a reboot may empty
    it and the server forgets every job. `fedmrg server-kit` moves both and says what is left."""
    import fedmrg.ops.server_kit as server_kit
    from fedmrg.cli import main
    from fedmrg.fl.packaging import COMPONENT_CLASSES

    kits, _ = provisioned
    kit = tmp_path / "server"
    shutil.copytree(kits / "fl.cxr-consortium.example.org", kit)
    assert main(["server-kit", str(kit)]) == 1  # FLARE's default: temporary storage
    assert "jobs store is /tmp/nvflare/jobs-storage, which a reboot may empty" in capsys.readouterr().out
    # this test's folders live under /tmp too; here only FLARE's default counts as temporary
    monkeypatch.setattr(server_kit, "TEMPORARY_ROOTS", ("/tmp/nvflare",))
    store = tmp_path / "store"
    assert main(["server-kit", str(kit), "--storage", str(store), "--policies", str(PROVISIONING)]) == 0
    resources = json.loads((kit / "local" / "resources.json").read_text())
    assert resources["snapshot_persistor"]["args"]["storage"]["args"]["root_dir"] == str(store / "snapshot-storage")
    job_manager = next(c for c in resources["components"] if c["id"] == "job_manager")
    assert job_manager["args"]["uri_root"] == str(store / "jobs-storage")
    assert set(COMPONENT_CLASSES) <= set(resources[CLASS_ALLOW_LIST])
    assert json.loads((kit / "local" / "authorization.json").read_text()) == template("authorization.json")
    assert "PASS" in capsys.readouterr().out
    assert main(["server-kit", str(kit), "--storage", "/tmp/nvflare/elsewhere"]) == 2  # refused: temporary
