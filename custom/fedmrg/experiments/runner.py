"""The FL-MRG benchmark (``fedmrg bench``): every method of the registry on one benchmark, same seeds and budget.

A run is one method with one seed. Federated methods run their FLARE job (``jobs/<job>/job.py``)
in the simulator with the run's full config written to a YAML file, so what is measured is the
code a consortium deploys: the bytes are those the aggregator counted on the wire. Local-only and
centralized runs use ``fedmrg train``'s training loop in this process. Every model is then scored
on each site's test split (generic adapter, and generic+specialized where there is one) and on
``test-global`` (generic adapter: what a hospital outside the federation would receive).

Each run leaves ``<work>/<method>/seed-<k>/run.json``; a later ``fedmrg bench`` with the same
config, benchmark, base LLM and scoring limits reuses it, so an interrupted benchmark resumes where
it stopped, changing one method's settings reruns that method only, and re-running a finished
benchmark only redoes its report. The runs a published results file (``bench/results/<name>.json``)
records are reused the same way when their folders are gone (a fresh clone) and their inputs hold
the same bytes (``fingerprints``): adding a method or a seed to a published benchmark then runs only
what it lacks.

Presets (the budget and decoding differ, the benchmark and the model do not):

- ``quick``: a smoke test on a CPU in tens of minutes: 3 rounds of 10 local steps, greedy
  decoding, 50 test studies per site and 100 of test-global; 2 seeds. Every method stays near the
  normal-report floor: it checks the machinery, it decides nothing.
- ``cpu``: the decisive run on 2 CPU cores: 3 rounds of 40 local steps with the benchmark's public
  studies rehearsed at every site (the demo's frozen encoder and decoder set-up, the same start for
  every method), greedy decoding in batches of 48 (the same reports as batches of 8, in about half
  the generation time), 100 test studies per site and all of test-global; 3 seeds for the main methods,
  2 for the ablations.
- ``full``: a GPU: the config's own budget (3 rounds of one local epoch for ``demo``), beam
  search, every test study; 3 seeds.
"""

from __future__ import annotations

import copy
import hashlib
import logging
import os
import platform
import shutil
import subprocess
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any

import torch
import yaml
from tqdm.auto import tqdm

from fedmrg.config import BASE_ENCODER_WEIGHTS, Config, config_to_dict, load_config, parse_config
from fedmrg.data.benchmark import SUMMARY_FILE, TEST_GLOBAL, build_benchmark, load_benchmark
from fedmrg.data.iuxray import data_dir, sha256_file
from fedmrg.data.loaders import loader_records, split_records, study_loader
from fedmrg.errors import ConfigError, FedMRGError
from fedmrg.eval.report import score_reports
from fedmrg.eval.retrieval import copied_reports, normal_query
from fedmrg.experiments.methods import Method
from fedmrg.experiments.report import ablation_effects, claims, summarize
from fedmrg.fl.job_cli import job_overrides
from fedmrg.fl.results import RESULTS_FILE, read_results
from fedmrg.io import load_json, write_json
from fedmrg.model.base_encoder import make_base_encoder
from fedmrg.model.base_llm import make_base_llm
from fedmrg.model.inference import adapter_scores
from fedmrg.model.llm import LLAMA_1B_SHAPE, random_llm
from fedmrg.model.mrg import MRGModel, llm_fingerprint
from fedmrg.model.training import train_centralized

log = logging.getLogger(__name__)

RUN_FILE = "run.json"
RUN_FORMAT = 1


class BenchError(FedMRGError):
    """A run of the benchmark failed (its log says why)."""


@dataclass(frozen=True)
class Preset:
    name: str
    overrides: Mapping[str, Any]  # applied to the config before each method's own overrides
    test_limit: int | None  # test studies scored per site (None = all)
    global_limit: int | None  # test-global studies scored (None = all)
    seeds: tuple[int, ...]
    ablation_seeds: tuple[int, ...] | None = None  # None = ``seeds``
    rehearse_public: bool = False  # train.public_data = the benchmark's public/ unless one is given

    def seeds_of(self, method: Method) -> tuple[int, ...]:
        return self.ablation_seeds if method.ablation and self.ablation_seeds is not None else self.seeds


