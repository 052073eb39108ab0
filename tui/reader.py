"""The dashboard's reader: one thread that owns the index connection, the overlay and the tail.

It reads the event index read-only (daemon/eventdb.py) and follows the journal from the index's
cursor, folding what the index has not taken in yet into the overlay (tui/overlay.py). The UI asks
it for windows of the filtered list (`Show`) and it answers with the rows (`WindowRead`); after
every batch of records it sends the counts (`Changed`) and the window again, moved by what
arrived above the selected event. Long reads are done in slices (tui/listing.py) between which
the journal is followed, so live updates keep coming while a filter is counted.

Consistency: each cycle reads the index inside one read transaction, after the tail has read
every record up to the index's cursor; so the index's rows are never newer than the overlay, and
an index row that is ended is exactly what the journal says. When there is no index yet (a spool
the daemon never indexed), the journal is replayed into an index in memory instead.
"""

from __future__ import annotations

import contextlib
import os
import queue
import sqlite3
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from textual.message import Message

from daemon.eventdb import INDEX_NAME, IndexDB, Key, unended
from daemon.journal import Cursor, Damage, JournalFollower, JournalTail, Outrun
from daemon.model import Forgotten, Request, State, Transition
from daemon.query import Filter
from daemon.spool import Spool
from tui.overlay import Overlay, Row
from tui.ranked import Ranked
from tui.sorting import DEFAULT, AnyListing, Order, listing_for
from tui.tail import DaemonStatus, StatusChanged, read_status

POLL = 0.1  # seconds between two looks at the journal: new events show within a tenth of a second
STATUS_EVERY = 0.5  # seconds between two looks at the daemon's status and at the index file
PROGRESS_EVERY = 0.25  # seconds between two reports of a count's progress
STATES: tuple[State, ...] = tuple(State)


@dataclass
class Show:
    """What the UI shows of the list: rows from `start`, the selected event, follow mode."""

    generation: int  # of the filter
    request: int
    start: int
    count: int
    cursor: Key | None = None
    follow: bool = True
    bottom: bool = False  # the oldest rows (the start is not known until the total is)


@dataclass
class SetFilter:
    """A new filter or sort: the list starts again from its top."""

    flt: Filter
    generation: int
    order: Order = DEFAULT


@dataclass
class WindowRead(Message):
    """Rows of the list at positions start.., for the UI's request."""

    generation: int
    request: int
    start: int
    rows: list[Row]
    total: int | None  # None while counting
    cursor: int | None  # the selected event's position now (None: not in the window)
    shift: int  # how far positions above the selection moved since the last answer


@dataclass
class SortRefused(Message):
    """The filter matches too many events to sort by the order's column (tui/ranked.py)."""

    generation: int
    order: Order
    total: int


@dataclass
class Changed(Message):
    """What the journal brought: counts, transitions for the detail view, answers, damage."""

    counts: dict[tuple[str, State], int]
    total: int | None
    transitions: list[Transition] = field(default_factory=list)
    requests: list[Request] = field(default_factory=list)
    damages: list[Damage] = field(default_factory=list)
    source: str = "index"  # index | replay (no index yet: the journal read whole)
    scanned: tuple[int, int] | None = None  # a text being counted: rows looked at, of how many


