"""The dashboard's table model over the event index (tui/listing.py, tui/overlay.py): the same
answers as the whole-event readers, whatever the window, the slice size or the index's lag."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import msgspec
import pytest
from tui_journal import T0, append_records, event_id, history, index_journal, write_journal

from daemon.eventdb import IndexDB, unended
from daemon.journal import JournalFollower, JournalTail
from daemon.model import State
from daemon.query import Filter
from tui import listing as listing_module
from tui.listing import Listing, ended_ids
from tui.overlay import Overlay

FILTERS = [
    Filter(),
    Filter(text="bad input 1"),
    Filter(text="RESIZE"),
    Filter(text="0190a000-0000-7000-8000-00000000001"),
    Filter(states={State.FAILED}),
    Filter(states={State.FAILED, State.RUNNING, State.ENQUEUED}),
    Filter(function="notify"),
    Filter(function="notify", states={State.SUCCEEDED}),
    Filter(since=T0 + 10, until=T0 + 20.5),
    Filter(text="e", states={State.SUCCEEDED, State.FAILED}, since=T0 + 5),
]


def _expected(spool: Path, flt: Filter) -> list[str]:
    """What the whole-journal reader says: the ids passing `flt`, newest first."""
    events = JournalFollower(spool / "journal").load().events.values()
    chosen = [e for e in events if flt.matches(e)]
    return [e.id for e in sorted(chosen, key=lambda e: (e.enqueued_at, e.id), reverse=True)]


class View:
    """A listing over the index and the journal after it, as the dashboard's reader keeps it."""

    def __init__(self, spool: Path) -> None:
        self.journal = spool / "journal"
        index = IndexDB.open_readonly(self.journal)
        assert index is not None
        self.index = index
        cursor = index.cursor()
        assert cursor is not None
        self.overlay = Overlay(unended(index))
        self.tail = JournalTail(self.journal, cursor, [])
        self.overlay.fold(self.tail.read())
        self.counts = {k: n for k, n in index.counts().items() if k[1].terminal}

    def listing(self, flt: Filter) -> Listing:
        return Listing(self.index, flt, self.overlay, self.counts)


def _window(listing: Listing, start: int, count: int) -> list[str]:
    """The window once read whole; what a scan shows before is the start of it."""
    partial: list[list[str]] = []
    for _ in range(10_000):
        rows = listing.window(start, count)
        if rows is not None and not listing.streaming:
            whole = [r.id for r in rows]
            assert all(whole[: len(p)] == p for p in partial), (partial, whole)
            return whole
        if rows is not None:
            partial.append([r.id for r in rows])
        listing.step()
    raise AssertionError("the window never came")


def _total(listing: Listing) -> int:
    while listing.total is None:
        listing.step()
    return listing.total


@pytest.fixture
def small_slices(monkeypatch):
    """Slices of a few rows, so sliced work crosses many slices even over 40 events."""

    def tiny(self: listing_module.Slicer) -> None:
        self.size = 3

    monkeypatch.setattr(listing_module.Slicer, "__init__", tiny)
    monkeypatch.setattr(listing_module.Slicer, "timed", lambda self, started: None)


@pytest.mark.parametrize("indexed_upto", [0, 25, 40])
@pytest.mark.parametrize("flt", FILTERS, ids=repr)
def test_windows_and_totals_agree_with_the_whole_journal(tmp_path, flt, indexed_upto, small_slices):
    spool = tmp_path / "spool"
    recs = write_journal(spool, 40, snapshot_upto=indexed_upto)
    if indexed_upto:  # the index holds the snapshot; the rest comes from the journal after it
        index_journal(spool)
    else:
        _index_then_append(spool, recs)
    expected = _expected(spool, flt)
    assert expected, "the case should select something"
    view = View(spool)
    listing = view.listing(flt)
    assert _total(listing) == len(expected)
    assert _window(listing, 0, 100) == expected
    for start, count in [(0, 7), (5, 7), (max(0, len(expected) - 3), 7), (len(expected) + 5, 3)]:
        fresh = view.listing(flt)  # a jump first (a seek), then one from a cached range
        assert _window(fresh, start, count) == expected[start : start + count]
        assert _window(listing, start, count) == expected[start : start + count]


