"""Forgetting ended events, on the journal directly: the store lets them go at once, compaction
drops them from their archives, the index drops their rows (even when it marks their archive
late), readers stop showing them before the index has caught up, a restart and a rebuilt index
keep them forgotten, and an id forgotten may be used again."""

from __future__ import annotations

from pathlib import Path

import pytest

from daemon.eventdb import IndexDB
from daemon.indexer import Indexer
from daemon.journal import JournalFollower, archive_ids, list_archives, list_segments
from daemon.journal_writer import JournalWriter, recover
from daemon.model import Event, Forgotten, State, raw_json
from daemon.query import Filter
from daemon.reads import EventReads
from daemon.refusals import forget_refusal
from daemon.store import Store


async def _store(directory: Path) -> Store:
    state = recover(directory)
    return Store(JournalWriter(directory, state.last_seq + 1), state, directory / "logs")


def _ended(store: Store, request_id: str, state: State = State.STOPPED) -> Event:
    event = store.enqueue("f", raw_json(request_id), request_id=request_id)
    assert event is not None
    path = [state] if state is State.STOPPED else [State.DEQUEUED, State.RUNNING, state]
    for step in path:
        event = store.transition(event, step)
    return event


def _archived_ids(directory: Path) -> set[str]:
    return {i for _seq, path in list_archives(directory) for i, _f in archive_ids(path)}


def _index(directory: Path) -> Indexer:
    indexer = Indexer(directory)
    while indexer.step():
        pass
    return indexer


def _rows(indexer: Indexer) -> dict[str, str]:
    return dict(indexer.db.db.execute("SELECT id, state FROM events"))


def _counts_match_rows(db: IndexDB) -> bool:
    rows = db.db.execute("SELECT function, state, count(*) FROM events GROUP BY 1, 2")
    return {(f, s): n for f, s, n in rows} == {(f, s.value): n for (f, s), n in db.counts().items()}


def test_only_an_ended_event_with_its_record_delivered_may_be_forgotten():
    assert forget_refusal("a", None) == "no event with id 'a'"
    assert forget_refusal("a", State.RUNNING) == "event a has not ended: Running"
    assert "not delivered yet" in str(forget_refusal("a", State.FAILED, owes_record=True))
    assert forget_refusal("a", State.SUCCEEDED) is None


def test_a_group_member_forgets_only_what_they_submitted_the_administrator_anything():
    ended = State.SUCCEEDED
    assert forget_refusal("a", ended, asker=1001, submitter=1001, administrator=999) is None
    theirs = forget_refusal("a", ended, asker=1001, submitter=1002, administrator=999)
    assert theirs == (
        "event a was submitted by uid 1002: only its submitter or the administrator may forget it"
    )
    daemons = forget_refusal("a", ended, asker=1001, submitter=None, administrator=999)
    assert daemons is not None and "submitted by the daemon" in daemons
    for admin in (999, 0):
        assert forget_refusal("a", ended, asker=admin, submitter=1002, administrator=999) is None


async def test_a_forgotten_event_is_gone_at_once_and_compaction_drops_it_from_its_archive(
    tmp_path,
):
    store = await _store(tmp_path)
    _ended(store, "archived")
    kept = _ended(store, "kept")
    await store.compact()  # both go to an archive
    fresh = _ended(store, "fresh", State.SUCCEEDED)  # ended since: in memory
    assert _archived_ids(tmp_path) == {"archived", "kept"}
    store.forget([store.get("archived"), fresh])  # type: ignore[list-item]
    await store.sync()
    assert store.get("archived") is None and store.get("fresh") is None
    assert not store.known("fresh") and store.taken(["archived", "fresh", "kept"]) == {"kept"}
    assert store.retained_counts() == {State.STOPPED: 1}
    await store.compact()
    assert _archived_ids(tmp_path) == {"kept"}  # the archive written again without it
    assert store.retained_counts() == {State.STOPPED: 1}
    await store.writer.close()
    assert JournalFollower(tmp_path).load().events.keys() == {kept.id}
    assert recover(tmp_path).archived == {"Stopped": 1}


async def test_a_restart_before_compaction_keeps_them_forgotten_and_drops_them_then(tmp_path):
    store = await _store(tmp_path)
    _ended(store, "old")
    await store.compact()
    store.forget([store.get("old")])  # type: ignore[list-item]
    await store.writer.close()
    state = recover(tmp_path)
    assert [type(r) for r in state.forgotten] == [Forgotten]
    assert JournalFollower(tmp_path).load().events == {}
    again = await _store(tmp_path)
    assert again.get("old") is None and again.retained_counts() == {}
    await again.compact()
    assert _archived_ids(tmp_path) == set()
    await again.writer.close()


