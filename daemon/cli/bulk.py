"""Choosing the events a command acts on (re-invoke, stop, forget): the ids given, or every event
the filters match; and asking before acting on a filter's events.

A bulk command never acts on everything by default: without an id or a filter it refuses, and
with a filter it lists what it would touch and asks, unless `--yes` (scripts) says so.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Iterable

import msgspec

from daemon.cli.shared import filter_of, find
from daemon.errors import FnspoolError
from daemon.model import Event, State
from daemon.query import Filter
from daemon.reads import EventReads

EXIT_REFUSED = 1
EXIT_USAGE = 2
SHOWN = 10  # events listed before a bulk command asks

#: why an event cannot be acted on (None: it can)
Refusal = Callable[[Event], str | None]


class Action(msgspec.Struct, frozen=True, kw_only=True):
    """What a command does, in words, and to which events."""

    verb: str  # "stop": in "cannot stop", "Stop 3 events?"
    done: str  # "stopped": in "nothing stopped"
    states: frozenset[State]  # the states the filters are narrowed to
    which: str  # "ended event": in "no ended event matches the filters"
    unchosen: str  # what acting on every event would do, the reason to refuse it


def chosen(
    args: argparse.Namespace,
    reads: EventReads,
    ids: Iterable[str],
    action: Action,
    refusal: Refusal,
) -> list[Event]:
    """The events given by id (every one must pass `refusal`), or those the filters match that
    pass it; refused (exit 2) without either, or with both."""
    ids = list(dict.fromkeys(ids))
    flt = filter_of(args)
    if ids and flt != Filter():
        raise FnspoolError(
            "give ids or filters, not both", title="ambiguous choice", exit_code=EXIT_USAGE
        )
    if ids:
        return [_checked(find(reads, i), action, refusal) for i in ids]
    if flt == Filter():
        raise FnspoolError(
            "give an id or a filter (--status, --function, --id-prefix, --since, --until): "
            f"without one {action.unchosen}",
            title="nothing chosen",
            exit_code=EXIT_USAGE,
        )
    flt.states = (flt.states or set(action.states)) & action.states
    found = reads.select(flt, limit=args.limit, newest_first=False) if flt.states else []
    matching = [e for e in found if refusal(e) is None]
    if not matching:
        raise FnspoolError(
            f"no {action.which} matches the filters", title=f"nothing to {action.verb}"
        )
    return matching


def _checked(event: Event, action: Action, refusal: Refusal) -> Event:
    if why := refusal(event):
        raise FnspoolError(why, title=f"cannot {action.verb}", exit_code=EXIT_REFUSED)
    return event


def confirm(events: list[Event], action: Action) -> bool:
    """List the first events and ask whether to act on them all (at a terminal only)."""
    count = len(events)
    if not sys.stdin.isatty():
        raise FnspoolError(
            f"{count} events match: add --yes to {action.verb} them without a terminal to confirm",
            title="confirmation needed",
            exit_code=EXIT_USAGE,
        )
    for event in events[:SHOWN]:
        print(f"  {event.id}  {event.function}  {event.state.value}")
    if count > SHOWN:
        print(f"  ... and {count - SHOWN} more")
    reply = input(f"{action.verb.capitalize()} {count} events? [y/N] ")
    return reply.strip().lower() in ("y", "yes")


def asked(events: list[Event], action: Action, args: argparse.Namespace, by_filter: bool) -> bool:
    """Whether to go on: ids given, `--yes`, or a yes at the prompt (else it says so)."""
    if not by_filter or args.yes or confirm(events, action):
        return True
    print(f"fnspool: nothing {action.done}", file=sys.stderr)
    return False
