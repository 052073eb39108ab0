"""`events list` shows the newest events first by time, whatever their ids: ids given with an
event (idempotency keys) need not sort by time."""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import events, fnspool

from daemon import journal as journal_module
from daemon.eventdb import INDEX_NAME, IndexDB
from daemon.journal import Cursor, encode_record, segment_name
from daemon.model import Event, State, Transition, apply
from daemon.query import Filter
from daemon.reads import EventReads

IDS = ["c-first", "a-second", "b-third"]  # submitted in this order: their ids sort otherwise


def _listed(spool: Path, *args: str) -> list[str]:
    return [e["id"] for e in events(spool, *args)]


def _check_order(spool: Path) -> None:
    assert _listed(spool) == IDS[::-1]
    assert _listed(spool, "--order", "asc") == IDS
    assert _listed(spool, "--limit", "2") == ["b-third", "a-second"]


def test_events_list_is_newest_first_by_time_with_ids_given(spool: Path, daemon: object) -> None:
    d = daemon.start()  # type: ignore[attr-defined]
    for request_id in IDS:
        fnspool(spool, "invoke", "echo", "--id", request_id, "--wait")
    _check_order(spool)  # from the index and the records it has not taken in
    d.stop()
    _check_order(spool)  # from the index alone
    (spool / "journal" / INDEX_NAME).unlink()
    _check_order(spool)  # from a replay of the journal


def _append(segment: Path, *records: Transition) -> int:
    with open(segment, "ab") as out:
        out.write(b"".join(encode_record(r) for r in records))
    return segment.stat().st_size


def _move(seq: int, request_id: str, state: State, attempt: int = 0) -> Transition:
    return Transition(
        seq=seq, at=float(seq), id=request_id, function="f", state=state, attempt=attempt
    )


def test_a_kept_reader_reads_on_from_where_it_stopped(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The daemon keeps one reader for its lookups: while the indexer lags, each read takes in
    only what was appended since the last (each record decoded once), and hands out copies."""
    journal = tmp_path / "journal"
    journal.mkdir()
    segment = journal / segment_name(1)
    enqueued = _move(1, "a", State.ENQUEUED)
    indexed: dict[str, Event] = {}
    apply(indexed, enqueued)
    index = IndexDB(journal / INDEX_NAME, writable=True)
    with index.transaction():
        index.put(indexed.values())
        index.set_cursor(Cursor(seq=1, segment=1, offset=_append(segment, enqueued)))
    index.close_cleanly()  # the indexer stops here: everything after is its lag
    decoded: list[int] = []
    real_decode = journal_module.decode_record

    def counting_decode(line: bytes) -> Transition:
        rec = real_decode(line)
        decoded.append(rec.seq)
        return rec  # type: ignore[return-value]

    monkeypatch.setattr(journal_module, "decode_record", counting_decode)
    reads = EventReads(journal)
    _append(segment, _move(2, "a", State.DEQUEUED), _move(3, "b", State.ENQUEUED))
    assert reads.get("a").state is State.DEQUEUED  # type: ignore[union-attr]
    mine = reads.get("b")
    assert mine is not None and mine.state is State.ENQUEUED
    mine.state = State.FAILED  # a caller's change stays with the caller
    _append(segment, _move(4, "a", State.RUNNING, attempt=1))
    assert [(e.id, e.state) for e in reads.select(Filter(), None)] == [
        ("b", State.ENQUEUED),
        ("a", State.RUNNING),
    ]
    assert reads.get("b").state is State.ENQUEUED  # type: ignore[union-attr]
    assert reads.get("a").attempts == 1  # type: ignore[union-attr]
    assert sorted(decoded) == [2, 3, 4]
