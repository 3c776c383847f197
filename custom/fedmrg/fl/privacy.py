"""A hospital's guard on what leaves it: a FLARE task result filter for FedMRG results.

A site forces :class:`ResultGuard` on every job through its ``local/privacy.json`` (the
``task_result_filters`` of the scope jobs run under; see ``provisioning/privacy.json``). FLARE runs
a site's task result filters in the site's job process, after the executor and before the result
is sent. The guard checks the results of FedMRG's tasks (``train``, ``validate``,
``submit_model``):

- no parameter is site-local (:func:`is_local_parameter`: the ``specialized`` LoRA adapter and the
  client contrastive head); for a low-rank update the names are the entries listed in the codec
  payload's header, so an unreadable payload is refused too;
- ``meta`` holds only the keys FedMRG sends for that task (:data:`RESULT_META`), and apart from the
  model description (``submit_model``'s, not checked) and FLARE's ``filter_history`` (a list of
  filter class names, as ``DXO.add_filter_history`` writes it), numbers only (a number, a numeric
  array or a mapping of them): no text, such as generated reports, leaves through scores or metrics;
- parameters are numeric arrays, and the result is at most ``max_result_mib`` MiB (when set);
- the shareable holds nothing besides its DXO and its headers, and the headers only what FLARE's
  ``FLModelUtils.to_shareable`` and ``make_reply`` write into FedMRG's results (:data:`RESULT_HEADERS`:
  the content type ``DXO``, round numbers, a FLARE return code). FLARE's client runner adds no header
  of its own before the result filters run, so a header from elsewhere (a job component handling
  ``AFTER_TASK_EXECUTION``, such as the telemetry of FLARE's ``JobStatsReporter`` when a job runs
  it at its sites) gets the result refused.

What the guard does not see: the headers the client runner adds after the result filters (the task
name and id, the audit event id, the server's cookie jar echoed back, and the message id when it is
sent), and what the job's own result filters do, as FLARE runs them after the site's (the scope's
filters first); a job may name only the classes the site's ``class_allow_list`` admits (enforced in
``provisioning/resources.json``) and bring no code (``provisioning/authorization.json``).

What a refusal does (FLARE 2.9, ``nvflare/private/fed/client/client_runner.py``): the guard logs
which key it refused and raises :class:`ResultRefused` (FLARE's ``ContentBlockedException``); the
client runner catches any exception from a result filter and sends the server, instead of the
result, an empty reply whose return code is ``TASK_RESULT_FILTER_ERROR`` (and writes
``submit result: TASK_RESULT_FILTER_ERROR`` to the site's audit log). The server's
``ModelController`` (FedMRG's controller is one) ignores that reply when the other sites still
reach the task's ``min_responses`` and otherwise stops the job ("Result from <site> is bad, error
code: TASK_RESULT_FILTER_ERROR"); with ``fl.min_sites`` unset every site is needed, so one refused
result stops a FedMRG job. FLARE's own log lines show only the exception's type when its secure
logging is on (``nvflare.security.logging``), which is why the guard logs the reason itself, to the
site's job log and ``error_log.txt`` (which a site with ``allow_log_streaming`` streams to the server).

Results of other tasks pass unchanged (the guard knows only FedMRG's messages) unless
``refuse_other_tasks`` is set. FedMRG's task names are FLARE's standard ones, so on a site that
forces the guard, every job's ``train`` / ``validate`` / ``submit_model`` results must be shaped
like FedMRG's.
"""

from __future__ import annotations

import numbers
from collections.abc import Callable, Iterable, Mapping

import numpy as np
import torch
from nvflare.apis.dxo import DXO, DataKind, from_shareable
from nvflare.apis.filter import ContentBlockedException, Filter
from nvflare.apis.fl_constant import FLContextKey, FLMetaKey, ReturnCode
from nvflare.apis.fl_context import FLContext
from nvflare.apis.shareable import ReservedHeaderKey, Shareable
from nvflare.app_common.app_constant import AppConstants

from fedmrg.fl import messages as msg
from fedmrg.fl.codec import payload_header, payload_tensor_names
from fedmrg.model.parameters import local_parameters

