"""`fedmrg label`, `fedmrg score` and `fedmrg report` end to end, and their bad inputs."""

from __future__ import annotations

import csv
import json
import shutil

import pytest

from fedmrg.cli import main
from fedmrg.data.annotation import write_annotation
from fedmrg.labels.observations import OBSERVATIONS

PRED = {
    "s1": "The heart is normal in size. The lungs are clear. No pleural effusion or pneumothorax.",
    "s2": "Mild cardiomegaly. Small left pleural effusion.",
    "s3": "1. Right-sided PICC line. 2. No pneumothorax.",
}
REF = {
    "s1": "Heart size is normal. Lungs are clear without focal consolidation.",
    "s2": "The heart is enlarged. There is a left pleural effusion and basilar atelectasis.",
    "s3": "Right PICC line tip in the SVC. No pneumothorax or effusion. Normal chest x-XXXX.",
}
NLG = ("BLEU-1", "BLEU-2", "BLEU-3", "BLEU-4", "METEOR", "ROUGE-L", "CIDEr")


def run(capsys, *argv: str) -> tuple[int, str, str]:
    code = main([str(a) for a in argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def assert_one_line_error(code: int, err: str, *names: str) -> None:
    assert code == 2
    assert err.startswith("fedmrg: error: ") and err.count("\n") == 1 and "Traceback" not in err
    for name in names:
        assert str(name) in err


@pytest.fixture
def no_java(tmp_path, monkeypatch):
    """No java on PATH: METEOR is skipped (n/a), which keeps these tests fast."""
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))


def write_json(path, data) -> str:
    path.write_text(json.dumps(data), encoding="utf-8")
    return str(path)


