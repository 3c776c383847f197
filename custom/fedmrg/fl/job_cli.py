"""The command line of a ``jobs/<job>/job.py``: its options, its config, where it runs, what it prints.

A ``job.py`` reads like NVFlare's examples: parse the options, build the recipe, then export it
(``--export``) or execute it, in the FLARE simulator (the default) or on a running POC or
provisioned system (``--startup-kit``). This module holds the plumbing those steps share:

- :func:`job_arguments`: the options, reconciled with the ``--export`` / ``--export-dir`` that
  NVFlare's recipe module takes out of ``sys.argv`` when it is imported;
- :func:`job_config`: the named or YAML config, then the job's own ``overrides.yaml`` (when its
  folder has one), then ``--rounds``;
- :func:`execution_env`: ``SimEnv`` with each simulated site's settings, or ``ProdEnv``;
- :func:`export_job`, :func:`report_run`, and :func:`with_user_errors` (input errors on one line).
"""

from __future__ import annotations

import argparse
import functools
import logging
import os
import sys
import typing
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml
from nvflare.recipe import ProdEnv, SimEnv
from nvflare.recipe.spec import DEFAULT_EXPORT_DIR, Recipe, _peek_recipe_args

from fedmrg.config import Config, Quantization, encoder_weights, load_config
from fedmrg.errors import ConfigError, FedMRGError
from fedmrg.fl.controller import RESULTS_ROOT_ENV
from fedmrg.fl.packaging import allow_fedmrg_components, ship_package
from fedmrg.fl.results import RESULTS_FILE
from fedmrg.fl.site import SETTINGS_ENV
from fedmrg.io import checked_name

OVERRIDES_FILE = "overrides.yaml"  # a job's own config settings, dotted keys, on top of --config


