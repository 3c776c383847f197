"""One YAML schema for the CLI, the jobs and the tests, validated into dataclasses.

A config is a YAML mapping whose sections match the dataclasses below. Validation is strict: an
unknown key, a value of the wrong type or out of range is a :class:`~fedmrg.errors.ConfigError`
whose message names the file and the dotted key (and suggests the closest known key for typos).

Named configs ship inside the package (``fedmrg/configs/<name>.yaml``); ``load_config`` accepts a
name or a path.
"""

from __future__ import annotations

import dataclasses
import difflib
import re
import types
import typing
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, Literal, Union

import yaml

from fedmrg.errors import ConfigError

PartitionKind = Literal["style", "label", "iid"]
SourceKind = Literal["iu-xray", "synthetic"]
ReportDataset = Literal["iu_xray", "mimic_cxr"]


@dataclass
class DataConfig:
    """How studies are read and turned into tensors."""

    dataset: ReportDataset = "iu_xray"  # which R2Gen cleaning rules apply to report text
    include_impression: bool = False  # target text = FINDINGS (R2Gen) or FINDINGS + IMPRESSION
    image_size: int = 224  # S in the [V, 1, S, S] study tensor
    max_views: int = 2  # frontal + lateral; extra views are dropped
    augment: bool = True  # train-time augmentation (small affine, contrast, noise)

    def check(self, where: str) -> None:
        _require(self.image_size >= 16, where, "image_size", "must be at least 16")
        _require(self.max_views >= 1, where, "max_views", "must be at least 1")


@dataclass
class BenchmarkConfig:
    """What ``fedmrg prepare-data`` builds (every field has a CLI flag of the same name)."""

    source: SourceKind = "iu-xray"
    reports: str | None = None  # path or URL of NLMCXR_reports.tgz; None = offline default
    studies: int | None = None  # None = every usable study of the source
    sites: int = 3
    partition: PartitionKind = "style"
    image_size: int = 256  # rendered resolution before each site's acquisition profile
    seed: int = 0
    dirichlet_alpha: float = 0.5  # label skew for partition=label (smaller = more skewed)
    test_global_fraction: float = 0.1  # held out from every site
    public_fraction: float = 0.15  # no site's: the demo tokenizer, base LLM and base encoder learn from them
    public_renders: int = 0  # renders of each public report (other patients and hospitals) for the base encoder
    splits: list[float] = field(default_factory=lambda: [0.7, 0.1, 0.2])  # train/val/test per site
    workers: int = 0  # rendering processes; 0 = one per CPU core

    def check(self, where: str) -> None:
        _require(self.sites >= 1, where, "sites", "must be at least 1")
        _require(self.studies is None or self.studies >= 1, where, "studies", "must be at least 1")
        _require(32 <= self.image_size <= 2048, where, "image_size", "must be in [32, 2048]")
        _require(self.dirichlet_alpha > 0, where, "dirichlet_alpha", "must be > 0")
        for key in ("test_global_fraction", "public_fraction"):
            _require(0 <= getattr(self, key) < 0.5, where, key, "must be in [0, 0.5)")
        _require(
            len(self.splits) == 3 and all(s >= 0 for s in self.splits) and abs(sum(self.splits) - 1) < 1e-6,
            where,
            "splits",
            "must be three non-negative fractions (train, val, test) that sum to 1",
        )
        _require(self.workers >= 0, where, "workers", "must be >= 0")
        _require(0 <= self.public_renders <= 50, where, "public_renders", "must be in [0, 50]")
        _require(0 <= self.seed < 2**32, where, "seed", "must be in [0, 2**32)")
        _require(self.test_global_fraction > 0, where, "test_global_fraction", "must be > 0 (the held-out test set)")


