"""The ``fedmrg`` command.

Every subcommand takes ``--config NAME_OR_PATH`` (a named config shipped in the package, such as
``tiny`` or ``demo``, or a YAML file); flags override the config's values. Errors caused by input
print one line, ``fedmrg: error: ...``, and exit with status 2.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, get_args

import yaml

from fedmrg import __version__
from fedmrg.config import PartitionKind, config_to_dict, load_config, named_configs
from fedmrg.errors import ConfigError, FedMRGError
from fedmrg.io import load_json, write_json

PARTITIONS = get_args(PartitionKind)

if TYPE_CHECKING:
    from fedmrg.ops.poc import PocRun

log = logging.getLogger("fedmrg")

DEFAULT_POC_WS = "data/poc"  # the Makefile's POC_WS
DEFAULT_CONSORTIUM_WS = "data/consortium"  # the Makefile's CONSORTIUM_WS


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
        "--config",
        default=default,
        help=f"named config ({', '.join(named_configs())}) or a YAML file (default: {default})",
    )


def _prepare_data_parser(sub) -> None:
    p = sub.add_parser(
        "prepare-data",
        help="build the FL-MRG benchmark (sites, held-out test, public reports)",
        description="Build the multi-hospital benchmark offline: reports from IU X-ray (or templated), synthetic "
        "radiographs rendered from each report's findings, sites with their own reporting style and "
        "image acquisition.",
    )
    _add_config_flag(p, "demo")
    p.add_argument("--source", choices=["iu-xray", "synthetic"], help="report source")
    p.add_argument(
        "--reports",
        metavar="PATH_OR_URL",
        help="NLMCXR_reports.tgz, or a torchxrayvision wheel that holds it (default: offline copy "
        "from the torchxrayvision 1.5.7 wheel, cached under $FEDMRG_DATA_DIR/cache)",
    )
    p.add_argument("--studies", type=int, help="number of studies (default: all; synthetic: 200)")
    p.add_argument("--sites", type=int, help="number of hospitals")
    p.add_argument("--partition", choices=PARTITIONS, help="how studies are dealt to sites")
    p.add_argument("--image-size", type=int, help="rendered image size in pixels")
    p.add_argument("--seed", type=int, help="random seed (the build is deterministic for a seed)")
    p.add_argument("--dirichlet-alpha", type=float, help="label skew for --partition label")
    p.add_argument("--workers", type=int, help="rendering processes (0 = one per core)")
    p.add_argument(
        "--public-renders", type=int, help="renders of each public report, for `fedmrg make-base-encoder` (0 = none)"
    )
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
        for key in (
            "source",
            "reports",
            "studies",
            "sites",
            "partition",
            "image_size",
            "seed",
            "dirichlet_alpha",
            "workers",
            "public_renders",
        )
    }
    cfg = load_config(args.config, overrides)
    summary = build_benchmark(
        cfg.benchmark,
        args.out,
        include_impression=cfg.data.include_impression,
        reuse=args.reuse,
        force=args.force,
        progress=not args.quiet,
    )
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
        "label",
        help="label reports for the 14 CheXpert observations (rule-based, offline)",
        description="Label each report of a CSV (columns id,report; others ignored) for the 14 CheXpert "
        "observations: 1 positive, 0 negative, -1 uncertain, empty when not mentioned.",
    )
    p.add_argument("--in", dest="inp", required=True, metavar="REPORTS_CSV", help="CSV with columns id,report")
    p.add_argument("--out", required=True, metavar="LABELS_CSV", help="CSV to write: id and the 14 observations")
    p.set_defaults(handler=_cmd_label)


def _cmd_label(args: argparse.Namespace) -> int:
    import time

    from fedmrg.eval.texts import read_reports_csv, write_labels_csv
    from fedmrg.labels.labeler import label_matrix
    from fedmrg.labels.observations import OBSERVATIONS, POSITIVE

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
        "score",
        help="NLG metrics and clinical efficacy of generated reports against references",
        description="BLEU-1..4, METEOR, ROUGE-L, CIDEr (pycocoevalcap, R2Gen protocol) and CE precision/recall/F1 "
        "(micro, macro, example, micro5, abnormal) of generated reports against references.",
    )
    p.add_argument("--pred", required=True, help="JSON object mapping id to generated report")
    p.add_argument(
        "--ref",
        required=True,
        help="JSON object mapping id to reference report, or an R2Gen annotation.json (see --split)",
    )
    p.add_argument("--out", required=True, help="scores JSON to write")
    p.add_argument(
        "--split",
        default="test",
        choices=["train", "val", "test"],
        help="rows of an annotation.json --ref to score against (default: test)",
    )
    p.add_argument(
        "--dataset",
        default="iu_xray",
        choices=["iu_xray", "mimic_cxr"],
        help="whose text cleaning to apply before scoring (default: iu_xray)",
    )
    p.add_argument("--per-study", action="store_true", help="also write the NLG scores of every study")
    p.set_defaults(handler=_cmd_score)


def _cmd_score(args: argparse.Namespace) -> int:
    from fedmrg.eval.report import format_scores, score_reports, write_scores
    from fedmrg.eval.texts import check_nonempty, check_same_ids, read_id_texts, read_references

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
    p.add_argument(
        "results",
        nargs="+",
        metavar="RESULTS",
        help="scores.json files from 'fedmrg score' (row name: the file's stem, or its folder's name for scores.json)",
    )
    p.add_argument("--out", required=True, help="markdown file to write; the plot goes beside it (.png)")
    p.set_defaults(handler=_cmd_report)


def _cmd_report(args: argparse.Namespace) -> int:
    from fedmrg.eval.report import write_report

    table, plot = write_report(args.results, args.out)
    print(f"report written to {table}, plot to {plot}")
    return 0


def _review_page_parser(sub) -> None:
    p = sub.add_parser(
        "review-page",
        help="a static HTML page to review generated reports: images, both reports, findings",
        description="Write one self-contained HTML file showing, per study, every view, the reference and the "
        "generated report and the 14 CheXpert findings the labeler reads in each (missed / extra marked), "
        "with the CE scores of all predictions. Studies with an abnormal reference come first.",
    )
    p.add_argument("--pred", required=True, help="JSON object mapping study id to generated report")
    p.add_argument("--data", required=True, help="site or split folder with annotation.json and images/")
    p.add_argument(
        "--split", default="test", choices=["train", "val", "test"], help="rows the ids belong to (default: test)"
    )
    p.add_argument("--out", required=True, help="HTML file to write")
    p.add_argument("--limit", type=_positive_int, default=50, help="studies shown at most (default: 50)")
    p.add_argument(
        "--dataset",
        default="iu_xray",
        choices=["iu_xray", "mimic_cxr"],
        help="whose text cleaning to apply before labeling, as 'fedmrg score' does (default: iu_xray)",
    )
    p.set_defaults(handler=_cmd_review_page)


def _cmd_review_page(args: argparse.Namespace) -> int:
    from fedmrg.eval.review_page import write_review_page

    page = write_review_page(args.pred, args.data, args.out, args.split, args.limit, args.dataset)
    unreadable = f"; {page.unreadable_views} views could not be read (marked)" if page.unreadable_views else ""
    print(f"review page written to {page.path}: {page.shown} of {page.total} studies{unreadable}")
    return 0


def _fl_report_parser(sub) -> None:
    p = sub.add_parser(
        "fl-report",
        help="summary of a federated run: quality per site, bytes moved, examples",
        description="Read WS/results.json of a jobs/*/job.py run and write a markdown summary: "
        "generic and personalized scores per site, upload and download bytes against "
        "dense fp32 FedAvg, and (simulator runs) a few generated reports beside their "
        "references, read from the simulated sites' folders.",
    )
    p.add_argument("workspace", metavar="WS", help="the --workspace of the job run")
    p.add_argument("--examples", type=int, default=2, help="generated reports shown per site (default: 2)")
    p.add_argument("--out", help="markdown file (default: WS/summary.md)")
    p.add_argument(
        "--held-out",
        metavar="SCORES",
        help="`fedmrg evaluate`'s scores of the global model on a held-out split (its reports beside it): "
        "a section with its figures and a few abnormal studies; needs --held-out-data",
    )
    p.add_argument("--held-out-data", metavar="DIR", help="the held-out split's folder (annotation.json)")
    p.set_defaults(handler=_cmd_fl_report)


def _cmd_fl_report(args: argparse.Namespace) -> int:
    from fedmrg.fl.results import read_results, site_examples, summary_markdown

    workspace = Path(args.workspace)
    results = read_results(workspace / "results.json")
    text = summary_markdown(results, site_examples(workspace, results["job"], args.examples))
    if args.held_out:
        text += "\n" + _held_out_section(Path(args.held_out), args.held_out_data)
    out = Path(args.out) if args.out else workspace / "summary.md"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text, encoding="utf-8")
    print(text)
    print(f"summary written to {out}; per-round plot: {workspace / 'rounds.png'}")
    return 0


def _held_out_section(scores_file: Path, data: str | None) -> str:
    from fedmrg.eval.texts import read_id_texts, read_references
    from fedmrg.fl.results import held_out_markdown

    if not data:
        raise FedMRGError("--held-out needs --held-out-data (the split folder the scores are of)")
    predictions = read_id_texts(_beside(scores_file, "predictions"))
    references = read_references(Path(data) / "annotation.json", "test")
    return held_out_markdown(Path(data).name, load_json(scores_file), predictions, references)


def _make_base_llm_parser(sub) -> None:
    p = sub.add_parser(
        "make-base-llm",
        help="train the demo base LLM (BPE tokenizer + small LLaMA) on the public reports",
        description="Train a byte-level BPE tokenizer and a small LLaMA-architecture causal LM on a benchmark's public "
        "report split (disjoint from every site) and save both with save_pretrained: a stand-in for a "
        "pretrained LLM in the demo and the tests.",
    )
    p.add_argument("--corpus", required=True, help="a benchmark's public/ folder (reports.jsonl), or the .jsonl file")
    p.add_argument("--out", required=True, help="checkpoint folder to write")
    p.add_argument("--size", choices=["tiny", "small"], default="tiny", help="model size (default: tiny)")
    p.add_argument("--dataset", choices=["iu_xray", "mimic_cxr"], default="iu_xray", help="report cleaning rules")
    p.add_argument("--seed", type=_non_negative_int, default=0)
    p.add_argument("--epochs", type=_positive_int, help="training epochs (default: the size's own)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(handler=_cmd_make_base_llm)


def _cmd_make_base_llm(args: argparse.Namespace) -> int:
    from fedmrg.model.base_llm import make_base_llm

    summary = make_base_llm(
        args.corpus,
        args.out,
        args.size,
        dataset=args.dataset,
        seed=args.seed,
        epochs=args.epochs,
        progress=not args.quiet,
    )
    print(
        f"{summary['reports']} reports, {summary['tokens']} tokens, vocabulary {summary['vocab_size']}, "
        f"{summary['params']:,} parameters; loss {summary['first_loss']:.2f} -> {summary['final_loss']:.2f} "
        f"in {summary['seconds']} s\nsample: {summary['sample']}"
    )
    print(f"base LLM written to {args.out} (summary in base_llm.json)")
    return 0


def _make_base_encoder_parser(sub) -> None:
    p = sub.add_parser(
        "make-base-encoder",
        help="pretrain the demo image backbone on renders of the public reports",
        description="Pretrain the backbone of the config's model.encoder (vit or cnn) on BENCH/public "
        "(renders of reports that belong to no site: prepare-data --public-renders N), supervised by the "
        "finding categories drawn and the abnormal observations the labeler reads; print the probe's AUC "
        "per finding on BENCH/test-global; save model.safetensors (for model.encoder.pretrained or a "
        "job's --base-encoder) and base_encoder.json. A stand-in for a hospital's pretrained backbone.",
    )
    p.add_argument("--config", default="demo", help="named config or YAML file (default: demo)")
    p.add_argument("--data", required=True, metavar="BENCH_DIR", help="the benchmark folder (public/, test-global/)")
    p.add_argument("--out", required=True, help="folder to write")
    p.add_argument("--epochs", type=_positive_int, default=5, help="training epochs (default: 5)")
    p.add_argument("--lr", type=float, default=3e-3, help="peak learning rate (one-cycle schedule; default: 3e-3)")
    p.add_argument("--seed", type=_non_negative_int, default=0)
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(handler=_cmd_make_base_encoder)


def _cmd_make_base_encoder(args: argparse.Namespace) -> int:
    from fedmrg.model.base_encoder import make_base_encoder

    cfg = load_config(args.config)
    summary = make_base_encoder(
        cfg, args.data, args.out, epochs=args.epochs, lr=args.lr, seed=args.seed, progress=not args.quiet
    )
    for group, aucs in summary["test_global_auc"].items():
        print(f"test-global AUC ({group}): " + ", ".join(f"{name} {auc:.2f}" for name, auc in aucs.items()))
    print(
        f"{summary['public_studies']} public studies, {summary['params']:,} parameters, "
        f"loss {summary['losses'][0]:.3f} -> {summary['losses'][-1]:.3f} in {summary['seconds']} s"
    )
    print(f"base encoder written to {args.out} (weights model.safetensors, summary base_encoder.json)")
    return 0


def _add_model_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", required=True, metavar="RUN", help="a model folder written by `fedmrg train`")
    p.add_argument("--base-llm", metavar="DIR", help="the base LLM checkpoint, if it moved since training")
    _add_base_encoder_flag(p)
    p.add_argument(
        "--site-adapter",
        metavar="DIR",
        help="a site's specialized adapter (PEFT folder) to use with the model's generic one",
    )
    p.add_argument(
        "--adapters",
        choices=["auto", "generic", "dual"],
        default="auto",
        help="generic alone (a new site), generic+specialized, or auto: dual when there is one",
    )
    p.add_argument("--device", help="cpu, cuda, cuda:N (default: the model's train.device)")


def _load_model(args: argparse.Namespace):
    from fedmrg.model.mrg import MRGModel

    return MRGModel.load(
        args.model,
        base_llm=args.base_llm,
        base_encoder=_base_encoder_path(args),
        device=args.device,
        site_adapter=args.site_adapter,
    )


def _train_parser(sub) -> None:
    p = sub.add_parser(
        "train",
        help="centralized training of the report generator on one or more sites",
        description="Train on the train split of every --data site (their val split gives a validation loss). "
        "Checkpoints each epoch into RUN/checkpoint and resumes from it when run again with the same "
        "config (raise --max-steps or train.epochs to train longer).",
    )
    _add_config_flag(p, "demo")
    p.add_argument(
        "--data",
        required=True,
        action="append",
        metavar="SITE_DIR",
        help="a site folder (annotation.json + images); repeat for several",
    )
    p.add_argument("--base-llm", metavar="DIR", help="local Hugging Face checkpoint of the frozen LLM (model.base_llm)")
    _add_base_encoder_flag(p)
    _add_public_data_flag(p)
    p.add_argument("--out", required=True, metavar="RUN", help="run folder (model, checkpoint/, tb/)")
    p.add_argument("--max-steps", type=_positive_int, help="stop after this many optimizer steps")
    p.add_argument("--epochs", type=_positive_int, help="override train.epochs")
    p.add_argument("--device", help="override train.device (cpu, cuda, cuda:N)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(handler=_cmd_train)


def _add_base_encoder_flag(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--base-encoder",
        metavar="PATH",
        help="pretrained encoder weights (model.encoder.pretrained; for a saved model, where its frozen or hf "
        "encoder is now): a file, a `fedmrg make-base-encoder` folder, or a Hugging Face model folder",
    )


def _add_public_data_flag(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--public-data",
        metavar="DIR",
        help="public studies to rehearse in training (train.public_data), such as a benchmark's public/ folder",
    )


def _public_data_override(args: argparse.Namespace) -> dict[str, str]:
    return {"train.public_data": str(Path(args.public_data).resolve())} if args.public_data else {}


def _base_encoder_path(args: argparse.Namespace) -> str | None:
    """The weights ``--base-encoder`` names, as an absolute path (None without the option)."""
    from fedmrg.config import encoder_weights

    return str(Path(encoder_weights(args.base_encoder)).resolve()) if args.base_encoder else None


def _base_encoder_override(args: argparse.Namespace) -> dict[str, str]:
    path = _base_encoder_path(args)
    return {"model.encoder.pretrained": path} if path else {}


def _cmd_train(args: argparse.Namespace) -> int:
    from fedmrg.model.training import SUMMARY_FILE, train_centralized

    cfg = load_config(
        args.config,
        {
            "train.epochs": args.epochs,
            "train.device": args.device,
            **_base_encoder_override(args),
            **_public_data_override(args),
        },
    )
    summary = train_centralized(
        cfg, args.data, args.out, base_llm=args.base_llm, max_steps=args.max_steps, progress=not args.quiet
    )
    last = summary["history"][-1] if summary["history"] else {}
    print(
        f"trained {summary['steps']} steps ({summary['epochs']} epochs, {summary['seconds_this_run']} s); "
        f"last epoch loss {last.get('loss', float('nan')):.3f}; model in {args.out}"
    )
    if summary["skipped_studies"]:
        print(
            f"{len(summary['skipped_studies'])} studies left out (files that cannot be used; each is named in "
            f"{Path(args.out) / SUMMARY_FILE} and in the log)"
        )
    return 0


def _generate_parser(sub) -> None:
    p = sub.add_parser("generate", help="write the report of one study (its views as image files)")
    _add_model_flags(p)
    p.add_argument("images", nargs="+", metavar="IMAGE", help="the study's views: PNG, JPG or DICOM")
    p.add_argument("--json", action="store_true", help="print {report, findings} as JSON")
    p.set_defaults(handler=_cmd_generate)


def _cmd_generate(args: argparse.Namespace) -> int:
    from fedmrg.model.inference import generate_for, study_batch

    model = _load_model(args)
    row = generate_for(model, study_batch(model, args.images), adapters=args.adapters)[0]
    if args.json:
        print(json.dumps(row, indent=1))
    else:
        print(row["report"])
        findings = "; ".join(f"{name}: {state}" for name, state in row["findings"].items())
        print(f"\npredicted findings: {findings or 'none stated'}")
    return 0


def _add_split_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data", required=True, metavar="SITE_DIR", help="site (or test-global) folder to score on")
    p.add_argument("--split", default="test", choices=["train", "val", "test"], help="default: test")
    p.add_argument("--out", required=True, help="scores JSON to write; the reports go beside it")
    p.add_argument("--limit", type=_positive_int, help="only the first N studies of the split (quick checks)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")


def _evaluate_parser(sub) -> None:
    p = sub.add_parser(
        "evaluate",
        help="generate the reports of a split and score them (NLG + CE)",
        description="Generate a report for every study of the split, score them as `fedmrg score` does, and write "
        "OUT (scores), OUT-stem.predictions.json (id -> report, readable by `fedmrg score --pred`) and "
        "OUT-stem.findings.json (id -> predicted findings).",
    )
    _add_model_flags(p)
    _add_split_flags(p)
    p.set_defaults(handler=_cmd_evaluate)


def _cmd_evaluate(args: argparse.Namespace) -> int:
    from fedmrg.data.loaders import study_loader
    from fedmrg.model.inference import generate_split

    model = _load_model(args)
    loader = study_loader(
        model.cfg, [args.data], args.split, train=False, batch_size=model.cfg.generate.batch_size, limit=args.limit
    )
    rows = generate_split(model, loader, adapters=args.adapters, progress=not args.quiet)
    findings = {key: row["findings"] for key, row in rows.items()}
    return _score_and_write(
        args, {key: row["report"] for key, row in rows.items()}, loader, model.cfg.data.dataset, findings
    )


def _beside(scores_file: Path, kind: str) -> Path:
    """``NAME.KIND.json`` beside ``NAME.json``: the reports (``predictions``) and the rest of a scored run."""
    return scores_file.with_name(f"{scores_file.stem}.{kind}.json")


def _score_and_write(args: argparse.Namespace, predictions: dict, loader, dataset: str, extra: dict) -> int:
    """Score ``predictions`` against the loader's references; write scores, reports and ``extra`` beside."""
    from fedmrg.data.loaders import loader_records
    from fedmrg.eval.report import format_scores, score_reports, write_scores

    references = {str(r["id"]): r["report"] for r in loader_records(loader)}
    out = Path(args.out)
    kind = "findings" if args.handler is _cmd_evaluate else "retrieved"
    write_json(_beside(out, "predictions"), predictions)  # kept even if scoring fails
    write_json(_beside(out, kind), extra)
    scores = score_reports(predictions, references, dataset=dataset)
    write_scores(out, scores)
    print(format_scores(scores))
    print(f"scores written to {out}; reports to {_beside(out, 'predictions')}")
    return 0


