"""Files: reading user files with one-line errors that name the file and the reason, writing JSON
so that a reader never sees half a file, and replacing a whole folder so that a crash leaves the
previous version intact."""

from __future__ import annotations

import json
import os
import shutil
from collections import Counter
from pathlib import Path
from typing import Any, Callable, Iterable

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


def write_json(path: str | os.PathLike, data: Any) -> None:
    """Write JSON through a temporary file, so a reader never sees half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    staging = path.with_name(path.name + ".tmp")
    staging.write_text(json.dumps(data, indent=1, default=_plain) + "\n", encoding="utf-8")
    staging.replace(path)


def _plain(value: Any) -> Any:
    if hasattr(value, "tolist"):  # numpy scalars and arrays
        return value.tolist()
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")


def recover_directory(target: Path, marker: str) -> None:
    """A crash between the two renames of :func:`replace_directory` leaves only ``target.old``
    (complete when it holds ``marker``): put it back."""
    previous = target.with_name(target.name + ".old")
    if not target.exists() and (previous / marker).is_file():
        previous.rename(target)


def replace_directory(target: Path, write: Callable[[Path], None], keep_previous: Path | None = None) -> None:
    """Write a folder as a whole: ``write`` fills a staging folder that then replaces ``target``,
    so that a crash leaves the previous version intact. With ``keep_previous``, the version replaced
    is kept there (replacing the one kept before) instead of being deleted."""
    staging = target.with_name(target.name + ".tmp")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    write(staging)
    previous = target.with_name(target.name + ".old")
    if target.exists():
        target.rename(previous)
    staging.rename(target)
    if keep_previous is not None and previous.exists():
        shutil.rmtree(keep_previous, ignore_errors=True)
        previous.rename(keep_previous)
    shutil.rmtree(previous, ignore_errors=True)
