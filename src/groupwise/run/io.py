"""The run's file I/O in one place: atomic writes, JSON lines appended and read back, step logs
cut back on resume.

**Atomic writes** (:func:`write_bytes_atomic`, :func:`write_text_atomic`,
:func:`write_json_atomic`): the content goes to a temporary file in the target's own directory
(the same file system, so the rename is atomic), is fsync-ed, renamed over the target, and the
directory is fsync-ed so the rename itself survives a crash. A reader sees the old file or the
new one, never a part of either; a failed write removes its temporary file and raises. The new
file gets the permissions a plain ``open(path, "w")`` would (``0o666`` less the umask).
:func:`atomic_directory` does the same for a directory (a checkpoint, a saved model), and turns
a full disk into :class:`DiskFullError`.

**JSON lines**: :func:`append_jsonl` appends its lines with one write and fsyncs them, so a
kill leaves at most one torn line, the file's last, without its newline. :func:`read_jsonl`
skips that torn line (it may also be a line a running trainer is writing) and raises
:class:`JSONLError` naming the file and line for any other line that is not a JSON object.

Parts below ``run`` in the layering (``models``, ``data``, ``rollout``, ``tasks``) do not import
this module and keep their own few writes and readers.
"""

from __future__ import annotations

import errno
import json
import os
import secrets
import shutil
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from torch import Tensor

# ---------------------------------------------------------------------------- atomic files