def _retrieve_parser(sub) -> None:
    p = sub.add_parser(
        "retrieve-baseline",
        help="baseline: copy the training report whose findings match best",
        description="For each study of the split, take the training report whose labeler findings best match the "
        "findings the model predicts (--model), the reference report's own findings (--oracle, an "
        "upper bound for copying) or plain 'No Finding' (--normal, the same normal report for every "
        "study), and score the copies like `fedmrg evaluate`.",
    )
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument("--model", metavar="RUN", help="model whose diagnosis head predicts the findings")
    source.add_argument("--oracle", action="store_true", help="use the reference reports' own findings")
    source.add_argument(
        "--normal",
        action="store_true",
        help="copy the best-matching normal report (No Finding positive) for every study: the "
        "floor any model must beat on CE",
    )
    p.add_argument(
        "--train-data",
        action="append",
        metavar="SITE_DIR",
        help="sites whose train reports are retrieved from (default: --data); repeat for several",
    )
    p.add_argument("--base-llm", metavar="DIR", help="the base LLM checkpoint, if it moved since training")
    _add_base_encoder_flag(p)
    p.add_argument("--device", help="cpu, cuda, cuda:N")
    p.add_argument("--config", default="demo", help="config for --oracle / --normal (text cleaning, image size)")
    _add_split_flags(p)
    p.set_defaults(handler=_cmd_retrieve, site_adapter=None)


