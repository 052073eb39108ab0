"""A columnar index of events for list views over a million events (the TUI), and its loaders.

`JournalFollower` folds whole events (payload, history): right for one event, too heavy for a
million. `EventTable` keeps only what a list row shows, one column per field, so a filter is a
handful of C-speed passes (`bytes.translate`, `itertools.compress`) instead of a Python loop per
event. `TableFollower` loads a snapshot straight into columns (lines decoded into a light struct,
checksums checked in bulk) and follows the segments; `preview` reads only the newest part, so a
list can show rows before the whole snapshot is in; `load_event` reads one whole event back.

Light on purpose: no asyncio, no uvloop, no textual.
"""

from __future__ import annotations

import math
import os
import time
import zlib
from array import array
from bisect import bisect_left, bisect_right
from collections import Counter
from collections.abc import Callable, Iterable
from itertools import compress
from operator import attrgetter, methodcaller
from pathlib import Path
from typing import TypeVar

import msgspec

from daemon.journal import (
    ArchiveHeader,
    Cursor,
    Damage,
    JournalFollower,
    JournalState,
    JournalTail,
    SegmentReader,
    SnapshotHeader,
    list_archives,
    list_segments,
    list_snapshots,
    unframe,
)
from daemon.model import (
    TERMINAL_STATES,
    ErrorInfo,
    Event,
    JournalRecord,
    State,
    Transition,
)
from daemon.reads import EventReads

STATES: tuple[State, ...] = tuple(State)
STATE_CODE: dict[State, int] = {s: i for i, s in enumerate(STATES)}
_CODE_BY_VALUE: dict[str, int] = {s.value: i for i, s in enumerate(STATES)}
_TERMINAL_CODES = frozenset(STATE_CODE[s] for s in TERMINAL_STATES)
_RUNNING, _SUCCEEDED = STATE_CODE[State.RUNNING], STATE_CODE[State.SUCCEEDED]
MAX_FUNCTIONS = 255  # function codes are bytes; further names share code 255 ("other")
NAN = math.nan
_CHUNK = 2 * 1024 * 1024  # small enough that a reader thread lets a UI thread run between them
PREVIEW_BYTES = 512 * 1024  # the newest part of a snapshot read for a first screen


class _Row(msgspec.Struct):
    """What a list row needs from a snapshot line (the rest is skipped, never built)."""

    id: str
    function: str
    state: str
    enqueued_at: float
    attempts: int = 0
    started_at: float | None = None
    duration_ms: float | None = None
    error: ErrorInfo | None = None
    seq: int = 0


_rows_decoder = msgspec.json.Decoder(list[_Row])
_header_decoder = msgspec.json.Decoder(SnapshotHeader)
_archive_decoder = msgspec.json.Decoder(ArchiveHeader)
H = TypeVar("H", SnapshotHeader, ArchiveHeader)
_event_decoder = msgspec.json.Decoder(Event)
_record_decoder = msgspec.json.Decoder(JournalRecord)


def error_text(error: ErrorInfo | None) -> str | None:
    """An error as one line: `Type: message`."""
    return None if error is None else f"{error.type}: {error.message}"


