"""`make_base_llm`: the demo base LLM trained on a benchmark's public reports."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaForCausalLM

from fedmrg.data.cleaning import clean_report
from fedmrg.errors import ConfigError, DataError
from fedmrg.model.base_llm import corpus_file, make_base_llm
from fedmrg.model.llm import load_llm

HEART = [
    "The heart is normal in size.",
    "Heart size is mildly enlarged.",
    "The cardiomediastinal silhouette is normal.",
]
LUNGS = ["The lungs are clear.", "There is a small right pleural effusion.", "No focal airspace consolidation."]
OTHER = ["No pneumothorax.", "No acute bony abnormality.", "Degenerative changes of the thoracic spine."]
REPORTS = [f"{h} {lung} {o}" for h in HEART for lung in LUNGS for o in OTHER]  # 27 distinct reports


def write_corpus(folder: Path, reports: list[str] = REPORTS) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "reports.jsonl"
    path.write_text("".join(json.dumps({"id": f"CXR{i}", "report": r}) + "\n" for i, r in enumerate(reports)))
    return path


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    root = tmp_path_factory.mktemp("base")
    write_corpus(root / "bench" / "public", REPORTS * 2)
    summary = make_base_llm(root / "bench" / "public", root / "llm", "tiny", epochs=4, progress=False)
    return root / "llm", summary


def test_summary_is_returned_and_written(built):
    out, summary = built
    assert json.loads((out / "base_llm.json").read_text()) == summary
    assert summary["reports"] == 54 and summary["recombined_reports"] == 3 * 54
    assert summary["size"] == "tiny" and summary["epochs"] == 4
    assert summary["vocab_size"] == len(AutoTokenizer.from_pretrained(out))
    assert summary["tokens"] > summary["reports"] * 3 and summary["params"] > 0
    assert summary["sample"].strip()


def test_training_lowers_the_loss(built):
    _, summary = built
    assert summary["final_loss"] < summary["first_loss"] - 0.5
    assert len(summary["losses"]) == 4


def test_checkpoint_loads_with_load_llm_and_transformers(built):
    out, _ = built
    for four_bit in (True, False):
        model, tokenizer, info = load_llm(out, load_in_4bit=four_bit)
        assert info.family == "llama" and info.quantized == four_bit
        start = torch.tensor([[tokenizer.bos_token_id]])
        generated = model.generate(start, attention_mask=torch.ones_like(start), max_new_tokens=8, do_sample=False)
        assert generated.shape[1] > 1
    model = AutoModelForCausalLM.from_pretrained(out)
    assert isinstance(model, LlamaForCausalLM)
    assert any(path.suffix == ".safetensors" for path in out.iterdir())


def test_tokenizer_adds_bos_and_round_trips_text(built):
    out, _ = built
    tokenizer = AutoTokenizer.from_pretrained(out)
    report = clean_report(REPORTS[5])
    ids = tokenizer(report)["input_ids"]
    assert ids[0] == tokenizer.bos_token_id and tokenizer.eos_token_id not in ids
    assert tokenizer.decode(ids, skip_special_tokens=True) == report
    unseen = "Cardiomegaly: positive; pleural effusion: uncertain. Écho 42%"  # prompt text, unseen bytes
    assert tokenizer.decode(tokenizer(unseen)["input_ids"], skip_special_tokens=True) == unseen
    assert tokenizer.unk_token_id not in tokenizer(unseen)["input_ids"]
    assert tokenizer.pad_token and tokenizer.pad_token != tokenizer.eos_token


def test_build_is_deterministic_and_replaces_a_previous_build(tmp_path):
    corpus = write_corpus(tmp_path / "public", REPORTS[:12])
    first = make_base_llm(corpus, tmp_path / "a", epochs=1, seed=5, progress=False)
    second = make_base_llm(corpus, tmp_path / "b", epochs=1, seed=5, progress=False)
    assert first["losses"] == second["losses"]
    a, b = load_file(tmp_path / "a" / "model.safetensors"), load_file(tmp_path / "b" / "model.safetensors")
    assert all(torch.equal(a[key], b[key]) for key in a)
    replaced = make_base_llm(corpus, tmp_path / "a", epochs=1, seed=6, progress=False)
    assert json.loads((tmp_path / "a" / "base_llm.json").read_text())["seed"] == replaced["seed"] == 6


def test_an_unrelated_folder_is_not_overwritten(tmp_path):
    corpus = write_corpus(tmp_path / "public")
    out = tmp_path / "mine"
    out.mkdir()
    (out / "notes.txt").write_text("keep me")
    with pytest.raises(DataError, match="refusing to replace it") as error:
        make_base_llm(corpus, out, progress=False)
    assert str(out) in str(error.value)
    assert [p.name for p in out.iterdir()] == ["notes.txt"]


def test_corpus_can_be_the_public_folder_the_benchmark_or_the_file(tmp_path):
    path = write_corpus(tmp_path / "bench" / "public")
    assert corpus_file(tmp_path / "bench") == corpus_file(tmp_path / "bench" / "public") == corpus_file(path) == path


@pytest.mark.parametrize(
    "lines, where, reason",
    [
        (['{"id": "a", "report": "Clear lungs."}', '{"id": "b", "report": '], "line 2", "not valid JSON"),
        (['{"id": "a", "report": "Clear lungs."}', "", '{"id": "c"}'], "line 3", 'missing "report"'),
        (['["a", "Clear lungs."]'], "line 1", 'missing "report"'),
        (['{"id": "a", "report": 3}'], "line 1", "non-empty string"),
        (["", "  "], "", "no reports"),
    ],
)
def test_bad_corpus_lines_are_named(tmp_path, lines, where, reason):
    path = tmp_path / "reports.jsonl"
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(DataError, match=reason) as error:
        make_base_llm(path, tmp_path / "out", progress=False)
    assert str(path) in str(error.value) and where in str(error.value)
    assert not (tmp_path / "out").exists()


def test_missing_corpus_and_unknown_size_are_refused(tmp_path):
    with pytest.raises(DataError, match="corpus not found") as error:
        make_base_llm(tmp_path / "absent.jsonl", tmp_path / "out", progress=False)
    assert str(tmp_path / "absent.jsonl") in str(error.value)
    with pytest.raises(DataError, match="no reports.jsonl"):
        make_base_llm(tmp_path, tmp_path / "out", progress=False)
    with pytest.raises(ConfigError, match="'huge'"):
        make_base_llm(write_corpus(tmp_path / "public"), tmp_path / "out", "huge", progress=False)


def test_recombined_reports_state_findings_from_other_reports_without_contradicting_themselves():
    from fedmrg.labels.labeler import label_matrix
    from fedmrg.labels.observations import ABNORMAL_COLUMNS, OBSERVATIONS, POSITIVE
    from fedmrg.model.base_llm import recombined_reports

    texts = [clean_report(r) for r in REPORTS]
    made = recombined_reports(texts, copies=2, seed=0)
    assert len(made) == 2 * len(texts) and made == recombined_reports(texts, copies=2, seed=0)
    assert set(made) - set(texts)  # new combinations, not copies
    labels = label_matrix(made)
    assert ((labels[:, ABNORMAL_COLUMNS] == POSITIVE).any(axis=1)).all()  # each states a finding
    effusion = OBSERVATIONS.index("Pleural Effusion")
    for text, row in zip(made, labels):
        if "small right pleural effusion" in text:
            assert row[effusion] == POSITIVE and "no pleural effusion" not in text


def test_training_rows_learn_the_report_after_its_findings_prompt_wherever_it_starts(built):
    from fedmrg.model.base_llm import _collate, _encode

    out, _ = built
    tokenizer = AutoTokenizer.from_pretrained(out)
    rows = _encode([clean_report(REPORTS[4])], tokenizer, 128)
    prompt = tokenizer.decode(rows[0].ids[: rows[0].prompt], skip_special_tokens=True)
    assert prompt == " diagnosis: cardiomegaly: negative; pleural effusion: positive. report:"
    batch = _collate(rows * 2, tokenizer.pad_token_id, torch.device("cpu"), shifts=[0, 5])
    learned = batch["labels"] != -100
    assert learned.sum(1).tolist() == [len(rows[0].ids) - rows[0].prompt] * 2  # the report and eos only
    assert batch["attention_mask"].sum(1).tolist() == [len(rows[0].ids)] * 2
    assert batch["position_ids"][:, 0].tolist() == [0, 5] and (batch["position_ids"].diff(dim=1) == 1).all()