def _cmd_retrieve(args: argparse.Namespace) -> int:
    import numpy as np

    from fedmrg.data.loaders import loader_records, split_records, study_loader
    from fedmrg.eval.retrieval import copied_reports, normal_query

    model = _load_model(args) if args.model else None
    cfg = model.cfg if model else load_config(args.config)
    loader = study_loader(
        cfg, [args.data], args.split, train=False, batch_size=cfg.generate.batch_size, limit=args.limit
    )
    candidates = [
        row for site in (args.train_data or [args.data]) for row in split_records(site, "train", cfg.data.dataset)[0]
    ]
    if not candidates:
        raise FedMRGError(
            f"{', '.join(args.train_data or [args.data])}: no train reports to retrieve from "
            "(a test-only folder such as test-global needs --train-data SITE_DIR)"
        )
    records = loader_records(loader)
    if args.normal:
        query = normal_query(len(records))
    elif model is None:
        query = np.stack([r["states"] for r in records])
    else:
        if model.diagnosis is None:
            raise FedMRGError(f"{args.model}: the model has no diagnosis head (model.diagnosis: false); use --oracle")
        query = np.concatenate([model.predict_states(batch).numpy() for batch in loader])
    predictions, retrieved = copied_reports([str(r["id"]) for r in records], query, candidates)
    return _score_and_write(args, predictions, loader, cfg.data.dataset, retrieved)


