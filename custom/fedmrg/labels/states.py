"""Diagnosis states: the four classes the diagnosis head predicts for each observation, and their
conversion from and to the labeler's matrix (NaN / 1 / 0 / -1)."""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from fedmrg.labels.observations import NEGATIVE, OBSERVATIONS, POSITIVE, UNCERTAIN, label_array

STATES = ("blank", "positive", "negative", "uncertain")  # class index 0..3
BLANK, STATE_POSITIVE, STATE_NEGATIVE, STATE_UNCERTAIN = range(4)

_LABEL_OF_STATE = {STATE_POSITIVE: POSITIVE, STATE_NEGATIVE: NEGATIVE, STATE_UNCERTAIN: UNCERTAIN}


def states_from_labels(labels: np.ndarray) -> torch.LongTensor:
    """Labeler matrix [N, 14] (NaN / 1 / 0 / -1) -> state indices [N, 14]."""
    labels = label_array(labels)
    states = np.full(labels.shape, BLANK, dtype=np.int64)
    for state, label in _LABEL_OF_STATE.items():
        states[labels == label] = state
    bad = ~np.isnan(labels) & (states == BLANK)
    if bad.any():
        raise ValueError(f"labels must be NaN, 1, 0 or -1; got {sorted(set(labels[bad].tolist()))[:5]}")
    return torch.from_numpy(states)


def labels_from_states(states: Tensor | np.ndarray) -> np.ndarray:
    """State indices [N, 14] -> the labeler's float32 matrix (NaN for blank), for CE scoring."""
    states = states.detach().cpu().numpy() if isinstance(states, Tensor) else np.asarray(states)
    check_states(states)
    labels = np.full(states.shape, np.nan, dtype=np.float32)
    for state, label in _LABEL_OF_STATE.items():
        labels[states == state] = label
    return labels


def check_states(states: Tensor | np.ndarray) -> None:
    shape = tuple(states.shape)
    if len(shape) != 2 or shape[1] != len(OBSERVATIONS):
        raise ValueError(f"states must be [N, {len(OBSERVATIONS)}], got {list(shape)}")
    if shape[0] and (states.min() < 0 or states.max() >= len(STATES)):
        raise ValueError(f"states must be indices in 0..{len(STATES) - 1}")
