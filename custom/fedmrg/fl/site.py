"""A hospital's side of federated training, without FLARE: settings, local state, one round.

:class:`SiteTrainer` is what the FLARE executor (:mod:`fedmrg.fl.executor`) drives. It holds the
model and optimizer for the whole job and keeps on the site's disk, after every round, everything
that never leaves the site: the specialized adapter and client head, the error-feedback residual
of the update codec, and the optimizer and schedule; and the global model it last received, which
the server's next change applies to (:mod:`fedmrg.fl.downlink`). A site that restarts resumes from there.

Per-site settings (where the data and the base LLM lie, device, batch size, loader workers) come
from the site, not from the job, so one job runs at hospitals whose files lie in different places:

1. ``<site workspace>/local/fedmrg_site.yaml`` (written by the hospital's admin), else
2. the YAML file named by ``$FEDMRG_SITE_SETTINGS``: one site's settings, or a mapping of
   site names to settings (what ``job.py`` writes for a simulator run).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml
from safetensors.torch import load_file, save_file

from fedmrg.config import Config, config_to_dict
from fedmrg.data.loaders import own_studies, seed_epoch, study_loader, training_loader
from fedmrg.errors import ConfigError, DataError
from fedmrg.fl.codec import CodecSpec, Delta, ErrorFeedback, encode, round_delta
from fedmrg.fl.downlink import apply_change, read_change
from fedmrg.fl.dp import epsilon, noise_generator, privatize
from fedmrg.fl.messages import state_digest
from fedmrg.io import recover_directory, replace_directory
from fedmrg.model.adapters import adapter_names
from fedmrg.model.inference import adapter_scores
from fedmrg.model.layout import save_peft_adapter
from fedmrg.model.mrg import MRGModel
from fedmrg.model.parameters import SPECIALIZED
from fedmrg.model.state_files import load_tree, save_tree, tree_files
from fedmrg.model.training import Trainer, peak_memory_mib, seed_everything

log = logging.getLogger(__name__)

SETTINGS_FILE = "fedmrg_site.yaml"
SETTINGS_ENV = "FEDMRG_SITE_SETTINGS"
STATE_FILE = "site_state.json"
LOCAL_FILE = "local.safetensors"
FEEDBACK_FILE = "feedback.safetensors"
GLOBAL_FILE = "global.safetensors"  # the global model the site last received
PROTOTYPES_FILE = "prototypes.safetensors"  # the prototypes the site trains against (the server's, or its own)
RELEASE_FILE = "dp_release"  # the last update released under differential privacy (model.state_files)
TRAINER_FILE = "trainer"  # trainer.json + trainer.safetensors (model.state_files)
SPECIALIZED_DIR = "specialized"  # the site's adapter in PEFT's format, for use outside the job
DEFAULT_STATE_DIR = "fedmrg-state"  # the site's state folder inside its workspace (no state_dir setting)


# ------------------------------------------------------------------------------------ settings
@dataclass
class SiteSettings:
    """What a hospital decides for itself."""

    data_dir: str  # the site's benchmark-layout folder (annotation.json + images)
    base_llm: str | None = None  # local copy of the base LLM; None = the path the job names
    base_encoder: str | None = None  # local copy of the pretrained encoder weights; None = the job's
    public_data: str | None = None  # local copy of the public studies the job rehearses; None = the job's
    device: str | None = None  # cpu, cuda, cuda:N; None = the config's train.device
    batch_size: int | None = None
    num_workers: int | None = None
    state_dir: str | None = None  # where local state persists; None = <site workspace>/fedmrg-state
    threads: int | None = None  # torch CPU threads; several sites on one machine want 1 each
    # Privacy floors the site owns: a job can raise them, never lower them.
    min_scored_studies: int | None = None  # validate scores at least this many test studies (all, if fewer)
    min_prototype_studies: int | None = None  # prototype rows of fewer of the round's studies stay here
    require_dp: bool = False  # refuse a job that does not add differential-privacy noise
    max_validate_calls: int | None = None  # validate tasks answered per job (each releases test scores)


def settings_candidates(
    local_dir: str | os.PathLike | None, settings_file: str | os.PathLike | None = None
) -> list[Path]:
    """The files the loader reads a site's settings from, in order: ``settings_file`` alone when given,
    else ``<local_dir>/fedmrg_site.yaml`` and the file ``$FEDMRG_SITE_SETTINGS`` names."""
    if settings_file is not None:
        return [Path(settings_file)]
    candidates = [Path(local_dir) / SETTINGS_FILE] if local_dir is not None else []
    if os.environ.get(SETTINGS_ENV):
        candidates.append(Path(os.environ[SETTINGS_ENV]))
    return candidates


def load_site_settings(
    site: str, local_dir: str | os.PathLike | None, settings_file: str | os.PathLike | None = None
) -> tuple[SiteSettings, str]:
    """The site's settings and where they came from: the first of :func:`settings_candidates` that exists."""
    candidates = settings_candidates(local_dir, settings_file)
    for path in candidates:
        if path.is_file():
            return _parse_settings(path, site), str(path)
    where = " or ".join(str(p) for p in candidates) or f"${SETTINGS_ENV}"
    to_write = settings_file if settings_file is not None else f"{SETTINGS_FILE} into the site's local/ folder"
    raise ConfigError(
        f"site {site}: no FedMRG site settings found ({where}); write {to_write} with at least "
        f"'data_dir: /path/to/site/data'"
    )


