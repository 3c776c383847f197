"""What travels between the server and the sites, in one place: task names, keys, conversions.

Every message is an ``FLModel``. Tensors travel as numpy arrays; a low-rank update travels as its
codec payload (one ``uint8`` array, whose length is the exact number of update bytes).

- server -> site, ``train`` / ``validate``: ``params`` = the global shared parameters (fp32, FULL);
  ``meta[PROTOTYPES]`` / ``meta[AVAILABLE]`` = the global per-finding prototypes. In the first
  round, which starts from the initial model every site builds itself, ``params`` is empty and
  ``meta[GLOBAL_DIGEST]`` names that model (:func:`state_digest`); a site whose own model has
  another digest replies ``meta[NEED_GLOBAL] = 1`` without training and gets the state.
- site -> server, ``train``: lowrank: ``params = {UPDATE: payload}`` (DIFF); dense (FedAvg
  baseline): ``params`` = the site's shared parameters (FULL). ``meta`` holds the training-study
  count (the aggregation weight), prototype sums and counts, ``BYTES_DOWN`` (the size of the train
  task as it arrived); ``metrics`` the losses.
- site -> server, ``validate``: ``meta[SCORES]`` = ``{"generic": scores, "personalized": scores}``.
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
GLOBAL_DIGEST = "global_digest"  # round 0: the digest of the initial global model, sent instead of it
NEED_GLOBAL = "need_global"  # a site's train reply when its own initial model differs: send me the state
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


def state_bytes(state: dict) -> int:
    """Bytes of the values of a dict of arrays or tensors (what a dense message carries)."""
    return int(
        sum(
            np.asarray(value).nbytes if not isinstance(value, torch.Tensor) else value.numel() * value.element_size()
            for value in state.values()
        )
    )
