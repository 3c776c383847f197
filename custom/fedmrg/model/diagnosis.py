"""Diagnosis head and diagnosis-driven prompts (FedMRG, after PromptMRG).

The head classifies each of the 14 CheXpert observations into one of four states (``STATES``)
from the pooled image feature; the states become prompt text such as
``"cardiomegaly: positive; pleural effusion: negative"``. Training targets come from the
labeler run on the ground-truth reports.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from sklearn.metrics import roc_auc_score
from torch import Tensor, nn

from fedmrg.labels.observations import OBSERVATIONS
from fedmrg.labels.states import BLANK, STATE_POSITIVE, STATES, check_states

LOSSES = ("ce", "balanced", "logit_adjusted")
DEFAULT_THRESHOLD = 0.5  # before calibration: positive when it is more likely than all else together
CANDIDATE_THRESHOLDS = torch.linspace(0.05, 0.95, 19)
MIN_CALIBRATION_AUC = 0.75  # below, the validation studies say the head cannot tell: its threshold stays
NOTHING_MENTIONED = "no observations mentioned"  # the prompt when every observation is blank


def diagnosis_prompt(states_row: Sequence[int]) -> str:
    """``"cardiomegaly: positive; pleural effusion: negative"`` in OBSERVATIONS order, blanks left out."""
    states = np.asarray(states_row).reshape(1, -1)
    check_states(states)
    parts = [f"{name.lower()}: {STATES[state]}" for name, state in zip(OBSERVATIONS, states[0]) if state != BLANK]
    return "; ".join(parts) or NOTHING_MENTIONED


def prompt_text(states_row: Sequence[int]) -> str:
    """The text between the image part of the generator's input and the report it writes."""
    return f" diagnosis: {diagnosis_prompt(states_row)}. report:"


def class_counts(states: Tensor) -> Tensor:
    """State indices [N, 14] -> counts [14, 4] (long)."""
    check_states(states)
    return F.one_hot(states.long(), len(STATES)).sum(dim=0)


class DiagnosisHead(nn.Module):
    """Linear classifier of the pooled feature into 14 x 4 state logits.

    Losses:

    - ``ce``: cross-entropy, averaged over studies and observations;
    - ``balanced``: cross-entropy weighted per observation by ``w_c ∝ 1 / (count_c + 1)``,
      normalised so that the mean weight over the training set is 1;
    - ``logit_adjusted``: cross-entropy on ``logits + tau * log(prior)`` with the prior from
      ``(counts + 1)`` (Menon et al., logit adjustment); :meth:`predict` uses the raw logits, which
      then estimate the class-balanced posterior.

    Until :meth:`set_class_counts` is called the counts are zero, which makes the prior uniform and
    the weights 1: ``balanced`` and ``logit_adjusted`` then equal ``ce``.
    """

    def __init__(self, in_dim: int, loss: str = "logit_adjusted", tau: float = 1.0) -> None:
        super().__init__()
        if loss not in LOSSES:
            raise ValueError(f"diagnosis loss must be one of {', '.join(LOSSES)}, got {loss!r}")
        self.loss_mode = loss
        self.tau = tau
        self.classifier = nn.Linear(in_dim, len(OBSERVATIONS) * len(STATES))
        self.register_buffer("class_counts", torch.zeros(len(OBSERVATIONS), len(STATES)))
        # Per observation, the positive-state probability from which the prompt says "positive". In no
        # loss (so no optimizer step moves it): :meth:`calibrate` sets it on validation studies. A
        # parameter, so that a federation averages the sites' calibrations into the global model.
        self.thresholds = nn.Parameter(torch.full((len(OBSERVATIONS),), DEFAULT_THRESHOLD))

    def forward(self, pooled: Tensor) -> Tensor:
        """[B, in_dim] -> logits [B, 14, 4]."""
        return self.classifier(pooled).reshape(-1, len(OBSERVATIONS), len(STATES))

    def set_class_counts(self, counts: Tensor) -> None:
        """Training-set state counts [14, 4]; kept in a persistent buffer, so they are saved."""
        counts = torch.as_tensor(counts, dtype=self.class_counts.dtype)
        if tuple(counts.shape) != tuple(self.class_counts.shape):
            raise ValueError(f"class counts must be {list(self.class_counts.shape)}, got {list(counts.shape)}")
        if not bool(torch.isfinite(counts).all()) or bool((counts < 0).any()):
            raise ValueError("class counts must be finite and non-negative")
        self.class_counts.copy_(counts)

    def loss(self, logits: Tensor, states: Tensor) -> Tensor:
        """Scalar loss of logits [B, 14, 4] against state indices [B, 14]."""
        smoothed = self.class_counts + 1
        if self.loss_mode == "logit_adjusted":
            prior = smoothed / smoothed.sum(dim=-1, keepdim=True)
            logits = logits + self.tau * prior.log()
        nll = -F.log_softmax(logits.float(), dim=-1).gather(-1, states.long()[..., None]).squeeze(-1)
        if self.loss_mode == "balanced":
            weights = 1.0 / smoothed  # [14, 4], then scaled to a mean of 1 over the training studies
            weights = weights * smoothed.sum(dim=-1, keepdim=True) / (weights * smoothed).sum(dim=-1, keepdim=True)
            nll = nll * weights.expand(states.shape[0], -1, -1).gather(-1, states.long()[..., None]).squeeze(-1)
        return nll.mean()

    def predict(self, logits: Tensor) -> Tensor:
        """State indices [B, 14]: positive where its probability reaches the observation's threshold,
        else the most likely of the other states (of the unadjusted logits)."""
        positive = self.positive_probability(logits) >= self.thresholds.detach()
        others = logits.detach().clone()
        others[..., STATE_POSITIVE] = float("-inf")
        return torch.where(positive, torch.full_like(positive, STATE_POSITIVE, dtype=torch.long), others.argmax(-1))

    @staticmethod
    def positive_probability(logits: Tensor) -> Tensor:
        """[B, 14] probability of the positive state (softmax over the four states)."""
        return torch.softmax(logits.detach().float(), dim=-1)[..., STATE_POSITIVE]

    @torch.no_grad()
    def calibrate(self, probability: Tensor, positive: Tensor, min_positives: int = 3) -> dict[str, float]:
        """Set each observation's threshold to the one that maximises the F1 of "positive" on the given
        studies (probabilities [N, 14] against the reference's positives [N, 14]). An observation keeps
        its threshold when the studies hold fewer than ``min_positives`` positives, or when the head
        ranks them no better than ``MIN_CALIBRATION_AUC``: for a head that cannot tell, the best F1 is
        to call every study positive, which would put that finding in every prompt. The thresholds
        set, by name."""
        chosen = {}
        for k, name in enumerate(OBSERVATIONS):
            truth = positive[:, k].bool()
            if int(truth.sum()) < min_positives or truth.all():
                continue
            if roc_auc_score(truth.numpy(), probability[:, k].numpy()) < MIN_CALIBRATION_AUC:
                continue
            predicted = probability[:, k, None] >= CANDIDATE_THRESHOLDS[None, :]  # [N, T]
            tp = (predicted & truth[:, None]).sum(0).float()
            f1 = 2 * tp / (predicted.sum(0) + truth.sum()).clamp(min=1)
            best = CANDIDATE_THRESHOLDS[int(f1.argmax())]  # the lowest of equally good thresholds
            self.thresholds[k] = best
            chosen[name] = round(float(best), 2)
        return chosen