PromptMode = Literal["none", "prompt", "promptbook"]
DiagnosisLoss = Literal["ce", "balanced", "logit_adjusted"]
AdapterMode = Literal["single", "dual"]
ContrastiveFeatures = Literal["encoder", "projector"]  # what the contrastive heads read of an image
DType = Literal["auto", "float32", "bfloat16", "float16"]
EmbeddingQuant = Literal["nf4", "int8", "none"]  # the frozen input embedding of a 4-bit LLM


BackboneKind = Literal["vit", "cnn", "hf"]


BASE_ENCODER_WEIGHTS = "model.safetensors"  # the weights in a `fedmrg make-base-encoder` folder


def encoder_weights(path: str) -> str:
    """The weights a ``--base-encoder`` names: the weights in a base-encoder folder, else the path itself
    (a state-dict file, or a Hugging Face model folder, which holds a config.json)."""
    folder = Path(path)
    if folder.is_dir() and not (folder / "config.json").is_file():
        weights = folder / BASE_ENCODER_WEIGHTS
        if not weights.is_file():
            raise ConfigError(f"--base-encoder {path}: no {BASE_ENCODER_WEIGHTS} in the folder")
        return str(weights)
    return path


@dataclass
class EncoderConfig:
    """The learnable image encoder applied to every view of a study.

    ``backbone`` picks it: ``vit`` a MONAI ViT trained from scratch or from a state-dict file,
    ``cnn`` a MONAI DenseNet (a CNN a hospital may already have trained on its own X-rays), ``hf``
    a Hugging Face vision model from a local folder (ViT, Swin, DINOv2 such as RAD-DINO, SigLIP
    or CLIP vision tower).
    """

    backbone: BackboneKind = "vit"
    # vit only (ignored by cnn and hf, whose sizes come from their own fields or folder):
    patch_size: int = 16
    hidden_size: int = 256
    mlp_dim: int = 512
    layers: int = 4
    heads: int = 4
    # cnn only: the DenseNet's size (the defaults are DenseNet-121's)
    init_features: int = 64
    growth_rate: int = 32
    block_config: list[int] = field(default_factory=lambda: [6, 12, 24, 16])  # dense layers per block
    dropout: float = 0.0  # vit and cnn; ignored by hf (the folder's config sets its dropout)
    # vit, cnn: optional local state-dict file (.safetensors, .pt, .pth) of the backbone or encoder.
    # hf: required local folder written by `save_pretrained` (config.json + weights). Never a hub id.
    pretrained: str | None = None
    # Keep the pretrained backbone fixed (a foundation model used as is): not trained, not sent; like
    # the base LLM, every site and every saved model takes it from `pretrained`. The view embedding
    # and everything after the backbone still learn.
    freeze: bool = False

    def check_frozen_weights(self) -> None:
        """A frozen backbone must come from somewhere: a random one would stay random. (Not in
        :meth:`check`: a config may leave the weights to the job, which names them later.)"""
        if self.freeze and not self.pretrained:
            raise ConfigError(
                "model.encoder.freeze: needs pretrained weights (model.encoder.pretrained, a job's --base-encoder, "
                "or a site's base_encoder setting)"
            )

    def check(self, where: str) -> None:
        if self.backbone == "vit":
            for key in ("patch_size", "hidden_size", "mlp_dim", "layers", "heads"):
                _require(getattr(self, key) >= 1, where, key, "must be at least 1")
            _require(self.hidden_size % self.heads == 0, where, "hidden_size", "must be divisible by heads")
        if self.backbone == "cnn":
            for key in ("init_features", "growth_rate"):
                _require(getattr(self, key) >= 1, where, key, "must be at least 1")
            _require(
                len(self.block_config) >= 1 and all(n >= 1 for n in self.block_config),
                where,
                "block_config",
                "must list at least one dense block, each of at least 1 layer",
            )
        if self.backbone == "hf":
            _require(
                bool(self.pretrained),
                where,
                "pretrained",
                "backbone 'hf' needs a local Hugging Face model folder (config.json + weights)",
            )
        _require(0 <= self.dropout < 1, where, "dropout", "must be in [0, 1)")


