"""Reading events for the CLI and the dashboard: the index, plus the records it has not yet
taken in, folded on top, so every answer is as fresh as the journal.

The tail after the index's cursor is what the indexer has not read yet: a few records while the
daemon runs, the writes of its last moments after a crash. When there is no index (a journal
never indexed, or one being rebuilt), everything is read from the journal (a slow, full replay).

Light on purpose: no asyncio, no uvloop, no textual.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Protocol, TypeVar

import msgspec

from daemon.eventdb import IndexDB
from daemon.journal import (
    Cursor,
    Damage,
    JournalFollower,
    JournalTail,
    Outrun,
)
from daemon.model import (
    DELIVERY_RECORDS,
    Delivered,
    DeliveryFailed,
    Event,
    Forgotten,
    IllegalTransition,
    State,
    Transition,
    apply,
    mark_delivered,
)
from daemon.query import Filter

_ATTEMPTS = 3  # reads raced by a compaction are tried again from a fresh cursor


class Tail:
    """The events changed after a cursor, folded on top of their indexed rows."""

    def __init__(
        self,
        events: dict[str, Event],
        cursor: Cursor,
        damages: list[Damage],
        gone: set[str] | None = None,
    ) -> None:
        self.events = events
        self.cursor = cursor
        self.damages = damages
        self.gone = gone or set()  # forgotten: their rows, if any, are not to be shown

    def hides(self, request_id: str) -> bool:
        """Whether an indexed row with that id is forgotten (and not taken again)."""
        return request_id in self.gone and request_id not in self.events


class Following:
    """The records after one index cursor, folded on their indexed rows, and read on from where
    the last read ended: in a burst the indexer lags, and reading its whole lag again for every
    read made each of the daemon's lookups cost the lag (20 ms 4,000 records behind)."""

    def __init__(self, directory: Path, cursor: Cursor) -> None:
        self.start = cursor
        self.damages: list[Damage] = []
        self.events: dict[str, Event] = {}  # those the records after `start` changed
        self.gone: set[str] = set()  # those they forgot
        self._journal = JournalTail(directory, cursor, self.damages)

    def read_on(self, index: IndexDB) -> Tail:
        """Fold the records appended since the last read; Outrun when compaction removed them."""
        records = list(self._journal.read())
        ids = {r.id for r in records if isinstance(r, Transition | Delivered | DeliveryFailed)}
        known = index.events(ids - self.events.keys() - self.gone)
        known.update(self.events)
        for rec in records:
            if isinstance(rec, Forgotten):
                for gone in rec.events:
                    known.pop(gone.id, None)
                    self.events.pop(gone.id, None)
                    self.gone.add(gone.id)
            elif isinstance(rec, Transition):
                if rec.state is State.ENQUEUED:
                    self.gone.discard(rec.id)  # the id taken again
                event = known.get(rec.id)
                if event is not None and rec.seq <= event.seq:
                    continue
                try:
                    self.events[rec.id] = apply(known, rec)
                except IllegalTransition:
                    continue  # gone by retention, or damage the daemon reports
            elif isinstance(rec, DELIVERY_RECORDS) and (event := known.get(rec.id)) is not None:
                mark_delivered(event, rec)
                self.events[rec.id] = event
        return Tail(self.events, self._journal.cursor, self.damages, self.gone)

    def close(self) -> None:
        """Close the segment being read."""
        self._journal.close()


class Rows(Protocol):
    """Where the indexed rows come from: the index, or a full replay when there is none."""

    def events(self, ids: Iterable[str]) -> dict[str, Event]: ...

    def select(self, flt: Filter, limit: int, *, newest_first: bool = True) -> list[Event]: ...

    def ids_with_prefix(self, prefix: str, limit: int) -> list[str]: ...


class ReplayedRows:
    """Rows from a full replay of the journal (no index to read)."""

    def __init__(self, events: dict[str, Event]) -> None:
        self._events = events

    def events(self, ids: Iterable[str]) -> dict[str, Event]:
        """The events with these ids."""
        return {i: self._events[i] for i in ids if i in self._events}

    def select(self, flt: Filter, limit: int, *, newest_first: bool = True) -> list[Event]:
        """Up to `limit` events passing `flt`, in time order."""
        return by_time(self._events.values(), flt, limit, newest_first)

    def ids_with_prefix(self, prefix: str, limit: int) -> list[str]:
        """Up to `limit` ids starting with `prefix`."""
        return sorted(i for i in self._events if i.startswith(prefix))[:limit]


