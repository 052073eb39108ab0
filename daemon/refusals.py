"""Why a stop or a re-invoke is refused: one rule and one wording for the daemon (which answers
the request), the CLI and the dashboard (which refuse before sending it)."""

from __future__ import annotations

from daemon.model import State


class Refused(ValueError):
    """A request that cannot be applied to its event as the event is: answered `refused`."""


def stop_refusal(event_id: str, state: State | None) -> str | None:
    """Why the event cannot be stopped, or None when it can (`state` None: no such event)."""
    if state is None:
        return f"no event with id {event_id!r}"
    if state.terminal:
        return f"event {event_id} has already ended: {state.value}"
    if state is State.STOPPING:
        return f"event {event_id} is already being stopped"
    return None


def reinvoke_refusal(event_id: str, state: State | None) -> str | None:
    """Why the event cannot be re-invoked, or None when it can (only an ended event can)."""
    if state is None:
        return f"no event with id {event_id!r}"
    if not state.terminal:
        return f"event {event_id} has not ended: {state.value}"
    return None


def refuse_if(refusal: str | None) -> None:
    """Raise Refused with the reason, if there is one."""
    if refusal is not None:
        raise Refused(refusal)
