"""The FL-MRG benchmark's results: summary over seeds and sites, the claims it tests, tables, plots, and
the results section of the results page (docs/benchmark.md).

Everything here is computed from the run records of :mod:`fedmrg.experiments.runner` (one per method
and seed); ``fedmrg bench`` run again over finished runs only redoes this report.

Per run, a method's quality at a site is that of the model the site deploys: generic+specialized
adapters where the method trains both, the generic one otherwise. The summary averages over the
sites first, then gives the mean and the sample standard deviation over seeds (``<metric>_sd``).
A run recorded before a CE variant existed (``CE-F1-abnormal``) has None for it, left out of the
means (n/a when no run has it); a results file written before it is still rendered, with n/a.
"""

from __future__ import annotations

import os
import re
import statistics
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from fedmrg.errors import ConfigError
from fedmrg.eval.report import COLUMNS, row_values
from fedmrg.experiments.methods import BY_NAME
from fedmrg.io import write_json

METRICS = tuple(column.replace(" ", "-") for column in COLUMNS)  # "CE-F1-example", "BLEU-4", ...
# CE-F1-abnormal leaves out "No Finding": a model that calls every study normal scores 0 on it.
KEY_METRICS = ("CE-F1-example", "CE-F1-abnormal", "BLEU-4", "CIDEr")
# The results page's section that `fedmrg bench` rewrites lies between these markers.
RESULTS_BEGIN, RESULTS_END = "<!-- bench:begin -->", "<!-- bench:end -->"
# The headline claims' bars: fedmrg within 5% of centralized CE-F1 (example), 25x less upload than FedAvg.
CENTRALIZED_SHARE, UPLOAD_RATIO = 0.95, 25.0


def metric_values(scores: Mapping[str, Any]) -> dict[str, float | None]:
    return dict(zip(METRICS, row_values(scores)))


def deployed_scores(record: Mapping[str, Any]) -> dict[str, Mapping[str, Any]]:
    """Each site's scores with the model it deploys (personalized where there is one)."""
    return {site: scores.get("personalized", scores["generic"]) for site, scores in record["sites"].items()}


