"""Reading the spool off the UI thread: the journal tail, the daemon's heartbeat, an event's log.

Each reader runs in a thread worker and hands the app typed messages; none of them writes
anything. The journal tail posts a preview of the newest events at once, then the whole table,
then every batch of new records as it is appended.
"""

from __future__ import annotations

import sys
import threading
import time
from dataclasses import dataclass, field, replace
from typing import Any

import msgspec
from textual.message import Message

from daemon import heartbeat
from daemon.functions import load_catalog
from daemon.index import EventTable, TableFollower, preview
from daemon.journal import Damage
from daemon.model import JournalRecord
from daemon.spool import Spool

POLL = 0.1  # seconds between two looks at the journal: new events show well under a second
STATUS_EVERY = 0.5  # seconds between two looks at the lock, the heartbeat and the definitions
FIRST_SCREEN_WAIT = 2.0  # seconds the full load waits for the preview to be painted
LOAD_SWITCH_INTERVAL = 0.0002


@dataclass
class TableLoaded(Message):
    """A new table to show: a preview of the newest events (`table.complete` False) or all."""

    table: EventTable
    damages: list[Damage] = field(default_factory=list)
    shown: threading.Event | None = None  # set once it is on screen


@dataclass
class RecordsArrived(Message):
    """Records appended to the journal since the last batch, in order."""

    records: list[JournalRecord]


@dataclass
class FunctionInfo:
    """A function as its definition file says, or the error that keeps it from loading."""

    name: str
    runtime: str = ""
    max_instances: int = 0
    error: str | None = None


@dataclass
class DaemonStatus:
    """Whether the daemon runs (the lock), and what its heartbeat says."""

    pid: int | None = None
    ready: bool = False
    queue_depth: int | None = None
    running_events: int | None = None
    heartbeat_age: float | None = None
    instances: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    definition_errors: dict[str, str] = field(default_factory=dict)
    functions: list[FunctionInfo] = field(default_factory=list)

    @property
    def running(self) -> bool:
        """Whether a daemon holds the spool's lock."""
        return self.pid is not None


@dataclass
class StatusChanged(Message):
    """The daemon's status or the function definitions changed."""

    status: DaemonStatus


def read_status(spool: Spool) -> DaemonStatus:
    """The daemon's status from its lock and heartbeat, and the definitions in functions/."""
    pid, beat = heartbeat.of_running_daemon(spool.run)
    catalog = load_catalog(spool.functions)
    functions = [
        FunctionInfo(name=name, runtime=d.runtime, max_instances=d.max_instances)
        for name, d in sorted(catalog.functions.items())
    ] + [FunctionInfo(name=name, error=e.message) for name, e in sorted(catalog.errors.items())]
    return DaemonStatus(
        pid=pid,
        ready=beat is not None and beat.ready,
        queue_depth=beat.queue_depth if beat is not None else None,
        running_events=beat.running if beat is not None else None,
        heartbeat_age=beat.age if beat is not None else None,
        instances=msgspec.to_builtins(beat.instances) if beat is not None else {},
        definition_errors=beat.definition_errors if beat is not None else {},
        functions=functions,
    )


class JournalTail:
    """The journal tail loop: preview, full load, then new records every POLL seconds."""

    def __init__(self, spool: Spool, post: Any, cancelled: Any) -> None:
        self.spool = spool
        self.post = post  # thread-safe: Textual's post_message
        self.cancelled = cancelled  # () -> bool: the worker was cancelled
        self.follower = TableFollower(spool.journal)

    def run(self) -> None:
        """Load, then follow until cancelled."""
        shown = threading.Event()
        self.post(TableLoaded(preview(self.spool.journal), shown=shown))
        self.post(StatusChanged(read_status(self.spool)))
        # the full load holds the GIL for long stretches: let the first screen be painted first
        shown.wait(FIRST_SCREEN_WAIT)
        # the UI thread gives up the GIL at every select(): with the default 5 ms switch
        # interval it would wait that long each time to get it back while this thread reads
        previous = sys.getswitchinterval()
        sys.setswitchinterval(LOAD_SWITCH_INTERVAL)
        try:
            state = self.follower.load()
        finally:
            sys.setswitchinterval(previous)
        reloads = self.follower.reloads
        self.post(TableLoaded(self.follower.table, list(state.damages)))
        last_status: DaemonStatus | None = None
        next_status = 0.0
        while not self.cancelled():
            records = self.follower.poll()
            if self.follower.reloads != reloads:  # compaction outran us: everything again
                reloads = self.follower.reloads
                self.post(TableLoaded(self.follower.table, list(self.follower.state.damages)))
            elif records:
                self.post(RecordsArrived(records))
            if time.monotonic() >= next_status:
                next_status = time.monotonic() + STATUS_EVERY
                status = read_status(self.spool)
                ageless = replace(status, heartbeat_age=None)
                if ageless != last_status:  # the heartbeat's age alone is not worth a repaint
                    self.post(StatusChanged(status))
                last_status = ageless
            time.sleep(POLL)
        self.follower.close()


@dataclass
class LogLines(Message):
    """Text appended to an event's log."""

    text: str
    reset: bool = False  # the first read: replace what is shown
