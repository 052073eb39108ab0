"""What `p` and `P` in the functions view would do: pause or resume, asked first.

The daemon's own rule (daemon/pausing.py) decides, over the paused state its heartbeat shows, so
the dialog offers what the daemon will do and a request it would refuse is not written at all.
"""

from __future__ import annotations

from dataclasses import dataclass

from daemon.model import PauseState
from daemon.pausing import paused_after, resumed_after
from tui.tail import DaemonStatus


@dataclass(frozen=True)
class Hold:
    """A pause or a resume to confirm: what it asks, and what the daemon would make of it."""

    pause: bool
    function: str | None  # None: every function
    title: str
    body: str
    verb: str


def hold_of(status: DaemonStatus, function: str | None, queued: int) -> Hold:
    """The pause of `function` (None: all), or its resume when it is paused; `queued`: its events
    waiting now. Refused (daemon.errors) for what the daemon would refuse."""
    state = PauseState(functions=tuple(status.paused), all=status.paused_all)
    known = {f.name for f in status.functions}
    pause = not (state.all if function is None else state.holds(function))
    (paused_after if pause else resumed_after)(state, function, known)  # Refused as the daemon
    whose = "every function's" if function is None else "its"
    if pause:
        body = (
            f"Dispatch stops: {whose} queued events ({queued:,} now) wait until resumed, "
            "a running event finishes. The pause outlives a restart of the daemon."
        )
    else:
        body = f"Dispatch starts again: {whose} {queued:,} queued events run."
    if not status.running:
        body += "\n[$warning]The daemon is down: the request waits in control/ until it starts.[/]"
    verb = "pause" if pause else "resume"
    subject = "all functions" if function is None else f"function {function}"
    return Hold(pause, function, f"{verb.capitalize()} {subject}?", body, verb)