@pytest.mark.parametrize("flt", [Filter(), Filter(text="bad input 1")], ids=repr)
def test_a_far_window_over_more_overlay_rows_than_a_jump_is_read(
    tmp_path, flt, small_slices, monkeypatch
):
    """A seek lands on the index's rows: when the overlay holds more rows than a jump (a long
    queue, a lagging indexer) the window may still be far after it, and is read down to (it was
    sought again and again: RecursionError, or a slice seek started anew each cycle)."""
    monkeypatch.setattr(listing_module, "JUMP", 4)
    spool = tmp_path / "spool"
    _index_then_append(spool, write_journal(spool, 40))  # every event in the overlay
    expected = _expected(spool, flt)
    view = View(spool)
    for start in (5, 12, max(0, len(expected) - 3)):
        assert _window(view.listing(flt), start, 9) == expected[start : start + 9]


def test_a_scan_shows_the_rows_it_has_found_before_it_ends(tmp_path, small_slices):
    spool = tmp_path / "spool"
    write_journal(spool, 40, snapshot_upto=40)
    index_journal(spool)
    flt = Filter(text="e")  # in every function's name but one: scanned, not held
    expected = _expected(spool, flt)
    listing = View(spool).listing(flt)
    assert listing.window(0, 100) is None and listing.streaming  # nothing found yet
    shown = []
    while listing.streaming:
        listing.step()
        rows = listing.window(0, 100)
        shown.append(len(rows or []))
    assert 0 < shown[0] < len(expected) and shown == sorted(shown)  # a few at a time, growing
    assert [r.id for r in listing.window(0, 100) or []] == expected


def test_the_reader_tells_how_far_a_text_scan_has_gone(tmp_path, small_slices):
    from daemon.spool import Spool
    from tui.reader import Changed, Reader, SetFilter

    spool = tmp_path / "spool"
    write_journal(spool, 40, snapshot_upto=40)
    index_journal(spool)
    posted: list[object] = []
    reader = Reader(Spool(spool), posted.append, lambda: False)
    assert reader._open()
    reader.requests.put(SetFilter(Filter(text="e"), 1))  # scanned: in functions' names
    changed: list[Changed] = []
    while not changed or changed[-1].total is None:
        reader._cycle()
        changed = [m for m in posted if isinstance(m, Changed)]
    reader._close()
    progress = [m.scanned for m in changed if m.scanned is not None]
    ended = sum(n for (_, state), n in changed[-1].counts.items() if state.terminal)
    assert progress[0] == (0, ended) and progress == sorted(progress)
    assert changed[-1].total == len(_expected(spool, Filter(text="e")))


def _index_then_append(spool: Path, recs: list) -> None:
    """An index of an empty journal, then every record after its cursor (an indexer lagging)."""
    journal = spool / "journal"
    segments = sorted(journal.glob("segment-*"))
    data = [p.read_bytes() for p in segments]
    for p in segments:
        p.write_bytes(b"")
    index_journal(spool)
    for p, content in zip(segments, data, strict=True):
        p.write_bytes(content)


def test_live_changes_move_positions_and_settle_into_the_index(tmp_path):
    spool = tmp_path / "spool"
    recs = write_journal(spool, 30, snapshot_upto=20)
    index_journal(spool)
    view = View(spool)
    listing = view.listing(Filter(states={State.SUCCEEDED}))
    first = _window(listing, 0, 100)
    cursor = listing.position((T0 + 15, event_id(15)))
    seq = recs[-1].seq
    more = [
        msgspec.structs.replace(r, seq=seq + k + 1)
        for k, r in enumerate(history(30, "echo", State.SUCCEEDED, T0 + 30))
    ]
    append_records(spool, more)
    folded = view.overlay.fold(view.tail.read())
    for change in folded.changes:
        listing.add(change.after)
    assert _window(listing, 0, 100) == [event_id(30), *first]
    assert listing.position((T0 + 15, event_id(15))) == cursor + 1  # one more above it
    assert _total(listing) == len(first) + 1
    # the index takes the new event in: it moves from the overlay into the index's part
    index_journal(spool)
    view.index.close()
    view.index = IndexDB.open_readonly(view.journal)
    listing.index = view.index
    for event in view.overlay.settle(view.index.cursor().seq):
        listing.settled(event)
    assert not view.overlay.ended
    assert _window(listing, 0, 100) == [event_id(30), *first]
    assert _total(listing) == len(first) + 1


