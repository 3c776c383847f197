"""What a hospital checks before it joins a FedMRG federation (``fedmrg site-check``).

Every check is a small function that returns a :class:`CheckResult`: a name, a status (PASS, WARN,
FAIL, or SKIP when an earlier failure leaves nothing to check), the reason, and the file or field
concerned. The checks follow the job's own rules rather than restating them:

- the site settings are read by :mod:`fedmrg.fl.site`'s loader, from the same places;
- the config is the job's (the ``config`` argument of the client app's ``MRGExecutor``) when a job
  folder is given, with the site's settings applied as the executor applies them;
- images are decoded by the trainer's dataset and transforms at the config's image size, and the
  train reports are cleaned and labeled as the trainer does for its diagnosis targets;
- the base LLM must pass :func:`fedmrg.model.llm.check_checkpoint` and its tokenizer must load;
- the kit's ``class_allow_list`` is matched the way FLARE's component authorizer matches it.

Reading every image of a real site would take long, so every file is checked to exist and only a
sample of studies is decoded.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import platform
import re
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

import fedmrg
from fedmrg.config import Config, load_config, named_configs, parse_config
from fedmrg.data.annotation import SPLITS, Annotation, read_annotation
from fedmrg.data.cleaning import clean_report
from fedmrg.data.dataset import StudyDataset
from fedmrg.data.transforms import eval_transforms, train_transforms
from fedmrg.errors import ConfigError, DataError
from fedmrg.fl.executor import MRGExecutor
from fedmrg.fl.packaging import COMPONENT_CLASSES, resources_file
from fedmrg.fl.site import (
    SETTINGS_ENV,
    SETTINGS_FILE,
    SiteSettings,
    load_site_settings,
    settings_candidates,
    site_run_config,
    site_state_root,
)
from fedmrg.io import load_json, write_json
from fedmrg.labels.labeler import label_matrix
from fedmrg.labels.observations import OBSERVATIONS, POSITIVE
from fedmrg.model.llm import WEIGHT_SUFFIXES, check_checkpoint, load_tokenizer, resolve_device, resolve_dtype
from fedmrg.versions import FEDMRG_VERSION_KEY, NVFLARE_VERSION_KEY, installed_versions, version_mismatches

log = logging.getLogger(__name__)

PASS, WARN, FAIL, SKIP = "PASS", "WARN", "FAIL", "SKIP"
DEFAULT_CONFIG = "demo"
DEFAULT_SAMPLE = 20  # studies decoded
DEFAULT_MIN_FREE_GIB = 5.0
LABEL_LIMIT = 5000  # train reports labeled (about 2 s on one core); a larger site gets an even sample
UNNAMED_SITE = "(unnamed)"  # no --site and no kit
_MAX_4BIT_ERROR = 0.25  # relative error of an NF4 matmul of random matrices is about 0.1


@dataclass
class CheckResult:
    """One line of the report."""

    name: str
    status: str
    detail: str
    where: str = ""  # the file, folder or field concerned


@dataclass
class CheckRequest:
    """What to check (the ``fedmrg site-check`` options)."""

    kit: Path | None = None
    settings_file: Path | None = None
    site: str | None = None
    job: Path | None = None
    config: str | None = None
    min_free_gib: float = DEFAULT_MIN_FREE_GIB
    sample: int = DEFAULT_SAMPLE


@dataclass
class JobInfo:
    """What a site needs to know of an exported FLARE job."""

    folder: Path
    meta_path: Path
    meta: dict[str, Any]
    client_config_path: Path
    config: Config
    base_llm: str | None  # the MRGExecutor's base_llm argument (a site's setting wins)
    component_paths: list[str]  # every class the client app builds
    ships_code: bool  # the app carries a custom/ folder: FLARE treats it as bring-your-own-code (byoc)


@dataclass
class SiteReport:
    """All results, with what they were checked against."""

    site: str | None
    config_source: str
    results: list[CheckResult] = field(default_factory=list)

    @property
    def failed(self) -> bool:
        return any(r.status == FAIL for r in self.results)

    def to_dict(self) -> dict[str, Any]:
        counts = {status: sum(r.status == status for r in self.results) for status in (PASS, WARN, FAIL, SKIP)}
        return {
            "site": self.site,
            "config": self.config_source,
            "ok": not self.failed,
            "counts": counts,
            "checks": [dataclasses.asdict(r) for r in self.results],
        }


# ------------------------------------------------------------------------------------ the run
def run_site_check(request: CheckRequest) -> SiteReport:
    """Run every check; a job or config that cannot be read at all is a FedMRGError (a usage error)."""
    results: list[CheckResult] = []
    kit_site = None
    if request.kit is not None:
        kit_result, kit_site = check_kit(request.kit, request.site)
        results.append(kit_result)
    site = request.site or kit_site
    job, cfg, config_source = _job_and_config(request, site)
    log.debug("checking site %s against %s", site, config_source)
    if request.kit is not None:
        results.append(check_allow_list(request.kit / "local", job))
    settings_result, settings, settings_source = check_settings(site, request.kit, request.settings_file)
    results.append(settings_result)
    if settings is None:
        results.extend(CheckResult(name, SKIP, "needs valid site settings") for name in _NEED_SETTINGS)
    else:
        results.extend(_checks_with_settings(request, settings, settings_source, job, cfg, config_source))
    results.extend(check_versions(job))
    for result in results:
        log.debug("%s %s: %s", result.status, result.name, result.detail)
    return SiteReport(site=site, config_source=config_source, results=results)


_NEED_SETTINGS = (
    "data folder",
    "annotation",
    "splits",
    "image files",
    "images",
    "labels",
    "base LLM",
    "device",
    "4-bit",
    "disk",
)


def _job_and_config(request: CheckRequest, site: str | None) -> tuple[JobInfo | None, Config, str]:
    """The job (if any), the config its sites run, and where that config was read."""
    if request.job is not None and request.config is not None:
        raise ConfigError("give --job or --config, not both: a job's sites run the job's own config")
    if request.job is not None:
        job = read_job(request.job, site)
        return job, job.config, str(job.client_config_path)
    name = request.config or DEFAULT_CONFIG
    return None, load_config(name), f"config '{name}'" if name in named_configs() else name


def _checks_with_settings(
    request: CheckRequest,
    settings: SiteSettings,
    settings_source: str,
    job: JobInfo | None,
    cfg: Config,
    config_source: str,
) -> list[CheckResult]:
    """Data, base LLM, device, 4-bit and disk, with the config as this site's trainer would see it."""
    cfg = site_run_config(cfg, settings, job.base_llm if job else None, set_threads=False)
    results = check_data(Path(settings.data_dir), cfg, request.sample)
    results.append(check_base_llm(cfg.model.base_llm, _base_llm_source(settings, settings_source, job, config_source)))
    device_where = f"{settings_source}: device" if settings.device else f"{config_source}: train.device"
    device_result, device = check_device(cfg.train.device, device_where)
    results.append(device_result)
    results.append(
        check_4bit(cfg, device, config_source)
        if device is not None
        else CheckResult("4-bit", SKIP, "needs a usable device")
    )
    results.append(check_disk(*_state_folder(settings, request.kit), request.min_free_gib))
    return results