@dataclass
class ModelConfig:
    """The report generator: frozen LLM + encoder, prompts, projector, diagnosis head, adapters."""

    base_llm: str | None = None  # local Hugging Face checkpoint directory (`--base-llm` overrides)
    load_in_4bit: bool = True  # NF4 with double quantization (bitsandbytes); false = plain weights in `dtype`
    dtype: DType = "auto"  # compute / unquantized weight dtype; auto = bfloat16 on CUDA, float32 on CPU
    # with load_in_4bit, the frozen input embedding in nf4 or int8 (rows dequantized per lookup) or none
    # (kept in `dtype`, as QLoRA does); the output head and a head tied to the embedding always stay in `dtype`
    quantize_embeddings: EmbeddingQuant = "nf4"
    encoder: EncoderConfig = field(default_factory=EncoderConfig)
    visual_tokens: int = 16  # LLM tokens per view after pooling the patch grid (a square); 0 = every patch
    prompt_mode: PromptMode = "promptbook"  # MRG-LLM instance-specific prompts
    num_prompts: int = 8  # n prompt tokens
    num_books: int = 4  # K prompt sets (promptbook mode)
    customizer_hidden: int = 128  # width of the MLP that maps image features to affine parameters
    diagnosis: bool = True  # FedMRG's diagnosis head + diagnosis-driven prompt
    diagnosis_loss: DiagnosisLoss = "logit_adjusted"
    predicted_prompt_mix: float = 0.0  # share of training prompts built from predictions by the end (linear ramp)
    contrastive: bool = True  # FedMRG's client-aware contrastive learning
    # the image side of the contrastive losses: the encoder's pooled feature (they train the encoder) or the
    # mean of the projector's visual tokens (they train what the LLM reads: the choice for a frozen encoder)
    contrastive_features: ContrastiveFeatures = "encoder"
    contrastive_dim: int = 128
    temperature: float = 0.07
    adapters: AdapterMode = "dual"  # FedMRG's dual adapters: generic (shared) + specialized (stays at the site)
    lora_rank: int = 8
    lora_alpha: int = 16
    lora_dropout: float = 0.05
    target_modules: list[str] | None = None  # None = PEFT's default for the model family
    mutual_boosting: float = 0.5  # mu, weight of the symmetric KL between the two paths; 0 = off
    # the dual path's report loss trains the generic adapter too; false: the generic adapter learns from its
    # own path and the KL only, so the federated adapter is not fitted as one half of a pair
    generic_from_dual: bool = True
    instruction: str = "Write the findings section of the chest X-ray report."
    max_report_tokens: int = 128  # target reports are truncated to this many tokens in training

    def check(self, where: str) -> None:
        _require(self.visual_tokens >= 0, where, "visual_tokens", "must be >= 0")
        _require(
            self.visual_tokens == 0 or round(self.visual_tokens**0.5) ** 2 == self.visual_tokens,
            where,
            "visual_tokens",
            "must be a square number (a g x g grid per view) or 0",
        )
        for key in (
            "num_prompts",
            "num_books",
            "customizer_hidden",
            "contrastive_dim",
            "lora_rank",
            "lora_alpha",
            "max_report_tokens",
        ):
            _require(getattr(self, key) >= 1, where, key, "must be at least 1")
        _require(0 <= self.predicted_prompt_mix <= 1, where, "predicted_prompt_mix", "must be in [0, 1]")
        _require(self.temperature > 0, where, "temperature", "must be > 0")
        _require(0 <= self.lora_dropout < 1, where, "lora_dropout", "must be in [0, 1)")
        _require(self.mutual_boosting >= 0, where, "mutual_boosting", "must be >= 0")
        _require(
            self.target_modules is None or len(self.target_modules) > 0,
            where,
            "target_modules",
            "must name at least one module, or be null for the family default",
        )


