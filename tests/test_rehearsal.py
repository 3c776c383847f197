"""Rehearsal of public studies in training (train.public_data): what each epoch holds, and that a site
counts only its own studies."""

from __future__ import annotations

import pytest
import torch

from fedmrg.config import load_config
from fedmrg.data.loaders import RehearsalSampler, loader_records, own_studies, training_loader
from fedmrg.model.mrg import MRGModel
from fedmrg.model.training import Trainer


def test_an_epoch_holds_every_own_study_once_and_a_fresh_public_draw():
    generator = torch.Generator().manual_seed(0)
    sampler = RehearsalSampler(own=10, public=30, extra=5, generator=generator)
    first, second = list(sampler), list(sampler)
    for epoch in (first, second):
        assert len(epoch) == len(sampler) == 15
        assert sorted(i for i in epoch if i < 10) == list(range(10))
        public = [i for i in epoch if i >= 10]
        assert len(set(public)) == 5 and all(i < 40 for i in public)
    assert {i for i in first if i >= 10} != {i for i in second if i >= 10}
    assert first[:10] != sorted(first[:10])  # own and public studies shuffled together


def test_a_reseeded_epoch_repeats_its_order():
    """A resumed epoch skips the batches trained before the stop: the order must be the same again."""
    generator = torch.Generator()
    sampler = RehearsalSampler(own=8, public=20, extra=8, generator=generator)
    generator.manual_seed(3)
    before = list(sampler)
    generator.manual_seed(3)
    assert list(sampler) == before


def test_more_rehearsal_than_public_studies_takes_each_once():
    sampler = RehearsalSampler(own=4, public=3, extra=10, generator=torch.Generator().manual_seed(0))
    assert sorted(sampler) == list(range(7))


def test_training_loader_mixes_public_studies_and_counts_the_own(tiny_bench):
    plain = training_loader(load_config("tiny"), [tiny_bench / "site-1"])
    cfg = load_config("tiny", {"train.public_data": str(tiny_bench / "public"), "train.public_share": 0.5})
    mixed = training_loader(cfg, [tiny_bench / "site-1"])
    own = own_studies(plain)
    assert own_studies(mixed) == own
    assert len(mixed.sampler) == own + round(0.5 * own)
    public_ids = {record["id"] for record in mixed.dataset.datasets[1].data}
    seen = [key for batch in mixed for key in batch["id"]]
    assert len(seen) == len(mixed.sampler)
    assert sum(key in public_ids for key in seen) == round(0.5 * own)


def test_several_sites_with_rehearsal_give_their_records_and_class_counts(tiny_bench, tiny_base_llm):
    """Centralized training over several sites rehearses too: the sites and the public studies are
    nested datasets, and the diagnosis priors count every study the loader trains on."""
    sites = [tiny_bench / "site-1", tiny_bench / "site-2"]
    cfg = load_config("tiny", {"train.public_data": str(tiny_bench / "public")})
    own = loader_records(training_loader(load_config("tiny"), sites))
    mixed = training_loader(cfg, sites)
    records = loader_records(mixed)
    assert [r["id"] for r in records[: len(own)]] == [r["id"] for r in own] and len(records) > len(own)
    assert own_studies(mixed) == len(own) and not any(r["rehearsed"] for r in records[: len(own)])
    model = MRGModel.build(cfg, tiny_base_llm, device="cpu")
    Trainer(model, cfg, total_steps=1).set_class_counts(mixed)
    assert model.diagnosis.class_counts.sum(-1).eq(len(records)).all()


def test_public_share_must_be_positive():
    with pytest.raises(Exception, match="train.*public_share: must be > 0"):
        load_config("tiny", {"train.public_share": 0})
