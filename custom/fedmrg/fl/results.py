"""A federated run's ``results.json``: writing it, a plot of the rounds, and a markdown summary.

``results.json``::

    {"job", "config",
     "rounds": [{"round", "seconds", "bytes_up": {site: n}, "bytes_down": {site: n}, "dense_bytes_up": {site: n},
                 "dense_bytes_down": {site: n}, "metrics": {site: {name: value}}, "accepted": [site],
                 "refused": {site: reason}}],
     "final": {site: {"generic": scores, "personalized": scores}},
     "global_model": path, "best_model": {"round", "value", "metric", "path"}}

``scores`` are ``fedmrg evaluate``'s (``{"n", "nlg", "ce", "ce_per_observation"}``, ``ce`` holding
every CE variant; a run scored before the ``abnormal`` variant existed lacks it and shows n/a);
``bytes_up`` / ``bytes_down`` are the bytes of a site's train result and train task as FLARE
serialized them, payload and metadata, measured where each arrived (:mod:`fedmrg.fl.wire`; None
where a message carried no measure); ``dense_bytes_up`` / ``dense_bytes_down`` the fp32 size of the
shared parameters, what FedAvg of them sends each way.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

import yaml

from fedmrg.errors import DataError
from fedmrg.eval.report import COLUMNS, row_values
from fedmrg.eval.texts import read_references
from fedmrg.io import load_json
from fedmrg.labels.labeler import label_matrix
from fedmrg.labels.observations import ABNORMAL, ABNORMAL_COLUMNS, POSITIVE

RESULTS_FILE = "results.json"


def read_results(path: str | os.PathLike) -> dict:
    data = load_json(Path(path))
    if not isinstance(data, dict) or not {"job", "rounds", "final"} <= data.keys():
        raise DataError(f"{path}: not a FedMRG results.json (expected the keys job, rounds, final)")
    return data


TRAFFIC_KEYS = ("bytes_up", "bytes_down", "dense_bytes_up", "dense_bytes_down")


def traffic(results: Mapping) -> dict[str, int]:
    """Total bytes over the run, up and down, and the dense fp32 sizes of the same parameters."""
    return {key: sum(round_bytes(record, key) for record in results["rounds"]) for key in TRAFFIC_KEYS}


def round_bytes(record: Mapping, key: str) -> int:
    """One round's bytes of ``key`` over its sites (a site whose message carried no measure adds none)."""
    return sum(n for n in record.get(key, {}).values() if n is not None)


