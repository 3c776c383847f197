"""Which decoding controls stop a model repeating itself, at what cost? Prints one line per setting.

    python bench/decoding.py --model data/demo/fedmrg/global_model --data data/demo/bench/test-global [--limit 160]

For each setting (beam size, repetition penalty, no-repeat n-gram size), the reports of the split
are generated and scored: the share of reports that repeat a sentence or a 4-gram, the number of
distinct reports, BLEU-4, CE-F1 (example) and the abnormal-finding CE F1.
"""

from __future__ import annotations

import argparse
from collections import Counter

from fedmrg.data.loaders import loader_records, study_loader
from fedmrg.eval.report import score_reports
from fedmrg.model.inference import generate_split
from fedmrg.model.mrg import MRGModel

SETTINGS = [
    {"num_beams": 3, "repetition_penalty": 1.0, "no_repeat_ngram_size": 0},
    {"num_beams": 3, "repetition_penalty": 1.2, "no_repeat_ngram_size": 0},
    {"num_beams": 3, "repetition_penalty": 1.2, "no_repeat_ngram_size": 4},
    {"num_beams": 3, "repetition_penalty": 1.0, "no_repeat_ngram_size": 3},
    {"num_beams": 1, "repetition_penalty": 1.2, "no_repeat_ngram_size": 4},
]


def repeats(text: str) -> tuple[bool, bool]:
    """(a sentence appears twice, a 4-gram appears twice)."""
    sentences = [s.strip() for s in text.split(" . ") if s.strip(" .")]
    words = text.split()
    grams = Counter(tuple(words[i : i + 4]) for i in range(len(words) - 3))
    return len(sentences) != len(set(sentences)), any(count > 1 for count in grams.values())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True)
    parser.add_argument("--data", required=True)
    parser.add_argument("--base-llm")
    parser.add_argument("--limit", type=int)
    parser.add_argument("--adapters", default="auto", choices=["auto", "generic", "dual"])
    args = parser.parse_args()
    model = MRGModel.load(args.model, base_llm=args.base_llm)
    cfg = model.cfg
    loader = study_loader(cfg, [args.data], "test", train=False, batch_size=cfg.generate.batch_size, limit=args.limit)
    references = {str(r["id"]): r["report"] for r in loader_records(loader)}
    for setting in SETTINGS:
        for key, value in setting.items():
            setattr(cfg.generate, key, value)
        rows = generate_split(model, loader, adapters=args.adapters, progress=False)
        reports = {key: row["report"] for key, row in rows.items()}
        flags = [repeats(text) for text in reports.values()]
        scores = score_reports(reports, references, dataset=cfg.data.dataset)
        print(
            f"{setting}: repeated sentence {sum(f[0] for f in flags) / len(flags):.1%}, "
            f"repeated 4-gram {sum(f[1] for f in flags) / len(flags):.1%}, {len(set(reports.values()))} distinct "
            f"of {len(reports)}; BLEU-4 {scores['nlg']['BLEU-4']:.3f}, "
            f"CE-F1 example {scores['ce']['example']['f1']:.3f}, CE abnormal F1 {scores['ce']['abnormal']['f1']:.3f}",
            flush=True,
        )


if __name__ == "__main__":
    main()
