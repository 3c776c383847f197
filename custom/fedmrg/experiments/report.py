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
# CE-F1-abnormal (micro-F1 over the 13 findings) leaves out "No Finding": a model that calls every
# study normal scores 0 on it, where CE-F1-example rewards exactly that on a mostly normal benchmark.
KEY_METRICS = ("CE-F1-abnormal", "CE-F1-example", "BLEU-4", "CIDEr")
CLAIM_METRICS = ("CE-F1-abnormal", "BLEU-4")  # what "better" means in the claims
# The results page's section that `fedmrg bench` rewrites lies between these markers.
RESULTS_BEGIN, RESULTS_END = "<!-- bench:begin -->", "<!-- bench:end -->"
# The headline claims' bars: fedmrg at >= 90% of centralized CE-F1-abnormal and >= 0.30 absolute;
# >= 25x fewer bytes per round trip than FedAvg-LoRA and >= 3x fewer than FedAvg-LoRA behind NF4 filters.
CENTRALIZED_SHARE, ABNORMAL_FLOOR = 0.90, 0.30
ROUND_TRIP_RATIOS = (("fedavg_lora", 25.0), ("fedavg_lora-nf4", 3.0))


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


def _round_trip(record: Mapping[str, Any]) -> float | None:
    """Mean bytes one site sends plus receives in a round (0 for local-only, None for centralized)."""
    up, down = _traffic(record, "bytes_up"), _traffic(record, "bytes_down")
    return None if up is None or down is None else up + down