def _base_llm_source(settings: SiteSettings, settings_source: str, job: JobInfo | None, config_source: str) -> str:
    if settings.base_llm:
        return f"{settings_source}: base_llm"
    if job is not None and job.base_llm and not job.config.model.base_llm:
        return f"{job.client_config_path}: MRGExecutor base_llm"
    return f"{config_source}: model.base_llm"


def _state_folder(settings: SiteSettings, kit: Path | None) -> tuple[Path, str]:
    """Where the executor keeps the site's state (the kit is the site's workspace; without a kit, the
    current folder stands for it), and why there."""
    if settings.state_dir:
        why = "the state_dir setting"
    elif kit is not None:
        why = "the kit's default state folder"
    else:
        why = "no --kit and no state_dir setting: the default state folder in the current folder"
    return site_state_root(settings, kit if kit is not None else Path.cwd()), why


# -------------------------------------------------------------------------------------- the kit
def kit_site_name(kit: Path) -> tuple[str | None, str]:
    """The site name a provisioned kit runs as, and where it was read: ``client.fqsn`` in
    ``startup/fed_client.json`` (FLARE 2.9), else the ``uid=`` its ``sub_start.sh`` passes."""
    client_json = kit / "startup" / "fed_client.json"
    try:
        client = load_json(client_json, what="fed_client.json").get("client", {})
    except (DataError, AttributeError):
        client = {}
    if isinstance(client, dict) and isinstance(client.get("fqsn"), str) and client["fqsn"]:
        return client["fqsn"], f"{client_json}: client.fqsn"
    sub_start = kit / "startup" / "sub_start.sh"
    if sub_start.is_file():
        match = re.search(r"\buid=([\w.@-]+)", sub_start.read_text(encoding="utf-8", errors="replace"))
        if match:
            return match.group(1), f"{sub_start}: uid"
    return None, str(client_json)


