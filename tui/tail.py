"""Reading the spool off the UI thread: the daemon's heartbeat and the function definitions.

These run in thread workers (the events themselves are read by tui/reader.py) and write nothing.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import msgspec
from textual.message import Message

from daemon import heartbeat
from daemon.functions import load_catalog
from daemon.spool import Spool


@dataclass
class FunctionInfo:
    """A function as its definition file says, or the error that keeps it from loading."""

    name: str
    runtime: str = ""
    max_instances: int = 0
    engine: str = "local"  # where its instances run: local | ray
    error: str | None = None


@dataclass
class DaemonStatus:
    """Whether the daemon runs (the lock), and what its heartbeat says."""

    pid: int | None = None
    ready: bool = False
    stopping: bool = False  # draining on its way out
    heartbeat_age: float | None = None
    instances: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    definition_errors: dict[str, str] = field(default_factory=dict)
    functions: list[FunctionInfo] = field(default_factory=list)
    journal_damage: list[dict[str, Any]] = field(default_factory=list)  # the daemon's own finds
    paused: list[str] = field(default_factory=list)  # functions whose dispatch is held
    paused_all: bool = False  # every function's dispatch is held
    #: functions whose events wait for now, with why (their Ray cluster cannot be reached)
    held: dict[str, str] = field(default_factory=dict)

    def is_paused(self, function: str) -> bool:
        """Whether the daemon holds `function`'s queued events."""
        return self.paused_all or function in self.paused

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
    # what is paused outlives the daemon (journaled): while it is down, its last word says it
    held = beat if pid is not None else heartbeat.read(spool.run)
    catalog = load_catalog(spool.functions)
    functions = [
        FunctionInfo(
            name=name,
            runtime=d.runtime,
            max_instances=d.max_instances,
            engine=d.placement.engine,
        )
        for name, d in sorted(catalog.functions.items())
    ] + [FunctionInfo(name=name, error=e.message) for name, e in sorted(catalog.errors.items())]
    return DaemonStatus(
        pid=pid,
        ready=beat is not None and beat.ready,
        stopping=beat is not None and beat.stopping,
        heartbeat_age=beat.age if beat is not None else None,
        instances=msgspec.to_builtins(beat.instances) if beat is not None else {},
        definition_errors=beat.definition_errors if beat is not None else {},
        functions=functions,
        journal_damage=msgspec.to_builtins(beat.journal_damage) if beat is not None else [],
        paused=list(held.paused) if held is not None else [],
        paused_all=held is not None and held.paused_all,
        held=dict(beat.held) if beat is not None else {},
    )