async def test_the_log_goes_once_the_record_is_on_disk(tmp_path):
    store = await _store(tmp_path)
    event = _ended(store, "logged")
    log = tmp_path / "logs" / "f" / "logged.log"
    log.parent.mkdir(parents=True)
    log.write_text("what the handler printed\n")
    store.forget([event])
    await store.compact()  # waits for the removal to be handed over; the next sync does it
    await store.sync()
    _ended(store, "later")
    await store.sync()
    assert not log.exists()
    await store.writer.close()


async def test_the_index_drops_the_rows_and_never_takes_them_back_from_a_late_archive(tmp_path):
    indexer = _index(tmp_path)  # it starts before the archive exists
    store = await _store(tmp_path)
    _ended(store, "a")
    _ended(store, "b")
    await store.compact()
    store.forget([store.get("a")])  # type: ignore[list-item]
    await store.sync()
    while indexer.step():  # reads the archive's events and the forget in one go, marks it after
        pass
    assert _rows(indexer) == {"b": "Stopped"}
    assert _counts_match_rows(indexer.db)
    indexer.db.close_cleanly()
    (tmp_path / "index.sqlite").unlink()  # rebuilt from the archive, still holding it, and on
    rebuilt = _index(tmp_path)
    assert _rows(rebuilt) == {"b": "Stopped"} and _counts_match_rows(rebuilt.db)
    rebuilt.db.close_cleanly()
    await store.writer.close()


async def test_readers_hide_them_before_the_index_has_caught_up(tmp_path):
    store = await _store(tmp_path)
    for name in ("x1", "x2", "y"):
        _ended(store, name)
    await store.sync()
    _index(tmp_path).db.close_cleanly()  # the index holds all three
    store.forget([store.get("x1"), store.get("y")])  # type: ignore[list-item]
    await store.sync()
    reads = EventReads(tmp_path)
    assert reads.get("x1") is None and reads.get("x2") is not None
    assert [e.id for e in reads.select(Filter(), None)] == ["x2"]
    assert reads.ids_with_prefix("x", 5) == ["x2"]
    assert reads.get_many(["x1", "x2"]).keys() == {"x2"}
    reads.close()
    await store.writer.close()


async def test_a_forgotten_id_may_be_used_again(tmp_path):
    store = await _store(tmp_path)
    _ended(store, "key")
    await store.compact()
    _index(tmp_path).db.close_cleanly()
    store.forget([store.get("key")])  # type: ignore[list-item]
    assert store.taken(["key"]) == set()
    again = store.enqueue("f", raw_json("second"), request_id="key")
    assert again is not None and store.get("key") is again
    await store.sync()
    reads = EventReads(tmp_path)  # the index still has the first one's row
    found = reads.get("key")
    assert found is not None and found.state is State.ENQUEUED
    assert bytes(found.payload) == b'"second"'
    reads.close()
    store.transition(again, State.STOPPED)
    await store.compact()
    await store.writer.close()
    state = JournalFollower(tmp_path).load()
    assert bytes(state.events["key"].payload) == b'"second"'
    rebuilt = _index(tmp_path)
    assert _rows(rebuilt) == {"key": "Stopped"} and _counts_match_rows(rebuilt.db)
    rebuilt.db.close_cleanly()


@pytest.mark.parametrize("reused", [False, True])
async def test_compaction_lets_go_of_the_segments_that_held_them(tmp_path, reused):
    store = await _store(tmp_path)
    _ended(store, "gone")
    await store.compact()
    store.forget([store.get("gone")])  # type: ignore[list-item]
    if reused:
        _ended(store, "gone")
    for _ in range(3):  # each compaction deletes what the one before and the index cover
        _ended(store, f"filler-{_}")
        await store.sync()
        _index(tmp_path).db.close_cleanly()
        await store.compact()
    journal = [p.read_bytes() for p in tmp_path.glob("*.jsonl")]
    mentions = sum(b'"gone"' in data for data in journal)
    assert mentions == (1 if reused else 0)  # the new one's archive, or nothing
    assert len(list_segments(tmp_path)) >= 1
    await store.writer.close()
