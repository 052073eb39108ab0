"""What an instance of any runtime offers the pool and the dispatcher; the event log."""

from __future__ import annotations

import logging
import os
import secrets
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Protocol

import msgspec

from daemon.functions import FunctionDef
from daemon.model import ErrorInfo, Usage
from daemon.supervise import ExitStatus

log = logging.getLogger(__name__)

LOG_CAP = 10 << 20  # bytes of a function's own output kept per event log

#: hook names as in `[lifecycle]`, and how their lines read in an event's log
HOOK_LABELS = {
    "initializer": "FC Initialize",
    "pre_freeze": "FC PreFreeze",
    "pre_stop": "FC PreStop",
}


class Outcome(msgspec.Struct, frozen=True, kw_only=True):
    """How one attempt ended on an instance."""

    ok: bool
    result: msgspec.Raw | None = None
    error: ErrorInfo | None = None
    usage: Usage
    retry_delay: float | None = None
    instance_lost: bool = False  # the instance is dead or must be discarded


class HookOutcome(msgspec.Struct, frozen=True, kw_only=True):
    """How one lifecycle hook ran on an instance."""

    hook: str
    ok: bool
    started: float  # wall clock
    duration_ms: float
    error: ErrorInfo | None = None
    instance_lost: bool = False


class InstanceBase:
    """What every runtime's instance holds: its identity, state and counters, and event logs."""

    kind = "instance"  # the runtime's name, the start of every instance id

    def __init__(self, function: FunctionDef, *, log_cap: int, defer_io: Defer | None) -> None:
        self.function = function
        self.id = f"{self.kind}-{function.name}-{secrets.token_hex(4)}"
        self.pid: int | None = None
        self.state = "starting"
        self.events_served = 0
        self.started_at = 0.0  # wall clock
        self.last_used = time.monotonic()
        self.log_cap = log_cap
        self.defer_io = defer_io  # where event logs hand the wait for their last write

    def _event_log(self, path: Path) -> EventLog:
        return EventLog(path, self.log_cap, self.defer_io)


class InstanceStartError(Exception):
    """An instance could not be made ready; `error` says why (the event becomes Invalid)."""

    def __init__(self, error: ErrorInfo) -> None:
        super().__init__(f"{error.type}: {error.message}")
        self.error = error


class Instance(Protocol):
    """One instance of a function, whatever its runtime."""

    id: str
    function: FunctionDef
    pid: int | None
    state: str  # starting | idle | busy | stopping | dead
    events_served: int
    started_at: float  # wall clock
    last_used: float  # monotonic

    async def start(self, *, request_id: str | None = None, log_path: Path | None = None) -> None:
        """Make the instance ready (Initializer included); InstanceStartError if it cannot be."""

    async def invoke(
        self, request_id: str, payload: msgspec.Raw, attempt: int, timeout: float, log_path: Path
    ) -> Outcome:
        """Run one attempt of an event; never raises for the function's own faults."""
        ...

    async def run_hook(
        self, hook: str, *, request_id: str | None = None, log_path: Path | None = None
    ) -> HookOutcome:
        """Run a lifecycle hook (`pre_freeze`, `pre_stop`, ...) if the function defines it."""
        ...

    async def stop(self) -> None:
        """Kill the instance's process group and release everything; idempotent."""

    def signal(self, sig: int) -> bool:
        """Send `sig` to the instance's process group; False if it is gone."""
        ...


_second: list[tuple[int, str]] = [(-1, "")]  # strftime is slow: format each second once


def iso_now() -> str:
    """The wall-clock time as an ISO 8601 UTC string with milliseconds."""
    now = time.time()
    whole = int(now)
    second, text = _second[0]
    if whole != second:
        text = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(whole))
        _second[0] = (whole, text)
    return f"{text}.{int((now - whole) * 1000):03d}Z"


Defer = Callable[[Callable[[], None]], None]


