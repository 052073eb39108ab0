"""The event index: a SQLite file derived from the journal, so reads do not grow with history.

One process writes it, the indexer (daemon/indexer.py, a child of the daemon); the daemon, the CLI
and the dashboard only read it. Its rows mirror the journal: an event has a row when it is in an
archive, the newest snapshot or a segment, up to the cursor stored with the rows; the records
after the cursor are read from the segments by whoever needs them to be exact (see reads.py).
Delete the file and the indexer builds it again from the journal.

Readers open it read-only, as members of the spool's group may not write to journal/. While the
indexer runs it is in WAL mode (a reader never waits for it, nor it for a reader; without write
access to `-shm`, SQLite reads through a private copy of the WAL index). The indexer puts it back
in rollback mode when it stops, so a reader with no write access can open it while the daemon is
down, when SQLite could not create the `-shm` and `-wal` files a WAL database needs.

Light on purpose: the standard library's sqlite3 and msgspec only.
"""

from __future__ import annotations

import collections
import contextlib
import sqlite3
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import msgspec

from daemon.journal import Cursor
from daemon.model import ErrorInfo, Event, Source, State
from daemon.query import Filter

INDEX_NAME = "index.sqlite"
VERSION = 3  # 2: counts kept by the indexer, not by triggers; 3: the errors' trigram index
_PARAMS_PER_QUERY = 500  # ids per `IN (...)`, well under SQLite's limit of host parameters
_FEW_IDS = 5_000  # ids with a prefix: so few are ranked by time in milliseconds
_NEAR_ROWS = 1_000  # the newest rows looked at before choosing how to read an id prefix

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS events (
    id TEXT NOT NULL UNIQUE,
    function TEXT NOT NULL,
    state TEXT NOT NULL,
    enqueued_at REAL NOT NULL,
    ended_at REAL,
    error TEXT,            -- lower-cased `type message`, for the free-text filter
    seq INTEGER NOT NULL,
    archive INTEGER,       -- the archive holding the event, once one does
    source_key TEXT,       -- the identity of its incoming file (see source_key_of)
    body BLOB NOT NULL     -- the folded Event, as JSON
);
CREATE INDEX IF NOT EXISTS events_by_time ON events (enqueued_at);
CREATE INDEX IF NOT EXISTS events_by_function ON events (function, enqueued_at);
CREATE INDEX IF NOT EXISTS events_by_state ON events (state, enqueued_at);
CREATE INDEX IF NOT EXISTS events_by_archive ON events (archive) WHERE archive IS NOT NULL;
CREATE INDEX IF NOT EXISTS events_by_source ON events (source_key) WHERE source_key IS NOT NULL;
CREATE TABLE IF NOT EXISTS counts (
    function TEXT NOT NULL, state TEXT NOT NULL, n INTEGER NOT NULL,
    PRIMARY KEY (function, state)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS archives (seq INTEGER PRIMARY KEY);
-- events forgotten before the indexer marked their archive: left out when it does
CREATE TABLE IF NOT EXISTS forgotten (
    archive INTEGER NOT NULL, id TEXT NOT NULL, PRIMARY KEY (archive, id)
) WITHOUT ROWID;
-- the error texts by trigram, so a free text finds its few events without reading every row;
-- kept by triggers that fire only where an event has an error (one event in ten, about)
CREATE VIRTUAL TABLE IF NOT EXISTS errors USING fts5(
    error, content='events', content_rowid='rowid', tokenize='trigram'
);
CREATE TRIGGER IF NOT EXISTS errors_insert AFTER INSERT ON events WHEN new.error IS NOT NULL
BEGIN
    INSERT INTO errors (rowid, error) VALUES (new.rowid, new.error);
END;
CREATE TRIGGER IF NOT EXISTS errors_update AFTER UPDATE OF error ON events
WHEN old.error IS NOT new.error BEGIN
    INSERT INTO errors (errors, rowid, error) SELECT 'delete', old.rowid, old.error
    WHERE old.error IS NOT NULL;
    INSERT INTO errors (rowid, error) SELECT new.rowid, new.error WHERE new.error IS NOT NULL;
END;
CREATE TRIGGER IF NOT EXISTS errors_delete AFTER DELETE ON events WHEN old.error IS NOT NULL
BEGIN
    INSERT INTO errors (errors, rowid, error) VALUES ('delete', old.rowid, old.error);
END;
"""

#: id -> (function, state) of rows before a change
Placed = dict[str, tuple[str, str]]

_event_decoder = msgspec.json.Decoder(Event)
_encoder = msgspec.json.Encoder()
_SUMMARY_COLUMNS = "body"


def source_key_of(source: Source | None) -> str | None:
    """The identity of an incoming file, without its path (a renamed file is the same file) and
    its device number (see store.identity): inode, size and modification time."""
    if source is None or source.inode is None:
        return None
    return f"{source.inode}:{source.size}:{source.mtime_ns}"


def error_text(error: ErrorInfo | None) -> str | None:
    """What the `error` column holds of an error: `type message`, lower-cased."""
    return f"{error.type} {error.message}".lower() if error is not None else None


def _row(event: Event, archive: int | None) -> tuple[object, ...]:
    return (
        event.id,
        event.function,
        event.state.value,
        event.enqueued_at,
        event.ended_at,
        error_text(event.error),
        event.seq,
        archive,
        source_key_of(event.source),
        _encoder.encode(event),
    )


class IndexDB:
    """One connection to the index, read-only unless `writable`."""

    def __init__(self, path: Path, *, writable: bool = False) -> None:
        self.path = path
        if writable:
            self.db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
            self.db.executescript("PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;")
            self.db.executescript(_SCHEMA)
            self._set_meta("version", VERSION)
        else:
            uri = f"file:{path}?mode=ro"
            self.db = sqlite3.connect(uri, uri=True, isolation_level=None, check_same_thread=False)
        self.db.execute("PRAGMA busy_timeout=5000")

    @classmethod
    def open_readonly(cls, directory: Path) -> IndexDB | None:
        """The index in `directory` for reading; None when there is none (yet) of this version."""
        path = directory / INDEX_NAME
        if not path.exists():
            return None
        try:
            index = cls(path)
            if index.version() != VERSION:
                index.close()
                return None
        except sqlite3.Error:
            return None
        return index

    def close(self) -> None:
        """Close the connection."""
        self.db.close()

    # -- reading --------------------------------------------------------------------------

    def version(self) -> int | None:
        """The schema version the file was written with."""
        try:
            value = self._meta("version")
        except sqlite3.OperationalError:  # no meta table: not (yet) an index
            return None
        return int(value) if value is not None else None

    def cursor(self) -> Cursor | None:
        """How far into the journal the rows go; None before the first build is done."""
        seq = self._meta("seq")
        if seq is None:
            return None
        return Cursor(
            seq=int(seq), segment=int(self._meta("segment")), offset=int(self._meta("offset"))
        )

    @contextlib.contextmanager
    def transaction(self) -> Iterator[None]:
        """One consistent view of the rows (a read transaction), or one atomic write."""
        self.db.execute("BEGIN")
        try:
            yield
        except BaseException:
            self.db.execute("ROLLBACK")
            raise
        self.db.execute("COMMIT")

    def events(self, ids: Iterable[str]) -> dict[str, Event]:
        """The indexed events with these ids."""
        found: dict[str, Event] = {}
        for (body,) in self._rows_by_id("body", list(ids)):
            event = _event_decoder.decode(body)
            found[event.id] = event
        return found

    def bodies(self, ids: Iterable[str]) -> list[bytes]:
        """The bodies of the rows with these ids (in no particular order)."""
        return [r[0] for r in self._rows_by_id("body", list(ids))]

    def _rows_by_id(self, column: str, ids: list[str]) -> Iterator[tuple[Any, ...]]:
        for start in range(0, len(ids), _PARAMS_PER_QUERY):
            chunk = ids[start : start + _PARAMS_PER_QUERY]
            marks = ",".join("?" * len(chunk))
            yield from self.db.execute(f"SELECT {column} FROM events WHERE id IN ({marks})", chunk)

    def ids_with_prefix(self, prefix: str, limit: int) -> list[str]:
        """Up to `limit` ids starting with `prefix`, in order."""
        rows = self.db.execute(
            "SELECT id FROM events WHERE id >= ? AND id < ? ORDER BY id LIMIT ?",
            (prefix, prefix + "\U0010ffff", limit),
        )
        return [r[0] for r in rows]

    def has_id(self, request_id: str) -> bool:
        """Whether an event with that id has a row."""
        row = self.db.execute("SELECT 1 FROM events WHERE id = ?", (request_id,))
        return row.fetchone() is not None

    def known_ids(self, ids: list[str]) -> set[str]:
        """Those of `ids` that have a row."""
        return {r[0] for r in self._rows_by_id("id", ids)}

    def archive_of(self, request_id: str) -> int | None:
        """The archive the row of that id is marked with (None: none, or no row)."""
        row = self.db.execute("SELECT archive FROM events WHERE id = ?", (request_id,)).fetchone()
        return row[0] if row else None

    def has_source(self, key: str) -> bool:
        """Whether an event came from the file with this identity (see source_key_of)."""
        row = self.db.execute("SELECT 1 FROM events WHERE source_key = ? LIMIT 1", (key,))
        return row.fetchone() is not None

    def select(self, flt: Filter, limit: int, *, newest_first: bool = True) -> list[Event]:
        """Up to `limit` events passing `flt`, in time order.

        Several states are read as one index range each, merged: for `state IN (...)` SQLite
        sorts every matching row to find the newest few (seconds at a million events).
        """
        if flt.id_prefix is not None and self._by_id(flt, limit, newest_first):
            return self._select_by_id(flt, limit, newest_first)
        order = "DESC" if newest_first else "ASC"
        ranked = f"ORDER BY enqueued_at {order}, id {order} LIMIT ?"
        branches = [_where(one, by_id=False) for one in _by_state(flt)]
        if len(branches) == 1:
            where, params = branches[0]
            sql = f"SELECT {_SUMMARY_COLUMNS} FROM events {where} {ranked}"
        else:
            columns = f"{_SUMMARY_COLUMNS}, enqueued_at, id"
            merged = " UNION ALL ".join(
                f"SELECT * FROM (SELECT {columns} FROM events {where} {ranked})"
                for where, _ in branches
            )
            sql = f"SELECT {_SUMMARY_COLUMNS} FROM ({merged}) {ranked}"
            params = [v for _, values in branches for v in (*values, limit)]
        return [_event_decoder.decode(r[0]) for r in self.db.execute(sql, [*params, limit])]

    def _by_id(self, flt: Filter, limit: int, newest_first: bool) -> bool:
        """Whether to read an id prefix's rows by id and rank them by time, rather than read in
        time order until enough match: when enough match among the newest rows, or when the
        prefix has many ids (an eighth of the rows: a short prefix of time-ordered ids), time
        order is cheaper; ranking costs about a microsecond an id, time order as much a row."""
        order = "DESC" if newest_first else "ASC"
        where, params = _where(flt, by_id=False)
        near = self.db.execute(
            f"SELECT count(*) FROM (SELECT id, function, state, enqueued_at, error FROM events "
            f"ORDER BY enqueued_at {order} LIMIT ?) {where}",
            [_NEAR_ROWS, *params],
        ).fetchone()[0]
        if near >= limit:
            return False
        rows = self.db.execute("SELECT max(rowid) FROM events").fetchone()[0] or 0
        few = max(_FEW_IDS, rows // 8)
        prefix = str(flt.id_prefix)
        found = self.db.execute(
            "SELECT count(*) FROM (SELECT 1 FROM events WHERE id >= ? AND id < ? LIMIT ?)",
            (prefix, prefix + "\U0010ffff", few),
        ).fetchone()[0]
        return bool(found < few)

    def _select_by_id(self, flt: Filter, limit: int, newest_first: bool) -> list[Event]:
        """Rank the rows of an id prefix by time, then read the first `limit` (ranking only
        their keys: sorting whole rows costs five times as much)."""
        where, params = _where(flt)
        order = "DESC" if newest_first else "ASC"
        sql = (
            f"SELECT {_SUMMARY_COLUMNS} FROM events WHERE rowid IN (SELECT rowid FROM events "
            f"{where} ORDER BY enqueued_at {order}, id {order} LIMIT ?)"
        )
        found = [_event_decoder.decode(r[0]) for r in self.db.execute(sql, [*params, limit])]
        return sorted(found, key=lambda e: (e.enqueued_at, e.id), reverse=newest_first)

    def counts(self) -> dict[tuple[str, State], int]:
        """The number of indexed events per function and state."""
        rows = self.db.execute("SELECT function, state, n FROM counts WHERE n > 0")
        return {(f, State(s)): n for f, s, n in rows}

    def archives(self) -> set[int]:
        """The archives whose events are marked."""
        return {r[0] for r in self.db.execute("SELECT seq FROM archives")}

    def _meta(self, key: str) -> Any:
        row = self.db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return row[0] if row else None

    # -- writing (the indexer) ------------------------------------------------------------

    def _set_meta(self, key: str, value: object) -> None:
        self.db.execute(
            "INSERT INTO meta VALUES (?, ?) ON CONFLICT DO UPDATE SET value = excluded.value",
            (key, value),
        )

    def placed(self, ids: list[str]) -> Placed:
        """The function and state the rows of these ids have now."""
        return {i: (f, s) for i, f, s in self._rows_by_id("id, function, state", ids)}

    def put(
        self, events: Iterable[Event], archive: int | None = None, *, placed: Placed | None = None
    ) -> None:
        """Insert or replace the rows of these events and keep the counts (inside a
        transaction); `placed`: what the rows held before, when the caller knows it."""
        events = list(events)
        if placed is None:
            placed = self.placed([e.id for e in events])
        self.db.executemany(
            "INSERT INTO events VALUES (?,?,?,?,?,?,?,?,?,?) ON CONFLICT (id) DO UPDATE SET "
            "state = excluded.state, ended_at = excluded.ended_at, error = excluded.error, "
            "seq = excluded.seq, archive = coalesce(excluded.archive, archive), "
            "body = excluded.body",
            (_row(e, archive) for e in events),
        )
        delta: collections.Counter[tuple[str, str]] = collections.Counter()
        for event in events:
            old = placed.get(event.id)
            if old is not None:
                delta[old] -= 1
            delta[(event.function, event.state.value)] += 1
        self._add_counts(delta)

    def _add_counts(self, delta: collections.Counter[tuple[str, str]]) -> None:
        """Counts kept per batch in Python: triggers per row cost as much as the row itself."""
        self.db.executemany(
            "INSERT INTO counts VALUES (?, ?, ?) ON CONFLICT DO UPDATE SET n = n + excluded.n",
            [(f, s, n) for (f, s), n in delta.items() if n],
        )

    def set_cursor(self, cursor: Cursor) -> None:
        """Record how far into the journal the rows go (inside the same transaction)."""
        self._set_meta("seq", cursor.seq)
        self._set_meta("segment", cursor.segment)
        self._set_meta("offset", cursor.offset)

    def mark_archive(self, seq: int, ids: Iterable[str]) -> None:
        """Note that archive `seq` holds these events (they go when it goes)."""
        self.db.executemany("UPDATE events SET archive = ? WHERE id = ?", ((seq, i) for i in ids))
        self.db.execute("INSERT OR IGNORE INTO archives VALUES (?)", (seq,))

    def drop(self, ids: Iterable[str]) -> None:
        """Delete the rows of these events (forgotten) and keep the counts (in a transaction)."""
        wanted = list(ids)
        placed = self.placed(wanted)
        delta: collections.Counter[tuple[str, str]] = collections.Counter()
        for function_state in placed.values():
            delta[function_state] -= 1
        self._add_counts(delta)
        self.db.executemany("DELETE FROM events WHERE id = ?", ((i,) for i in placed))

    def hold_forgotten(self, pairs: Iterable[tuple[int, str]]) -> None:
        """Note events forgotten whose archive is not marked yet: (archive, id)."""
        self.db.executemany("INSERT OR IGNORE INTO forgotten VALUES (?, ?)", pairs)

    def forgotten_in(self, seq: int) -> set[str]:
        """The ids noted as forgotten in archive `seq`, let go of: the archive is marked now."""
        rows = self.db.execute("SELECT id FROM forgotten WHERE archive = ?", (seq,))
        found = {r[0] for r in rows}
        self.db.execute("DELETE FROM forgotten WHERE archive = ?", (seq,))
        return found

    def drop_archive(self, seq: int) -> int:
        """Forget the events of an archive that retention removed; return how many."""
        rows = self.db.execute(
            "SELECT function, state, count(*) FROM events WHERE archive = ? GROUP BY 1, 2", (seq,)
        )
        self._add_counts(collections.Counter({(f, s): -n for f, s, n in rows}))
        gone = self.db.execute("DELETE FROM events WHERE archive = ?", (seq,)).rowcount
        self.db.execute("DELETE FROM archives WHERE seq = ?", (seq,))
        return gone

    def close_cleanly(self) -> None:
        """Checkpoint and leave WAL mode, so readers without write access can open the file."""
        with contextlib.suppress(sqlite3.Error):
            self.db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            self.db.execute("PRAGMA journal_mode=DELETE")
        self.close()


def _by_state(flt: Filter) -> list[Filter]:
    """The filter split into one per state (one index range each)."""
    if flt.states is None or len(flt.states) < 2:
        return [flt]
    return [msgspec.structs.replace(flt, states={s}) for s in sorted(flt.states)]


#: a filter's time bounds, and the condition each puts on a row
_TIME_BOUNDS = (
    ("since", "enqueued_at >= ?"),
    ("until", "enqueued_at <= ?"),
    ("ended_since", "ended_at >= ?"),
    ("ended_until", "ended_at <= ?"),
)


def _where(flt: Filter, *, by_id: bool = True) -> tuple[str, list[object]]:
    """The SQL condition for a filter (the same rules as Filter.matches); `by_id=False` keeps
    SQLite from reading an id prefix through the id index."""
    clauses: list[str] = []
    params: list[object] = []
    if flt.function is not None:
        clauses.append("function = ?")
        params.append(flt.function)
    if flt.states is not None:
        clauses.append(f"state IN ({','.join('?' * len(flt.states))})")
        params += sorted(s.value for s in flt.states)
    if flt.id_prefix is not None:
        clauses.append("id >= ? AND id < ?" if by_id else "+id >= ? AND +id < ?")
        params += [flt.id_prefix, flt.id_prefix + "\U0010ffff"]
    for bound, clause in _TIME_BOUNDS:
        if (value := getattr(flt, bound)) is not None:
            clauses.append(clause)
            params.append(value)
    if flt.text is not None:
        text = flt.text.lower()
        clauses.append("(substr(id, 1, ?) = ? OR instr(lower(function), ?) OR instr(error, ?))")
        params += [len(text), text, text, text]
    return ("WHERE " + " AND ".join(clauses) if clauses else ""), params


# -- pages and counts of ended events, for list views over any number of events (the dashboard) --
#
# A list shows events by (enqueued_at, id), newest first. Ended events never change once the index
# holds them, so a view can take them from here page by page and count them once; the events not
# ended (and those ended after the cursor) the viewer keeps itself from the journal. Every query
# here is bounded: either it follows an index in the list's order, or it works on a slice of one.

Key = tuple[float, str]  # (enqueued_at, id)
TOP: Key = (float("inf"), "")  # above every event
BOTTOM: Key = (float("-inf"), "")  # below every event
MAX_ID = "\U0010ffff"  # above every id: (t, MAX_ID) lies above every row of time t
_ENDED = frozenset(s for s in State if s.terminal)


class Branch(msgspec.Struct, frozen=True):
    """A part of a list's ended events read along one index: `seek` narrows the index (its
    equality and time range), `rest` checks each row."""

    index: str
    seek: str
    seek_params: tuple[object, ...]
    rest: str
    rest_params: tuple[object, ...]


def ended_states(flt: Filter) -> list[str]:
    """The ended states a filter lets through, by name."""
    states = _ENDED if flt.states is None else flt.states & _ENDED
    return sorted(s.value for s in states)


def _time(flt: Filter) -> tuple[list[str], list[object]]:
    clauses: list[str] = []
    params: list[object] = []
    if flt.since is not None:
        clauses.append("enqueued_at >= ?")
        params.append(flt.since)
    if flt.until is not None:
        clauses.append("enqueued_at <= ?")
        params.append(flt.until)
    return clauses, params


def _branch(index: str, eq: dict[str, str], flt: Filter, rest_states: list[str] | None) -> Branch:
    seek, seek_params = _time(flt)
    seek = [f"{column} = ?" for column in eq] + seek
    seek_params = list(eq.values()) + seek_params
    checked = Filter(
        text=flt.text,
        id_prefix=flt.id_prefix,
        ended_since=flt.ended_since,
        ended_until=flt.ended_until,
    )
    where, params = _where(checked)
    rest = [where.removeprefix("WHERE ")] if where else []
    if flt.function is not None and "function" not in eq:
        rest.append("function = ?")
        params.append(flt.function)
    if rest_states is not None:
        rest.append(f"state IN ({','.join('?' * len(rest_states))})")
        params += rest_states
    return Branch(
        index=index,
        seek=" AND ".join(seek) or "1",
        seek_params=tuple(seek_params),
        rest=" AND ".join(rest) or "1",
        rest_params=tuple(params),
    )


def state_branches(flt: Filter, counts: dict[tuple[str, State], int]) -> list[Branch]:
    """One branch per ended state the filter lets through, each along the narrower (by the
    counts) of its state's and its function's index."""
    by_state: dict[str, int] = {}
    by_function = 0
    for (function, each), n in counts.items():
        by_state[each.value] = by_state.get(each.value, 0) + n
        if function == flt.function:
            by_function += n
    branches = []
    for state in ended_states(flt):  # none left out: rows of any state may come later
        if flt.function is not None and by_function < by_state.get(state, 0):
            eq = {"function": flt.function}
            branches.append(_branch("events_by_function", eq, flt, [state]))
        else:
            branches.append(_branch("events_by_state", {"state": state}, flt, None))
    return branches


def once_branches(flt: Filter, counts: dict[tuple[str, State], int]) -> tuple[list[Branch], int]:
    """Branches that find every ended row of a filter once, along the fewest index entries (by
    the counts): the function's index, or one state's index per state; and how many entries."""
    states = ended_states(flt)
    along_states = sum(n for (_f, s), n in counts.items() if s.value in states)
    if flt.function is not None:
        along_function = sum(n for (f, _s), n in counts.items() if f == flt.function)
        if along_function <= along_states:
            eq = {"function": flt.function}
            return [_branch("events_by_function", eq, flt, states)], along_function
    return [_branch("events_by_state", {"state": s}, flt, None) for s in states], along_states


def scan_branch(flt: Filter) -> Branch:
    """The ended events of a filter along one index, in list order (for filters that must look
    at every row, such as free text)."""
    states = ended_states(flt)
    if flt.function is not None:
        return _branch("events_by_function", {"function": flt.function}, flt, states)
    if len(states) == 1:
        return _branch("events_by_state", {"state": states[0]}, flt, None)
    return _branch("events_by_time", {}, flt, states)


def _bound(key: Key, descending: bool) -> tuple[str, list[object]]:
    return f"(enqueued_at, id) {'<' if descending else '>'} (?, ?)", [key[0], key[1]]


def page(
    index: IndexDB, branches: list[Branch], bound: Key, limit: int, *, descending: bool = True
) -> list[bytes]:
    """The bodies of up to `limit` rows past `bound` (below it when descending), in list order,
    merging the branches along their indexes."""
    if not branches or limit <= 0:
        return []
    cut, cut_params = _bound(bound, descending)
    parts, params = [], []
    for b in branches:
        parts.append(
            f"SELECT enqueued_at, id, body FROM events INDEXED BY {b.index} "
            f"WHERE {b.seek} AND {b.rest} AND {cut}"
        )
        params += [*b.seek_params, *b.rest_params, *cut_params]
    order = "DESC" if descending else "ASC"
    sql = f"{' UNION ALL '.join(parts)} ORDER BY enqueued_at {order}, id {order} LIMIT ?"
    return [r[2] for r in index.db.execute(sql, [*params, limit])]


def slice_floor(
    index: IndexDB, branch: Branch, bound: Key, size: int, *, descending: bool = True
) -> float | None:
    """Where a slice of about `size` index entries past `bound` ends (its last enqueued_at,
    every row with that time included); None when no entry is left."""
    if descending:  # a bound between two times leaves every row of the upper one out
        op, agg, order = ("<" if bound[1] == "" else "<="), "min", "DESC"
    else:
        op, agg, order = (">" if bound[1] == MAX_ID else ">="), "max", "ASC"
    sql = (
        f"SELECT {agg}(enqueued_at) FROM (SELECT enqueued_at FROM events INDEXED BY "
        f"{branch.index} WHERE {branch.seek} AND enqueued_at {op} ? "
        f"ORDER BY enqueued_at {order} LIMIT ?)"
    )
    row = index.db.execute(sql, [*branch.seek_params, bound[0], size]).fetchone()
    return row[0] if row else None


def _in_slice(
    branch: Branch, bound: Key, floor: float, descending: bool
) -> tuple[str, list[object]]:
    cut, cut_params = _bound(bound, descending)
    sql = (
        f"FROM events INDEXED BY {branch.index} WHERE {branch.seek} AND {branch.rest} AND {cut} "
        f"AND enqueued_at {'>=' if descending else '<='} ?"
    )
    return sql, [*branch.seek_params, *branch.rest_params, *cut_params, floor]


def slice_page(
    index: IndexDB, branch: Branch, bound: Key, floor: float, limit: int, *, descending: bool = True
) -> list[bytes]:
    """The bodies of up to `limit` rows of the slice from `bound` to `floor`, in list order."""
    sql, params = _in_slice(branch, bound, floor, descending)
    order = "DESC" if descending else "ASC"
    sql = f"SELECT body {sql} ORDER BY enqueued_at {order}, id {order} LIMIT ?"
    return [r[0] for r in index.db.execute(sql, [*params, limit])]


def slice_count(
    index: IndexDB, branch: Branch, bound: Key, floor: float, *, descending: bool = True
) -> int:
    """The rows of the slice from `bound` to `floor` that pass the branch."""
    sql, params = _in_slice(branch, bound, floor, descending)
    return int(index.db.execute(f"SELECT count(*) {sql}", params).fetchone()[0])


#: what a row sorts by, per list column no index orders (a missing value is NULL)
SORT_VALUES = {
    "id": "id",
    "attempts": "coalesce(json_extract(CAST(body AS TEXT), '$.attempts'), 0)",
    "duration": "json_extract(CAST(body AS TEXT), '$.duration_ms')",
    "error": "error",
}


def slice_values(
    index: IndexDB, branch: Branch, bound: Key, floor: float, column: str
) -> list[tuple[str, float, Any]]:
    """(id, enqueued_at, value to sort by) of the rows of the slice from `bound` down to `floor`
    that pass the branch; `column` is one of SORT_VALUES."""
    sql, params = _in_slice(branch, bound, floor, True)
    return index.db.execute(
        f"SELECT id, enqueued_at, {SORT_VALUES[column]} {sql}", params
    ).fetchall()


def times_at(index: IndexDB, branches: list[Branch], offset: int, limit: int) -> list[float]:
    """The enqueued_at of up to `limit` rows from position `offset`, newest first (index-only
    where the branches need no row, as for states alone)."""
    if not branches:
        return []
    parts, params = [], []
    for b in branches:
        parts.append(f"SELECT enqueued_at FROM events INDEXED BY {b.index} WHERE {b.seek}")
        params += list(b.seek_params)
        if b.rest != "1":
            parts[-1] += f" AND {b.rest}"
            params += list(b.rest_params)
    sql = f"{' UNION ALL '.join(parts)} ORDER BY enqueued_at DESC LIMIT ? OFFSET ?"
    return [r[0] for r in index.db.execute(sql, [*params, limit, offset])]


MIN_TRIGRAM = 3  # characters: a shorter text has no trigram to look up


def few_rows(
    index: IndexDB, flt: Filter, functions: Iterable[str], limit: int
) -> list[bytes] | None:
    """The bodies of every ended row passing an id-prefix or free-text filter, found through the
    id index and the errors' trigram index instead of a scan; None when they may be more than
    `limit`, or only a scan can find them: a text in a function's name (`functions`: those
    indexed) matches that function's every row, and a short or non-ASCII text has no trigram
    the index folds as Python's lower() does. Every row found is checked by the filter's rule."""
    text = flt.text.lower() if flt.text is not None else None
    if flt.id_prefix is not None:
        sources = [_id_range(flt.id_prefix)]
    elif text is None or not _trigram_text(text, functions):
        return None
    else:
        phrase = '"' + text.replace('"', '""') + '"'
        by_error = "SELECT rowid AS hit FROM errors WHERE errors MATCH ?"
        sources = [_id_range(text), (by_error, [phrase])]
    hits: set[int] = set()
    for sql, params in sources:
        hits.update(r[0] for r in index.db.execute(f"{sql} LIMIT ?", [*params, limit + 1]))
        if len(hits) > limit:
            return None
    ended = msgspec.structs.replace(flt, states={State(s) for s in ended_states(flt)})
    where, params = _where(ended)
    # CROSS JOIN: each row by its rowid (else SQLite walks a state's index and checks them all)
    sql = (
        "SELECT body FROM (SELECT value AS hit FROM json_each(?)) "
        f"CROSS JOIN events ON events.rowid = hit {where}"
    )
    return [r[0] for r in index.db.execute(sql, [_encoder.encode(sorted(hits)).decode(), *params])]


def _trigram_text(text: str, functions: Iterable[str]) -> bool:
    return (
        len(text) >= MIN_TRIGRAM
        and text.isascii()
        and not any(text in f.lower() for f in functions)
    )


def _id_range(prefix: str) -> tuple[str, list[object]]:
    return "SELECT rowid AS hit FROM events WHERE id >= ? AND id < ?", [prefix, prefix + MAX_ID]


def unended(index: IndexDB) -> list[Event]:
    """Every indexed event not ended (the daemon's care: few, next to all those retained)."""
    states = sorted(s.value for s in State if not s.terminal)
    sql = f"SELECT body FROM events WHERE state IN ({','.join('?' * len(states))})"
    return [_event_decoder.decode(r[0]) for r in index.db.execute(sql, states)]


# -- a function's recent events, for the dashboard's pictures: bounded by a recent window ------


def arrivals(index: IndexDB, function: str, since: float) -> list[tuple[int, int]]:
    """(second, events of `function` enqueued in it) from `since` on, along its index alone."""
    sql = (
        "SELECT CAST(enqueued_at AS INTEGER), count(*) FROM events INDEXED BY events_by_function "
        "WHERE function = ? AND enqueued_at >= ? GROUP BY 1"
    )
    return [(int(s), int(n)) for s, n in index.db.execute(sql, (function, since))]


def recent_durations(
    index: IndexDB, function: str, since: float, limit: int
) -> list[tuple[float, float]]:
    """(enqueued_at, duration_ms), newest first, of up to `limit` of `function`'s ended events
    enqueued from `since` on (those that never ran have no duration and are left out)."""
    states = sorted(s.value for s in _ENDED)
    sql = (
        "SELECT enqueued_at, json_extract(CAST(body AS TEXT), '$.duration_ms') "
        "FROM events INDEXED BY events_by_function WHERE function = ? AND enqueued_at >= ? "
        f"AND state IN ({','.join('?' * len(states))}) ORDER BY enqueued_at DESC LIMIT ?"
    )
    rows = index.db.execute(sql, (function, since, *states, limit))
    return [(t, float(d)) for t, d in rows if d is not None]
