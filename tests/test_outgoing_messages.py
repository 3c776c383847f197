"""What leaves a site, checked by content: no local parameter, report, image or per-study label in the
bytes a site sends.

The name checks (``test_fl_jobs.py``, the aggregator's refusal of local names, the result guard) look at
entry names; this test looks at the bytes. It drives one site's executor through the messages of a job
as FLARE calls it (``MRGExecutor.execute``): ``submit_model``, two ``train`` rounds (the second from the
global model and prototypes the real aggregator made of the first round's bytes) and ``validate``. Each
reply is the ``Shareable`` the executor builds (``FLModelUtils.to_shareable``), serialised with FLARE's
FOBS as a site's client serialises a task result, after the same decomposer registration FLARE's
processes do at start-up; the experiment-tracking events the executor fires (metrics for the server's
TensorBoard) are serialised likewise. Those bytes are searched for probes of what must stay at the site:
the local parameters (specialized adapter, client head), the reports, study ids and image names, the
images (files, pixels, preprocessed tensors) and the per-study labels.

What a byte search cannot see: a tensor that went through the codec's low-rank path is sent as SVD
factors of its change, not as its values. That path is checked numerically instead: no entry of a
decoded update looks like the change of a local tensor (:func:`test_no_update_entry_is_a_local_change`).

Expected to leave the site: the prototype sums and counts (per-finding aggregates of the round's
studies), with rows over fewer than ``fl.prototype_min_studies`` studies held back
(:func:`test_no_prototype_row_is_a_single_studys_feature`).
"""

from __future__ import annotations

import contextlib
import json
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
import torch
from nvflare.apis.analytix import AnalyticsData
from nvflare.apis.dxo import DXO, MetaKey
from nvflare.apis.fl_context import FLContext
from nvflare.apis.shareable import Shareable
from nvflare.apis.signal import Signal
from nvflare.app_common.abstract.fl_model import FLModel, ParamsType
from nvflare.app_common.utils.fl_model_utils import FLModelUtils
from nvflare.app_common.widgets import streaming
from nvflare.app_opt.tracking.tb.tb_writer import TBWriter
from nvflare.fuel.utils import fobs
from PIL import Image

from fedmrg.config import config_to_dict, load_config
from fedmrg.data.loaders import split_records, study_loader
from fedmrg.fl import messages as msg
from fedmrg.fl.aggregator import LowRankAggregator
from fedmrg.fl.codec import LORA_A, LORA_B, LORA_PRODUCT, as_dense, decode, matricized, payload_header
from fedmrg.fl.executor import MRGExecutor
from fedmrg.fl.site import SiteTrainer
from fedmrg.labels.observations import OBSERVATIONS
from fedmrg.labels.states import STATE_POSITIVE

pytestmark = pytest.mark.slow

SITE = "site-1"
SPLITS = ("train", "val", "test")
WIDTH = 16  # bytes per probe window: 4 fp32 values, 8 fp16 / bf16 values
FLOATS = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


def _fobs_as_flare_does() -> None:
    """The decomposers FLARE's server and client processes register at start-up (numpy arrays,
    FLModel, DXO, FLContext...); without them FOBS cannot serialise a result at all."""
    try:
        from nvflare.private.fed.utils.fed_utils import nvflare_fobs_initialize
    except ImportError:  # pragma: no cover - FLARE moved it; the public part is what matters here
        from nvflare.app_common.decomposers import common_decomposers

        common_decomposers.register()
    else:
        nvflare_fobs_initialize()


# ------------------------------------------------------------------------------------ the job
@dataclass
class SentJob:
    """Everything one site sent during a short job, as bytes, and what it kept."""

    site: SiteTrainer
    data_dir: Path
    wire: dict[str, bytes] = field(default_factory=dict)  # message -> the serialised reply
    replies: dict[str, FLModel] = field(default_factory=dict)  # message -> the reply read back from its bytes
    local: dict[str, dict[str, torch.Tensor]] = field(default_factory=dict)  # when -> local parameters
    shared: dict[str, dict[str, torch.Tensor]] = field(default_factory=dict)  # when -> shared parameters
    predictions: list[str] = field(default_factory=list)  # the reports validate generated (kept at the site)
    tracked: list[AnalyticsData] = field(default_factory=list)  # the experiment-tracking records sent