GREEDY = MappingProxyType({"generate.num_beams": 1})
PRESETS = MappingProxyType(
    {
        "quick": Preset("quick", {**GREEDY, "fl.local_steps": 10, "generate.max_new_tokens": 60}, 50, 100, (0, 1)),
        "cpu": Preset(
            "cpu",
            {**GREEDY, "fl.local_steps": 40, "generate.batch_size": 48},
            100,
            None,
            (0, 1, 2),
            (0, 1),
            rehearse_public=True,
        ),
        "full": Preset("full", MappingProxyType({}), None, None, (0, 1, 2)),
    }
)


@dataclass
class BenchRequest:
    preset: Preset
    methods: list[Method]
    data: Path  # a benchmark folder (site-1..N, test-global)
    base_llm: Path
    work: Path  # run folders
    config: str = "demo"
    seeds: tuple[int, ...] = ()  # () = the preset's (for each method)
    jobs_dir: Path = Path("jobs")
    progress: bool = True
    extra_overrides: Mapping[str, Any] = field(default_factory=dict)  # e.g. train.device
    published: tuple[dict, ...] = ()  # run records of a results file, reused where no run folder has one

    def seeds_of(self, method: Method) -> tuple[int, ...]:
        return self.seeds or self.preset.seeds_of(method)


def benchmark_sites(data: Path) -> list[str]:
    """The site folders a benchmark lists (site-1, site-2, ...), checked to exist, with test-global."""

    counts = load_benchmark(data)["counts"]
    sites = [group for group in counts if group.startswith("site-")]
    missing = [group for group in (*sites, TEST_GLOBAL) if not (data / group).is_dir()]
    if not sites or missing:
        raise ConfigError(
            f"{data}: benchmark.json lists {', '.join(counts)}, but "
            + (f"there is no folder for {', '.join(missing)}" if missing else "no site")
        )
    return sites


def run_inputs(request: BenchRequest) -> dict[str, Any]:
    """What a run depends on besides its config: the benchmark built, the base LLM, how much is scored."""

    return {
        "data": str(request.data),
        "benchmark": load_benchmark(request.data)["request"],
        "base_llm": str(request.base_llm),
        "test_limit": request.preset.test_limit,
        "global_limit": request.preset.global_limit,
    }


def run_config(request: BenchRequest, method: Method, seed: int, sites: int) -> Config:
    """The config of one run: the named config, the preset, a federated method's job settings, the
    method and its budget, the seed."""
    base = load_config(request.config, {**request.preset.overrides, **request.extra_overrides})
    job = job_overrides(request.jobs_dir / method.job) if method.job else {}
    overrides = {
        **request.preset.overrides,
        **request.extra_overrides,
        **job,
        **method.budget_overrides(base, sites),
        "train.seed": seed,
    }
    return load_config(request.config, overrides)


def run_benchmark(request: BenchRequest) -> list[dict]:
    """Every (method, seed) run of the request, reusing finished ones; the run records in order."""
    sites = benchmark_sites(request.data)
    _check_runnable(request)
    inputs = run_inputs(request)
    fingerprints = input_fingerprints(request) if request.published else {}
    plan = [(method, seed) for method in request.methods for seed in request.seeds_of(method)]
    records = []
    for method, seed in tqdm(plan, desc="benchmark runs", disable=not request.progress):
        cfg = run_config(request, method, seed, len(sites))
        run_dir = request.work / method.name / f"seed-{seed}"
        record = _finished_record(run_dir, cfg, inputs) or _published_record(
            request, method, seed, cfg, {"inputs": inputs, "fingerprints": fingerprints}
        )
        if record is None:
            log.info("%s, seed %d: running in %s", method.name, seed, run_dir)
            fingerprints = fingerprints or input_fingerprints(request)
            record = {
                **_run(request, method, seed, cfg, sites, run_dir),
                "inputs": inputs,
                "fingerprints": fingerprints,
            }
            write_json(run_dir / RUN_FILE, record)
        else:
            log.info("%s, seed %d: reusing %s", method.name, seed, run_dir / RUN_FILE)
        records.append(record)
    return records


