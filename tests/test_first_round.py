"""The first round names the initial model by its digest: every site builds the same one itself, and a
site whose own model differs asks for the state and gets it (no site trains from a model it was not sent)."""

from __future__ import annotations

import dataclasses

import torch
from nvflare.app_common.abstract.fl_model import FLModel

from fedmrg.fl import messages as msg
from fedmrg.fl.controller import FedMRGController
from fedmrg.fl.site import SiteTrainer
from fedmrg.fl.wire import WIRE_BYTES


def test_sites_of_one_job_build_the_same_initial_model_and_another_seed_does_not(site_cfg, tiny_bench, tmp_path):
    one = SiteTrainer(site_cfg, "site-1", tiny_bench / "site-1", tmp_path / "one")
    two = SiteTrainer(site_cfg, "site-2", tiny_bench / "site-2", tmp_path / "two")
    digest = msg.state_digest(one.model.shared_state_dict())
    assert msg.state_digest(two.model.shared_state_dict()) == digest
    reseeded = dataclasses.replace(site_cfg, train=dataclasses.replace(site_cfg.train, seed=site_cfg.train.seed + 1))
    other = SiteTrainer(reseeded, "site-2", tiny_bench / "site-2", tmp_path / "other")
    assert msg.state_digest(other.model.shared_state_dict()) != digest


def test_the_digest_changes_with_any_value_name_or_shape():
    state = {"a": torch.zeros(2, 3), "b": torch.ones(4)}
    digest = msg.state_digest(state)
    assert msg.state_digest({"b": torch.ones(4), "a": torch.zeros(2, 3)}) == digest  # order does not matter
    assert msg.state_digest({**state, "b": torch.tensor([1.0, 1.0, 1.0, 1.0 + 1e-7])}) != digest
    assert msg.state_digest({"a": torch.zeros(3, 2), "b": torch.ones(4)}) != digest
    assert msg.state_digest({"c": torch.zeros(2, 3), "b": torch.ones(4)}) != digest


def result(site: str, **meta) -> FLModel:
    return FLModel(params={}, meta={msg.CLIENT_NAME: site, **meta})


def test_a_site_whose_model_differs_gets_the_state_and_the_others_only_the_digest():
    controller = FedMRGController(config={}, rounds=2)
    controller.info = lambda text: None
    initial = {"w": torch.arange(3.0)}
    state = {"rounds": [], "global": initial, "digest": msg.state_digest(initial), "change": b"", "prototypes": None}
    sent: list[tuple[FLModel, list[str] | None]] = []
    trained = result("site-2", **{WIRE_BYTES: 900, msg.BYTES_DOWN: 5000, msg.TRAIN_STUDIES: 7})

    def broadcast(task, data):
        sent.append((data, None))
        return [
            result("site-1", **{WIRE_BYTES: 900, msg.BYTES_DOWN: 300, msg.TRAIN_STUDIES: 5}),
            result("site-2", **{WIRE_BYTES: 100, msg.BYTES_DOWN: 300, msg.NEED_GLOBAL: 1}),
        ]

    def send_to(task, data, targets):
        sent.append((data, targets))
        return [trained]

    controller._send_to_sites = broadcast
    controller.send_model_and_wait = send_to
    results, asked = controller._gather(msg.TRAIN, state, 0)
    first, again = sent
    assert first[0].params == {} and first[0].meta[msg.GLOBAL_DIGEST] == msg.state_digest(state["global"])
    assert again[1] == ["site-2"] and list(again[0].params) == ["w"]
    assert [r.meta[msg.CLIENT_NAME] for r in results] == ["site-1", "site-2"] and results[1] is trained
    assert asked == {"site-2": 300}  # the digest message it was sent first counts in its download


def test_later_rounds_send_the_change_or_with_download_state_the_state():
    controller = FedMRGController(config={}, rounds=2)
    model = {"w": torch.arange(3.0)}
    state = {"rounds": [{"round": 0}], "global": model, "digest": "d1", "base": "d0", "prototypes": None}
    sent = []
    controller._send_to_sites = lambda task, data: sent.append(data) or []
    for change in (b"payload", None):
        assert controller._gather(msg.TRAIN, {**state, "change": change}, 1) == ([], {})
    as_change, as_state = sent
    assert list(as_change.params) == [msg.GLOBAL_CHANGE] and as_change.params[msg.GLOBAL_CHANGE].tobytes() == b"payload"
    assert as_change.meta[msg.BASE_DIGEST] == "d0" and as_change.meta[msg.GLOBAL_DIGEST] == "d1"
    assert list(as_state.params) == ["w"] and as_state.meta[msg.GLOBAL_DIGEST] == "d1"


def test_a_site_answers_a_digest_other_than_its_own_model_by_asking_and_trains_on_its_own(
    site_cfg, tiny_bench, tmp_path
):
    from nvflare.apis.fl_context import FLContext
    from nvflare.apis.signal import Signal
    from nvflare.app_common.utils.fl_model_utils import FLModelUtils

    from fedmrg.config import config_to_dict
    from fedmrg.fl.executor import MRGExecutor
    from fedmrg.fl.privacy import result_problems

    site = SiteTrainer(site_cfg, "site-1", tiny_bench / "site-1", tmp_path / "state")
    executor = MRGExecutor(config_to_dict(site_cfg), run_name="first-round", test_limit=2)
    executor.site, executor.trainer = "site-1", site
    own = site.model.shared_state_dict()

    def train(digest: str):
        request = FLModel(params={}, current_round=0, total_rounds=2, meta={msg.GLOBAL_DIGEST: digest, WIRE_BYTES: 321})
        reply = executor.execute(msg.TRAIN, FLModelUtils.to_shareable(request), FLContext(), Signal())
        assert result_problems(reply, msg.TRAIN) == []  # what a hospital's result guard admits
        return FLModelUtils.from_shareable(reply)

    asked = train("0" * 64)
    assert asked.params == {} and asked.meta == {msg.NEED_GLOBAL: 1, msg.BYTES_DOWN: 321}
    assert site.rounds_done == 0 and all(torch.equal(v, own[k]) for k, v in site.model.shared_state_dict().items())
    trained = train(msg.state_digest(own))
    assert msg.UPDATE in trained.params and trained.meta[msg.BYTES_DOWN] == 321 and site.rounds_done == 1
