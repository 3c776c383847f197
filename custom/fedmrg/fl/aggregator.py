"""The server's aggregators: check every site update, merge the accepted ones.

:class:`UpdateAggregator` is an NVFlare ``ModelAggregator`` with what every FedMRG aggregator does:
one update per site and round, the update checks (weight, parameter names and shapes, norm, no
site-local parameter, prototype shapes), weighting by training studies, the optional clipping and
robust mean, and the pooling of prototype sums and counts (every site counts by its positives).
The controller gives it the global state at the start of a round (:meth:`~UpdateAggregator.start_round`),
hands it each site's result (:meth:`~UpdateAggregator.accept_model`, False with a logged reason for
an update that must not be used) and asks for the next global state
(:meth:`~UpdateAggregator.aggregate_model`). Two siblings say how an update is read and applied:

- :class:`LowRankAggregator` (FedMRG): low-rank (SVD-factor) updates, merged exactly
  (:mod:`fedmrg.fl.merge`: exact mean of low-rank products, LoRA re-factorization, a server residual);
- :class:`DenseAggregator` (the FedAvg baseline, FedIT): full fp32 parameters, LoRA A and B averaged
  separately.
"""

from __future__ import annotations

import re
from typing import Protocol, runtime_checkable

import numpy as np
import torch
from nvflare.app_common.abstract.fl_model import FLModel, ParamsType
from nvflare.app_common.aggregators.model_aggregator import ModelAggregator

from fedmrg.fl import messages as msg
from fedmrg.fl.codec import Delta, Factored, decode_checked, payload_header
from fedmrg.fl.merge import (
    apply_mean_delta,
    clip_update,
    expected_delta_shapes,
    robust_mean,
    update_problem,
    weighted_mean,
)
from fedmrg.labels.observations import OBSERVATIONS
from fedmrg.model.parameters import local_parameters
from fedmrg.model.prototypes import PrototypeBank


@runtime_checkable
class RoundAggregator(Protocol):
    """What the controller needs of its aggregator."""

    def start_round(self, global_state: dict[str, torch.Tensor], round_number: int) -> None: ...

    def accept_model(self, model: FLModel) -> bool: ...

    def aggregate_model(self) -> FLModel: ...

    def state_dict(self) -> dict[str, torch.Tensor]: ...

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None: ...