def write_csv(path, rows, header=("id", "report")) -> str:
    with open(path, "w", encoding="utf-8", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(header)
        writer.writerows(rows)
    return str(path)


# --- label -----------------------------------------------------------------------------------


def test_label_end_to_end(tmp_path, capsys):
    source = write_csv(
        tmp_path / "reports.csv",
        [
            ("r1", "Cardiomegaly. No pleural effusion.", "x"),
            ("r2", "Normal chest.\nNo pneumothorax.", "y"),
            ("r3", "The lungs are clear.", ""),
        ],
        header=("id", "report", "extra"),
    )
    out = tmp_path / "out" / "labels.csv"
    code, printed, _ = run(capsys, "label", "--in", source, "--out", out)
    assert code == 0
    assert "3 reports labeled" in printed and str(out) in printed and printed.count("\n") == 1
    with open(out, encoding="utf-8", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert list(rows[0]) == ["id", *OBSERVATIONS]
    assert [row["id"] for row in rows] == ["r1", "r2", "r3"]
    assert rows[0]["Cardiomegaly"] == "1" and rows[0]["Pleural Effusion"] == "0"
    assert rows[1]["Pneumothorax"] == "0" and rows[1]["Fracture"] == ""
    assert all(value in {"1", "0", "-1", ""} for row in rows for key, value in row.items() if key != "id")


def test_label_reads_a_byte_order_mark(tmp_path, capsys):
    source = tmp_path / "bom.csv"
    source.write_bytes(b"\xef\xbb\xbfid,report\nr1,Mild cardiomegaly.\n")
    code, _, _ = run(capsys, "label", "--in", source, "--out", tmp_path / "labels.csv")
    assert code == 0


def test_label_missing_file(tmp_path, capsys):
    missing = tmp_path / "nope.csv"
    assert_one_line_error(
        *run(capsys, "label", "--in", missing, "--out", tmp_path / "l.csv")[::2], missing, "not found"
    )


def test_label_not_utf8(tmp_path, capsys):
    source = tmp_path / "latin1.csv"
    source.write_bytes("id,report\nr1,Épanchement pleural.\n".encode("latin-1"))
    code, _, err = run(capsys, "label", "--in", source, "--out", tmp_path / "l.csv")
    assert_one_line_error(code, err, source, "not UTF-8", "offset 13")


def test_label_without_the_columns(tmp_path, capsys):
    source = write_csv(tmp_path / "cols.csv", [("r1", "Clear.")], header=("study", "text"))
    code, _, err = run(capsys, "label", "--in", source, "--out", tmp_path / "l.csv")
    assert_one_line_error(code, err, source, "'id'", "'report'", "found: 'study', 'text'")


def test_label_empty_reports(tmp_path, capsys):
    source = write_csv(tmp_path / "empty.csv", [("r1", "Clear."), ("r2", "  "), ("r3", "")])
    code, _, err = run(capsys, "label", "--in", source, "--out", tmp_path / "l.csv")
    assert_one_line_error(code, err, source, "2 rows with an empty id or report", "'r2', 'r3'")


def test_label_duplicate_ids(tmp_path, capsys):
    source = write_csv(tmp_path / "dup.csv", [("r1", "Clear."), ("r2", "Clear."), ("r1", "Effusion.")])
    code, _, err = run(capsys, "label", "--in", source, "--out", tmp_path / "l.csv")
    assert_one_line_error(code, err, source, "more than once", "'r1'")


def test_label_empty_file(tmp_path, capsys):
    source = tmp_path / "nothing.csv"
    source.write_text("")
    code, _, err = run(capsys, "label", "--in", source, "--out", tmp_path / "l.csv")
    assert_one_line_error(code, err, source, "empty file")


# --- score -----------------------------------------------------------------------------------


def test_score_end_to_end(tmp_path, capsys, no_java):
    pred, ref = write_json(tmp_path / "pred.json", PRED), write_json(tmp_path / "ref.json", REF)
    out = tmp_path / "run" / "scores.json"
    code, printed, _ = run(capsys, "score", "--pred", pred, "--ref", ref, "--out", out, "--per-study")
    assert code == 0
    scores = json.loads(out.read_text())
    assert scores["n"] == 3
    assert list(scores["nlg"]) == list(NLG) and scores["nlg"]["METEOR"] is None
    assert all(0 <= scores["nlg"][m] <= 1 for m in NLG if m not in ("METEOR", "CIDEr"))
    assert set(scores["ce"]) == {"micro", "macro", "example", "micro5", "abnormal"}
    assert all(set(v) == {"precision", "recall", "f1"} for v in scores["ce"].values())
    assert set(scores["per_study"]) == set(PRED) and set(scores["ce_per_observation"]) == set(OBSERVATIONS)
    for word in ("BLEU-4", "METEOR", "n/a", "CIDEr", "micro5", "abnormal", "precision", str(out)):
        assert word in printed


@pytest.mark.skipif(shutil.which("java") is None, reason="no Java: METEOR cannot run here")
def test_score_with_meteor(tmp_path, capsys):
    pred, ref = write_json(tmp_path / "pred.json", PRED), write_json(tmp_path / "ref.json", REF)
    assert run(capsys, "score", "--pred", pred, "--ref", ref, "--out", tmp_path / "s.json")[0] == 0
    scores = json.loads((tmp_path / "s.json").read_text())
    assert 0 < scores["nlg"]["METEOR"] <= 1 and "per_study" not in scores


def test_score_against_an_annotation_split(tmp_path, capsys, no_java):
    rows = {
        split: [
            {"id": f"{split}-{k}", "report": text, "image_path": [f"{split}-{k}/0.png"]}
            for k, text in enumerate(REF.values())
        ]
        for split in ("train", "val", "test")
    }
    write_annotation(tmp_path / "annotation.json", rows)
    pred = write_json(tmp_path / "pred.json", {f"val-{k}": text for k, text in enumerate(PRED.values())})
    out = tmp_path / "scores.json"
    args = ("score", "--pred", pred, "--ref", tmp_path / "annotation.json", "--out", out)
    assert run(capsys, *args, "--split", "val", "--dataset", "iu_xray")[0] == 0
    assert json.loads(out.read_text())["n"] == 3
    # The default split is test, whose ids differ from the predictions'.
    code, _, err = run(capsys, *args)
    assert_one_line_error(code, err, "only in", "'test-0'", "'val-0'")


def test_score_identical_reports(tmp_path, capsys, no_java):
    """Identical reports score BLEU-4 about 1 and CE F1 1 (or 0 where nothing is positive)."""
    pred, ref = write_json(tmp_path / "pred.json", REF), write_json(tmp_path / "ref.json", REF)
    assert run(capsys, "score", "--pred", pred, "--ref", ref, "--out", tmp_path / "s.json")[0] == 0
    scores = json.loads((tmp_path / "s.json").read_text())
    assert scores["nlg"]["BLEU-4"] == pytest.approx(1.0, abs=1e-6)
    assert scores["ce"]["micro"]["f1"] == pytest.approx(1.0)


@pytest.mark.parametrize(
    "content, expected",
    [
        (b"{not json", "not valid JSON (line 1"),
        (b'["a", "b"]', "expected a JSON object mapping id to report text, got a list"),
        (b'{"s1": "ok", "s2": 3, "s3": ["x"]}', "2 values are not report text (strings): ids 's2', 's3'"),
        (b'{"s1": "caf\xe9"}', "not UTF-8 text (byte 0xe9 at offset 11"),
        (b'{"s1": "a", "s1": "b"}', "key given twice: 's1'"),
    ],
)
def test_score_bad_prediction_file(tmp_path, capsys, content, expected):
    pred = tmp_path / "pred.json"
    pred.write_bytes(content)
    ref = write_json(tmp_path / "ref.json", REF)
    code, _, err = run(capsys, "score", "--pred", pred, "--ref", ref, "--out", tmp_path / "s.json")
    assert_one_line_error(code, err, pred, expected)


def test_score_ids_in_one_file_only(tmp_path, capsys):
    pred = write_json(tmp_path / "pred.json", {**PRED, "extra": "Clear."})
    ref = write_json(tmp_path / "ref.json", {k: v for k, v in REF.items() if k != "s2"})
    code, _, err = run(capsys, "score", "--pred", pred, "--ref", ref, "--out", tmp_path / "s.json")
    assert_one_line_error(code, err, pred, ref, "2 only in", "'extra', 's2'", "0 only in")
    assert not (tmp_path / "s.json").exists()


def test_score_empty_reports(tmp_path, capsys):
    pred = write_json(tmp_path / "pred.json", PRED)
    ref = write_json(tmp_path / "ref.json", {**REF, "s1": " ", "s3": ""})
    code, _, err = run(capsys, "score", "--pred", pred, "--ref", ref, "--out", tmp_path / "s.json")
    assert_one_line_error(code, err, ref, "2 empty reports: ids 's1', 's3'")


def test_score_missing_file(tmp_path, capsys):
    ref = write_json(tmp_path / "ref.json", REF)
    code, _, err = run(capsys, "score", "--pred", tmp_path / "p.json", "--ref", ref, "--out", tmp_path / "s.json")
    assert_one_line_error(code, err, tmp_path / "p.json", "not found")


# --- report ----------------------------------------------------------------------------------


CE_VARIANTS = ("micro", "macro", "example", "micro5", "abnormal")


def _scores(meteor: float | None, f1: float, variants: tuple[str, ...] = CE_VARIANTS) -> dict:
    nlg = {m: 0.1 * (k + 1) for k, m in enumerate(NLG)} | {"METEOR": meteor}
    return {"n": 42, "nlg": nlg, "ce": {v: {"precision": f1, "recall": f1, "f1": f1} for v in variants}}


def test_report_end_to_end(tmp_path, capsys):
    (tmp_path / "site-1").mkdir()
    first = write_json(tmp_path / "site-1" / "scores.json", _scores(0.25, 0.5))
    # A scores file written before the abnormal variant existed: read, its abnormal column n/a.
    second = write_json(tmp_path / "global.json", _scores(None, 0.123456, CE_VARIANTS[:-1]))
    out = tmp_path / "out" / "report.md"
    code, printed, _ = run(capsys, "report", first, second, "--out", out)
    assert code == 0
    png = tmp_path / "out" / "report.png"
    assert str(out) in printed and str(png) in printed
    text = out.read_text()
    assert "| result | n | BLEU-1 | BLEU-2 | BLEU-3 | BLEU-4 | METEOR | ROUGE-L | CIDEr | CE-F1 micro |" in text
    assert "| CE-F1 micro5 | CE-F1 abnormal |" in text
    assert (
        "| site-1 | 42 | 0.100 | 0.200 | 0.300 | 0.400 | 0.250 | 0.600 | 0.700 "
        "| 0.500 | 0.500 | 0.500 | 0.500 | 0.500 |" in text
    )
    assert (
        "| global | 42 | 0.100 | 0.200 | 0.300 | 0.400 | n/a | 0.600 | 0.700 | 0.123 | 0.123 | 0.123 | 0.123 | n/a |"
        in text
    )
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_report_of_a_real_scores_file(tmp_path, capsys, no_java):
    pred, ref = write_json(tmp_path / "pred.json", PRED), write_json(tmp_path / "ref.json", REF)
    assert run(capsys, "score", "--pred", pred, "--ref", ref, "--out", tmp_path / "fedavg.json")[0] == 0
    assert run(capsys, "report", tmp_path / "fedavg.json", "--out", tmp_path / "r.md")[0] == 0
    assert "| fedavg | 3 |" in (tmp_path / "r.md").read_text()


BAD_ABNORMAL = _scores(0.2, 0.3, CE_VARIANTS[:-1])
BAD_ABNORMAL["ce"]["abnormal"] = {"precision": 0.3}  # present, but without an f1


@pytest.mark.parametrize("data", [{"s1": "a report"}, {"n": 3, "nlg": {"BLEU-1": 0.1}, "ce": {}}, [1, 2], BAD_ABNORMAL])
def test_report_rejects_other_files(tmp_path, capsys, data):
    good = write_json(tmp_path / "good.json", _scores(0.2, 0.3))
    bad = write_json(tmp_path / "pred.json", data)
    code, _, err = run(capsys, "report", good, bad, "--out", tmp_path / "r.md")
    assert_one_line_error(code, err, bad, "not a scores file")
    assert not (tmp_path / "r.md").exists()


def test_report_out_must_not_be_the_png(tmp_path, capsys):
    good = write_json(tmp_path / "good.json", _scores(0.2, 0.3))
    code, _, err = run(capsys, "report", good, "--out", tmp_path / "r.png")
    assert_one_line_error(code, err, "r.png", ".md")


def test_help_lists_the_commands(capsys):
    with pytest.raises(SystemExit):
        main(["--help"])
    printed = capsys.readouterr().out
    for command in ("label", "score", "report"):
        assert command in printed