def _mean(values: Sequence[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return statistics.fmean(present) if present else None


def _sd(values: Sequence[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return statistics.stdev(present) if len(present) > 1 else None


def _over_sites(per_site: Sequence[Mapping[str, Any]]) -> dict[str, float | None]:
    rows = [metric_values(scores) for scores in per_site]
    return {metric: _mean([row[metric] for row in rows]) for metric in METRICS}


def _traffic(record: Mapping[str, Any], key: str) -> float | None:
    """``bytes_up`` / ``bytes_down``: mean bytes of one site in one round it took part in; ``up_total`` /
    ``down_total``: all sites, whole run. 0 for local-only, None for centralized (it moves the data)."""
    if record["setting"] == "local":
        return 0.0
    traffic = record.get("traffic")
    if not traffic:
        return None
    if key.endswith("_total"):
        return traffic[key]
    return _mean([value for series in traffic[key].values() for value in series])


def seconds_per_round(record: Mapping[str, Any]) -> float | None:
    """Mean wall time of a federated round at the server (send, train at every site, merge)."""
    timing = record.get("timing")
    return _mean(timing["round_seconds"]) if timing and timing["round_seconds"] else None


def peak_memory_mib(record: Mapping[str, Any]) -> float | None:
    """The largest peak memory of a site process (GPU memory allocated on a GPU, RSS on a CPU)."""
    timing = record.get("timing")
    return max(timing["peak_memory_mib"].values()) if timing and timing["peak_memory_mib"] else None


COSTS: dict[str, Callable[[Mapping[str, Any]], float | None]] = {
    "bytes_up_per_round": lambda record: _traffic(record, "bytes_up"),
    "bytes_down_per_round": lambda record: _traffic(record, "bytes_down"),
    "bytes_up_total": lambda record: _traffic(record, "up_total"),
    "bytes_down_total": lambda record: _traffic(record, "down_total"),
    "seconds_per_round": seconds_per_round,
    "peak_memory_mib": peak_memory_mib,
    "wall_s": lambda record: record["wall_s"],
}


def summarize(records: Sequence[Mapping[str, Any]]) -> dict[str, dict[str, Any]]:
    """Method -> means over seeds of the site means (and ``_sd``), test-global, bytes, wall time, per site."""
    by_method: dict[str, list[Mapping[str, Any]]] = {}
    for record in records:
        by_method.setdefault(record["method"], []).append(record)
    summary = {}
    for method, runs in by_method.items():
        entry: dict[str, Any] = {"setting": runs[0]["setting"], "seeds": [run["seed"] for run in runs]}
        per_seed = {
            **{metric: [] for metric in METRICS},
            **{f"test-global-{metric}": [] for metric in METRICS},
            **{cost: [] for cost in COSTS},
        }
        for run in runs:
            for metric, value in _over_sites(list(deployed_scores(run).values())).items():
                per_seed[metric].append(value)
            for metric, value in _over_sites(list(run["test_global"].values())).items():
                per_seed[f"test-global-{metric}"].append(value)
            for cost, measure in COSTS.items():
                per_seed[cost].append(measure(run))
        for key, values in per_seed.items():
            entry[key], entry[f"{key}_sd"] = _mean(values), _sd(values)
        sites = sorted({site for run in runs for site in run["sites"]})
        entry["per_site"] = {
            site: {
                metric: _mean(
                    [metric_values(deployed_scores(run)[site])[metric] for run in runs if site in run["sites"]]
                )
                for metric in KEY_METRICS
            }
            for site in sites
        }
        entry["curves"] = _mean_curves([run["curves"] for run in runs if run.get("curves")])
        summary[method] = entry
    return summary


def _mean_curves(curves: Sequence[Mapping[str, list[float | None]]]) -> dict[str, list[float | None]] | None:
    if not curves:
        return None
    names = set.intersection(*(set(c) for c in curves))
    return {name: [_mean(points) for points in zip(*(c[name] for c in curves))] for name in sorted(names)}


# ----------------------------------------------------------------------------------------------- claims
def _value(summary: Mapping, method: str, key: str) -> float | None:
    return summary.get(method, {}).get(key)


def _difference(summary: Mapping, metric: str, ours: str, theirs: str) -> tuple[float | None, bool | None]:
    """``ours - theirs`` on ``metric``, and whether it exceeds the sum of their seed spreads (None: one seed)."""
    a, b = _value(summary, ours, metric), _value(summary, theirs, metric)
    if a is None or b is None:
        return None, None
    spreads = (_value(summary, ours, f"{metric}_sd"), _value(summary, theirs, f"{metric}_sd"))
    return a - b, None if None in spreads else abs(a - b) > sum(spreads)


def _beats(summary: Mapping, other: str) -> dict[str, Any]:
    metrics = ("CE-F1-example", "BLEU-4")
    differences = {metric: _difference(summary, metric, "fedmrg", other) for metric in metrics}
    known = all(delta is not None for delta, _ in differences.values())
    detail = "; ".join(
        f"{metric} {_fmt(_value(summary, 'fedmrg', metric))} vs {_fmt(_value(summary, other, metric))}"
        for metric in metrics
    )
    unclear = [metric for metric, (delta, clear) in differences.items() if delta is not None and clear is False]
    if unclear:
        detail += f"; within the seed spread on {', '.join(unclear)}"
    return {
        "claim": f"fedmrg beats {other} on the site mean of CE-F1 (example) and BLEU-4",
        "holds": all(delta > 0 for delta, _ in differences.values()) if known else None,
        "detail": detail,
    }


def _ratio(a: float | None, b: float | None) -> float | None:
    return a / b if a is not None and b else None


def _ratio_claim(
    summary: Mapping,
    claim: str,
    top: tuple[str, str],
    bottom: tuple[str, str],
    threshold: float,
    show: Callable[[float | None], str],
    show_ratio: Callable[[float | None], str],
) -> dict[str, Any]:
    """``top / bottom >= threshold``, each a (method, summary key)."""
    a, b = _value(summary, *top), _value(summary, *bottom)
    ratio = _ratio(a, b)
    return {
        "claim": claim,
        "holds": None if ratio is None else ratio >= threshold,
        "detail": f"{show(a)} / {show(b)} = {show_ratio(ratio)}",
    }


def claims(summary: Mapping[str, Mapping[str, Any]]) -> list[dict[str, Any]]:
    """The benchmark's headline claims, each with ``holds`` (None where a method needed was not run)."""
    share = _ratio_claim(
        summary,
        f"fedmrg reaches >= {CENTRALIZED_SHARE:.0%} of centralized CE-F1 (example)",
        ("fedmrg", "CE-F1-example"),
        ("centralized", "CE-F1-example"),
        CENTRALIZED_SHARE,
        _fmt,
        lambda r: _fmt(r, ".1%"),
    )
    upload = _ratio_claim(
        summary,
        f"fedmrg uploads >= {UPLOAD_RATIO:g}x fewer bytes per round than fedavg_lora",
        ("fedavg_lora", "bytes_up_per_round"),
        ("fedmrg", "bytes_up_per_round"),
        UPLOAD_RATIO,
        _bytes,
        _times,
    )
    return [_beats(summary, "fedavg_lora"), _beats(summary, "local"), share, upload]


def ablation_effects(summary: Mapping[str, Mapping[str, Any]]) -> list[dict[str, Any]]:
    """For each ablation run: fedmrg minus the ablation on the key metrics (> 0: the mechanism helps).

    A difference is called clear when it exceeds the sum of the two seed spreads; otherwise it is
    within the noise of this many seeds and says nothing either way.
    """
    effects = []
    for name in summary:
        if not name.startswith("fedmrg-") or "fedmrg" not in summary:
            continue
        row: dict[str, Any] = {"ablation": name, "removes": BY_NAME[name].description if name in BY_NAME else ""}
        verdicts = []
        for metric in KEY_METRICS:
            delta, clear = _difference(summary, metric, "fedmrg", name)
            row[metric] = delta
            if clear is not None:
                verdicts.append(("helps" if delta > 0 else "hurts") if clear else "within noise")
        row["verdict"] = _verdict(verdicts) if verdicts else "one seed: no spread to judge by"
        row["bytes_up_ratio"] = _ratio(summary[name]["bytes_up_per_round"], summary["fedmrg"]["bytes_up_per_round"])
        effects.append(row)
    return effects


def _verdict(verdicts: list[str]) -> str:
    clear = set(verdicts) - {"within noise"}
    if not clear:
        return "no clear effect"
    if len(clear) > 1:
        return "mixed"
    word = clear.pop()
    return f"fedmrg's mechanism {word} ({verdicts.count(word)} of {len(verdicts)} metrics clearly)"


# -------------------------------------------------------------------------------------------- markdown
def _fmt(value: float | None, spec: str = ".3f") -> str:
    return "n/a" if value is None else format(value, spec)


def _times(ratio: float | None) -> str:
    return _fmt(ratio, ".1f") + ("x" if ratio is not None else "")


def _bytes(value: float | None) -> str:
    if value is None:
        return "n/a"
    for unit, size in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if value >= size:
            return f"{value / size:.2f} {unit}"
    return f"{value:.0f} B"


def _with_sd(entry: Mapping[str, Any], key: str) -> str:
    sd = entry.get(f"{key}_sd")
    return _fmt(entry.get(key)) + ("" if sd is None else f" ± {sd:.3f}")


def markdown(results: Mapping[str, Any], image_dir: str = "") -> str:
    """The results as markdown: settings, the method table, the claims, the ablations, the plots."""
    summary, settings = results["summary"], results["settings"]
    plain = [m for m in METRICS if m not in KEY_METRICS and m != "CE-F1-micro5"]
    header = ["method", "setting", *KEY_METRICS, *plain, "test-global CE-F1-example", "test-global BLEU-4"]
    preset = "" if results["name"] == settings["preset"] else f" (`--{settings['preset']}`)"
    lines = [
        f"### FL-MRG benchmark `{results['name']}`{preset}",
        "",
        _settings_line(settings),
        "",
        "Site means of each site's deployed model, mean ± sd over seeds. `normal-report` is no model: "
        "every study gets the site's best-matching normal training report (the floor). CE-F1-abnormal "
        "leaves out No Finding, so a report that calls every study normal scores 0 on it (n/a: runs "
        "recorded before this variant existed).",
        "",
        "| " + " | ".join(header) + " |",
        "|---|---|" + "---:|" * (len(header) - 2),
    ]
    for method, entry in summary.items():
        cells = [
            method,
            entry["setting"],
            *(_with_sd(entry, m) for m in KEY_METRICS),
            *(_fmt(entry.get(m)) for m in plain),
            _with_sd(entry, "test-global-CE-F1-example"),
            _with_sd(entry, "test-global-BLEU-4"),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    lines += [
        "",
        "Costs (means over seeds; a round's seconds are the server's: send, train at every site, merge; "
        "peak memory is the largest site process's: GPU memory allocated on a GPU, resident memory on a "
        "CPU; simulated sites run one thread each, local and centralized training the bench process's "
        "threads).",
        "",
        "| method | upload / site / round | download / site / round | upload, all sites, whole run "
        "| download, all sites, whole run | s / round | peak memory / site | wall (s) |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for method, entry in summary.items():
        lines.append(
            f"| {method} | {_bytes(entry['bytes_up_per_round'])} | {_bytes(entry['bytes_down_per_round'])} | "
            f"{_bytes(entry['bytes_up_total'])} | {_bytes(entry['bytes_down_total'])} | "
            f"{_fmt(entry['seconds_per_round'], '.1f')} | "
            f"{_bytes(None if entry['peak_memory_mib'] is None else entry['peak_memory_mib'] * 2**20)} | "
            f"{_fmt(entry['wall_s'], '.0f')} |"
        )
    lines += ["", "What the numbers show:", ""]
    for claim in results["claims"]:
        verdict = {True: "**yes**", False: "**no**", None: "not measured"}[claim["holds"]]
        lines.append(f"- {claim['claim']}: {verdict} ({claim['detail']})")
    effects = results["ablations"]
    if effects:
        lines += [
            "",
            "Ablations: fedmrg minus the ablation (> 0: the mechanism it removes helps).",
            "",
            "| ablation | removes | " + " | ".join(f"Δ{m}" for m in KEY_METRICS) + " | verdict | upload vs fedmrg |",
            "|---|---|" + "---:|" * len(KEY_METRICS) + "---|---:|",
        ]
        for row in effects:
            lines.append(
                f"| {row['ablation']} | {row['removes']} | "
                + " | ".join(_fmt(row.get(m), "+.3f") for m in KEY_METRICS)
                + f" | {row['verdict']} | {_times(row['bytes_up_ratio'])} |"
            )
    lines += [""] + [f"![{title}]({image_dir}{Path(path).name})" for title, path in results.get("plots", {}).items()]
    return "\n".join(lines) + "\n"


def _settings_line(settings: Mapping[str, Any]) -> str:
    bench = settings["benchmark"]
    budget = (
        f"{settings['rounds']} rounds x {settings['local_steps']} local steps"
        if settings.get("local_steps")
        else f"{settings['rounds']} rounds x {settings['local_epochs']} local epoch(s)"
    )
    limit = settings["test_limit"] or "all"
    return (
        f"Benchmark: {bench['source']} reports, {bench['sites']} sites, `{bench['partition']}` partition "
        f"({bench['train_studies']} training studies); config `{settings['config']}`; budget {budget} "
        f"(local-only and centralized: as many studies seen); seeds {settings['seeds']}; "
        f"{limit} test studies per site, {settings['global_limit'] or 'all'} of test-global; "
        f"decoding: {settings['decoding']}; {settings['machine']}."
    )


# --------------------------------------------------------------------------------------------- plots
def _figure(width: float = 7.0, height: float = 4.2, ncols: int = 1):
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height))
    return fig, fig.subplots(1, ncols)


def _colors(summary: Mapping[str, Any]) -> dict[str, Any]:
    """One colour per method, the same in every plot (tab20 has room for every method and the floor)."""
    from matplotlib import colormaps

    palette = colormaps["tab20"]
    return {method: palette(k % 20) for k, method in enumerate(summary)}


def plot_quality_vs_bytes(summary: Mapping[str, Mapping[str, Any]], path: Path) -> Path:
    """CE-F1 (example) and BLEU-4 against upload per site and round (log); the non-federated settings as lines."""
    colors = _colors(summary)
    fig, axes = _figure(width=12.0, height=4.4, ncols=2)
    for ax, metric in zip(axes, ("CE-F1-example", "BLEU-4")):
        for method, entry in summary.items():
            value, upload = entry[metric], entry["bytes_up_per_round"]
            if value is None:
                continue
            if entry["setting"] != "federated":  # nothing sent per round (local), the data itself (centralized)
                style = {"local": "--", "centralized": ":"}.get(entry["setting"], "-.")
                ax.axhline(value, linestyle=style, color=colors[method], label=f"{method} (no federated upload)")
            elif upload:
                ax.errorbar(
                    upload,
                    value,
                    yerr=entry[f"{metric}_sd"] or 0.0,
                    marker="o",
                    capsize=3,
                    color=colors[method],
                    label=method,
                )
        ax.set_xscale("log")
        ax.set(xlabel="bytes uploaded per site per round (log)", ylabel=f"{metric}, site mean")
        ax.grid(alpha=0.3)
    fig.suptitle("quality against communication (mean ± sd over seeds)")
    handles, labels = axes[0].get_legend_handles_labels()
    if handles:
        fig.legend(handles, labels, fontsize="x-small", loc="center right")
    fig.tight_layout(rect=(0, 0, 0.78, 1))
    fig.savefig(path, dpi=110)
    return path


def plot_per_site(summary: Mapping[str, Mapping[str, Any]], path: Path) -> Path:
    """Grouped bars: one group per site, one bar per method, for CE-F1 (example) and BLEU-4."""

    sites = sorted(
        {site for entry in summary.values() for site in entry["per_site"]},
        key=lambda s: [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", s)],
    )
    fig, axes = _figure(width=max(9.0, 1.2 * len(sites) * len(summary) * 0.35 + 4), height=4.2, ncols=2)
    width = 0.8 / len(summary)
    x = np.arange(len(sites))
    for ax, metric in zip(axes, ("CE-F1-example", "BLEU-4")):
        colors = _colors(summary)
        for k, (method, entry) in enumerate(summary.items()):
            heights = [
                np.nan if entry["per_site"].get(s, {}).get(metric) is None else entry["per_site"][s][metric]
                for s in sites
            ]
            ax.bar(x - 0.4 + (k + 0.5) * width, heights, width, label=method, color=colors[method])
        ax.set_xticks(x, sites)
        ax.set(ylabel=metric, title=f"{metric} per site (mean over seeds)")
        ax.grid(axis="y", alpha=0.3)
    axes[1].legend(fontsize="x-small", ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    return path


def plot_round_curves(summary: Mapping[str, Mapping[str, Any]], path: Path) -> Path | None:
    """Validation LM loss of the generic path after each round (site and seed mean), per federated method."""
    fig, ax = _figure()
    colors, markers = _colors(summary), "os^vD<>ph*"
    for k, (method, entry) in enumerate(summary.items()):
        series = (entry.get("curves") or {}).get("val_lm_generic")
        if series:  # distinct markers: methods whose curves coincide stay visible
            ax.plot(
                range(len(series)),
                series,
                marker=markers[k % len(markers)],
                color=colors[method],
                label=method,
                alpha=0.85,
            )
    if not ax.lines:
        return None
    from matplotlib.ticker import MaxNLocator

    ax.set(
        xlabel="round (global model received)",
        ylabel="validation LM loss (generic adapter)",
        title="federated training",
    )
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.grid(alpha=0.3)
    ax.legend(fontsize="x-small")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    return path


PLOTS: tuple[tuple[str, str, Callable[..., Path | None]], ...] = (
    ("quality against bytes uploaded", "quality-vs-bytes", plot_quality_vs_bytes),
    ("per-site quality", "sites", plot_per_site),
    ("per-round validation loss", "rounds", plot_round_curves),
)


def write_outputs(results: dict[str, Any], out_dir: str | os.PathLike) -> dict[str, Path]:
    """``<name>.json``, ``<name>.md`` and the plots (``<name>-*.png``) in ``out_dir``; their paths."""

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    name, summary = results["name"], results["summary"]
    plots = {title: plot(summary, out_dir / f"{name}-{slug}.png") for title, slug, plot in PLOTS}
    results["plots"] = {title: str(path) for title, path in plots.items() if path is not None}
    paths = {"json": out_dir / f"{name}.json", "markdown": out_dir / f"{name}.md"}
    write_json(paths["json"], results)
    paths["markdown"].write_text(markdown(results), encoding="utf-8")
    return {**paths, **{title: Path(p) for title, p in results["plots"].items()}}


def image_links(page: str | os.PathLike, out_dir: str | os.PathLike) -> str:
    """The prefix of the plots' links (they are in ``out_dir``) in a markdown ``page``: the path from
    the page's folder, e.g. ``../bench/results/`` for docs/benchmark.md. For :func:`markdown`'s ``image_dir``."""
    relative = os.path.relpath(Path(out_dir).resolve(), Path(page).resolve().parent)
    return f"{Path(relative).as_posix()}/"


def refresh_results_page(page: str | os.PathLike, block: str) -> None:
    """Replace what lies between the results page's bench markers with ``block``."""
    page = Path(page)
    text = page.read_text(encoding="utf-8")
    if RESULTS_BEGIN not in text or RESULTS_END not in text:
        raise ConfigError(f"{page}: no {RESULTS_BEGIN} ... {RESULTS_END} markers to put the results between")
    head, rest = text.split(RESULTS_BEGIN, 1)
    tail = rest.split(RESULTS_END, 1)[1]
    page.write_text(f"{head}{RESULTS_BEGIN}\n{block}{RESULTS_END}{tail}", encoding="utf-8")
