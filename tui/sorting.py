"""The event list's sort orders: those the index's own orders serve, and the others.

The index keeps events in enqueue order along each of its indexes: by time, by (function, time)
and by (state, time). So the list can be, reading no more than it shows:

- by enqueue time, newest first (tui/listing.py) or oldest first (the same list read from its
  end: `Reversed`);
- by function or by state, either way, newest first within each (`Grouped`: one list per
  function or state, one after the other, each read along its own index; a group's place is the
  sum of the totals before it, known from the counts).

The id, the attempts, the duration and the error have no index to be read in order by: the list
is sorted by them in memory, for a filter that matches at most tui.ranked.BOUND events
(`Ranked`), since sorting ten million rows by a column no index holds means reading them all.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import TypeAlias

from msgspec.structs import replace

from daemon.eventdb import IndexDB, Key
from daemon.model import Event, State
from daemon.query import Filter
from tui.listing import Listing
from tui.overlay import Overlay, Row
from tui.ranked import RANKED, Ranked

#: the columns the list can be sorted by, in the list's order, and the direction each starts in
SORTABLE: dict[str, bool] = {
    "id": False,
    "function": False,
    "state": False,
    "attempts": True,
    "enqueued": True,
    "duration": True,
    "error": False,
}
STATE_ORDER: tuple[State, ...] = tuple(State)  # the lifecycle's order, as the counts line's


@dataclass(frozen=True)
class Order:
    """A sort: the column and its direction."""

    column: str = "enqueued"
    descending: bool = True

    @property
    def arrow(self) -> str:
        """The header's mark for the sorted column."""
        return "▼" if self.descending else "▲"

    @property
    def text(self) -> str:
        """The sort in words, for the filter line."""
        return f"sorted by {self.column} {self.arrow}"

    def flipped(self) -> Order:
        """The same column the other way."""
        return Order(self.column, not self.descending)

    def moved(self, step: int) -> Order:
        """The next (or previous) sortable column, in the direction it starts in."""
        columns = list(SORTABLE)
        column = columns[(columns.index(self.column) + step) % len(columns)]
        return Order(column, SORTABLE[column])


DEFAULT = Order()


class Reversed:
    """A list read from its end: oldest first. Position p is the inner list's total - 1 - p, so
    nothing is shown until the total is known (a text filter counts first)."""

    def __init__(self, inner: Listing) -> None:
        self.inner = inner

    @property
    def total(self) -> int | None:
        """Events in the list (None while counting)."""
        return self.inner.total

    @property
    def progress(self) -> tuple[int, int] | None:
        """A count's progress."""
        return self.inner.progress

    @property
    def busy(self) -> bool:
        """Whether work waits for `step`."""
        return self.inner.busy

    @property
    def streaming(self) -> bool:
        """Never: a scan finds the newest rows first, the end of this list."""
        return False

    def step(self) -> bool:
        """One slice of the waiting work; whether rows came for the window."""
        return self.inner.step()

    def add(self, event: Event) -> None:
        """An overlay event, new or changed."""
        self.inner.add(event)

    def settled(self, event: Event) -> None:
        """An overlay event the index now holds."""
        self.inner.settled(event)

    def position(self, key: Key) -> int | None:
        """Where `key` is (or would be), when known."""
        total, at = self.inner.total, self.inner.position(key)
        return None if total is None or at is None else total - 1 - at

    def window(self, start: int, count: int) -> list[Row] | None:
        """The rows at positions start.. (None until they are read)."""
        total = self.inner.total
        if total is None:
            return None
        end = max(0, total - max(0, start))
        first = max(0, end - count)
        rows = self.inner.window(first, end - first) if end > first else []
        return None if rows is None or self.inner.streaming else rows[::-1]