def _send(executor: MRGExecutor, task: str, request: FLModel) -> bytes:
    """The bytes of the executor's reply to one task, as FLARE's client would send them."""
    reply = executor.execute(task, FLModelUtils.to_shareable(request), FLContext(), Signal())
    assert isinstance(reply, Shareable) and reply.get_return_code() in (None, "OK"), f"{task}: {reply}"
    return fobs.dumps(reply)


def _read(data: bytes) -> FLModel:
    return FLModelUtils.from_shareable(fobs.loads(data))


def _global_request(
    params: dict[str, torch.Tensor], round_number: int, rounds: int, prototypes: dict | None = None
) -> FLModel:
    """What the controller sends (``FedMRGController._global_message``)."""
    meta = {k: np.asarray(prototypes[k]) for k in (msg.PROTOTYPES, msg.AVAILABLE)} if prototypes else {}
    return FLModel(
        params_type=ParamsType.FULL,
        params=msg.to_numpy(params),
        current_round=round_number,
        total_rounds=rounds,
        meta=meta,
    )


def _merge(cfg, global_state: dict[str, torch.Tensor], round_number: int, reply: FLModel) -> FLModel:
    """The server's side of a round, by the real aggregator, from the reply as the server read it."""
    aggregator = LowRankAggregator(
        max_rank=cfg.fl.rank, max_norm=cfg.fl.max_update_norm, prototype_dim=cfg.model.contrastive_dim
    )
    aggregator.start_round(global_state, round_number)
    reply.meta[msg.CLIENT_NAME] = SITE
    assert aggregator.accept_model(reply), aggregator.refused
    return aggregator.aggregate_model()


class _Engine:
    def new_context(self):
        return contextlib.nullcontext(FLContext())


def _tracking_writer() -> tuple[TBWriter, list[DXO]]:
    """FLARE's ``TBWriter`` (the executor's ``log_writer``) and the events it fires: FLARE's
    ``ConvertToFedEvent`` forwards each to the server, so they leave the site too. Its sender is FLARE's
    own; only the firing (``send_analytic_dxo``) is replaced by keeping the event's DXO."""
    writer, fired = TBWriter(), []
    writer.sender = streaming.AnalyticsSender(writer.event_type, writer.get_writer_name())
    writer.sender.engine = _Engine()
    return writer, fired


@pytest.fixture(scope="module")
def job(tiny_bench, tiny_base_llm, tmp_path_factory) -> SentJob:
    with pytest.MonkeyPatch.context() as patch:
        return _run_job(tiny_bench, tiny_base_llm, tmp_path_factory, patch)


def _run_job(tiny_bench, tiny_base_llm, tmp_path_factory, patch) -> SentJob:
    _fobs_as_flare_does()
    cfg = load_config("tiny", {"fl.rounds": 2, "fl.local_steps": 2, "train.device": "cpu"})
    cfg.model.base_llm = str(tiny_base_llm)
    state = tmp_path_factory.mktemp("outgoing") / "state"
    site = SiteTrainer(cfg, SITE, tiny_bench / SITE, state)
    # The executor as FLARE builds it, with the trainer its first task would build and the writer its
    # START_RUN event would look up (that event needs a workspace and only reads the site settings).
    executor = MRGExecutor(config_to_dict(cfg), run_name="outgoing", test_limit=2)
    writer, fired = _tracking_writer()
    patch.setattr(streaming, "send_analytic_dxo", lambda comp, dxo, fl_ctx, event_type: fired.append(dxo))
    executor.site, executor.trainer, executor.writer = SITE, site, writer
    sent = SentJob(site, tiny_bench / SITE)
    sent.local["init"] = site.model.local_state_dict()

    sent.wire["submit_model"] = _send(executor, msg.SUBMIT_MODEL, FLModel(params={}))
    sent.replies["submit_model"] = _read(sent.wire["submit_model"])
    global_state = msg.to_torch(sent.replies["submit_model"].params)  # the controller's initial global model
    sent.shared["global 0"] = global_state
    prototypes = None
    for round_number in range(cfg.fl.rounds):
        name = f"train round {round_number}"
        sent.wire[name] = _send(
            executor, msg.TRAIN, _global_request(global_state, round_number, cfg.fl.rounds, prototypes)
        )
        sent.replies[name] = _read(sent.wire[name])
        sent.local[f"after round {round_number}"] = site.model.local_state_dict()
        sent.shared[f"after round {round_number}"] = site.model.shared_state_dict()
        merged = _merge(cfg, global_state, round_number, _read(sent.wire[name]))
        global_state = {k: v.detach().clone() for k, v in merged.params.items()}
        sent.shared[f"global {round_number + 1}"] = global_state
        prototypes = {k: merged.meta[k] for k in (msg.PROTOTYPES, msg.AVAILABLE)}
    sent.wire["validate"] = _send(executor, msg.VALIDATE, _global_request(global_state, cfg.fl.rounds, cfg.fl.rounds))
    sent.replies["validate"] = _read(sent.wire["validate"])
    sent.tracked = [AnalyticsData.from_dxo(dxo) for dxo in fired]
    sent.wire["experiment tracking"] = b"".join(fobs.dumps(dxo.to_shareable()) for dxo in fired)
    reports = state.with_name(f"{state.name}-reports")
    for path in sorted(reports.glob("*.predictions.json")):
        sent.predictions += list(json.loads(path.read_text(encoding="utf-8")).values())
    return sent


