"""The demo base LLM (``fedmrg make-base-llm``): a small LLaMA trained on a benchmark's public reports.

Real deployments use a real pretrained LLM (a local copy of e.g. LLaMA or Qwen2). For the demo and
the tests, which must run offline on a CPU, this module builds a stand-in from the benchmark's
``public/reports.jsonl`` (reports that belong to no site):

- a byte-level BPE tokenizer trained on the cleaned reports (any text can be encoded, so the
  instruction and the diagnosis prompt need no special vocabulary); ``tokenizer(text)`` prepends
  ``<s>`` (bos) and never appends ``</s>`` (eos), as LLaMA's tokenizer does; decoding round-trips;
- a ``LlamaForCausalLM`` trained as a causal LM on ``<s> diagnosis: ... . report: report </s>``, one
  report per row, the prompt stating the findings the labeler reads in the report in the words of
  the report generator's diagnosis prompt (the loss covers the report only): the LLM learns to
  write the findings it is told, which the generator's decoder then builds on.

Reports are cleaned with the R2Gen rules (:func:`fedmrg.data.cleaning.clean_report`), as the
report generator's targets are. The build is deterministic for a seed on a given device. The
output is a Hugging Face checkpoint (safetensors) plus ``base_llm.json``, the build summary, which
also marks the folder as a base LLM build that a later build may replace.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from tqdm import tqdm
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast, get_cosine_schedule_with_warmup

from fedmrg import __version__
from fedmrg.data.cleaning import CLEANERS, clean_report
from fedmrg.errors import ConfigError, DataError
from fedmrg.io import read_utf8, replacing_directory, write_json
from fedmrg.labels.labeler import label_matrix
from fedmrg.labels.observations import ABNORMAL_COLUMNS, OBSERVATIONS, POSITIVE
from fedmrg.labels.states import BLANK, STATE_NEGATIVE, STATE_POSITIVE, states_from_labels
from fedmrg.model.diagnosis import prompt_text
from fedmrg.model.llm import resolve_device  # first: it quiets a bitsandbytes notice that importing transformers logs

log = logging.getLogger(__name__)

SUMMARY = "base_llm.json"
KIND = "fedmrg-base-llm"
FORMAT_VERSION = 1
BOS, EOS, PAD, UNK = "<s>", "</s>", "<pad>", "<unk>"
MAX_POSITIONS = 1024  # room for instruction + prompts + visual tokens + report in the generator
# A training row's positions start anywhere from 0 to this: in the report generator, the instruction,
# the instance prompts and the visual tokens (about 50 positions in the demo) come first.
PROMPT_SHIFT = 96


@dataclass(frozen=True)
class BaseLLMSize:
    """Architecture and training schedule of one base LLM size."""

    vocab_size: int  # upper bound: BPE stops earlier when the corpus has no more frequent pairs
    hidden_size: int
    layers: int
    heads: int
    intermediate_size: int
    epochs: int
    batch_size: int
    lr: float
    max_tokens: int  # longer reports are truncated (bos + text + eos)
    recombined_copies: int  # corpus-sized sets of recombined reports trained on besides the corpus
    cpu_threads: int | None  # torch threads when training on the CPU; None = torch's default


# tiny trains on one CPU thread: its small matrix products gain nothing from more, and when other
# processes share the cores (an FL simulation, a test run) two spinning threads made it 30-100x slower.
BASE_LLM_SIZES: dict[str, BaseLLMSize] = {
    "tiny": BaseLLMSize(
        vocab_size=1024,
        hidden_size=128,
        layers=2,
        heads=4,
        intermediate_size=384,
        epochs=12,
        batch_size=16,
        lr=4e-3,
        max_tokens=128,
        recombined_copies=3,
        cpu_threads=1,
    ),
    "small": BaseLLMSize(
        vocab_size=4096,
        hidden_size=512,
        layers=6,
        heads=8,
        intermediate_size=1024,
        epochs=8,
        batch_size=16,
        lr=1e-3,
        max_tokens=160,
        recombined_copies=3,
        cpu_threads=None,
    ),
}


# --------------------------------------------------------------------------------------------
# Corpus
# --------------------------------------------------------------------------------------------


def corpus_file(corpus: str | os.PathLike) -> Path:
    """``reports.jsonl`` of a benchmark's public folder, of a benchmark folder, or the file itself."""
    path = Path(corpus)
    if path.is_dir():
        for candidate in (path / "reports.jsonl", path / "public" / "reports.jsonl"):
            if candidate.is_file():
                return candidate
        raise DataError(
            f"{path}: no reports.jsonl (expected a benchmark's public folder, a benchmark folder, "
            "or a reports.jsonl file)"
        )
    if not path.exists():
        raise DataError(f"{path}: corpus not found")
    return path


