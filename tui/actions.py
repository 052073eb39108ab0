"""What the dashboard's actions do: write control requests, and read the daemon's answers.

The dashboard acts exactly as the CLI does: a request file in control/ (see daemon/control.py).
The daemon answers with a journal `Request` record naming the file; until then the request is
pending, and while the daemon is down it waits in control/.
"""

from __future__ import annotations

import threading
from collections import Counter, OrderedDict
from dataclasses import dataclass, field

from daemon.control import (
    APPLIED,
    PauseRequest,
    ReinvokeRequest,
    ResumeRequest,
    StopRequest,
    submit,
)
from daemon.ids import new_request_id
from daemon.model import Request
from daemon.spool import Spool


@dataclass
class Pending:
    """A request written and not yet answered."""

    what: str  # "stop of ID", for the notification
    subject: str  # the event's id; for a pause or resume, the function's name ("": all)
    group: int | None = None  # one of many written at once: told together


@dataclass
class Group:
    """Requests written together (a bulk re-invoke): one notification when all are answered."""

    what: str
    total: int
    applied: int = 0
    refused: int = 0
    reasons: Counter[str] = field(default_factory=Counter)


@dataclass
class Notice:
    """What to tell the user about an answer."""

    title: str
    message: str
    error: bool = False


EARLY_ANSWERS = 10_000  # answers kept for requests not yet registered (or written by others)


class Requests:
    """The requests this dashboard wrote, by file name, until the daemon answers them.

    A bulk re-invoke writes from a worker thread while the UI thread reads answers, and the
    daemon may answer a request before its writer has registered it: such an answer is kept
    aside (under a lock) and claimed at registration.
    """

    def __init__(self, spool: Spool) -> None:
        self.spool = spool
        self.pending: dict[str, Pending] = {}
        self.groups: dict[int, Group] = {}
        self._early: OrderedDict[str, Request] = OrderedDict()
        self._lock = threading.Lock()

    def stop(self, event_id: str, graceful: bool) -> Notice | None:
        """Ask the daemon to stop an event."""
        name = submit(self.spool.root, StopRequest(id=event_id, graceful=graceful))
        mode = "graceful stop" if graceful else "stop"
        return self._register(name, Pending(what=f"{mode} of {event_id}", subject=event_id))

    def reinvoke(self, event_id: str, group: int | None = None) -> Notice | None:
        """Ask the daemon to run an ended event again as a new event."""
        request = ReinvokeRequest(id=event_id, new_id=new_request_id())
        name = submit(self.spool.root, request)
        pending = Pending(what=f"re-invoke of {event_id}", subject=event_id, group=group)
        return self._register(name, pending)

    def hold(self, function: str | None, pause: bool) -> Notice | None:
        """Ask the daemon to pause (or resume) dispatch of one function (None: all)."""
        request = PauseRequest(function=function) if pause else ResumeRequest(function=function)
        name = submit(self.spool.root, request)
        return self._register(
            name, Pending(what="pause" if pause else "resume", subject=function or "")
        )

    def open_group(self, what: str, total: int) -> int:
        """Start a group of `total` requests; its key."""
        with self._lock:
            key = len(self.groups) + 1
            self.groups[key] = Group(what=what, total=total)
            return key

    def close_group(self, key: int, written: int) -> Notice | None:
        """Only `written` of the group's requests were written (the rest were cancelled)."""
        with self._lock:
            self.groups[key].total = written
            return self._group_done(key)

    def _register(self, name: str, pending: Pending) -> Notice | None:
        with self._lock:
            early = self._early.pop(name, None)
            self.pending[name] = pending
        return self.answered(early) if early is not None else None

    def answered(self, record: Request) -> Notice | None:
        """What to tell when `record` answers one of ours (None: not ours, or not yet)."""
        with self._lock:
            pending = self.pending.pop(record.name or "", None)
            if pending is None:
                self._early[record.name or ""] = record
                while len(self._early) > EARLY_ANSWERS:
                    self._early.popitem(last=False)
                return None
            applied = record.outcome == APPLIED
            message = record.message or ("done" if applied else "refused")
            if pending.group is not None:
                group = self.groups[pending.group]
                if applied:
                    group.applied += 1
                else:
                    group.refused += 1
                    group.reasons[message] += 1
                return self._group_done(pending.group)
        if applied and record.new_id and record.new_id not in message:
            message = f"{message} (new event {record.new_id})"
        return Notice("done" if applied else "refused", f"{pending.what}: {message}", not applied)

    def _group_done(self, key: int) -> Notice | None:
        group = self.groups[key]
        if group.applied + group.refused < group.total:
            return None
        del self.groups[key]
        text = f"{group.what}: {group.applied:,} applied"
        if group.refused:
            why = "; ".join(f"{reason} ({n:,})" for reason, n in group.reasons.most_common(3))
            text += f", {group.refused:,} refused ({why})"
        return Notice("done", text, error=bool(group.refused))