def check_kit(kit: Path, site: str | None) -> tuple[CheckResult, str | None]:
    """The startup kit: startup/fed_client.json with the site's name, the files it names, local/."""
    startup, client_json = kit / "startup", kit / "startup" / "fed_client.json"
    if not startup.is_dir():
        return CheckResult("kit", FAIL, "no startup/ folder: not a FLARE site kit", str(kit)), None
    try:
        data = load_json(client_json, what="fed_client.json (the client's startup configuration)")
    except DataError as exc:
        return CheckResult("kit", FAIL, str(exc), str(client_json)), None
    client = data.get("client") if isinstance(data, dict) else None
    if not isinstance(client, dict):
        return CheckResult("kit", FAIL, "no 'client' section: not a client kit", str(client_json)), None
    name, name_source = kit_site_name(kit)
    if name is None:
        return CheckResult(
            "kit", FAIL, "the site name is in neither client.fqsn nor sub_start.sh's uid=", str(client_json)
        ), None
    if site is not None and site != name:
        return CheckResult("kit", FAIL, f"the kit runs as site {name!r}, but --site says {site!r}", name_source), name
    missing = [
        f"{key} {client[key]}"
        for key in ("ssl_cert", "ssl_private_key", "ssl_root_cert")
        if isinstance(client.get(key), str) and not (startup / client[key]).is_file()
    ]
    if missing:
        return CheckResult(
            "kit",
            FAIL,
            f"site {name}: files named in fed_client.json are missing from startup/: {', '.join(missing)}",
            str(client_json),
        ), name
    servers_problem = _servers_problem(data.get("servers", []))
    if servers_problem:
        return CheckResult("kit", FAIL, f"site {name}: servers {servers_problem}", f"{client_json}: servers"), name
    if not (kit / "local").is_dir():
        return CheckResult(
            "kit", FAIL, f"site {name}: no local/ folder (site policies, {SETTINGS_FILE})", str(kit)
        ), name
    return CheckResult(
        "kit", PASS, f"site {name}, server {_server_address(data)}, certificates present", name_source
    ), name


def _servers_problem(servers: Any) -> str | None:
    """Why fed_client.json's ``servers`` cannot be read as FLARE's client reads it (a list whose first
    entry is an object with a ``service`` object), or None."""
    if not isinstance(servers, list):
        return f"must be a list of server objects, not {type(servers).__name__}"
    if servers and not isinstance(servers[0], dict):
        return f"[0] must be a server object, not {type(servers[0]).__name__}"
    if servers and not isinstance(servers[0].get("service", {}), dict):
        return f"[0].service must be an object, not {type(servers[0]['service']).__name__}"
    return None


def _server_address(client_json: dict) -> str:
    """The first server's target and the client's connection security (``servers`` already checked)."""
    servers = client_json.get("servers", [])
    service = servers[0].get("service", {}) if servers else {}
    security = client_json["client"].get("connection_security")
    return f"{service.get('target', '?')}" + (f" ({security})" if security else "")


def check_allow_list(local_dir: Path, job: JobInfo | None) -> CheckResult:
    """Whether FLARE would build the job's client components from the site's class_allow_list (a job
    with code of its own is not checked against it: FLARE treats it as bring-your-own-code)."""
    from nvflare.app_common.default_component_policy import DEFAULT_CLASS_ALLOW_LIST
    from nvflare.app_common.widgets.component_path_authorizer import (
        ALLOW_ALL,
        CLASS_ALLOW_LIST,
        CLASS_LIST_ENFORCEMENT_MODE,
        ComponentPathAuthorizer,
    )

    if job is not None and job.ships_code:
        return CheckResult(
            "allow list",
            PASS,
            "the job ships its own code (custom/): FLARE skips the allow list, "
            "but the submitter needs the byoc right in this site's authorization policy",
            str(local_dir),
        )
    source = resources_file(local_dir)
    try:
        resources = load_json(source, what="resources.json") if source else {}
    except DataError as exc:
        return CheckResult("allow list", FAIL, str(exc), str(source))
    if not isinstance(resources, dict):
        return CheckResult("allow list", FAIL, "must be a JSON object", str(source))
    allowed = resources.get(CLASS_ALLOW_LIST, list(DEFAULT_CLASS_ALLOW_LIST))
    where = f"{source}: {CLASS_ALLOW_LIST}" if source else f"{local_dir}: no resources.json (FLARE's default list)"
    if not isinstance(allowed, list):
        return CheckResult("allow list", FAIL, "must be a list of class paths or package prefixes", where)
    required = job.component_paths if job is not None else list(COMPONENT_CLASSES)
    if ALLOW_ALL in allowed:
        return CheckResult("allow list", PASS, f"'{ALLOW_ALL}' admits every class", where)
    refused = [
        path
        for path in required
        if not any(ComponentPathAuthorizer._path_matches_prefix(path, str(entry)) for entry in allowed)
    ]
    what = "the job's client classes" if job is not None else "the FedMRG classes"
    if not refused:
        return CheckResult("allow list", PASS, f"admits {what} ({len(required)})", where)
    listed = ", ".join(refused)
    if resources.get(CLASS_LIST_ENFORCEMENT_MODE) == "warn":
        return CheckResult(
            "allow list",
            PASS,
            f"does not list {listed}, but {CLASS_LIST_ENFORCEMENT_MODE} is 'warn': FLARE builds them with a warning",
            where,
        )
    remedy = (
        "add them to the list (as fedmrg.fl.packaging.allow_fedmrg_components does), or ship the code "
        "(--ship-code) to a site that grants byoc"
    )
    if job is not None:
        return CheckResult(
            "allow list",
            FAIL,
            f"does not admit {listed}: FLARE refuses this job here, as it brings no code; {remedy}",
            where,
        )
    return CheckResult(
        "allow list", WARN, f"does not admit {listed}: jobs that bring no code will be refused here; {remedy}", where
    )


