"""The site trainer as an NVFlare executor: tasks ``train``, ``validate`` and ``submit_model``.

The executor reads the site's own settings (:func:`fedmrg.fl.site.load_site_settings`) when the
job starts, builds a :class:`~fedmrg.fl.site.SiteTrainer` on the first task and keeps it for the
job. Long work checks FLARE's abort signal. Losses and scores are streamed to the server through
FLARE's experiment tracking (a ``TBWriter`` component), so the server's TensorBoard shows every site.
"""

from __future__ import annotations

import logging
from pathlib import Path

from nvflare.apis.event_type import EventType
from nvflare.apis.executor import Executor
from nvflare.apis.fl_constant import FLContextKey, ReturnCode
from nvflare.apis.fl_context import FLContext
from nvflare.apis.shareable import Shareable, make_reply
from nvflare.apis.signal import Signal
from nvflare.app_common.abstract.fl_model import FLModel, ParamsType
from nvflare.app_common.utils.fl_model_utils import FLModelUtils

import fedmrg
from fedmrg.config import parse_config
from fedmrg.errors import ConfigError, FedMRGError
from fedmrg.fl import messages as msg
from fedmrg.fl.site import SiteSettings, SiteTrainer, load_site_settings, site_run_config, site_state_root
from fedmrg.fl.wire import WIRE_BYTES
from fedmrg.io import checked_name, path_inside
from fedmrg.versions import check_job_versions

log = logging.getLogger(__name__)


