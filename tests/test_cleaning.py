"""Report cleaning must give R2Gen's exact text: published scores are computed on it."""

import pytest

from fedmrg.data.cleaning import clean_iu_xray, clean_mimic_cxr, clean_report


@pytest.mark.parametrize(
    "raw, expected",
    [
        # list numbering is removed; sentences split on ". "
        (
            "1. The heart is normal. 2. No effusion. 3. Lungs clear.",
            "the heart is normal . no effusion . lungs clear .",
        ),
        # runs of dots collapse
        ("Heart size normal.... No pneumothorax..", "heart size normal . no pneumothorax ."),
        # hyphens and digits survive; de-identification tokens are lower-cased, not removed
        ("Stable x-XXXX of the T11-12 vertebra.", "stable x-xxxx of the t11-12 vertebra ."),
        ("There are no XXXX of a pleural effusion.", "there are no xxxx of a pleural effusion ."),
        # colons, commas, parentheses, quotes and slashes are deleted inside sentences
        ('Lungs: clear, (no "focal" airspace/disease).', "lungs clear no focal airspacedisease ."),
        # the "1. " rule fires inside numbers too, as in R2Gen
        ("Compared to 11. 21. prior.", "compared to 12prior ."),
        # text without a final period still gets " ."
        ("No acute disease", "no acute disease ."),
        # an empty sentence is kept, as in R2Gen
        ("Normal. . Clear.", "normal .  . clear ."),
    ],
)
def test_iu_xray_cleaning_matches_r2gen(raw, expected):
    assert clean_iu_xray(raw) == expected


def test_repeated_characters_are_halved_a_fixed_number_of_times():
    # R2Gen halves "  " six times for MIMIC-CXR: up to 64 spaces become one, 70 leave two
    assert clean_mimic_cxr("a" + " " * 64 + "b") == "a b ."
    assert clean_mimic_cxr("a" + " " * 70 + "b") == "a  b ."
    # IU X-ray does not touch spaces at all
    assert clean_iu_xray("a   b") == "a   b ."


def test_mimic_cleaning_handles_newlines_underscores_and_spaces():
    raw = "FINDINGS:\n1. PA and lateral views ___ of the chest.   2. No effusion.\n\nIMPRESSION: ___"
    assert clean_mimic_cxr(raw) == "findings pa and lateral views  of the chest . no effusion . impression  ."


def test_clean_report_dispatches_on_dataset():
    text = "Heart:\nnormal."
    assert clean_report(text, "iu_xray") == "heart\nnormal ."
    assert clean_report(text, "mimic_cxr") == "heart normal ."
