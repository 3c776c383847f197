"""Trainer state on disk without pickle: tensors in safetensors, everything else in JSON.

A trainer's state (optimizer moments, schedule, loop counters, random states) is a tree of dicts,
lists, tuples, numbers, strings, tensors and numpy arrays. :func:`save_tree` writes the tensors and
arrays to ``<name>.safetensors`` and the rest to ``<name>.json``, with small markers where a tensor,
an array, a tuple or a dict with non-string keys stood; :func:`load_tree` rebuilds the same tree.
Nothing in either file can run code when it is read, unlike a pickled ``torch.save`` file: a site's
state folder may have been written by someone else.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from fedmrg.errors import DataError
from fedmrg.io import write_json

_TENSOR, _ARRAY, _TUPLE, _ITEMS = "__tensor__", "__ndarray__", "__tuple__", "__items__"
_FORMAT = "fedmrg-tree/1"


def tree_files(path: str | os.PathLike) -> tuple[Path, Path]:
    """The two files of a tree saved at ``path`` (without suffix): JSON and safetensors."""
    path = Path(path)
    return path.with_name(path.name + ".json"), path.with_name(path.name + ".safetensors")


def save_tree(path: str | os.PathLike, tree: Any) -> None:
    """Write ``tree`` as ``<path>.json`` + ``<path>.safetensors``."""
    tensors: dict[str, torch.Tensor] = {}
    skeleton = _flatten(tree, tensors)
    json_file, tensor_file = tree_files(path)
    save_file(tensors, str(tensor_file))
    write_json(json_file, {"format": _FORMAT, "tree": skeleton})


def load_tree(path: str | os.PathLike) -> Any:
    """The tree :func:`save_tree` wrote at ``path``; a DataError names a file that is not one."""
    json_file, tensor_file = tree_files(path)
    try:
        data = json.loads(json_file.read_text(encoding="utf-8"))
        tensors = load_file(str(tensor_file))
    except (OSError, ValueError, SafetensorError) as exc:
        raise DataError(f"{json_file}: unreadable trainer state ({exc.__class__.__name__}: {exc})") from None
    if not isinstance(data, dict) or data.get("format") != _FORMAT:
        raise DataError(f"{json_file}: not a FedMRG state file (format {_FORMAT})")
    try:
        return _rebuild(data["tree"], tensors)
    except (KeyError, TypeError, ValueError) as exc:
        raise DataError(f"{json_file}: malformed trainer state ({exc})") from None


def _flatten(value: Any, tensors: dict[str, torch.Tensor]) -> Any:
    if isinstance(value, torch.Tensor):
        key = str(len(tensors))
        tensors[key] = value.detach().cpu().contiguous()
        return {_TENSOR: key}
    if isinstance(value, np.ndarray):
        key = str(len(tensors))
        tensors[key] = torch.from_numpy(value.astype(np.int64) if value.dtype == np.uint32 else value.copy())
        return {_ARRAY: key, "dtype": str(value.dtype)}
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, tuple):
        return {_TUPLE: [_flatten(item, tensors) for item in value]}
    if isinstance(value, list):
        return [_flatten(item, tensors) for item in value]
    if isinstance(value, dict):
        if all(isinstance(key, str) and not key.startswith("__") for key in value):
            return {key: _flatten(item, tensors) for key, item in value.items()}
        return {_ITEMS: [[_flatten(key, tensors), _flatten(item, tensors)] for key, item in value.items()]}
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    raise TypeError(f"cannot save a {type(value).__name__} in a state file")


def _rebuild(value: Any, tensors: dict[str, torch.Tensor]) -> Any:
    if isinstance(value, list):
        return [_rebuild(item, tensors) for item in value]
    if not isinstance(value, dict):
        return value
    if _TENSOR in value:
        return tensors[value[_TENSOR]]
    if _ARRAY in value:
        dtype = np.dtype(value["dtype"])
        if dtype.kind not in "biuf":
            raise ValueError(f"array of dtype {dtype} (numbers only)")
        return tensors[value[_ARRAY]].numpy().astype(dtype)
    if _TUPLE in value:
        return tuple(_rebuild(item, tensors) for item in value[_TUPLE])
    if _ITEMS in value:
        return {_rebuild(key, tensors): _rebuild(item, tensors) for key, item in value[_ITEMS]}
    return {key: _rebuild(item, tensors) for key, item in value.items()}
