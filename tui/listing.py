"""The dashboard's table model: the events of one filter in list order, read a page at a time.

A list is the index's ended rows that pass the filter merged with the overlay's events that do
(tui/overlay.py). The index's part is cached for one range of keys around what is on screen,
complete within it, so a position there is a count in memory: `above` rows before the range, then
the range merged with the overlay. Moving near it extends it along an index; a jump far away
seeks a new range. Ended rows never change, so live changes touch only the overlay's part: the
cache stays right, and positions move by what the overlay gained or lost above them.

Work that may read many rows (a count for free text or a time range, a page of a rare text, a
seek) is done in slices by `step`, so the reader thread can follow the journal between them.
"""

from __future__ import annotations

import heapq
import time
from bisect import bisect_left, insort
from collections.abc import Iterator
from pathlib import Path

import msgspec

from daemon import eventdb
from daemon.eventdb import BOTTOM, MAX_ID, TOP, Branch, IndexDB, Key
from daemon.journal import Outrun
from daemon.model import Event, State
from daemon.query import Filter
from daemon.reads import EventReads, Following
from tui.overlay import Overlay, Row, row_decoder, row_of

JUMP = 2000  # rows: a window further than this from the cached range is sought afresh
CACHE_ROWS = 5000  # index rows kept around the window at most
SLICE_TIME = 0.03  # seconds a slice of work aims at, so the journal is followed between them
HELD_ROWS = 20_000  # rows of a text or id filter held in memory rather than scanned for


def after(key: Key) -> Key:
    """The boundary just above a row's key (no id lies between `id` and `id + NUL`)."""
    return (key[0], key[1] + "\0")


