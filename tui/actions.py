"""What the dashboard's actions do: write control requests, and read the daemon's answers.

The dashboard acts exactly as the CLI does: a request file in control/ (see daemon/control.py).
The daemon answers with a journal `Request` record naming the file; until then the request is
pending, and while the daemon is down it waits in control/.
"""

from __future__ import annotations

from dataclasses import dataclass

from daemon.control import APPLIED, ReinvokeRequest, StopRequest, submit
from daemon.ids import new_request_id
from daemon.model import Request, State
from daemon.spool import Spool


@dataclass
class Pending:
    """A request written and not yet answered."""

    what: str  # "stop abc…" for the notification
    event_id: str


class Requests:
    """The requests this dashboard wrote, by file name, until the daemon answers them."""

    def __init__(self, spool: Spool) -> None:
        self.spool = spool
        self.pending: dict[str, Pending] = {}

    def stop(self, event_id: str, graceful: bool) -> str:
        """Ask the daemon to stop an event; the request's file name."""
        name = submit(self.spool.root, StopRequest(id=event_id, graceful=graceful))
        mode = "graceful stop" if graceful else "stop"
        self.pending[name] = Pending(what=f"{mode} of {event_id}", event_id=event_id)
        return name

    def reinvoke(self, event_id: str) -> str:
        """Ask the daemon to run an ended event again as a new event; the request's file name."""
        request = ReinvokeRequest(id=event_id, new_id=new_request_id())
        name = submit(self.spool.root, request)
        self.pending[name] = Pending(what=f"re-invoke of {event_id}", event_id=event_id)
        return name

    def answered(self, record: Request) -> tuple[Pending, bool, str] | None:
        """(what, applied, message) when `record` answers one of ours."""
        pending = self.pending.pop(record.name or "", None)
        if pending is None:
            return None
        applied = record.outcome == APPLIED
        message = record.message or ("done" if applied else "refused")
        if applied and record.new_id and record.new_id not in message:
            message = f"{message} (new event {record.new_id})"
        return pending, applied, message


def stop_refusal(event_id: str, state: State | None) -> str | None:
    """Why an event cannot be stopped, in words, or None when it can."""
    if state is None:
        return f"no event {event_id} (not in the journal)"
    if state.terminal:
        return f"event {event_id} already ended ({state.value}): nothing to stop"
    if state is State.STOPPING:
        return f"event {event_id} is already stopping"
    return None


def reinvoke_refusal(event_id: str, state: State | None) -> str | None:
    """Why an event cannot be re-invoked, in words, or None when it can."""
    if state is None:
        return f"no event {event_id} (not in the journal)"
    if not state.terminal:
        return f"event {event_id} is still {state.value}: only an ended event can be re-invoked"
    return None