def _parse_settings(path: Path, site: str) -> SiteSettings:
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: not valid YAML ({exc.__class__.__name__})") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: must be a mapping of settings")
    if "data_dir" not in raw and site in raw:  # one file for several sites (simulator)
        raw = raw[site]
    elif "data_dir" not in raw:
        raise ConfigError(f"{path}: neither site settings (data_dir: ...) nor a section for site {site!r}")
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: {site}: must be a mapping of settings")
    known = {f.name for f in dataclasses.fields(SiteSettings)}
    unknown = sorted(set(raw) - known)
    if unknown:
        raise ConfigError(f"{path}: {unknown[0]}: unknown setting (known: {', '.join(sorted(known))})")
    for key, minimum in (
        ("batch_size", 1),
        ("num_workers", 0),
        ("threads", 1),
        ("min_scored_studies", 1),
        ("min_prototype_studies", 1),
        ("max_validate_calls", 1),
    ):
        value = raw.get(key)
        if value is not None and (type(value) is not int or value < minimum):
            raise ConfigError(f"{path}: {key}: must be an integer >= {minimum}, got {value!r}")
    for key in ("data_dir", "base_llm", "base_encoder", "public_data", "device", "state_dir"):
        if raw.get(key) is not None and not isinstance(raw[key], str):
            raise ConfigError(f"{path}: {key}: must be a string, got {raw[key]!r}")
    if not isinstance(raw.get("require_dp", False), bool):
        raise ConfigError(f"{path}: require_dp: must be true or false, got {raw['require_dp']!r}")
    settings = SiteSettings(**raw)
    if not Path(settings.data_dir).is_dir():
        raise ConfigError(f"{path}: data_dir: {settings.data_dir} is not a folder")
    return settings


def apply_site_settings(cfg: Config, settings: SiteSettings) -> Config:
    """A copy of the job's config with the site's own choices in place (and its thread count set),
    its privacy floors applied: a job may ask for more privacy than the site, never for less."""
    if settings.require_dp and cfg.fl.dp_noise_multiplier is None:
        raise ConfigError(
            "this site takes part only with differential privacy (require_dp in its site settings); "
            "the job leaves fl.dp_noise_multiplier unset"
        )
    if settings.threads:
        torch.set_num_threads(settings.threads)
    cfg = dataclasses.replace(
        cfg, train=dataclasses.replace(cfg.train), model=dataclasses.replace(cfg.model), fl=dataclasses.replace(cfg.fl)
    )
    if settings.min_prototype_studies:
        cfg.fl.prototype_min_studies = max(cfg.fl.prototype_min_studies, settings.min_prototype_studies)
    for key in ("device", "batch_size", "num_workers", "public_data"):
        if getattr(settings, key) is not None:
            setattr(cfg.train, key, getattr(settings, key))
    if settings.base_llm:
        cfg.model.base_llm = settings.base_llm
    if settings.base_encoder:
        cfg.model.encoder = dataclasses.replace(cfg.model.encoder, pretrained=settings.base_encoder)
    return cfg


