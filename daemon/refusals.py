"""Why a stop, a re-invoke or a forget is refused: one rule and one wording for the daemon (which
answers the request), the CLI and the dashboard (which refuse before sending it)."""

from __future__ import annotations

from daemon.errors import Refused
from daemon.model import Event, State

__all__ = [
    "GRACEFUL",
    "Refused",
    "forget_refusal",
    "refuse_if",
    "reinvoke_refusal",
    "stop_in_progress",
    "stop_refusal",
]

#: the reason of a Stopping record whose stop can still be forced (dispatcher.StopMode.GRACEFUL)
GRACEFUL = "graceful"


def stop_refusal(
    event_id: str, state: State | None, *, graceful: bool = False, stopping: str | None = None
) -> str | None:
    """Why the event cannot be stopped (gracefully or not), or None when it can (`state` None:
    no such event). An event being stopped gracefully can still be forced; `stopping` is how its
    stop goes (see `stop_in_progress`), None when the asker cannot tell (the daemon then does)."""
    if state is None:
        return f"no event with id {event_id!r}"
    if state.terminal:
        return f"event {event_id} has already ended: {state.value}"
    if state is State.STOPPING and (graceful or stopping not in (None, GRACEFUL)):
        how = f" ({stopping})" if stopping else ""
        return f"event {event_id} is already being stopped{how}"
    return None


def stop_in_progress(event: Event) -> str | None:
    """How the stop of a Stopping event goes, from its history: the reason of its Stopping."""
    if event.state is not State.STOPPING:
        return None
    return next((h.reason for h in reversed(event.history) if h.state is State.STOPPING), None)


def reinvoke_refusal(event_id: str, state: State | None) -> str | None:
    """Why the event cannot be re-invoked, or None when it can (only an ended event can)."""
    if state is None:
        return f"no event with id {event_id!r}"
    if not state.terminal:
        return f"event {event_id} has not ended: {state.value}"
    return None


def forget_refusal(
    event_id: str,
    state: State | None,
    *,
    owes_record: bool = False,
    asker: int | None = None,
    submitter: int | None = None,
    administrator: int | None = None,
) -> str | None:
    """Why the event cannot be forgotten, or None when it can: only an ended event can, and not
    while its destination record is still to be delivered (`owes_record`; the daemon knows).
    Forgetting erases history, so a member of the spool group (`asker`, a uid) may forget only
    the events they submitted; the administrator (the spool's owner, or root) any, as `lprm`."""
    if state is None:
        return f"no event with id {event_id!r}"
    if asker is not None and asker not in (0, administrator) and submitter != asker:
        by = f"uid {submitter}" if submitter is not None else "the daemon"
        return (
            f"event {event_id} was submitted by {by}: only its submitter or the administrator "
            "may forget it"
        )
    if not state.terminal:
        return f"event {event_id} has not ended: {state.value}"
    if owes_record:
        return f"event {event_id} has ended, but its destination record is not delivered yet"
    return None


def refuse_if(refusal: str | None) -> None:
    """Raise Refused with the reason, if there is one."""
    if refusal is not None:
        raise Refused(refusal)
