"""A provisioned server kit made ready for FedMRG: storage that survives a reboot, the FedMRG
classes allowed, and no job-supplied code.

A server kit's ``local/resources.json.default`` keeps submitted jobs (``job_manager``'s
``uri_root``) and the snapshots a restarted server resumes from (``snapshot_persistor``'s storage
``root_dir``) under ``/tmp/nvflare``, which many hosts empty at boot: after a reboot the server has
forgotten every job. :func:`prepare_server_kit` writes the kit's own ``local/resources.json`` with
both under a persistent folder, and :func:`storage_problems` says what is still temporary.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from fedmrg.errors import ConfigError
from fedmrg.fl.packaging import allow_fedmrg_components, resources_file
from fedmrg.io import load_json, write_json

TEMPORARY_ROOTS = ("/tmp", "/var/tmp", "/dev/shm")


def storage_paths(resources: dict) -> dict[str, str | None]:
    """Where a server's resources put its job store and its snapshots (None where not set)."""
    jobs = next((c for c in resources.get("components", []) if c.get("id") == "job_manager"), {})
    snapshots = resources.get("snapshot_persistor", {}).get("args", {}).get("storage", {}).get("args", {})
    return {"jobs": jobs.get("args", {}).get("uri_root"), "snapshots": snapshots.get("root_dir")}


def storage_problems(local_dir: str | os.PathLike) -> list[str]:
    """One line per server store that would not survive a reboot (or is not set at all)."""
    source = resources_file(local_dir)
    if source is None:
        return [f"{local_dir}: no resources.json or resources.json.default (not a server kit's local/ folder?)"]
    problems = []
    for store, path in storage_paths(load_json(source)).items():
        if not path:
            problems.append(f"{source}: the {store} store has no folder")
        elif not os.path.isabs(path) or any(path == r or path.startswith(r + "/") for r in TEMPORARY_ROOTS):
            problems.append(f"{source}: the {store} store is {path}, which a reboot may empty")
    return problems


def prepare_server_kit(
    local_dir: str | os.PathLike,
    storage_root: str | os.PathLike,
    policies: str | os.PathLike | None = None,
    temporary_ok: bool = False,
) -> Path:
    """Write the kit's ``local/resources.json``: its default with the job store and the snapshots under
    ``storage_root`` (created), and the FedMRG classes allowed; with ``policies``, install its
    ``authorization.json`` too (no role may bring code to the server). A storage root in a temporary
    folder is refused unless ``temporary_ok`` (a test rig that is thrown away anyway)."""
    local = Path(local_dir)
    source = resources_file(local)
    if source is None:
        raise ConfigError(f"{local}: no resources.json.default (not a server kit's local/ folder?)")
    root = Path(storage_root).resolve()
    if not temporary_ok and any(str(root) == r or str(root).startswith(r + "/") for r in TEMPORARY_ROOTS):
        raise ConfigError(f"{root}: a temporary folder; give storage that survives a reboot")
    resources = load_json(source)
    jobs = next((c for c in resources.get("components", []) if c.get("id") == "job_manager"), None)
    snapshots = resources.get("snapshot_persistor", {}).get("args", {}).get("storage", {}).get("args")
    if jobs is None or snapshots is None:
        raise ConfigError(f"{source}: no job_manager component or snapshot storage to move")
    jobs.setdefault("args", {})["uri_root"] = str(root / "jobs-storage")
    snapshots["root_dir"] = str(root / "snapshot-storage")
    for folder in ("jobs-storage", "snapshot-storage"):
        (root / folder).mkdir(parents=True, exist_ok=True)
    write_json(local / "resources.json", resources)
    allow_fedmrg_components(local)
    if policies is not None and (Path(policies) / "authorization.json").is_file():
        shutil.copy2(Path(policies) / "authorization.json", local / "authorization.json")
    return local / "resources.json"
