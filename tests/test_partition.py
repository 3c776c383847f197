"""Dealing studies: held-out sets, sites (style / label / iid), stratified splits."""

from collections import Counter

import numpy as np
import pytest

from fedmrg.data.partition import (
    assign_sites,
    balanced_kmeans,
    label_partition,
    stratified_split,
    stratum_keys,
    style_partition,
)
from fedmrg.data.synthetic import synthetic_reports
from fedmrg.errors import DataError


def test_stratum_is_the_rarest_category():
    keys = stratum_keys([["normal"], ["cardiomegaly", "effusion"], ["effusion"], ["effusion"], []])
    assert keys == ["normal", "cardiomegaly", "effusion", "effusion", "normal"]


def test_stratified_split_is_a_partition_with_proportional_strata():
    rng = np.random.default_rng(0)
    keys = ["normal"] * 700 + ["effusion"] * 200 + ["pneumothorax"] * 100
    parts = stratified_split(range(1000), keys, [0.7, 0.1, 0.2], rng)
    flat = [i for p in parts for i in p]
    assert sorted(flat) == list(range(1000))  # every study exactly once
    for key, size in (("normal", 700), ("effusion", 200), ("pneumothorax", 100)):
        per_part = [sum(keys[i] == key for i in p) for p in parts]
        assert per_part == pytest.approx([0.7 * size, 0.1 * size, 0.2 * size], abs=1)


def test_tiny_strata_land_in_every_split_over_many_draws():
    rng = np.random.default_rng(1)
    landed = Counter()
    for _ in range(300):
        parts = stratified_split([0], ["rare"], [0.5, 0.25, 0.25], rng)
        landed[next(k for k, p in enumerate(parts) if p)] += 1
    assert all(landed[k] > 40 for k in range(3))


def test_label_partition_skews_labels_and_keeps_every_site_usable():
    keys = ["a"] * 300 + ["b"] * 300 + ["c"] * 300
    skewed = label_partition(keys, 3, alpha=0.3, rng=np.random.default_rng(0))
    uniform = label_partition(keys, 3, alpha=1000.0, rng=np.random.default_rng(0))
    assert np.bincount(skewed, minlength=3).min() >= 150

    def spread(sites):  # how unevenly each label is shared between sites
        return np.mean([np.std(np.bincount(sites[np.array(keys) == k], minlength=3)) for k in "abc"])

    assert spread(skewed) > 3 * spread(uniform)


def test_label_partition_fails_clearly_when_impossible():
    with pytest.raises(DataError, match="could not give each of 5 sites"):
        label_partition(["a"] * 6, 5, alpha=0.01, rng=np.random.default_rng(0), min_share=1.0)


def test_balanced_kmeans_respects_size_bounds():
    rng = np.random.default_rng(0)
    points = np.concatenate([rng.normal(0, 0.1, (400, 5)) + 3, rng.normal(0, 0.1, (50, 5)) - 3])
    points /= np.linalg.norm(points, axis=1, keepdims=True)
    labels = balanced_kmeans(points, 3, seed=0, slack=0.25)
    sizes = np.bincount(labels, minlength=3)
    assert sizes.sum() == 450 and sizes.min() >= 112 and sizes.max() <= 188


def test_style_partition_recovers_house_styles_from_text_alone():
    reports, styles = synthetic_reports(400, seed=3)
    sites, phrases = style_partition([r.findings for r in reports], 4, seed=0)
    purity = sum(Counter(np.array(styles)[sites == s]).most_common(1)[0][1] for s in range(4)) / len(styles)
    assert purity > 0.9
    assert all(len(p) == 5 for p in phrases.values())


def test_assign_sites_is_deterministic_for_a_seed():
    reports, _ = synthetic_reports(120, seed=0)
    texts = [r.findings for r in reports]
    keys = ["normal"] * 120
    for kind in ("style", "label", "iid"):
        a, _ = assign_sites(kind, texts, keys, 3, seed=7, alpha=0.5)
        b, _ = assign_sites(kind, texts, keys, 3, seed=7, alpha=0.5)
        assert np.array_equal(a, b) and set(a) == {0, 1, 2}
