"""FLARE job assembly: the FedMRG recipe and the command line every ``jobs/*/job.py`` shares.

:class:`FedMRGRecipe` is an NVFlare ``Recipe`` (``execute`` runs it or, with ``--export``, writes
the job folder that ``nvflare job submit`` and the admin console take). Its job holds:

- server: :class:`~fedmrg.fl.controller.FedMRGController`, the aggregator (low-rank, or dense for
  the FedAvg baseline) and a TensorBoard receiver for the sites' metrics;
- every site: :class:`~fedmrg.fl.executor.MRGExecutor` for ``train`` / ``validate`` /
  ``submit_model``, and the writer that streams its metrics to the server.

The job carries the config (model, training plan, codec) but no site paths: each site reads its own
settings (data folder, base LLM, device) from its workspace or ``$FEDMRG_SITE_SETTINGS``. By default
the job carries no code: the ``fedmrg`` package is installed at every site (``pip install``) and
admitted by the site's ``class_allow_list``. ``--ship-code`` copies the package into each app's
``custom/`` folder instead, which FLARE treats as bring-your-own-code (the submitter needs the
``byoc`` right at every site). FLARE appends ``custom/`` to the import path, so the shipped copy
runs only at sites where ``fedmrg`` is not installed; the executor logs which copy it runs.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import re
import shutil
import sys
import warnings
from pathlib import Path

import yaml
from nvflare.apis.analytix import ANALYTIC_EVENT_TYPE
from nvflare.app_common.widgets.convert_to_fed_event import ConvertToFedEvent
from nvflare.app_opt.tracking.tb.tb_writer import TBWriter
from nvflare.job_config.api import FedJob

# NVFlare's recipe module takes --export / --export-dir out of sys.argv on import and warns that it did;
# job.py declares both and reads them back (main), so the warning says nothing to our users.
warnings.filterwarnings("ignore", message="NVFlare reserves '--export'", category=UserWarning)
from nvflare.recipe import ProdEnv, SimEnv  # noqa: E402
from nvflare.recipe.spec import DEFAULT_EXPORT_DIR, Recipe, _peek_recipe_args  # noqa: E402
from nvflare.recipe.utils import add_experiment_tracking

import fedmrg
from fedmrg.config import Config, config_to_dict, load_config
from fedmrg.errors import ConfigError
from fedmrg.fl import messages as msg
from fedmrg.fl.aggregator import DenseAggregator, LowRankAggregator
from fedmrg.fl.controller import FedMRGController
from fedmrg.fl.executor import MRGExecutor
from fedmrg.fl.results import RESULTS_FILE
from fedmrg.fl.site import SETTINGS_ENV
from fedmrg.versions import installed_versions

log = logging.getLogger(__name__)

# What a site's (and the server's) class_allow_list must admit for a FedMRG job that brings no code.
COMPONENT_CLASSES = tuple(f"{cls.__module__}.{cls.__qualname__}" for cls in (
    FedMRGController, LowRankAggregator, DenseAggregator, MRGExecutor))


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
    resources = json.loads(source.read_text(encoding="utf-8")) if source else {"format_version": 2}
    allowed = list(resources.get(CLASS_ALLOW_LIST, DEFAULT_CLASS_ALLOW_LIST))
    resources[CLASS_ALLOW_LIST] = allowed + [name for name in COMPONENT_CLASSES if name not in allowed]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(resources, indent=4), encoding="utf-8")
    return path


ALL_SITES_SPEC = "@default"  # FLARE's portable resource_spec entry that applies to every site


def resource_spec(gpus: int = 0, gpu_mem_gib: float | None = None) -> dict:
    """What each site's resource manager must grant: CPU jobs ask for no GPU (and FLARE's GPU resource
    manager then reserves none); GPU jobs for ``gpus`` devices of at least ``gpu_mem_gib`` each."""
    if gpus < 0 or (gpu_mem_gib is not None and gpu_mem_gib <= 0):
        raise ConfigError(f"resource spec: gpus must be >= 0 and GPU memory > 0 (got {gpus}, {gpu_mem_gib})")
    spec: dict = {"num_of_gpus": gpus}
    if gpus and gpu_mem_gib:
        spec["mem_per_gpu_in_GiB"] = gpu_mem_gib
    return spec


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


class FedMRGRecipe(Recipe):
    """A federated FedMRG run (or its FedAvg baseline when ``cfg.fl.update`` is ``dense``)."""

    def __init__(self, cfg: Config, *, name: str = "fedmrg", sites: int = 2, base_llm: str | None = None,
                 results_dir: str | None = None, test_limit: int | None = None, final_validation: bool = True,
                 gpus_per_site: int = 0, gpu_mem_gib: float | None = None) -> None:
        """``sites``: how many sites the job needs (``fl.min_sites`` wins when set); ``gpus_per_site`` and
        ``gpu_mem_gib``: what each site's FLARE resource manager must grant before the job is scheduled."""
        config = config_to_dict(cfg)
        fl = cfg.fl
        job = FedJob(name=name, min_clients=fl.min_sites or sites, meta_props=installed_versions())
        job.job.add_resource_spec(ALL_SITES_SPEC, resource_spec(gpus_per_site, gpu_mem_gib))
        job.set_app_packages(["fedmrg"])
        controller = FedMRGController(config=config, rounds=fl.rounds, job_name=name, min_sites=fl.min_sites,
                                      wait_after_min_sites=fl.wait_after_min_sites, key_metric=fl.key_metric,
                                      results_dir=results_dir, final_validation=final_validation)
        prototype_dim = cfg.model.contrastive_dim if cfg.model.contrastive else None
        checks = dict(max_norm=fl.max_update_norm, prototype_dim=prototype_dim, seed=cfg.train.seed,
                      aggregation=fl.aggregation, clip_norm=fl.clip_norm, trim=fl.trim, min_updates=fl.min_sites or 1)
        if fl.update == "dense":
            aggregator = DenseAggregator(**checks)
        else:
            aggregator = LowRankAggregator(max_rank=fl.rank, server_residual=fl.server_residual, **checks)
        job.to_server(controller, id="controller")
        job.to_server(aggregator, id="aggregator")
        executor = MRGExecutor(config=config, run_name=name, base_llm=base_llm, writer_id="log_writer",
                               test_limit=test_limit)
        job.to_clients(executor, tasks=[msg.TRAIN, msg.VALIDATE, msg.SUBMIT_MODEL])
        job.to_clients(TBWriter(), id="log_writer")
        job.to_clients(ConvertToFedEvent(events_to_convert=[ANALYTIC_EVENT_TYPE]), id="event_to_fed")
        super().__init__(job)
        add_experiment_tracking(self, "tensorboard")