class MRGExecutor(Executor):
    """One hospital's trainer for a FedMRG job: ``submit_model``, ``train`` and ``validate``.

    Args:
        config: the job's config (a ``config_to_dict`` mapping).
        run_name: keys the site's state folder, so a resubmitted job of the same name resumes.
        base_llm: the base-LLM path the job names (a site's own ``base_llm`` setting wins).
        writer_id: the id of the site component that streams metrics to the server (None: none).
        test_limit: test studies scored at the site at the end (None: all).
    """

    def __init__(
        self,
        config: dict,
        run_name: str = "fedmrg",
        base_llm: str | None = None,
        writer_id: str | None = "log_writer",
        test_limit: int | None = None,
    ) -> None:
        super().__init__()
        self.config, self.run_name, self.base_llm = config, run_name, base_llm
        self.writer_id, self.test_limit = writer_id, test_limit
        self.site = ""
        self.writer = None
        self.settings = None
        self.trainer: SiteTrainer | None = None
        self.site_root: Path | None = None
        self.startup_error = ""
        self.validate_calls = 0

    def handle_event(self, event_type: str, fl_ctx: FLContext) -> None:
        if event_type == EventType.START_RUN:
            engine = fl_ctx.get_engine()
            self.site = fl_ctx.get_identity_name()
            workspace = engine.get_workspace()
            self.site_root = Path(workspace.get_root_dir())
            self.log_info(fl_ctx, f"fedmrg {fedmrg.__version__} from {Path(fedmrg.__file__).parent}")
            try:
                check_job_versions(fl_ctx.get_prop(FLContextKey.JOB_META) or {})
                self.settings, source = load_site_settings(self.site, workspace.get_site_config_dir())
            except FedMRGError as exc:  # every task then fails with this reason
                self.startup_error = str(exc)
                self.log_error(fl_ctx, self.startup_error)
                return
            self.log_info(fl_ctx, f"site settings from {source}: data {self.settings.data_dir}")
            if self.writer_id:
                self.writer = engine.get_component(self.writer_id)

    # --------------------------------------------------------------------------------- tasks
    def execute(self, task_name: str, shareable: Shareable, fl_ctx: FLContext, abort_signal: Signal) -> Shareable:
        if task_name not in (msg.TRAIN, msg.VALIDATE, msg.SUBMIT_MODEL):
            self.log_error(fl_ctx, f"unknown task {task_name!r}")
            return make_reply(ReturnCode.TASK_UNKNOWN)
        try:
            trainer = self._trainer()
            request = FLModelUtils.from_shareable(shareable)
            if task_name == msg.SUBMIT_MODEL:
                reply = FLModel(
                    params_type=ParamsType.FULL,
                    params=msg.to_numpy(trainer.model.shared_state_dict()),
                    meta={msg.MODEL_META: shareable_model_meta(trainer.model.model_meta(), self.config, self.base_llm)},
                )
            elif not self._load_global(trainer, request):
                reply = FLModel(params_type=ParamsType.FULL, params={}, meta=self._asking_for_global(request))
            else:
                if abort_signal.triggered:
                    return make_reply(ReturnCode.TASK_ABORTED)
                reply = (
                    self._train(trainer, request, abort_signal)
                    if task_name == msg.TRAIN
                    else self._validate(trainer, request)
                )
        except InterruptedError:
            self.log_info(fl_ctx, f"{task_name} aborted")
            return make_reply(ReturnCode.TASK_ABORTED)
        except (FedMRGError, ValueError) as exc:  # bad data, settings or message: the site's log says why
            # The reason may name the site's files or study ids: it stays in the site's own log; the
            # error line (which FLARE can stream to the server) says only what kind of failure it was.
            self.log_warning(fl_ctx, f"{task_name} failed: {exc}")
            self.log_error(fl_ctx, f"{task_name} failed ({exc.__class__.__name__}); the reason is in this site's log")
            return make_reply(ReturnCode.EXECUTION_EXCEPTION)
        return FLModelUtils.to_shareable(reply)

    def _trainer(self) -> SiteTrainer:
        if self.trainer is None:
            if self.startup_error:
                raise ConfigError(self.startup_error)
            if self.settings is None:
                raise ValueError("the executor was not started (no START_RUN event)")
            cfg = site_run_config(parse_config(self.config, "job config"), self.settings, self.base_llm)
            limit = self.test_limit
            if limit is not None and (type(limit) is not int or limit < 1):
                raise ConfigError(f"the job's test_limit must be a positive whole number, got {str(limit)[:40]!r}")
            # The job names the folder; it must stay one folder inside the site's state root.
            name = checked_name(self.run_name, "the job's run_name")
            state_dir = path_inside(site_state_root(self.settings, self.site_root), name)
            self.trainer = SiteTrainer(cfg, self.site, self.settings.data_dir, state_dir)
        return self.trainer

    def _load_global(self, trainer: SiteTrainer, request: FLModel) -> bool:
        """Take the global model the task carries: the whole state, the round's change to the model
        this site holds, or (when the server's model is the one this site holds) its digest alone.
        False when this site cannot have it that way: it then asks for the whole state."""
        meta, params = request.meta or {}, request.params or {}
        prototypes = None
        if msg.PROTOTYPES in meta:
            prototypes = msg.to_torch({"prototypes": meta[msg.PROTOTYPES], "available": meta[msg.AVAILABLE]})
        if msg.GLOBAL_CHANGE in params:
            payload = msg.array_to_payload(params[msg.GLOBAL_CHANGE])
            shared = trainer.changed_global(payload, meta.get(msg.BASE_DIGEST), meta.get(msg.GLOBAL_DIGEST))
        elif not params and msg.GLOBAL_DIGEST in meta:
            shared = trainer.held_global(meta[msg.GLOBAL_DIGEST])
        else:
            shared = msg.to_torch(params)
        if shared is None:
            return False
        trainer.load_global(shared, prototypes)
        return True

    def _asking_for_global(self, request: FLModel) -> dict:
        """A reply without training or scoring: this site cannot build the model the server named."""
        return {msg.NEED_GLOBAL: 1, **_download_size(request)}

    def _train(self, trainer: SiteTrainer, request: FLModel, abort_signal: Signal) -> FLModel:
        round_number = int(request.current_round or 0)
        metrics = trainer.validation_losses()  # of the global model just received
        update = trainer.train_round(round_number, abort=lambda: abort_signal.triggered)
        metrics.update(update.metrics)
        meta = {
            msg.TRAIN_STUDIES: update.train_studies,
            msg.STEPS: update.steps,
            msg.GLOBAL_DIGEST: msg.digest_array(trainer.global_digest),  # the global model it trained from
            **_download_size(request),
        }
        if update.prototypes is not None:
            meta[msg.PROTOTYPE_SUMS] = update.prototypes["sums"].numpy()
            meta[msg.PROTOTYPE_COUNTS] = update.prototypes["counts"].numpy()
        if update.dense is not None:
            reply = FLModel(params_type=ParamsType.FULL, params=msg.to_numpy(update.dense), metrics=metrics, meta=meta)
        else:
            reply = FLModel(
                params_type=ParamsType.DIFF,
                params={msg.UPDATE: msg.payload_to_array(update.payload)},
                metrics=metrics,
                meta=meta,
            )
        self._track(metrics, round_number)
        return reply

    def _validate(self, trainer: SiteTrainer, request: FLModel) -> FLModel:
        """Scores of the model received (generic alone, and with this site's adapter) on the test split;
        the reports themselves stay in the site's workspace."""
        self.validate_calls += 1
        most = self.settings.max_validate_calls if self.settings else None
        if most is not None and self.validate_calls > most:
            raise ConfigError(f"this site answers at most {most} validate task(s) per job (max_validate_calls)")
        reports = trainer.state_dir.with_name(f"{trainer.state_dir.name}-reports")
        scores = without_support(
            trainer.test_scores(out_dir=reports, limit=scored_limit(self.test_limit, self.settings))
        )
        metrics = trainer.validation_losses()
        for label, values in scores.items():
            metrics.update(
                {f"test_{label}_{name}": value for name, value in values["nlg"].items() if value is not None}
            )
            metrics[f"test_{label}_CE-F1_micro"] = values["ce"]["micro"]["f1"]
        self._track(metrics, int(request.current_round or 0))
        meta = {msg.SCORES: scores, msg.GLOBAL_DIGEST: msg.digest_array(trainer.global_digest)}  # the model scored
        return FLModel(params_type=ParamsType.FULL, params={}, metrics=metrics, meta=meta)

    def _track(self, metrics: dict[str, float], step: int) -> None:
        if self.writer is None:
            return
        for name, value in metrics.items():
            self.writer.add_scalar(f"{self.site}/{name}", float(value), global_step=step)