def site_run_config(
    cfg: Config, settings: SiteSettings, job_base_llm: str | None = None, set_threads: bool = True
) -> Config:
    """The config a site's trainer runs: a copy of the job's, with the base LLM the job's executor
    names when the config names none, then the site's settings (:func:`apply_site_settings`; without
    ``set_threads``, this process's thread count is left as it is)."""
    if job_base_llm and not cfg.model.base_llm:
        cfg = dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, base_llm=job_base_llm))
    return apply_site_settings(cfg, settings if set_threads else dataclasses.replace(settings, threads=None))


def site_state_root(settings: SiteSettings, site_workspace: str | os.PathLike) -> Path:
    """The folder that holds a site's local state, one subfolder per job name: the ``state_dir``
    setting, else ``<site workspace>/fedmrg-state``."""
    return Path(settings.state_dir) if settings.state_dir else Path(site_workspace) / DEFAULT_STATE_DIR


# --------------------------------------------------------------------------------- site trainer
@dataclass
class RoundUpdate:
    """What a site sends after a round, and what it measured."""

    payload: bytes  # the codec payload (lowrank), or b"" with ``dense`` set
    dense: dict[str, torch.Tensor] | None  # full fp32 parameters (the FedAvg baseline)
    prototypes: dict[str, torch.Tensor] | None  # PrototypeBank.state(): sums and counts
    train_studies: int
    steps: int
    metrics: dict[str, float]