# ----------------------------------------------------------------------------- job.py command
def job_parser(job: str, description: str) -> argparse.ArgumentParser:
    """The options every ``jobs/<job>/job.py`` takes."""
    p = argparse.ArgumentParser(prog=f"jobs/{job}/job.py", description=description)
    p.add_argument("--data", metavar="BENCH_DIR", help="benchmark folder with site-1, site-2, ... (simulator)")
    p.add_argument("--sites", type=int, default=2, help="number of sites (default: 2)")
    p.add_argument("--rounds", type=int, help="federated rounds (default: the config's fl.rounds)")
    p.add_argument("--config", default="tiny", help="named config or YAML file (default: tiny)")
    p.add_argument("--name", type=_job_name, default=job,
                   help=f"the job's name (default: {job}); the server's checkpoint and each site's local state are "
                        "kept under it, so a job resubmitted with the same name and config resumes")
    p.add_argument("--base-llm", metavar="DIR", help="the base LLM checkpoint folder")
    p.add_argument("--workspace", metavar="WS", default="workspace",
                   help="where results.json, the global model and the simulator's site folders go")
    p.add_argument("--threads", type=int, default=1, help="CPU threads per simulated site (default: 1)")
    p.add_argument("--test-limit", type=int, help="test studies scored per site at the end (default: all)")
    p.add_argument("--export", action="store_true", help="write the job folder instead of running it")
    p.add_argument("--export-dir", default="fl_job", help="where --export writes the job (default: fl_job)")
    p.add_argument("--ship-code", action="store_true",
                   help="copy the fedmrg package into the job's custom/ folders (needs the byoc right at every site)")
    p.add_argument("--gpus-per-site", type=int, default=0,
                   help="GPUs each site's FLARE resource manager must grant (job meta resource_spec; default: 0)")
    p.add_argument("--gpu-mem-gib", type=float, help="GPU memory each of those GPUs must have (GiB)")
    p.add_argument("--startup-kit", metavar="ADMIN_KIT",
                   help="submit to a running POC or provisioned system through this admin startup kit")
    p.add_argument("--username", help="the admin's name for --startup-kit (default: the kit folder's name)")
    return p


def job_config(args: argparse.Namespace, overrides: dict | None = None) -> Config:
    """The config a job runs with: the named/YAML config, the job's own settings, then the flags."""
    return load_config(args.config, {**(overrides or {}), "fl.rounds": args.rounds})


