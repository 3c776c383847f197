"""The report generator: one module that composes every FedMRG and MRG-LLM mechanism.

LLM input, per study, at a site::

    [bos] instruction | n customized prompts | V x M visual tokens | "diagnosis: ... report:" | report [eos]

Sequences are left-padded and positions count only attended tokens (``cumsum(mask) - 1``), the
rule Hugging Face ``generate`` applies, so a study is seen the same way in training and decoding
(a missing second view is masked out, not a hole in the positions).

Parameters fall in two groups that cover every trainable tensor exactly once:

- shared (federated): encoder, projector, prompt customizer, diagnosis head, the generic
  contrastive head and the ``generic`` LoRA adapter;
- local (stay at the site): the ``specialized`` LoRA adapter and the client contrastive head.
"""

from __future__ import annotations

import hashlib
import logging
import os
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import torch
import torch.nn.functional as F
from peft import PeftModel
from safetensors.torch import load_file, save_file
from torch import nn
from torch.func import functional_call
from transformers import PreTrainedTokenizerBase

from fedmrg import __version__
from fedmrg.config import Config, config_to_dict, parse_config
from fedmrg.data.loaders import REHEARSED
from fedmrg.errors import ConfigError
from fedmrg.labels.observations import OBSERVATIONS
from fedmrg.model.adapters import (
    active_adapters,
    adapter_names,
    adapter_parameters,
    attach_adapters,
    load_adapter_weights,
    save_adapters,
    symmetric_kl,
)
from fedmrg.model.contrastive import ContrastiveHeads, info_nce, prototype_nce
from fedmrg.model.customizer import PromptCustomizer
from fedmrg.model.diagnosis import DiagnosisHead, prompt_text
from fedmrg.model.encoder import StudyEncoder, load_encoder_weights
from fedmrg.model.layout import (
    ADAPTERS_DIR,
    MODEL_FILE,
    MODULES_FILE,
    SHARED_SCOPE,
    adapter_dir,
    read_model_file,
    write_model_file,
)
from fedmrg.model.llm import LLMInfo, load_llm
from fedmrg.model.parameters import GENERIC, LOCAL_MODULES, SHARED_MODULES, SPECIALIZED
from fedmrg.model.projector import VisualProjector
from fedmrg.model.prototypes import PrototypeBank

log = logging.getLogger(__name__)

_POSITIVE_STATE = 1  # diagnosis class index of "positive" (see diagnosis.STATES)
_FINGERPRINT_BYTES = 1 << 20