def plot_rounds(results: Mapping, path: str | os.PathLike) -> Path | None:
    """Validation loss per site and cumulative upload per round (PNG); None without rounds."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    rounds = results["rounds"]
    if not rounds:
        return None
    sites = sorted({site for record in rounds for site in record["metrics"]})
    fig, (loss_ax, bytes_ax) = plt.subplots(1, 2, figsize=(10, 3.8))
    for site in sites:
        points = [
            (r["round"], r["metrics"][site]["val_loss"]) for r in rounds if "val_loss" in r["metrics"].get(site, {})
        ]
        if points:
            loss_ax.plot(*zip(*points), marker="o", label=site)
    loss_ax.set(xlabel="round (model received)", ylabel="validation loss", title="global model at each site")
    if loss_ax.lines:
        loss_ax.legend()
    x = [r["round"] for r in rounds]
    job = results["job"]
    for key, label, style in (
        ("bytes_up", f"{job} up", "o-"),
        ("bytes_down", f"{job} down", "s-"),
        ("dense_bytes_up", "dense fp32, each way", "k--"),
    ):
        total, series = 0, []
        for record in rounds:
            total += round_bytes(record, key)
            series.append(total / 2**20)
        bytes_ax.plot(x, series, style, label=label)
    bytes_ax.set(xlabel="round", ylabel="MiB (all sites, cumulative)", title="traffic")
    bytes_ax.legend()
    for ax in (loss_ax, bytes_ax):
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def traffic_sentence(totals: Mapping[str, int]) -> str:
    """Both directions and the round trip against dense fp32 FedAvg of the same parameters."""

    def against(sent: int, dense: int) -> str:
        if not sent:
            return "nothing measured"
        return f"{_mib(sent)} (dense fp32 / this: {dense / sent:.1f}x)" if dense else _mib(sent)

    up, down = totals["bytes_up"], totals["bytes_down"]
    dense_up, dense_down = totals["dense_bytes_up"], totals["dense_bytes_down"]
    return (
        f"On the wire: up {against(up, dense_up)}, down {against(down, dense_down)}, both ways "
        f"{against(up + down, dense_up + dense_down if dense_down else 0)}; "
        f"dense fp32 FedAvg of the same parameters moves {_mib(dense_up)} each way."
    )


def summary_markdown(results: Mapping, examples: Mapping[str, list[tuple[str, str]]] | None = None) -> str:
    """Quality per site (generic / personalized): the NLG metrics and the CE F1 of every variant (``abnormal``
    among them: 0 for a model that calls every study normal); bytes moved; a few reports beside their references."""

    n_rounds = len(results["rounds"])
    lines = [f"## {results['job']}: {n_rounds} round{'' if n_rounds == 1 else 's'}", ""]
    header = ["site", "adapters", *COLUMNS]
    lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for site, scores in sorted(results.get("final", {}).items()):
        for label in ("generic", "personalized"):
            if label in scores:
                values = ["n/a" if v is None else f"{v:.3f}" for v in row_values(scores[label])]
                lines.append(f"| {site} | {label} | " + " | ".join(values) + " |")
    lines += ["", traffic_sentence(traffic(results))]
    for site, pairs in sorted((examples or {}).items()):
        lines += ["", f"### {site}: generated (personalized) and reference reports", ""]
        for generated, reference in pairs:
            lines += [f"- generated: {generated}", f"  reference: {reference}"]
    return "\n".join(lines) + "\n"


def held_out_markdown(
    name: str, scores: Mapping, predictions: Mapping[str, str], references: Mapping[str, str], count: int = 3
) -> str:
    """The global model on a held-out split (``fedmrg evaluate``'s scores and reports): its figures and
    the first ``count`` studies (by id) whose reference names an abnormal finding, each report with the
    findings the labeler reads in it, so that a reader sees whether the findings come through."""
    ce = scores["ce"]
    nlg = scores["nlg"]
    abnormal = ce.get("abnormal", {})
    lines = [
        f"## The global model on {name} ({scores['n']} studies, held out from every site)",
        "",
        "| BLEU-4 | METEOR | ROUGE-L | CIDEr | CE-F1 example | CE abnormal P | CE abnormal R | CE abnormal F1 |",
        "|---|---|---|---|---|---|---|---|",
        "| "
        + " | ".join(
            "n/a" if v is None else f"{v:.3f}"
            for v in (
                nlg.get("BLEU-4"),
                nlg.get("METEOR"),
                nlg.get("ROUGE-L"),
                nlg.get("CIDEr"),
                ce["example"]["f1"],
                abnormal.get("precision"),
                abnormal.get("recall"),
                abnormal.get("f1"),
            )
        )
        + " |",
    ]
    ids = sorted(key for key in predictions if key in references)
    found = dict(zip(ids, abnormal_findings([references[k] for k in ids])))
    said = dict(zip(ids, abnormal_findings([predictions[k] for k in ids])))
    shown = [key for key in ids if found[key]][:count]
    if shown:
        lines += [
            "",
            f"### {name}: studies whose reference names an abnormal finding (the first {len(shown)} by id)",
            "",
        ]
    for key in shown:
        lines += [
            f"- {key}, generated ({', '.join(said[key]) or 'no abnormal finding'}): {predictions[key]}",
            f"  reference ({', '.join(found[key])}): {references[key]}",
        ]
    return "\n".join(lines) + "\n"


def abnormal_findings(texts: list[str]) -> list[list[str]]:
    """The abnormal observations the labeler reads as positive in each text."""
    positive = label_matrix(texts) == POSITIVE
    return [[ABNORMAL[j] for j, k in enumerate(ABNORMAL_COLUMNS) if row[k]] for row in positive]


def site_examples(workspace: str | os.PathLike, job: str, count: int) -> dict[str, list[tuple[str, str]]]:
    """A few personalized reports beside their references, for each simulated site of a run.

    Read where only a local demo can: the sites' own folders (``sites.yaml`` that ``job.py`` wrote
    for the simulator names each site's data and state folders); a real deployment has none of this.
    """

    settings = Path(workspace) / "sites.yaml"
    if count <= 0 or not settings.is_file():
        return {}
    examples = {}
    for site, entry in sorted((yaml.safe_load(settings.read_text(encoding="utf-8")) or {}).items()):
        reports = Path(entry.get("state_dir", "")) / f"{job}-reports"
        generated = reports / "personalized.predictions.json"
        if not generated.is_file():
            continue
        predictions = load_json(generated)
        references = read_references(Path(entry["data_dir"]) / "annotation.json", "test")
        examples[site] = [
            (predictions[key], references[key]) for key in sorted(predictions)[:count] if key in references
        ]
    return examples


def _mib(n: int) -> str:
    return f"{n / 2**20:.2f} MiB"
