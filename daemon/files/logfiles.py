"""Event log files: their writes go through the journal's writer thread, which hands them to the
file helper process (daemon/files/filework.py) in batches before writing the records that follow, so
a log is on file before the record that shows it. Never written on the event loop: a new file
costs tens of microseconds in the kernel here, and up to 700 on a churned disk.

An event's file is made only at its first line that the journal does not already hold (see
daemon/files/eventlog.py): `EventLogs` keeps, per event in care, whether its file exists yet.
"""

from __future__ import annotations

import errno
import logging
import os
from collections.abc import Callable
from pathlib import Path
from typing import Protocol

import msgspec

from daemon.files.eventlog import JOURNALED
from daemon.ids import NAME_RE, BadId, check_id
from daemon.text import printable

log = logging.getLogger(__name__)


def event_log_path(logs_dir: Path, function: str, request_id: str) -> Path:
    """`logs/FUNCTION/ID.log`, built only from a valid id and function name (so never a path out
    of logs/); BadId otherwise (only a journal written before ids were checked can hold one)."""
    return _folder(logs_dir, function) / f"{check_id(request_id)}.log"


def _folder(logs_dir: Path, function: str) -> Path:
    if not NAME_RE.match(function):
        raise BadId(f'bad function name "{printable(function)}"')
    return logs_dir / function


class LogPaths:
    """`event_log_path` under one logs/ folder, each function's folder checked and joined once
    (the dispatcher asks for one path per attempt: two pathlib joins cost more than the rest)."""

    def __init__(self, logs_dir: Path) -> None:
        self.logs_dir = logs_dir
        self._folders: dict[str, Path] = {}

    def of(self, function: str, request_id: str) -> Path:
        """The log path of an event, as `event_log_path` gives it."""
        folder = self._folders.get(function)
        if folder is None:
            folder = self._folders[function] = _folder(self.logs_dir, function)
        return folder / f"{check_id(request_id)}.log"


class LogWrite(msgspec.Struct, frozen=True, array_like=True):
    """One append to a log file, as the file helper gets it."""

    path: str
    data: bytes
    #: not None: the file is made with these bytes first if it does not exist yet
    prefix: bytes | None = None
    #: written only if the file exists (a line readers otherwise render from the journal)
    if_exists: bool = False
    #: not a write: the file is removed (its event was forgotten); `data` is empty
    remove: bool = False


class LogSink(Protocol):
    """Where an event log's writes go."""

    def write_log(self, path: Path, data: bytes, *, journaled: bool = False) -> None:
        """Append `data` to the log at `path`, after every write handed over before;
        `journaled`: a line the journal's records already hold (eventlog.JOURNALED)."""


class DirectLogs:
    """Writes at once on the caller's thread: for instances run without a journal (tools, tests)."""

    def write_log(self, path: Path, data: bytes, *, journaled: bool = False) -> None:
        """Append `data` to `path` now, every line included."""
        append_all([LogWrite(str(path), data)])


class _Tracked:
    __slots__ = ("exists", "lines", "path")

    def __init__(self, path: Path, lines: Callable[[], bytes], exists: bool | None) -> None:
        self.path, self.lines, self.exists = path, lines, exists


class EventLogs:
    """The daemon's sink: the logs of events in care are made only at their first line the
    journal does not hold, starting with the lines rendered from it; other paths (an instance's
    own log, events not tracked) get every line, as DirectLogs."""

    def __init__(self, write: Callable[[LogWrite], None]) -> None:
        self._write = write
        self._files: dict[Path, _Tracked] = {}
        self._by_id: dict[str, Path] = {}

    def track(
        self, event_id: str, path: Path, lines: Callable[[], bytes], exists: bool | None
    ) -> None:
        """Follow an event's log until `forget`: `lines` renders what readers show from its
        records; `exists` is whether its file exists (None: unknown, as after a restart)."""
        if path not in self._files:
            self._files[path] = _Tracked(path, lines, exists)
            self._by_id[event_id] = path

    def forget(self, event_id: str) -> None:
        """The event has ended: its later lines, if any, go to its file as they come."""
        path = self._by_id.pop(event_id, None)
        if path is not None:
            del self._files[path]

    def tracked(self, path: Path) -> bool:
        """Whether `path` is the log of an event in care."""
        return path in self._files

    def drops(self, path: Path) -> bool:
        """Whether a journaled line written to `path` now would be dropped (its event's file
        is not made: readers render the line from the journal)."""
        t = self._files.get(path)
        return t is not None and t.exists is False

    def write_log(self, path: Path, data: bytes, *, journaled: bool = False) -> None:
        """Hand over one write, made to fit what readers render (see the class)."""
        t = self._files.get(path)
        if t is None:
            self._write(LogWrite(str(path), data))
        elif journaled:
            if t.exists is not False:  # unknown: appended only if the file is there
                self._write(LogWrite(str(path), data, if_exists=t.exists is None))
        elif t.exists:
            self._write(LogWrite(str(path), data))
        else:
            self._write(LogWrite(str(path), data, prefix=t.lines()))
            t.exists = True


def is_journaled(text: str) -> bool:
    """Whether a `[PLATFORM]` line's text is one readers render from the journal."""
    return text.startswith(JOURNALED)


def append_all(writes: list[LogWrite]) -> None:
    """Do each write in order, opening each file once (an error is logged: the event runs
    without its log rather than not at all)."""
    by_file: dict[str, list[LogWrite]] = {}
    for w in writes:  # dicts keep insertion order: one file's writes stay in order
        by_file.setdefault(w.path, []).append(w)
    for path, file_writes in by_file.items():
        start = 0
        for at, w in enumerate(file_writes):
            if w.remove:  # what came before it first, in order
                _write_file(Path(path), file_writes[start:at])
                _remove(Path(path))
                start = at + 1
        _write_file(Path(path), file_writes[start:])


def _remove(path: Path) -> None:
    try:
        path.unlink(missing_ok=True)
    except OSError as exc:
        log.error("event log %s: cannot remove it: %s", path, exc)


def _write_file(path: Path, writes: list[LogWrite]) -> None:
    fd, chunks = -1, []
    try:
        for w in writes:
            if fd < 0:
                fd, made = _open(path, w)
                if fd < 0:
                    continue  # not there (or not made): the next write may make it
                if made and w.prefix:
                    chunks.append(w.prefix)
            chunks.append(w.data)
        if fd >= 0:
            _write_whole(fd, b"".join(chunks))
    except OSError as exc:
        log.error("event log %s: write failed: %s", path, exc)
    finally:
        if fd >= 0:
            os.close(fd)


def _write_whole(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


_APPEND = os.O_WRONLY | os.O_APPEND | os.O_CLOEXEC


def _open(path: Path, w: LogWrite) -> tuple[int, bool]:
    """The file open for appending (-1 if not) and whether this call made it."""
    try:
        if w.if_exists:
            try:
                return os.open(path, _APPEND), False
            except FileNotFoundError:
                return -1, False
        flags = _APPEND | os.O_CREAT | (os.O_EXCL if w.prefix is not None else 0)
        try:
            return _open_making_folder(path, flags), w.prefix is not None
        except FileExistsError:
            return os.open(path, _APPEND), False
    except OSError as exc:
        log.error("cannot open event log %s: %s", path, exc)
        return -1, False


def _open_making_folder(path: Path, flags: int) -> int:
    try:
        return os.open(path, flags, 0o640)
    except OSError as exc:
        if exc.errno != errno.ENOENT:
            raise
        path.parent.mkdir(parents=True, exist_ok=True)
        return os.open(path, flags, 0o640)