class MRGModel(nn.Module):
    """Frozen LLM with adapters + learnable encoder, prompts, projector, diagnosis and contrastive heads."""

    def __init__(self, cfg: Config, llm, tokenizer: PreTrainedTokenizerBase, info: LLMInfo) -> None:
        super().__init__()
        self.cfg = cfg
        self.info = info
        self.tokenizer = tokenizer
        m = cfg.model
        self.llm: PeftModel = attach_adapters(llm, m)
        embed_dim = info.embed_dim
        self.encoder = StudyEncoder(m.encoder, cfg.data.image_size, cfg.data.max_views)
        if m.encoder.pretrained:
            load_encoder_weights(self.encoder, m.encoder.pretrained)
        # the spread of what the table gives (it may be quantized), over a sample of its rows
        init_std = float(self._embed(list(range(min(8192, self._embedding().num_embeddings)))).float().std())
        self.projector = VisualProjector(
            self.encoder.out_dim, embed_dim, self.encoder.grid, m.visual_tokens, init_std=init_std
        )
        self.customizer = PromptCustomizer(
            m.prompt_mode,
            m.num_prompts,
            m.num_books,
            self.encoder.out_dim,
            embed_dim,
            m.customizer_hidden,
            init_std=init_std,
        )
        self.diagnosis = DiagnosisHead(self.encoder.out_dim, m.diagnosis_loss) if m.diagnosis else None
        image_dim = self.encoder.out_dim if m.contrastive_features == "encoder" else embed_dim
        self.contrastive = ContrastiveHeads(image_dim, embed_dim, m.contrastive_dim) if m.contrastive else None
        observations = len(OBSERVATIONS)
        self.register_buffer(
            "prototypes", torch.zeros(observations, m.contrastive_dim, device=info.device), persistent=False
        )
        self.register_buffer(
            "prototype_available", torch.zeros(observations, dtype=torch.bool, device=info.device), persistent=False
        )
        self.prototype_collector: PrototypeBank | None = None
        self.predicted_prompt_prob = 0.0  # training only; the trainer ramps it to model.predicted_prompt_mix
        for name, module in self.named_children():  # the LLM is already in place (device_map)
            if name != "llm":
                module.to(info.device)
        self._instruction_ids = self._ids(m.instruction)
        self._llm_fingerprint = llm_fingerprint(info.path)

    # ----------------------------------------------------------------------------------- building
    @classmethod
    def build(cls, cfg: Config, base_llm: str | os.PathLike | None = None, device: str | None = None) -> MRGModel:
        """Load the frozen LLM named by ``base_llm`` (or ``cfg.model.base_llm``) and attach everything."""
        path = base_llm or cfg.model.base_llm
        if not path:
            raise ConfigError("model.base_llm: no base LLM given (a local checkpoint folder; `--base-llm DIR`)")
        cfg.model.base_llm = str(Path(path).resolve()) if Path(path).exists() else str(path)
        llm, tokenizer, info = load_llm(
            path,
            load_in_4bit=cfg.model.load_in_4bit,
            quantize_embeddings=cfg.model.quantize_embeddings,
            dtype=cfg.model.dtype,
            device=device or cfg.train.device,
        )
        return cls(cfg, llm, tokenizer, info)

    # ---------------------------------------------------------------------------------- parameters
    def shared_state_dict(self) -> dict[str, torch.Tensor]:
        """The federated parameters (detached copies on the CPU), by name."""
        return _detached(self._shared_parameters())

    def local_state_dict(self) -> dict[str, torch.Tensor]:
        """The parameters that never leave the site (detached copies on the CPU), by name."""
        return _detached(self._local_parameters())

    def load_shared_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        _load_exactly(self._shared_parameters(), state, "shared state")

    def load_local_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        _load_exactly(self._local_parameters(), state, "local state")

    def _shared_parameters(self) -> dict[str, nn.Parameter]:
        params = {k: p for k, p in self.named_parameters() if p.requires_grad and k.startswith(SHARED_MODULES)}
        params.update({f"llm.{k}": p for k, p in adapter_parameters(self.llm, GENERIC).items()})
        return params

    def _local_parameters(self) -> dict[str, nn.Parameter]:
        params = {k: p for k, p in self.named_parameters() if p.requires_grad and k.startswith(LOCAL_MODULES)}
        if SPECIALIZED in adapter_names(self.cfg.model):
            params.update({f"llm.{k}": p for k, p in adapter_parameters(self.llm, SPECIALIZED).items()})
        return params

    def set_prototypes(self, prototypes: torch.Tensor, available: torch.Tensor) -> None:
        """Per-observation prototypes of generic-head features (the server's, or a centralized run's own)."""
        if tuple(prototypes.shape) != tuple(self.prototypes.shape) or tuple(available.shape) != (len(OBSERVATIONS),):
            raise ValueError(
                f"prototypes must be {tuple(self.prototypes.shape)} with a [{len(OBSERVATIONS)}] mask, "
                f"got {tuple(prototypes.shape)} and {tuple(available.shape)}"
            )
        self.prototypes.copy_(F.normalize(prototypes.float(), dim=-1))
        self.prototype_available.copy_(available.bool())

    # ------------------------------------------------------------------------------------ forward
    def forward(self, batch: dict) -> dict[str, torch.Tensor]:
        """Every loss of one batch, and their weighted sum under ``"loss"``.

        ``batch`` is a :func:`~fedmrg.data.loaders.collate_with_targets` batch: ``image``,
        ``view_mask``, ``report`` (cleaned text) and ``states`` (``[B, 14]`` diagnosis classes).
        """
        m = self.cfg.model
        image, view_mask = self._to_device(batch["image"]), self._to_device(batch["view_mask"])
        truth = self._to_device(batch["states"])
        encoded = self.encoder(image, view_mask)
        losses: dict[str, torch.Tensor] = {}
        states = truth
        if self.diagnosis is not None:
            logits = self.diagnosis(encoded.pooled)
            losses["diagnosis"] = self.diagnosis.loss(logits, truth)
            states = self._training_prompt_states(truth, self.diagnosis.predict(logits))
        report_ids = self.report_ids(batch["report"])
        visual = self.projector(encoded.tokens, encoded.view_mask)
        embeds, mask, positions, labels = self._sequences(encoded, states, report_ids, visual)
        losses.update(self._language_losses(embeds, mask, positions, labels))
        if self.contrastive is not None:
            own = ~torch.as_tensor(batch.get(REHEARSED, [False] * len(report_ids)), dtype=torch.bool)
            image = encoded.pooled if m.contrastive_features == "encoder" else _masked_mean(*visual)
            losses.update(self._contrastive_losses(image, report_ids, truth, own))
        losses["loss"] = self.weighted_loss(losses)
        return losses

    def weighted_loss(self, losses: dict[str, torch.Tensor]) -> torch.Tensor:
        """The training objective over any subset of the loss terms, each at its configured weight."""
        mu, t = self.cfg.model.mutual_boosting, self.cfg.train
        weights = {
            "lm_generic": 1.0,
            "lm_dual": 1.0,
            "mutual_kl": mu,
            "diagnosis": t.diagnosis_weight,
            "contrastive_prototype": t.contrastive_weight,
            "contrastive_generic": t.contrastive_weight,
            "contrastive_client": t.contrastive_weight,
        }
        return sum(weights[name] * value for name, value in losses.items())

    def _training_prompt_states(self, truth: torch.Tensor, predicted: torch.Tensor) -> torch.Tensor:
        """Ground truth in training (PromptMRG), with a scheduled share of studies using predictions."""
        if not self.training:
            return predicted
        if self.predicted_prompt_prob <= 0:
            return truth
        use_predicted = torch.rand(truth.shape[0], device=truth.device) < self.predicted_prompt_prob
        return torch.where(use_predicted[:, None], predicted, truth)

    def _language_losses(self, embeds, mask, positions, labels) -> dict[str, torch.Tensor]:
        tail = int((labels != -100).sum(1).max()) + 1  # logits needed: the report positions and the one before
        targets = labels[:, -tail + 1 :]
        valid = targets != -100
        paths = {"lm_generic": (GENERIC,)}
        if SPECIALIZED in adapter_names(self.cfg.model):
            paths["lm_dual"] = (GENERIC, SPECIALIZED)
        logits, losses = {}, {}
        inputs = dict(inputs_embeds=embeds, attention_mask=mask, position_ids=positions, logits_to_keep=tail)
        for name, adapters in paths.items():
            with active_adapters(self.llm, adapters):
                if name == "lm_dual" and not self.cfg.model.generic_from_dual:
                    # the generic adapter's weights enter this path as constants: its loss trains the rest
                    fixed = {k: p.detach() for k, p in adapter_parameters(self.llm, GENERIC).items()}
                    out = functional_call(self.llm, fixed, args=(), kwargs=inputs, strict=False)
                else:
                    out = self.llm(**inputs)
            logits[name] = out.logits[:, :-1]
            losses[name] = F.cross_entropy(logits[name].flatten(0, 1).float(), targets.flatten(), ignore_index=-100)
        if "lm_dual" in logits and self.cfg.model.mutual_boosting > 0:
            losses["mutual_kl"] = symmetric_kl(logits["lm_generic"], logits["lm_dual"], valid)
        return losses

    def _contrastive_losses(self, image, report_ids, truth, own: torch.Tensor) -> dict[str, torch.Tensor]:
        """``image``: one feature per study (``model.contrastive_features``); ``own``: the batch's studies
        of the site's own (rehearsed public ones make no prototype)."""
        tau = self.cfg.model.temperature
        text = self._mean_text_embedding(report_ids)
        z = self.contrastive(image, text)
        positives = truth == _POSITIVE_STATE
        if self.training and self.prototype_collector is not None:
            own = own.to(positives.device)
            self.prototype_collector.add(z["generic_image"][own].detach().cpu(), positives[own].cpu())
        return {
            "contrastive_prototype": prototype_nce(
                z["generic_image"], positives, self.prototypes, self.prototype_available, tau
            ),
            "contrastive_generic": info_nce(z["generic_image"], z["generic_text"], tau),
            "contrastive_client": info_nce(z["client_image"], z["client_text"], tau),
        }

    def _mean_text_embedding(self, report_ids: list[list[int]]) -> torch.Tensor:
        """The report side of image-report InfoNCE: mean frozen input embedding of its tokens."""
        with torch.no_grad():
            rows = [self._embed(ids[:-1] or ids).float().mean(0) for ids in report_ids]  # drop eos unless alone
        return torch.stack(rows)

    # ---------------------------------------------------------------------------- sequence making
    def _sequences(self, encoded, states: torch.Tensor, report_ids: list[list[int]] | None, visual=None):
        """Left-padded input embeddings, attention mask, positions and labels (-100 outside the report).

        ``visual``: the projector's ``(tokens, mask)`` when the caller has them already."""
        batch = states.shape[0]
        prompts = self.customizer(encoded.pooled)
        visual, visual_mask = visual or self.projector(encoded.tokens, encoded.view_mask)
        head = self._embed(self._head_ids()).unsqueeze(0).expand(batch, -1, -1)
        fixed = torch.cat([head, prompts.to(head.dtype), visual.to(head.dtype)], dim=1)
        fixed_mask = torch.cat(
            [torch.ones(batch, head.shape[1] + prompts.shape[1], dtype=torch.bool, device=fixed.device), visual_mask],
            dim=1,
        )
        tails = [self._ids(self._diagnosis_text(states[i])) for i in range(batch)]
        reports = report_ids or [[] for _ in range(batch)]
        lengths = [len(a) + len(b) for a, b in zip(tails, reports)]
        total = fixed.shape[1] + max(lengths)
        embeds = fixed.new_zeros(batch, total, fixed.shape[-1])
        mask = torch.zeros(batch, total, dtype=torch.bool, device=fixed.device)
        labels = torch.full((batch, total), -100, dtype=torch.long, device=fixed.device)
        for i, (tail_ids, report) in enumerate(zip(tails, reports)):
            start = total - lengths[i] - fixed.shape[1]
            embeds[i, start : start + fixed.shape[1]] = fixed[i]
            mask[i, start : start + fixed.shape[1]] = fixed_mask[i]
            embeds[i, total - lengths[i] :] = self._embed(tail_ids + report)
            mask[i, total - lengths[i] :] = True
            if report:
                labels[i, total - len(report) :] = torch.tensor(report, device=fixed.device)
        positions = (mask.long().cumsum(-1) - 1).masked_fill(~mask, 0)
        return embeds, mask.long(), positions, labels

    def _head_ids(self) -> list[int]:
        bos = self.tokenizer.bos_token_id
        return ([bos] if bos is not None else []) + self._instruction_ids

    def _diagnosis_text(self, states_row: torch.Tensor) -> str:
        if self.diagnosis is None:
            return " report:"
        return prompt_text(states_row.tolist())

    def report_ids(self, texts: list[str]) -> list[list[int]]:
        """Target token ids of reports: truncated to ``model.max_report_tokens``, then eos."""
        limit, eos = self.cfg.model.max_report_tokens, self.tokenizer.eos_token_id
        return [self._ids(text)[:limit] + [eos] for text in texts]

    def _ids(self, text: str) -> list[int]:
        return self.tokenizer(text, add_special_tokens=False)["input_ids"]

    def _embed(self, ids: list[int]) -> torch.Tensor:
        table = self._embedding()
        return table(torch.tensor(ids, dtype=torch.long, device=table.weight.device))

    def _embedding(self) -> nn.Embedding:
        return self.llm.get_input_embeddings()

    def _to_device(self, tensor: torch.Tensor) -> torch.Tensor:
        return tensor.to(self.info.device, non_blocking=True)

    # --------------------------------------------------------------------------------- generation
    @contextmanager
    def _evaluating(self) -> Iterator[None]:
        """Eval mode (no dropout) and no gradients for the block; the previous mode is restored."""
        was_training = self.training
        self.eval()
        try:
            with torch.no_grad():
                yield
        finally:
            self.train(was_training)

    def predict_states(self, batch: dict) -> torch.Tensor | None:
        """Predicted diagnosis classes ``[B, 14]`` (None without a diagnosis head)."""
        if self.diagnosis is None:
            return None
        with self._evaluating():
            return self.diagnosis.predict(self.diagnosis_logits(batch)).cpu()

    def diagnosis_logits(self, batch: dict) -> torch.Tensor:
        """The diagnosis head's state logits ``[B, 14, 4]`` for a batch (in the current mode)."""
        encoded = self.encoder(self._to_device(batch["image"]), self._to_device(batch["view_mask"]))
        return self.diagnosis(encoded.pooled)

    def generate(
        self, batch: dict, adapters: str = "auto", states: torch.Tensor | None = None, **overrides
    ) -> list[str]:
        """Reports for a batch of studies (beam search; ``overrides`` replace ``cfg.generate`` fields).

        ``adapters``: "generic" (a site without its own adapter), "dual" (generic + specialized),
        or "auto" (dual when the model has a specialized adapter). ``states`` ([B, 14]) replaces the
        head's predicted findings in the diagnosis prompt: does the decoder write what it is told?
        """
        with self._evaluating():
            encoded = self.encoder(self._to_device(batch["image"]), self._to_device(batch["view_mask"]))
            if states is not None:
                states = self._to_device(states.long())
            elif self.diagnosis is not None:
                states = self.diagnosis.predict(self.diagnosis(encoded.pooled))
            else:
                states = torch.zeros(encoded.pooled.shape[0], len(OBSERVATIONS), dtype=torch.long)
            embeds, mask, positions, _ = self._sequences(encoded, states, None)
            with active_adapters(self.llm, self._generation_adapters(adapters)), warnings.catch_warnings():
                # the prompt holds no token ids, so the penalty covers the generated text only: as intended
                warnings.filterwarnings("ignore", message="Passing `repetition_penalty` with `inputs_embeds`")
                out = self.llm.generate(
                    inputs_embeds=embeds,
                    attention_mask=mask,
                    position_ids=positions,
                    **self._generation_kwargs(overrides),
                )
        return [text.strip() for text in self.tokenizer.batch_decode(out, skip_special_tokens=True)]

    def _generation_adapters(self, adapters: str) -> tuple[str, ...]:
        available = adapter_names(self.cfg.model)
        if adapters == "auto":
            return available
        if adapters == "generic":
            return (GENERIC,)
        if adapters == "dual":
            if SPECIALIZED not in available:
                raise ConfigError("adapters 'dual': this model has no specialized adapter (model.adapters: single)")
            return available
        raise ValueError(f"adapters must be auto, generic or dual, got {adapters!r}")

    def _generation_kwargs(self, overrides: dict) -> dict:
        g = {**config_to_dict(self.cfg)["generate"], **overrides}
        return dict(
            num_beams=g["num_beams"],
            max_new_tokens=g["max_new_tokens"],
            min_new_tokens=g["min_new_tokens"],
            repetition_penalty=g["repetition_penalty"],
            no_repeat_ngram_size=g["no_repeat_ngram_size"],
            length_penalty=g["length_penalty"],
            do_sample=False,
            eos_token_id=self.tokenizer.eos_token_id,
            pad_token_id=self.tokenizer.pad_token_id,
        )

    # ------------------------------------------------------------------------------- save / load
    def save(self, directory: str | os.PathLike) -> Path:
        """Write the run folder: config and base LLM reference, small modules, PEFT adapters."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        save_file(
            {k: v.detach().contiguous().cpu() for k, v in self._module_state().items()}, str(directory / MODULES_FILE)
        )
        save_adapters(self.llm, directory / ADAPTERS_DIR, adapter_names(self.cfg.model))
        write_model_file(directory, self.model_meta())
        return directory

    def model_meta(self) -> dict:
        """What ``fedmrg_model.json`` records: the package version, the config and the base LLM."""
        return {
            "fedmrg_version": __version__,
            "config": config_to_dict(self.cfg),
            "llm": {
                "path": self.info.path,
                "family": self.info.family,
                "embed_dim": self.info.embed_dim,
                "fingerprint": self._llm_fingerprint,
            },
        }

    @classmethod
    def load(
        cls,
        directory: str | os.PathLike,
        *,
        base_llm: str | os.PathLike | None = None,
        base_encoder: str | os.PathLike | None = None,
        device: str | None = None,
        site_adapter: str | os.PathLike | None = None,
    ) -> MRGModel:
        """Rebuild a saved model (``base_llm`` overrides the recorded LLM path, e.g. on another host, and
        ``base_encoder`` the recorded weights of a frozen or ``hf`` encoder, which are not in the folder).

        ``site_adapter``: a folder holding a specialized adapter (PEFT format) to use instead of the
        saved one, e.g. a hospital's own adapter on top of a federated global model.
        """
        directory = Path(directory)
        meta = read_model_file(directory)
        cfg = parse_config(meta["config"], f"{directory / MODEL_FILE}: config")
        encoder = cfg.model.encoder
        backbone_outside = encoder.freeze or encoder.backbone == "hf"  # not in the folder: read from `pretrained`
        if base_encoder is not None and not backbone_outside:
            raise ConfigError(
                f"{directory}: its encoder was trained and is saved in the folder; a base encoder applies "
                "to a frozen or hf encoder only"
            )
        if base_encoder is not None:
            encoder.pretrained = str(base_encoder)
        elif not backbone_outside:
            encoder.pretrained = None  # the trained encoder is in modules.safetensors
        if site_adapter is not None:
            cfg.model.adapters = "dual"
        llm_path = base_llm or meta["llm"]["path"]
        recorded = meta["llm"].get("fingerprint")
        if recorded and Path(llm_path).is_dir() and llm_fingerprint(llm_path) != recorded:
            raise ConfigError(
                f"{llm_path}: not the base LLM this model was trained on (its files differ from "
                f"{meta['llm']['path']} at training time); pass that checkpoint with --base-llm"
            )
        shared_only = meta.get("scope") == SHARED_SCOPE
        if shared_only and site_adapter is None:
            cfg.model.adapters = "single"  # a site without its own adapter generates with the generic one
        model = cls.build(cfg, base_llm=llm_path, device=device)
        model._load_modules(directory / MODULES_FILE, shared_only)
        for name in adapter_names(cfg.model):
            folder = (
                Path(site_adapter)
                if (name == SPECIALIZED and site_adapter)
                else adapter_dir(directory / ADAPTERS_DIR, name)
            )
            load_adapter_weights(model.llm, folder, name)
        return model

    def _module_state(self) -> dict[str, torch.Tensor]:
        """Everything but the LLM: the learnable modules with their buffers, and the prototypes."""
        state = {
            f"{name}.{key}": value
            for name, module in self.named_children()
            if name != "llm"
            for key, value in module.state_dict().items()
        }
        state["prototypes"], state["prototype_available"] = self.prototypes, self.prototype_available
        return state

    def _load_modules(self, path: Path, shared_only: bool = False) -> None:
        """Load the non-LLM modules; a shared-only (federated global) model lacks the site's own
        parameters and the training-time buffers, which keep their fresh values."""
        if not path.is_file():
            raise ConfigError(f"{path}: not found (a model folder written by `fedmrg train`)")
        state = load_file(str(path))
        prototypes, available = state.pop("prototypes", None), state.pop("prototype_available", None)
        missing, unexpected = self.load_state_dict(state, strict=False)
        missing = [k for k in missing if not k.startswith("llm.")]
        if shared_only:
            shared = self._shared_parameters()
            missing = [k for k in missing if k in shared]
        if UNCALIBRATED in missing:  # saved before the thresholds existed: they stay at their default
            log.warning("%s: no diagnosis thresholds (an older model); the uncalibrated default applies", path)
            missing.remove(UNCALIBRATED)
        if missing or unexpected:
            raise ConfigError(
                f"{path}: does not match the model config (missing {missing[:3]}, unexpected {unexpected[:3]})"
            )
        if prototypes is not None and available is not None:
            self.set_prototypes(prototypes, available)


UNCALIBRATED = "diagnosis.thresholds"


def llm_fingerprint(path: str | os.PathLike) -> str:
    """A cheap identity of a checkpoint folder: its config and tokenizer files, and for each weight
    file its size and first and last MiB (a retrained model differs there; hashing GBs would not pay)."""
    digest = hashlib.sha256()
    for file in sorted(Path(path).iterdir()):
        if not file.is_file():
            continue
        if file.suffix in (".safetensors", ".bin"):
            size = file.stat().st_size
            with file.open("rb") as handle:
                head = handle.read(_FINGERPRINT_BYTES)
                handle.seek(max(0, size - _FINGERPRINT_BYTES))
                tail = handle.read(_FINGERPRINT_BYTES)
            digest.update(f"{file.name}:{size}".encode() + head + tail)
        elif file.name == "config.json" or file.name.startswith("tokenizer"):
            digest.update(file.name.encode() + file.read_bytes())
    return digest.hexdigest()


def _masked_mean(tokens: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """``tokens`` [B, T, D] averaged over the positions where ``mask`` [B, T] is True."""
    weights = mask.to(tokens.dtype)[..., None]
    return (tokens * weights).sum(1) / weights.sum(1).clamp(min=1.0)


def _detached(params: dict[str, nn.Parameter]) -> dict[str, torch.Tensor]:
    return {name: p.detach().cpu().clone() for name, p in params.items()}


def _load_exactly(params: dict[str, nn.Parameter], state: dict[str, torch.Tensor], what: str) -> None:
    """Copy ``state`` into ``params``; the keys and shapes must match exactly."""
    missing, unexpected = sorted(params.keys() - state.keys()), sorted(state.keys() - params.keys())
    if missing or unexpected:
        raise ValueError(f"{what}: keys do not match the model (missing {missing[:3]}, unexpected {unexpected[:3]})")
    for name, value in state.items():
        if tuple(value.shape) != tuple(params[name].shape):
            raise ValueError(
                f"{what}: {name} has shape {tuple(value.shape)}, the model has {tuple(params[name].shape)}"
            )
    with torch.no_grad():
        for name, value in state.items():
            params[name].copy_(value.to(params[name].device, params[name].dtype))
