"""Event log files: their writes go through the journal's writer thread, which hands them to the
file helper process (daemon/filework.py) in batches before writing the records that follow, so
a log is on file before the record that shows it. Never written on the event loop: a new file
costs tens of microseconds in the kernel here.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Protocol

from daemon.ids import NAME_RE, BadId, check_id
from daemon.text import printable

log = logging.getLogger(__name__)


def event_log_path(logs_dir: Path, function: str, request_id: str) -> Path:
    """`logs/FUNCTION/ID.log`, built only from a valid id and function name (so never a path out
    of logs/); BadId otherwise (only a journal written before ids were checked can hold one)."""
    if not NAME_RE.match(function):
        raise BadId(f'bad function name "{printable(function)}"')
    return logs_dir / function / f"{check_id(request_id)}.log"


class LogSink(Protocol):
    """Where an event log's writes go."""

    def write_log(self, path: Path, data: bytes) -> None:
        """Append `data` to the file at `path`, after every write handed over before."""


class DirectLogs:
    """Writes at once on the caller's thread: for instances run without a journal (tools, tests)."""

    def write_log(self, path: Path, data: bytes) -> None:
        """Append `data` to `path` now."""
        append(path, data)


def append_all(writes: list[tuple[Path, bytes]]) -> None:
    """Append each write in order, opening each file once."""
    by_file: dict[Path, list[bytes]] = {}
    for path, data in writes:  # dicts keep insertion order: one file's writes stay in order
        by_file.setdefault(path, []).append(data)
    for path, chunks in by_file.items():
        append(path, b"".join(chunks))


def append(path: Path, data: bytes) -> None:
    """Append `data` to the file at `path`, made with its folder if missing; an error is logged
    (the event runs without its log rather than not at all)."""
    fd = _open_append(path)
    if fd is None:
        return
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
    except OSError as exc:
        log.error("event log %s: write failed: %s", path, exc)
    finally:
        os.close(fd)


def _open_append(path: Path) -> int | None:
    flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC
    try:
        try:
            return os.open(path, flags, 0o640)
        except FileNotFoundError:
            path.parent.mkdir(parents=True, exist_ok=True)
            return os.open(path, flags, 0o640)
    except OSError as exc:
        log.error("cannot open event log %s: %s", path, exc)
        return None