class EventTable:
    """One row per event, in the order they were enqueued; one column per field a list shows."""

    def __init__(self) -> None:
        self.ids: list[str] = []
        self.row_of: dict[str, int] = {}
        self.state = bytearray()
        self.func = bytearray()
        self.functions: list[str] = []
        self._func_code: dict[str, int] = {}
        self._other_func: dict[int, str] = {}  # rows of functions past MAX_FUNCTIONS
        self.attempts = array("I")
        self.enqueued = array("d")
        self.started = array("d")
        self.duration = array("d")
        self.seq = array("q")
        self.errors: dict[int, str] = {}
        self.counts = [0] * len(STATES)
        self.by_function: Counter[tuple[int, int]] = Counter()  # (function code, state code)
        self.monotone = True  # enqueued times never decrease: time ranges by bisection
        self.complete = True  # False for a preview of the newest rows only
        # ids sorted, with their rows, for id-prefix search by bisection (rows past
        # `_sorted_upto`, added live, are scanned instead)
        self._sorted_ids: list[str] = []
        self._sorted_rows = array("q")
        self._sorted_upto = 0

    def __len__(self) -> int:
        return len(self.ids)

    def code_of(self, function: str) -> int:
        """The function's code, registering a new name."""
        code = self._func_code.get(function)
        if code is None:
            code = min(len(self.functions), MAX_FUNCTIONS)
            if code < MAX_FUNCTIONS:
                self.functions.append(function)
            self._func_code[function] = code
        return code

    def index_ids(self) -> None:
        """Sort the ids for prefix search (once, after a load; ids by time sort in O(n))."""
        order = sorted(range(len(self.ids)), key=self.ids.__getitem__)
        self._sorted_ids = [self.ids[r] for r in order]
        self._sorted_rows = array("q", order)
        self._sorted_upto = len(self.ids)

    def rows_with_prefix(self, prefix: str) -> Iterable[int]:
        """The rows whose id starts with `prefix`."""
        ids = self._sorted_ids
        at = bisect_left(ids, prefix)
        while at < len(ids) and ids[at].startswith(prefix):
            yield self._sorted_rows[at]
            at += 1
        tail = range(self._sorted_upto, len(self.ids))
        yield from compress(tail, map(methodcaller("startswith", prefix), self.ids[tail.start :]))

    def function(self, row: int) -> str:
        """The function of a row."""
        code = self.func[row]
        return self._other_func[row] if code == MAX_FUNCTIONS else self.functions[code]

    def state_of(self, row: int) -> State:
        """The state of a row."""
        return STATES[self.state[row]]

    def function_counts(self, function: str) -> list[int]:
        """Events of `function` per state code."""
        code = self._func_code.get(function)
        if code is None:
            return [0] * len(STATES)
        if code == MAX_FUNCTIONS:
            counts = [0] * len(STATES)
            for row, name in self._other_func.items():
                if name == function:
                    counts[self.state[row]] += 1
            return counts
        return [self.by_function[code, s] for s in range(len(STATES))]

    def extend(self, rows: list[_Row]) -> None:
        """Append rows decoded from a snapshot, column by column (C-speed passes)."""
        first = len(self.ids)
        ids = list(map(attrgetter("id"), rows))
        states = bytes(map(_CODE_BY_VALUE.__getitem__, map(attrgetter("state"), rows)))
        funcs = bytes(map(self.code_of, map(attrgetter("function"), rows)))
        enqueued = array("d", map(attrgetter("enqueued_at"), rows))
        if self.monotone and (
            (first and enqueued and enqueued[0] < self.enqueued[-1])
            or any(map(float.__gt__, enqueued, enqueued[1:]))
        ):
            self.monotone = False
        self.ids += ids
        self.row_of.update(zip(ids, range(first, first + len(ids)), strict=True))
        self.state += states
        self.func += funcs
        self.enqueued += enqueued
        self.attempts += array("I", map(attrgetter("attempts"), rows))
        self.started += array("d", (NAN if t is None else t for t in map(_started, rows)))
        self.duration += array("d", (NAN if d is None else d for d in map(_duration, rows)))
        self.seq += array("q", map(attrgetter("seq"), rows))
        for offset, row in enumerate(rows):
            if row.error is not None:
                self.errors[first + offset] = f"{row.error.type}: {row.error.message}"
            if funcs[offset] == MAX_FUNCTIONS:
                self._other_func[first + offset] = row.function
        for state, count in Counter(states).items():
            self.counts[state] += count
        self.by_function.update(zip(funcs, states, strict=True))

    def apply(self, rec: Transition) -> int | None:
        """Fold one transition into its row (as `model.apply` folds it); the row, if it changed."""
        row = self.row_of.get(rec.id)
        if row is None:
            if rec.state is not State.ENQUEUED:
                return None  # an event we never saw begin (retention dropped it)
            row = self._new_row(rec)
        elif rec.seq and rec.seq <= self.seq[row]:
            return None  # the snapshot already holds it
        old, new = self.state[row], STATE_CODE[rec.state]
        code = self.func[row]
        self.counts[old] -= 1
        self.counts[new] += 1
        self.by_function[code, old] -= 1
        self.by_function[code, new] += 1
        self.state[row] = new
        self.seq[row] = rec.seq
        if new == _RUNNING:
            self.attempts[row] = max(self.attempts[row], rec.attempt)
            if math.isnan(self.started[row]):
                self.started[row] = rec.at
        if rec.error is not None:
            self.errors[row] = f"{rec.error.type}: {rec.error.message}"
        if new in _TERMINAL_CODES:
            if not math.isnan(self.started[row]):
                self.duration[row] = round((rec.at - self.started[row]) * 1000, 3)
            if new == _SUCCEEDED:
                self.errors.pop(row, None)
        return row

    def _new_row(self, rec: Transition) -> int:
        row = len(self.ids)
        if self.monotone and self.enqueued and rec.at < self.enqueued[-1]:
            self.monotone = False
        code = self.code_of(rec.function)
        if code == MAX_FUNCTIONS:
            self._other_func[row] = rec.function
        self.ids.append(rec.id)
        self.row_of[rec.id] = row
        self.state.append(STATE_CODE[State.ENQUEUED])
        self.func.append(code)
        self.attempts.append(0)
        self.enqueued.append(rec.at)
        self.started.append(NAN)
        self.duration.append(NAN)
        self.seq.append(0)
        self.counts[STATE_CODE[State.ENQUEUED]] += 1  # apply() moves it to rec.state
        self.by_function[code, STATE_CODE[State.ENQUEUED]] += 1
        return row