def read_reports(path: Path) -> list[str]:
    """The ``report`` of every line of a JSONL file (blank lines skipped), as written."""
    reports = []
    for number, line in enumerate(read_utf8(path, "corpus").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise DataError(f"{path}, line {number}: not valid JSON ({exc.msg}, column {exc.colno})") from None
        if not isinstance(row, dict) or "report" not in row:
            raise DataError(f'{path}, line {number}: missing "report" (each line is {{"id": ..., "report": ...}})')
        report = row["report"]
        if not isinstance(report, str) or not report.strip():
            raise DataError(f'{path}, line {number}: "report" must be a non-empty string')
        reports.append(report)
    if not reports:
        raise DataError(f"{path}: no reports (empty corpus)")
    return reports


# --------------------------------------------------------------------------------------------
# Tokenizer
# --------------------------------------------------------------------------------------------


def train_tokenizer(texts: list[str], vocab_size: int, max_length: int = MAX_POSITIONS) -> PreTrainedTokenizerFast:
    """A byte-level BPE tokenizer of at most ``vocab_size`` tokens that prepends bos."""
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=2,
        special_tokens=[PAD, BOS, EOS, UNK],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    bpe.train_from_iterator(texts, trainer)
    bpe.post_processor = processors.TemplateProcessing(
        single=f"{BOS} $A", pair=f"{BOS} $A {BOS} $B", special_tokens=[(BOS, bpe.token_to_id(BOS))]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=bpe,
        bos_token=BOS,
        eos_token=EOS,
        pad_token=PAD,
        unk_token=UNK,
        model_max_length=max_length,
    )


def recombined_reports(texts: list[str], copies: int, seed: int) -> list[str]:
    """``copies`` x ``len(texts)`` more reports, each a public report with one or two of its sentences
    replaced by sentences that state an abnormal finding, taken from other public reports.

    A small corpus has few positive findings, each in a few fixed contexts: an LLM trained on it writes
    the common normal report whatever its prompt says. Recombined reports show every finding sentence
    beside many others, each with the prompt the labeler reads in the result, so the LLM learns to
    write the findings it is told. A base report's sentences that mention an observation the inserted
    sentence mentions are dropped first, so that the result does not contradict itself.
    """
    if copies < 1:
        return []
    split = [[s.strip().rstrip(" .") for s in text.split(" . ") if s.strip(" .")] for text in texts]
    sentences = sorted({sentence for report in split for sentence in report})
    labels = label_matrix([sentence + " ." for sentence in sentences])
    mentioned = {sentence: set(np.flatnonzero(~np.isnan(row))) for sentence, row in zip(sentences, labels)}
    abnormal = [sentence for sentence, row in zip(sentences, labels) if (row[ABNORMAL_COLUMNS] == POSITIVE).any()]
    if not abnormal:
        return []
    rng = np.random.default_rng([seed, 0x5E47])
    out = []
    for _ in range(copies):
        for report in split:
            inserted = [abnormal[i] for i in rng.choice(len(abnormal), size=int(rng.integers(1, 3)), replace=False)]
            covered = set().union(*(mentioned[s] for s in inserted))
            kept = [s for s in report if not mentioned[s] & covered]
            for sentence in inserted:
                kept.insert(int(rng.integers(0, len(kept) + 1)), sentence)
            out.append(" . ".join(kept) + " .")
    return out


@dataclass
class Row:
    ids: list[int]  # bos, the findings prompt, the report, eos
    prompt: int  # how many leading ids are not learned (bos and the prompt)


def _encode(texts: list[str], tokenizer: PreTrainedTokenizerFast, max_tokens: int) -> list[Row]:
    """``bos prompt report eos`` per report, the prompt stating the findings the labeler reads in it (as
    the report generator's diagnosis prompt does), so that the LLM learns to write what it is told.
    The report is cut to fit ``max_tokens`` (a cut report keeps no eos)."""
    prompts = [prompt_text(row) for row in states_from_labels(label_matrix(texts)).tolist()]
    prompt_ids = tokenizer(prompts, add_special_tokens=False)["input_ids"]
    report_ids = tokenizer(texts, add_special_tokens=False)["input_ids"]
    rows = []
    for prompt, report in zip(prompt_ids, report_ids):
        head = [tokenizer.bos_token_id, *prompt]
        rows.append(Row((head + report + [tokenizer.eos_token_id])[: max(max_tokens, len(head) + 8)], len(head)))
    return rows


# --------------------------------------------------------------------------------------------
# Model and training
# --------------------------------------------------------------------------------------------


def _build_model(size: BaseLLMSize, tokenizer: PreTrainedTokenizerFast) -> LlamaForCausalLM:
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=size.hidden_size,
        num_hidden_layers=size.layers,
        num_attention_heads=size.heads,
        num_key_value_heads=size.heads,
        intermediate_size=size.intermediate_size,
        max_position_embeddings=MAX_POSITIONS,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=False,
    )
    return LlamaForCausalLM(config)


