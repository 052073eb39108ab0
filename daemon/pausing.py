"""Pause and resume of dispatch: what a request makes of the paused state, in one rule for the
daemon (which answers it) and the readers (which show it). Shared and light: only the model."""

from __future__ import annotations

from collections.abc import Container

from daemon.model import PauseState
from daemon.refusals import Refused


def paused_after(
    paused: PauseState, function: str | None, known: Container[str]
) -> tuple[PauseState, str]:
    """The state after pausing `function` (None: all), and what was done in words; Refused for a
    function that is not defined."""
    if function is None:
        if paused.all:
            return paused, "all functions were already paused"
        return PauseState(functions=paused.functions, all=True), "all functions paused"
    if function not in known:
        raise Refused(f"no function named {function!r}")
    if paused.holds(function):
        return paused, f"function {function} was already paused"
    functions = tuple(sorted((*paused.functions, function)))
    return PauseState(functions=functions, all=paused.all), f"function {function} paused"


def resumed_after(
    paused: PauseState, function: str | None, known: Container[str]
) -> tuple[PauseState, str]:
    """The state after resuming `function` (None: all, and every function paused by name), and
    what was done in words; Refused for a function neither defined nor paused, and for one
    function while all are paused (there is no exception to a pause of all)."""
    if function is None:
        if not paused.any:
            return paused, "nothing was paused"
        return PauseState(), "all functions resumed"
    if function not in known and function not in paused.functions:
        raise Refused(f"no function named {function!r}")
    if paused.all:
        raise Refused(f"all functions are paused: resume all (fnspool resume) to resume {function}")
    if function not in paused.functions:
        return paused, f"function {function} was not paused"
    functions = tuple(f for f in paused.functions if f != function)
    return PauseState(functions=functions), f"function {function} resumed"