# --------------------------------------------------------------------------- what FedMRG sends
_FLARE_META = frozenset({FLMetaKey.INITIAL_METRICS, FLMetaKey.FILTER_HISTORY})
RESULT_META: dict[str, frozenset[str]] = {
    msg.TRAIN: frozenset(
        {
            msg.TRAIN_STUDIES,
            msg.BYTES_DOWN,
            msg.NEED_GLOBAL,
            msg.GLOBAL_DIGEST,
            msg.STEPS,
            msg.PROTOTYPE_SUMS,
            msg.PROTOTYPE_COUNTS,
        }
    )
    | _FLARE_META,
    msg.VALIDATE: frozenset({msg.SCORES, msg.GLOBAL_DIGEST, msg.BYTES_DOWN, msg.NEED_GLOBAL}) | _FLARE_META,
    msg.SUBMIT_MODEL: frozenset({msg.MODEL_META}) | _FLARE_META,
}
_DATA_KINDS = [DataKind.WEIGHTS, DataKind.WEIGHT_DIFF, DataKind.METRICS]
_DXO = "DXO"  # the DXO's key in a shareable, and the content type header DXO.update_shareable writes
_SHAREABLE_KEYS = frozenset({ReservedHeaderKey.HEADERS, _DXO})
_RETURN_CODES = frozenset(code for name, code in vars(ReturnCode).items() if not name.startswith("_"))
_MIB = 1 << 20
_SHOWN = 5  # names listed per problem in a refusal


def _is_dxo_content_type(value) -> bool:
    return isinstance(value, str) and value == _DXO


def _is_return_code(value) -> bool:
    return isinstance(value, str) and value in _RETURN_CODES