@dataclass
class TrainConfig:
    """Optimisation, shared by centralized training and each site's local rounds."""

    epochs: int = 10
    max_steps: int | None = None  # optimizer steps; stops early when reached
    batch_size: int = 8
    grad_accum: int = 1
    lr: float = 3e-4
    weight_decay: float = 0.01
    warmup_ratio: float = 0.05  # share of the steps with a linear warm-up, then cosine decay to 0
    grad_clip: float = 1.0  # max gradient norm; 0 = no clipping
    diagnosis_weight: float = 1.0
    contrastive_weight: float = 0.1
    seed: int = 0
    # Rehearsal of public studies (a folder in the benchmark layout, such as a benchmark's public/):
    # each epoch adds a fresh draw of them, public_share times the own training studies in number.
    public_data: str | None = None
    public_share: float = 0.5
    num_workers: int = 0  # data loader processes
    device: str = "auto"  # auto = cuda if available, else cpu
    bf16: bool = True  # bf16 autocast on CUDA (ignored on CPU)
    log_every: int = 10  # optimizer steps between TensorBoard points

    def check(self, where: str) -> None:
        for key in ("epochs", "batch_size", "grad_accum", "log_every"):
            _require(getattr(self, key) >= 1, where, key, "must be at least 1")
        _require(self.max_steps is None or self.max_steps >= 1, where, "max_steps", "must be at least 1")
        _require(self.lr > 0, where, "lr", "must be > 0")
        _require(self.weight_decay >= 0, where, "weight_decay", "must be >= 0")
        _require(0 <= self.warmup_ratio < 1, where, "warmup_ratio", "must be in [0, 1)")
        for key in ("grad_clip", "diagnosis_weight", "contrastive_weight"):
            _require(getattr(self, key) >= 0, where, key, "must be >= 0")
        _require(self.num_workers >= 0, where, "num_workers", "must be >= 0")
        _require(self.public_share > 0, where, "public_share", "must be > 0")
        _require(
            self.device == "auto" or self.device.split(":")[0] in ("cpu", "cuda", "mps"),
            where,
            "device",
            "must be auto, cpu, cuda, cuda:N or mps",
        )


@dataclass
class GenerateConfig:
    """Decoding of reports (beam search)."""

    num_beams: int = 3
    max_new_tokens: int = 100
    min_new_tokens: int = 5
    # Chosen by measurement (bench/decoding.py on the demo's test-global): no 3-gram twice stops the
    # repeated sentences (7.5% of reports with neither, 5.0% with a 1.2 repetition penalty) and scored
    # best on BLEU-4 and CE; the penalty then only cost CE.
    repetition_penalty: float = 1.0
    no_repeat_ngram_size: int = 3  # 0 = off
    length_penalty: float = 1.0
    batch_size: int = 8

    def check(self, where: str) -> None:
        for key in ("num_beams", "max_new_tokens", "batch_size"):
            _require(getattr(self, key) >= 1, where, key, "must be at least 1")
        _require(
            0 <= self.min_new_tokens <= self.max_new_tokens, where, "min_new_tokens", "must be in [0, max_new_tokens]"
        )
        _require(self.repetition_penalty >= 1, where, "repetition_penalty", "must be >= 1")
        _require(self.no_repeat_ngram_size >= 0, where, "no_repeat_ngram_size", "must be >= 0")


UpdateKind = Literal["lowrank", "dense"]
DownloadKind = Literal["change", "state"]
Precision = Literal["fp16", "bf16", "int8"]
AggregationRule = Literal["mean", "median", "trimmed_mean"]
Quantization = Literal["float16", "blockwise8", "float4", "normfloat4"]


