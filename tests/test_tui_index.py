"""The dashboard's columnar index (daemon/index.py): the same answers as the whole-event readers."""

from __future__ import annotations

from pathlib import Path

import pytest
from tui_journal import T0, append_records, event_id, history, write_journal

from daemon.index import (
    STATE_CODE,
    EventTable,
    Query,
    TableFollower,
    load_event,
    preview,
    read_snapshot_table,
    select,
)
from daemon.journal import JournalFollower, list_snapshots
from daemon.model import State
from daemon.query import Filter


def _rows(table: EventTable, query: Query) -> list[str]:
    chosen = select(table, query)
    rows = range(len(table)) if chosen is None else chosen
    return sorted(table.ids[r] for r in rows)


def _expected(spool: Path, flt: Filter) -> list[str]:
    events = JournalFollower(spool / "journal").load().events
    return sorted(e.id for e in events.values() if flt.matches(e))


@pytest.mark.parametrize("snapshot_upto", [0, 20, 40])
def test_table_folds_as_the_journal_follower_does(tmp_path, snapshot_upto):
    spool = tmp_path / "spool"
    write_journal(spool, 40, snapshot_upto=snapshot_upto)
    follower = TableFollower(spool / "journal")
    follower.load()
    table = follower.table
    events = JournalFollower(spool / "journal").load().events
    assert len(table) == len(events) == 40
    for request_id, event in events.items():
        row = table.row_of[request_id]
        assert table.state_of(row) is event.state
        assert table.function(row) == event.function
        assert table.attempts[row] == event.attempts
        assert table.enqueued[row] == event.enqueued_at
        if event.duration_ms is None:
            assert table.duration[row] != table.duration[row]  # NaN
        else:
            assert table.duration[row] == pytest.approx(event.duration_ms)
        error = f"{event.error.type}: {event.error.message}" if event.error else None
        assert table.errors.get(row) == error
    assert sum(table.counts) == 40
    assert table.counts[STATE_CODE[State.FAILED]] == sum(
        e.state is State.FAILED for e in events.values()
    )
    assert sum(table.function_counts("echo")) == sum(e.function == "echo" for e in events.values())


@pytest.mark.parametrize(
    ("query", "flt"),
    [
        (Query(text="bad input 1"), Filter(text="bad input 1")),
        (Query(text="RESIZE"), Filter(text="RESIZE")),
        (
            Query(text="0190a000-0000-7000-8000-00000000001"),
            Filter(text="0190a000-0000-7000-8000-00000000001"),
        ),
        (Query(states=frozenset({State.FAILED})), Filter(states={State.FAILED})),
        (Query(function="notify"), Filter(function="notify")),
        (Query(since=T0 + 10, until=T0 + 20.5), Filter(since=T0 + 10, until=T0 + 20.5)),
        (
            Query(text="e", states=frozenset({State.SUCCEEDED, State.FAILED}), since=T0 + 5),
            Filter(text="e", states={State.SUCCEEDED, State.FAILED}, since=T0 + 5),
        ),
    ],
)
def test_select_agrees_with_the_cli_filter(tmp_path, query, flt):
    spool = tmp_path / "spool"
    write_journal(spool, 40, snapshot_upto=25)
    follower = TableFollower(spool / "journal")
    follower.load()
    expected = _expected(spool, flt)
    assert expected, "the case should select something"
    assert _rows(follower.table, query) == expected
    for row in range(len(follower.table)):
        assert query.matches(follower.table, row) == (follower.table.ids[row] in expected)


def test_time_range_without_monotone_times(tmp_path):
    spool = tmp_path / "spool"
    write_journal(spool, 10)
    follower = TableFollower(spool / "journal")
    follower.load()
    table = follower.table
    late = history(99, "echo", State.ENQUEUED, T0 - 100)  # a clock stepped back
    for seq, rec in enumerate(late, start=10_000):
        import msgspec

        table.apply(msgspec.structs.replace(rec, seq=seq))
    assert not table.monotone
    assert _rows(table, Query(until=T0 - 50)) == [event_id(99)]
    assert len(_rows(table, Query(since=T0))) == 10


