"""The download: each round's compressed change, applied alike at the server and every site; a site
that holds another model (it missed a round, lost its state, or is new) gets the whole state once.

The federation tests run the server's round (``FedMRGController._run_round``) against real site
executors in this process, with FLARE's messaging replaced by direct calls."""

from __future__ import annotations

import pytest
import torch
from nvflare.apis.fl_context import FLContext
from nvflare.apis.signal import Signal
from nvflare.app_common.abstract.fl_model import FLModel
from nvflare.app_common.utils.fl_model_utils import FLModelUtils

from fedmrg.config import config_to_dict
from fedmrg.fl import messages as msg
from fedmrg.fl.aggregator import LowRankAggregator
from fedmrg.fl.codec import CodecSpec, Factored
from fedmrg.fl.controller import FedMRGController, initial_state
from fedmrg.fl.downlink import Downlink, apply_change, expanded, read_change
from fedmrg.fl.executor import MRGExecutor
from fedmrg.fl.site import SiteTrainer
from fedmrg.fl.wire import WIRE_BYTES

SITES = ("site-1", "site-2")


# ------------------------------------------------------------------------------ the arithmetic
def state_of(seed: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {
        "proj.weight": torch.randn(96, 80, generator=g),
        "llm.q.lora_A.generic.weight": torch.randn(8, 64, generator=g),
        "llm.q.lora_B.generic.weight": torch.randn(64, 8, generator=g),
        "head.bias": torch.randn(14, generator=g),
    }


def low_rank_step(start: dict[str, torch.Tensor], seed: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    step = {name: 0.01 * torch.randn(value.shape, generator=g) for name, value in start.items()}
    step["proj.weight"] = 0.1 * torch.randn(96, 2, generator=g) @ torch.randn(2, 80, generator=g)
    return {name: start[name] + step[name] for name in start}


SPEC = CodecSpec(rank=4, dense_below=1024)


def test_a_site_applying_the_payload_gets_the_servers_model_bit_for_bit():
    start = state_of(0)
    payload, server = Downlink(SPEC).step(start, low_rank_step(start, 1))
    site = apply_change(start, read_change(payload, start, SPEC.rank))
    assert all(torch.equal(site[name], server[name]) for name in start)
    assert msg.state_digest(site) == msg.state_digest(server)
    assert len(payload) * 3 < msg.state_bytes(start)  # the large matrix travels as rank-4 factors


def test_a_factored_change_is_multiplied_out_in_a_fixed_order():
    g = torch.Generator().manual_seed(3)
    change = Factored(torch.randn(50, 6, generator=g), torch.randn(6, 40, generator=g))
    once = expanded(change)
    torch.testing.assert_close(once, change.left @ change.right)
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        assert torch.equal(expanded(change), once)
    finally:
        torch.set_num_threads(threads)


def test_what_the_compression_leaves_out_is_sent_in_later_rounds():
    """The sites' model plus the server's residual is the model full-state downloads would give (the
    start plus every round's merged change); without the residual the sites drift further from it."""

    start = state_of(0)
    step = {name: value - start[name] for name, value in low_rank_step(start, 1).items()}  # every round's change

    def run(feedback: bool) -> float:
        downlink, held, ideal = Downlink(CodecSpec(rank=1, dense_below=256)), start, start
        for _ in range(20):
            merged = {name: held[name] + step[name] for name in held}  # the merge, on the model the sites hold
            ideal = {name: ideal[name] + step[name] for name in held}
            _, held = downlink.step(held, merged)
            if feedback:
                for name in held:
                    torch.testing.assert_close(held[name] + downlink.residual[name], ideal[name], atol=1e-4, rtol=0)
            else:
                downlink.residual = {}
        return sum(float((ideal[name] - held[name]).norm()) for name in held)

    assert run(feedback=True) < 0.3 * run(feedback=False)


def test_a_change_for_another_model_is_refused_before_any_arithmetic():
    start = state_of(0)
    payload, _ = Downlink(SPEC).step(start, low_rank_step(start, 1))
    other = {**start, "head.bias": torch.zeros(15)}
    with pytest.raises(ValueError, match="head.bias: shape"):
        read_change(payload, other, SPEC.rank)
    with pytest.raises(ValueError, match="missing entries: extra"):
        read_change(payload, {**start, "extra": torch.zeros(3)}, SPEC.rank)
    with pytest.raises(ValueError, match="rank 4 above the bound 2"):
        read_change(payload, start, 2)
    with pytest.raises(ValueError, match="format|unreadable"):
        read_change(b"\x08" + bytes(40), start, SPEC.rank)


def test_the_lora_pair_the_server_sends_is_turned_towards_the_sites_pair():
    """Re-factorizing the merged product picks a new SVD basis; turned back towards the pair the sites
    hold, the change of B and A is the round's change, not a rotation of the whole adapter."""
    from fedmrg.fl.merge import aligned, refactorize

    g = torch.Generator().manual_seed(5)
    b, a = torch.randn(64, 8, generator=g), torch.randn(8, 48, generator=g)
    small = Factored(0.01 * torch.randn(64, 2, generator=g), torch.randn(2, 48, generator=g))
    new_b, new_a, _ = refactorize(Factored(b, a) + small, 8)
    turned_b, turned_a = aligned(new_b, new_a, b, a)
    torch.testing.assert_close(turned_b @ turned_a, new_b @ new_a, atol=1e-4, rtol=1e-4)
    moved = float((turned_b - b).norm() + (turned_a - a).norm())
    assert moved < 0.2 * float((new_b - b).norm() + (new_a - a).norm())


# ------------------------------------------------------------------------------ the federation
class Federation:
    """A server's rounds against site executors in this process (FLARE's messaging replaced by calls)."""

    def __init__(self, cfg, bench, root) -> None:
        self.cfg, self.bench, self.root = cfg, bench, root
        self.executors = {site: self.start(site) for site in SITES}
        self.absent: set[str] = set()
        self.sent: dict[str, list[FLModel]] = {site: [] for site in SITES}
        self.controller = self.server()
        self.state = initial_state(self.call("site-1", msg.SUBMIT_MODEL, FLModel(params={})))

    def server(self) -> FedMRGController:
        controller = FedMRGController(config=config_to_dict(self.cfg), rounds=self.cfg.fl.rounds)
        controller.info = controller.warning = lambda text: None
        controller.abort_signal = Signal()
        controller.out = controller.state_dir = self.root / "server"
        dim = self.cfg.model.contrastive_dim if self.cfg.model.contrastive else None
        controller.aggregator = LowRankAggregator(max_rank=self.cfg.fl.rank, prototype_dim=dim)
        controller.aggregator.info = controller.aggregator.warning = lambda text: None
        controller.downlink = Downlink(CodecSpec.of(self.cfg.fl))
        controller._send_to_sites = lambda task, data: self.broadcast(task, data, None)
        controller.send_model_and_wait = lambda task, data, targets=None: self.broadcast(task, data, targets)
        return controller

    def start(self, site: str) -> MRGExecutor:
        """A site's executor on its state folder (a restart when one ran there before)."""
        executor = MRGExecutor(config_to_dict(self.cfg), run_name="download", test_limit=2)
        executor.site = site
        executor.trainer = SiteTrainer(self.cfg, site, self.bench / site, self.root / site)
        return executor

    def call(self, site: str, task: str, data: FLModel) -> FLModel:
        shareable = FLModelUtils.to_shareable(data)
        request = FLModelUtils.from_shareable(shareable)
        request.meta[WIRE_BYTES] = msg.state_bytes(request.params)  # the values: what a WireMeter would count
        if task != msg.SUBMIT_MODEL:
            self.sent[site].append(request)
        reply = FLModelUtils.from_shareable(
            self.executors[site].execute(task, FLModelUtils.to_shareable(request), FLContext(), Signal())
        )
        reply.meta[msg.CLIENT_NAME] = site
        reply.meta[WIRE_BYTES] = msg.state_bytes(reply.params)
        return reply

    def broadcast(self, task: str, data: FLModel, targets) -> list[FLModel]:
        return [self.call(site, task, data) for site in targets or SITES if site not in self.absent]

    def round(self, number: int) -> dict:
        assert self.controller._run_round(self.state, number)
        return self.state["rounds"][-1]


@pytest.fixture
def federation(site_cfg, tiny_bench, tmp_path):
    """Two sites of the tiny config, 3 rounds of 2 local steps (slow: about a minute per test)."""
    return Federation(site_cfg, tiny_bench, tmp_path)


def held(federation: Federation, site: str) -> dict[str, torch.Tensor]:
    return federation.executors[site].trainer.global_state


@pytest.mark.slow
def test_every_site_trains_from_the_servers_model_bit_for_bit(federation, monkeypatch):
    started_from = {}
    train_round = SiteTrainer.train_round

    def spy(trainer, round_number, abort=None):
        started_from[trainer.site, round_number] = trainer.model.shared_state_dict()
        return train_round(trainer, round_number, abort)

    monkeypatch.setattr(SiteTrainer, "train_round", spy)
    dense = msg.state_bytes(federation.state["global"])
    for number in range(3):
        server_model = {k: v.clone() for k, v in federation.state["global"].items()}
        record = federation.round(number)
        assert record["site_digests"] == {site: msg.state_digest(server_model) for site in SITES}
        for site in SITES:
            trained_from = started_from[site, number]
            assert all(torch.equal(trained_from[k].float(), server_model[k]) for k in server_model)
            request = federation.sent[site][-1]
            if number == 0:  # every site built the initial model itself
                assert request.params == {} and record["bytes_down"][site] < 1000
            else:
                assert list(request.params) == [msg.GLOBAL_CHANGE]
                assert 2 * record["bytes_down"][site] < dense
        assert record["merged"] and federation.state["digest"] != record["global_digest"]
    tampered = federation.controller._global_message(federation.state, 3)
    tampered.meta[msg.GLOBAL_DIGEST] = "0" * 64  # a change that does not give the server's model
    reply = federation.call("site-1", msg.TRAIN, tampered)
    assert reply.meta.get(msg.NEED_GLOBAL) == 1 and msg.UPDATE not in reply.params


@pytest.mark.slow
def test_a_site_that_missed_a_round_gets_the_state_once_and_restarts_lose_nothing(federation):
    """Round 2 of 3 after site-2 missed round 1 and the server (a resubmitted job, from its checkpoint)
    and site-1 (from its state folder) restarted: site-1 applies the change it was due, site-2 holds an
    older model and gets the whole state; both then train from the server's model."""
    federation.round(0)
    federation.absent = {"site-2"}
    federation.round(1)
    federation.absent = set()
    federation.controller._save_state(federation.state)
    residual = federation.controller.downlink.state_dict()
    federation.controller = federation.server()
    federation.state = federation.controller._load_state()
    assert federation.state["change"] and residual.keys() == federation.controller.downlink.residual.keys()
    assert all(torch.equal(value, federation.controller.downlink.residual[name]) for name, value in residual.items())
    held_before = held(federation, "site-1")
    federation.executors["site-1"] = federation.start("site-1")
    assert federation.executors["site-1"].trainer.global_digest == msg.state_digest(held_before)

    record = federation.round(2)
    assert [list(m.params) for m in federation.sent["site-1"][2:]] == [[msg.GLOBAL_CHANGE]]
    asked, whole = federation.sent["site-2"][1:]
    assert list(asked.params) == [msg.GLOBAL_CHANGE] and set(whole.params) == set(federation.state["global"])
    assert set(record["site_digests"].values()) == {record["global_digest"]}
    assert record["bytes_down"]["site-2"] > msg.state_bytes(whole.params) > record["bytes_down"]["site-1"]
    assert sorted(record["accepted"]) == list(SITES)