def published_runs(results_file: Path) -> tuple[dict, ...]:
    """The run records of a results file written by an earlier ``fedmrg bench`` (none if there is no file)."""
    if not results_file.is_file():
        return ()
    results = load_json(results_file)
    runs = results.get("runs") if isinstance(results, dict) else None
    if not isinstance(runs, list) or not all(isinstance(run, dict) for run in runs):
        raise ConfigError(
            f"{results_file}: not a benchmark results file (no list of runs); move it away or pass another --name"
        )
    return tuple(runs)


def _check_runnable(request: BenchRequest) -> None:
    """Missing jobs or LLM files stop the benchmark before its first run, not an hour into it."""
    if not (request.base_llm / "config.json").is_file():
        raise ConfigError(f"{request.base_llm}: not a Hugging Face checkpoint folder (no config.json)")
    for job in sorted({method.job for method in request.methods if method.job}):
        if not (request.jobs_dir / job / "job.py").is_file():
            raise ConfigError(
                f"{request.jobs_dir / job / 'job.py'}: job not found (run from the repository root, or pass --jobs DIR)"
            )


def _finished_record(run_dir: Path, cfg: Config, inputs: Mapping[str, Any]) -> dict | None:
    """The run's record when it finished with the same config and inputs; a stale or partial folder is cleared."""
    path = run_dir / RUN_FILE
    if path.is_file():
        try:
            record = load_json(path)
        except FedMRGError as exc:
            record = None
            log.warning("%s", exc)
        if isinstance(record, dict) and _same_run(record, config_to_dict(cfg), inputs):
            return record
        log.info(
            "%s: settings, data or LLM changed since it ran (or its record is unreadable); running it again", run_dir
        )
    if run_dir.exists():
        shutil.rmtree(run_dir)
    return None


def _same_run(record: Mapping[str, Any], config: dict, inputs: Mapping[str, Any]) -> bool:
    return (
        record.get("format") == RUN_FORMAT
        and _recorded_config(record.get("config")) == config
        and record.get("inputs") == inputs
    )


def _recorded_config(config: Any) -> dict | None:
    """A record's config with the options added since it ran at their defaults (a new option's default
    keeps the behaviour from before it existed), or None when it is no config of this version."""
    if not isinstance(config, dict):
        return None
    try:
        return config_to_dict(parse_config(config, "run record"))
    except ConfigError:
        return None


def input_fingerprints(request: BenchRequest) -> dict[str, str]:
    """Digests of what the inputs hold, not only where they are: the benchmark folder, the base LLM and
    a frozen encoder's weights. A rebuild in another checkout can give other bytes, and then a published
    run is not this one."""
    fingerprints = {"data": folder_digest(request.data), "base_llm": llm_fingerprint(request.base_llm)}
    encoder = request.extra_overrides.get("model.encoder.pretrained")
    if encoder and Path(encoder).is_file():
        fingerprints["base_encoder"] = sha256_file(Path(encoder))
    return fingerprints