# -------------------------------------------------------------------------------------- the job
def find_job_folder(path: Path) -> Path:
    """The job folder (with meta.json): ``path`` itself, or the one job inside an export folder."""
    if (path / "meta.json").is_file():
        return path
    inside = sorted(p for p in path.glob("*/meta.json")) if path.is_dir() else []
    if len(inside) == 1:
        return inside[0].parent
    if not path.is_dir():
        raise ConfigError(f"{path}: no such job folder")
    found = f"; it holds {len(inside)} jobs, give one of them" if inside else ""
    raise ConfigError(f"{path}: no meta.json, so not an exported FLARE job folder{found}")


def read_job(path: Path, site: str | None) -> JobInfo:
    """The parts of an exported job a site runs: its meta and the config of the client app this site gets."""

    folder = find_job_folder(path)
    meta_path = folder / "meta.json"
    meta = load_json(meta_path, what="job meta.json")
    if not isinstance(meta, dict):
        raise ConfigError(f"{meta_path}: must be a JSON object")
    app = _client_app(folder, meta, site)
    config_path = folder / app / "config" / "config_fed_client.json"
    client = load_json(config_path, what="client app config")
    components = _component_configs(client)
    executor_path = f"{MRGExecutor.__module__}.{MRGExecutor.__qualname__}"
    executors = [c for c in components if _component_path(c) == executor_path]
    if not executors:
        raise ConfigError(f"{config_path}: no {executor_path} component, so not a FedMRG job")
    args = executors[0].get("args", {})
    if not isinstance(args, dict):
        raise ConfigError(f"{config_path}: {executor_path}: args must be an object, not {type(args).__name__}")
    if not isinstance(args.get("config"), dict):
        raise ConfigError(f"{config_path}: {executor_path}: args.config must be the job's config mapping")
    config = parse_config(args["config"], f"{config_path}: {executor_path} config")
    custom = folder / app / "custom"
    return JobInfo(
        folder=folder,
        meta_path=meta_path,
        meta=meta,
        client_config_path=config_path,
        config=config,
        base_llm=args.get("base_llm"),
        component_paths=[p for c in components if (p := _component_path(c))],
        ships_code=custom.is_dir() and any(custom.iterdir()),
    )


def _client_app(folder: Path, meta: dict, site: str | None) -> str:
    """The app the job's deploy_map sends to ``site`` (to every site: ``@ALL``)."""
    deploy_map = meta.get("deploy_map") or {}
    if not isinstance(deploy_map, dict):
        raise ConfigError(f"{folder / 'meta.json'}: deploy_map must be an object")
    apps = [app for app, sites in deploy_map.items() if isinstance(sites, list) and ("@ALL" in sites or site in sites)]
    if not deploy_map:
        apps = sorted(p.parent.parent.name for p in folder.glob("*/config/config_fed_client.json"))
    apps = [app for app in apps if (folder / app / "config" / "config_fed_client.json").is_file()]
    if not apps:
        raise ConfigError(
            f"{folder / 'meta.json'}: no client app for site {site or UNNAMED_SITE} "
            "(deploy_map, and app/config/config_fed_client.json)"
        )
    return apps[0]


def _component_configs(client: Any) -> list[dict]:
    """Every component the client app builds: executors, components, task data/result filters."""
    if not isinstance(client, dict):
        return []
    found = [e.get("executor") for e in client.get("executors") or [] if isinstance(e, dict)]
    found += list(client.get("components") or [])
    for key in ("task_data_filters", "task_result_filters"):
        for entry in client.get(key) or []:
            found += list(entry.get("filters") or []) if isinstance(entry, dict) else []
    return [c for c in found if isinstance(c, dict)]


def _component_path(component: dict) -> str | None:
    path = component.get("path") or component.get("class_path")
    return path if isinstance(path, str) else None


# ---------------------------------------------------------------------------------- settings
def check_settings(
    site: str | None, kit: Path | None, settings_file: Path | None
) -> tuple[CheckResult, SiteSettings | None, str]:
    """The site's settings, read as the executor reads them (``--settings`` names the file instead)."""
    local_dir = kit / "local" if kit is not None else None
    where = _settings_candidate(local_dir, settings_file)
    try:
        settings, source = load_site_settings(site or UNNAMED_SITE, local_dir, settings_file)
    except ConfigError as exc:
        hint = " (give --site NAME)" if site is None and "nor a section for site" in str(exc) else ""
        return CheckResult("settings", FAIL, f"{exc}{hint}", where), None, where
    chosen = {k: v for k, v in dataclasses.asdict(settings).items() if v is not None}
    return CheckResult("settings", PASS, ", ".join(f"{k} {v}" for k, v in chosen.items()), source), settings, source