class _LogWriter:
    """One thread appends every event log's writes, in the order they were handed over.

    Never on the event loop: a new file costs tens of microseconds in the kernel here. Each pass
    takes everything queued and opens each file once for all of its writes.
    """

    def __init__(self) -> None:
        self._queue: list[tuple[Path, bytes]] = []
        self._cond = threading.Condition()
        self._handed = 0  # writes handed over so far: the ticket of the last
        self._written = 0  # writes done so far
        self._thread: threading.Thread | None = None

    def hand(self, path: Path, data: bytes) -> int:
        """Queue one write; its ticket for `wait`."""
        with self._cond:
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="event-logs", daemon=True)
                self._thread.start()
            self._queue.append((path, data))
            self._handed += 1
            self._cond.notify_all()
            return self._handed

    def wait(self, ticket: int) -> None:
        """Block until the write with that ticket (and every earlier one) is done."""
        with self._cond:
            self._cond.wait_for(lambda: self._written >= ticket)

    def _run(self) -> None:
        while True:
            with self._cond:
                self._cond.wait_for(lambda: bool(self._queue))
                batch, self._queue = self._queue, []
            by_file: dict[Path, list[bytes]] = {}
            for path, data in batch:  # dicts keep insertion order: one file's writes stay in order
                by_file.setdefault(path, []).append(data)
            for path, chunks in by_file.items():
                _append(path, b"".join(chunks))
            with self._cond:
                self._written += len(batch)
                self._cond.notify_all()


def _append(path: Path, data: bytes) -> None:
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


_writer = _LogWriter()


class EventLog:
    """The log of one event while it runs: platform lines and capped function output.

    Writes are handed to the log writer thread in order. `close` hands the wait for the last one
    to `defer` (the journal's writer thread waits for it before writing the event's end record),
    or waits itself when there is no `defer`.
    """

    def __init__(self, path: Path | None, cap: int = LOG_CAP, defer: Defer | None = None) -> None:
        self.path = path
        self.cap = cap
        self.written = 0
        self._defer = defer
        self._pending = bytearray()  # platform lines wait to go out with the next output
        self._last = 0  # the ticket of the last write handed over
        self._open = path is not None

    @property
    def is_open(self) -> bool:
        """Whether the log still takes writes."""
        return self._open

    def platform(self, text: str) -> None:
        """Add one `[PLATFORM]` line (never counted against the cap)."""
        if self._open:
            self._pending += f"{iso_now()} [PLATFORM] {text}\n".encode()

    def write(self, data: bytes) -> None:
        """Append the function's output, up to the cap; mark the cut once."""
        room = self.cap - self.written
        if room <= 0 or not self._open:
            return
        if len(data) > room:
            self.written = self.cap
            self._pending += data[:room]
            self.platform(f"log truncated at {self.cap} bytes")
        else:
            self.written += len(data)
            self._pending += data
        self._flush()

    def close(self) -> None:
        """Send what waits; later writes are dropped."""
        self._flush()
        self._open = False
        last, self._last = self._last, 0
        if not last:
            return
        if self._defer is not None:
            self._defer(lambda: _writer.wait(last))
        else:
            _writer.wait(last)

    def _flush(self) -> None:
        if self._pending and self.path is not None and self._open:
            self._last = _writer.hand(self.path, bytes(self._pending))
            self._pending.clear()


def _open_append(path: Path) -> int | None:
    flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC
    try:
        try:
            return os.open(path, flags, 0o640)
        except FileNotFoundError:
            path.parent.mkdir(parents=True, exist_ok=True)
            return os.open(path, flags, 0o640)
    except OSError as exc:
        # the event runs without its log rather than not at all
        log.error("cannot open event log %s: %s", path, exc)
        return None


# -- outcomes of a process that ended ------------------------------------------------------


def describe_exit(status: ExitStatus) -> str:
    """How a process ended, in words: `exit code N` or `signal N`."""
    return f"exit code {status.exit_code}" if status.signal is None else f"signal {status.signal}"


def exited_message(duration_ms: float, status: ExitStatus) -> str:
    """FC's error message for an instance that died mid-event."""
    return (
        "Process exited unexpectedly before completing request "
        f"(duration: {duration_ms:.2f}ms, maxMemoryUsage: {status.max_memory_mb:.2f}MB)"
    )


def memory_error(used_mb: float, limit_mb: int) -> ErrorInfo:
    """The error of an attempt whose instance went over `memory_mb` and was killed."""
    message = f"Memory limit exceeded: {used_mb:.0f}MB used, the limit is {limit_mb}MB"
    return ErrorInfo(type="MemoryLimitExceeded", message=message)


def lost_outcome(
    error: ErrorInfo, duration: float, status: ExitStatus | None, cpu_ms: float | None = None
) -> Outcome:
    """A failed attempt whose instance is gone or must be discarded."""
    usage = Usage(
        duration_ms=duration,
        cpu_ms=cpu_ms,
        max_memory_mb=status.max_memory_mb if status else None,
        exit_code=status.exit_code if status else None,
        signal=status.signal if status else None,
    )
    return Outcome(ok=False, error=error, usage=usage, instance_lost=True)