class UpdateAggregator(ModelAggregator):
    """Checks, weights and merges the sites' updates; subclasses read and apply them.

    Args:
        max_norm: the largest L2 norm an update may have (a larger one is refused).
        prototype_dim: the width of the prototype sums a site may send; None when contrastive
            learning is off (then a site sending prototypes is refused).
        seed: seeds the random projections of the merge, with the round number.
        aggregation: ``mean`` (weighted by training studies), ``median`` or ``trimmed_mean``
            (coordinate-wise, unweighted).
        clip_norm: clip each update to this L2 norm before merging (None: no clipping).
        trim: updates dropped at each end per coordinate by ``trimmed_mean``.
        min_updates: the fewest accepted updates that make a round; with fewer, the global model
            stays as it was.
        equal_weights: weight every accepted site the same instead of by its training studies.
        max_weight_share: the largest share of the weighted mean one site may get (raised to
            ``1/n`` with ``n`` accepted sites); a site that reports many studies is capped there
            and the rest is shared among the others in proportion (None: no cap).
    """

    params_type: ParamsType
    max_rank = 0  # the largest factor rank an update may have (0: factors are not accepted)

    def __init__(
        self,
        max_norm: float = 1000.0,
        prototype_dim: int | None = None,
        seed: int = 0,
        aggregation: str = "mean",
        clip_norm: float | None = None,
        trim: int = 1,
        min_updates: int = 1,
        equal_weights: bool = False,
        max_weight_share: float | None = None,
    ) -> None:
        super().__init__()
        self.max_norm, self.prototype_dim, self.seed = max_norm, prototype_dim, seed
        self.aggregation, self.clip_norm, self.trim, self.min_updates = aggregation, clip_norm, trim, min_updates
        self.equal_weights, self.max_weight_share = equal_weights, max_weight_share
        self.global_state: dict[str, torch.Tensor] | None = None
        self.round = 0
        self.reset_stats()

    # ------------------------------------------------------------- what a sibling says
    def expected_shapes(self, global_state: dict[str, torch.Tensor]) -> dict[str, tuple[int, ...]]:
        """The names and shapes an update of this round may hold."""
        raise NotImplementedError

    def decode_params(self, params: dict) -> dict[str, Delta]:
        """A site's ``params`` as the change of each shared parameter; ValueError when unreadable."""
        raise NotImplementedError

    def apply_mean(self, mean: dict[str, Delta], generator: torch.Generator) -> dict[str, torch.Tensor]:
        """The next global state: the current one plus the merged change."""
        state, _ = apply_mean_delta(self.global_state, mean, None, generator)
        return state

    def state_dict(self) -> dict[str, torch.Tensor]:
        """What the aggregator keeps between rounds, flat, for the controller's checkpoint."""
        return {}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        if state:
            raise ValueError(f"{type(self).__name__} keeps no state, got {sorted(state)[:3]}")

    # ---------------------------------------------------------------------------- the round
    def start_round(self, global_state: dict[str, torch.Tensor], round_number: int) -> None:
        """The state the sites trained from this round (what deltas are relative to)."""
        self.global_state, self.round = global_state, round_number
        self._expected = self.expected_shapes(global_state)
        self.reset_stats()

    def reset_stats(self) -> None:
        self.deltas: list[dict[str, Delta]] = []
        self.weights: list[float] = []
        self.banks: list[PrototypeBank] = []
        self.accepted: list[str] = []
        self.refused: dict[str, str] = {}

    def accept_model(self, model: FLModel) -> bool:
        """Use the update, or refuse it (False) with a log line saying why."""
        site = str((model.meta or {}).get(msg.CLIENT_NAME, "unknown site"))
        if site in self.accepted or site in self.refused:  # a replay, or a site answering twice
            self.warning(f"round {self.round}: a second update of {site} refused (only its first counts)")
            self.refused.setdefault(site, "a second update in the same round")
            return False
        try:  # whatever a site's result makes fail is that site's refusal, never the round's failure
            weight, delta, bank = self._read(model)
            reason = update_problem(delta, self._expected, self.max_rank, self.max_norm)
        except Exception as exc:  # noqa: BLE001 - untrusted input: any failure is a reason to refuse
            reason = str(exc) if isinstance(exc, ValueError) else f"unreadable update ({exc.__class__.__name__}: {exc})"
        if reason is not None:
            reason = re.sub(r"[^\x20-\x7e]", "?", reason)[:500]  # site-chosen names may be in it: printable only
            self.refused[site] = reason
            self.warning(f"round {self.round}: update of {site} refused: {reason}")
            return False
        self.deltas.append(delta)
        self.weights.append(weight)
        if bank is not None:
            self.banks.append(bank)
        self.accepted.append(site)
        self.info(f"round {self.round}: update of {site} accepted (weight {weight:g})")
        return True

    def aggregate_model(self) -> FLModel:
        """The next global state (FULL) with the pooled prototypes in ``meta`` and whether the round was
        ``merged``; the state unchanged with fewer than ``min_updates`` accepted updates."""
        if self.global_state is None:
            raise RuntimeError("start_round() must give the global state before aggregation")
        meta = {"accepted": list(self.accepted), "refused": dict(self.refused), "merged": False}
        if len(self.deltas) < max(self.min_updates, 1):
            self.warning(
                f"round {self.round}: {len(self.deltas)} acceptable update(s), {max(self.min_updates, 1)} "
                "needed; the global model stays as it was"
            )
            self.reset_stats()
            return FLModel(params_type=ParamsType.FULL, params=self.global_state, meta=meta)
        meta["merged"] = True
        deltas = [clip_update(delta, self.clip_norm) for delta in self.deltas] if self.clip_norm else self.deltas
        mean = (
            weighted_mean(deltas, capped_shares(self.weights, self.max_weight_share))
            if self.aggregation == "mean"
            else robust_mean(deltas, self.aggregation, self.trim)
        )
        generator = torch.Generator().manual_seed(self.seed * 100_003 + self.round)
        state = self.apply_mean(mean, generator)
        if self.banks:
            meta.update(pooled_prototypes(self.banks))
        self.reset_stats()
        return FLModel(params_type=ParamsType.FULL, params=state, meta=meta)

    def _read(self, model: FLModel) -> tuple[float, dict[str, Delta], PrototypeBank | None]:
        meta = model.meta or {}
        studies = meta.get(msg.TRAIN_STUDIES)
        if not isinstance(studies, (int, np.integer)) or isinstance(studies, bool) or studies < 1:
            raise ValueError(f"meta '{msg.TRAIN_STUDIES}' must be a positive integer, got {str(studies)[:40]!r}")
        if model.params_type != self.params_type:
            raise ValueError(f"params_type {model.params_type}, expected {self.params_type}")
        delta = self.decode_params(model.params or {})
        refuse_local_parameters(delta)  # the low-rank decoder checks the payload's entry list before decoding
        bank = None
        if msg.PROTOTYPE_SUMS in meta or msg.PROTOTYPE_COUNTS in meta:
            bank = PrototypeBank.from_state(
                {"sums": meta.get(msg.PROTOTYPE_SUMS), "counts": meta.get(msg.PROTOTYPE_COUNTS)}
            )
            expected = (len(OBSERVATIONS), self.prototype_dim)
            if self.prototype_dim is None or tuple(bank.sums.shape) != expected:
                raise ValueError(
                    f"prototype sums of shape {list(bank.sums.shape)}, expected "
                    f"{list(expected) if self.prototype_dim else 'none (contrastive learning is off)'}"
                )
            # A row counts studies: whole, and no more than the site trained on (else one site could
            # outweigh every other in the merged prototypes).
            if not bool((bank.counts == bank.counts.round()).all()) or float(bank.counts.max()) > studies:
                raise ValueError(f"prototype counts must be whole numbers of at most {int(studies)} studies")
        return (1.0 if self.equal_weights else float(studies)), delta, bank


