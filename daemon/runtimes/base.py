"""What an instance of any runtime offers the pool and the dispatcher; the event log."""

from __future__ import annotations

import logging
import secrets
import time
from pathlib import Path
from typing import Protocol

import msgspec

from daemon.errors import describe
from daemon.files.eventlog import platform_line
from daemon.files.logfiles import DirectLogs, EventLogs, LogSink, is_journaled
from daemon.functions import FunctionDef
from daemon.instances import InstanceState
from daemon.limits import MAX_VALUE_BYTES, bounded_error, result_too_large
from daemon.model import ErrorInfo, Usage
from daemon.supervise.child import ExitStatus

log = logging.getLogger(__name__)

LOG_CAP = 10 << 20  # bytes of a function's own output kept per event log
_DIRECT = DirectLogs()

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
    #: cut off by the loss of the machine it ran on (a Ray node): the attempt is Interrupted,
    #: as by a crash of the daemon, and runs again without spending a retry
    interrupted: bool = False


def bounded(o: Outcome) -> Outcome:
    """`o` as it may be journaled: a result over the limit fails the attempt (ResultTooLarge),
    an error's text is cut short (daemon/limits.py)."""
    if o.ok and o.result is not None and len(o.result) > MAX_VALUE_BYTES:
        error = result_too_large("the result", len(o.result))
        return msgspec.structs.replace(o, ok=False, result=None, error=error)
    if o.error is None:
        return o
    error = bounded_error(o.error)
    return o if error is o.error else msgspec.structs.replace(o, error=error)


class HookOutcome(msgspec.Struct, frozen=True, kw_only=True):
    """How one lifecycle hook ran on an instance."""

    hook: str
    ok: bool
    started: float  # wall clock
    duration_ms: float
    error: ErrorInfo | None = None
    instance_lost: bool = False
    retry_same: bool = False  # the hook may be called again on this instance (an http 4xx)


class InstanceBase:
    """What every runtime's instance holds: its identity, state and counters, and event logs."""

    kind = "instance"  # the runtime's name, the start of every instance id

    def __init__(self, function: FunctionDef, *, log_cap: int, logs: LogSink | None) -> None:
        self.function = function
        self.id = f"{self.kind}-{function.name}-{secrets.token_hex(4)}"
        self.pid: int | None = None
        self.node: str | None = None  # the Ray node it runs on; None: this machine
        self.state = InstanceState.STARTING
        self.events_served = 0
        self.started_at = 0.0  # wall clock
        self.last_used = time.monotonic()
        self.log_cap = log_cap
        self.logs = logs or _DIRECT  # where event logs are written

    def _event_log(self, path: Path) -> EventLog:
        return EventLog(path, self.log_cap, self.logs)


class InstanceStartError(Exception):
    """An instance could not be made ready; `error` says why (the event becomes Invalid)."""

    def __init__(self, error: ErrorInfo) -> None:
        error = bounded_error(error)  # it is journaled, and may quote the function's output
        super().__init__(describe(error))
        self.error = error


class PlaceUnavailable(InstanceStartError):
    """Where the instance runs (a Ray cluster) cannot be reached for now: the event is not
    ended but waits, as a paused function's events do, until it can."""


class Instance(Protocol):
    """One instance of a function, whatever its runtime."""

    id: str
    function: FunctionDef
    pid: int | None
    node: str | None  # the Ray node it runs on; None: this machine
    state: InstanceState  # starting, idle, busy, stopping, dead: what the process can do
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
        self, hook: str, *, request_id: str, log_path: Path | None = None
    ) -> HookOutcome:
        """Run a lifecycle hook (`pre_freeze`, `pre_stop`, ...) if the function defines it,
        called with `request_id` (its event's, or its own invocation id: never empty)."""
        ...

    async def stop(self) -> None:
        """Kill the instance's process group and release everything; idempotent."""

    def signal(self, sig: int) -> bool:
        """Send `sig` to the instance's process group; False if it is gone."""
        ...


class EventLog:
    """The log of one event while it runs: platform lines and capped function output, handed to
    a sink at once and in order (the journal's writer thread in the daemon, which makes no file
    for the lines readers render from the journal: see daemon/files/eventlog.py)."""

    def __init__(self, path: Path | None, cap: int = LOG_CAP, sink: LogSink = _DIRECT) -> None:
        self.path = path
        self.cap = cap
        self.written = 0
        self._sink = sink
        self._open = path is not None

    @property
    def is_open(self) -> bool:
        """Whether the log still takes writes."""
        return self._open

    def platform(self, text: str) -> None:
        """Add one `[PLATFORM]` line (never counted against the cap)."""
        if not self._open or self.path is None:
            return
        journaled = is_journaled(text)
        # not formatted for nothing: the sink drops a Start or End line while no file is made
        if journaled and isinstance(self._sink, EventLogs) and self._sink.drops(self.path):
            return
        self._sink.write_log(self.path, platform_line(time.time(), text), journaled=journaled)

    def write(self, data: bytes) -> None:
        """Append the function's output, up to the cap; mark the cut once."""
        room = self.cap - self.written
        if room <= 0 or not self._open or self.path is None or not data:
            return
        if len(data) > room:
            self.written = self.cap
            self._sink.write_log(self.path, data[:room])
            self.platform(f"log truncated at {self.cap} bytes")
        else:
            self.written += len(data)
            self._sink.write_log(self.path, data)

    def close(self) -> None:
        """Later writes are dropped."""
        self._open = False


# -- outcomes of a process that ended ------------------------------------------------------


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