def _site_check_parser(sub) -> None:
    p = sub.add_parser(
        "site-check",
        help="check a hospital's setup before it joins a federation (exit 1 on any FAIL)",
        description="Check what a site needs to run a FedMRG job: its settings (fedmrg_site.yaml), data "
        "(annotation.json, every image file, a decoded sample, labels of the train reports), base LLM, "
        "device and 4-bit support, free disk, versions, and its FLARE startup kit. One line per check: "
        "PASS, WARN, FAIL (or SKIP after a failure it depends on). Exit status 0 without FAIL, 1 with.",
    )
    p.add_argument(
        "--kit",
        metavar="SITE_KIT",
        help="the site's startup kit (startup/, local/): its name, allow list and local/fedmrg_site.yaml",
    )
    p.add_argument(
        "--settings",
        metavar="FILE",
        help="site settings file (default: SITE_KIT/local/fedmrg_site.yaml, else $FEDMRG_SITE_SETTINGS)",
    )
    p.add_argument("--site", metavar="NAME", help="the site's name (default: the kit's)")
    p.add_argument(
        "--job",
        metavar="JOB_DIR",
        help="an exported FedMRG job: its client config and versions are checked against this site",
    )
    p.add_argument(
        "--config",
        metavar="NAME_OR_PATH",
        help="the config to check against without --job: a named config or a YAML file (default: demo)",
    )
    p.add_argument(
        "--min-free-gib",
        type=float,
        default=5.0,
        metavar="N",
        help="free disk needed where the site keeps its state (default: 5)",
    )
    p.add_argument(
        "--sample",
        type=_positive_int,
        default=20,
        metavar="N",
        help="studies decoded as the trainer does (default: 20; every image file is checked to exist)",
    )
    p.add_argument("--json", metavar="OUT", help="also write the results as JSON")
    p.set_defaults(handler=_cmd_site_check)