@dataclass
class FLConfig:
    """Federated rounds: FedMRG's low-rank update codec, aggregation, privacy, and when a round ends."""

    rounds: int = 5
    local_epochs: int = 1  # passes over the site's training studies per round
    local_steps: int | None = None  # optimizer steps per round instead of whole epochs
    update: UpdateKind = "lowrank"  # lowrank: SVD factors + error feedback; dense: fp32 FedAvg (FedIT)
    rank: int = 4  # singular values kept per matrix of a round's delta
    energy: float | None = None  # or fewer: the smallest rank keeping this share of the energy
    precision: Precision = "fp16"  # of the sent factors (int8: one scale per row)
    dense_below: int = 4096  # 2-D tensors with fewer values are sent dense (fp16)
    error_feedback: bool = True  # sites keep what truncation dropped and add it to the next delta
    # What the server sends after a merge: change = the round's change of the global model, compressed
    # like the upload, with error feedback at the server (fedmrg.fl.downlink); state = the whole fp32
    # global model, as FedAvg does. null: change for lowrank updates, state for the dense baseline.
    download: DownloadKind | None = None
    server_residual: bool = True  # the server keeps what LoRA re-factorization dropped
    max_update_norm: float = 1000.0  # updates with a larger Frobenius norm per entry are refused
    # Robust aggregation against a hostile or broken site: each accepted update scaled down to a whole
    # L2 norm of at most clip_norm, then combined by the weighted mean (exact, low-rank), or by the
    # coordinate-wise median / trimmed mean (trim sites cut at each end) of the reconstructed dense
    # updates, sites counting equally.
    aggregation: AggregationRule = "mean"
    clip_norm: float | None = None
    trim: int = 1
    # The weighted mean's weights: each site's training studies (or equal weights). What a site
    # reports is not checked, so no site gets a share above max_weight_share (raised to 1/n with n
    # accepted sites: with two sites, equal weights); the rest goes to the others in proportion.
    equal_weights: bool = False
    max_weight_share: float | None = 0.5
    # Differential privacy of each site's shared update (fedmrg.fl.dp): clipped to dp_clip, Gaussian
    # noise of dp_noise_multiplier * dp_clip per coordinate; None = off. Epsilon at dp_delta per round.
    dp_noise_multiplier: float | None = None
    dp_clip: float = 1.0
    dp_delta: float = 1e-5
    # A round ends when every site has answered; with min_sites, once that many have answered it waits
    # wait_after_min_sites seconds more for the others, then goes on without them (a site that failed
    # or disconnected does not stop the job while min_sites remain). With fewer than min_sites accepted
    # updates the global model stays as it was that round. None = every site of the job, every round.
    min_sites: int | None = None
    wait_after_min_sites: int = 600
    # A site sends the prototype sums of a finding only when at least this many of the round's
    # studies have it (a sum over one study is that study's feature); rarer findings stay at the site.
    prototype_min_studies: int = 5
    key_metric: str = "val_loss"  # the best global model is the one with the lowest mean of this
    # FLARE's quantization filters (ModelQuantizer / ModelDequantizer) on both directions of the
    # dense baseline (update: dense), as NVFlare's LLM examples use them; null = none.
    quantization: Quantization | None = None

    @property
    def sends_changes(self) -> bool:
        """Whether the server sends each round's compressed change instead of the global state."""
        return (self.download or ("change" if self.update == "lowrank" else "state")) == "change"

    def check(self, where: str) -> None:
        for key in ("rounds", "local_epochs", "rank", "dense_below"):
            _require(getattr(self, key) >= 1, where, key, "must be at least 1")
        _require(self.local_steps is None or self.local_steps >= 1, where, "local_steps", "must be at least 1")
        _require(self.energy is None or 0 < self.energy <= 1, where, "energy", "must be in (0, 1]")
        _require(self.max_update_norm > 0, where, "max_update_norm", "must be > 0")
        _require(self.clip_norm is None or self.clip_norm > 0, where, "clip_norm", "must be > 0")
        _require(self.trim >= 1, where, "trim", "must be at least 1")
        _require(
            self.max_weight_share is None or 0 < self.max_weight_share <= 1,
            where,
            "max_weight_share",
            "must be in (0, 1] (or null: no cap)",
        )
        _require(
            self.dp_noise_multiplier is None or self.dp_noise_multiplier > 0,
            where,
            "dp_noise_multiplier",
            "must be > 0 (or null: no differential privacy)",
        )
        _require(self.dp_clip > 0, where, "dp_clip", "must be > 0")
        _require(0 < self.dp_delta < 1, where, "dp_delta", "must be in (0, 1)")
        _require(self.min_sites is None or self.min_sites >= 1, where, "min_sites", "must be at least 1")
        _require(self.wait_after_min_sites >= 0, where, "wait_after_min_sites", "must be >= 0 (seconds)")
        _require(self.prototype_min_studies >= 1, where, "prototype_min_studies", "must be at least 1")
        _require(
            self.download != "change" or self.update == "lowrank",
            where,
            "download",
            "change needs update: lowrank (the dense baseline sends the state, as FedAvg does)",
        )
        _require(
            self.quantization is None or self.update == "dense",
            where,
            "quantization",
            "applies to update: dense (a low-rank update sets its own precision: fl.precision)",
        )