def _download_size(request: FLModel) -> dict[str, int]:
    """``{BYTES_DOWN: n}``: the size of the task as it arrived (the site's WireMeter), to report with
    the reply; empty when the task carried no measure."""
    received = (request.meta or {}).get(WIRE_BYTES)
    return {msg.BYTES_DOWN: received} if isinstance(received, int) else {}


def scored_limit(job_limit: int | None, settings: SiteSettings | None) -> int | None:
    """How many test studies a site scores: what the job asks, but never fewer than the site's floor."""
    if job_limit is None or settings is None or settings.min_scored_studies is None:
        return job_limit
    return max(job_limit, settings.min_scored_studies)


def without_support(scores: dict) -> dict:
    """Scores as they leave the site: no per-observation ``support`` (how many of the scored studies
    have each finding), which with few studies describes those studies."""

    def strip(value):
        if isinstance(value, dict):
            return {k: strip(v) for k, v in value.items() if k != "support"}
        return value

    return strip(scores)


def shareable_model_meta(model_meta: dict, job_config: dict, job_base_llm: str | None) -> dict:
    """The model description a site sends with its initial model: the job's own config (not the
    site's devices, batch sizes or paths) and the base LLM by the path the job named, or by its
    folder name alone; its fingerprint, family and width identify it without the site's path."""
    llm = dict(model_meta["llm"])
    llm["path"] = job_base_llm or Path(str(llm["path"])).name
    return {**model_meta, "config": job_config, "llm": llm}
