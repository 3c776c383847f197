"""`fedmrg review-page`: the HTML page of a split's studies, their images, reports and findings."""

from __future__ import annotations

import base64
import io
import json
import re

import numpy as np
import pytest
from PIL import Image

from fedmrg.cli import main
from fedmrg.data.annotation import read_annotation, write_annotation
from fedmrg.data.images import save_dicom, save_png
from fedmrg.eval.ce import VARIANTS
from fedmrg.eval.nlg import prepare_text
from fedmrg.labels.labeler import label_matrix
from fedmrg.labels.observations import OBSERVATIONS

NORMAL = "The heart is normal in size. The lungs are clear."
EFFUSION = " There is a large right pleural effusion."
SCRIPT = "<script>alert('x')</script> & more"
IMG = re.compile(r'<img src="data:image/png;base64,([A-Za-z0-9+/=]+)"')


def run(capsys, *argv) -> tuple[int, str, str]:
    code = main([str(a) for a in argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def positives(text: str) -> set[str]:
    """Findings the labeler reads as positive, No Finding and Support Devices aside."""
    row = label_matrix([prepare_text(text)])[0]
    return {name for name, v in zip(OBSERVATIONS, row) if v == 1 and name not in ("No Finding", "Support Devices")}


def section(page: str, study_id: str) -> str:
    """The <section> of one study."""
    found = re.search(
        rf'<section class="study[^"]*" id="study-\d+"><h2>\d+\. {re.escape(study_id)} .*?</section>', page
    )
    assert found, f"no section for {study_id}"
    return found.group(0)


def mark_of(study_html: str, observation: str) -> str:
    """The agreement cell of one observation's row."""
    row = re.search(rf"<tr[^>]*><td>{re.escape(observation)}</td>(.*?)</tr>", study_html)
    assert row, observation
    return row.group(1).rsplit("<td>", 1)[1]


@pytest.fixture(scope="module")
def review(tiny_bench, tmp_path_factory):
    """Predictions for the tiny benchmark's test-global split: one study misses a finding, one adds
    one, one has markup in its text, the rest copy their reference."""
    data = tiny_bench / "test-global"
    rows = read_annotation(data / "annotation.json").rows("test")
    abnormal = next(r for r in rows if positives(r["report"]) and not positives(NORMAL))
    normal = next(
        r for r in rows if not positives(r["report"]) and "Pleural Effusion" in positives(r["report"] + EFFUSION)
    )
    scripted = next(r for r in rows if r not in (abnormal, normal))
    predictions = {r["id"]: r["report"] for r in rows}
    predictions[abnormal["id"]] = NORMAL
    predictions[normal["id"]] = normal["report"] + EFFUSION
    predictions[scripted["id"]] = scripted["report"] + " " + SCRIPT
    tmp = tmp_path_factory.mktemp("review")
    pred = tmp / "pred.json"
    pred.write_text(json.dumps(predictions), encoding="utf-8")
    return {"data": data, "rows": rows, "pred": pred, "tmp": tmp, "abnormal": abnormal, "normal": normal}


def test_page_shows_studies_reports_findings_and_views(review, capsys):
    out = review["tmp"] / "page.html"
    code, printed, _ = run(capsys, "review-page", "--pred", review["pred"], "--data", review["data"], "--out", out)
    assert code == 0, printed
    rows = review["rows"]
    assert f"{len(rows)} of {len(rows)} studies" in printed
    page = out.read_text(encoding="utf-8")
    assert f"{len(rows)} of {len(rows)} studies shown" in page and "test split" in page
    assert all(
        f"<tr><td>{variant}</td><td>0." in page or f"<tr><td>{variant}</td><td>1." in page for variant in VARIANTS
    )
    for row in rows:
        study = section(page, row["id"])
        assert row["report"].replace("'", "&#x27;") in study  # the reference, escaped as html.escape does
        images = IMG.findall(study)
        assert len(images) == len(row["image_path"]) >= 1  # one <img> per view
        thumb = Image.open(io.BytesIO(base64.b64decode(images[0])))
        assert thumb.format == "PNG" and max(thumb.size) <= 256
    assert "<script>" not in page and "&lt;script&gt;alert(&#x27;x&#x27;)&lt;/script&gt; &amp; more" in page

    missed = section(page, review["abnormal"]["id"])
    finding = sorted(positives(review["abnormal"]["report"]))[0]
    assert 'class="mark missed">missed<' in mark_of(missed, finding)
    assert NORMAL in missed and "abnormal reference" in missed

    extra = section(page, review["normal"]["id"])
    assert 'class="mark extra">extra<' in mark_of(extra, "Pleural Effusion")
    assert "1 missed: No Finding<" in extra  # a normal reference's No Finding, lost by the extra finding


def test_abnormal_references_come_first_and_limit(review, capsys):
    out = review["tmp"] / "two.html"
    argv = ["review-page", "--pred", review["pred"], "--data", review["data"], "--out", out, "--limit", "2"]
    code, printed, _ = run(capsys, *argv)
    assert code == 0
    total = len(review["rows"])
    page = out.read_text(encoding="utf-8")
    assert f"2 of {total} studies shown" in page and f"2 of {total} studies" in printed
    shown = re.findall(r'<section class="(study[^"]*)" id="study-\d+"><h2>\d+\. (\S+) ', page)
    assert len(shown) == 2
    assert shown[0] == ("study abnormal", review["abnormal"]["id"])  # abnormal, most missed findings: first


def test_png16_and_monochrome1_display_bone_bright(tmp_path, capsys):
    """A bright left half stays bright however the view is stored; an unreadable view is marked."""
    image = np.full((96, 80), 0.15)
    image[:, :40] = 0.85
    save_png(image, tmp_path / "images" / "a" / "0.png", bits=16)
    save_dicom(image, tmp_path / "images" / "a" / "1.dcm", photometric="MONOCHROME1", window=(2048, 4000))
    (tmp_path / "images" / "b").mkdir()
    (tmp_path / "images" / "b" / "0.png").write_bytes(b"not a png")
    rows = [
        {"id": "a", "report": "Normal chest.", "image_path": ["a/0.png", "a/1.dcm"]},
        {"id": "b", "report": "Normal chest.", "image_path": ["b/0.png"]},
    ]
    write_annotation(tmp_path / "annotation.json", {"test": rows})
    pred = tmp_path / "pred.json"
    pred.write_text(json.dumps({"a": "Normal chest.", "b": "Normal chest."}))
    out = tmp_path / "page.html"
    code, printed, _ = run(capsys, "review-page", "--pred", pred, "--data", tmp_path, "--out", out)
    assert code == 0 and "1 views could not be read" in printed
    page = out.read_text(encoding="utf-8")
    for encoded in IMG.findall(section(page, "a")):
        pixels = np.asarray(Image.open(io.BytesIO(base64.b64decode(encoded))), dtype=float) / 255
        assert pixels.shape == (96, 80)
        assert abs(pixels[:, :40].mean() - 0.85) < 0.02 and abs(pixels[:, 40:].mean() - 0.15) < 0.02
    unreadable = section(page, "b")
    assert not IMG.search(unreadable) and "cannot show this view" in unreadable and "0.png" in unreadable


def test_bad_inputs_are_one_line_errors(review, capsys):
    tmp, data = review["tmp"], review["data"]
    not_json = tmp / "broken.json"
    not_json.write_text("{study: 1", encoding="utf-8")
    code, _, err = run(capsys, "review-page", "--pred", not_json, "--data", data, "--out", tmp / "x.html")
    assert code == 2 and err.startswith("fedmrg: error: ") and err.count("\n") == 1
    assert str(not_json) in err and "not valid JSON" in err

    unknown = tmp / "unknown.json"
    unknown.write_text(json.dumps({"NOPE-1": "Normal.", review["rows"][0]["id"]: "Normal."}))
    code, _, err = run(capsys, "review-page", "--pred", unknown, "--data", data, "--out", tmp / "x.html")
    assert code == 2 and err.count("\n") == 1
    assert str(unknown) in err and "'NOPE-1'" in err and "1 ids not in the 'test' split" in err

    code, _, err = run(capsys, "review-page", "--pred", review["pred"], "--data", data.parent, "--out", tmp / "x.html")
    assert code == 2 and "no annotation.json" in err and "site-1" in err
    assert not (tmp / "x.html").exists()
