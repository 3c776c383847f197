"""The run summary's section on the global model's held-out split: figures and abnormal studies."""

from __future__ import annotations

from fedmrg.eval.report import score_reports
from fedmrg.fl.results import held_out_markdown

REFERENCES = {
    "a": "The heart is enlarged. There is a small right pleural effusion.",
    "b": "The heart is normal in size. The lungs are clear.",
    "c": "There is a right pneumothorax. The heart is normal in size.",
}
PREDICTIONS = {
    "a": "The heart is enlarged. The lungs are clear.",
    "b": "The heart is normal in size. The lungs are clear.",
    "c": "The heart is normal in size. The lungs are clear.",
}


def test_the_held_out_section_names_the_findings_of_abnormal_studies():
    scores = score_reports(PREDICTIONS, REFERENCES)
    text = held_out_markdown("test-global", scores, PREDICTIONS, REFERENCES, count=5)
    assert "## The global model on test-global (3 studies, held out from every site)" in text
    figures = text.splitlines()[4].split(" | ")
    assert (figures[5], figures[6]) == ("1.000", "0.333")  # abnormal P (1 of 1) and R (1 of 3)
    assert "- a, generated (Cardiomegaly): The heart is enlarged. The lungs are clear." in text
    assert "  reference (Cardiomegaly, Pleural Effusion): The heart is enlarged." in text
    assert "- c, generated (no abnormal finding)" in text and "reference (Pneumothorax)" in text
    assert "- b," not in text  # a normal reference is not shown