def _settings_candidate(local_dir: Path | None, settings_file: Path | None) -> str:
    """The file the loader reads (else the first it looks for), for messages."""
    candidates = settings_candidates(local_dir, settings_file)
    chosen = next((p for p in candidates if p.is_file()), candidates[0] if candidates else None)
    return str(chosen) if chosen is not None else f"${SETTINGS_ENV}"


# -------------------------------------------------------------------------------------- data
def check_data(data_dir: Path, cfg: Config, sample: int) -> list[CheckResult]:
    """The site's data: folder, annotation.json, splits, image files, a decoded sample, labels."""
    folder = check_data_folder(data_dir)
    if folder.status == FAIL:
        return [folder] + [
            CheckResult(n, SKIP, "needs the data folder")
            for n in ("annotation", "splits", "image files", "images", "labels")
        ]
    annotation_result, annotation = check_annotation(data_dir)
    if annotation is None:
        return [folder, annotation_result] + [
            CheckResult(n, SKIP, "needs a valid annotation.json") for n in ("splits", "image files", "images", "labels")
        ]
    return [
        folder,
        annotation_result,
        check_splits(annotation),
        check_image_files(annotation),
        check_image_decoding(annotation, cfg, sample),
        check_labels(annotation, cfg),
    ]


def check_data_folder(data_dir: Path) -> CheckResult:
    if not data_dir.is_dir():
        return CheckResult("data folder", FAIL, "not a folder", str(data_dir))
    if not os.access(data_dir, os.R_OK | os.X_OK):
        return CheckResult("data folder", FAIL, "not readable by this user", str(data_dir))
    if not (data_dir / "annotation.json").is_file():
        return CheckResult(
            "data folder", FAIL, "no annotation.json (the layout: annotation.json + images/)", str(data_dir)
        )
    return CheckResult("data folder", PASS, "readable, with annotation.json", str(data_dir))


def check_annotation(data_dir: Path) -> tuple[CheckResult, Annotation | None]:
    """annotation.json's schema (image files are checked apart, so that all missing ones are counted)."""
    path = data_dir / "annotation.json"
    try:
        annotation = read_annotation(path, check_images=False)
    except DataError as exc:
        return CheckResult("annotation", FAIL, str(exc), str(path)), None
    return CheckResult("annotation", PASS, f"valid, {len(annotation)} studies", str(path)), annotation


def check_splits(annotation: Annotation) -> CheckResult:
    """train is needed to train; without val the site sends no validation loss, without test its final
    scoring (the job's validate task) fails."""
    counts = {split: len(annotation.rows(split)) for split in SPLITS}
    detail = ", ".join(f"{split} {n}" for split, n in counts.items())
    where = str(annotation.path)
    if not counts["train"]:
        return CheckResult("splits", FAIL, f"{detail}: no train studies, nothing to train on", where)
    if not counts["val"] or not counts["test"]:
        missing = [s for s in ("val", "test") if not counts[s]]
        effect = {"val": "no validation loss from this site", "test": "the job's final scoring fails at this site"}
        return CheckResult(
            "splits", WARN, f"{detail}: " + "; ".join(f"no {s} studies, {effect[s]}" for s in missing), where
        )
    return CheckResult("splits", PASS, detail, where)


def _missing_images(annotation: Annotation) -> list[Path]:
    return [
        annotation.image_root / p
        for split in SPLITS
        for row in annotation.rows(split)
        for p in row["image_path"]
        if not (annotation.image_root / p).is_file()
    ]


def check_image_files(annotation: Annotation) -> CheckResult:
    """Every image file of every study exists (the trainer would silently skip such studies)."""
    total = sum(len(row["image_path"]) for split in SPLITS for row in annotation.rows(split))
    missing = _missing_images(annotation)
    where = str(annotation.image_root)
    if missing:
        return CheckResult(
            "image files", FAIL, f"{len(missing)} of {total} image files missing (first: {missing[0]})", str(missing[0])
        )
    return CheckResult("image files", PASS, f"all {total} files of {len(annotation)} studies present", where)


def even_sample(items: list, n: int) -> list:
    """``n`` items spread evenly over ``items`` (all of them when there are fewer): deterministic, and
    it reaches every split and every part of a folder."""
    if len(items) <= n:
        return list(items)
    return [items[i] for i in np.linspace(0, len(items) - 1, n).round().astype(int)]