def _cmd_site_check(args: argparse.Namespace) -> int:
    from fedmrg.ops.site_check import CheckRequest, format_report, run_site_check, write_json_report

    if args.min_free_gib < 0:
        raise FedMRGError(f"--min-free-gib: {args.min_free_gib:g} must be at least 0")
    request = CheckRequest(
        kit=Path(args.kit) if args.kit else None,
        settings_file=Path(args.settings) if args.settings else None,
        site=args.site,
        job=Path(args.job) if args.job else None,
        config=args.config,
        min_free_gib=args.min_free_gib,
        sample=args.sample,
    )
    report = run_site_check(request)
    print(format_report(report))
    if args.json:
        write_json_report(report, Path(args.json))
        print(f"results written to {args.json}")
    return 1 if report.failed else 0


def _server_kit_parser(sub) -> None:
    p = sub.add_parser(
        "server-kit",
        help="make a provisioned server kit ready: persistent job and snapshot storage, FedMRG allowed, no code",
        description="Write SERVER_KIT/local/resources.json from the kit's default with the job store and the "
        "snapshots under --storage (the default, /tmp/nvflare/..., may be emptied at boot, and the server "
        "then forgets every job), the FedMRG classes in the allow list, and with --policies the hospital "
        "authorization policy (no role may bring code to the server). Without --storage, only check: one "
        "line per store that a reboot may empty; exit status 1 if any.",
    )
    p.add_argument("kit", metavar="SERVER_KIT", help="the server's startup kit (with local/)")
    p.add_argument("--storage", metavar="DIR", help="a persistent folder for jobs-storage/ and snapshot-storage/")
    p.add_argument("--policies", metavar="DIR", help="a folder with authorization.json (e.g. provisioning/)")
    p.set_defaults(handler=_cmd_server_kit)


def _cmd_server_kit(args: argparse.Namespace) -> int:
    from fedmrg.ops.server_kit import prepare_server_kit, storage_problems

    local = Path(args.kit) / "local"
    if args.storage:
        print(f"written: {prepare_server_kit(local, args.storage, args.policies)}")
    problems = storage_problems(local)
    for line in problems:
        print(f"WARN  {line}")
    if not problems:
        print(f"PASS  job and snapshot storage of {args.kit} survive a reboot")
    return 1 if problems else 0