def job_parser(job: str, description: str) -> argparse.ArgumentParser:
    """The options every ``jobs/<job>/job.py`` takes."""
    p = argparse.ArgumentParser(
        prog=f"jobs/{job}/job.py", description=description, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--data", metavar="BENCH_DIR", help="benchmark folder with site-1, site-2, ... (simulator)")
    p.add_argument("--sites", type=int, default=2, help="number of sites (default: 2)")
    p.add_argument("--rounds", type=int, help="federated rounds (default: the config's fl.rounds)")
    p.add_argument("--config", default="tiny", help="named config or YAML file (default: tiny)")
    p.add_argument(
        "--name",
        type=_job_name,
        default=job,
        help=f"the job's name (default: {job}); the server's checkpoint and each site's local state are "
        "kept under it, so a job resubmitted with the same name and config resumes",
    )
    p.add_argument("--base-llm", metavar="DIR", help="the base LLM checkpoint folder")
    p.add_argument(
        "--base-encoder",
        metavar="PATH",
        help="pretrained encoder weights (model.encoder.pretrained): a file, or a `fedmrg make-base-encoder` folder",
    )
    p.add_argument(
        "--quantization",
        choices=typing.get_args(Quantization),
        help="FLARE's quantization filters on both directions (fl.quantization; the dense fedavg_lora job)",
    )
    p.add_argument(
        "--public-data",
        metavar="DIR",
        help="public studies every site rehearses in training (train.public_data; a site's public_data "
        "setting says where its copy is)",
    )
    p.add_argument(
        "--workspace",
        metavar="WS",
        default="workspace",
        help="where results.json, the global model and the simulator's site folders go",
    )
    p.add_argument("--threads", type=int, default=1, help="CPU threads per simulated site (default: 1)")
    p.add_argument("--test-limit", type=int, help="test studies scored per site at the end (default: all)")
    p.add_argument("--export", action="store_true", help="write the job folder instead of running it")
    p.add_argument("--export-dir", default="fl_job", help="where --export writes the job (default: fl_job)")
    p.add_argument(
        "--ship-code",
        action="store_true",
        help="copy the fedmrg package into the job's custom/ folders (needs the byoc right at every site)",
    )
    p.add_argument(
        "--gpus-per-site",
        type=int,
        default=0,
        help="GPUs each site's FLARE resource manager must grant (job meta resource_spec; default: 0)",
    )
    p.add_argument("--gpu-mem-gib", type=float, help="GPU memory each of those GPUs must have (GiB)")
    p.add_argument(
        "--startup-kit",
        metavar="ADMIN_KIT",
        help="submit to a running POC or provisioned system through this admin startup kit",
    )
    p.add_argument("--username", help="the admin's name for --startup-kit (default: the kit folder's name)")
    return p


def job_arguments(job: str, description: str, argv: list[str] | None = None) -> argparse.Namespace:
    """Parse a job's options; ``--export`` / ``--export-dir`` count wherever NVFlare took them from."""
    args = job_parser(job, description).parse_args(argv)
    exported, export_dir = _peek_recipe_args()
    if exported and not args.export:
        args.export, args.export_dir = True, export_dir
    elif not args.export and export_dir != DEFAULT_EXPORT_DIR:  # NVFlare took --export-dir but not --export
        raise ConfigError("--export-dir needs --export")
    if args.ship_code and not args.export:
        raise ConfigError("--ship-code applies to --export (submit the exported folder with its code)")
    args.workspace = Path(args.workspace).resolve()
    args.base_llm = _resolved(args.base_llm)
    args.base_encoder = _resolved(encoder_weights(args.base_encoder) if args.base_encoder else None)
    args.public_data = _resolved(args.public_data)
    return args


def job_overrides(job_dir: str | os.PathLike) -> dict[str, Any]:
    """The job's own settings (``<job_dir>/overrides.yaml``: dotted config keys), or none."""
    path = Path(job_dir) / OVERRIDES_FILE
    if not path.is_file():
        return {}
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML ({exc.__class__.__name__})") from None
    if not isinstance(data, dict) or not all(isinstance(key, str) and "." in key for key in data):
        raise ConfigError(f"{path}: expected a mapping of dotted config keys (section.key: value)")
    return data


def job_config(args: argparse.Namespace, job_dir: str | os.PathLike) -> Config:
    """The config a job runs with: the named/YAML config, the job's own settings, then ``--rounds``."""
    return load_config(
        args.config,
        {
            **job_overrides(job_dir),
            "fl.rounds": args.rounds,
            "model.encoder.pretrained": args.base_encoder,
            "train.public_data": args.public_data,
            "fl.quantization": args.quantization,
        },
    )


def simulated(args: argparse.Namespace) -> bool:
    return not (args.export or args.startup_kit)


def results_dir(args: argparse.Namespace) -> str | None:
    """Where the server writes results: the workspace in the simulator, the job's run folder otherwise."""
    return str(args.workspace) if simulated(args) else None


def execution_env(args: argparse.Namespace) -> SimEnv | ProdEnv:
    """A running POC or provisioned system (``--startup-kit``), or the simulator with one process per site."""
    if args.startup_kit:
        kit = Path(args.startup_kit).resolve()
        return ProdEnv(startup_kit_location=str(kit), username=args.username or kit.name)
    sites = [f"site-{k}" for k in range(1, args.sites + 1)]
    _write_simulated_site_settings(args, sites)
    # One process per site for the whole job (a site swapped out between tasks rebuilds its model);
    # single-threaded processes share the cores without the spinning that multi-threaded ones do.
    return SimEnv(clients=sites, num_threads=len(sites), workspace_root=str(args.workspace))


def export_job(recipe: Recipe, args: argparse.Namespace) -> int:
    recipe.export(job_dir=args.export_dir)
    folder = Path(args.export_dir).resolve() / args.name
    if args.ship_code:
        ship_package(folder)
    print(f"job folder: {folder}")
    return 0


def report_run(run: Any, args: argparse.Namespace) -> int:
    """Where a simulated run's results are, or the id of a submitted job; 1 when a simulated run left none."""
    if not simulated(args):
        print(
            f"submitted job {run.get_job_id()}; when it finishes, `download_job` in the admin console fetches "
            f"{RESULTS_FILE} and the global model from the server's run folder"
        )
        return 0
    results = args.workspace / RESULTS_FILE
    if not results.is_file():
        print(
            f"{args.name}: the run ended without {results}; see {args.workspace / args.name / 'server'} for the logs",
            file=sys.stderr,
        )
        return 1
    print(f"results: {results}\nglobal model: {args.workspace / 'global_model'}")
    return 0


def with_user_errors(main: Callable[..., int]) -> Callable[..., int]:
    """A job's ``main`` with logging set up and input errors printed on one line (exit status 2)."""

    @functools.wraps(main)
    def run(*a, **kw) -> int:
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
        try:
            return main(*a, **kw)
        except FedMRGError as exc:
            print(f"{Path(sys.argv[0]).parent.name or 'job'}: error: {exc}", file=sys.stderr)
            return 2

    return run


def _write_simulated_site_settings(args: argparse.Namespace, sites: list[str]) -> None:
    """Settings for simulated sites (data folder, state folder, threads) and the component allow list."""
    if not args.data:
        raise ConfigError("--data BENCH_DIR is needed to simulate sites (a folder made by `fedmrg prepare-data`)")
    data = Path(args.data).resolve()
    missing = [site for site in sites if not (data / site).is_dir()]
    if missing:
        raise ConfigError(f"{data}: no folder for {', '.join(missing)} (the benchmark has fewer sites than --sites)")
    allow_fedmrg_components(args.workspace / args.name / "local")
    # The simulator wipes its site folders at every start: a simulated hospital's own disk is WS/sites/<site>.
    settings = {
        site: {"data_dir": str(data / site), "threads": args.threads, "state_dir": str(args.workspace / "sites" / site)}
        for site in sites
    }
    if args.base_llm:
        for entry in settings.values():
            entry["base_llm"] = args.base_llm
    path = args.workspace / "sites.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(settings, sort_keys=True), encoding="utf-8")
    os.environ[SETTINGS_ENV] = str(path)
    os.environ[RESULTS_ROOT_ENV] = str(args.workspace)  # the simulated server may write its results there
    os.environ["OMP_NUM_THREADS"] = str(args.threads)  # site processes inherit it


def _job_name(value: str) -> str:
    try:
        return checked_name(value, "--name")
    except ConfigError as exc:
        raise argparse.ArgumentTypeError(str(exc).split(": ", 1)[1]) from None


def _resolved(path: str | None) -> str | None:
    return str(Path(path).resolve()) if path and Path(path).exists() else path