class SiteTrainer:
    """One site's model, optimizer and on-disk state across the rounds of a job."""

    def __init__(self, cfg: Config, site: str, data_dir: str | os.PathLike, state_dir: str | os.PathLike) -> None:
        self.cfg, self.site, self.data_dir = cfg, site, Path(data_dir)
        self.state_dir = Path(state_dir)
        self.spec = CodecSpec.of(cfg.fl)
        seed_everything(cfg.train.seed)
        self.model = MRGModel.build(cfg)
        self.train_loader = training_loader(cfg, [self.data_dir], seed=cfg.train.seed)
        self.val_loader = self._optional_loader("val")
        self.trainer = Trainer(self.model, cfg, self.planned_steps())
        self.trainer.set_class_counts(self.train_loader)
        self.feedback = ErrorFeedback()
        self.rounds_done = 0
        self.dp_noise = noise_generator() if cfg.fl.dp_noise_multiplier else None
        self.dp_releases = 0  # updates released under differential privacy: what epsilon counts
        self.last_release: tuple[int, RoundUpdate] | None = None  # (round, update) of the last DP release
        self._hold_global(self.model.shared_state_dict())  # the initial model, which every site builds alike
        self._resume()

    # ------------------------------------------------------------------------------- planning
    def steps_per_round(self) -> int:
        fl = self.cfg.fl
        per_epoch = math.ceil(len(self.train_loader) / self.cfg.train.grad_accum)
        return fl.local_steps or fl.local_epochs * per_epoch

    def planned_steps(self) -> int:
        return self.cfg.fl.rounds * self.steps_per_round()

    # ---------------------------------------------------------------------------------- rounds
    def load_global(self, shared: dict[str, torch.Tensor], prototypes: dict[str, torch.Tensor] | None) -> None:
        """Take the server's shared parameters (and prototypes: ``{"prototypes", "available"}``).

        Names and shapes must be this model's (``load_shared_state_dict`` checks them before it
        copies anything) and every value finite: a faulty or hostile server's NaN would otherwise
        end up in the site's own specialized adapter after one round of training. A whole state is
        taken as it arrives, not checked against the digest it came with: a job's lossy filters
        (FLARE's quantization on the dense baseline) change it on the way; the site reports the
        digest of what it took, and the server records both.
        """
        bad = sorted(name for name, value in {**shared, **(prototypes or {})}.items() if not _all_finite(value))
        if bad:
            raise ValueError(f"the server's global model holds values that are not finite: {', '.join(bad[:3])}")
        self.model.load_shared_state_dict(shared)
        if prototypes is not None and self.cfg.model.contrastive:
            self.model.set_prototypes(prototypes["prototypes"], prototypes["available"])
        self._hold_global(shared)

    def _hold_global(self, shared: dict[str, torch.Tensor]) -> None:
        self.global_state = {name: value.detach().float().clone() for name, value in shared.items()}
        self.global_digest = state_digest(self.global_state)

    def held_global(self, digest: object) -> dict[str, torch.Tensor] | None:
        """The global model this site holds, when it is the one ``digest`` names; else None."""
        return self.global_state if digest == self.global_digest else None

    def changed_global(self, payload: bytes, base: object, result: object) -> dict[str, torch.Tensor] | None:
        """The global model the server's change yields: applied to the model this site holds when
        that is ``base``, and checked to be ``result``. None when this site holds another model or
        gets another result: it then asks for the whole state."""
        held = self.held_global(result)
        if held is not None:  # already applied (a resent round, a restarted site)
            return held
        if base != self.global_digest:
            log.warning("site %s: the server's change applies to a global model this site does not hold", self.site)
            return None
        changed = apply_change(self.global_state, read_change(payload, self.global_state, self.cfg.fl.rank))
        if state_digest(changed) != result:
            log.warning("site %s: the server's change gave another model than the server's", self.site)
            return None
        return changed

    def validation_losses(self) -> dict[str, float]:
        """The current model's losses on the site's validation studies (empty without any)."""
        if self.val_loader is None:
            return {}
        return {f"val_{k}": v for k, v in self.trainer.evaluate_loss(self.val_loader).items()}

    def train_round(self, round_number: int, abort: Callable[[], bool] | None = None) -> RoundUpdate:
        """Train from the loaded global model for one round; save the local state; build the update.

        Under differential privacy a round already released is not trained again: the same update
        is sent again, so that a server re-sending a round gets no fresh noise to average out.
        """
        if self.last_release is not None and self.last_release[0] == round_number:
            log.warning(
                "site %s: round %d was already released under differential privacy; sending the same update again",
                self.site,
                round_number + 1,
            )
            return self.last_release[1]
        self.align_with_server(round_number)
        before = self.model.shared_state_dict()
        target = min(self.trainer.state.step + self.steps_per_round(), self.trainer.total_steps)
        history_start = len(self.trainer.state.history)
        started = time.perf_counter()

        def stop() -> bool:
            return self.trainer.state.step >= target or bool(abort and abort())

        while not stop():
            epoch = self.trainer.state.epochs_done
            seed_epoch(self.train_loader, self.cfg.train.seed + epoch)
            self.trainer.run_epoch(self.train_loader, progress=False, abort=stop)
        if abort and abort():
            raise InterruptedError(f"site {self.site}: round {round_number} aborted")
        if self.val_loader is not None:
            self.trainer.calibrate(self.val_loader)  # the head's thresholds: averaged into the global model
        after = self.model.shared_state_dict()
        private = self.dp_noise is not None  # then no prototype sums and no study count leave the site
        bank = self.trainer.prototype_bank if self.cfg.model.contrastive and not private else None
        prototypes = bank.state(self.cfg.fl.prototype_min_studies) if bank is not None else None
        payload, dense = self._encode(before, after)
        if private:
            self.dp_releases += 1
        privacy = (
            {"dp_epsilon": epsilon(self.dp_releases, self.cfg.fl.dp_noise_multiplier, self.cfg.fl.dp_delta)}
            if private
            else {}
        )
        update = RoundUpdate(
            payload=payload,
            dense=dense,
            prototypes=prototypes,
            train_studies=1 if private else own_studies(self.train_loader),
            steps=self.trainer.state.step,
            metrics={
                **_mean_losses(self.trainer.state.history[history_start:]),
                "train_seconds": time.perf_counter() - started,
                "peak_memory_mib": peak_memory_mib(self.model.info.device),
                "skipped_studies": float(len(self.trainer.skipped)),
                **privacy,
            },
        )
        self.rounds_done = round_number + 1
        if private:
            self.last_release = (round_number, update)
        self.save_state()
        return update

    def _encode(
        self, before: dict[str, torch.Tensor], after: dict[str, torch.Tensor]
    ) -> tuple[bytes, dict[str, torch.Tensor] | None]:
        """The codec payload of the round's change (its left-out part kept for the next round),
        or the parameters themselves for the dense FedAvg baseline."""
        if self.cfg.fl.update == "dense":
            if self.dp_noise is None:
                return b"", after
            change = self._private({name: after[name].float() - before[name].float() for name in after})
            return b"", {name: (before[name].float() + change[name]).to(before[name].dtype) for name in after}
        delta = round_delta(before, after)
        if self.dp_noise is not None:  # first: compression and error feedback only post-process it
            delta = self._private(delta)
        if self.cfg.fl.error_feedback:
            delta = self.feedback.compensate(delta)
        payload, left_out = encode(delta, self.spec)
        if self.cfg.fl.error_feedback:
            self.feedback.keep(left_out, self.spec)
        return payload, None

    def _private(self, delta: dict[str, Delta]) -> dict[str, Delta]:
        return privatize(delta, self.cfg.fl.dp_clip, self.cfg.fl.dp_noise_multiplier, self.dp_noise)

    # ------------------------------------------------------------------------------ local state
    def save_state(self) -> None:
        """Everything that stays at the site, written as one folder (a crash keeps the previous one)."""
        local = self.model.local_state_dict()

        def write(folder: Path) -> None:
            save_file({k: v.contiguous() for k, v in local.items()}, str(folder / LOCAL_FILE))
            save_file(self.global_state, str(folder / GLOBAL_FILE))
            prototypes = {"prototypes": self.model.prototypes, "available": self.model.prototype_available}
            save_file({k: v.detach().contiguous() for k, v in prototypes.items()}, str(folder / PROTOTYPES_FILE))
            self.feedback.save(folder / FEEDBACK_FILE)
            save_tree(folder / TRAINER_FILE, self.trainer.state_dict())
            if SPECIALIZED in adapter_names(self.cfg.model):
                specialized = {k[len("llm.") :]: v for k, v in local.items() if k.startswith("llm.")}
                save_peft_adapter(
                    folder / SPECIALIZED_DIR, specialized, SPECIALIZED, self.cfg.model, self.model.info.path
                )
            if self.last_release is not None:
                save_tree(folder / RELEASE_FILE, {"round": self.last_release[0], **_release_tree(self.last_release[1])})
            progress = {"rounds_done": self.rounds_done, "dp_releases": self.dp_releases}
            (folder / STATE_FILE).write_text(json.dumps(self._identity() | progress, indent=2), encoding="utf-8")

        replace_directory(self.state_dir, write, keep_previous=self.previous_dir)

    @property
    def previous_dir(self) -> Path:
        """The local state as it was one round earlier: what a site goes back to when the server
        resumes from a checkpoint older than the site's last round (:meth:`align_with_server`)."""
        return self.state_dir.with_name(f"{self.state_dir.name}.previous")

    def _identity(self) -> dict[str, Any]:
        """What must not change for saved local state to be reused: the model and the round plan
        (more rounds may be added to a finished or stopped job)."""
        config = config_to_dict(self.cfg)
        return {
            "site": self.site,
            "model": config["model"] | {"base_llm": None},
            "fl": config["fl"] | {"rounds": None},
            "steps_per_round": self.steps_per_round(),
        }

    def _resume(self) -> None:
        recover_directory(self.state_dir, STATE_FILE)
        if not (self.state_dir / STATE_FILE).is_file():
            return
        if not self._load_state(self.state_dir):
            stale = self.state_dir.with_name(f"{self.state_dir.name}.stale-{os.getpid()}")
            log.warning(
                "site %s: local state in %s was written for another model or plan; moved to %s, starting afresh",
                self.site,
                self.state_dir,
                stale,
            )
            self.state_dir.rename(stale)
            shutil.rmtree(self.previous_dir, ignore_errors=True)
            return
        # What the server last sent (the model and its prototypes) comes back only here, on a restart: going
        # back to an earlier round's state (align_with_server) keeps what the server has just sent.
        if (self.state_dir / GLOBAL_FILE).is_file():
            self._hold_global(load_file(str(self.state_dir / GLOBAL_FILE)))
        if (self.state_dir / PROTOTYPES_FILE).is_file():
            prototypes = load_file(str(self.state_dir / PROTOTYPES_FILE))
            self.model.set_prototypes(prototypes["prototypes"], prototypes["available"])
        log.info("site %s: resumed local state after round %d from %s", self.site, self.rounds_done, self.state_dir)

    def _load_state(self, folder: Path, rounds_done: int | None = None) -> bool:
        """Take the local state saved in ``folder``; False (and nothing taken) when it was saved
        for another model or round plan, or, with ``rounds_done``, after another round."""
        saved = json.loads((folder / STATE_FILE).read_text(encoding="utf-8"))
        saved_rounds = saved.pop("rounds_done", 0)
        saved_releases = saved.pop("dp_releases", 0)
        if saved != self._identity() or rounds_done not in (None, saved_rounds):
            return False
        if not tree_files(folder / TRAINER_FILE)[0].is_file():  # written by a version that pickled it
            return False
        self.model.load_local_state_dict(load_file(str(folder / LOCAL_FILE)))
        self.feedback = ErrorFeedback.load(folder / FEEDBACK_FILE)
        self.trainer.load_state_dict(load_tree(folder / TRAINER_FILE))
        self.trainer.total_steps = self.planned_steps()
        self.rounds_done = saved_rounds
        # Releases only add up: going back to an earlier state does not take back what was released.
        self.dp_releases = max(self.dp_releases, int(saved_releases))
        if tree_files(folder / RELEASE_FILE)[0].is_file():
            release = load_tree(folder / RELEASE_FILE)
            self.last_release = (int(release.pop("round")), _release_from_tree(release))
        return True

    def align_with_server(self, round_number: int) -> None:
        """Before training round ``round_number`` (counted from 0): the server's round decides.

        A site one round ahead trained a round the server never merged (the server resumed from
        the checkpoint before it, after a restart): it goes back to its state from before that
        round, so no round counts twice in its adapter, schedule or error feedback. A site behind
        (it missed rounds, or joined late) carries on from its own last round.
        """
        if self.rounds_done > round_number:
            if (self.previous_dir / STATE_FILE).is_file() and self._load_state(self.previous_dir, round_number):
                log.warning(
                    "site %s: the server is at round %d, this site's state after round %d was never merged; "
                    "went back to its state after round %d",
                    self.site,
                    round_number + 1,
                    round_number + 1,
                    round_number,
                )
                return
            log.warning(
                "site %s: the server is at round %d but this site's state is after round %d and no state "
                "of round %d is kept; training on from it",
                self.site,
                round_number + 1,
                self.rounds_done,
                round_number,
            )
        elif self.rounds_done < round_number:
            log.warning(
                "site %s: rejoining at round %d; its last round was round %d",
                self.site,
                round_number + 1,
                self.rounds_done,
            )

    def _optional_loader(self, split: str):
        try:
            return study_loader(self.cfg, [self.data_dir], split, train=False, skip_bad=True)
        except DataError as exc:
            log.info("site %s: no %s split (%s)", self.site, split, exc)
            return None

    # ------------------------------------------------------------------------------- evaluation
    def test_scores(self, out_dir: Path | None = None, limit: int | None = None) -> dict[str, dict]:
        """Scores on the site's test split with the generic adapter alone and with both adapters.

        The generated reports stay at the site (``out_dir``); only the scores are returned.
        """
        return adapter_scores(self.model, self.data_dir, limit=limit, out_dir=out_dir)


def _mean_losses(history: list[dict]) -> dict[str, float]:
    """Mean of each loss over this round's passes (``Trainer.state.history`` rows)."""
    values: dict[str, list[float]] = {}
    for row in history:
        for name, value in row.items():
            if isinstance(value, float):
                values.setdefault(f"train_{name}", []).append(value)
    return {name: sum(v) / len(v) for name, v in sorted(values.items())}


def _all_finite(value: torch.Tensor) -> bool:
    return not value.is_floating_point() or bool(torch.isfinite(value).all())


def _release_tree(update: RoundUpdate) -> dict:
    tree = dataclasses.asdict(update)
    tree["payload"] = np.frombuffer(update.payload, dtype=np.uint8).copy()
    return tree


def _release_from_tree(tree: dict) -> RoundUpdate:
    return RoundUpdate(**{**tree, "payload": bytes(np.asarray(tree["payload"], dtype=np.uint8))})