def write_bytes_atomic(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically (temporary file beside it, fsync, rename)."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)


def write_text_atomic(path: Path, text: str) -> None:
    """Write ``text`` (UTF-8, newlines as given) to ``path`` atomically."""
    write_bytes_atomic(path, text.encode("utf-8"))


def write_json_atomic(path: Path, data: Any) -> None:
    """Write ``data`` as JSON (indent 2, then a newline) to ``path`` atomically; tensors become
    lists and other non-JSON values their ``str``."""
    write_text_atomic(path, json.dumps(data, indent=2, default=json_default) + "\n")


def json_default(value: Any) -> Any:
    """``json.dumps``'s ``default`` for the run's logs: a tensor as a list, anything else as
    its ``str``."""
    if isinstance(value, Tensor):
        return value.tolist()
    return str(value)


def fsync_dir(path: Path) -> None:
    """Flush a directory entry (a rename inside it) to disk."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_tree(root: Path) -> None:
    """Flush every file under ``root``, then the directories, to disk."""
    for dirpath, _dirnames, filenames in os.walk(root):
        for name in filenames:
            fd = os.open(os.path.join(dirpath, name), os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        fsync_dir(Path(dirpath))


# ---------------------------------------------------------------------------- atomic directories
class DiskFullError(OSError):
    """No space left on the device (or no quota) while writing a checkpoint or model; the
    message names the path and what is left intact. ``errno`` is ``ENOSPC``."""

    def __init__(self, message: str) -> None:
        super().__init__(errno.ENOSPC, message)
        self.message = message

    def __str__(self) -> str:
        return self.message


_FULL_MESSAGES = ("no space left on device", "disk quota exceeded", "os error 28", "os error 122")
_NEARLY_FULL = 64 * 2**20
"""Free bytes under which a failed write is put down to a full disk: some writers report one
with a bare error (``torch.save``: "unexpected pos"; safetensors: "I/O error ... os error 28")."""


def is_disk_full(exc: BaseException, where: Path | None = None) -> bool:
    """Whether ``exc`` (or an exception it was raised from) says the disk or quota is full, or,
    failing that, whether the file system holding ``where`` has (almost) no free space."""
    seen: set[int] = set()
    cause: BaseException | None = exc
    while cause is not None and id(cause) not in seen:
        seen.add(id(cause))
        if isinstance(cause, OSError) and cause.errno in (errno.ENOSPC, errno.EDQUOT):
            return True
        if any(text in str(cause).lower() for text in _FULL_MESSAGES):
            return True
        cause = cause.__cause__ or cause.__context__
    try:
        return where is not None and shutil.disk_usage(where).free < _NEARLY_FULL
    except OSError:
        return False


def replace_dir(tmp: Path, target: Path) -> None:
    """Move the finished directory ``tmp`` to ``target`` (replacing an older one, which is
    moved aside first and removed only once the new one is in place)."""
    old = target.with_name(f".{target.name}.old-{os.getpid()}")
    if target.exists():
        os.replace(target, old)
    os.replace(tmp, target)
    if old.exists():
        shutil.rmtree(old, ignore_errors=True)


@contextmanager
def atomic_directory(
    target: Path, disk_full: Callable[[], str], *, durable: bool = False
) -> Iterator[Path]:
    """Write a directory atomically: yields an empty ``.<name>.tmp-<pid>`` beside ``target``
    (its parents created) and, when the block ends, renames it over ``target``
    (:func:`replace_dir`).

    If the block (or the rename) fails, the temporary directory is removed and the error
    raised again; a full disk (:func:`is_disk_full`) becomes :class:`DiskFullError` with the
    message ``disk_full()``, asked after the removal. ``durable``: fsync every file before the
    rename and the parent directory after it.
    """
    tmp = target.with_name(f".{target.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        yield tmp
        if durable:
            fsync_tree(tmp)
        replace_dir(tmp, target)
    except Exception as exc:
        full = is_disk_full(exc, tmp.parent)
        shutil.rmtree(tmp, ignore_errors=True)
        if full:
            raise DiskFullError(disk_full()) from exc
        raise
    if durable:
        fsync_dir(target.parent)


# ---------------------------------------------------------------------------- JSON lines
class JSONLError(ValueError):
    """A line of a JSON-lines file is not a JSON object; the message names the file and line."""


def append_jsonl(
    path: Path,
    *records: Mapping[str, Any],
    default: Callable[[Any], Any] | None = json_default,
) -> None:
    """Append one JSON line per record with a single write and fsync it, so a crash leaves at
    most the last line torn. ``default``: ``json.dumps``'s (None: a non-JSON value raises
    ``TypeError`` and nothing is written)."""
    text = "".join(json.dumps(record, default=default) + "\n" for record in records)
    with open(path, "a", encoding="utf-8") as handle:
        handle.write(text)
        handle.flush()
        os.fsync(handle.fileno())


def read_jsonl(path: Path) -> Iterator[tuple[int, dict[str, Any]]]:
    """``(line number, object)`` of every line of a JSON-lines file, 1-based, in order.

    Blank lines are skipped, and so is a last line without its newline that does not parse
    (torn by a kill, or being written by a running trainer). Any other line that is not a
    JSON object raises :class:`JSONLError` naming the file and the line. A missing file
    yields nothing.
    """
    if not Path(path).is_file():
        return
    with open(path, encoding="utf-8") as handle:
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            value = _parse_object(line)
            if value is not None:
                yield number, value
                continue
            if not line.endswith("\n"):  # the torn (or still growing) last line
                return
            raise JSONLError(f"{path}:{number}: not a JSON object: {line.strip()[:80]!r}")


def _parse_object(line: str) -> dict[str, Any] | None:
    """The JSON object on ``line``, or None if it holds anything else or does not parse."""
    try:
        value = json.loads(line)
    except json.JSONDecodeError:
        return None
    return value if isinstance(value, dict) else None


def truncate_jsonl(path: Path, last_step: int) -> int:
    """Keep the lines of a step log up to ``last_step``; returns how many were dropped.

    A resumed run calls this on metrics.jsonl, completions.jsonl and eval_samples.jsonl: lines
    written after its checkpoint (their steps are taken again), a line torn by a kill and any
    line that is not a JSON object with an integer ``step`` are removed, so the log continues
    with no duplicated and no missing step. Kept lines are kept byte for byte; the file is
    replaced atomically.
    """
    if not path.exists():
        return 0
    kept: list[str] = []
    dropped = 0
    for line in path.read_text(encoding="utf-8").splitlines():
        step = (_parse_object(line) or {}).get("step")
        if isinstance(step, int) and step <= last_step:
            kept.append(line + "\n")
        else:
            dropped += 1
    if dropped:
        write_text_atomic(path, "".join(kept))
    return dropped


__all__ = [
    "DiskFullError",
    "JSONLError",
    "append_jsonl",
    "atomic_directory",
    "fsync_dir",
    "fsync_tree",
    "is_disk_full",
    "json_default",
    "read_jsonl",
    "replace_dir",
    "truncate_jsonl",
    "write_bytes_atomic",
    "write_json_atomic",
    "write_text_atomic",
]
