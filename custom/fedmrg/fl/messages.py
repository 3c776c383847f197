"""What travels between the server and the sites, in one place: task names, keys, conversions.

Every message is an ``FLModel``. Tensors travel as numpy arrays; a low-rank update travels as its
codec payload (one ``uint8`` array, whose length is the exact number of update bytes).

- server -> site, ``train`` / ``validate``: the global model, named by ``meta[GLOBAL_DIGEST]``
  (:func:`state_digest`), in one of three forms: ``params = {GLOBAL_CHANGE: payload}``, the
  round's change (:mod:`fedmrg.fl.downlink`) to the model ``meta[BASE_DIGEST]`` names; empty
  ``params``, when the model is one the sites hold already (the initial model every site builds
  itself, or a round that merged nothing); or ``params`` = the global shared parameters (fp32,
  FULL). A site that cannot have it from a change or a digest replies ``meta[NEED_GLOBAL] = 1``
  without training and gets the whole state. ``meta[PROTOTYPES]`` / ``meta[AVAILABLE]`` = the
  global per-finding prototypes.
- site -> server, ``train``: lowrank: ``params = {UPDATE: payload}`` (DIFF); dense (FedAvg
  baseline): ``params`` = the site's shared parameters (FULL). ``meta`` holds the training-study
  count (the aggregation weight), prototype sums and counts, ``BYTES_DOWN`` (the size of the train
  task as it arrived), ``GLOBAL_DIGEST`` (of the global model it trained from, as
  :func:`digest_array`); ``metrics`` the losses.
- site -> server, ``validate``: ``meta[SCORES]`` = ``{"generic": scores, "personalized": scores}``,
  ``meta[GLOBAL_DIGEST]`` (of the model it scored).
- site -> server, ``submit_model``: ``params`` = the site's initial shared parameters, ``meta[MODEL_META]``
  = the model description (config, base LLM reference) the server needs to write the global model.
"""

from __future__ import annotations

import hashlib

import numpy as np
import torch

TRAIN, VALIDATE, SUBMIT_MODEL = "train", "validate", "submit_model"

UPDATE = "fedmrg_update"
TRAIN_STUDIES = "train_studies"
PROTOTYPE_SUMS, PROTOTYPE_COUNTS = "prototype_sums", "prototype_counts"
PROTOTYPES, AVAILABLE = "prototypes", "prototype_available"
GLOBAL_CHANGE = "fedmrg_global_change"  # the round's change of the global model (fedmrg.fl.downlink payload)
GLOBAL_DIGEST = "global_digest"  # the digest of a global model: the one sent, or the one a site used
BASE_DIGEST = "base_digest"  # the digest of the global model a change applies to
NEED_GLOBAL = "need_global"  # a site's reply when it cannot have the model from a change or a digest
BYTES_DOWN = "bytes_down"  # a site's measure of the train task it received (fedmrg.fl.wire), sent back with its result
STEPS = "steps"  # optimizer steps of the round
SCORES = "scores"
MODEL_META = "model_meta"
CLIENT_NAME = "client_name"  # set by FLARE's ModelController on every result


def to_numpy(state: dict[str, torch.Tensor]) -> dict[str, np.ndarray]:
    return {name: value.detach().cpu().float().numpy() for name, value in state.items()}


def to_torch(params: dict) -> dict[str, torch.Tensor]:
    return {name: torch.as_tensor(np.asarray(value)) for name, value in params.items()}


def payload_to_array(payload: bytes) -> np.ndarray:
    return np.frombuffer(payload, dtype=np.uint8).copy()


def array_to_payload(value) -> bytes:
    array = np.asarray(value)
    if array.dtype != np.uint8 or array.ndim != 1:
        raise ValueError(f"an update payload must be a 1-D uint8 array, got {array.dtype} {list(array.shape)}")
    return array.tobytes()


def state_digest(state: dict[str, torch.Tensor]) -> str:
    """SHA-256 of a state's names, shapes and fp32 values: equal on two hosts exactly when they hold
    the same model."""
    digest = hashlib.sha256()
    for name in sorted(state):
        value = state[name].detach().cpu().float().contiguous()
        digest.update(f"{name}:{list(value.shape)};".encode())
        digest.update(value.numpy().tobytes())
    return digest.hexdigest()


def digest_array(digest: str) -> np.ndarray:
    """A digest as a site reports it: its 32 bytes as a ``uint8`` array (a site's results carry
    numbers only, :mod:`fedmrg.fl.privacy`)."""
    return np.frombuffer(bytes.fromhex(digest), dtype=np.uint8).copy()


def reported_digest(meta: dict | None) -> str | None:
    """The digest a site reported in a result's ``meta`` (:func:`digest_array`) in hex, or None."""
    value = (meta or {}).get(GLOBAL_DIGEST)
    array = np.asarray(value) if isinstance(value, (np.ndarray, list)) else None
    if array is None or array.shape != (32,) or array.dtype.kind not in "iu" or array.min() < 0 or array.max() > 255:
        return None
    return bytes(array.astype(np.uint8).tolist()).hex()


def state_bytes(state: dict) -> int:
    """Bytes of the values of a dict of arrays or tensors (what a dense message carries)."""
    return int(
        sum(
            np.asarray(value).nbytes if not isinstance(value, torch.Tensor) else value.numel() * value.element_size()
            for value in state.values()
        )
    )