class Slicer:
    """Index entries per slice, adapted so that each slice takes about SLICE_TIME."""

    def __init__(self) -> None:
        self.size = 5000

    def timed(self, started: float) -> None:
        """Adapt to how long the last slice took."""
        took = time.perf_counter() - started
        if took < SLICE_TIME / 2:
            self.size = min(self.size * 2, 2_000_000)
        elif took > SLICE_TIME * 2:
            self.size = max(self.size // 2, 500)


class Listing:
    """The events passing one filter, newest first, over an index and the overlay."""

    def __init__(
        self, index: IndexDB, flt: Filter, overlay: Overlay, counts: dict[tuple[str, State], int]
    ) -> None:
        self.index, self.flt = index, flt
        self.branches = eventdb.state_branches(flt, counts)
        self.scans = flt.text is not None or flt.id_prefix is not None
        self.slicer = Slicer()
        self.extra_keys: list[Key] = []  # the overlay's rows that pass, ascending
        self.extra: dict[Key, Row] = {}
        for event in overlay.events():
            self.add(event)
        self.top: Key = TOP  # the cache: index rows with keys below `top` (never a row's key)
        self.above = 0  # index rows with keys above `top`
        self.rows: list[Row] = []  # newest first, every row down to the last one
        self.reached_bottom = False
        self.total_indexed: int | None = None
        self._work: Iterator[None] | None = None  # a page or a seek, read in slices
        self._streaming = False  # the work is a scan down whose rows are shown as found
        self._counting: Iterator[None] | None = None
        self._sought: int | None = None  # the position the last seek was for
        self.scanned, self.to_scan = 0, from_counts(flt, counts)  # the count's progress
        self.held = self.scans and self._hold({f for f, _ in counts})
        if self.held:
            return
        timed = (flt.since, flt.until, flt.ended_since, flt.ended_until) != (None,) * 4
        if not timed and not self.scans:
            self.total_indexed = from_counts(flt, counts)
        else:
            self._counting = self._count()

    def _hold(self, functions: set[str]) -> bool:
        """Hold every ended row of a text or id filter in memory, when the indexes find them
        and they are few: no scan, the list and its total at once (see eventdb.few_rows)."""
        bodies = eventdb.few_rows(self.index, self.flt, functions, HELD_ROWS)
        if bodies is None:
            return False
        overlay = [(k, self.extra[k]) for k in self.extra_keys]
        for row in map(row_decoder.decode, bodies):
            self.extra[row.key] = row
        self.extra.update(overlay)  # the overlay's version of an event is the newer
        self.extra_keys = sorted(self.extra)
        self.scans, self.branches, self.total_indexed = False, [], 0
        self.reached_bottom = True
        return True

    # -- the overlay's part -------------------------------------------------------------------

    def add(self, event: Event) -> None:
        """Take in an overlay event (new or changed) as it is now."""
        key = (event.enqueued_at, event.id)
        if key in self.extra:
            del self.extra[key]
            del self.extra_keys[bisect_left(self.extra_keys, key)]
        if self.flt.matches(event):
            self.extra[key] = row_of(event)
            insort(self.extra_keys, key)

    def settled(self, event: Event) -> None:
        """An overlay event that ended is now an index row: move it into the index's part."""
        key = (event.enqueued_at, event.id)
        if key in self.extra:
            del self.extra[key]
            del self.extra_keys[bisect_left(self.extra_keys, key)]
        if not self.flt.matches(event):
            return
        if self.held:  # the list's every row is held
            self.extra[key] = row_of(event)
            insort(self.extra_keys, key)
            return
        if self.total_indexed is not None:
            self.total_indexed += 1
        if key > self.top:
            self.above += 1
        elif self.reached_bottom or (self.rows and key > self.rows[-1].key):
            self.rows.insert(_above(self.rows, key), row_of(event))

    # -- positions ------------------------------------------------------------------------------

    @property
    def total(self) -> int | None:
        """Events passing the filter (None while they are being counted)."""
        if self.total_indexed is None:
            return None
        return self.total_indexed + len(self.extra_keys)

    @property
    def progress(self) -> tuple[int, int] | None:
        """While a text or id filter is counted by a scan: rows looked through, of how many."""
        if not self.scans or self.total is not None:
            return None
        return self.scanned, self.to_scan

    @property
    def streaming(self) -> bool:
        """Whether a window may still grow: a scan is finding its rows."""
        return self._streaming

    @property
    def busy(self) -> bool:
        """Whether work is waiting for `step`."""
        return self._work is not None or self._counting is not None

    def _cached(self) -> tuple[int, list[Row]]:
        """The first position of the cached range, and its rows merged with the overlay's."""
        low = BOTTOM if self.reached_bottom else (self.rows[-1].key if self.rows else self.top)
        lo = bisect_left(self.extra_keys, low)
        hi = bisect_left(self.extra_keys, self.top)
        extra = [self.extra[k] for k in reversed(self.extra_keys[lo:hi])]
        merged = list(heapq.merge(self.rows, extra, key=_key, reverse=True))
        first = self.above + len(self.extra_keys) - hi
        return first, merged

    def holds(self, key: Key) -> bool:
        """Whether the row with `key` is held now: the overlay's, or a cached index row."""
        if key in self.extra:
            return True
        at = _above(self.rows, key)
        return at < len(self.rows) and self.rows[at].key == key

    def position(self, key: Key) -> int | None:
        """The position `key` has (or would have) in the list, when it lies in the cached range."""
        first, merged = self._cached()
        if key > self.top or not (self.reached_bottom or (merged and key >= merged[-1].key)):
            return None
        return first + _above(merged, key)

    def window(self, start: int, count: int) -> list[Row] | None:
        """The rows at positions start.. (fewer at the end); None until `step` brings them."""
        start = max(0, start)
        if self._work is not None:
            return self._found_so_far(start, count) if self._streaming else None
        if self.total is not None and start >= self.total:
            return []
        first, merged = self._cached()
        end = first + len(merged)
        # a seek lands on the index's rows only: when the overlay holds more than JUMP rows the
        # window may still lie further than JUMP, and is read down (or up) to, not sought again
        if start < first:
            if first - start > JUMP and start != self._sought:
                self._sought = start
                self._seek(start)
            else:
                self._extend_up(first - start + count)
            return None if self._work is not None else self.window(start, count)
        if start + count > end and not self.reached_bottom:
            if start - end > JUMP and start != self._sought:
                self._sought = start
                self._seek(start)
            else:
                self._extend_down(start + count - end + count)
            return None if self._work is not None else self.window(start, count)
        self._trim(start - first)
        first, merged = self._cached()
        return merged[start - first : start - first + count]

    def _found_so_far(self, start: int, count: int) -> list[Row] | None:
        """The rows a scan has found so far from `start` (None: none yet)."""
        first, merged = self._cached()
        if not first <= start < first + len(merged):
            return None
        return merged[start - first : start - first + count]

    # -- work ---------------------------------------------------------------------------------

    def step(self) -> bool:
        """Do one slice of the waiting work (a page or a seek first, then the count); whether
        rows came for the window (found by a scan, or the work done)."""
        if self._work is not None:
            shown = len(self.rows)
            self._work = _advance(self._work)
            return self._work is None or len(self.rows) != shown
        if self._counting is not None:
            self._counting = _advance(self._counting)
        return False

    def _extend_down(self, count: int) -> None:
        bound = self.rows[-1].key if self.rows else self.top
        if self.scans:
            self._work, self._streaming = self._scan_down(bound, count), True
            return
        bodies = eventdb.page(self.index, self.branches, bound, count)
        self._took_down([row_decoder.decode(b) for b in bodies], count)

    def _took_down(self, rows: list[Row], asked: int) -> None:
        self.rows += rows
        if len(rows) < asked:
            self.reached_bottom = True

    def _extend_up(self, count: int) -> None:
        want = min(count, self.above)
        if want <= 0:  # nothing of the index's above: the overlay's rows are all there is
            self.above, self.top = 0, TOP
            return
        if self.scans:
            self._work = self._scan_up(want)
            return
        bodies = eventdb.page(self.index, self.branches, self.top, want, descending=False)
        self._took_up([row_decoder.decode(b) for b in bodies], want)

    def _took_up(self, rows: list[Row], asked: int) -> None:
        self.rows[:0] = reversed(rows)
        self.above -= len(rows)
        if len(rows) < asked or self.above <= 0:  # rows went by retention meanwhile
            self.above, self.top = 0, TOP
        else:
            self.top = after(rows[-1].key)

    def _trim(self, offset: int) -> None:
        """Keep the cache near the window: memory stays flat however far one scrolls."""
        if len(self.rows) <= CACHE_ROWS:
            return
        drop = max(0, min(offset - CACHE_ROWS // 4, len(self.rows) - CACHE_ROWS))
        if drop > 0:
            del self.rows[:drop]
            self.above += drop
            self.top = after(self.rows[0].key)
        if len(self.rows) > CACHE_ROWS:
            del self.rows[CACHE_ROWS:]
            self.reached_bottom = False

    def _reset_cache(self, top: Key, above: int) -> None:
        self.top, self.above, self.rows, self.reached_bottom = top, above, [], self.held

    def _seek(self, start: int) -> None:
        """Move the cache to start at (about) position `start`."""
        target = max(0, start - len(self.extra_keys))
        total = self.total
        if target == 0:
            self._reset_cache(TOP, 0)
        elif not self.scans and total is not None and total - start <= JUMP:
            self._seek_bottom(total - start + len(self.extra_keys))
        elif not self.scans and all(b.rest == "1" for b in self.branches):
            self._seek_by_times(target)  # along the indexes alone: no row is read
        else:
            self._work = self._seek_by_slices(target)

    def _seek_bottom(self, count: int) -> None:
        """The last `count` index rows, read upwards from the oldest (no offset to skip)."""
        assert self.total_indexed is not None
        bodies = eventdb.page(self.index, self.branches, BOTTOM, count, descending=False)
        rows = [row_decoder.decode(b) for b in bodies]
        self._reset_cache(TOP, 0)
        self.reached_bottom = True
        if rows:
            self.rows = rows[::-1]
            self.above = max(0, self.total_indexed - len(rows))
            self.top = TOP if self.above == 0 else after(rows[-1].key)

    def _seek_by_times(self, target: int) -> None:
        width = 64
        while True:
            first = max(0, target - width)
            times = eventdb.times_at(self.index, self.branches, first, target - first + 1)
            if len(times) < target - first + 1:  # past the end: now its place is known
                self._reset_cache(TOP, 0)
                self.total_indexed = first + len(times)
                return
            t = times[-1]
            ties = times.index(t)  # the rows of time t before the target: under the boundary
            if ties > 0 or first == 0:
                self._reset_cache((t, MAX_ID), first + ties)
                return
            width *= 4

    # -- sliced work (generators: one slice per `next`) -------------------------------------

    def _slices(self, branch: Branch, bound: Key, descending: bool = True) -> Iterator[float]:
        return slices(self.index, self.slicer, branch, bound, descending)

    def _count(self) -> Iterator[None]:
        branches = [eventdb.scan_branch(self.flt)] if self.scans else self.branches
        total = 0
        for branch in branches:
            bound = TOP
            for floor in self._slices(branch, bound):
                total += eventdb.slice_count(self.index, branch, bound, floor)
                self.scanned = min(self.to_scan, self.scanned + self.slicer.size)
                bound = (floor, "")
                yield
        self.total_indexed = total
        self.scanned = self.to_scan

    def _scan_down(self, bound: Key, count: int) -> Iterator[None]:
        """Rows below `bound`, each slice's added as found: everything above the slice's floor
        has been looked at, so the cache stays whole down to its last row."""
        branch = eventdb.scan_branch(self.flt)
        found = 0
        for floor in self._slices(branch, bound):
            bodies = eventdb.slice_page(self.index, branch, bound, floor, count - found)
            self.rows += [row_decoder.decode(b) for b in bodies]
            found += len(bodies)
            if found >= count:
                break
            bound = (floor, "")
            yield
        self._streaming = False
        if found < count:
            self.reached_bottom = True

    def _scan_up(self, count: int) -> Iterator[None]:
        branch = eventdb.scan_branch(self.flt)
        found: list[Row] = []
        bound = self.top
        for floor in self._slices(branch, bound, descending=False):
            bodies = eventdb.slice_page(
                self.index, branch, bound, floor, count - len(found), descending=False
            )
            found += [row_decoder.decode(b) for b in bodies]
            if len(found) >= count:
                break
            bound = (floor, MAX_ID)
            yield
        self._took_up(found, count)

    def _seek_by_slices(self, target: int) -> Iterator[None]:
        branch = eventdb.scan_branch(self.flt)
        seen, bound = 0, TOP
        for floor in self._slices(branch, bound):
            n = eventdb.slice_count(self.index, branch, bound, floor)
            if seen + n >= target:
                bodies = eventdb.slice_page(self.index, branch, bound, floor, target - seen)
                last = row_decoder.decode(bodies[-1])  # the row just above the target
                self._reset_cache(after(last.key), target - 1)
                self.rows = [last]
                return
            seen += n
            bound = (floor, "")
            yield
        self._reset_cache(TOP, 0)  # past the end: now its place is known
        self.total_indexed = seen


def slices(
    index: IndexDB, slicer: Slicer, branch: Branch, bound: Key, descending: bool = True
) -> Iterator[float]:
    """Successive slice floors from `bound` along `branch`, each slice sized by `slicer`."""
    while True:
        started = time.perf_counter()
        floor = eventdb.slice_floor(index, branch, bound, slicer.size, descending=descending)
        if floor is None:
            return
        yield floor
        slicer.timed(started)
        bound = (floor, "") if descending else (floor, MAX_ID)


def ended_ids(directory: Path, flt: Filter, page_size: int = 1000) -> Iterator[str]:
    """The ids of every ended event passing `flt`, newest first, read a page at a time (with
    what the index has not taken in yet folded on top, as reads.py does)."""
    ended = msgspec.structs.replace(flt, states=set(State(s) for s in eventdb.ended_states(flt)))
    index = IndexDB.open_readonly(directory)
    cursor = index.cursor() if index is not None else None
    if index is None or cursor is None:
        if index is not None:
            index.close()
        yield from (e.id for e in EventReads(directory).select(ended, None))
        return
    try:
        with index.transaction():
            following = Following(directory, cursor)
            try:
                tail = following.read_on(index)
            except Outrun:  # compacted meanwhile: the whole-journal way
                yield from (e.id for e in EventReads(directory).select(ended, None))
                return
            finally:
                following.close()
            yield from (e.id for e in tail.events.values() if ended.matches(e))
            branches = eventdb.state_branches(ended, index.counts())
            bound = TOP
            while rows := [
                row_decoder.decode(b) for b in eventdb.page(index, branches, bound, page_size)
            ]:
                yield from (r.id for r in rows if r.id not in tail.events)
                bound = rows[-1].key
    finally:
        index.close()


def _advance(job: Iterator[None]) -> Iterator[None] | None:
    try:
        next(job)
    except StopIteration:
        return None
    return job


def _key(row: Row) -> Key:
    return row.key


def _above(rows: list[Row], key: Key) -> int:
    """How many rows of a newest-first list sort above `key`."""
    lo, hi = 0, len(rows)
    while lo < hi:
        mid = (lo + hi) // 2
        if rows[mid].key > key:
            lo = mid + 1
        else:
            hi = mid
    return lo


def from_counts(flt: Filter, counts: dict[tuple[str, State], int]) -> int:
    """The indexed rows passing the filter's states and function (for a text or a time range:
    the rows it looks through)."""
    states = set(eventdb.ended_states(flt))
    return sum(
        n
        for (function, state), n in counts.items()
        if state.value in states and (flt.function is None or function == flt.function)
    )