def _poc_federation_arguments(p: argparse.ArgumentParser) -> None:
    """What `poc` and `poc-up` share: the job, the sites' data and policies, the workspace."""
    p.add_argument("--job", required=True, metavar="JOB_DIR", help="an exported job (jobs/<job>/job.py --export)")
    p.add_argument("--data", required=True, metavar="BENCH_DIR", help="benchmark folder with site-1, site-2, ...")
    p.add_argument("--base-llm", metavar="DIR", help="the base LLM checkpoint folder every site uses")
    p.add_argument("--sites", type=_positive_int, default=2, help="number of sites (default: 2)")
    _poc_workspace_argument(p)
    p.add_argument(
        "--policies",
        metavar="DIR",
        help="install DIR's authorization.json, privacy.json, resources.json at every site (e.g. provisioning/)",
    )


def _poc_workspace_argument(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--workspace",
        metavar="WS",
        default=DEFAULT_POC_WS,
        help="where the POC system, the job's download and nvflare's HOME go (default: data/poc)",
    )


def _poc_plan(args: argparse.Namespace, **extra) -> PocRun:
    from fedmrg.ops.poc import PocRun

    return _federation_plan(PocRun, args, **extra)


def _federation_plan(kind: type, args: argparse.Namespace, **extra):
    """A POC or consortium run from the options both commands share."""
    return kind(
        workspace=Path(args.workspace),
        job_dir=Path(args.job),
        data=Path(args.data),
        sites=args.sites,
        base_llm=Path(args.base_llm) if args.base_llm else None,
        policies=Path(args.policies) if args.policies else None,
        **extra,
    )


def _stop_on_sigterm() -> None:
    import signal

    def interrupted(signum, frame):  # SIGTERM stops the federation the same way Ctrl-C does
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, interrupted)
    logging.getLogger("nvflare").setLevel(logging.WARNING)  # FLARE API connection chatter


def _poc_parser(sub) -> None:
    p = sub.add_parser(
        "poc",
        help="run an exported job on a local FLARE POC federation, end to end (what `make poc` does)",
        description="Prepare a FLARE POC system (server, SITES clients, admin kits) in WS, give each site its "
        "benchmark folder (local/fedmrg_site.yaml) and, with --policies, the hospital's policy files; "
        "start it, submit the job through the FLARE API as the project admin, follow its rounds, "
        "download the result, print the summary and the job's final status, and stop every process "
        "it started, also when a step fails or on Ctrl-C. nvflare runs with HOME=WS/home, so the "
        "user's ~/.nvflare is left alone. Exit status 0 when the job ends FINISHED:COMPLETED.",
    )
    _poc_federation_arguments(p)
    p.add_argument(
        "--timeout",
        type=_positive_int,
        default=7200,
        help="seconds the job may run before it is aborted (default: 7200)",
    )
    p.set_defaults(handler=_cmd_poc)


def _poc_up_parser(sub) -> None:
    p = sub.add_parser(
        "poc-up",
        help="start a local FLARE POC federation and leave it running for the admin console (make poc-up)",
        description="Prepare, wire and start a POC federation as `fedmrg poc` does, copy the job into the "
        "admin kit's transfer/ folder, print the console command and what to type to submit the job, "
        "and leave everything running; `fedmrg poc-down` stops it. A failed step stops what had started.",
    )
    _poc_federation_arguments(p)
    p.set_defaults(handler=_cmd_poc_up)


def _poc_down_parser(sub) -> None:
    p = sub.add_parser(
        "poc-down",
        help="stop the POC federation that `poc-up` started (make poc-down)",
        description="nvflare poc stop in WS, then terminate and kill any process still running from it, "
        "and check that ports 8002/8003 are free. Exit status 0 when nothing is left running.",
    )
    _poc_workspace_argument(p)
    p.set_defaults(handler=_cmd_poc_down)


def _cmd_poc_up(args: argparse.Namespace) -> int:
    from fedmrg.ops.poc import poc_up

    _stop_on_sigterm()
    console = poc_up(_poc_plan(args))
    print(f"the federation is up and stays up (workspace {args.workspace})")
    print(f"admin console:  {console.command}")
    print(f"submit the job: submit_job {console.job_name}    (the job is in {console.transfer_dir})")
    make_down = "make poc-down" + ("" if args.workspace == DEFAULT_POC_WS else f" POC_WS={args.workspace}")
    print(f"stop it:        {make_down}  (or fedmrg poc-down --workspace {args.workspace})")
    return 0


def _cmd_poc_down(args: argparse.Namespace) -> int:
    from fedmrg.ops.poc import poc_down

    _stop_on_sigterm()
    return 0 if poc_down(Path(args.workspace)) else 1


def _cmd_poc(args: argparse.Namespace) -> int:
    from fedmrg.fl.results import read_results, site_examples, summary_markdown
    from fedmrg.ops.poc import find_results, run_poc

    _stop_on_sigterm()
    workspace = Path(args.workspace)
    outcome = run_poc(_poc_plan(args, timeout=args.timeout))
    run_dir = find_results(outcome.result_dir)
    if run_dir is not None:
        results = read_results(run_dir / "results.json")
        text = summary_markdown(results, site_examples(workspace, results["job"], 2))
        (run_dir / "summary.md").write_text(text, encoding="utf-8")
        print(text)
        print(f"downloaded: {outcome.result_dir} (results.json, global_model/, rounds.png in {run_dir.name}/)")
    print(f"job {outcome.job_id}: {outcome.status}")
    return 0 if outcome.completed else 1