def test_follower_sees_appended_records_and_preview_shows_the_newest(tmp_path):
    spool = tmp_path / "spool"
    recs = write_journal(spool, 30, snapshot_upto=20)
    follower = TableFollower(spool / "journal")
    follower.load()
    assert follower.poll() == []
    import msgspec

    extra = [
        msgspec.structs.replace(r, seq=recs[-1].seq + k + 1)
        for k, r in enumerate(history(30, "echo", State.SUCCEEDED, T0 + 30))
    ]
    append_records(spool, extra)
    new = follower.poll()
    assert [r.seq for r in new] == [r.seq for r in extra]
    row = None
    for rec in new:
        row = follower.table.apply(rec)
    assert row is not None and follower.table.state_of(row) is State.SUCCEEDED

    quick = preview(spool / "journal", tail_bytes=2000)
    assert not quick.complete
    assert 0 < len(quick) < 31
    assert quick.ids[-1] == event_id(30)  # the newest is there
    assert set(quick.ids) <= set(follower.table.ids)


def test_snapshot_damage_is_reported_and_an_older_one_stands(tmp_path):
    spool = tmp_path / "spool"
    write_journal(spool, 10, snapshot_upto=10)
    ((_seq, path),) = list_snapshots(spool / "journal")
    header, table = read_snapshot_table(path)
    assert header.count == len(table) == 10
    data = bytearray(path.read_bytes())
    data[-20] ^= 0x01
    path.write_bytes(bytes(data))
    with pytest.raises(ValueError, match="damaged snapshot"):
        read_snapshot_table(path)
    follower = TableFollower(spool / "journal")
    state = follower.load()
    assert state.damages and "checksum" in state.damages[0].reason


def test_load_event_reads_one_whole_event(tmp_path):
    spool = tmp_path / "spool"
    write_journal(spool, 30, snapshot_upto=20)
    whole = JournalFollower(spool / "journal").load().events
    for i in (3, 19, 20, 29):
        event = load_event(spool / "journal", event_id(i))
        assert event == whole[event_id(i)]
    assert load_event(spool / "journal", "no-such-id") is None


def test_requests_claim_early_answers_and_tell_a_group_once(tmp_path):
    from daemon.model import Request
    from daemon.spool import Spool
    from tui.actions import Requests

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
    from daemon.control import StopRequest, submit

    early = submit(spool.root, StopRequest(id="e9"))
    stray = Request(action="stop", id="e9", name=early, outcome="applied", message="stopped")
    assert requests.answered(stray) is None
    from tui.actions import Pending

    notice = requests._register(early, Pending(what="stop of e9", event_id="e9"))
    assert notice is not None and notice.message == "stop of e9: stopped"


def test_the_index_stays_light():
    import json
    import subprocess
    import sys

    from conftest import REPO

    code = "import sys, json, daemon.index\nprint(json.dumps(sorted(sys.modules)))"
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, check=True
    )
    loaded = set(json.loads(out.stdout))
    assert not loaded & {"textual", "uvloop", "asyncio", "daemon.service", "inotify_simple"}


def test_follower_reloads_when_compaction_outran_it(tmp_path):
    import shutil

    import msgspec

    spool = tmp_path / "spool"
    write_journal(spool, 10)
    follower = TableFollower(spool / "journal")
    follower.load()
    reloads = follower.reloads
    # meanwhile the daemon ran on, wrote a snapshot of 14 events and dropped the old segments
    later = tmp_path / "later"
    recs = write_journal(later, 14, snapshot_upto=14)
    shutil.rmtree(spool / "journal")
    shutil.copytree(later / "journal", spool / "journal")
    extra = history(14, "echo", State.ENQUEUED, T0 + 14)
    from daemon.journal import encode_record, segment_name

    first = recs[-1].seq + 1
    with open(spool / "journal" / segment_name(first), "wb") as f:
        for k, rec in enumerate(extra):
            f.write(encode_record(msgspec.structs.replace(rec, seq=first + k)))
    follower.poll()
    assert follower.reloads == reloads + 1
    assert len(follower.table) == 15 and follower.table.ids[-1] == event_id(14)