class Grouped:
    """The list by function or by state: one Listing per group, the groups in the sort's order,
    each newest first."""

    def __init__(
        self,
        index: IndexDB,
        flt: Filter,
        overlay: Overlay,
        counts: dict[tuple[str, State], int],
        order: Order,
    ) -> None:
        self.index, self.flt, self.overlay, self.counts = index, flt, overlay, counts
        self.by_state = order.column == "state"
        self.descending = order.descending
        self.groups: dict[str, Listing] = {}
        names: set[str] = set()
        if self.by_state:
            names = {s.value for s in STATE_ORDER if flt.states is None or s in flt.states}
        else:
            names = {f for f, _ in counts} | {e.function for e in overlay.events()}
            names = {n for n in names if flt.function in (None, n)}
        for name in names:
            self._group(name)

    def _group(self, name: str) -> Listing:
        listing = self.groups.get(name)
        if listing is None:
            if self.by_state:
                flt = replace(self.flt, states={State(name)})
            else:
                flt = replace(self.flt, function=name)
            listing = self.groups[name] = Listing(self.index, flt, self.overlay, self.counts)
        return listing

    def _ordered(self) -> list[Listing]:
        if self.by_state:
            rank = {s.value: i for i, s in enumerate(STATE_ORDER)}
            names = sorted(self.groups, key=rank.__getitem__, reverse=self.descending)
        else:
            names = sorted(self.groups, reverse=self.descending)
        return [self.groups[n] for n in names]

    def _placed(self) -> Iterator[tuple[int | None, Listing]]:
        """Each group with its first position (None once a total before it is not known)."""
        first: int | None = 0
        for listing in self._ordered():
            yield first, listing
            total = listing.total
            first = None if first is None or total is None else first + total

    @property
    def total(self) -> int | None:
        """Events in the list (None while a group is counted)."""
        totals = [g.total for g in self.groups.values()]
        return None if None in totals else sum(t for t in totals if t is not None)

    @property
    def progress(self) -> tuple[int, int] | None:
        """A count's progress, over every group being counted."""
        counting = [p for g in self.groups.values() if (p := g.progress) is not None]
        if not counting:
            return None
        return sum(p[0] for p in counting), sum(p[1] for p in counting)

    @property
    def busy(self) -> bool:
        """Whether a group has work waiting."""
        return any(g.busy for g in self.groups.values())

    @property
    def streaming(self) -> bool:
        """Whether a window may still grow: a group's scan is finding its rows."""
        return any(g.streaming for g in self.groups.values())

    def step(self) -> bool:
        """One slice of the first waiting group's work, in the list's order."""
        for listing in self._ordered():
            if listing.busy:
                return listing.step()
        return False

    def add(self, event: Event) -> None:
        """An overlay event, new or changed: into its group, out of the one it left."""
        name = event.state.value if self.by_state else event.function
        if self.flt.matches(event):
            self._group(name)
        if self.by_state:  # its state changed: the groups it left drop it
            for listing in self.groups.values():
                listing.add(event)
        elif name in self.groups:
            self.groups[name].add(event)

    def settled(self, event: Event) -> None:
        """An overlay event the index now holds."""
        if self.by_state:
            for listing in self.groups.values():
                listing.settled(event)
        elif (own := self.groups.get(event.function)) is not None:
            own.settled(event)

    def position(self, key: Key) -> int | None:
        """Where the row with `key` is, when it is held (a group's position of a key it does not
        hold would be a guess: the key does not say the group)."""
        for first, listing in self._placed():
            if first is not None and listing.holds(key):
                at = listing.position(key)
                return None if at is None else first + at
        return None

    def window(self, start: int, count: int) -> list[Row] | None:
        """The rows at positions start.. (None until every group they lie in is read)."""
        rows: list[Row] = []
        start = max(0, start)
        for first, listing in self._placed():
            if first is None:
                return None  # a group before is being counted: its place is not known yet
            total = listing.total
            end = start + count
            if total is not None and first + total <= start:
                continue
            if first >= end:
                break
            wanted = end - max(start, first)
            part = listing.window(max(0, start - first), wanted)
            due = wanted if total is None else min(wanted, first + total - max(start, first))
            if part is None or len(part) < due:  # still read, or counted: what follows waits
                # while a scan finds rows, those found so far show, as a Listing's do
                return rows + (part or []) if self.streaming and (rows or part) else None
            rows += part
            if total is None:
                return rows
        return rows


AnyListing: TypeAlias = Listing | Reversed | Grouped | Ranked


def listing_for(
    order: Order,
    index: IndexDB,
    flt: Filter,
    overlay: Overlay,
    counts: dict[tuple[str, State], int],
) -> AnyListing:
    """The list for a filter in `order`."""
    if order.column in ("function", "state"):
        return Grouped(index, flt, overlay, counts, order)
    if order.column in RANKED:
        return Ranked(index, flt, overlay, counts, order.column, order.descending)
    listing = Listing(index, flt, overlay, counts)
    return listing if order.descending else Reversed(listing)