def _started(row: _Row) -> float | None:
    return row.started_at


def _duration(row: _Row) -> float | None:
    return row.duration_ms


class Query(msgspec.Struct, kw_only=True):
    """A list filter, as `query.Filter` reads it: free text, states, one function, a time range."""

    text: str = ""  # id prefix, part of the function name, or part of the error (any case)
    states: frozenset[State] = frozenset()
    function: str | None = None
    since: float | None = None
    until: float | None = None

    @property
    def empty(self) -> bool:
        """Whether the query lets every event through."""
        return not (self.text or self.states or self.function) and (
            self.since is None and self.until is None
        )

    def matches(self, table: EventTable, row: int) -> bool:
        """Whether one row passes (for rows that change after a `select`)."""
        if self.states and table.state_of(row) not in self.states:
            return False
        if self.function is not None and table.function(row) != self.function:
            return False
        at = table.enqueued[row]
        if (self.since is not None and at < self.since) or (
            self.until is not None and at > self.until
        ):
            return False
        if not self.text:
            return True
        text = self.text.lower()
        if table.ids[row].startswith(text) or text in table.function(row).lower():
            return True
        return text in table.errors.get(row, "").lower()


def select(table: EventTable, query: Query) -> array[int] | None:
    """The rows passing `query`, ascending (None: every row); a few C-speed passes over columns."""
    if query.empty:
        return None
    n = len(table)
    masks: list[bytes | bytearray] = []
    if query.states:
        masks.append(table.state.translate(_table(STATE_CODE[s] for s in query.states)))
    if query.function is not None:
        function = query.function
        masks.append(_function_mask(table, lambda name: name == function))
    if query.since is not None or query.until is not None:
        masks.append(_time_mask(table, query.since, query.until))
    if query.text:
        masks.append(_text_mask(table, query.text.lower()))
    mask = masks[0]
    if len(masks) > 1:
        both = int.from_bytes(mask, "little")
        for other in masks[1:]:
            both &= int.from_bytes(other, "little")
        mask = both.to_bytes(n, "little")
    return array("q", compress(range(n), mask))


def _table(codes: Iterable[int]) -> bytes:
    """A `bytes.translate` table mapping `codes` to 1 and everything else to 0."""
    out = bytearray(256)
    for code in codes:
        out[code] = 1
    return bytes(out)


def _function_mask(table: EventTable, wanted: Callable[[str], bool]) -> bytearray:
    codes = [c for c, name in enumerate(table.functions) if wanted(name)]
    mask = bytearray(table.func.translate(_table(codes)))
    for row, name in table._other_func.items():
        mask[row] = 1 if wanted(name) else 0
    return mask


def _time_mask(table: EventTable, since: float | None, until: float | None) -> bytes:
    n, times = len(table), table.enqueued
    if table.monotone:
        lo = 0 if since is None else bisect_left(times, since)
        hi = n if until is None else bisect_right(times, until)
        return bytes(lo) + b"\x01" * max(0, hi - lo) + bytes(n - max(lo, hi))
    low = bytes(map(float(since).__le__, times)) if since is not None else b"\x01" * n
    high = bytes(map(float(until).__ge__, times)) if until is not None else b"\x01" * n
    return (int.from_bytes(low, "little") & int.from_bytes(high, "little")).to_bytes(n, "little")


def _text_mask(table: EventTable, text: str) -> bytearray:
    mask = _function_mask(table, lambda name: text in name.lower())
    for row in table.rows_with_prefix(text):
        mask[row] = 1
    for row, error in table.errors.items():
        if text in error.lower():
            mask[row] = 1
    return mask


# -- loading --------------------------------------------------------------------------------


def _check_lines(lines: list[bytes]) -> list[bytes]:
    """The bodies of journal lines, every checksum checked in bulk; ValueError on damage."""
    bodies = [line[9:] for line in lines]
    heads = b"".join([line[:9] for line in lines])
    if heads[8::9] != b" " * len(lines) or heads != heads.lower():
        raise ValueError("no checksum prefix")
    expected = array("I", bytes.fromhex(heads.replace(b" ", b"").decode("ascii")))
    if expected.itemsize != 4:  # pragma: no cover - every platform we run on has 32-bit I
        raise ValueError("unsupported platform")
    expected.byteswap()  # hex is big-endian; the array is the machine's (little-endian) order
    if expected != array("I", map(zlib.crc32, bodies)):
        raise ValueError("checksum mismatch")
    return bodies


def _decode_rows(lines: list[bytes]) -> list[_Row]:
    try:
        return _rows_decoder.decode(b"[" + b",".join(_check_lines(lines)) + b"]")
    except msgspec.DecodeError as exc:
        raise ValueError(f"not a snapshot line: {exc}") from None


