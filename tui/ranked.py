"""The event list sorted by a column no index orders: the id, the attempts, the duration, the error.

No index keeps events in those orders, so sorting by one means reading every event it sorts: it
is done only for the events the filter matches, when they are at most BOUND. Their (id, enqueued_at,
value) are read along the index in slices, never their bodies, and sorted in memory; a window
reads its rows by id. Above the bound the list says so (`too_many`) and the dashboard keeps the
order it had. Live changes touch only the overlay's events (ended rows never change): each is put
back in its place by bisection.

The order: by the value, either way, newest first among equal values; events without one (no
duration: not ended, or never ran; no error) last, either way. Ids sort as text (UUIDv7 ids as
their time), errors as their `type message` text ignoring case (the index's `error` column).
"""

from __future__ import annotations

from bisect import bisect_left, insort
from collections.abc import Callable, Iterator
from typing import Any, NamedTuple

from daemon import eventdb
from daemon.eventdb import TOP, IndexDB, Key, error_text
from daemon.model import Event, State
from daemon.query import Filter
from tui.listing import HELD_ROWS, Slicer, from_counts, slices
from tui.overlay import Overlay, Row, row_decoder, row_of

BOUND = 50_000  # events sorted at most (their keys take 12 MiB: benchmarks/bench_tui_sort.py)
CACHE_ROWS = 5000  # index rows kept for windows at most
#: the list's columns no index orders, read and sorted in memory
RANKED = ("id", "attempts", "duration", "error")

SortKey = tuple[Any, ...]  # an entry: ascending in the order kept, its last item the id


class Desc(str):
    """An id compared the other way round: among equal values of an ascending sort, newest first."""

    __slots__ = ()

    def __lt__(self, other: str) -> bool:  # type: ignore[override]
        return str.__gt__(self, other)

    def __gt__(self, other: str) -> bool:  # type: ignore[override]
        return str.__lt__(self, other)

    def __le__(self, other: str) -> bool:  # type: ignore[override]
        return str.__ge__(self, other)

    def __ge__(self, other: str) -> bool:  # type: ignore[override]
        return str.__le__(self, other)


class Placing(NamedTuple):
    """How the entries are kept: ascending by `key`, shown in that order or from the end."""

    key: Callable[[str, float, Any], SortKey]
    from_end: bool


def placing(column: str, descending: bool) -> Placing:
    """The keeping of a sort: the value first (missing ones last once shown), newest first
    among equals. Keys are built so that tuples compare in C, Desc's only on a full tie."""
    if column == "id":
        return Placing(lambda i, t, v: (i,), descending)
    if column == "error" and not descending:
        return Placing(
            lambda i, t, v: (1, "", -t, Desc(i)) if v is None else (0, v, -t, Desc(i)), False
        )
    if column == "error":
        return Placing(lambda i, t, v: (-1, "", t, i) if v is None else (0, v, t, i), True)
    sign = 1.0 if descending else -1.0  # shown from the end: the largest first, unless negated
    return Placing(lambda i, t, v: (-1, 0.0, t, i) if v is None else (0, sign * v, t, i), True)


def value_of(column: str, row: Row) -> Any:
    """What a row sorts by in `column` (None: it has no value there)."""
    if column == "attempts":
        return row.attempts
    if column == "duration":
        return row.duration_ms
    if column == "error":
        return error_text(row.error)
    return None  # the id is the key itself


def sortable(total: int) -> bool:
    """Whether a list of `total` events can be sorted in memory."""
    return total <= BOUND


def too_many_text(column: str, total: int) -> str:
    """Why a sort is refused, and what to do."""
    return f"narrow the filter to sort by {column}: {total:,} events match, up to {BOUND:,} sort"