def _is_round(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


RESULT_HEADERS: dict[str, Callable[[object], bool]] = {  # header -> its admitted values
    ReservedHeaderKey.CONTENT_TYPE: _is_dxo_content_type,  # DXO.update_shareable
    ReservedHeaderKey.RC: _is_return_code,  # make_reply (an error reply)
    AppConstants.START_ROUND: _is_round,  # FLModelUtils.to_shareable (FLModel.start_round, 0 by default)
    AppConstants.CURRENT_ROUND: _is_round,  # FLModelUtils.to_shareable, when the FLModel has it
    AppConstants.NUM_ROUNDS: _is_round,  # FLModelUtils.to_shareable, when the FLModel has it
}


class ResultRefused(ContentBlockedException):
    """A result that must not leave the site."""


class ResultGuard(Filter):
    """Refuses FedMRG results that carry site-local parameters, unexpected metadata or headers, or
    too many bytes.

    A plain :class:`~nvflare.apis.filter.Filter`, not a ``DXOFilter``: ``DXOFilter.process`` lets
    through what must be checked here (a result with an empty ``params``, as ``validate`` sends its
    scores in ``meta``; results whose return code is not OK; content outside the DXO), and its
    abstract ``process_dxo`` would go unused.
    """

    def __init__(
        self,
        max_result_mib: float | None = None,
        extra_meta_keys: list[str] | None = None,
        refuse_other_tasks: bool = False,
    ) -> None:
        """
        Args:
            max_result_mib: the largest result sent, in MiB (None: no limit).
            extra_meta_keys: ``meta`` keys admitted besides FedMRG's.
            refuse_other_tasks: refuse the results of tasks other than FedMRG's instead of passing
                them unchanged.
        """
        super().__init__()
        if max_result_mib is not None and not (
            _is_number(max_result_mib) and not isinstance(max_result_mib, bool) and max_result_mib > 0
        ):
            raise ValueError(f"max_result_mib must be a positive number or null, got {max_result_mib!r}")
        extra = list(extra_meta_keys or [])
        if not all(isinstance(key, str) for key in extra):
            raise TypeError(f"extra_meta_keys must be a list of strings, got {extra_meta_keys!r}")
        if not isinstance(refuse_other_tasks, bool):
            raise TypeError(f"refuse_other_tasks must be true or false, got {refuse_other_tasks!r}")
        self.max_result_mib = max_result_mib
        self.extra_meta_keys = frozenset(extra)
        self.refuse_other_tasks = refuse_other_tasks

    # --------------------------------------------------------------------------- FLARE hooks
    def process(self, shareable: Shareable, fl_ctx: FLContext) -> Shareable:
        """Check the whole result, then return it unchanged (or raise :class:`ResultRefused`)."""
        task = fl_ctx.get_prop(FLContextKey.TASK_NAME)
        if task is not None and task not in RESULT_META:
            if self.refuse_other_tasks:
                self._refuse(fl_ctx, task, [f"task {task!r} is not a FedMRG task"])
            self.log_debug(fl_ctx, f"result of task {task!r} passed unchecked (not a FedMRG task)")
            return shareable
        problems = result_problems(shareable, task, self.max_result_mib, self.extra_meta_keys)
        if problems:
            self._refuse(fl_ctx, task, problems)
        self.log_info(fl_ctx, f"ResultGuard: result of task {task} checked, no site-local content")
        return shareable

    def _refuse(self, fl_ctx: FLContext, task: str | None, problems: list[str]) -> None:
        reason = f"result of task {task or '(unknown)'} refused, it stays at this site: " + "; ".join(problems)
        self.log_error(fl_ctx, reason, fire_event=False)
        raise ResultRefused(reason)


# ---------------------------------------------------------------------------------- checks
def result_problems(
    shareable: Shareable, task: str | None, max_result_mib: float | None = None, extra_meta_keys: Iterable[str] = ()
) -> list[str]:
    """Why a FedMRG task's result must not leave the site (empty: it may)."""
    extra_keys = sorted(set(map(str, shareable)) - _SHAREABLE_KEYS)
    if extra_keys:
        return [f"content outside the DXO: {_names(extra_keys)}"]
    problems = header_problems(shareable.get(ReservedHeaderKey.HEADERS) or {})
    if problems:
        return problems
    if _DXO not in shareable and shareable.get_return_code() != ReturnCode.OK:
        return []  # a plain error reply: its return code alone
    try:
        dxo = from_shareable(shareable)
    except (ValueError, KeyError, TypeError) as exc:
        return [f"not a FedMRG result ({exc})"]
    return dxo_problems(dxo, task, extra_meta_keys) + size_problems(dxo, max_result_mib)


def header_problems(headers) -> list[str]:
    """Headers FLARE does not write into a result before the result filters run, and values it
    does not write there (:data:`RESULT_HEADERS`)."""
    if not isinstance(headers, Mapping):
        return [f"headers of type {type(headers).__name__}, expected a mapping"]
    unexpected = sorted(str(key) for key in headers if key not in RESULT_HEADERS)
    bad = sorted(
        f"{key} ({type(value).__name__})"
        for key, value in headers.items()
        if key in RESULT_HEADERS and not RESULT_HEADERS[key](value)
    )
    problems = []
    if unexpected:
        problems.append(f"unexpected headers: {_names(unexpected)}")
    if bad:
        problems.append(f"header values FLARE does not write: {_names(bad)}")
    return problems


def dxo_problems(dxo: DXO, task: str | None, extra_meta_keys: Iterable[str] = ()) -> list[str]:
    """The parameter and metadata checks of one DXO (see the module docstring)."""
    if dxo.data_kind not in _DATA_KINDS:
        return [f"data kind {dxo.data_kind} (FedMRG sends {', '.join(k.value for k in _DATA_KINDS)})"]
    problems = []
    data = dxo.data if dxo.data is not None else {}
    if not isinstance(data, Mapping):
        return [f"data of type {type(data).__name__}, expected a mapping of names to arrays"]
    if dxo.data_kind == DataKind.METRICS:
        problems += _numeric_problems(data, "metrics")
    else:
        problems += param_problems(data)
    problems += meta_problems(dxo.meta or {}, task, extra_meta_keys)
    return problems


def param_problems(params: Mapping) -> list[str]:
    """Local parameter names (in the dense parameters or in a low-rank payload's header) and
    non-numeric values."""
    names = [str(name) for name in params if name != msg.UPDATE]
    problems: list[str] = []
    if msg.UPDATE in params:
        try:
            payload = msg.array_to_payload(params[msg.UPDATE])
            entries = payload_header(payload)
            tensors = payload_tensor_names(payload)
        except Exception as exc:  # untrusted bytes: what cannot be read cannot be checked
            problems.append(f"unreadable update payload '{msg.UPDATE}' ({exc.__class__.__name__})")
        else:
            # The tensors themselves, not only the entry list the payload announces: a tensor left
            # out of that list would still leave the site.
            tensor_entries = {name.rsplit(":", 1)[0] for name in tensors}
            local = local_parameters(set(entries) | tensor_entries)
            if local:
                problems.append(f"site-local entries in the update payload: {_names(local)}")
            hidden = sorted(tensor_entries - set(entries))
            if hidden:
                problems.append(f"update payload tensors its entry list does not announce: {_names(hidden)}")
    local = local_parameters(names)
    if local:
        problems.append(f"site-local parameters: {_names(local)}")
    not_arrays = sorted(str(name) for name, value in params.items() if not _is_numeric_array(value))
    if not_arrays:
        problems.append(f"parameters that are not numeric arrays: {_names(not_arrays)}")
    return problems


def meta_problems(meta: Mapping, task: str | None, extra_meta_keys: Iterable[str] = ()) -> list[str]:
    """Keys FedMRG does not send for ``task`` (any of its tasks when unknown), a ``filter_history``
    that is not a list of filter class names, and text where only numbers belong."""
    allowed = RESULT_META.get(task) if task else None
    if allowed is None:
        allowed = frozenset().union(*RESULT_META.values())
    allowed = allowed | frozenset(extra_meta_keys)
    problems = []
    unexpected = sorted(str(key) for key in meta if key not in allowed)
    if unexpected:
        problems.append(f"unexpected meta keys: {_names(unexpected)}")
    for key in sorted(str(k) for k in meta if k in allowed):
        problems += _meta_value_problems(key, meta[key])
    return problems


def _meta_value_problems(key: str, value) -> list[str]:
    if key == msg.MODEL_META:
        return []  # the model description submit_model sends
    if key == FLMetaKey.FILTER_HISTORY:
        return filter_history_problems(value)
    return _numeric_problems(value, f"meta.{key}")


def filter_history_problems(history) -> list[str]:
    """FLARE's ``filter_history`` holds the class names of the DXO filters that changed the result
    (``DXOFilter`` adds ``self.__class__.__name__`` through ``DXO.add_filter_history``): a list of
    Python identifiers, nothing else."""
    if isinstance(history, list) and all(isinstance(name, str) and name.isidentifier() for name in history):
        return []
    return [f"meta.{FLMetaKey.FILTER_HISTORY} is not a list of filter class names"]


def size_problems(dxo: DXO, max_result_mib: float | None) -> list[str]:
    """The size limit: the bytes of the DXO's data and meta (:func:`content_bytes`) against ``max_result_mib``."""
    if max_result_mib is None:
        return []
    size = content_bytes(dxo.data) + content_bytes(dxo.meta)
    if size > max_result_mib * _MIB:
        return [f"{size / _MIB:.1f} MiB, above the site's limit of {max_result_mib:g} MiB"]
    return []


def content_bytes(value) -> int:
    """Bytes a value carries: array and tensor data, strings, keys; 8 per scalar."""
    if isinstance(value, np.ndarray):
        return int(value.nbytes)
    if isinstance(value, torch.Tensor):
        return value.numel() * value.element_size()
    if isinstance(value, (bytes, bytearray, str)):
        return len(value)
    if isinstance(value, Mapping):
        return sum(content_bytes(k) + content_bytes(v) for k, v in value.items())
    if isinstance(value, (list, tuple, set)):
        return sum(content_bytes(v) for v in value)
    return 8


# --------------------------------------------------------------------------------- values
def _is_numeric_array(value) -> bool:
    if isinstance(value, np.ndarray):
        return value.dtype.kind in "biuf"
    if isinstance(value, torch.Tensor):
        return not value.is_complex()
    return False


def _is_number(value) -> bool:
    return value is None or isinstance(value, (numbers.Real, np.number, np.bool_))


def _numeric_problems(value, where: str) -> list[str]:
    """``value`` must be numbers, numeric arrays, or mappings / lists of them (no text)."""
    bad: list[str] = []
    _collect_non_numeric(value, where, bad)
    return [f"values that are not numbers: {_names(bad)}"] if bad else []


def _collect_non_numeric(value, path: str, bad: list[str]) -> None:
    if _is_number(value) or _is_numeric_array(value):
        return
    if isinstance(value, Mapping):
        for key, item in value.items():
            _collect_non_numeric(item, f"{path}.{key}", bad)
    elif isinstance(value, (list, tuple)):
        for index, item in enumerate(value):
            _collect_non_numeric(item, f"{path}[{index}]", bad)
    else:
        bad.append(f"{path} ({type(value).__name__})")


def _names(names: list[str]) -> str:
    shown = ", ".join(names[:_SHOWN])
    return shown + (f" and {len(names) - _SHOWN} more" if len(names) > _SHOWN else "")