class Reader:
    """The reading loop (run in a thread worker)."""

    def __init__(self, spool: Spool, post: Callable[[Message], Any], cancelled: Callable[[], bool]):
        self.spool, self.post, self.cancelled = spool, post, cancelled
        self.requests: queue.SimpleQueue[Show | SetFilter] = queue.SimpleQueue()
        self.flt = Filter()
        self.order = DEFAULT
        self.generation = 0
        self.show: Show | None = None
        self.pending = False  # the window must be sent (again)
        self.index: IndexDB | None = None
        self.listing: AnyListing | None = None
        self.refusal_told = -1  # the generation whose sort was last refused
        self.in_transaction = False
        self.damages: list[Damage] = []
        self.damages_sent = 0
        self.next_poll = self.next_status = self.next_progress = 0.0
        self.last_status: DaemonStatus | None = None
        self.source = "index"
        self.inode: int | None = None  # of the index file read (None: a replay in memory)
        self.shift = 0  # positions moved above the selection since the last window sent
        self.forgot_at = 0  # the last Forgotten record seen: once indexed, the list is read anew

    # -- the loop -------------------------------------------------------------------------------

    def run(self) -> None:
        """Open, then follow until cancelled."""
        self._status()
        try:
            while not self.cancelled() and not self._open():
                time.sleep(STATUS_EVERY)
                self._status()
            while not self.cancelled():
                self._cycle()
        finally:
            self._close()

    def _cycle(self) -> None:
        assert self.index is not None and self.listing is not None
        if not self.in_transaction:
            self.index.db.execute("BEGIN")
            self.in_transaction = True
            if not self._rebase():
                return
        self._take_requests()
        now = time.monotonic()
        if now >= self.next_poll:
            self.next_poll = now + POLL
            self._poll()
        if now >= self.next_status:
            self.next_status = now + STATUS_EVERY
            self._status()
            if self._index_replaced():
                self._reopen()
                return
        if self.listing.busy:
            counting = self.listing.total is None
            if self.listing.step():  # rows found for the window, or its work done
                self.pending = True
            if counting and self.listing.total is not None:  # counted: tell the total
                self.pending = True
                self._send_changed([], [])
            elif counting and now >= self.next_progress:
                self.next_progress = now + PROGRESS_EVERY
                self._send_changed([], [])
        self._tell_refusal()
        self._answer()
        if not self.listing.busy:
            self.index.db.execute("COMMIT")
            self.in_transaction = False
            self._wait(max(0.0, self.next_poll - time.monotonic()))

    def _wait(self, timeout: float) -> None:
        try:
            self._handle(self.requests.get(timeout=timeout))
        except queue.Empty:
            return

    def _take_requests(self) -> None:
        while True:
            try:
                self._handle(self.requests.get_nowait())
            except queue.Empty:
                return

    def _handle(self, request: Show | SetFilter) -> None:
        if isinstance(request, SetFilter):
            self.flt, self.generation, self.order = request.flt, request.generation, request.order
            self._new_listing()
            self.show = None
        elif request.generation == self.generation:
            self.show = request
            self.pending = True

    # -- opening --------------------------------------------------------------------------------

    def _open(self) -> bool:
        """Open the index, or replay the journal when there is none; False: wait for it."""
        path = self.spool.journal / INDEX_NAME
        index = IndexDB.open_readonly(self.spool.journal)
        if index is not None:
            try:
                cursor = index.cursor()
            except sqlite3.Error:
                cursor = None
            if cursor is None:
                index.close()
                return False  # being built by the daemon's indexer: wait for it
            self.source, self.inode = "index", _inode(path)
        else:
            index = self._replay()
            self.source, self.inode = "replay", None
        self._start(index)
        return True

    def _replay(self) -> IndexDB:
        """The whole journal read into an index in memory (a spool never indexed)."""
        state = JournalFollower(self.spool.journal).load()
        index = IndexDB(Path(":memory:"), writable=True)
        with index.transaction():
            index.put(state.events.values())
            index.set_cursor(Cursor(seq=state.last_seq))
        self.damages += state.damages
        return index

    def _start(self, index: IndexDB) -> None:
        self.index = index
        index.db.execute("PRAGMA cache_size=-32768")  # 32 MiB of pages, whatever the index's size
        with index.transaction():
            cursor = index.cursor() or Cursor()
            self.overlay = Overlay(unended(index))
            self.counts = _ended(index.counts())
            self.archives = index.archives()
        self.live_counts = Counter((e.function, e.state) for e in self.overlay.events())
        self.tail = JournalTail(self.spool.journal, cursor, self.damages)
        self._new_listing()
        self.pending = True
        self.next_poll = 0.0

    def _new_listing(self) -> None:
        if self.index is None:
            return
        self.listing = listing_for(self.order, self.index, self.flt, self.overlay, self.counts)
        self.shift = 0
        self._send_changed([], [])

    def _index_replaced(self) -> bool:
        """Whether another index file stands now (rebuilt, or the first one after a replay)."""
        path = self.spool.journal / INDEX_NAME
        current = _inode(path)
        if current is None or current == self.inode:
            return False
        probe = IndexDB.open_readonly(self.spool.journal)
        if probe is None:
            return False
        try:
            return probe.cursor() is not None
        except sqlite3.Error:
            return False
        finally:
            probe.close()

    def _reopen(self) -> None:
        self._close()
        while not self.cancelled() and not self._open():
            time.sleep(STATUS_EVERY)

    def _close(self) -> None:
        if self.index is not None:
            with contextlib.suppress(sqlite3.Error):
                if self.in_transaction:
                    self.index.db.execute("COMMIT")
            self.index.close()
            self.index = None
        self.in_transaction = False
        if hasattr(self, "tail"):
            self.tail.close()

    # -- following ------------------------------------------------------------------------------

    def _rebase(self) -> bool:
        """At a new read of the index: take in what it gained; False when it had to be reopened."""
        assert self.index is not None and self.listing is not None
        cursor = self.index.cursor()
        if cursor is None or not self._poll():  # the tail reaches at least the index's cursor
            self._reopen()
            return False
        archives = self.index.archives()
        forgotten = 0 < self.forgot_at <= cursor.seq  # the index dropped forgotten events
        if self.archives - archives or forgotten:  # dropped events: positions counted anew
            self.archives = archives
            self.forgot_at = 0
            self._reopen()
            return False
        self.archives = archives
        settled = self.overlay.settle(cursor.seq)
        for event in settled:
            self.listing.settled(event)
            self.live_counts[event.function, event.state] -= 1
        if settled:
            self.counts = _ended(self.index.counts())
        return True

    def _poll(self) -> bool:
        """Fold what the journal gained; False when compaction outran the tail."""
        assert self.listing is not None
        try:
            records = list(self.tail.read())
        except Outrun:
            return False
        if not records and len(self.damages) == self.damages_sent:
            return True
        forgets = [r.seq for r in records if isinstance(r, Forgotten)]
        self.forgot_at = max([self.forgot_at, *forgets])
        show = self.show
        before = self.listing.position(show.cursor) if show and show.cursor else None
        folded = self.overlay.fold(records)
        for change in folded.changes:
            if change.before is not None:
                self.live_counts[change.before.function, change.before.state] -= 1
            self.live_counts[change.after.function, change.after.state] += 1
            self.listing.add(change.after)
        if folded.changes and show is not None:
            after = self.listing.position(show.cursor) if show.cursor else None
            if before is not None and after is not None and not show.follow:
                show.start = max(0, show.start + after - before)
                self.shift += after - before
            self.pending = True
        self._send_changed(folded.transitions, folded.requests)
        return True

    def _send_changed(self, transitions: list[Transition], requests: list[Request]) -> None:
        listing = self.listing
        assert listing is not None
        counts = Counter(self.counts)
        counts.update(self.live_counts)
        damages = self.damages[self.damages_sent :]
        self.damages_sent = len(self.damages)
        self.post(
            Changed(
                counts={k: n for k, n in counts.items() if n > 0},
                total=listing.total,
                transitions=transitions,
                requests=requests,
                damages=damages,
                source=self.source,
                scanned=listing.progress,
            )
        )

    def _tell_refusal(self) -> None:
        listing = self.listing
        if not isinstance(listing, Ranked) or listing.too_many is None:
            return
        if self.refusal_told != self.generation:
            self.refusal_told = self.generation
            self.post(SortRefused(self.generation, self.order, listing.too_many))

    def _answer(self) -> None:
        show, listing = self.show, self.listing
        if not self.pending or show is None or listing is None:
            return
        start = 0 if show.follow else show.start
        if show.bottom:
            total = listing.total
            if total is None:
                return  # the oldest rows wait for the count
            start = max(0, total - show.count)
        rows = listing.window(start, show.count)
        if rows is None:
            return  # being read in slices
        cursor = listing.position(show.cursor) if show.cursor else None
        self.post(
            WindowRead(
                generation=show.generation,
                request=show.request,
                start=start,
                rows=rows,
                total=listing.total,
                cursor=cursor,
                shift=self.shift,
            )
        )
        self.shift = 0
        self.pending = False

    def _status(self) -> None:
        status = read_status(self.spool)
        ageless = replace(status, heartbeat_age=None)
        if ageless != self.last_status:  # the heartbeat's age alone is not worth a repaint
            self.post(StatusChanged(status))
        self.last_status = ageless


def _ended(counts: dict[tuple[str, State], int]) -> dict[tuple[str, State], int]:
    """The index's counts of ended events (the rest is the overlay's)."""
    return {k: n for k, n in counts.items() if k[1].terminal}


def _inode(path: Path) -> int | None:
    try:
        return os.stat(path).st_ino
    except FileNotFoundError:
        return None
