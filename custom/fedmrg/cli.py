"""The ``fedmrg`` command.

Every subcommand takes ``--config NAME_OR_PATH`` (a named config shipped in the package, such as
``tiny`` or ``demo``, or a YAML file); flags override the config's values. Errors caused by input
print one line, ``fedmrg: error: ...``, and exit with status 2.
"""

from __future__ import annotations

import argparse
import logging
import sys
from typing import Sequence

import yaml

from fedmrg import __version__
from fedmrg.config import config_to_dict, load_config, named_configs
from fedmrg.errors import FedMRGError

log = logging.getLogger("fedmrg")


def _add_config_flag(parser: argparse.ArgumentParser, default: str) -> None:
    parser.add_argument(
        "--config", default=default,
        help=f"named config ({', '.join(named_configs())}) or a YAML file (default: {default})",
    )


def _prepare_data_parser(sub) -> None:
    p = sub.add_parser(
        "prepare-data", help="build the FL-MRG benchmark (sites, held-out test, public reports)",
        description="Build the multi-hospital benchmark offline: reports from IU X-ray (or templated), synthetic "
                    "radiographs rendered from each report's findings, sites with their own reporting style and "
                    "image acquisition.",
    )
    _add_config_flag(p, "demo")
    p.add_argument("--source", choices=["iu-xray", "synthetic"], help="report source")
    p.add_argument("--reports", metavar="PATH_OR_URL",
                   help="NLMCXR_reports.tgz, or a torchxrayvision wheel that holds it (default: offline copy "
                        "from the torchxrayvision 1.5.7 wheel, cached under $FEDMRG_DATA_DIR/cache)")
    p.add_argument("--studies", type=int, help="number of studies (default: all; synthetic: 200)")
    p.add_argument("--sites", type=int, help="number of hospitals")
    p.add_argument("--partition", choices=["style", "label", "iid"], help="how studies are dealt to sites")
    p.add_argument("--image-size", type=int, help="rendered image size in pixels")
    p.add_argument("--seed", type=int, help="random seed (the build is deterministic for a seed)")
    p.add_argument("--dirichlet-alpha", type=float, help="label skew for --partition label")
    p.add_argument("--workers", type=int, help="rendering processes (0 = one per core)")
    p.add_argument("--out", required=True, help="output folder")
    group = p.add_mutually_exclusive_group()
    group.add_argument("--reuse", action="store_true", help="keep an existing build of the same request")
    group.add_argument("--force", action="store_true", help="replace an existing output folder")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(handler=_cmd_prepare_data)


def _cmd_prepare_data(args: argparse.Namespace) -> int:
    from fedmrg.data.benchmark import build_benchmark, format_summary

    overrides = {
        f"benchmark.{key}": getattr(args, key)
        for key in ("source", "reports", "studies", "sites", "partition", "image_size", "seed", "dirichlet_alpha",
                    "workers")
    }
    cfg = load_config(args.config, overrides)
    summary = build_benchmark(cfg.benchmark, args.out, include_impression=cfg.data.include_impression,
                              reuse=args.reuse, force=args.force, progress=not args.quiet)
    print(format_summary(summary))
    print(f"benchmark ready in {args.out}")
    return 0


def _show_data_parser(sub) -> None:
    p = sub.add_parser("show-data", help="draw a grid of studies per site (PNG)")
    p.add_argument("bench_dir", help="a folder built by prepare-data")
    p.add_argument("--out", default="preview.png", help="PNG to write (default: preview.png)")
    p.add_argument("--per-site", type=int, default=3, help="studies per site (default: 3)")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(handler=_cmd_show_data)


def _cmd_show_data(args: argparse.Namespace) -> int:
    from fedmrg.data.preview import show_data

    print(f"preview written to {show_data(args.bench_dir, args.out, per_site=args.per_site, seed=args.seed)}")
    return 0


def _config_parser(sub) -> None:
    p = sub.add_parser("config", help="print a validated config as YAML (all defaults filled in)")
    _add_config_flag(p, "demo")
    p.set_defaults(handler=_cmd_config)


def _cmd_config(args: argparse.Namespace) -> int:
    print(yaml.safe_dump(config_to_dict(load_config(args.config)), sort_keys=False), end="")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="fedmrg", description="Federated chest X-ray report generation on NVIDIA FLARE")
    parser.add_argument("--version", action="version", version=f"fedmrg {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for add in (_prepare_data_parser, _show_data_parser, _config_parser):
        add(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    try:
        return args.handler(args)
    except FedMRGError as exc:
        print(f"fedmrg: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("fedmrg: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