# ------------------------------------------------------------------------------------ probes
def _raw(tensor: torch.Tensor, dtype: torch.dtype) -> bytes:
    """The tensor's values in ``dtype`` as they lie in memory (and in a numpy / safetensors buffer)."""
    return tensor.detach().flatten().to(dtype).contiguous().view(torch.uint8).numpy().tobytes()


def _windows(data: bytes, item: int, count: int = 8, width: int = WIDTH) -> list[bytes]:
    """Up to ``count`` slices of ``width`` bytes spread over ``data``, at element boundaries, each holding
    at least three different elements: a constant run (zeros, ones) could occur in any message."""
    candidates = [data[i : i + width] for i in range(0, len(data) - width + 1, width)]
    distinct = [w for w in candidates if len({w[j : j + item] for j in range(0, width, item)}) >= 3]
    if len(distinct) <= count:
        return distinct
    return [distinct[round(k * (len(distinct) - 1) / (count - 1))] for k in range(count)]


def _middle_windows(data: bytes, count: int = 3, width: int = WIDTH) -> list[bytes]:
    """``count`` slices of ``width`` bytes around the middle of a file (inside its compressed data)."""
    start = len(data) // 2 - (count * width) // 2
    return [data[start + k * width : start + (k + 1) * width] for k in range(count)]


class Wire:
    """The bytes of every message, searchable; a 16-byte probe is looked up in a set of all 16-byte slices."""

    def __init__(self, messages: dict[str, bytes]) -> None:
        self.messages = messages
        self.slices = {
            name: {data[i : i + WIDTH] for i in range(len(data) - WIDTH + 1)} for name, data in messages.items()
        }

    def where(self, probe: bytes) -> list[str]:
        if len(probe) == WIDTH:
            return [name for name, slices in self.slices.items() if probe in slices]
        return [name for name, data in self.messages.items() if probe in data]

    def leaks(self, probes: list[tuple[str, bytes]]) -> list[str]:
        found = []
        for what, probe in probes:
            found += [f"{what} in {name}" for name in self.where(probe)]
        return found


@pytest.fixture(scope="module")
def wire(job) -> Wire:
    return Wire(job.wire)


def _fail_message(leaks: list[str], kind: str) -> str:
    return f"{len(leaks)} probe(s) of {kind} found in what the site sent: " + "; ".join(leaks[:8])


def _records(job: SentJob) -> tuple[list[dict], Path]:
    """The site's studies of every split, with the labels the site derives for them (``states``)."""
    rows, root = [], None
    for split in SPLITS:
        records, root = split_records(job.data_dir, split, job.site.cfg.data.dataset)
        rows += records
    return rows, root


# ------------------------------------------------------------------------- the job and its bytes
def test_every_message_was_built_by_the_executor_and_serialised_by_flare(job):
    assert list(job.wire) == ["submit_model", "train round 0", "train round 1", "validate", "experiment tracking"]
    for name, reply in job.replies.items():
        assert reply.params_type in (ParamsType.FULL, ParamsType.DIFF), name
    for name in ("train round 0", "train round 1"):
        assert set(job.replies[name].params) == {msg.UPDATE} and job.replies[name].params_type == ParamsType.DIFF
        assert job.replies[name].meta[msg.TRAIN_STUDIES] == len(job.site.train_loader.dataset)
    assert not job.replies["validate"].params