def run_job(job: str, args: argparse.Namespace, cfg: Config) -> int:
    """Run in the simulator (default), export (``--export``) or submit (``--startup-kit``)."""
    sites = [f"site-{k}" for k in range(1, args.sites + 1)]
    workspace = Path(args.workspace).resolve()
    simulate = not (args.export or args.startup_kit)
    if args.ship_code and not args.export:
        raise ConfigError("--ship-code applies to --export (submit the exported folder with its code)")
    if simulate:
        _prepare_simulation(args, sites, workspace)
    recipe = FedMRGRecipe(cfg, name=job, sites=len(sites), base_llm=_resolved(args.base_llm),
                          results_dir=str(workspace) if simulate else None, test_limit=args.test_limit,
                          gpus_per_site=args.gpus_per_site, gpu_mem_gib=args.gpu_mem_gib)
    if args.export:
        recipe.export(job_dir=args.export_dir)
        if args.ship_code:
            ship_package(Path(args.export_dir) / job)
        print(f"job folder: {Path(args.export_dir).resolve() / job}")
        return 0
    if args.startup_kit:
        kit = Path(args.startup_kit).resolve()
        env = ProdEnv(startup_kit_location=str(kit), username=args.username or kit.name)
    else:
        # One process per site for the whole job (a site swapped out between tasks rebuilds its model);
        # single-threaded processes share the cores without the spinning that multi-threaded ones do.
        env = SimEnv(clients=sites, num_threads=len(sites), workspace_root=str(workspace))
    run = recipe.execute(env)
    if simulate:
        results = workspace / RESULTS_FILE
        if not results.is_file():
            print(f"{job}: the run ended without {results}; see {workspace / job / 'server'} for the logs",
                  file=sys.stderr)
            return 1
        print(f"results: {results}\nglobal model: {workspace / 'global_model'}")
    else:
        print(f"submitted job {run.get_job_id()}; when it finishes, `download_job` in the admin console fetches "
              f"{RESULTS_FILE} and the global model from the server's run folder")
    return 0


def _prepare_simulation(args: argparse.Namespace, sites: list[str], workspace: Path) -> None:
    """Settings for simulated sites (data folder, state folder, threads) and the component allow list."""
    if not args.data:
        raise ConfigError("--data BENCH_DIR is needed to simulate sites (a folder made by `fedmrg prepare-data`)")
    data = Path(args.data).resolve()
    missing = [site for site in sites if not (data / site).is_dir()]
    if missing:
        raise ConfigError(f"{data}: no folder for {', '.join(missing)} (the benchmark has fewer sites than --sites)")
    allow_fedmrg_components(workspace / args.job / "local")
    # The simulator wipes its site folders at every start: a simulated hospital's own disk is WS/sites/<site>.
    settings = {site: {"data_dir": str(data / site), "threads": args.threads, "state_dir": str(workspace / "sites" / site)}
                for site in sites}
    if args.base_llm:
        for entry in settings.values():
            entry["base_llm"] = _resolved(args.base_llm)
    path = workspace / "sites.yaml"
    path.write_text(yaml.safe_dump(settings, sort_keys=True), encoding="utf-8")
    os.environ[SETTINGS_ENV] = str(path)
    os.environ["OMP_NUM_THREADS"] = str(args.threads)  # site processes inherit it


def _job_name(value: str) -> str:
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}", value):
        raise argparse.ArgumentTypeError(f"{value!r}: letters, digits, '_', '.' and '-', at most 64, "
                                         "starting with a letter or digit")
    return value


def _resolved(path: str | None) -> str | None:
    return str(Path(path).resolve()) if path and Path(path).exists() else path


def main(job: str, description: str, overrides: dict | None = None, argv: list[str] | None = None) -> int:
    """Entry point of a ``job.py``: parse, configure, run; input errors print one line."""
    args = job_parser(job, description).parse_args(argv)
    # NVFlare's recipe module takes --export / --export-dir out of sys.argv when it is imported.
    exported, export_dir = _peek_recipe_args()
    if exported and not args.export:
        args.export, args.export_dir = True, export_dir
    elif not args.export and export_dir != DEFAULT_EXPORT_DIR:  # FLARE took --export-dir but not --export
        print(f"{job}: error: --export-dir needs --export", file=sys.stderr)
        return 2
    args.job = args.name
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        return run_job(args.name, args, job_config(args, overrides))
    except ConfigError as exc:
        print(f"{job}: error: {exc}", file=sys.stderr)
        return 2
