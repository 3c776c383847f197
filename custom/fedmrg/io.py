"""Files: reading user files with one-line errors that name the file and the reason, writing a file
(JSON or any bytes) so that a reader never sees half of it, and replacing a whole folder so that a
crash leaves the previous version intact."""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any, BinaryIO

from fedmrg.errors import ConfigError, DataError

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
    """Write ``data`` as JSON through a temporary file (:func:`atomic_write`), so a reader never sees
    half a file.

    Text is kept as it is (UTF-8, not ``\\u`` escapes), so reports in any language stay readable in
    the file; numpy numbers and arrays are written as numbers and lists.
    """
    text = json.dumps(data, indent=1, ensure_ascii=False, default=_plain) + "\n"
    with atomic_write(path) as handle:
        # A lone surrogate (a file name that is not UTF-8) has no UTF-8 form: backslashreplace writes
        # it as \udcxx, which is JSON's own escape for it, so the file reads back to the same string.
        handle.write(text.encode("utf-8", "backslashreplace"))


@contextlib.contextmanager
def atomic_write(path: str | os.PathLike) -> Iterator[BinaryIO]:
    """A binary file for the block to write, which replaces ``path`` when the block ends (through a
    hidden sibling ``.NAME.PID.part``), so a reader never sees half a file; if the block raises,
    ``path`` is left as it was and the partial file deleted."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    staging = path.with_name(f".{path.name}.{os.getpid()}.part")
    try:
        with open(staging, "wb") as handle:
            yield handle
        os.replace(staging, path)
    except BaseException:
        staging.unlink(missing_ok=True)
        raise


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
    """Write a folder as a whole: ``write`` fills a staging folder that then replaces ``target``
    (see :func:`replacing_directory`)."""
    with replacing_directory(target, keep_previous) as staging:
        write(staging)


@contextlib.contextmanager
def replacing_directory(
    target: str | os.PathLike, keep_previous: Path | None = None, *, per_process: bool = False
) -> Iterator[Path]:
    """A staging folder for the block to fill; when the block ends, it replaces ``target`` as a
    whole, so that a crash or an error leaves the previous version intact.

    The staging folder is ``target.tmp`` and the version replaced passes through ``target.old``
    (which :func:`recover_directory` puts back after a crash between the two renames). With
    ``per_process``, both are hidden folders of this process (``.NAME.building-PID``,
    ``.NAME.old-PID``), for a folder that is built once rather than rewritten as a run goes on.
    If the block raises, the staging folder is deleted and ``target`` left as it was; if the
    second rename fails, the previous version is put back. With ``keep_previous``, the version
    replaced is kept there (replacing the one kept before) instead of being deleted.
    """
    target = Path(target)
    if per_process:
        clear_dead_builds(target)
        staging = target.with_name(f".{target.name}.building-{os.getpid()}")
        previous = target.with_name(f".{target.name}.old-{os.getpid()}")
    else:
        staging, previous = target.with_name(target.name + ".tmp"), target.with_name(target.name + ".old")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    try:
        yield staging
        if target.exists():
            shutil.rmtree(previous, ignore_errors=True)  # left by a crash after an earlier swap
            target.rename(previous)
        try:
            staging.rename(target)
        except OSError:
            if previous.exists() and not target.exists():
                previous.rename(target)
            raise
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    if keep_previous is not None and previous.exists():
        shutil.rmtree(keep_previous, ignore_errors=True)
        previous.rename(keep_previous)
    shutil.rmtree(previous, ignore_errors=True)


def clear_dead_builds(target: str | os.PathLike) -> list[Path]:
    """Remove what builds of ``target`` by processes that are gone left behind (a SIGKILLed
    ``prepare-data``): their ``.NAME.building-PID`` folders, and their ``.NAME.old-PID`` ones, which
    go back to ``target`` when a crash between the two renames left it missing. A running build's
    folders are left alone. Returns the folders removed or put back."""
    target = Path(target)
    done = []
    for kind in ("old", "building"):  # a lost target comes back from .old first
        for path in sorted(target.parent.glob(f".{target.name}.{kind}-*")):
            pid = path.name.rsplit("-", 1)[-1]
            if not pid.isdigit() or _process_alive(int(pid)):
                continue
            if kind == "old" and not target.exists():
                path.rename(target)
            else:
                shutil.rmtree(path, ignore_errors=True)
            done.append(path)
    return done


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process: alive
        return True
    return True


# A name that becomes one folder: job names, state folders. No separators, no leading dot.
NAME_PATTERN = r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}"


def checked_name(value: Any, what: str) -> str:
    """``value`` when it is a safe folder name (:data:`NAME_PATTERN`); else a ConfigError naming ``what``."""
    if not isinstance(value, str) or not re.fullmatch(NAME_PATTERN, value):
        raise ConfigError(
            f"{what}: {str(value)[:80]!r} is not a name: letters, digits, '_', '.' and '-', at most 64, "
            "starting with a letter or digit"
        )
    return value


def path_inside(root: str | os.PathLike, *parts: str) -> Path:
    """``root/parts...``, refused (ConfigError) when it resolves outside ``root`` (``..``, an absolute
    part, a link that leads elsewhere)."""
    base = Path(root).resolve()
    path = base.joinpath(*parts).resolve()
    if path != base and base not in path.parents:
        raise ConfigError(f"{Path(root).joinpath(*parts)}: outside {base}")
    return path