def check_image_decoding(annotation: Annotation, cfg: Config, sample: int) -> CheckResult:
    """Decode a sample of studies with the trainer's dataset and transforms (train augmentations on
    train studies) and check the tensors: shape, finite values, not blank."""

    size, views = cfg.data.image_size, cfg.data.max_views
    transforms = {
        split: (
            train_transforms(size, annotation.image_root, views, augment=cfg.data.augment)
            if split == "train"
            else eval_transforms(size, annotation.image_root, views)
        )
        for split in SPLITS
    }
    present = [
        (split, row)
        for split in SPLITS
        for row in annotation.rows(split)
        if all((annotation.image_root / p).is_file() for p in row["image_path"])
    ]
    chosen = even_sample(present, sample)
    if not chosen:
        return CheckResult("images", SKIP, "no study with all its image files", str(annotation.image_root))
    problems: list[str] = []
    start = time.perf_counter()
    for split, row in chosen:
        problem = _decode_problem(StudyDataset([row], annotation.image_root, transforms[split]), row, size, views)
        if problem:
            problems.append(problem)
    seconds = time.perf_counter() - start
    where = str(annotation.image_root)
    if problems:
        return CheckResult(
            "images", FAIL, f"{len(problems)} of {len(chosen)} sampled studies unusable; first: {problems[0]}", where
        )
    per_study = seconds / len(chosen)
    train = len(annotation.rows("train"))
    return CheckResult(
        "images",
        PASS,
        f"{len(chosen)} studies decoded as the trainer does ({size} px, up to {views} "
        f"views) in {seconds:.2f} s: {per_study * 1000:.0f} ms a study, about "
        f"{_duration(per_study * train)} a pass over {train} train studies per loader process",
        where,
    )


def _duration(seconds: float) -> str:
    if seconds < 60:
        return f"{seconds:.1f} s"
    return f"{seconds / 60:.0f} min" if seconds < 3600 else f"{seconds / 3600:.1f} h"


def _decode_problem(dataset, row: dict, size: int, views: int) -> str | None:
    """Why the study cannot feed the model, or None."""
    try:
        image = dataset[0]["image"]
    except (DataError, RuntimeError, ValueError, OSError) as exc:
        return str(exc) if isinstance(exc, DataError) else f"study {row['id']!r}: {type(exc).__name__}: {exc}"
    expected = (min(len(row["image_path"]), views), 1, size, size)
    if tuple(image.shape) != expected:
        return f"study {row['id']!r}: tensor of shape {tuple(image.shape)}, expected {expected}"
    if not torch.isfinite(image).all():
        return f"study {row['id']!r}: NaN or infinite pixel values"
    blank = [i for i in range(image.shape[0]) if float(image[i].max() - image[i].min()) < 1e-3]
    if blank:
        return f"study {row['id']!r}: view {blank[0] + 1} is blank after decoding ({row['image_path'][blank[0]]})"
    return None


# Words nearly every English chest X-ray report has; a report with none of them is likely in another
# language, which the rule-based labeler cannot read (German "Kein Pneumothorax" would be labeled positive).
_ENGLISH = re.compile(r"\b(?:the|is|are|no|not|of|and|with|without|normal|there|lungs?|heart|clear)\b", re.I)


def check_labels(annotation: Annotation, cfg: Config) -> CheckResult:
    """Label the train reports as the trainer does for its diagnosis targets (cleaned, then the rule-based
    CheXpert labeler) and report what the diagnosis head would learn from."""

    rows = even_sample(annotation.rows("train"), LABEL_LIMIT)
    where = f"{annotation.path}: train reports"
    if not rows:
        return CheckResult("labels", SKIP, "no train reports", where)
    texts = [clean_report(str(row["report"]), cfg.data.dataset) for row in rows]
    empty = [row["id"] for row, text in zip(rows, texts) if not re.search(r"\w", text)]  # cleaning leaves " ."
    if len(empty) == len(rows):
        return CheckResult(
            "labels",
            FAIL,
            f"all {len(rows)} train reports are empty after cleaning "
            f"({cfg.data.dataset} rules): nothing to learn to write",
            where,
        )
    start = time.perf_counter()
    labels = label_matrix(texts)
    seconds = time.perf_counter() - start
    findings = [j for j, name in enumerate(OBSERVATIONS) if name != "No Finding"]
    with_finding = int((labels[:, findings] == POSITIVE).any(axis=1).sum())
    mentioned = int((~np.isnan(labels[:, findings])).any(axis=1).sum())
    prevalence = (labels == POSITIVE).mean(axis=0)
    top = sorted(((p, OBSERVATIONS[j]) for j, p in enumerate(prevalence) if j in findings and p > 0), reverse=True)[:4]
    scope = f"{len(rows)} train reports" + ("" if len(rows) == len(annotation.rows("train")) else " (an even sample)")
    detail = (
        f"{scope} labeled in {seconds:.1f} s: {with_finding} with a positive finding, No Finding "
        f"{prevalence[OBSERVATIONS.index('No Finding')]:.0%}; most frequent: "
        + (", ".join(f"{name} {p:.0%}" for p, name in top) or "none")
    )
    foreign = [row["id"] for row, text in zip(rows, texts) if re.search(r"\w", text) and not _ENGLISH.search(text)]
    if len(foreign) > 0.2 * len(rows):
        return CheckResult(
            "labels",
            WARN,
            f"{detail}; {len(foreign)} reports do not look English (first: id "
            f"{foreign[0]}): the labeler reads English only",
            where,
        )
    if mentioned == 0:
        return CheckResult(
            "labels",
            WARN,
            f"{detail}; the labeler found no CheXpert observation in any report (are "
            "they English chest X-ray findings?): the diagnosis head would learn nothing",
            where,
        )
    if empty:
        return CheckResult(
            "labels", WARN, f"{detail}; {len(empty)} reports are empty after cleaning (first: id {empty[0]})", where
        )
    return CheckResult("labels", PASS, detail, where)