def _consortium_parser(sub) -> None:
    p = sub.add_parser(
        "consortium",
        help="run an exported job on a consortium across hosts on this machine (network namespaces, make consortium)",
        description="Give the server, each hospital and the admin their own Linux network namespace on a private "
        "bridge, with the provisioned host names resolved in each; provision the consortium (nvflare provision: "
        "mutual TLS), start each participant from its startup kit in its namespace, and have the admin submit the "
        "job through the FLARE API from its own namespace, follow it and download the result. --link shapes a "
        "hospital's link (tc: tbf for a rate, netem for latency and loss), --cut unplugs it for a while. "
        "Everything created is removed on every way "
        "out. Needs root (or CAP_SYS_ADMIN). Exit status 0 when the job ends FINISHED:COMPLETED.",
    )
    p.add_argument("--job", required=True, metavar="JOB_DIR", help="an exported job (jobs/<job>/job.py --export)")
    p.add_argument("--data", required=True, metavar="BENCH_DIR", help="benchmark folder with site-1, site-2, ...")
    p.add_argument("--base-llm", metavar="DIR", help="the base LLM checkpoint folder every hospital uses")
    p.add_argument("--sites", type=_positive_int, default=2, help="hospitals (hospital-a, ...; default: 2)")
    p.add_argument("--workspace", metavar="WS", default=DEFAULT_CONSORTIUM_WS, help="kits, logs, the download")
    p.add_argument("--policies", metavar="DIR", help="hospital policy files installed at every site (provisioning/)")
    p.add_argument(
        "--link",
        action="append",
        default=[],
        metavar="HOSPITAL=SPEC",
        help="shape a hospital's link both ways, e.g. hospital-a=10mbit,20ms,0.1%% (repeatable)",
    )
    p.add_argument(
        "--cut", metavar="WHO:AFTER:SECONDS", help="unplug a hospital (or the server) AFTER s after the submission"
    )
    p.add_argument("--project", default="provisioning/project.yml", help="the FLARE project file (its builders)")
    p.add_argument("--timeout", type=_positive_int, default=7200, help="seconds before the job is aborted")
    p.set_defaults(handler=_cmd_consortium)


def _cmd_consortium(args: argparse.Namespace) -> int:
    from fedmrg.fl.results import read_results, summary_markdown
    from fedmrg.ops.consortium import ConsortiumRun, Link, run_consortium
    from fedmrg.ops.poc import find_results

    _stop_on_sigterm()
    links = {}
    for item in args.link:
        hospital, _, spec = item.partition("=")
        links[hospital] = Link.parse(spec)
    cut = None
    if args.cut:
        parts = args.cut.split(":")
        try:
            cut = (parts[0], float(parts[1]), float(parts[2]))
        except (IndexError, ValueError):
            raise ConfigError(f"--cut {args.cut!r}: WHO:AFTER:SECONDS, e.g. hospital-b:30:60") from None
    plan = _federation_plan(ConsortiumRun, args, links=links, cut=cut, timeout=args.timeout, project=Path(args.project))
    outcome = run_consortium(plan)
    run_dir = find_results(outcome.result_dir)
    if run_dir is not None:
        print(summary_markdown(read_results(run_dir / "results.json")))
    print(f"job {outcome.job_id}: {outcome.status}")
    return 0 if outcome.completed else 1


