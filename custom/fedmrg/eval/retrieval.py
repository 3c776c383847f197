"""Retrieval baseline: answer each study with the training report whose findings match best.

It shows what generation adds over copying a report: given the findings a model predicts for a
study (or, for an oracle row, the reference report's own labels), pick the training report whose
labeler findings agree most. Agreement is ranked by the F1 overlap of the positive observations
(what clinical efficacy scores), then by how many of the 14 observations have the same state
(positive / negative / uncertain / not mentioned); remaining ties go to the earliest training report.
"""

from __future__ import annotations

import numpy as np

from fedmrg.labels.observations import OBSERVATIONS, POSITIVE, label_array
from fedmrg.labels.states import STATES, labels_from_states

_NOT_MENTIONED = 9.0  # stands in for NaN so that "not mentioned" equals itself
# Two different positive-set F1 values (2k / s with s <= 28) differ by at least 2 / 28**2 = 0.00255;
# scaled by 10,000 that gap (25.5) exceeds any difference in equal states (at most 14), so the
# combined score ranks by F1 first and by equal states only among equal F1.
_F1_SCALE = 10_000.0
_QUERY_CHUNK = 256  # bounds the [chunk, N, 14] comparison (MIMIC-CXR has ~270k training reports)


def _checked(labels: np.ndarray, name: str) -> np.ndarray:
    return np.nan_to_num(label_array(labels, name), nan=_NOT_MENTIONED)


def match_scores(query: np.ndarray, candidates: np.ndarray) -> np.ndarray:
    """``[Q, N]`` ranking scores: positive-set F1 first, then the number of equal states as a tie-break."""
    q, c = _checked(query, "query"), _checked(candidates, "candidates")
    q_pos, c_pos = (q == POSITIVE).astype(float), (c == POSITIVE).astype(float)
    overlap = q_pos @ c_pos.T
    sizes = q_pos.sum(1)[:, None] + c_pos.sum(1)[None, :]
    f1 = np.where(sizes > 0, 2 * overlap / np.maximum(sizes, 1), 1.0)
    same_states = (q[:, None, :] == c[None, :, :]).sum(-1)
    return f1 * _F1_SCALE + same_states


def retrieve(query: np.ndarray, candidates: np.ndarray) -> np.ndarray:
    """Index of the best-matching candidate for every query row (the first one among equals)."""
    if len(candidates) == 0:
        raise ValueError("no candidate reports to retrieve from")
    chunks = [
        np.argmax(match_scores(query[start : start + _QUERY_CHUNK], candidates), axis=1)
        for start in range(0, len(query), _QUERY_CHUNK)
    ]
    return np.concatenate(chunks) if chunks else np.zeros(0, dtype=np.int64)


def normal_query(count: int) -> np.ndarray:
    """Label rows that say "No Finding" and nothing else: the query of the copy-a-normal-report baseline."""
    query = np.zeros((count, len(OBSERVATIONS)), dtype=np.int64)
    query[:, OBSERVATIONS.index("No Finding")] = STATES.index("positive")
    return query


def copied_reports(ids: list[str], query_states: np.ndarray, candidates: list[dict]) -> tuple[dict, dict]:
    """For each study id, the report (and the id) of the candidate whose findings best match its query row."""
    chosen = retrieve(labels_from_states(query_states), labels_from_states(np.stack([c["states"] for c in candidates])))
    return (
        {key: candidates[index]["report"] for key, index in zip(ids, chosen)},
        {key: str(candidates[index]["id"]) for key, index in zip(ids, chosen)},
    )