class Ranked:
    """The events passing a filter, sorted by a column no index orders (at most BOUND)."""

    def __init__(
        self,
        index: IndexDB,
        flt: Filter,
        overlay: Overlay,
        counts: dict[tuple[str, State], int],
        column: str,
        descending: bool,
    ) -> None:
        self.index, self.flt, self.column = index, flt, column
        self.placing = placing(column, descending)
        self.keys: list[SortKey] = []  # every entry, ascending
        self.key_of: dict[str, SortKey] = {}
        self.live: dict[str, Row] = {}  # the overlay's rows that pass
        self.cache: dict[str, Row] = {}  # index rows read for windows
        self.too_many: int | None = None  # the events matching, when more than BOUND
        self.slicer = Slicer()
        self.branches, self.to_scan = eventdb.once_branches(flt, counts)
        self.scanned = 0
        self.scans = flt.text is not None or flt.id_prefix is not None
        timed = (flt.since, flt.until, flt.ended_since, flt.ended_until) != (None,) * 4
        self.expected = None if self.scans or timed else from_counts(flt, counts)
        for event in overlay.events():
            self.add(event)
        self._work: Iterator[None] | None = self._read({f for f, _ in counts})
        if self.expected is not None and not sortable(self.expected + len(self.live)):
            self.too_many, self._work = self.expected + len(self.live), None

    # -- the overlay's part ---------------------------------------------------------------------

    def add(self, event: Event) -> None:
        """An overlay event, new or changed: out of its old place, into its new one."""
        key = self.key_of.pop(event.id, None)
        if key is not None:
            del self.keys[bisect_left(self.keys, key)]
        self.live.pop(event.id, None)
        if self.flt.matches(event):
            row = self.live[event.id] = row_of(event)
            self._put(self.placing.key(row.id, row.enqueued_at, value_of(self.column, row)))

    def settled(self, event: Event) -> None:
        """An overlay event the index now holds (ended: its place stays)."""
        row = self.live.pop(event.id, None)
        if row is not None:
            self.cache[event.id] = row
            if self.expected is not None and self._work is not None:
                self.expected += 1  # an indexed row now: the read will find it (and skip it)

    def _put(self, key: SortKey) -> None:
        self.key_of[key[-1]] = key
        insort(self.keys, key)

    # -- reading the index's part ---------------------------------------------------------------

    def _read(self, functions: set[str]) -> Iterator[None]:
        """The values of the index's rows, a slice at a time; past the bound, only counted."""
        found = self._held(functions)
        if found is None:
            found = []
            counted: int | None = None
            for branch in self.branches:
                bound = TOP
                for floor in slices(self.index, self.slicer, branch, bound):
                    if counted is not None:
                        counted += eventdb.slice_count(self.index, branch, bound, floor)
                    else:
                        values = eventdb.slice_values(self.index, branch, bound, floor, self.column)
                        found += [v for v in values if v[0] not in self.key_of]
                        if not sortable(len(found) + len(self.keys)):
                            counted, found = len(found), []
                    self.scanned = min(self.to_scan, self.scanned + self.slicer.size)
                    bound = (floor, "")
                    yield
            if counted is not None:
                self.too_many = counted + len(self.keys)
                return
        found = [v for v in found if v[0] not in self.key_of]
        if not sortable(len(found) + len(self.keys)):
            self.too_many = len(found) + len(self.keys)
            return
        make = self.placing.key
        new = [make(*v) for v in found]
        self.key_of.update((k[-1], k) for k in new)
        self.keys += new
        self.keys.sort()

    def _held(self, functions: set[str]) -> list[tuple[str, float, Any]] | None:
        """The values of a text or id filter's rows when the indexes find them few (see
        eventdb.few_rows); None: a scan must find them."""
        if not self.scans:
            return None
        bodies = eventdb.few_rows(self.index, self.flt, functions, HELD_ROWS)
        if bodies is None:
            return None
        rows = [row_decoder.decode(b) for b in bodies]
        return [(r.id, r.enqueued_at, value_of(self.column, r)) for r in rows]

    # -- what the reader asks -------------------------------------------------------------------

    @property
    def total(self) -> int | None:
        """Events in the list (None while they are read or counted, or too many)."""
        if self.too_many is not None:
            return None
        if self._work is None:
            return len(self.keys)
        return None if self.expected is None else self.expected + len(self.live)

    @property
    def progress(self) -> tuple[int, int] | None:
        """While a filter's events are counted by the read: rows looked through, of how many."""
        if self._work is None or self.expected is not None:
            return None
        return self.scanned, self.to_scan

    @property
    def busy(self) -> bool:
        """Whether the read waits for `step`."""
        return self._work is not None

    @property
    def streaming(self) -> bool:
        """Never: nothing is in its place before every value is read."""
        return False

    def step(self) -> bool:
        """One slice of the read; whether it is done (the list can be shown, or is refused)."""
        if self._work is None:
            return False
        try:
            next(self._work)
        except StopIteration:
            self._work = None
            return True
        return False

    def position(self, key: Key) -> int | None:
        """Where the event with `key` is, once the list is read."""
        found = self.key_of.get(key[1])
        if found is None or self._work is not None or self.too_many is not None:
            return None
        at = bisect_left(self.keys, found)
        return len(self.keys) - 1 - at if self.placing.from_end else at

    def window(self, start: int, count: int) -> list[Row] | None:
        """The rows at positions start.. (None until the list is read, or when refused)."""
        if self._work is not None or self.too_many is not None:
            return None
        n, start = len(self.keys), max(0, start)
        end = min(n, start + count)
        if start >= end:
            return []
        if self.placing.from_end:
            chosen = self.keys[n - end : n - start][::-1]
        else:
            chosen = self.keys[start:end]
        ids = [str(k[-1]) for k in chosen]
        self._read_rows(ids)
        rows = [self.live.get(i) or self.cache.get(i) for i in ids]
        return [r for r in rows if r is not None]

    def _read_rows(self, ids: list[str]) -> None:
        """Read the index's rows of these ids that are not held (by id: a handful)."""
        if len(self.cache) > CACHE_ROWS:
            self.cache = {i: self.cache[i] for i in ids if i in self.cache}
        wanted = [i for i in ids if i not in self.live and i not in self.cache]
        for body in self.index.bodies(wanted):
            row = row_decoder.decode(body)
            self.cache[row.id] = row
