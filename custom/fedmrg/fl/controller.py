"""The server's workflow: rounds of train tasks, the aggregator, checkpoints, results, the global model.

``FedMRGController`` is an NVFlare ``ModelController``:

1. the initial global model comes from one site (``submit_model``: every site builds the same one
   from the config's seed, and the server never loads the LLM);
2. each round it sends the global model and prototypes (``train``): the initial model by its
   digest alone, after that the last round's compressed change (:mod:`fedmrg.fl.downlink`), and
   the whole state to a site that holds another model; has the aggregator check and merge the
   results, and records bytes received and sent, the digests of the models the sites trained
   from, the sites' metrics and what it refused; then it writes a checkpoint (the global model,
   the last change, the server's residuals, the prototypes and the round records), so a stopped
   job resumes at the next round;
3. at the end every site scores the final model on its test split (``validate``), and the server
   writes ``results.json``, the global model and the best model by the key metric (the sites' mean
   validation loss of the global model they received).

Output (``results_dir``, or the job's run folder on the server): ``results.json``, ``rounds.png``,
``global_model/``, ``best_model/`` and ``audit/round-NNN.json`` (the names of everything each site
sent, for a hospital's privacy review). The checkpoint, ``server_state/``, lies in ``results_dir``
too; without one (POC, production) it lies in ``<server workspace>/fedmrg-state/<job name>/``, not
in the run folder: after a server restart the job is resubmitted under a new job id, and it resumes.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import time
from pathlib import Path

import numpy as np
import torch
from nvflare.apis.fl_constant import FLContextKey
from nvflare.apis.job_def import JobMetaKey
from nvflare.app_common.abstract.fl_model import FLModel, ParamsType
from nvflare.app_common.workflows.model_controller import ModelController
from safetensors.torch import load_file, save_file

from fedmrg.config import config_to_dict, parse_config
from fedmrg.errors import ConfigError
from fedmrg.fl import messages as msg
from fedmrg.fl.aggregator import RoundAggregator
from fedmrg.fl.codec import CodecSpec, payload_header
from fedmrg.fl.downlink import Downlink
from fedmrg.fl.results import RESULTS_FILE, plot_rounds, round_bytes
from fedmrg.fl.wire import WIRE_BYTES
from fedmrg.io import checked_name, path_inside, recover_directory, replace_directory, write_json
from fedmrg.model.layout import save_shared_model

STATE_DIR, STATE_FILE = "server_state", "state.json"
RESULTS_ROOT_ENV = "FEDMRG_RESULTS_ROOT"  # set by the server's operator: where a job's results_dir may point
GLOBAL_FILE, BEST_FILE, RESIDUAL_FILE = "global.safetensors", "best.safetensors", "residual.safetensors"
CHANGE_FILE = "change.safetensors"  # the last round's change payload, and the download's residual


class FedMRGController(ModelController):
    """Federated rounds with a checking, exact aggregator; resumable; writes results and models.

    Args:
        config: the job's config (a ``config_to_dict`` mapping); recorded in results and checkpoints,
            and a checkpoint of another config is refused.
        rounds: the number of federated rounds.
        job_name: keys the server's checkpoint, so a job resubmitted under the same name resumes.
        min_sites: go on with a round once this many sites answered (None: wait for every site).
        key_metric: the sites' metric (lower is better) that picks the best model.
        aggregator_id: the id of the server component that checks and merges updates (any
            :class:`~fedmrg.fl.aggregator.RoundAggregator`).
        results_dir: where results, models and the checkpoint go (None: the job's run folder on the
            server, with the checkpoint in the server workspace).
        final_validation: have every site score the final model on its test split.
        wait_after_min_sites: seconds to wait for the other sites once ``min_sites`` have answered.
    """

    def __init__(
        self,
        config: dict,
        rounds: int,
        job_name: str = "fedmrg",
        min_sites: int | None = None,
        key_metric: str = "val_loss",
        aggregator_id: str = "aggregator",
        results_dir: str | None = None,
        final_validation: bool = True,
        wait_after_min_sites: int = 600,
    ) -> None:
        super().__init__(persistor_id="")  # the controller keeps its own checkpoint (global model + residual)
        self.config, self.rounds, self.job_name = config, rounds, job_name
        self.min_sites, self.wait_after_min_sites, self.key_metric = min_sites, wait_after_min_sites, key_metric
        self.aggregator_id, self.results_dir = aggregator_id, results_dir
        self.final_validation = final_validation

    # ----------------------------------------------------------------------------------- run
    def run(self) -> None:
        self.aggregator: RoundAggregator = self.engine.get_component(self.aggregator_id)
        if not isinstance(self.aggregator, RoundAggregator):
            self.system_panic(
                f"component '{self.aggregator_id}' is not a round aggregator (start_round, accept_model, "
                "aggregate_model, state_dict, load_state_dict)",
                self.fl_ctx,
            )
            return
        try:
            checked_name(self.job_name, "the job's job_name")
            self.out = self._output_dir()
            self.state_dir = self._state_dir()
            fl = parse_config(self.config, "the job's config").fl
        except ConfigError as exc:
            self.system_panic(str(exc), self.fl_ctx)
            return
        self.downlink = Downlink(CodecSpec.of(fl)) if fl.sends_changes else None
        state = self._load_state() or self._initial_state()
        if state is None:
            return
        for round_number in range(state["next_round"], self.rounds):
            if not self._run_round(state, round_number):
                return  # aborted: the checkpoint stays at the last complete round
            self._save_state(state)
        if self.final_validation and not self.abort_signal.triggered:
            state["final"] = self._final_scores(state)
        self._write_outputs(state)

    def _run_round(self, state: dict, round_number: int) -> bool:
        """One round; False, with nothing recorded, when the job was aborted during it."""
        if self.abort_signal.triggered:
            return False
        started = time.perf_counter()
        results, asked = self._gather(msg.TRAIN, state, round_number)
        if self.abort_signal.triggered:
            self.warning(f"round {round_number + 1} aborted; resubmitted, the job resumes at this round")
            return False
        self.aggregator.start_round(state["global"], round_number)
        record = {
            "round": round_number,
            "bytes_up": {},
            "bytes_down": {},
            "dense_bytes_up": {},
            "dense_bytes_down": {},
            "global_digest": state["digest"],
            "site_digests": {},
            "metrics": {},
            "accepted": [],
            "refused": {},
        }
        audit = {}
        dense = msg.state_bytes(state["global"])
        for result in results:
            site = str(result.meta.get(msg.CLIENT_NAME))
            record["bytes_up"][site], record["bytes_down"][site] = wire_bytes(result)
            if site in asked and None not in (asked[site], record["bytes_down"][site]):
                record["bytes_down"][site] += asked[site]  # the digest it was sent first
            record["dense_bytes_up"][site] = record["dense_bytes_down"][site] = dense
            record["site_digests"][site] = msg.reported_digest(result.meta)
            record["metrics"][site] = numeric_metrics(result.metrics)
            audit[site] = _audit_entry(result)
            self.aggregator.accept_model(result)
        merged = self.aggregator.aggregate_model()
        record.update({key: merged.meta[key] for key in ("accepted", "refused", "merged")})
        self._track_best(state, record["metrics"], round_number)
        self._next_global(state, merged)
        if msg.PROTOTYPES in merged.meta:
            state["prototypes"] = {k: torch.as_tensor(merged.meta[k]) for k in (msg.PROTOTYPES, msg.AVAILABLE)}
        record["seconds"] = round(time.perf_counter() - started, 2)  # sent, trained everywhere, merged
        state["rounds"].append(record)
        state["next_round"] = round_number + 1
        write_json(self.out / "audit" / f"round-{round_number:03d}.json", audit)
        self.info(
            f"round {round_number + 1}/{self.rounds}: answered {sorted(record['metrics'])}, accepted "
            f"{record['accepted']}, refused {list(record['refused'])}, "
            f"{'merged' if record['merged'] else 'not merged'}, bytes up {round_bytes(record, 'bytes_up')}, "
            f"down {round_bytes(record, 'bytes_down')}"
        )
        return True

    def _gather(self, task: str, state: dict, round_number: int) -> tuple[list[FLModel], dict[str, int | None]]:
        """The sites' answers to a task that carries the global model; a site that cannot have it from
        the change or the digest the task carries asks for the whole state and gets it. Also the bytes
        of the first task of each site that asked."""
        results = self._send_to_sites(task, self._global_message(state, round_number))
        asking = [r for r in results if (r.meta or {}).get(msg.NEED_GLOBAL)]
        if not asking:
            return results, {}
        asked = {str(r.meta.get(msg.CLIENT_NAME)): wire_bytes(r)[1] for r in asking}
        self.info(f"round {round_number + 1}: {sorted(asked)} hold another global model; sending them the state")
        whole = self._global_message(state, round_number, whole=True)
        again = self.send_model_and_wait(task, data=whole, targets=sorted(asked))
        return [r for r in results if r not in asking] + again, asked

    def _next_global(self, state: dict, merged: FLModel) -> None:
        """The merged model becomes the global one: as the sites will have it from the compressed change,
        when the download sends changes; else as merged."""
        if not merged.meta.get("merged"):
            state["change"] = b""  # nothing changed: the sites hold it
            return
        target = {k: v.detach().float().clone() for k, v in merged.params.items()}
        if self.downlink is None:
            state["global"], state["change"] = target, None
        else:
            state["base"] = state["digest"]
            state["change"], state["global"] = self.downlink.step(state["global"], target)
        state["digest"] = msg.state_digest(state["global"])

    def _send_to_sites(self, task: str, data: FLModel) -> list[FLModel]:
        """The task to every site; the answers when all have answered, or ``wait_after_min_sites`` seconds
        after ``min_sites`` have (a site that failed or disconnected is then left out, and FLARE ends the
        wait early once only disconnected sites are missing)."""
        if self.min_sites is None:
            return self.send_model_and_wait(task, data=data)
        return self.broadcast_model(
            data=data,
            task_name=task,
            min_responses=self.min_sites,
            wait_time_after_min_received=self.wait_after_min_sites,
        )

    def _global_message(self, state: dict, round_number: int, whole: bool = False) -> FLModel:
        """The global model as a task carries it: the last change (when there is one), the digest
        alone (when the sites hold the model already), else, or with ``whole``, the whole state."""
        meta = {msg.GLOBAL_DIGEST: state["digest"]}
        if state.get("prototypes") is not None:
            meta.update({k: v.numpy() for k, v in state["prototypes"].items()})
        change, params = None if whole else state.get("change"), {}
        if change:
            params = {msg.GLOBAL_CHANGE: msg.payload_to_array(change)}
            meta[msg.BASE_DIGEST] = state["base"]
        elif change is None:
            params = msg.to_numpy(state["global"])
        return FLModel(
            params_type=ParamsType.FULL,
            params=params,
            current_round=round_number,
            total_rounds=self.rounds,
            meta=meta,
        )

    def _initial_state(self) -> dict | None:
        """The starting global model, from the first site that answers ``submit_model``."""
        sites = sorted(client.name for client in self.engine.get_clients())
        reasons = {}
        for site in sites:
            replies = self.send_model_and_wait(msg.SUBMIT_MODEL, data=FLModel(params={}), targets=[site])
            reasons[site] = initial_model_problem(replies[0] if replies else None, self.config)
            if reasons[site] is None:
                self.info(f"initial global model from {site}")
                return initial_state(replies[0])
            self.warning(f"initial model from {site} not used: {reasons[site]}")
        why = "; ".join(f"{site}: {reason}" for site, reason in reasons.items())
        self.system_panic(f"no site could provide the initial model ({why})", self.fl_ctx)
        return None

    def _track_best(self, state: dict, metrics: dict[str, dict], round_number: int) -> None:
        """The model sent this round was measured by every site before training: keep it if it is the best."""
        values = [m[self.key_metric] for m in metrics.values() if self.key_metric in m]
        if not values:
            return
        value = float(np.mean(values))
        if state["best"] is None or value < state["best"]["value"]:
            state["best"] = {"round": round_number, "value": value, "metric": self.key_metric}
            state["best_global"] = {k: v.clone() for k, v in state["global"].items()}

    def _final_scores(self, state: dict) -> dict:
        final, metrics, digests = {}, {}, {}
        for result in self._gather(msg.VALIDATE, state, self.rounds)[0]:
            site = str(result.meta.get(msg.CLIENT_NAME))
            metrics[site] = numeric_metrics(result.metrics)
            digests[site] = msg.reported_digest(result.meta)
            if msg.SCORES in result.meta:
                final[site] = result.meta[msg.SCORES]
        self._track_best(state, metrics, self.rounds)  # the final model, measured the same way
        state["final_digests"] = {"global_digest": state["digest"], "site_digests": digests}
        state["final_metrics"] = metrics
        return final

    # ------------------------------------------------------------------------------- outputs
    def _output_dir(self) -> Path:
        """The job's run folder; a ``results_dir`` the job asks for only inside the folder the server's
        operator allows (``$FEDMRG_RESULTS_ROOT``, which the simulator's driver sets), never elsewhere."""
        if not self.results_dir:
            return Path(self.engine.get_workspace().get_run_dir(self.fl_ctx.get_job_id()))
        root = os.environ.get(RESULTS_ROOT_ENV)
        if not root:
            raise ConfigError(
                f"the job asks to write its results to {str(self.results_dir)[:200]!r}; this server allows a "
                f"results_dir only inside ${RESULTS_ROOT_ENV}, which it does not set"
            )
        return path_inside(root, str(self.results_dir))

    def _state_dir(self) -> Path:
        """Where the checkpoint lies: beside the results in the simulator; else in the server workspace,
        under the submitter and the job name, so that only the same submitter's job resumes from it."""
        if self.results_dir:
            return self.out / STATE_DIR
        meta = self.fl_ctx.get_prop(FLContextKey.JOB_META) or {}
        submitter = submitter_folder(str(meta.get(JobMetaKey.SUBMITTER_NAME, "") or "unknown"))
        root = Path(self.engine.get_workspace().get_root_dir()) / "fedmrg-state"
        return path_inside(root, submitter, self.job_name, STATE_DIR)

    def _write_outputs(self, state: dict) -> None:
        prototypes = state.get("prototypes") or {}
        models = {"global_model": state["global"]}
        if state.get("best_global") is not None:
            models["best_model"] = state["best_global"]
        for folder, shared in models.items():
            replace_directory(
                self.out / folder,
                lambda staging, shared=shared: save_shared_model(
                    staging, state["model_meta"], shared, prototypes.get(msg.PROTOTYPES), prototypes.get(msg.AVAILABLE)
                ),
            )
        results = {
            "job": self.job_name,
            "config": self.config,
            "rounds": state["rounds"],
            "final": state.get("final", {}),
            "final_metrics": state.get("final_metrics", {}),
            **state.get("final_digests", {}),
            "global_model": str((self.out / "global_model").resolve()),
            "best_model": dict(state["best"] or {}, path=str((self.out / "best_model").resolve())),
        }
        write_json(self.out / RESULTS_FILE, results)
        plot_rounds(results, self.out / "rounds.png")
        self.info(f"results in {self.out / RESULTS_FILE}, global model in {self.out / 'global_model'}")

    # ---------------------------------------------------------------------------- checkpoint
    def _save_state(self, state: dict) -> None:
        def write(folder: Path) -> None:
            save_file({k: v.contiguous() for k, v in state["global"].items()}, str(folder / GLOBAL_FILE))
            if state.get("best_global") is not None:
                save_file({k: v.contiguous() for k, v in state["best_global"].items()}, str(folder / BEST_FILE))
            extra = dict(self.aggregator.state_dict())
            if state.get("prototypes") is not None:
                extra.update({f"{msg.PROTOTYPES}:{k}": v.contiguous() for k, v in state["prototypes"].items()})
            save_file(extra, str(folder / RESIDUAL_FILE))
            if state["change"] is not None:  # what the next message sends, and the download's residual
                residual = self.downlink.state_dict() if self.downlink is not None else {}
                saved = {f"residual:{k}": v for k, v in residual.items()}
                if state["change"]:
                    saved["change"] = torch.from_numpy(msg.payload_to_array(state["change"]))
                save_file(saved, str(folder / CHANGE_FILE))
            info = {k: state[k] for k in ("next_round", "model_meta", "rounds", "best", "digest")}
            info["base"] = state.get("base")
            write_json(folder / STATE_FILE, {**info, "config": self.config, "job": self.job_name})

        replace_directory(self.state_dir, write)
        write_json(
            self.out / RESULTS_FILE,
            {
                "job": self.job_name,
                "config": self.config,
                "rounds": state["rounds"],
                "final": {},
                "global_model": None,
                "in_progress": True,
            },
        )

    def _load_state(self) -> dict | None:
        folder = self.state_dir
        recover_directory(folder, STATE_FILE)
        if not (folder / STATE_FILE).is_file():
            return None
        info = json.loads((folder / STATE_FILE).read_text(encoding="utf-8"))
        if _without_rounds(info["config"]) != _without_rounds(self.config) or info.get("job") != self.job_name:
            self.system_panic(
                f"{folder}: a checkpoint of another job or config; remove it, or give the job "
                "another name (job.py --name) or results folder (--workspace)",
                self.fl_ctx,
            )
            return None
        extra = load_file(str(folder / RESIDUAL_FILE))
        prototypes = {k.split(":", 1)[1]: v for k, v in extra.items() if k.startswith(f"{msg.PROTOTYPES}:")}
        self.aggregator.load_state_dict({k: v for k, v in extra.items() if not k.startswith(f"{msg.PROTOTYPES}:")})
        state = {**info, "global": load_file(str(folder / GLOBAL_FILE)), "prototypes": prototypes or None}
        state["digest"] = msg.state_digest(state["global"])
        state["change"] = None  # the whole state, unless the checkpoint holds the last change
        if (folder / CHANGE_FILE).is_file() and info.get("digest") == state["digest"]:
            saved = load_file(str(folder / CHANGE_FILE))
            state["change"] = saved["change"].numpy().tobytes() if "change" in saved else b""
            if self.downlink is not None:
                self.downlink.load_state_dict({k[len("residual:") :]: v for k, v in saved.items() if k != "change"})
        if (folder / BEST_FILE).is_file():
            state["best_global"] = load_file(str(folder / BEST_FILE))
        self.info(f"resuming from {folder} at round {state['next_round'] + 1}")
        return state


def initial_state(reply: FLModel) -> dict:
    """A job's state before its first round, from a site's ``submit_model`` reply: the initial model,
    which the first round names by its digest alone (every site built it itself)."""
    initial = {name: value.float() for name, value in msg.to_torch(reply.params).items()}
    return {
        "next_round": 0,
        "global": initial,
        "digest": msg.state_digest(initial),
        "change": b"",
        "prototypes": None,
        "model_meta": reply.meta[msg.MODEL_META],
        "rounds": [],
        "best": None,
    }


def _without_rounds(config: dict) -> dict:
    """A config as a checkpoint compares it: a job may resume with more (or fewer) rounds."""
    plain = config_to_dict(parse_config(config, "checkpoint config"))
    plain["fl"]["rounds"] = None
    return plain


def wire_bytes(result: FLModel) -> tuple[int | None, int | None]:
    """A site's round on the wire: the bytes of its result as the server received it, and of the train
    task as the site says it received it (None where a message carries no measure)."""
    meta = result.meta or {}
    up, down = meta.get(WIRE_BYTES), meta.get(msg.BYTES_DOWN)
    return tuple(int(n) if isinstance(n, (int, np.integer)) and n >= 0 else None for n in (up, down))


def _audit_entry(result: FLModel) -> dict:
    """Names of everything a site sent: parameters, payload entries, metadata and metric keys (a name
    that is not plain text is recorded by its length only)."""
    params = result.params or {}
    entry = {
        "params": plain_names(params),
        "meta": plain_names(result.meta or {}),
        "metrics": plain_names(result.metrics or {}),
    }
    if msg.UPDATE in params:
        try:
            entry["payload_entries"] = plain_names(payload_header(msg.array_to_payload(params[msg.UPDATE])))
        except Exception as exc:  # an unreadable payload is refused by the aggregator; record it here
            entry["payload_entries"] = f"unreadable: {exc.__class__.__name__}"
    return entry


def submitter_folder(submitter: str) -> str:
    """A folder name for a job's submitter (an admin's e-mail address, say): readable, and distinct
    for distinct submitters (a short hash of the exact name)."""
    readable = re.sub(r"[^A-Za-z0-9_.-]", "_", submitter).lstrip("._-")[:40] or "submitter"
    return f"{readable}-{hashlib.sha256(submitter.encode()).hexdigest()[:10]}"


_METRIC_NAME = re.compile(r"[A-Za-z0-9_.:/-]{1,80}")


def numeric_metrics(metrics) -> dict[str, float]:
    """A site's metrics as the server records them: finite numbers under plain names; anything else a
    site sends (text, arrays, odd names) is left out, so it reaches neither the records nor the logs."""
    out = {}
    for name, value in (metrics or {}).items() if isinstance(metrics, dict) else ():
        plain = isinstance(name, str) and _METRIC_NAME.fullmatch(name) is not None
        number = isinstance(value, (int, float, np.number)) and not isinstance(value, bool)
        if plain and number and np.isfinite(float(value)):
            out[name] = float(value)
    return out


_PLAIN_NAME = re.compile(r"[A-Za-z0-9_.:/-]{1,200}")


def plain_names(names) -> list[str]:
    """Names a site chose, as the server records them: plain ones as they are, others by length."""
    return sorted(
        str(name) if _PLAIN_NAME.fullmatch(str(name)) else f"<name of {len(str(name))} characters>" for name in names
    )


def initial_model_problem(reply: FLModel | None, config: dict) -> str | None:
    """Why a site's initial model must not start the job, or None: it must hold numeric, finite
    parameters and describe a model of the job's own config."""
    if reply is None or not reply.params:
        return "no initial model"
    meta = (reply.meta or {}).get(msg.MODEL_META)
    if not isinstance(meta, dict) or not isinstance(meta.get("llm"), dict) or meta.get("config") != config:
        return "its model description is not of this job's config"
    try:
        params = msg.to_torch(reply.params)
    except (TypeError, ValueError, RuntimeError) as exc:
        return f"parameters that are not numeric arrays ({exc.__class__.__name__})"
    bad = [
        name for name, value in params.items() if value.is_floating_point() and not bool(torch.isfinite(value).all())
    ]
    return f"values that are not finite in {len(bad)} parameter(s)" if bad else None
