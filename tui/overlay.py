"""What the dashboard keeps in memory: the events the index may not hold as they are now.

Ended events never change, so the index is right about them once it holds their end. The rest are
few: the events not ended (the daemon's care) and those that ended after the index's cursor. The
overlay holds exactly those, folded from the journal, so the list is the index's ended rows plus
the overlay, whatever the index's lag (see tui/listing.py). Its size follows the daemon's queue and
the indexer's lag, never the events retained.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import msgspec

from daemon.eventdb import Key
from daemon.model import (
    NO_RAW,
    ErrorInfo,
    Event,
    IllegalTransition,
    JournalRecord,
    Request,
    State,
    Transition,
    apply,
)

_NULL = msgspec.Raw(b"null")


class Row(msgspec.Struct, frozen=True):
    """What a list row shows of an event (decoded from an index row, other fields skipped)."""

    id: str
    function: str
    state: State
    enqueued_at: float
    attempts: int = 0
    duration_ms: float | None = None
    error: ErrorInfo | None = None
    started_at: float | None = None

    def running_for(self, now: float) -> float | None:
        """Milliseconds since a Running (or Stopping) event's first attempt started, else None."""
        if self.state not in (State.RUNNING, State.STOPPING) or self.started_at is None:
            return None
        return (now - self.started_at) * 1000

    @property
    def key(self) -> Key:
        """Where the row sorts: by enqueue time, then id."""
        return (self.enqueued_at, self.id)


row_decoder = msgspec.json.Decoder(Row)


def row_of(event: Event) -> Row:
    """The list row of an event."""
    return Row(
        id=event.id,
        function=event.function,
        state=event.state,
        enqueued_at=event.enqueued_at,
        attempts=event.attempts,
        duration_ms=event.duration_ms,
        error=event.error,
        started_at=event.started_at,
    )


def _light(event: Event) -> Event:
    """The event without what a list never shows (payload, result, history)."""
    event.payload, event.result, event.source = _NULL, NO_RAW, None
    event.history = []
    return event


@dataclass
class Change:
    """One event changed by the journal: as it was (None: new) and as it is."""

    before: Event | None
    after: Event


@dataclass
class Folded:
    """What a batch of records did."""

    changes: list[Change]
    transitions: list[Transition]
    requests: list[Request]


class Overlay:
    """The events not ended, and those ended after the index's cursor, folded from the journal."""

    def __init__(self, unended: Iterable[Event]) -> None:
        self.live: dict[str, Event] = {e.id: _light(e) for e in unended}
        self.ended: dict[str, Event] = {}  # ended after the index's cursor

    def __len__(self) -> int:
        return len(self.live) + len(self.ended)

    def events(self) -> Iterable[Event]:
        """Every event held."""
        yield from self.live.values()
        yield from self.ended.values()

    def fold(self, records: Iterable[JournalRecord]) -> Folded:
        """Apply records in order; what changed."""
        folded = Folded([], [], [])
        for rec in records:
            if isinstance(rec, Transition):
                folded.transitions.append(rec)
                change = self._apply(rec)
                if change is not None:
                    folded.changes.append(change)
            elif isinstance(rec, Request):
                folded.requests.append(rec)
        return folded

    def _apply(self, rec: Transition) -> Change | None:
        known = self.live.get(rec.id)
        if known is not None and rec.seq and rec.seq <= known.seq:
            return None  # the index's row already holds it
        before = msgspec.structs.replace(known) if known is not None else None
        try:
            event = _light(apply(self.live, rec))
        except IllegalTransition:
            return None  # an ended event gone by retention, or damage the daemon reports
        if event.ended:
            del self.live[event.id]
            self.ended[event.id] = event
        return Change(before, msgspec.structs.replace(event))  # as it is after this record

    def settle(self, indexed_seq: int) -> list[Event]:
        """Let go of the ended events the index now holds (up to `indexed_seq`); return them."""
        done = [e for e in self.ended.values() if e.seq <= indexed_seq]
        for event in done:
            del self.ended[event.id]
        return done
