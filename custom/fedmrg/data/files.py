"""Reading user files safely: one-line errors that name the file and the reason.

Shared by the data room (annotation.json, benchmark.json) and the evaluation commands.
"""

from __future__ import annotations

import json
import os
from collections import Counter
from pathlib import Path
from typing import Any, Iterable

from fedmrg.errors import DataError

_SHOWN = 5  # ids quoted in an error message


def some(ids: Iterable[str], limit: int = _SHOWN) -> str:
    """``'a', 'b', 'c'`` for the first ``limit`` sorted ids, with ``...`` when there are more."""
    ids = sorted(ids)
    shown = ", ".join(repr(i) for i in ids[:limit])
    return shown + (", ..." if len(ids) > limit else "")


def read_utf8(path: str | os.PathLike, what: str = "file") -> str:
    """The text of ``path``; a missing ``what`` or bytes that are not UTF-8 are a DataError."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: {what} not found")
    data = path.read_bytes()
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        raise DataError(
            f"{path}: not UTF-8 text (byte 0x{data[exc.start]:02x} at offset {exc.start}, line {line})"
        ) from None
    return text.removeprefix("\ufeff")  # a byte order mark, as spreadsheet programs write it


class _DuplicateKeys(ValueError):
    def __init__(self, keys: set[str]):
        super().__init__(keys)
        self.keys = keys


def _no_duplicate_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    twice = {key for key, count in Counter(key for key, _ in pairs).items() if count > 1}
    if twice:
        raise _DuplicateKeys(twice)
    return dict(pairs)


def load_json(path: str | os.PathLike, what: str = "file") -> Any:
    """Parse a UTF-8 JSON file; invalid JSON or a key given twice in an object is a DataError."""
    text = read_utf8(path, what)
    try:
        return json.loads(text, object_pairs_hook=_no_duplicate_keys)
    except json.JSONDecodeError as exc:
        raise DataError(f"{path}: not valid JSON (line {exc.lineno}, column {exc.colno}: {exc.msg})") from None
    except _DuplicateKeys as exc:
        raise DataError(f"{path}: key given twice: {some(exc.keys)}") from None
