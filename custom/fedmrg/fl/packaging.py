"""What a site must admit or receive to run a FedMRG job.

A job that brings no code names FedMRG's components by class path; a site admits them in the
``class_allow_list`` of its ``local/resources.json`` (:func:`allow_fedmrg_components`). A job
exported with ``--ship-code`` carries the package in each app's ``custom/`` folder instead
(:func:`ship_package`), which FLARE treats as bring-your-own-code.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import fedmrg
from fedmrg.errors import ConfigError
from fedmrg.io import load_json, write_json

# What a site's (and the server's) class_allow_list must admit for a FedMRG job that brings no code
# (the quantization filters: the dense baseline with fl.quantization).
COMPONENT_CLASSES = tuple(
    f"fedmrg.fl.{name}"
    for name in (
        "controller.FedMRGController",
        "aggregator.LowRankAggregator",
        "aggregator.DenseAggregator",
        "executor.MRGExecutor",
        "wire.WireMeter",
        "quantization.HostQuantizer",
        "quantization.HostDequantizer",
    )
)


def resources_file(local_dir: str | os.PathLike) -> Path | None:
    """The resources file FLARE reads from a workspace's ``local/``: ``resources.json``, else
    ``resources.json.default`` (a provisioned kit's components are there); None without either."""
    path = Path(local_dir) / "resources.json"
    return next((p for p in (path, path.with_name("resources.json.default")) if p.is_file()), None)


def allow_fedmrg_components(local_dir: str | os.PathLike) -> Path:
    """Add the FedMRG components to the ``class_allow_list`` of a workspace's ``local/resources.json``
    (FLARE's default list when the file has none), keeping everything else in the file."""
    from nvflare.app_common.default_component_policy import DEFAULT_CLASS_ALLOW_LIST
    from nvflare.app_common.widgets.component_path_authorizer import CLASS_ALLOW_LIST

    path = Path(local_dir) / "resources.json"
    source = resources_file(local_dir)
    resources = load_json(source) if source else {"format_version": 2}
    allowed = list(resources.get(CLASS_ALLOW_LIST, DEFAULT_CLASS_ALLOW_LIST))
    resources[CLASS_ALLOW_LIST] = allowed + [name for name in COMPONENT_CLASSES if name not in allowed]
    write_json(path, resources)
    return path


def ship_package(job_dir: str | os.PathLike) -> list[Path]:
    """Copy the installed ``fedmrg`` package into the ``custom/`` folder of every app of an exported job
    (sources and configs, no caches): the job then runs this code at sites that grant ``byoc``."""
    source = Path(fedmrg.__file__).resolve().parent
    apps = sorted(p for p in Path(job_dir).iterdir() if (p / "config").is_dir())
    if not apps:
        raise ConfigError(f"{job_dir}: no app folder (with config/) to ship the package into")
    for app in apps:
        target = app / "custom" / "fedmrg"
        shutil.rmtree(target, ignore_errors=True)
        shutil.copytree(source, target, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    return apps