@pytest.mark.parametrize("flt", [Filter(text="Bad Input"), Filter(id_prefix=event_id(16)[:-1])])
def test_a_rare_text_or_id_is_held_whole_without_a_scan_and_follows_live(tmp_path, flt):
    spool = tmp_path / "spool"
    recs = write_journal(spool, 30, snapshot_upto=20)
    index_journal(spool)
    view = View(spool)
    listing = view.listing(flt)
    assert listing.held and not listing.busy  # found through the indexes: nothing to step
    assert listing.total == len(_expected(spool, flt)) and _window(listing, 0, 100) == _expected(
        spool, flt
    )
    seq = recs[-1].seq
    more = [  # a failure whose id has the prefix too (16 to 31 have it)
        msgspec.structs.replace(r, seq=seq + k + 1)
        for k, r in enumerate(history(30, "echo", State.FAILED, T0 + 30))
    ]
    append_records(spool, more)
    for change in view.overlay.fold(view.tail.read()).changes:
        listing.add(change.after)
    index_journal(spool)  # the index takes it in: it stays held, not counted twice
    view.index.close()
    view.index = listing.index = IndexDB.open_readonly(view.journal)
    for event in view.overlay.settle(view.index.cursor().seq):
        listing.settled(event)
    assert listing.total == len(_expected(spool, flt)) and _window(listing, 0, 100) == _expected(
        spool, flt
    )


def test_ended_ids_are_those_the_cli_would_reinvoke(tmp_path):
    spool = tmp_path / "spool"
    write_journal(spool, 30, snapshot_upto=20)
    index_journal(spool)
    flt = Filter(function="echo")
    ended = Filter(function="echo", states={s for s in State if s.terminal})
    assert sorted(ended_ids(spool / "journal", flt, page_size=4)) == sorted(_expected(spool, ended))


def test_the_reader_cannot_write_through_its_connection(tmp_path):
    spool = tmp_path / "spool"
    write_journal(spool, 10, snapshot_upto=10)
    index_journal(spool)
    index = IndexDB.open_readonly(spool / "journal")
    assert index is not None
    with pytest.raises(sqlite3.OperationalError, match="readonly"):
        index.db.execute("DELETE FROM events")
    with pytest.raises(sqlite3.OperationalError, match="readonly"):
        index.db.execute("INSERT INTO meta VALUES ('x', 1)")
    assert len(index.db.execute("SELECT id FROM events").fetchall()) == 10


def test_requests_claim_early_answers_and_tell_a_group_once(tmp_path):
    from daemon.control import StopRequest, submit
    from daemon.model import Request
    from daemon.spool import Spool
    from tui.actions import Pending, Requests

    spool = Spool(tmp_path / "spool")
    spool.create()
    requests = Requests(spool)
    group = requests.open_group("re-invoke of 3 events", 3)
    notices = [requests.reinvoke(f"e{i}", group=group) for i in range(3)]
    assert notices == [None, None, None]
    names = sorted(p.name for p in spool.control.iterdir())
    answers = [
        Request(action="reinvoke", id="e0", name=names[0], outcome="applied"),
        Request(action="reinvoke", id="e1", name=names[1], outcome="refused", message="running"),
        Request(action="reinvoke", id="e2", name=names[2], outcome="applied"),
    ]
    told = [requests.answered(a) for a in answers]
    assert told[:2] == [None, None]
    assert told[2] is not None and told[2].error
    assert told[2].message == "re-invoke of 3 events: 2 applied, 1 refused (running (1))"
    assert not requests.pending and not requests.groups

    # an answer read before its request was registered is claimed at registration
    early = submit(spool.root, StopRequest(id="e9"))
    stray = Request(action="stop", id="e9", name=early, outcome="applied", message="stopped")
    assert requests.answered(stray) is None
    notice = requests._register(early, Pending(what="stop of e9", subject="e9"))
    assert notice is not None and notice.message == "stop of e9: stopped"


def test_the_index_readers_stay_light():
    import json
    import subprocess
    import sys

    from conftest import REPO

    code = "import sys, json, daemon.eventdb, daemon.reads\nprint(json.dumps(sorted(sys.modules)))"
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, check=True
    )
    loaded = set(json.loads(out.stdout))
    assert not loaded & {"textual", "uvloop", "asyncio", "daemon.service", "inotify_simple"}