COSTS: dict[str, Callable[[Mapping[str, Any]], float | None]] = {
    "bytes_up_per_round": lambda record: _traffic(record, "bytes_up"),
    "bytes_down_per_round": lambda record: _traffic(record, "bytes_down"),
    "bytes_round_trip_per_round": _round_trip,
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
        entry["by_seed"] = {
            metric: {str(run["seed"]): value for run, value in zip(runs, per_seed[metric])} for metric in KEY_METRICS
        }
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


def _claim(claim: str, holds: bool | None, verdict: str, detail: str) -> dict[str, Any]:
    return {"claim": claim, "holds": holds, "verdict": verdict, "detail": detail}


def _above(summary: Mapping, other: str, metric: str) -> dict[str, Any]:
    """fedmrg above ``other`` on ``metric``: yes only beyond the sum of the two seed spreads."""
    where = "test-global" if metric.startswith("test-global-") else "site mean"
    claim = f"fedmrg above {other} on {metric.removeprefix('test-global-')} ({where})"
    delta, clear = _difference(summary, metric, "fedmrg", other)
    detail = " vs ".join(_with_sd(summary.get(m, {}), metric) for m in ("fedmrg", other))
    if delta is None:
        return _claim(claim, None, "not measured", detail)
    if clear is None:
        return _claim(claim, None, "one seed: no spread to judge by", detail)
    if not clear:
        return _claim(claim, False, "within the seed spread", detail)
    return _claim(claim, delta > 0, "yes" if delta > 0 else "no: below", detail)


def _ratio(a: float | None, b: float | None) -> float | None:
    return a / b if a is not None and b else None


def _at_least(claim: str, value: float | None, bar: float, detail: str) -> dict[str, Any]:
    if value is None:
        return _claim(claim, None, "not measured", detail)
    return _claim(claim, value >= bar, "yes" if value >= bar else "no", detail)


def claims(summary: Mapping[str, Mapping[str, Any]]) -> list[dict[str, Any]]:
    """The benchmark's headline claims, each with ``holds`` (True / False, None where a method needed
    was not run or has one seed) and a ``verdict`` in words."""
    found = [
        _above(summary, other, prefix + metric)
        for other in ("fedavg_lora", "local")
        for prefix in ("", "test-global-")
        for metric in CLAIM_METRICS
    ]
    ours, pooled = _value(summary, "fedmrg", "CE-F1-abnormal"), _value(summary, "centralized", "CE-F1-abnormal")
    share = _ratio(ours, pooled)
    found.append(
        _at_least(
            f"fedmrg reaches >= {CENTRALIZED_SHARE:.0%} of centralized CE-F1-abnormal (site mean)",
            share,
            CENTRALIZED_SHARE,
            f"{_fmt(ours)} / {_fmt(pooled)} = {_fmt(share, '.1%')}",
        )
    )
    found.append(
        _at_least(f"fedmrg CE-F1-abnormal >= {ABNORMAL_FLOOR:.2f} (site mean)", ours, ABNORMAL_FLOOR, _fmt(ours))
    )
    for other, bar in ROUND_TRIP_RATIOS:
        theirs, mine = (_value(summary, m, "bytes_round_trip_per_round") for m in (other, "fedmrg"))
        ratio = _ratio(theirs, mine)
        found.append(
            _at_least(
                f"fedmrg sends >= {bar:g}x fewer bytes per site and round trip than {other}",
                ratio,
                bar,
                f"{_bytes(theirs)} / {_bytes(mine)} = {_times(ratio)}",
            )
        )
    return found


def ablation_effects(summary: Mapping[str, Mapping[str, Any]]) -> list[dict[str, Any]]:
    """For each ablation run: fedmrg minus the ablation on the key metrics (> 0: fedmrg's own setting of
    what the ablation changes is better; for most ablations, the mechanism they switch off helps).

    fedmrg counts on the ablation's seeds only (an ablation runs fewer), so that a seed's luck falls on
    both sides. A difference is called clear when it exceeds the sum of the two seed spreads;
    otherwise it is within the noise of this many seeds and says nothing either way.
    """
    effects = []
    for name in summary:
        if name not in BY_NAME or not BY_NAME[name].ablation or "fedmrg" not in summary:
            continue
        row: dict[str, Any] = {"ablation": name, "changes": BY_NAME[name].description}
        pair = {"fedmrg": _on_seeds(summary["fedmrg"], summary[name]["seeds"]), name: summary[name]}
        verdicts = []
        for metric in KEY_METRICS:
            delta, clear = _difference(pair, metric, "fedmrg", name)
            row[metric] = delta
            if clear is not None:
                verdicts.append(("helps" if delta > 0 else "hurts") if clear else "within noise")
        row["verdict"] = _verdict(verdicts) if verdicts else "one seed: no spread to judge by"
        row["bytes_ratio"] = _ratio(
            summary[name]["bytes_round_trip_per_round"], summary["fedmrg"]["bytes_round_trip_per_round"]
        )
        effects.append(row)
    return effects


def _on_seeds(entry: Mapping[str, Any], seeds: Sequence[int]) -> Mapping[str, Any]:
    """``entry`` with its key metrics (mean and sd) over those of its seeds in ``seeds``; as it is when it
    shares none of them, or predates the per-seed values."""
    matched = dict(entry)
    for metric, values in entry.get("by_seed", {}).items():
        chosen = [values[str(seed)] for seed in seeds if str(seed) in values]
        if chosen:
            matched[metric], matched[f"{metric}_sd"] = _mean(chosen), _sd(chosen)
    return matched


HETEROGENEITY_METHODS = ("local", "fedavg_lora", "fedmrg", "centralized")


def partition_rows(results: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """One row per benchmark partition (results of one preset on the style, label and iid partitions):
    the main methods' CE-F1-abnormal and BLEU-4 (site means, mean over the seeds run), fedmrg's gap to
    fedavg_lora and to local-only, and its share of centralized. How the gap moves with heterogeneity."""
    rows = []
    for result in results:
        summary = result["summary"]
        row: dict[str, Any] = {
            "partition": result["settings"]["benchmark"]["partition"],
            "name": result["name"],
            "seeds": max((len(summary[m]["seeds"]) for m in HETEROGENEITY_METHODS if m in summary), default=0),
        }
        for metric in CLAIM_METRICS:
            for method in HETEROGENEITY_METHODS:
                row[f"{method} {metric}"] = _value(summary, method, metric)
            for other in ("fedavg_lora", "local"):
                row[f"fedmrg - {other} {metric}"] = _difference(summary, metric, "fedmrg", other)[0]
        row["fedmrg / centralized CE-F1-abnormal"] = _ratio(
            _value(summary, "fedmrg", "CE-F1-abnormal"), _value(summary, "centralized", "CE-F1-abnormal")
        )
        rows.append(row)
    return rows


def _verdict(verdicts: list[str]) -> str:
    clear = set(verdicts) - {"within noise"}
    if not clear:
        return "no clear effect"
    if len(clear) > 1:
        return "mixed"
    word = clear.pop()
    return f"fedmrg's setting {word} ({verdicts.count(word)} of {len(verdicts)} metrics clearly)"


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
    header = ["method", "setting", *KEY_METRICS, *plain, *(f"test-global {m}" for m in CLAIM_METRICS)]
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
            *(_with_sd(entry, f"test-global-{m}") for m in CLAIM_METRICS),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    lines += [
        "",
        "Costs (means over seeds; a round's seconds are the server's: send, train at every site, merge; "
        "peak memory is the largest site process's: GPU memory allocated on a GPU, resident memory on a "
        "CPU; simulated sites run one thread each, local and centralized training the bench process's "
        "threads).",
        "",
        "| method | upload / site / round | download / site / round | round trip / site / round "
        "| fedavg_lora's round trip / this | upload, all sites, whole run | download, all sites, whole run "
        "| s / round | peak memory / site | wall (s) |",
        "|---|" + "---:|" * 9,
    ]
    baseline = _value(summary, "fedavg_lora", "bytes_round_trip_per_round")
    for method, entry in summary.items():
        lines.append(
            f"| {method} | {_bytes(entry['bytes_up_per_round'])} | {_bytes(entry['bytes_down_per_round'])} | "
            f"{_bytes(entry.get('bytes_round_trip_per_round'))} | "
            f"{_times(_ratio(baseline, entry.get('bytes_round_trip_per_round')))} | "
            f"{_bytes(entry['bytes_up_total'])} | {_bytes(entry['bytes_down_total'])} | "
            f"{_fmt(entry['seconds_per_round'], '.1f')} | "
            f"{_bytes(None if entry['peak_memory_mib'] is None else entry['peak_memory_mib'] * 2**20)} | "
            f"{_fmt(entry['wall_s'], '.0f')} |"
        )
    lines += [
        "",
        "What the numbers show (a difference counts only beyond the sum of the two seed spreads):",
        "",
        "| claim | verdict | measured |",
        "|---|---|---|",
    ]
    for claim in results["claims"]:
        verdict = claim.get("verdict") or {True: "yes", False: "no", None: "not measured"}[claim["holds"]]
        lines.append(f"| {claim['claim']} | **{verdict}** | {claim['detail']} |")
    effects = results["ablations"]
    if effects:
        lines += [
            "",
            "Ablations: fedmrg on the ablation's seeds minus the ablation (> 0: fedmrg's own setting of what "
            "the ablation changes is better).",
            "",
            "| ablation | changes | "
            + " | ".join(f"Δ{m}" for m in KEY_METRICS)
            + " | verdict | round trip vs fedmrg |",
            "|---|---|" + "---:|" * len(KEY_METRICS) + "---|---:|",
        ]
        for row in effects:
            lines.append(
                f"| {row['ablation']} | {row['changes']} | "
                + " | ".join(_fmt(row.get(m), "+.3f") for m in KEY_METRICS)
                + f" | {row['verdict']} | {_times(row.get('bytes_ratio'))} |"
            )
    lines += _partition_lines(results.get("partitions", []))
    lines += [""] + [f"![{title}]({image_dir}{Path(path).name})" for title, path in results.get("plots", {}).items()]
    return "\n".join(lines) + "\n"


def _partition_lines(rows: Sequence[Mapping[str, Any]]) -> list[str]:
    if len(rows) < 2:
        return []
    lines = [
        "",
        "Heterogeneity: the same preset on each partition of the benchmark (site means; `seeds`: how many "
        "each value averages; a gap from one seed has no spread to judge it by).",
        "",
        "| partition | seeds | "
        + " | ".join(f"{m} {metric}" for metric in CLAIM_METRICS for m in HETEROGENEITY_METHODS)
        + " | fedmrg − fedavg_lora (CE-F1-abnormal, BLEU-4) | fedmrg − local (CE-F1-abnormal, BLEU-4) "
        "| fedmrg / centralized CE-F1-abnormal |",
        "|---|---:|" + "---:|" * (len(CLAIM_METRICS) * len(HETEROGENEITY_METHODS) + 3),
    ]
    for row in rows:
        gaps = [
            ", ".join(_fmt(row[f"fedmrg - {other} {metric}"], "+.3f") for metric in CLAIM_METRICS)
            for other in ("fedavg_lora", "local")
        ]
        lines.append(
            f"| {row['partition']} (`{row['name']}`) | {row['seeds']} | "
            + " | ".join(_fmt(row[f"{m} {metric}"]) for metric in CLAIM_METRICS for m in HETEROGENEITY_METHODS)
            + f" | {gaps[0]} | {gaps[1]} | {_fmt(row['fedmrg / centralized CE-F1-abnormal'], '.0%')} |"
        )
    return lines


def _settings_line(settings: Mapping[str, Any]) -> str:
    bench = settings["benchmark"]
    budget = (
        f"{settings['rounds']} rounds x {settings['local_steps']} local steps"
        if settings.get("local_steps")
        else f"{settings['rounds']} rounds x {settings['local_epochs']} local epoch(s)"
    )
    seeds = f"seeds {settings['seeds']}"
    if settings.get("ablation_seeds", settings["seeds"]) != settings["seeds"]:
        seeds += f" (ablations {settings['ablation_seeds']})"
    rehearsal = "; public studies rehearsed at every site" if settings.get("public_data") else ""
    return (
        f"Benchmark: {bench['source']} reports, {bench['sites']} sites, `{bench['partition']}` partition "
        f"({bench['train_studies']} training studies); config `{settings['config']}`; budget {budget} "
        f"(local-only and centralized: as many studies seen){rehearsal}; {seeds}; "
        f"{settings['test_limit'] or 'all'} test studies per site, {settings['global_limit'] or 'all'} of "
        f"test-global; decoding: {settings['decoding']}; {settings['machine']}."
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
    """CE-F1-abnormal and BLEU-4 against the bytes of a site's round trip (log); the non-federated settings
    as lines."""
    colors = _colors(summary)
    fig, axes = _figure(width=12.0, height=4.4, ncols=2)
    for ax, metric in zip(axes, CLAIM_METRICS):
        for method, entry in summary.items():
            value, sent = entry[metric], entry.get("bytes_round_trip_per_round")
            if value is None:
                continue
            if entry["setting"] != "federated":  # nothing sent per round (local), the data itself (centralized)
                style = {"local": "--", "centralized": ":"}.get(entry["setting"], "-.")
                ax.axhline(value, linestyle=style, color=colors[method], label=f"{method} (no federated traffic)")
            elif sent:
                ax.errorbar(
                    sent,
                    value,
                    yerr=entry[f"{metric}_sd"] or 0.0,
                    marker="o",
                    capsize=3,
                    color=colors[method],
                    label=method,
                )
        ax.set_xscale("log")
        ax.set(xlabel="bytes up + down per site per round (log)", ylabel=f"{metric}, site mean")
        ax.grid(alpha=0.3)
    fig.suptitle("quality against communication (mean ± sd over seeds)")
    handles, labels = axes[0].get_legend_handles_labels()
    if handles:
        fig.legend(handles, labels, fontsize="x-small", loc="center right")
    fig.tight_layout(rect=(0, 0, 0.78, 1))
    fig.savefig(path, dpi=110)
    return path


def plot_per_site(summary: Mapping[str, Mapping[str, Any]], path: Path) -> Path:
    """Grouped bars: one group per site, one bar per method, for CE-F1-abnormal and BLEU-4."""

    sites = sorted(
        {site for entry in summary.values() for site in entry["per_site"]},
        key=lambda s: [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", s)],
    )
    fig, axes = _figure(width=max(9.0, 1.2 * len(sites) * len(summary) * 0.35 + 4), height=4.2, ncols=2)
    width = 0.8 / len(summary)
    x = np.arange(len(sites))
    for ax, metric in zip(axes, CLAIM_METRICS):
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
    ("quality against bytes per round trip", "quality-vs-bytes", plot_quality_vs_bytes),
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