@dataclass
class Config:
    """The whole configuration."""

    name: str = "custom"
    data: DataConfig = field(default_factory=DataConfig)
    benchmark: BenchmarkConfig = field(default_factory=BenchmarkConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    generate: GenerateConfig = field(default_factory=GenerateConfig)
    fl: FLConfig = field(default_factory=FLConfig)


def _require(ok: bool, where: str, key: str, reason: str) -> None:
    """``where`` is "file: section", so the message names the dotted key: "file: section.key: reason"."""
    if not ok:
        raise ConfigError(f"{where}.{key}: {reason}" if ": " in where else f"{where}: {key}: {reason}")


def named_configs() -> list[str]:
    """Names of the configs shipped in the package."""
    folder = resources.files("fedmrg") / "configs"
    return sorted(p.name[: -len(".yaml")] for p in folder.iterdir() if p.name.endswith(".yaml"))


def load_config(name_or_path: str | Path, overrides: dict[str, Any] | None = None) -> Config:
    """Load a named config (``tiny``, ``demo``) or a YAML file, apply dotted-key overrides, validate.

    ``overrides`` maps dotted keys to values (``{"benchmark.sites": 4}``); ``None`` values are
    ignored so that unset CLI flags keep the config's value.
    """
    text, where = _read_config_text(name_or_path)
    try:
        raw = yaml.load(text, Loader=_StrictLoader) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"{where}: not valid YAML ({exc.__class__.__name__}: {exc})") from None
    except ConfigError as exc:
        raise ConfigError(f"{where}: {exc}") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{where}: the top level must be a mapping of sections")
    raw.setdefault("name", Path(str(name_or_path)).stem)
    for dotted, value in (overrides or {}).items():
        if value is not None:
            _set_dotted(raw, dotted, value)
    return parse_config(raw, where)


class _StrictLoader(yaml.SafeLoader):
    """YAML as users write configs: ``1e-4`` is a number (YAML 1.1 wants ``1.0e-4``), and a key
    given twice is an error instead of the last one silently winning."""

    def construct_mapping(self, node, deep=False):
        keys = [self.construct_object(key, deep=deep) for key, _ in node.value]
        twice = sorted({str(key) for key in keys if keys.count(key) > 1})
        if twice:
            raise ConfigError(f"key given twice: {', '.join(twice)} (line {node.start_mark.line + 1})")
        return super().construct_mapping(node, deep=deep)


_StrictLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float", re.compile(r"^[-+]?[0-9][0-9_]*(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"), list("-+0123456789")
)