def read_snapshot_table(path: Path) -> tuple[SnapshotHeader, EventTable]:
    """Read a snapshot into a table, streaming; ValueError when damaged anywhere (as journal's)."""
    return read_events_table(path, _header_decoder)


def read_events_table(
    path: Path, header_decoder: msgspec.json.Decoder[H], table: EventTable | None = None
) -> tuple[H, EventTable]:
    """Read a snapshot or an archive into a (new) table, streaming; ValueError when damaged."""
    table = table if table is not None else EventTable()
    before = len(table)
    with open(path, "rb") as f:
        try:
            header = header_decoder.decode(unframe(f.readline().rstrip(b"\n")))
        except (ValueError, msgspec.DecodeError) as exc:
            raise ValueError(f"{path}: damaged snapshot header: {exc}") from None
        pending = b""
        while chunk := f.read(_CHUNK):
            data = pending + chunk
            cut = data.rfind(b"\n") + 1
            pending = data[cut:]
            if cut:
                try:
                    table.extend(_decode_rows(data[: cut - 1].split(b"\n")))
                except ValueError as exc:
                    raise ValueError(f"{path}: damaged snapshot: {exc}") from None
            time.sleep(0)  # hand the GIL over: the UI thread may be waiting for it
    if pending:
        raise ValueError(f"{path}: torn snapshot")
    if header.count != len(table) - before:
        raise ValueError(
            f"{path}: holds {len(table) - before} events, its header says {header.count}"
        )
    table.index_ids()
    return header, table


class TableFollower(JournalFollower):
    """A `JournalFollower` that folds into an `EventTable` instead of whole events."""

    def __init__(self, directory: Path) -> None:
        super().__init__(directory)
        self.table = EventTable()

    def load(self) -> JournalState:
        """(Re)read archives and the newest readable snapshot, then the segments, into a table."""
        self.close()
        self.state = JournalState()
        self.table = EventTable()
        self.reloads += 1
        snapshots = list_snapshots(self.directory)
        newest = snapshots[-1][0] if snapshots else 0
        for seq, path in list_archives(self.directory):
            if seq <= newest:
                self._load_file(path, _archive_decoder)
        for _seq, path in reversed(snapshots):
            header = self._load_file(path, _header_decoder)
            if header is not None:
                self.state.last_seq = self.state.snapshot_seq = header.seq
                break
        self._tail = JournalTail(
            self.directory, Cursor(seq=self.state.last_seq), self.state.damages
        )
        for rec in self.poll():
            if isinstance(rec, Transition):
                self.table.apply(rec)
        return self.state

    def _load_file(self, path: Path, decoder: msgspec.json.Decoder[H]) -> H | None:
        try:
            header, self.table = read_events_table(path, decoder, self.table)
        except FileNotFoundError:
            return None  # compacted away under us
        except ValueError as exc:
            self.state.damages.append(_damage(path, str(exc)))
            return None
        return header

    def _fold_tail(self) -> list[JournalRecord]:
        if self._tail is None:
            return []
        new = []
        for rec in self._tail.read():
            if rec.seq > self.state.last_seq:
                self.state.last_seq = rec.seq
                new.append(rec)
        return new


def _damage(path: Path, reason: str) -> Damage:
    return Damage(path=str(path), offset=0, length=0, reason=reason)


def preview(directory: Path, tail_bytes: int = PREVIEW_BYTES) -> EventTable:
    """The newest events only, quickly: the end of the newest snapshot and the segments after it."""
    table = EventTable()
    table.complete = False
    covered = 0
    snapshots = list_snapshots(directory)
    if snapshots:
        covered, path = snapshots[-1]
        try:
            table.extend(_tail_rows(path, tail_bytes))
        except (OSError, ValueError):
            table = EventTable()  # the full load will say what is wrong
            table.complete = False
    for first_seq, path in list_segments(directory):
        try:
            reader = SegmentReader(path, first_seq)
        except FileNotFoundError:
            continue
        try:
            for rec in reader.records([]):
                if isinstance(rec, Transition) and rec.seq > covered:
                    table.apply(rec)
        finally:
            reader.close()
    return table


def _tail_rows(path: Path, tail_bytes: int) -> list[_Row]:
    with open(path, "rb") as f:
        size = os.fstat(f.fileno()).st_size
        start = max(0, size - tail_bytes)
        f.seek(start)
        data = f.read()
    lines = data.split(b"\n")[1:-1]  # the first is partial (or the header); the last is empty
    rows = []
    for line in lines:
        try:
            rows += _decode_rows([line])
        except ValueError:
            continue
    return rows


def load_event(directory: Path, request_id: str) -> Event | None:
    """One whole event (payload, history, result), from the index and the journal."""
    return EventReads(directory).get(request_id)