def _bench_parser(sub) -> None:
    from fedmrg.experiments.methods import BY_NAME

    p = sub.add_parser(
        "bench",
        help="the FL-MRG benchmark: FedMRG against local, centralized, FedAvg-LoRA and its ablations",
        description="Run every method (or --methods) with every seed on the benchmark that prepare-data builds, "
        "with the same budget; federated methods run their FLARE job in the simulator. Writes "
        "OUT/NAME.json (runs, summary, claims), OUT/NAME.md and plots, and rewrites the results section "
        "of the results page (--results-page, default docs/benchmark.md). Finished runs are reused, so "
        "an interrupted benchmark resumes, and so are the runs OUT/NAME.json records when their config, "
        "inputs and the inputs' bytes (fingerprints) are the same: extending a published benchmark runs "
        "only what it lacks.",
    )
    preset = p.add_mutually_exclusive_group(required=True)
    preset.add_argument(
        "--quick",
        dest="preset",
        action="store_const",
        const="quick",
        help="a short budget and greedy decoding: tens of minutes on a CPU",
    )
    preset.add_argument(
        "--cpu",
        dest="preset",
        action="store_const",
        const="cpu",
        help="the decisive run on 2 CPU cores: a budget at which the methods learn findings, public studies "
        "rehearsed, 3 seeds (ablations 2)",
    )
    preset.add_argument(
        "--full",
        dest="preset",
        action="store_const",
        const="full",
        help="the config's own budget, beam search, every test study: for a GPU",
    )
    _add_config_flag(p, "demo")
    p.add_argument(
        "--partition",
        choices=PARTITIONS,
        help="how studies are dealt to sites when the benchmark is built here (default: style)",
    )
    p.add_argument(
        "--data", metavar="BENCH_DIR", help="a benchmark folder (default: built or reused under $FEDMRG_DATA_DIR)"
    )
    p.add_argument("--base-llm", metavar="DIR", help="base LLM checkpoint (default: the benchmark's demo LLM)")
    _add_base_encoder_flag(p)
    _add_public_data_flag(p)
    p.add_argument(
        "--llm-1b",
        action="store_true",
        help="instead, a 1.1B LLaMA (TinyLlama's shape) with random weights and the base LLM's tokenizer: "
        "for timing and memory on a GPU, not for quality",
    )
    p.add_argument("--methods", nargs="+", metavar="METHOD", help=f"a subset of: {', '.join(BY_NAME)}")
    p.add_argument("--seeds", nargs="+", type=_non_negative_int, metavar="SEED", help="default: the preset's")
    p.add_argument(
        "--name",
        help="results name (default: the preset, plus the config unless demo, the "
        "partition unless style, and 1b with --llm-1b)",
    )
    p.add_argument("--out", default="bench/results", help="results folder (default: bench/results)")
    p.add_argument("--work", metavar="DIR", help="run folders (default: $FEDMRG_DATA_DIR/bench/NAME)")
    p.add_argument(
        "--results-page",
        metavar="PAGE",
        help="markdown page whose results section (between <!-- bench:begin --> and <!-- bench:end -->) "
        "is rewritten, its plot links relative to the page (default: docs/benchmark.md; 'none' to "
        "skip; with --llm-1b, whose quality numbers mean nothing, none unless given)",
    )
    p.add_argument("--jobs", default="jobs", metavar="DIR", help="the jobs folder (default: jobs)")
    p.add_argument("--device", help="override train.device (cpu, cuda, cuda:N)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(handler=_cmd_bench)


def _cmd_bench(args: argparse.Namespace) -> int:
    from fedmrg.data.iuxray import data_dir
    from fedmrg.experiments.methods import select_methods
    from fedmrg.experiments.report import image_links, markdown, partition_rows, refresh_results_page, write_outputs
    from fedmrg.experiments.runner import (
        PRESETS,
        BenchRequest,
        bench_results,
        prepare_inputs,
        published_runs,
        random_llama_1b,
        run_benchmark,
    )

    methods = select_methods(args.methods)
    if args.data and args.partition:
        raise FedMRGError("--partition applies when the benchmark is built here; --data's partition is its own")
    partition = args.partition or "style"
    name = args.name or _bench_name(args, partition)
    if args.data:
        data, base_llm = Path(args.data), args.base_llm
        if base_llm is None:
            raise FedMRGError("--data needs --base-llm (the LLM the benchmark's runs start from)")
        encoder = _base_encoder_override(args)
    else:
        data, default_llm, default_encoder = prepare_inputs(args.config, partition, progress=not args.quiet)
        base_llm = args.base_llm or default_llm
        encoder = _base_encoder_override(args) or (
            {"model.encoder.pretrained": str(default_encoder)} if default_encoder else {}
        )
    preset = PRESETS[args.preset]
    public = _public_data_override(args)
    if not public and preset.rehearse_public:
        if not (data / "public").is_dir():
            raise FedMRGError(
                f"{data / 'public'}: no public studies, which --{preset.name} rehearses at every site; "
                "pass --public-data DIR"
            )
        public = {"train.public_data": str((data / "public").resolve())}
    work = Path(args.work) if args.work else data_dir() / "bench" / name
    if args.llm_1b:
        base_llm = random_llama_1b(Path(base_llm), work / "llama-1b")
    request = BenchRequest(
        preset=preset,
        methods=methods,
        data=data.resolve(),
        base_llm=Path(base_llm).resolve(),
        config=args.config,
        seeds=tuple(dict.fromkeys(args.seeds or ())),
        work=work,
        jobs_dir=Path(args.jobs),
        progress=not args.quiet,
        extra_overrides={
            **encoder,
            **public,
            **({"train.device": args.device} if args.device else {}),
        },
        published=published_runs(Path(args.out) / f"{name}.json"),
    )
    records = run_benchmark(request)
    results = bench_results(name, request, records)
    if not args.name:
        results["partitions"] = partition_rows(_partition_results(args, partition, results))
    paths = write_outputs(results, args.out)
    text = markdown(results)
    print(text)
    page = args.results_page or ("none" if args.llm_1b else "docs/benchmark.md")
    if page != "none":
        refresh_results_page(page, markdown(results, image_dir=image_links(page, args.out)))
        print(f"results section of {page} rewritten")
    print("written: " + ", ".join(str(path) for path in paths.values()))
    return 0


def _bench_name(args: argparse.Namespace, partition: str) -> str:
    """The default results name: the preset, plus the config unless demo, the partition unless style,
    and 1b with --llm-1b."""
    parts = (
        args.preset,
        None if args.config == "demo" else Path(args.config).stem,
        None if partition == "style" else partition,
        "1b" if args.llm_1b else None,
    )
    return "-".join(part for part in parts if part)


def _partition_results(args: argparse.Namespace, partition: str, results: dict) -> list[dict]:
    """These results with those of the same preset and config on the other partitions that OUT holds."""
    found = []
    for other in PARTITIONS:
        path = Path(args.out) / f"{_bench_name(args, other)}.json"
        if other == partition:
            found.append(results)
        elif path.is_file():
            found.append(load_json(path))
    return found


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="fedmrg", description="Federated chest X-ray report generation on NVIDIA FLARE"
    )
    parser.add_argument("--version", action="version", version=f"fedmrg {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for add in (
        _prepare_data_parser,
        _show_data_parser,
        _config_parser,
        _label_parser,
        _score_parser,
        _report_parser,
        _review_page_parser,
        _make_base_llm_parser,
        _make_base_encoder_parser,
        _train_parser,
        _generate_parser,
        _evaluate_parser,
        _retrieve_parser,
        _fl_report_parser,
        _site_check_parser,
        _server_kit_parser,
        _poc_parser,
        _poc_up_parser,
        _poc_down_parser,
        _consortium_parser,
        _bench_parser,
    ):
        add(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
    )
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
