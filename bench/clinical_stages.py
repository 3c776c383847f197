"""Where does the clinical error come from? A model's reports measured in three stages. Prints a table.

    python bench/clinical_stages.py --model data/demo/fedmrg/global_model --data data/demo/bench/test-global \
        --base-llm data/demo/base-llm [--limit 160] [--out stages.json]

(a) image -> findings: the diagnosis head's AUC per observation (its positive-state probability)
    against the labeler's reading of the reference report and, on the benchmark, against what the
    renderer drew (the study's finding categories); and the F1 of the positives it puts in the prompt;
(b) findings -> text: reports generated with each reference's own findings in the diagnosis
    prompt, scored (CE) against those references: does the decoder write what it is told?
(c) end to end: reports generated with the head's findings in the prompt, scored the same way.
The weakest stage is the one to fix first.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch
from sklearn.metrics import roc_auc_score
from tqdm import tqdm

from fedmrg.data.loaders import study_loader
from fedmrg.eval.ce import ce_from_texts
from fedmrg.labels.observations import ABNORMAL, OBSERVATIONS
from fedmrg.labels.states import STATE_POSITIVE
from fedmrg.model.mrg import MRGModel

DRAWN = {  # observation -> the renderer's finding category that shows it
    "Cardiomegaly": "cardiomegaly",
    "Pleural Effusion": "effusion",
    "Edema": "edema",
    "Pneumothorax": "pneumothorax",
    "Support Devices": "device",
    "Atelectasis": "atelectasis",
    "Lung Opacity": "opacity",
    "Lung Lesion": "nodule",
    "Fracture": "fracture",
}


def auc(truth: np.ndarray, score: np.ndarray) -> float | None:
    return round(float(roc_auc_score(truth, score)), 3) if 0 < truth.sum() < len(truth) else None


def f1(pred: np.ndarray, truth: np.ndarray) -> float:
    tp = float((pred & truth).sum())
    return round(tp / max(1.0, tp + ((pred & ~truth).sum() + (~pred & truth).sum()) / 2), 3)


@torch.no_grad()
def collect(model: MRGModel, loader, adapters: str) -> dict:
    out = {"p": [], "pred": [], "ref": [], "drawn": [], "told": {}, "own": {}, "refs": {}}
    for batch in tqdm(loader, desc="stages", unit="batch"):
        encoded = model.encoder(batch["image"], batch["view_mask"])
        logits = model.diagnosis(encoded.pooled)
        out["p"].append(torch.softmax(logits.float(), dim=-1)[..., STATE_POSITIVE])
        out["pred"].append(model.diagnosis.predict(logits) == STATE_POSITIVE)
        out["ref"].append(batch["states"] == STATE_POSITIVE)
        out["drawn"] += [set(c) for c in batch.get("categories", [[]] * len(batch["id"]))]
        told = model.generate(batch, adapters=adapters, states=batch["states"])
        own = model.generate(batch, adapters=adapters)
        for key, reference, a, b in zip(batch["id"], batch["report"], told, own):
            out["refs"][str(key)], out["told"][str(key)], out["own"][str(key)] = reference, a, b
    for key in ("p", "pred", "ref"):
        out[key] = torch.cat(out[key]).cpu().numpy()
    return out


def stages(data: dict, dataset: str) -> dict:
    head = {}
    for k, name in enumerate(OBSERVATIONS):
        if name not in ABNORMAL:
            continue
        drawn = np.array([DRAWN.get(name) in found for found in data["drawn"]]) if name in DRAWN else None
        head[name] = {
            "support": int(data["ref"][:, k].sum()),
            "auc_report": auc(data["ref"][:, k], data["p"][:, k]),
            "auc_drawn": auc(drawn, data["p"][:, k]) if drawn is not None else None,
            "prompt_f1": f1(data["pred"][:, k], data["ref"][:, k]),
            "predicted_positive": int(data["pred"][:, k].sum()),
        }
    told = ce_from_texts(data["told"], data["refs"], dataset)
    own = ce_from_texts(data["own"], data["refs"], dataset)
    return {"a_head": head, "b_told": told, "c_end_to_end": own, "studies": len(data["refs"])}


def print_table(result: dict) -> None:
    print(f"{result['studies']} studies")
    columns = ("AUC rep", "AUC drawn", "prompt F1", "told F1", "e2e F1")
    print(f"{'observation':28s} {'n':>4s} " + " ".join(f"{c:>9s}" for c in columns))
    for name, row in result["a_head"].items():
        told = result["b_told"]["per_observation"][name]["f1"]
        own = result["c_end_to_end"]["per_observation"][name]["f1"]
        cells = [row["auc_report"], row["auc_drawn"], row["prompt_f1"], told, own]
        text = " ".join(f"{'-' if c is None else f'{c:.3f}':>9s}" for c in cells)
        print(f"{name:28s} {row['support']:4d} {text}")
    for stage in ("b_told", "c_end_to_end"):
        ce = result[stage]
        print(
            f"{stage}: CE abnormal P/R/F1 {ce['abnormal']['precision']:.3f}/{ce['abnormal']['recall']:.3f}/"
            f"{ce['abnormal']['f1']:.3f}; CE-F1 example {ce['example']['f1']:.3f}"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, help="a model folder (fedmrg train's, or a job's global_model)")
    parser.add_argument("--data", required=True, help="a split folder (annotation.json + images)")
    parser.add_argument("--split", default="test")
    parser.add_argument("--base-llm", help="the base LLM, if it moved since training")
    parser.add_argument("--adapters", default="auto", choices=["auto", "generic", "dual"])
    parser.add_argument("--limit", type=int, help="first N studies")
    parser.add_argument("--out", help="write the figures and the reports of stages b and c to this JSON file")
    args = parser.parse_args()
    model = MRGModel.load(args.model, base_llm=args.base_llm)
    cfg = model.cfg
    loader = study_loader(
        cfg, [args.data], args.split, train=False, batch_size=cfg.generate.batch_size, limit=args.limit
    )
    data = collect(model, loader, args.adapters)
    result = stages(data, cfg.data.dataset)
    print_table(result)
    if args.out:
        Path(args.out).write_text(json.dumps({**result, "told": data["told"], "own": data["own"]}, indent=1))


if __name__ == "__main__":
    main()