def test_the_local_parameters_changed_during_the_job(job):
    """Otherwise probes of their trained values would be probes of their initial values only."""
    init, final = job.local["init"], job.local["after round 1"]
    assert init and set(init) == set(final)
    assert any("specialized" in name for name in init) and any("contrastive.client" in name for name in init)
    for name, value in init.items():
        assert not torch.equal(value, job.local["after round 0"][name]), f"{name}: unchanged by round 0"
        assert not torch.equal(job.local["after round 0"][name], final[name]), f"{name}: unchanged by round 1"


# ---------------------------------------------------------------------------- local parameters
def _local_probes(job) -> tuple[list[tuple[str, bytes]], dict[str, int]]:
    """Windows of every local tensor at every point of the job (its values, and its change in each
    round) in fp32 (as stored on this CPU run and as ``msg.to_numpy`` sends), fp16 (what the codec sends
    dense) and bf16 (as stored on a GPU), with the number kept per tensor.

    Left out: all-zero tensors (the specialized LoRA B before training): nothing distinctive to find.
    Those are also the only local tensors identical to a shared one (the generic B, zero too); no other
    "identical to a shared tensor" exception is made, since the shared tensors the test could compare
    with are the ones sent, and a local tensor sent under a shared name (a mislabelled parameter, the
    leak a name check cannot see) would then be excused. A design that initialised the specialized
    adapter as a copy of the generic one would have to leave out the "init" probes here.
    """
    states = dict(job.local)
    whens = list(job.local)
    for before, after in zip(whens, whens[1:]):
        states[f"change to {after}"] = {k: job.local[after][k] - job.local[before][k] for k in job.local[after]}
    probes, per_tensor = [], {}
    for when, state in states.items():
        for name, tensor in state.items():
            if not tensor.any():
                continue
            for label, dtype in FLOATS.items():
                kept = _windows(_raw(tensor, dtype), tensor.new_zeros((), dtype=dtype).element_size())
                probes += [(f"{name} ({when}, {label})", w) for w in kept]
                per_tensor[f"{name} ({when}, {label})"] = len(kept)
    return probes, per_tensor


def test_no_local_parameter_content_is_sent(job, wire):
    probes, per_tensor = _local_probes(job)
    for when in ("after round 0", "after round 1", "change to after round 0", "change to after round 1"):
        for name in job.local["init"]:
            for label in FLOATS:
                assert per_tensor.get(f"{name} ({when}, {label})", 0) >= 4, f"{name} ({when}, {label}): not probed"
    leaks = wire.leaks(probes)
    assert not leaks, _fail_message(leaks, "the site's specialized adapter / client head")


def test_the_probes_find_shared_parameters_where_they_are_sent(job, wire):
    """Positive controls, the same probes of shared tensors: their fp32 values in ``submit_model``
    (FULL parameters), and the fp16 change of every tensor the codec sends dense in round 0 (no error
    feedback yet, so what is sent is exactly ``(after - before).to(fp16)``)."""
    submitted = job.shared["global 0"]
    missing, probed = [], 0
    for name, tensor in submitted.items():
        windows = _windows(_raw(tensor, torch.float32), 4)
        if tensor.unique().numel() >= 3:  # not a freshly initialised constant (norm weights, biases, LoRA B)
            assert windows, f"{name}: no distinctive fp32 window"
        missing += [f"{name} (fp32)" for w in windows if "submit_model" not in wire.where(w)]
        probed += bool(windows)
    assert probed >= 25, f"only {probed} shared tensors probed"
    assert not missing, f"fp32 probes of shared parameters not found in submit_model: {missing[:8]}"

    payload = msg.array_to_payload(job.replies["train round 0"].params[msg.UPDATE])
    dense = [name for name, entry in payload_header(payload).items() if entry["kind"] == "dense"]
    assert len(dense) >= 10  # the 1-D and small tensors (dense_below) of the encoder, heads, customizer
    before, after = job.shared["global 0"], job.shared["after round 0"]
    found = 0
    for name in dense:
        windows = _windows(_raw(after[name].float() - before[name].float(), torch.float16), 2)
        missing += [f"{name} (fp16 change)" for w in windows if "train round 0" not in wire.where(w)]
        found += len(windows)
    assert found >= 50 and not missing, f"fp16 probes of dense-coded shared changes not found: {missing[:8]}"