class LowRankAggregator(UpdateAggregator):
    """FedMRG's aggregator: low-rank (SVD-factor) updates, merged exactly.

    Args:
        max_rank: the largest factor rank a site's update may have (the job's ``fl.rank``).
        server_residual: keep what re-factorizing the merged LoRA change leaves out and add it back
            next round (error feedback at the server).
        max_norm, prototype_dim, seed, aggregation, clip_norm, trim, min_updates, equal_weights,
            max_weight_share: as for :class:`UpdateAggregator`.
    """

    params_type = ParamsType.DIFF

    # FLARE writes a component's constructor arguments into the job config from its signature, so every
    # argument is spelled out here (not passed through **kwargs).
    def __init__(
        self,
        max_rank: int = 4,
        server_residual: bool = True,
        max_norm: float = 1000.0,
        prototype_dim: int | None = None,
        seed: int = 0,
        aggregation: str = "mean",
        clip_norm: float | None = None,
        trim: int = 1,
        min_updates: int = 1,
        equal_weights: bool = False,
        max_weight_share: float | None = None,
    ) -> None:
        super().__init__(
            max_norm, prototype_dim, seed, aggregation, clip_norm, trim, min_updates, equal_weights, max_weight_share
        )
        self.max_rank, self.server_residual = max_rank, server_residual
        self.residual: dict[str, Factored] = {}

    def expected_shapes(self, global_state: dict[str, torch.Tensor]) -> dict[str, tuple[int, ...]]:
        return expected_delta_shapes(global_state)

    def decode_params(self, params: dict) -> dict[str, Delta]:
        if set(params) != {msg.UPDATE}:
            raise ValueError(f"params must hold exactly '{msg.UPDATE}', got {sorted(map(str, params))[:3]}")
        payload = msg.array_to_payload(params[msg.UPDATE])
        try:
            refuse_local_parameters(payload_header(payload))
            return decode_checked(payload, self._expected, self.max_rank)
        except ValueError:
            raise
        except Exception as exc:  # untrusted bytes: any failure (safetensors has its own error type) is a refusal
            raise ValueError(f"unreadable update payload ({exc.__class__.__name__}: {exc})") from None

    def apply_mean(self, mean: dict[str, Delta], generator: torch.Generator) -> dict[str, torch.Tensor]:
        state, residual = apply_mean_delta(
            self.global_state, mean, self.residual if self.server_residual else None, generator
        )
        if self.server_residual:
            self.residual = residual
        return state

    def state_dict(self) -> dict[str, torch.Tensor]:
        """The server residual, flat, for the controller's checkpoint."""
        out = {}
        for name, value in self.residual.items():
            out[f"{name}:left"], out[f"{name}:right"] = value.left.contiguous(), value.right.contiguous()
        return out

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        names = {key.rsplit(":", 1)[0] for key in state}
        self.residual = {name: Factored(state[f"{name}:left"], state[f"{name}:right"]) for name in names}