# --------------------------------------------------------------------------- model and device
def check_base_llm(path: str | None, where: str) -> CheckResult:
    """A local checkpoint folder (config, tokenizer, weights) whose tokenizer loads; weights are not loaded."""

    if not path:
        return CheckResult(
            "base LLM", FAIL, "no base LLM: set base_llm in the site settings to the local checkpoint folder", where
        )
    try:
        folder = check_checkpoint(path)
        tokenizer = load_tokenizer(folder)
        config = load_json(folder / "config.json", what="LLM config.json")
    except (ConfigError, DataError) as exc:
        return CheckResult("base LLM", FAIL, str(exc), where)
    vocab = config.get("vocab_size") if isinstance(config, dict) else None
    if isinstance(vocab, int) and len(tokenizer) > vocab:
        return CheckResult(
            "base LLM",
            FAIL,
            f"{folder}: the tokenizer has {len(tokenizer)} tokens but the model "
            f"embeds only {vocab}: the tokenizer does not belong to these weights",
            where,
        )
    weights = sum(p.stat().st_size for p in folder.iterdir() if p.name.endswith(WEIGHT_SUFFIXES))
    family = config.get("model_type", "?") if isinstance(config, dict) else "?"
    size = f"{weights / 2**30:.1f} GiB" if weights >= 2**30 else f"{weights / 2**20:.1f} MiB"
    return CheckResult(
        "base LLM", PASS, f"{folder}: {family}, tokenizer of {len(tokenizer)} tokens, weights {size}", where
    )


def check_device(name: str, where: str) -> tuple[CheckResult, torch.device | None]:
    """The device the site trains on is there (``auto``: CUDA when there is one, else the CPU)."""

    try:
        device = resolve_device(name)
    except ConfigError as exc:
        return CheckResult("device", FAIL, str(exc), where), None
    chosen = f"{name} -> {device}" if name == "auto" else str(device)
    if device.type == "cuda":
        count = torch.cuda.device_count()
        if device.index is not None and device.index >= count:
            return CheckResult("device", FAIL, f"device {name!r}: this machine has {count} CUDA device(s)", where), None
        props = torch.cuda.get_device_properties(device)
        free, total = torch.cuda.mem_get_info(device)
        return CheckResult(
            "device",
            PASS,
            f"{chosen}: {props.name}, {total / 2**30:.1f} GiB ({free / 2**30:.1f} GiB "
            f"free), compute capability {props.major}.{props.minor}; {count} CUDA device(s)",
            where,
        ), device
    if device.type == "mps" and not torch.backends.mps.is_available():
        return CheckResult("device", FAIL, f"device {name!r}: MPS is not available on this machine", where), None
    return CheckResult("device", PASS, f"{chosen} ({os.cpu_count()} CPU cores)", where), device


