"""Training steps/s and generated tokens/s of the report generator, against a plain PEFT QLoRA loop.

    python bench/train_step.py --base-llm data/demo/base-llm --data data/demo/bench/site-1
    python bench/train_step.py --llm-1b --data data/demo/bench/site-1 --device cuda     # on a GPU

``--llm-1b`` builds a LLaMA-architecture model of about 1.1B parameters (TinyLlama's shape) with
random weights and the tokenizer of ``--base-llm`` (or of a demo base LLM trained on the fly).

The peer is what a QLoRA user would otherwise run: the same 4-bit LLM with one LoRA adapter of the
same rank and targets, fed token ids of the same batch size and sequence length, AdamW. Our step
does more: the encoder, prompts and projector, and two LLM passes (generic, generic+specialized)
for mutual boosting. So two overheads are printed: against a one-pass peer (everything we add) and
against a two-pass peer (our machinery alone, the second LLM pass being part of the method).
"""

from __future__ import annotations

import argparse
import logging
import statistics
import tempfile
import time
from pathlib import Path

import torch

from fedmrg.config import encoder_weights, load_config
from fedmrg.data.loaders import study_loader
from fedmrg.model.adapters import active_adapters, adapter_names, attach_adapters
from fedmrg.model.base_llm import make_base_llm
from fedmrg.model.llm import LLAMA_1B_SHAPE, load_llm, random_llm
from fedmrg.model.mrg import MRGModel
from fedmrg.model.training import Trainer


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed_steps(step, steps: int, warmup: int, device: torch.device) -> list[float]:
    """Seconds per call of ``step`` after ``warmup`` untimed calls."""
    times = []
    for index in range(warmup + steps):
        synchronize(device)
        start = time.perf_counter()
        step()
        synchronize(device)
        if index >= warmup:
            times.append(time.perf_counter() - start)
    return times


def ours(model: MRGModel, cfg, batch, steps: int, warmup: int) -> tuple[list[float], int]:
    trainer = Trainer(model, cfg, total_steps=10_000)

    def step():
        trainer.train_step(batch)

    encoded = model.encoder(model._to_device(batch["image"]), model._to_device(batch["view_mask"]))
    report_ids = model.report_ids(batch["report"])
    sequence_length = model._sequences(encoded, model._to_device(batch["states"]), report_ids)[0].shape[1]
    return timed_steps(step, steps, warmup, model.info.device), sequence_length


def peer(
    checkpoint: Path,
    cfg,
    batch_size: int,
    sequence_length: int,
    report_tokens: int,
    passes: int,
    steps: int,
    warmup: int,
    device: str,
) -> list[float]:
    """Plain QLoRA: 4-bit LLM (input embedding as QLoRA keeps it, in the compute dtype) + LoRA, token ids
    in, LM loss on the last ``report_tokens`` positions."""
    llm, tokenizer, info = load_llm(
        checkpoint,
        load_in_4bit=cfg.model.load_in_4bit,
        quantize_embeddings="none",
        dtype=cfg.model.dtype,
        device=device,
    )
    cfg.model.adapters = "dual" if passes == 2 else "single"
    model = attach_adapters(llm, cfg.model)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=cfg.train.lr)
    ids = torch.randint(0, len(tokenizer), (batch_size, sequence_length), device=info.device)
    labels = ids.clone()
    labels[:, : sequence_length - report_tokens] = -100
    paths = [adapter_names(cfg.model)[: k + 1] for k in range(passes)]
    autocast = (
        torch.autocast("cuda", dtype=torch.bfloat16)
        if info.device.type == "cuda" and cfg.train.bf16
        else torch.autocast("cpu", enabled=False)
    )

    def step():
        for path in paths:
            with active_adapters(model, path), autocast:
                loss = model(input_ids=ids, labels=labels).loss
            loss.backward()
        torch.nn.utils.clip_grad_norm_(params, cfg.train.grad_clip)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    model.train()
    return timed_steps(step, steps, warmup, info.device)


def generation_speed(model: MRGModel, batch, repeats: int) -> float:
    """Generated tokens per second (beam search as configured; tokens of the returned reports)."""
    model.eval()
    tokens, seconds = 0, 0.0
    for _ in range(repeats):
        synchronize(model.info.device)
        start = time.perf_counter()
        reports = model.generate(batch)
        synchronize(model.info.device)
        seconds += time.perf_counter() - start
        tokens += sum(len(model._ids(text)) + 1 for text in reports)
    return tokens / seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="demo")
    parser.add_argument("--data", required=True, help="a site folder (its train split feeds the batches)")
    parser.add_argument("--base-llm", help="base LLM checkpoint (default: a demo base LLM trained on the fly)")
    parser.add_argument("--corpus", default="data/demo/bench/public", help="public reports, for the on-the-fly LLM")
    parser.add_argument("--llm-1b", action="store_true", help="a 1.1B LLaMA with random weights instead")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--batch-size", type=int)
    parser.add_argument("--base-encoder", help="weights of a frozen encoder (default: data/demo/base-encoder)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    torch.manual_seed(0)

    encoder = {"model.encoder.pretrained": encoder_weights(args.base_encoder or "data/demo/base-encoder")}
    cfg = load_config(args.config, {"train.device": args.device, "train.batch_size": args.batch_size, **encoder})
    with tempfile.TemporaryDirectory() as tmp:
        checkpoint = Path(args.base_llm) if args.base_llm else Path(tmp) / "base"
        if not args.base_llm:
            make_base_llm(args.corpus, checkpoint, "tiny", progress=False)
        if args.llm_1b:
            checkpoint = random_llm(Path(tmp) / "llama-1b", "llama", checkpoint, **LLAMA_1B_SHAPE, dtype=torch.bfloat16)
            cfg.model.target_modules = None  # PEFT's default for LLaMA (q_proj, v_proj), as a QLoRA user would
        batch = next(iter(study_loader(cfg, [args.data], "train", train=True)))
        model = MRGModel.build(cfg, checkpoint, device=args.device)
        ours_times, sequence_length = ours(model, cfg, batch, args.steps, args.warmup)
        report_tokens = max(len(ids) for ids in model.report_ids(batch["report"]))
        tokens_per_second = generation_speed(model, next(iter(study_loader(cfg, [args.data], "test", train=False))), 2)
        device = str(model.info.device)
        del model
        peer_times = {
            passes: peer(
                checkpoint,
                load_config(args.config, {"train.device": args.device, **encoder}),
                len(batch["report"]),
                sequence_length,
                report_tokens,
                passes,
                args.steps,
                args.warmup,
                device,
            )
            for passes in (1, 2)
        }

    ours_step = statistics.median(ours_times)
    print(
        f"device: {device}; LLM: {'1.1B LLaMA (random weights)' if args.llm_1b else checkpoint}; "
        f"4-bit: {cfg.model.load_in_4bit}; batch {len(batch['report'])}, sequence {sequence_length} tokens"
    )
    print(
        f"ours: {ours_step * 1000:.0f} ms/step, {1 / ours_step:.2f} train steps/s "
        f"(adapters: {cfg.model.adapters}, median of {args.steps})"
    )
    for passes, times in peer_times.items():
        step = statistics.median(times)
        print(
            f"plain PEFT QLoRA, {passes} LLM pass{'es' if passes > 1 else ''}: {step * 1000:.0f} ms/step; "
            f"our overhead: {100 * (ours_step / step - 1):+.0f}%"
        )
    print(
        f"generation: {tokens_per_second:.1f} tokens/s (beam {cfg.generate.num_beams}, batch {cfg.generate.batch_size})"
    )


if __name__ == "__main__":
    main()
