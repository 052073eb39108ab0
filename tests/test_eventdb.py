"""The index answers `events list` filters as Filter.matches does, newest first by time, without
sorting every matching row (what made several states, or a short id prefix, take seconds)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import msgspec
import pytest

from daemon import eventdb
from daemon.eventdb import IndexDB
from daemon.model import ErrorInfo, Event, State
from daemon.query import Filter

STATES = [State.SUCCEEDED, State.FAILED, State.EXPIRED, State.STOPPED, State.INVALID]
COUNT = 400


def _event(i: int) -> Event:
    # ids not in time order (explicit ids are not), two events per enqueue time (ties by id)
    return Event(
        id=f"{i * 37 % COUNT:04d}-{i}",
        function=f"f{i % 3}",
        state=STATES[i % len(STATES)],
        enqueued_at=1000.0 + i // 2,
        ended_at=1000.5 + i // 2,
        seq=i + 1,
    )


@pytest.fixture
def index(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[IndexDB]:
    # a small table: "few ids" is an eighth of it, so both ways of reading a prefix are used
    monkeypatch.setattr(eventdb, "_FEW_IDS", 1, raising=False)
    monkeypatch.setattr(eventdb, "_NEAR_ROWS", 20, raising=False)
    db = IndexDB(tmp_path / "index.sqlite", writable=True)
    with db.transaction():
        db.put(_event(i) for i in range(COUNT))
    yield db
    db.close()


FILTERS = [
    Filter(),
    Filter(states={State.FAILED}),
    Filter(states={State.FAILED, State.EXPIRED}),
    Filter(states=set(STATES)),
    Filter(function="f1", states={State.SUCCEEDED, State.STOPPED}),
    Filter(id_prefix="0"),  # every id: read in time order
    Filter(id_prefix="01"),  # a quarter of the ids, spread in time: read in time order
    Filter(id_prefix="012"),  # ten ids: ranked by id
    Filter(id_prefix="0123-"),
    Filter(id_prefix="x"),
    Filter(id_prefix="01", states={State.FAILED, State.INVALID}),
    Filter(since=1100.0, until=1150.0, states={State.STOPPED, State.SUCCEEDED}),
]


@pytest.mark.parametrize("flt", FILTERS, ids=repr)
@pytest.mark.parametrize("newest_first", [True, False])
def test_select_is_the_first_matching_events_by_time(
    index: IndexDB, flt: Filter, newest_first: bool
) -> None:
    events = sorted(
        (e for e in map(_event, range(COUNT)) if flt.matches(e)),
        key=lambda e: (e.enqueued_at, e.id),
        reverse=newest_first,
    )
    for limit in (1, 7, COUNT):
        found = index.select(flt, limit, newest_first=newest_first)
        assert [e.id for e in found] == [e.id for e in events[:limit]]


def _sorts_of_every_match(index: IndexDB, flt: Filter) -> list[str]:
    """The plan steps of `select` that sort rows read straight from the table (every match),
    as opposed to merging the few rows of ordered, limited subqueries."""
    statements: list[str] = []
    index.db.set_trace_callback(statements.append)
    index.select(flt, 50)
    index.db.set_trace_callback(None)
    selects = [s for s in statements if s.lstrip().upper().startswith("SELECT BODY")]
    assert selects, statements
    found = []
    for sql in selects:
        steps = index.db.execute(f"EXPLAIN QUERY PLAN {sql}").fetchall()
        for _id, parent, _, detail in steps:
            siblings = [d for _i, p, _, d in steps if p == parent]
            if detail == "USE TEMP B-TREE FOR ORDER BY" and any(
                d.startswith(("SCAN events", "SEARCH events")) for d in siblings
            ):
                found.append(f"{sql}: {siblings}")
    return found


@pytest.mark.parametrize(
    "flt",
    [
        Filter(states={State.FAILED, State.EXPIRED}),
        Filter(states=set(STATES)),
        Filter(id_prefix="0"),
    ],
    ids=repr,
)
def test_the_newest_are_found_without_sorting_every_match(index: IndexDB, flt: Filter) -> None:
    assert _sorts_of_every_match(index, flt) == []


def _failed(i: int, message: str, archive_seq: int | None = None) -> Event:
    return Event(
        id=f"e{i:03d}",
        function="resize",
        state=State.FAILED,
        enqueued_at=2000.0 + i,
        ended_at=2000.5 + i,
        error=ErrorInfo(type="ValueError", message=message),
        seq=COUNT + i + 1,
    )


def _found(index: IndexDB, flt: Filter) -> list[str] | None:
    bodies = eventdb.few_rows(index, flt, {f for f, _ in index.counts()}, 50)
    return None if bodies is None else sorted(msgspec.json.decode(b)["id"] for b in bodies)


def test_a_rare_text_is_found_through_the_error_trigrams_as_rows_change_and_go(index: IndexDB):
    with index.transaction():
        index.put([_failed(1, "Disk Quota exceeded"), _failed(2, "timeout")], archive=7)
        index.mark_archive(7, ["e001", "e002"])
    assert _found(index, Filter(text="quota EXC")) == ["e001"]  # any case, as matches() does
    with index.transaction():  # the error of a row changes: the old text is no longer found
        index.put([msgspec.structs.replace(_failed(1, "no space left"), seq=COUNT + 9)])
    assert _found(index, Filter(text="quota")) == []
    assert _found(index, Filter(text="space left")) == ["e001"]
    assert _found(index, Filter(text="e00")) == ["e001", "e002"]  # an id prefix
    assert _found(index, Filter(text="space", states={State.SUCCEEDED})) == []
    with index.transaction():
        index.drop_archive(7)  # retention: the rows and their trigrams go
    assert _found(index, Filter(text="space left")) == []
    left = index.db.execute("SELECT count(*) FROM errors WHERE errors MATCH '\"valueerror\"'")
    assert left.fetchone()[0] == 0  # the trigram index itself holds none of them


@pytest.mark.parametrize(
    "flt",
    [Filter(text="re"), Filter(text="f1"), Filter(text="naïve"), Filter(id_prefix="0")],
    ids=["short text", "a function's name", "not ASCII", "more ids than held"],
)
def test_texts_the_indexes_cannot_narrow_are_left_to_a_scan(index: IndexDB, flt: Filter):
    assert _found(index, flt) is None
