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


def _positive_int(text: str) -> int:
    return _bounded_int(text, 1)


def _non_negative_int(text: str) -> int:
    return _bounded_int(text, 0)


def _bounded_int(text: str, minimum: int) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if value < minimum:
        raise argparse.ArgumentTypeError(f"{value} must be at least {minimum}")
    return value


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
    p.add_argument("--per-site", type=_positive_int, default=3, help="studies per site (default: 3)")
    p.add_argument("--seed", type=_non_negative_int, default=0, help="which studies are drawn")
    p.set_defaults(handler=_cmd_show_data)


def _cmd_show_data(args: argparse.Namespace) -> int:
    from fedmrg.data.preview import show_data

    if not args.out.lower().endswith(".png"):
        raise FedMRGError(f"{args.out}: the preview is a PNG; give a path ending in .png")
    print(f"preview written to {show_data(args.bench_dir, args.out, per_site=args.per_site, seed=args.seed)}")
    return 0


def _config_parser(sub) -> None:
    p = sub.add_parser("config", help="print a validated config as YAML (all defaults filled in)")
    _add_config_flag(p, "demo")
    p.set_defaults(handler=_cmd_config)


def _cmd_config(args: argparse.Namespace) -> int:
    print(yaml.safe_dump(config_to_dict(load_config(args.config)), sort_keys=False), end="")
    return 0


def _label_parser(sub) -> None:
    p = sub.add_parser(
        "label", help="label reports for the 14 CheXpert observations (rule-based, offline)",
        description="Label each report of a CSV (columns id,report; others ignored) for the 14 CheXpert "
                    "observations: 1 positive, 0 negative, -1 uncertain, empty when not mentioned.",
    )
    p.add_argument("--in", dest="inp", required=True, metavar="REPORTS_CSV", help="CSV with columns id,report")
    p.add_argument("--out", required=True, metavar="LABELS_CSV", help="CSV to write: id and the 14 observations")
    p.set_defaults(handler=_cmd_label)


def _cmd_label(args: argparse.Namespace) -> int:
    import time

    from fedmrg.eval.io import read_reports_csv, write_labels_csv
    from fedmrg.eval.labeler import label_matrix
    from fedmrg.eval.observations import OBSERVATIONS, POSITIVE

    reports = read_reports_csv(args.inp)
    start = time.perf_counter()
    labels = label_matrix(list(reports.values()))
    seconds = time.perf_counter() - start
    write_labels_csv(args.out, list(reports), labels)
    positives = (labels == POSITIVE).sum(axis=0)
    counts = ", ".join(f"{name} {int(n)}" for name, n in zip(OBSERVATIONS, positives) if n)
    print(f"{len(reports)} reports labeled in {seconds:.2f} s -> {args.out}; positives: {counts or 'none'}")
    return 0


def _score_parser(sub) -> None:
    p = sub.add_parser(
        "score", help="NLG metrics and clinical efficacy of generated reports against references",
        description="BLEU-1..4, METEOR, ROUGE-L, CIDEr (pycocoevalcap, R2Gen protocol) and CE precision/recall/F1 "
                    "(micro, macro, example, micro5) of generated reports against references.",
    )
    p.add_argument("--pred", required=True, help="JSON object mapping id to generated report")
    p.add_argument("--ref", required=True,
                   help="JSON object mapping id to reference report, or an R2Gen annotation.json (see --split)")
    p.add_argument("--out", required=True, help="scores JSON to write")
    p.add_argument("--split", default="test", choices=["train", "val", "test"],
                   help="rows of an annotation.json --ref to score against (default: test)")
    p.add_argument("--dataset", default="iu_xray", choices=["iu_xray", "mimic_cxr"],
                   help="whose text cleaning to apply before scoring (default: iu_xray)")
    p.add_argument("--per-study", action="store_true", help="also write the NLG scores of every study")
    p.set_defaults(handler=_cmd_score)


def _cmd_score(args: argparse.Namespace) -> int:
    from fedmrg.eval.io import check_nonempty, check_same_ids, read_id_texts, read_references
    from fedmrg.eval.report import format_scores, score_reports, write_scores

    predictions = read_id_texts(args.pred)
    references = read_references(args.ref, args.split)
    check_same_ids(predictions, references, args.pred, args.ref)
    check_nonempty(predictions, args.pred)
    check_nonempty(references, args.ref)
    scores = score_reports(predictions, references, dataset=args.dataset, per_study=args.per_study)
    write_scores(args.out, scores)
    print(format_scores(scores))
    print(f"scores written to {args.out}")
    return 0


def _report_parser(sub) -> None:
    p = sub.add_parser("report", help="compare scores files: a markdown table and a bar plot (PNG)")
    p.add_argument("results", nargs="+", metavar="RESULTS",
                   help="scores.json files from 'fedmrg score' (row name: the file's stem, or its folder's "
                        "name for scores.json)")
    p.add_argument("--out", required=True, help="markdown file to write; the plot goes beside it (.png)")
    p.set_defaults(handler=_cmd_report)


def _cmd_report(args: argparse.Namespace) -> int:
    from fedmrg.eval.report import write_report

    table, plot = write_report(args.results, args.out)
    print(f"report written to {table}, plot to {plot}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="fedmrg", description="Federated chest X-ray report generation on NVIDIA FLARE")
    parser.add_argument("--version", action="version", version=f"fedmrg {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for add in (_prepare_data_parser, _show_data_parser, _config_parser, _label_parser, _score_parser,
                _report_parser):
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
    except OSError as exc:  # unwritable output, full disk, ...: the file and the reason, not a traceback
        print(f"fedmrg: error: {exc.filename or ''}: {exc.strerror or exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("fedmrg: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