class DenseAggregator(UpdateAggregator):
    """FedAvg of full fp32 parameters (the FedIT baseline): A and B of each LoRA pair averaged apart.

    Args: as for :class:`UpdateAggregator`.
    """

    params_type = ParamsType.FULL

    def expected_shapes(self, global_state: dict[str, torch.Tensor]) -> dict[str, tuple[int, ...]]:
        return {name: tuple(value.shape) for name, value in global_state.items()}

    def decode_params(self, params: dict) -> dict[str, Delta]:
        """The change of each parameter; A and B stay separate, so their mean is FedIT's."""
        delta = {}
        for name, value in params.items():
            array = np.asarray(value)
            if array.dtype.kind not in "fiu":
                raise ValueError(f"{str(name)[:80]}: not a numeric array (dtype {array.dtype})")
            tensor = torch.as_tensor(array, dtype=torch.float32)
            reference = self.global_state.get(name) if self.global_state is not None else None
            if reference is None or tuple(tensor.shape) != tuple(reference.shape):
                delta[name] = tensor  # the checks name the unexpected key or the wrong shape
            else:
                delta[name] = tensor - reference.float()
        return delta


def pooled_prototypes(banks: list[PrototypeBank]) -> dict[str, np.ndarray]:
    """The sites' banks merged: per-finding means and which findings have any (``meta`` entries)."""
    merged = PrototypeBank(*banks[0].sums.shape)
    for bank in banks:
        merged.merge(bank)
    prototypes, available = merged.means()
    return {msg.PROTOTYPES: prototypes.numpy(), msg.AVAILABLE: available.numpy()}


def refuse_local_parameters(names) -> None:
    """ValueError when ``names`` (parameter or payload entry names) include a site-local one."""
    local = local_parameters(map(str, names))
    if local:
        raise ValueError(f"site-local parameters sent ({len(local)}): {', '.join(local[:3])}")


def capped_shares(weights: list[float], max_share: float | None) -> list[float]:
    """Each site's share of the mean: proportional to its weight, none above ``max_share`` (raised
    to ``1/n``); what a capped site loses goes to the others in proportion to their weights."""
    total = float(sum(weights))
    shares = [w / total for w in weights]
    if max_share is None:
        return shares
    cap = max(max_share, 1.0 / len(weights))
    capped: set[int] = set()
    while True:
        over = {i for i, share in enumerate(shares) if share > cap + 1e-12} - capped
        if not over:
            return shares
        capped |= over
        free = [i for i in range(len(shares)) if i not in capped]
        rest = 1.0 - cap * len(capped)
        free_weight = sum(weights[i] for i in free)
        shares = [cap if i in capped else rest * weights[i] / free_weight for i in range(len(shares))]
