"""How times, durations, counts and states read on screen (one place, so every view agrees)."""

from __future__ import annotations

import math
import re
import time

from rich.text import Text
from textual.markup import escape

from daemon.model import State
from daemon.query import shown

STATES: tuple[State, ...] = tuple(State)


def state_class(state: State) -> str:
    """The CSS/markup name of a state's colour (set in app.tcss, from the theme's variables)."""
    return f"state--{state.value.lower()}"


#: each state's colour as a theme variable, for markup outside the event list
STATE_COLOUR: dict[State, str] = {
    State.ENQUEUED: "$text-muted",
    State.DEQUEUED: "$secondary",
    State.RUNNING: "$accent",
    State.RETRYING: "$warning",
    State.STOPPING: "$warning",
    State.SUCCEEDED: "$success",
    State.FAILED: "$error",
    State.EXPIRED: "$error",
    State.INVALID: "$error",
    State.STOPPED: "$secondary",
}


def state_markup(state: State, text: str | None = None) -> str:
    """A state's name (or `text`) in its colour, as Textual markup."""
    return f"[{STATE_COLOUR[state]}]{escape(text or state.value)}[/]"


def clock(ts: float | None) -> str:
    """A time as the list shows it: local `MM-DD HH:MM:SS`."""
    if ts is None or math.isnan(ts):
        return "-"
    return time.strftime("%m-%d %H:%M:%S", time.localtime(ts))


def now() -> float:
    """The wall clock, for times that move on screen (tests set it still)."""
    return time.time()


def time_of_day(ts: float | None) -> str:
    """A time as a narrow list shows it: local `HH:MM:SS`."""
    if ts is None or math.isnan(ts):
        return "-"
    return time.strftime("%H:%M:%S", time.localtime(ts))


def stamp(ts: float | None) -> str:
    """A time in full: local, with milliseconds and the offset from UTC (as the CLI shows it)."""
    return shown(ts)


def duration(ms: float | None) -> str:
    """A duration in the unit that reads best."""
    if ms is None or math.isnan(ms):
        return "-"
    if ms < 1000:
        return f"{ms:.0f} ms" if ms >= 10 else f"{ms:.1f} ms"
    seconds = ms / 1000
    if seconds < 60:
        return f"{seconds:.2f} s"
    if seconds < 3600:
        return f"{int(seconds // 60)}m{int(seconds % 60):02d}s"
    return f"{int(seconds // 3600)}h{int(seconds % 3600 // 60):02d}m"


def age(since: float | None, now: float | None = None) -> str:
    """How long ago `since` was."""
    if since is None:
        return "-"
    seconds = max(0, int((now or time.time()) - since))
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    if seconds < 86400:
        return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"
    return f"{seconds // 86400}d{seconds % 86400 // 3600:02d}h"


def by_state(counts: dict[tuple[str, State], int], function: str | None = None) -> list[int]:
    """Counts per (function, state) summed per state, in STATES order (of one function or all)."""
    totals = dict.fromkeys(STATES, 0)
    for (name, state), n in counts.items():
        if function is None or name == function:
            totals[state] += n
    return [totals[s] for s in STATES]


def counts_markup(counts: list[int], *, all_states: bool = False) -> str:
    """Counts in STATES order, each state in its colour (states with none left out)."""
    parts = [
        f"{state_markup(state)} {count:,}"
        for state, count in zip(STATES, counts, strict=True)
        if count or all_states
    ]
    return "  ".join(parts) if parts else "[$text-muted]no events[/]"


_VARIABLE = re.compile(r"\[(/?)\$([a-z0-9-]+)")


def rich_text(markup: str, variables: dict[str, str]) -> Text:
    """Textual markup (with `$theme` colours) as Rich Text, for widgets that take Rich markup."""

    def colour(m: re.Match[str]) -> str:
        value = variables.get(m.group(2), "")
        if not value.startswith("#"):
            value = "dim"  # "auto 60%" and the like: a muted colour, as near as Rich can say
        return f"[{m.group(1)}{value}"

    return Text.from_markup(_VARIABLE.sub(colour, markup))