def by_time(
    events: Iterable[Event], flt: Filter, limit: int | None, newest_first: bool
) -> list[Event]:
    """The events passing `flt` by enqueue time (then id), as the index orders them: ids given
    with an event need not sort by time, and the newest first means by time."""
    chosen = sorted(
        (e for e in events if flt.matches(e)),
        key=lambda e: (e.enqueued_at, e.id),
        reverse=newest_first,
    )
    return chosen if limit is None else chosen[:limit]


T = TypeVar("T")


class EventReads:
    """Events by id, by prefix and by filter, in time independent of the events retained.

    Each read opens the index anew (an open reader would keep the indexer from leaving WAL mode
    when it stops); the records after the index's cursor are followed from read to read while
    the cursor stays. The events handed out are copies: the followed ones change in place.
    """

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self._following: Following | None = None

    def get(self, request_id: str) -> Event | None:
        """The event with that id, if retained."""

        def query(rows: Rows, tail: Tail) -> Event | None:
            if request_id in tail.events:
                return _copy(tail.events[request_id])
            if tail.hides(request_id):
                return None
            return rows.events([request_id]).get(request_id)

        return self._read(query)

    def get_many(self, ids: Iterable[str]) -> dict[str, Event]:
        """The retained events among these ids."""
        wanted = list(ids)

        def query(rows: Rows, tail: Tail) -> dict[str, Event]:
            found = rows.events(i for i in wanted if i not in tail.events and not tail.hides(i))
            found.update((i, _copy(tail.events[i])) for i in wanted if i in tail.events)
            return found

        return self._read(query)

    def select(self, flt: Filter, limit: int | None, *, newest_first: bool = True) -> list[Event]:
        """The events passing `flt` in time order, at most `limit`."""

        def query(rows: Rows, tail: Tail) -> list[Event]:
            extra = len(tail.events) + len(tail.gone)  # rows the tail may replace or remove
            found = rows.select(flt, (limit or 1 << 62) + extra, newest_first=newest_first)
            merged = {e.id: e for e in found if not tail.hides(e.id)}
            merged.update(tail.events)
            chosen = by_time(merged.values(), flt, limit, newest_first)
            return [_copy(e) if e.id in tail.events else e for e in chosen]

        return self._read(query)

    def ids_with_prefix(self, prefix: str, limit: int = 2) -> list[str]:
        """Up to `limit` retained ids starting with `prefix`, in order."""

        def query(rows: Rows, tail: Tail) -> list[str]:
            found = set(rows.ids_with_prefix(prefix, limit + len(tail.gone)))
            found = {i for i in found if not tail.hides(i)}
            found |= {i for i in tail.events if i.startswith(prefix)}
            return sorted(found)[:limit]

        return self._read(query)

    def _read(self, query: Callable[[Rows, Tail], T]) -> T:
        for _ in range(_ATTEMPTS):
            index = IndexDB.open_readonly(self.directory)
            if index is None:
                break
            try:
                cursor = index.cursor()
                if cursor is None:
                    break
                try:
                    tail = self._tail(index, cursor)
                except Outrun:
                    continue  # compacted under us: the index has moved on, read it again
                return query(index, tail)
            finally:
                index.close()
        self.close()
        state = JournalFollower(self.directory).load()
        return query(ReplayedRows(state.events), Tail({}, Cursor(seq=state.last_seq), []))

    def _tail(self, index: IndexDB, cursor: Cursor) -> Tail:
        """The records after the index's `cursor`, read on from the last read while it stays."""
        if self._following is None or self._following.start != cursor:
            self.close()
            self._following = Following(self.directory, cursor)
        try:
            return self._following.read_on(index)
        except Outrun:
            self.close()
            raise

    def close(self) -> None:
        """Let go of the journal segment being followed."""
        if self._following is not None:
            self._following.close()
            self._following = None


_event_codec = (msgspec.json.Encoder(), msgspec.json.Decoder(Event))


def _copy(event: Event) -> Event:
    encoder, decoder = _event_codec
    return decoder.decode(encoder.encode(event))