def parse_config(raw: dict[str, Any], where: str = "config") -> Config:
    """Validate a mapping into a :class:`Config` (strict: unknown keys are errors)."""
    return _build(Config, raw, where, prefix="")


def config_to_dict(config: Config) -> dict[str, Any]:
    """The plain mapping that ``parse_config`` turns back into the same config."""
    return dataclasses.asdict(config)


def _read_config_text(name_or_path: str | Path) -> tuple[str, str]:
    path = Path(name_or_path)
    if path.suffix in (".yaml", ".yml") or "/" in str(name_or_path) or path.is_file():
        if not path.is_file():
            raise ConfigError(f"{path}: config file not found")
        try:
            return path.read_text(encoding="utf-8"), str(path)
        except UnicodeDecodeError as exc:
            raise ConfigError(f"{path}: not UTF-8 text (byte {exc.start})") from None
    names = named_configs()
    if str(name_or_path) not in names:
        raise ConfigError(
            f"{name_or_path}: neither a config file nor a named config (named configs: {', '.join(names)})"
        )
    resource = resources.files("fedmrg") / "configs" / f"{name_or_path}.yaml"
    return resource.read_text(encoding="utf-8"), f"config '{name_or_path}'"


def _set_dotted(raw: dict[str, Any], dotted: str, value: Any) -> None:
    node = raw
    *parents, leaf = dotted.split(".")
    for part in parents:
        if node.get(part) is None:  # an empty section in YAML reads as null
            node[part] = {}
        if not isinstance(node[part], dict):
            raise ConfigError(f"{part}: must be a mapping of settings, got {node[part]!r}")
        node = node[part]
    node[leaf] = value


def _build(cls: type, raw: Any, where: str, prefix: str) -> Any:
    if not isinstance(raw, dict):
        raise ConfigError(f"{where}: {prefix.rstrip('.') or 'config'}: must be a mapping, got {type(raw).__name__}")
    hints = typing.get_type_hints(cls)
    known = {f.name for f in dataclasses.fields(cls)}
    for key in raw:
        if key not in known:
            close = difflib.get_close_matches(str(key), sorted(known), n=1)
            hint = f"; did you mean '{prefix}{close[0]}'?" if close else f"; known keys: {', '.join(sorted(known))}"
            raise ConfigError(f"{where}: {prefix}{key}: unknown key{hint}")
    values = {}
    for key, value in raw.items():
        hint = hints[key]
        if dataclasses.is_dataclass(hint) and value is None:
            continue  # an empty section keeps its defaults
        if dataclasses.is_dataclass(hint):
            values[key] = _build(hint, value, where, prefix=f"{prefix}{key}.")
        else:
            values[key] = _coerce(value, hint, where, f"{prefix}{key}")
    obj = cls(**values)
    if hasattr(obj, "check"):
        obj.check(where if not prefix else f"{where}: {prefix.rstrip('.')}")
    return obj


def _coerce(value: Any, hint: Any, where: str, key: str) -> Any:
    """Check ``value`` against a type hint (int, float, bool, str, Optional, Literal, list[...])."""
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if origin in (Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        return _coerce(value, inner[0], where, key)
    if origin is Literal:
        if value not in args:
            raise ConfigError(f"{where}: {key}: {value!r} is not one of {', '.join(map(repr, args))}")
        return value
    if origin is list:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where}: {key}: must be a list, got {type(value).__name__}")
        return [_coerce(v, args[0], where, f"{key}[{i}]") for i, v in enumerate(value)]
    if hint is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{where}: {key}: must be true or false, got {value!r}")
        return value
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{where}: {key}: must be an integer, got {value!r}")
        return value
    if hint is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{where}: {key}: must be a number, got {value!r}")
        return float(value)
    if hint is str:
        if not isinstance(value, str):
            raise ConfigError(f"{where}: {key}: must be a string, got {value!r}")
        return value
    raise TypeError(f"unsupported config type {hint!r} for {key}")  # a schema bug, not user input