def folder_digest(folder: Path) -> str:
    """sha256 over every file's relative path and bytes under ``folder``, but the benchmark's summary
    (its build time differs with every build; its request is part of the run's inputs)."""
    digest = hashlib.sha256()
    for path in sorted(p for p in folder.rglob("*") if p.is_file() and p != folder / SUMMARY_FILE):
        digest.update(path.relative_to(folder).as_posix().encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()


def _published_record(
    request: BenchRequest, method: Method, seed: int, cfg: Config, ran_with: Mapping[str, Any]
) -> dict | None:
    """The published record of this run when it ran with the same config, inputs and input contents
    (``ran_with``: ``inputs`` and ``fingerprints``), copied into its folder. A record without
    fingerprints is never taken: nothing says its inputs held the same bytes."""
    config = config_to_dict(cfg)
    for record in request.published:
        if (
            (record.get("method"), record.get("seed")) == (method.name, seed)
            and _same_run(record, config, ran_with["inputs"])
            and record.get("fingerprints")
            and record["fingerprints"] == ran_with["fingerprints"]
        ):
            log.info("%s, seed %d: the results file's record ran with these settings", method.name, seed)
            write_json(request.work / method.name / f"seed-{seed}" / RUN_FILE, record)
            return record
    return None


def _run(request: BenchRequest, method: Method, seed: int, cfg: Config, sites: list[str], run_dir: Path) -> dict:
    config = config_to_dict(cfg)  # as asked for: building a model fills in some fields (the LLM path, ...)
    run_dir.mkdir(parents=True)
    started = time.perf_counter()
    if method.setting == "federated":
        measured = _run_federated(request, method, cfg, sites, run_dir)
    elif method.setting == "local":
        measured = _run_trained(request, cfg, {site: [site] for site in sites}, run_dir)
    else:
        measured = _run_trained(request, cfg, {"pooled": sites}, run_dir)
    return {
        "format": RUN_FORMAT,
        "method": method.name,
        "setting": method.setting,
        "seed": seed,
        "config": config,
        "wall_s": round(time.perf_counter() - started, 1),
        **measured,
    }


def _run_federated(request: BenchRequest, method: Method, cfg: Config, sites: list[str], run_dir: Path) -> dict:
    """The method's FLARE job in the simulator; per-site scores and bytes from its results.json."""

    job = request.jobs_dir / str(method.job) / "job.py"
    config_file = run_dir / "config.yaml"
    config_file.write_text(yaml.safe_dump(config_to_dict(cfg), sort_keys=False), encoding="utf-8")
    workspace = run_dir / "workspace"
    command = [
        sys.executable,
        str(job),
        "--data",
        str(request.data),
        "--sites",
        str(len(sites)),
        "--config",
        str(config_file),
        "--base-llm",
        str(request.base_llm),
        "--workspace",
        str(workspace),
        "--threads",
        "1",
    ]
    if request.preset.test_limit:
        command += ["--test-limit", str(request.preset.test_limit)]
    log_file = run_dir / "job.log"
    with open(log_file, "w", encoding="utf-8") as out:
        done = subprocess.run(command, stdout=out, stderr=subprocess.STDOUT, env={**os.environ, "OMP_NUM_THREADS": "1"})
    if done.returncode != 0 or not (workspace / RESULTS_FILE).is_file():
        raise BenchError(f"{method.name}: the job failed (exit status {done.returncode}); see {log_file}")
    results = read_results(workspace / RESULTS_FILE)
    if results["config"] != config_to_dict(cfg):  # the job must have run exactly the method's settings
        raise BenchError(f"{workspace / RESULTS_FILE}: the job ran another config than {config_file}")
    model = MRGModel.load(results["global_model"], base_llm=request.base_llm)
    test_global = adapter_scores(
        model, request.data / TEST_GLOBAL, limit=request.preset.global_limit, generic_only=True
    )["generic"]
    return {
        "sites": results["final"],
        "test_global": {"global": test_global},
        "traffic": round_traffic(results["rounds"]),
        "curves": round_curves(results["rounds"]),
        "timing": round_timing(results["rounds"]),
    }


def _run_trained(request: BenchRequest, cfg: Config, models: dict[str, list[str]], run_dir: Path) -> dict:
    """Train one model per entry of ``models`` (name -> its sites), score it on those sites and test-global."""

    sites, test_global = {}, {}
    for name, own_sites in models.items():
        out = run_dir / name
        train_centralized(
            copy.deepcopy(cfg),
            [request.data / site for site in own_sites],
            out,
            base_llm=request.base_llm,
            progress=False,
        )
        model = MRGModel.load(out, base_llm=request.base_llm)
        for site in own_sites:
            sites[site] = adapter_scores(model, request.data / site, limit=request.preset.test_limit)
        test_global[name] = adapter_scores(
            model, request.data / TEST_GLOBAL, limit=request.preset.global_limit, generic_only=True
        )["generic"]
    return {"sites": sites, "test_global": test_global, "traffic": None, "curves": None, "timing": None}


FLOOR = "normal-report"  # the reference row: no model at all


def normal_report_floor(request: BenchRequest, sites: list[str]) -> dict:
    """A run record for "every test study gets the site's best-matching normal training report".

    No model: the floor any generator must clear. On a benchmark where most studies are normal,
    it already scores a high CE-F1 (example), while CE-F1 (abnormal), which leaves No Finding out,
    stays at 0 where the copied reports state no finding; a method at this level has learned no findings.
    """

    cfg = load_config(request.config, {**request.preset.overrides, **request.extra_overrides})
    started = time.perf_counter()

    def scores(folder: Path, train_sites: list[str], limit: int | None) -> dict:
        records = loader_records(study_loader(cfg, [folder], "test", train=False, limit=limit))
        candidates = [
            row for site in train_sites for row in split_records(request.data / site, "train", cfg.data.dataset)[0]
        ]
        predictions, _ = copied_reports([str(r["id"]) for r in records], normal_query(len(records)), candidates)
        references = {str(r["id"]): r["report"] for r in records}
        return score_reports(predictions, references, dataset=cfg.data.dataset)

    site_scores = {site: {"generic": scores(request.data / site, [site], request.preset.test_limit)} for site in sites}
    pooled = scores(request.data / TEST_GLOBAL, sites, request.preset.global_limit)
    return {
        "format": RUN_FORMAT,
        "method": FLOOR,
        "setting": "reference",
        "seed": None,
        "config": config_to_dict(cfg),
        "wall_s": round(time.perf_counter() - started, 1),
        "sites": site_scores,
        "test_global": {"pooled": pooled},
        "traffic": None,
        "curves": None,
        "timing": None,
    }


def round_traffic(rounds: list[dict]) -> dict:
    """Bytes each site sent and received in each round (lists in round order, None where it took no part)
    and the totals."""
    sites = sorted({site for record in rounds for site in record.get("bytes_up", {})})
    per_round = {
        key: {site: [record.get(key, {}).get(site) for record in rounds] for site in sites}
        for key in ("bytes_up", "bytes_down")
    }  # None: the site sent nothing that round
    totals = {
        f"{key.split('_')[1]}_total": sum(n for series in per_round[key].values() for n in series if n)
        for key in per_round
    }
    return {**per_round, **totals, "rounds": len(rounds)}


def round_timing(rounds: list[dict]) -> dict:
    """Seconds of each round at the server (send, train everywhere, merge) and each site's peak memory (MiB)."""
    peaks: dict[str, float] = {}
    for record in rounds:
        for site, metrics in record["metrics"].items():
            if "peak_memory_mib" in metrics:
                peaks[site] = max(peaks.get(site, 0.0), metrics["peak_memory_mib"])
    return {"round_seconds": [record["seconds"] for record in rounds if "seconds" in record], "peak_memory_mib": peaks}


def round_curves(rounds: list[dict]) -> dict[str, list[float | None]]:
    """The mean over sites of each validation metric after each round (None where no site reported it)."""
    names = sorted(
        {
            name
            for record in rounds
            for metrics in record["metrics"].values()
            for name in metrics
            if name.startswith("val_")
        }
    )
    curves = {}
    for name in names:
        series = []
        for record in rounds:
            values = [metrics[name] for metrics in record["metrics"].values() if name in metrics]
            series.append(sum(values) / len(values) if values else None)
        curves[name] = series
    return curves


def prepare_inputs(config: str, partition: str, progress: bool = True) -> tuple[Path, Path, Path | None]:
    """The benchmark (built, or reused when already built the same way), its demo base LLM and, for a
    config whose frozen backbone names no weights, its demo base encoder's weights (else None).

    ``style`` shares ``$FEDMRG_DATA_DIR/<config name>/`` with ``make demo``; another partition gets
    ``$FEDMRG_DATA_DIR/<config name>-<partition>/``.
    """

    cfg = load_config(config, {"benchmark.partition": partition})
    root = data_dir() / (cfg.name if partition == "style" else f"{cfg.name}-{partition}")
    bench, base_llm = root / "bench", root / "base-llm"
    build_benchmark(cfg.benchmark, bench, include_impression=cfg.data.include_impression, reuse=True, progress=progress)
    if not (base_llm / "config.json").is_file():
        make_base_llm(bench / "public", base_llm, dataset=cfg.data.dataset, progress=progress)
    encoder = cfg.model.encoder
    if not encoder.freeze or encoder.pretrained or encoder.backbone == "hf":
        return bench, base_llm, None
    base_encoder = root / "base-encoder"
    if not (base_encoder / BASE_ENCODER_WEIGHTS).is_file():
        make_base_encoder(cfg, bench, base_encoder, progress=progress)
    return bench, base_llm, base_encoder / BASE_ENCODER_WEIGHTS


def random_llama_1b(tokenizer_dir: Path, out: Path) -> Path:
    """A 1.1B-parameter LLaMA checkpoint with random bf16 weights (made once in ``out``): timing, not quality."""

    if not (out / "config.json").is_file():
        log.info("writing a 1.1B LLaMA with random weights to %s", out)
        random_llm(out, "llama", tokenizer_dir, dtype=torch.bfloat16, **LLAMA_1B_SHAPE)
    return out


def bench_results(name: str, request: BenchRequest, records: list[dict]) -> dict[str, Any]:
    """The results file's content: settings, run records, summary, claims and ablation effects."""

    if not records:
        raise BenchError("no runs to report")

    meta = load_benchmark(request.data)
    first = records[0]["config"]
    decoding = first["generate"]
    floor = normal_report_floor(request, benchmark_sites(request.data))
    summary = summarize([*records, floor])
    return {
        "name": name,
        "created": time.strftime("%Y-%m-%d %H:%M"),
        "settings": {
            "preset": request.preset.name,
            "config": request.config,
            "seeds": list(request.seeds or request.preset.seeds),
            "ablation_seeds": list(request.seeds or request.preset.ablation_seeds or request.preset.seeds),
            "methods": [method.name for method in request.methods],
            "rounds": first["fl"]["rounds"],
            "local_steps": first["fl"]["local_steps"],
            "local_epochs": first["fl"]["local_epochs"],
            "public_data": first["train"]["public_data"],
            "test_limit": request.preset.test_limit,
            "global_limit": request.preset.global_limit,
            "decoding": ("greedy" if decoding["num_beams"] == 1 else f"beam {decoding['num_beams']}")
            + f", at most {decoding['max_new_tokens']} new tokens",
            "machine": machine(),
            "benchmark": {
                **{key: meta["request"][key] for key in ("source", "sites", "partition", "seed")},
                "train_studies": sum(
                    meta["counts"][site]["train"] for site in meta["counts"] if site.startswith("site-")
                ),
            },
            "base_llm": str(request.base_llm),
        },
        "summary": summary,
        "claims": claims(summary),
        "ablations": ablation_effects(summary),
        "runs": records,
        "floor": floor,
    }


def machine() -> str:
    """Where the runs ran, in words (the wall times mean nothing without it)."""

    where = f"{os.cpu_count()} CPU cores ({platform.machine()})"
    if torch.cuda.is_available():
        where += f", {torch.cuda.get_device_name(0)}"
    return where + f", torch {torch.__version__}"