def _lora_products(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """``B @ A`` of every LoRA pair, under the codec's name for it (``...lora_AB...``)."""
    return {
        a.replace(LORA_A, LORA_PRODUCT): state[a.replace(LORA_A, LORA_B)].float() @ state[a].float()
        for a in state
        if LORA_A in a
    }


def _changes(before: dict[str, torch.Tensor], after: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A round's change of every tensor, LoRA pairs as the change of their product (as the codec sees it)."""
    out = {
        name: after[name].float() - before[name].float() for name in after if LORA_A not in name and LORA_B not in name
    }
    products_before, products_after = _lora_products(before), _lora_products(after)
    out.update({name: products_after[name] - products_before[name] for name in products_after})
    return out


def _truncated(change: torch.Tensor, rank: int) -> torch.Tensor:
    """The best rank-``rank`` approximation of a change, as the codec computes it (on its matricization)."""
    u, s, vh = torch.linalg.svd(matricized(change).double(), full_matrices=False)
    return ((u[:, :rank] * s[:rank]) @ vh[:rank]).reshape(change.shape).float()


def _cosine(x: torch.Tensor, y: torch.Tensor) -> float:
    x, y = x.flatten().double(), y.flatten().double()
    return float(x @ y / (x.norm() * y.norm()).clamp(min=1e-30))


def test_no_update_entry_is_a_local_change(job):
    """The low-rank path, which no byte probe sees: every decoded entry of each round's update is
    compared (|cosine|) with the round's change of every local tensor, and local LoRA product ``B @ A``,
    of the same shape. A leaked dense entry would be that change in fp16 (|cos| ~ 1, also in round 1,
    where error feedback makes the bytes differ); a leaked low-rank one its rank-r truncation (|cos| =
    the share of the norm kept, 0.85 and more for the generic LoRA changes here). Unrelated changes of
    16384-value products are near orthogonal; small vectors (32 values) reach |cos| ~ 0.3 by chance,
    hence the higher bar for dense entries. Positive control, round 0: the same comparison recognises
    every sent entry as its own shared tensor's change (truncated to the sent rank: |cos| ~ 1)."""
    resemblances, controls = [], []
    for round_number in range(2):
        before = job.local["init" if round_number == 0 else "after round 0"]
        local_changes = _changes(before, job.local[f"after round {round_number}"])
        payload = msg.array_to_payload(job.replies[f"train round {round_number}"].params[msg.UPDATE])
        header = payload_header(payload)
        decoded = {name: as_dense(value) for name, value in decode(payload).items()}
        compared = 0
        for name, sent in decoded.items():
            bar = 0.9 if header[name]["kind"] == "dense" else 0.5
            for local_name, change in local_changes.items():
                if tuple(change.shape) == tuple(sent.shape):
                    compared += 1
                    cosine = abs(_cosine(sent, change))
                    if cosine >= bar:
                        resemblances.append(f"{name} ~ {local_name} (round {round_number}, |cos| {cosine:.2f})")
        assert compared >= 40, f"round {round_number}: only {compared} same-shaped pairs compared"
        if round_number == 0:
            shared_changes = _changes(job.shared["global 0"], job.shared["after round 0"])
            for name, sent in decoded.items():
                change = shared_changes[name]
                if header[name]["kind"] == "lowrank":
                    change = _truncated(change, header[name]["rank"])
                if change.any():
                    controls.append((_cosine(sent, change), name))
    assert not resemblances, "update entries resemble a local tensor's change: " + "; ".join(resemblances[:5])
    assert len(controls) >= 40 and min(controls)[0] > 0.99, f"a sent entry is not its own change: {min(controls)}"


# -------------------------------------------------------------------------------------- reports
def _report_probes(job) -> list[tuple[str, bytes]]:
    rows, _ = _records(job)
    raw = json.loads((job.data_dir / "annotation.json").read_text(encoding="utf-8"))
    probes = []
    for row in (row for split in raw.values() for row in split):
        text = row["report"]
        for variant in {text, text.lower()}:
            probes.append((f"the report of {row['id']}", variant.encode("utf-8")))
        for sentence in re.split(r"(?<=\.)\s+", text):
            if len(sentence) >= 24:  # a distinctive sentence, not "Lungs clear."
                probes += [
                    (f"a sentence of {row['id']}'s report", s.encode("utf-8")) for s in {sentence, sentence.lower()}
                ]
    tokenizer = job.site.model.tokenizer
    for row in rows:  # the cleaned text the model trains on, and its token ids
        probes.append((f"the cleaned report of {row['id']}", row["report"].encode("utf-8")))
        ids = tokenizer(row["report"], add_special_tokens=False)["input_ids"]
        for dtype in (np.int64, np.int32):
            probes.append(
                (
                    f"the token ids of {row['id']}'s report ({np.dtype(dtype).name})",
                    np.asarray(ids, dtype=dtype).tobytes(),
                )
            )
    return probes


def test_no_report_text_is_sent(job, wire):
    probes = _report_probes(job)
    assert len(probes) > 200
    leaks = wire.leaks(probes)
    assert not leaks, _fail_message(leaks, "the site's reports")
    # positive control: text the site does send (the model description) is found by the same search
    assert wire.where(job.site.cfg.model.instruction.encode("utf-8")) == ["submit_model"]


def test_no_study_id_or_image_file_name_is_sent(job, wire):
    rows, root = _records(job)
    probes = []
    for row in rows:
        probes.append((f"study id {row['id']}", str(row["id"]).encode("utf-8")))
        for path in row["image_path"]:  # the annotation's name, and the path the dataset resolves it to
            probes += [
                (f"image file {path}", str(path).encode("utf-8")),
                (f"image path {root / path}", str(root / path).encode("utf-8")),
            ]
    leaks = wire.leaks(probes)
    assert not leaks, _fail_message(leaks, "study ids / image file names")


# --------------------------------------------------------------------------------------- images
def test_no_image_content_is_sent(job, wire):
    """The PNG files' bytes, their decoded pixels (uint8 rows) and the preprocessed tensors the model
    sees (evaluation transforms; training augments at random, so its exact tensors cannot be redone)."""
    rows, root = _records(job)
    probes = []
    files = sorted({root / path for row in rows for path in row["image_path"]})
    assert len(files) >= len(rows)
    for path in files:
        probes += [(f"bytes of {path.name} of {path.parent.name}", w) for w in _middle_windows(path.read_bytes())]
        pixels = np.asarray(Image.open(path).convert("L"))
        middle = pixels[pixels.shape[0] // 2 - 4 : pixels.shape[0] // 2 + 4].tobytes()
        probes += [(f"pixels of {path.parent.name}/{path.name}", w) for w in _windows(middle, 1, count=4)]
    for split in SPLITS:
        dataset = study_loader(job.site.cfg, [job.data_dir], split, train=False).dataset
        for index in range(len(dataset)):
            item = dataset[index]
            image = item["image"]
            for label, dtype in FLOATS.items():
                data = _raw(image[:, :, image.shape[-2] // 2 - 2 : image.shape[-2] // 2 + 2], dtype)
                probes += [
                    (f"preprocessed image of {item['id']} ({label})", w)
                    for w in _windows(data, image.new_zeros((), dtype=dtype).element_size(), count=3)
                ]
    assert len(probes) > 5 * len(files)
    leaks = wire.leaks(probes)
    assert not leaks, _fail_message(leaks, "the site's images")


# --------------------------------------------------------------------------------------- labels
def test_no_per_study_label_vector_is_sent(job, wire):
    """The 14 diagnosis states the site derives for each study (labeler on its report), and its positive
    findings, in every plausible encoding; vectors of one repeated value are left out (a constant run
    is no study's signature and occurs anywhere)."""
    rows, _ = _records(job)
    probes = []
    for row in rows:
        states = np.asarray(row["states"])
        assert states.shape == (len(OBSERVATIONS),)
        for what, vector in (("diagnosis states", states), ("positive findings", states == STATE_POSITIVE)):
            if len(set(vector.tolist())) < 2:
                continue
            for dtype in (np.int64, np.int32, np.uint8, np.float64, np.float32, np.float16):
                probes.append((f"{what} of {row['id']} ({np.dtype(dtype).name})", vector.astype(dtype).tobytes()))
    assert len(probes) >= 6 * len(rows) // 2, "too few studies with a distinctive label vector"
    leaks = wire.leaks(probes)
    assert not leaks, _fail_message(leaks, "per-study labels")


def test_prototypes_are_per_finding_aggregates(job, wire):
    """Prototype sums and counts are expected to leave the site: they are per-finding aggregates over
    the round's training studies (counts: how many of them were positive for each finding). They must
    hold one row per finding, never one per study."""
    studies = len(job.site.train_loader.dataset)
    for name in ("train round 0", "train round 1"):
        meta = job.replies[name].meta
        counts, sums = np.asarray(meta[msg.PROTOTYPE_COUNTS]), np.asarray(meta[msg.PROTOTYPE_SUMS])
        assert counts.shape == (len(OBSERVATIONS),) and counts.shape[0] != studies, f"{name}: counts {counts.shape}"
        assert sums.shape == (len(OBSERVATIONS), job.site.cfg.model.contrastive_dim), f"{name}: sums {sums.shape}"
        assert counts.sum() > 0 and np.all(counts == np.round(counts))
        # positive control for arrays in meta: the float32 counts are found by a byte search
        assert name in wire.where(counts.astype(np.float32).tobytes())


def test_no_prototype_row_is_a_single_studys_feature(job):
    """A row of the sums over one study is not an aggregate: it is that study's L2-normalised generic-head
    feature of its images (norm 1), and its count tells the server that exactly one of the round's studies
    had the finding. The server holds the generic head, so it can compute that feature for an image it
    has and recognise the study. Rows over fewer than ``fl.prototype_min_studies`` studies must stay at
    the site (a count of 0 is what the aggregator already reads as "no prototype")."""
    least = job.site.cfg.fl.prototype_min_studies
    assert least >= 2
    single = []
    for name in ("train round 0", "train round 1"):
        meta = job.replies[name].meta
        counts, sums = np.asarray(meta[msg.PROTOTYPE_COUNTS]), np.asarray(meta[msg.PROTOTYPE_SUMS])
        single += [
            f"{OBSERVATIONS[i]} in {name} (count {counts[i]:g}, |sum| {np.linalg.norm(sums[i]):.3f})"
            for i in range(len(counts))
            if 0 < counts[i] < least
        ]
    assert not single, "prototype rows of too few studies sent: " + "; ".join(single)
    assert any(
        np.asarray(job.replies[name].meta[msg.PROTOTYPE_COUNTS]).max() >= least
        for name in ("train round 0", "train round 1")
    )  # the common findings' prototypes still go


# ------------------------------------------------------------------------------------- validate
def _leaves(value, keys=()):
    """``(keys, value)`` of every leaf of nested dicts and lists."""
    if isinstance(value, dict):
        for key, item in value.items():
            yield from _leaves(item, (*keys, key))
    elif isinstance(value, (list, tuple)):
        for index, item in enumerate(value):
            yield from _leaves(item, (*keys, index))
    else:
        yield keys, value


def test_validate_sends_scores_only(job, wire):
    reply = job.replies["validate"]
    assert not reply.params
    # FLModelUtils.to_shareable sends the metrics in the DXO's meta too, under INITIAL_METRICS
    assert set(reply.meta) - {MetaKey.INITIAL_METRICS} == {msg.SCORES, msg.GLOBAL_DIGEST}, sorted(reply.meta)
    assert msg.reported_digest(reply.meta) is not None  # the model it scored: 32 bytes, nothing else
    scores = {k: v for k, v in reply.meta.items() if k != msg.GLOBAL_DIGEST}
    for where, content in (("metrics", reply.metrics), ("meta", scores)):
        for keys, value in _leaves(content):
            path = "/".join(map(str, keys))
            is_number = isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, bool)
            assert value is None or is_number, f"validate {where} {path} is not a score: {value!r:.80}"
            # keys name metrics and findings ("test_generic_BLEU-4", "Enlarged Cardiomediastinum"), no text
            assert all(isinstance(k, int) or re.fullmatch(r"[A-Za-z0-9_ \-]{1,40}", k) for k in keys), (
                f"validate {where} {path!r:.120}: not a metric or finding name"
            )
    assert set(reply.meta[msg.SCORES]) == {"generic", "personalized"}
    generated = [text for text in job.predictions if len(text) >= 12]
    assert generated, "validate generated no report to look for"
    leaks = wire.leaks([("a generated report", text.encode("utf-8")) for text in generated])
    assert not leaks, _fail_message(leaks, "generated reports")


def test_experiment_tracking_sends_named_numbers_only(job):
    """The executor streams its metrics to the server's TensorBoard: a ``<site>/<metric>`` tag and a number."""
    assert len(job.tracked) > 20
    for record in job.tracked:
        assert isinstance(record.value, float), f"tracked {record.tag}: {record.value!r:.80}"
        assert re.fullmatch(rf"{SITE}/[A-Za-z0-9_.\-]+", record.tag), f"tracked tag {record.tag!r:.80}"