def _batches(rows: list[Row], batch_size: int, generator: torch.Generator) -> list[list[int]]:
    """Shuffled batches of row indices, each of rows of similar length (less padding)."""
    order = torch.randperm(len(rows), generator=generator).tolist()
    pool = batch_size * 8
    batches = []
    for start in range(0, len(order), pool):
        chunk = sorted(order[start : start + pool], key=lambda i: len(rows[i].ids))
        batches += [chunk[k : k + batch_size] for k in range(0, len(chunk), batch_size)]
    return [batches[i] for i in torch.randperm(len(batches), generator=generator).tolist()]


def _collate(rows: list[Row], pad_id: int, device: torch.device, shifts: list[int]) -> dict[str, torch.Tensor]:
    """Left-padded rows whose positions start at ``shifts[i]`` instead of 0, as the report generator's
    prompt starts after its image part (the positions skipped cost nothing)."""
    width = max(len(row.ids) for row in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    learned = torch.zeros((len(rows), width), dtype=torch.bool)
    positions = torch.zeros((len(rows), width), dtype=torch.long)
    for i, (row, shift) in enumerate(zip(rows, shifts)):
        start = width - len(row.ids)
        ids[i, start:] = torch.tensor(row.ids)
        mask[i, start:] = 1
        learned[i, start + row.prompt :] = True
        positions[i, start:] = torch.arange(len(row.ids)) + shift
    labels = ids.masked_fill(~learned, -100)
    batch = {"input_ids": ids, "attention_mask": mask, "position_ids": positions, "labels": labels}
    return {key: value.to(device) for key, value in batch.items()}


def _train(
    model: LlamaForCausalLM,
    rows: list[Row],
    size: BaseLLMSize,
    epochs: int,
    pad_id: int,
    generator: torch.Generator,
    progress: bool,
) -> list[float]:
    """Train with AdamW (warm-up then cosine decay); the mean loss of each epoch."""
    device = model.device
    steps_per_epoch = -(-len(rows) // size.batch_size)
    optimizer = torch.optim.AdamW(model.parameters(), lr=size.lr, betas=(0.9, 0.95), weight_decay=0.01)
    total = steps_per_epoch * epochs
    schedule = get_cosine_schedule_with_warmup(optimizer, max(1, total // 20), total)
    model.train()
    losses = []
    with tqdm(total=total, desc="training base LLM", unit="step", disable=not progress) as bar:
        for epoch in range(epochs):
            epoch_loss = 0.0
            for batch in _batches(rows, size.batch_size, generator):
                shifts = torch.randint(0, PROMPT_SHIFT + 1, (len(batch),), generator=generator).tolist()
                loss = model(**_collate([rows[i] for i in batch], pad_id, device, shifts)).loss
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
                optimizer.step()
                schedule.step()
                epoch_loss += loss.item() / steps_per_epoch
                bar.update()
                bar.set_postfix(epoch=epoch + 1, loss=f"{loss.item():.3f}")
            losses.append(epoch_loss)
            log.debug("base LLM epoch %d/%d: mean loss %.4f", epoch + 1, epochs, epoch_loss)
    model.eval()
    return losses


SAMPLE_FINDINGS = {"Cardiomegaly": STATE_POSITIVE, "Pleural Effusion": STATE_POSITIVE, "Pneumothorax": STATE_NEGATIVE}
SAMPLE_PROMPT = prompt_text([SAMPLE_FINDINGS.get(name, BLANK) for name in OBSERVATIONS])


@torch.no_grad()
def greedy_sample(model: LlamaForCausalLM, tokenizer: PreTrainedTokenizerFast, max_new_tokens: int) -> str:
    """What the model writes, greedily, when told ``SAMPLE_FINDINGS``."""
    prompt = tokenizer(SAMPLE_PROMPT, add_special_tokens=False)["input_ids"]
    start = torch.tensor([[tokenizer.bos_token_id, *prompt]], device=model.device)
    out = model.generate(
        start,
        attention_mask=torch.ones_like(start),
        max_new_tokens=max_new_tokens,
        do_sample=False,
        pad_token_id=tokenizer.pad_token_id,
    )
    return tokenizer.decode(out[0, start.shape[1] :], skip_special_tokens=True)


@contextlib.contextmanager
def _cpu_threads(count: int | None, device: torch.device) -> Iterator[None]:
    """Run the block with ``count`` torch threads (on the CPU; None = leave as it is)."""
    if count is None or device.type != "cpu":
        yield
        return
    before = torch.get_num_threads()
    torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(before)


# --------------------------------------------------------------------------------------------
# The build
# --------------------------------------------------------------------------------------------


def _check_out(out: Path) -> None:
    """Only an empty folder or a previous base LLM build may be replaced."""
    if not out.exists():
        return
    if not out.is_dir():
        raise DataError(f"{out}: exists and is not a folder; refusing to replace it")
    if any(out.iterdir()) and not (out / SUMMARY).is_file():
        raise DataError(
            f"{out}: exists, is not empty and holds no base LLM build ({SUMMARY}); "
            "refusing to replace it (choose another --out, or empty it)"
        )


def make_base_llm(
    corpus: str | os.PathLike,
    out: str | os.PathLike,
    size: str = "tiny",
    *,
    dataset: str = "iu_xray",
    seed: int = 0,
    epochs: int | None = None,
    device: str = "cpu",
    progress: bool = True,
) -> dict[str, Any]:
    """Train the demo base LLM on ``corpus`` and save it to ``out``; the summary (also in base_llm.json).

    ``epochs`` overrides the size's schedule; ``device`` is where it trains (``auto`` = CUDA when
    present; a build is reproducible for a seed on the same device). ``out`` is written whole or
    not at all (a temporary sibling renamed at the end). Bad corpus lines are a DataError, bad
    arguments a ConfigError.
    """
    if size not in BASE_LLM_SIZES:
        raise ConfigError(f"base LLM size {size!r}: must be one of {', '.join(BASE_LLM_SIZES)}")
    if dataset not in CLEANERS:
        raise ConfigError(f"dataset {dataset!r}: must be one of {', '.join(CLEANERS)} (the report cleaning rules)")
    spec = BASE_LLM_SIZES[size]
    epochs = spec.epochs if epochs is None else epochs
    if epochs < 1:
        raise ConfigError(f"epochs {epochs}: must be at least 1")
    out = Path(out).resolve()
    _check_out(out)
    source = corpus_file(corpus)
    started = time.time()
    texts = [clean_report(report, dataset) for report in read_reports(source)]
    tokenizer = train_tokenizer(texts, spec.vocab_size)
    recombined = recombined_reports(texts, spec.recombined_copies, seed)
    rows = _encode(texts + recombined, tokenizer, spec.max_tokens)
    target = resolve_device(device)
    with torch.random.fork_rng(devices=[]), _cpu_threads(spec.cpu_threads, target):
        torch.manual_seed(seed)
        model = _build_model(spec, tokenizer).to(target)
        generator = torch.Generator().manual_seed(seed)
        log.info(
            "training a %s base LLM (%.2fM parameters) on %d reports from %s for %d epochs",
            size,
            model.num_parameters() / 1e6,
            len(rows),
            source,
            epochs,
        )
        losses = _train(model, rows, spec, epochs, tokenizer.pad_token_id, generator, progress)
        sample = greedy_sample(model, tokenizer, spec.max_tokens)
    model.cpu()
    summary = {
        "kind": KIND,
        "format_version": FORMAT_VERSION,
        "created_by": f"fedmrg {__version__}",
        "corpus": str(source.resolve()),
        "dataset": dataset,
        "size": size,
        "architecture": asdict(spec),
        "seed": seed,
        "epochs": epochs,
        "reports": len(texts),
        "recombined_reports": len(recombined),
        "tokens": sum(len(row.ids) for row in rows),
        "vocab_size": len(tokenizer),
        "params": model.num_parameters(),
        "first_loss": round(losses[0], 4),
        "final_loss": round(losses[-1], 4),
        "losses": [round(loss, 4) for loss in losses],
        "sample_prompt": SAMPLE_PROMPT,
        "sample": sample,
        "seconds": round(time.time() - started, 1),
    }
    with replacing_directory(out, per_process=True) as tmp:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        write_json(tmp / SUMMARY, summary)
    log.info(
        "base LLM saved to %s: loss %.3f -> %.3f in %.1f s; sample: %s",
        out,
        summary["first_loss"],
        summary["final_loss"],
        summary["seconds"],
        summary["sample"],
    )
    return summary