def check_4bit(cfg: Config, device: torch.device, config_source: str = "config") -> CheckResult:
    """When the config loads the LLM in 4-bit: an NF4 matmul with bitsandbytes on the device, as the
    quantized layers compute it."""
    where = f"{config_source}: model.load_in_4bit"
    if not cfg.model.load_in_4bit:
        return CheckResult("4-bit", PASS, "not used (model.load_in_4bit: false)", where)
    try:
        import bitsandbytes as bnb
        import bitsandbytes.functional as bnb_functional
    except ImportError as exc:
        return CheckResult(
            "4-bit",
            FAIL,
            f"bitsandbytes cannot be imported ({exc}): pip install bitsandbytes, or set model.load_in_4bit: false",
            where,
        )

    try:
        dtype = resolve_dtype(cfg.model.dtype, device)
        generator = torch.Generator().manual_seed(0)
        weight = torch.randn(64, 128, generator=generator).to(device=device, dtype=dtype)
        inputs = torch.randn(4, 128, generator=generator).to(device=device, dtype=dtype)
        packed, state = bnb_functional.quantize_4bit(weight, quant_type="nf4", compress_statistics=True)
        output = bnb.matmul_4bit(inputs, packed.t(), quant_state=state).float()
        exact = inputs.float() @ weight.float().t()
        error = float((output - exact).norm() / exact.norm())
    except Exception as exc:  # noqa: BLE001 - bitsandbytes fails in many ways; any of them means no 4-bit here
        return CheckResult(
            "4-bit",
            FAIL,
            f"bitsandbytes {getattr(bnb, '__version__', '?')} NF4 on {device} failed: {type(exc).__name__}: {exc}",
            where,
        )
    if not np.isfinite(error) or error > _MAX_4BIT_ERROR:
        return CheckResult(
            "4-bit",
            FAIL,
            f"bitsandbytes {bnb.__version__} NF4 matmul on {device} is wrong (relative error {error:.2f})",
            where,
        )
    return CheckResult(
        "4-bit",
        PASS,
        f"bitsandbytes {bnb.__version__} NF4 matmul on {device} in {dtype} (relative error {error:.2f})",
        where,
    )


def check_disk(folder: Path, why: str, min_free_gib: float) -> CheckResult:
    """Free space and write access where the site's state will be kept (the folder may not exist yet)."""
    existing = folder
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    free = shutil.disk_usage(existing).free / 2**30
    where = f"{folder} ({why})"
    if not os.access(existing, os.W_OK):
        return CheckResult("disk", FAIL, f"{existing} is not writable by this user", where)
    if free < min_free_gib:
        return CheckResult("disk", FAIL, f"{free:.1f} GiB free, below the {min_free_gib:g} GiB asked for", where)
    return CheckResult("disk", PASS, f"{free:.1f} GiB free (at least {min_free_gib:g} asked), writable", where)


# ---------------------------------------------------------------------------------- versions
def software_versions() -> dict[str, str]:
    """The fedmrg that runs (its ``__version__``, as the executor reports it), nvflare, python and torch."""
    job_keys = installed_versions()
    return {
        "fedmrg": job_keys[FEDMRG_VERSION_KEY],
        "nvflare": job_keys[NVFLARE_VERSION_KEY],
        "python": platform.python_version(),
        "torch": torch.__version__ + (f" (CUDA {torch.version.cuda})" if torch.version.cuda else ""),
    }


def check_versions(job: JobInfo | None) -> list[CheckResult]:
    """The installed versions, and (with a job) the versions the job was built with: a mismatch FAILs,
    as the site's executor refuses such a job."""
    here = software_versions()
    detail = ", ".join(f"{name} {value}" for name, value in here.items())
    results = [
        CheckResult(
            "versions", FAIL if here["nvflare"] == "not installed" else PASS, detail, str(Path(fedmrg.__file__).parent)
        )
    ]
    if job is None:
        return results
    return results + [_job_version_result(job, key, installed) for key, installed in installed_versions().items()]


def _job_version_result(job: JobInfo, key: str, installed: str) -> CheckResult:
    """One version the job records, compared as the site's executor compares it
    (:func:`fedmrg.versions.version_mismatches`)."""
    where = f"{job.meta_path}: {key}"
    recorded = job.meta.get(key)
    if recorded is None:
        return CheckResult(f"job {key}", WARN, f"not recorded in the job; this site has {installed}", where)
    mismatch = version_mismatches({key: recorded})
    if mismatch:
        shipped = (
            " (the fedmrg the job ships in custom/ comes after the installed one on FLARE's import path, "
            "so the installed one runs)"
            if job.ships_code and key == FEDMRG_VERSION_KEY
            else ""
        )
        return CheckResult(f"job {key}", FAIL, f"{mismatch[0]}: the site's executor refuses the job{shipped}", where)
    return CheckResult(f"job {key}", PASS, f"{recorded}, as installed", where)


# ----------------------------------------------------------------------------------- output
def format_report(report: SiteReport) -> str:
    """A readable table: one line per check (status, name, reason, [file or field])."""
    width = max((len(r.name) for r in report.results), default=0)
    lines = [f"FedMRG site check of {report.site or 'an unnamed site'} against {report.config_source}"]
    for r in report.results:
        lines.append(f"{r.status:<4}  {r.name:<{width}}  {r.detail}" + (f"  [{r.where}]" if r.where else ""))
    counts = report.to_dict()["counts"]
    verdict = "NOT READY: fix the FAIL lines" if report.failed else "ready to join"
    lines.append(f"{verdict} ({', '.join(f'{n} {s}' for s, n in counts.items() if n)})")
    return "\n".join(lines)


def write_json_report(report: SiteReport, path: Path) -> None:
    write_json(path, report.to_dict())
