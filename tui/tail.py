"""Reading the spool off the UI thread: the daemon's heartbeat and definitions, an event's log.

These run in thread workers (the events themselves are read by tui/reader.py) and write nothing.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from textual.message import Message

from daemon import lock
from daemon.functions import load_catalog
from daemon.spool import Spool


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
    journal_damage: list[dict[str, Any]] = field(default_factory=list)  # the daemon's own finds

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
    pid = lock.holder(spool.run)
    info: dict[str, Any] = {}
    if pid is not None:
        try:
            info = json.loads((spool.run / "status.json").read_text())
        except (OSError, ValueError):
            info = {}
        if info.get("pid") not in (pid, None) and pid:
            info = {}  # a heartbeat left by an earlier daemon
    catalog = load_catalog(spool.functions)
    functions = [
        FunctionInfo(name=name, runtime=d.runtime, max_instances=d.max_instances)
        for name, d in sorted(catalog.functions.items())
    ] + [FunctionInfo(name=name, error=e.message) for name, e in sorted(catalog.errors.items())]
    return DaemonStatus(
        pid=pid,
        ready=bool(info.get("ready")),
        queue_depth=info.get("queue_depth"),
        running_events=info.get("running"),
        heartbeat_age=round(time.time() - info["updated_at"], 1) if "updated_at" in info else None,
        instances=info.get("instances", {}) if pid is not None else {},
        definition_errors=info.get("definition_errors", {}),
        functions=functions,
        journal_damage=info.get("journal_damage", []),
    )


@dataclass
class LogLines(Message):
    """Text appended to an event's log."""

    text: str
    reset: bool = False  # the first read: replace what is shown


def read_log_from(path: Path, offset: int, limit: int | None = None) -> tuple[str, int]:
    """Text of `path` from `offset` (at most the last `limit` bytes on a first read)."""
    try:
        with open(path, "rb") as f:
            size = f.seek(0, 2)
            if limit is not None and offset == 0 and size > limit:
                offset = size - limit
            f.seek(offset)
            data = f.read()
    except FileNotFoundError:
        return "", offset
    return data.decode("utf-8", errors="replace"), offset + len(data)
