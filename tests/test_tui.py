"""The dashboard driven by a pilot over a real spool: a running daemon or a hand-written journal."""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any

import msgspec
import pytest
from conftest import PATIENCE, drop, events, fnspool, fnspool_json, wait_for, wait_for_async
from ray_cluster import placement_table
from textual.widgets import DataTable
from tui_journal import T0, append_records, event_id, history, index_journal, write_journal

from daemon.control import DECODER, ReinvokeRequest, StopRequest
from daemon.journal import list_archives, list_segments
from daemon.model import State, Transition
from daemon.query import Filter
from daemon.reads import EventReads
from daemon.spool import Spool
from tui.app import FnspoolApp
from tui.detail import DetailScreen, LogScreen
from tui.event_list import EventList, duration_shown
from tui.events import FilterInput
from tui.functions import FunctionsScreen
from tui.listing import Slicer
from tui.modals import ConfirmStop

SIZE = (160, 40)


async def until(
    pilot: Any, predicate: Callable[[], Any], what: str, timeout: float = PATIENCE
) -> Any:
    """`wait_for_async` with the app under the pilot running between polls."""
    return await wait_for_async(predicate, timeout, what, every=0.05, pause=pilot.pause)


def shown(app: FnspoolApp) -> list[tuple[str, str, str]]:
    """(id, function, state) of every row the list holds, top first (all of a small list)."""
    events = app.screen.query_one(EventList)
    rows = [events.row_at(i) for i in range(events.start, events.start + len(events.rows))]
    return [(r.id, r.function, r.state.value) for r in rows if r is not None]


def loaded(app: FnspoolApp, count: int | None = None) -> bool:
    """Whether the list shows the events (all `count` of them)."""
    events = app.screen.query_one(EventList)
    if not events.loaded:
        return False
    return count is None or (events.total == count and len(shown(app)) == count)


def notices(app: FnspoolApp) -> list[str]:
    return [f"{n.title}: {n.message}" for n in app._notifications]


def control_requests(spool: Path) -> list[Any]:
    return [DECODER.decode(p.read_bytes()) for p in sorted((spool / "control").glob("*.json"))]


# -- over a journal written by hand (no daemon) ---------------------------------------------


async def test_list_follows_live_and_keeps_the_selection(tmp_path):
    spool = tmp_path / "spool"
    recs = write_journal(spool, 30, snapshot_upto=20)
    app = FnspoolApp(Spool(spool))
    async with app.run_test(size=SIZE) as pilot:
        await until(pilot, lambda: loaded(app, 30), "the events")
        assert shown(app)[0] == (event_id(29), "notify", "Running")  # newest first
        assert "daemon down" in app.status_markup and "read-only" in app.status_markup
        assert "Succeeded" in app.counts_markup and "Failed" in app.counts_markup

        more = history(30, "resize", State.ENQUEUED, T0 + 30)
        seq = recs[-1].seq
        append_records(spool, [msgspec.structs.replace(r, seq=seq + 1) for r in more])
        await until(pilot, lambda: shown(app)[0][0] == event_id(30), "a new event, live")
        events = app.screen.query_one(EventList)
        assert events.follow and events.selected_id == event_id(30)

        await pilot.press("j", "j")
        assert not events.follow and events.selected_id == event_id(28)
        more = history(31, "echo", State.ENQUEUED, T0 + 31)
        append_records(spool, [msgspec.structs.replace(r, seq=seq + 2) for r in more])
        await until(pilot, lambda: events.total == 32 and events.cursor == 3, "one more above")
        assert events.selected_id == event_id(28)  # the selection stays on its event
        await pilot.press("f")
        assert events.follow and events.selected_id == event_id(31)


async def test_filters_text_states_function_and_clear(tmp_path, monkeypatch):
    # slices of 3 rows: a text filter is counted over many slices, after its first rows show
    monkeypatch.setattr(Slicer, "__init__", lambda self: setattr(self, "size", 3))
    monkeypatch.setattr(Slicer, "timed", lambda self, started: None)
    spool = tmp_path / "spool"
    write_journal(spool, 30, snapshot_upto=10)
    app = FnspoolApp(Spool(spool))
    async with app.run_test(size=SIZE) as pilot:
        await until(pilot, lambda: loaded(app, 30), "the events")
        await pilot.press("slash", *"bad input 1", "enter")
        counted = "the text filter counted, on the list and the filter line"
        events = app.screen.query_one(EventList)
        await until(
            pilot, lambda: events.total == 2 and "[b]2[/] of 30" in app.filter_markup, counted
        )
        assert [r[0] for r in shown(app)] == [event_id(18), event_id(13)]
        assert "bad input 1" in app.filter_markup
        await pilot.press("escape")  # on the list: clears every filter
        assert len(shown(app)) == 30

        await pilot.press("s")
        await pilot.pause()
        for _ in range(6):  # Failed is the seventh state
            await pilot.press("down")
        await pilot.press("space", "enter")
        assert {r[2] for r in shown(app)} == {"Failed"} and len(shown(app)) == 5

        await pilot.press("F")
        await pilot.pause()
        await pilot.press("down", "down", "enter")  # all, echo, notify
        assert {(r[1], r[2]) for r in shown(app)} == {("notify", "Failed")}

        await pilot.press("escape")
        await pilot.press("slash", *"xyz", "escape")  # esc in the input clears the text
        assert len(shown(app)) == 30 and not app.filtered


async def test_a_graceful_stop_in_progress_is_forced_from_the_stop_dialog(tmp_path):
    spool = tmp_path / "spool"
    records = write_journal(spool, 10)  # the newest, 9, is Running
    graceful = Transition(
        id=event_id(9), function="echo", state=State.STOPPING, at=T0 + 20, reason="graceful"
    )
    append_records(spool, [msgspec.structs.replace(graceful, seq=records[-1].seq + 1)])
    app = FnspoolApp(Spool(spool))
    async with app.run_test(size=SIZE) as pilot:
        await until(pilot, lambda: loaded(app, 10), "the events")
        await until(pilot, lambda: shown(app)[0][2] == "Stopping", "event 9 Stopping")
        await pilot.press("x")
        assert isinstance(app.screen, ConfirmStop) and app.screen.escalate
        await pilot.press("g", "enter")  # g cannot make it graceful: one runs already
        assert control_requests(spool) == [StopRequest(id=event_id(9), graceful=False)]
        assert any("forced stop of" in n for n in notices(app))


async def test_actions_while_the_daemon_is_down_queue_requests(tmp_path):
    spool = tmp_path / "spool"
    write_journal(spool, 10)
    app = FnspoolApp(Spool(spool))
    async with app.run_test(size=SIZE) as pilot:
        await until(pilot, lambda: loaded(app, 10), "the events")
        await pilot.press("x")  # the newest is Running
        assert isinstance(app.screen, ConfirmStop)
        await pilot.press("g", "enter")
        assert control_requests(spool) == [StopRequest(id=event_id(9), graceful=True)]
        assert any("daemon down: request queued" in n for n in notices(app))

        await pilot.press("r")  # still running: refused in words, nothing written
        await pilot.pause()
        assert any("has not ended: Running" in n for n in notices(app))
        assert len(control_requests(spool)) == 1

        await pilot.press("j", "j", "x")  # event 7 ended: nothing to stop
        await pilot.pause()
        assert any("has already ended: Succeeded" in n for n in notices(app))
        await pilot.press("r", "escape")  # the modal cancelled: nothing written
        assert len(control_requests(spool)) == 1
        await pilot.press("r", "enter")
        (_stop, reinvoke) = control_requests(spool)
        assert isinstance(reinvoke, ReinvokeRequest) and reinvoke.id == event_id(7)

        await pilot.press("c")
        await until(pilot, lambda: app.clipboard, "the payload in the clipboard")
        assert json.loads(app.clipboard) == {"n": 7}

        await pilot.press("slash", *"echo", "enter")  # events 0, 3, 6 and 9 (running)
        await pilot.press("R", "enter")  # every ended event the filter shows
        await until(pilot, lambda: len(control_requests(spool)) == 5, "three more requests")
        again = {r.id for r in control_requests(spool)[2:]}
        assert again == {event_id(0), event_id(3), event_id(6)}


async def test_detail_shows_timeline_payload_result_and_goes_back(tmp_path):
    spool = tmp_path / "spool"
    write_journal(spool, 10, snapshot_upto=5)
    log = spool / "logs" / "echo" / f"{event_id(9)}.log"
    log.parent.mkdir(parents=True)
    log.write_text("first line\n")
    app = FnspoolApp(Spool(spool))
    async with app.run_test(size=SIZE) as pilot:
        await until(pilot, lambda: loaded(app, 10), "the events")
        await pilot.press("enter")
        screen = app.screen
        assert isinstance(screen, DetailScreen)
        await until(pilot, lambda: screen.event is not None, "the event read")
        log_view = screen.query_one("#detail-log")
        await until(pilot, lambda: "first line" in "\n".join(log_view.lines), "the log")
        with log.open("a") as f:
            f.write("second line\n")  # followed while it runs
        await until(pilot, lambda: "second line" in "\n".join(log_view.lines), "the log, live")
        timeline = _text(screen.query_one("#detail-timeline"))
        assert "Enqueued" in timeline and "Running" in timeline
        assert '"n": 9' in _text(screen.query_one("#detail-payload"))

        done = history(9, "echo", State.SUCCEEDED, T0 + 9)[-1]
        append_records(spool, [msgspec.structs.replace(done, seq=10_000)])
        await until(pilot, lambda: screen.event.state is State.SUCCEEDED, "the end, live")
        assert '"ok": 9' in _text(screen.query_one("#detail-result"))
        await pilot.press("c")
        assert json.loads(app.clipboard) == {"n": 9}
        await pilot.press("o")
        assert isinstance(app.screen, LogScreen)
        full = app.screen.query_one("#full-log")
        await until(pilot, lambda: "second line" in "\n".join(full.lines), "the whole log")
        await pilot.press("escape", "escape")
        assert not isinstance(app.screen, DetailScreen | LogScreen)


async def test_a_silent_running_events_log_shows_its_start_then_its_end(tmp_path):
    spool = tmp_path / "spool"
    write_journal(spool, 10, snapshot_upto=5)  # event 9 is running and has no log file
    rid = event_id(9)
    app = FnspoolApp(Spool(spool))
    async with app.run_test(size=SIZE) as pilot:
        await until(pilot, lambda: loaded(app, 10), "the events")
        await pilot.press("enter")
        screen = app.screen
        assert isinstance(screen, DetailScreen) and screen.event_id == rid
        log_view = screen.query_one("#detail-log")
        start = f"[PLATFORM] FC Invoke Start RequestId: {rid}"
        await until(pilot, lambda: start in "\n".join(log_view.lines), "the Start line")
        done = history(9, "echo", State.SUCCEEDED, T0 + 9)[-1]
        append_records(spool, [msgspec.structs.replace(done, seq=10_000)])
        end = f"[PLATFORM] FC Invoke End RequestId: {rid}"
        await until(pilot, lambda: end in "\n".join(log_view.lines), "the End line, live")
        assert [line.split(" ", 1)[1] for line in log_view.lines if line] == [start, end]
    assert not (spool / "logs" / "echo").exists()


def _text(widget: Any) -> str:
    """What a Static shows: its markup, or the code of its highlighted JSON."""
    content = widget.content
    return getattr(content, "code", str(content))


async def test_without_an_index_the_journal_is_read_whole_until_one_stands(tmp_path):
    spool = tmp_path / "spool"
    recs = write_journal(spool, 12, snapshot_upto=6)
    app = FnspoolApp(Spool(spool))
    async with app.run_test(size=SIZE) as pilot:
        await until(pilot, lambda: loaded(app, 12), "the events, from the journal")
        assert app.source == "replay" and "no index yet" in app.filter_markup
        index_journal(spool)  # the daemon's indexer built it meanwhile
        await until(pilot, lambda: app.source == "index", "the index taken up")
        assert [r[0] for r in shown(app)] == [event_id(i) for i in reversed(range(12))]
        assert "no index yet" not in app.filter_markup
        # a damaged line in the journal after the index's cursor is told, and skipped
        append_records(spool, [])
        _first, segment = list_segments(spool / "journal")[-1]
        with open(segment, "ab") as f:
            f.write(b"0badf00d {not a record}\n")
        more = history(12, "echo", State.ENQUEUED, T0 + 12)
        append_records(spool, [msgspec.structs.replace(r, seq=recs[-1].seq + 2) for r in more])
        await until(pilot, lambda: loaded(app, 13), "the event after the damage")
        assert any("journal damage" in n and "checksum" in n for n in notices(app))


# -- with a running daemon ------------------------------------------------------------------


async def test_events_appear_live_from_a_running_daemon_and_functions_show_instances(spool, daemon):
    daemon.start()
    app = FnspoolApp(Spool(spool))
    async with app.run_test(size=SIZE) as pilot:
        await until(pilot, lambda: loaded(app), "the journal read")
        await until(pilot, lambda: "daemon running" in app.status_markup, "the heartbeat")
        drop(spool, "echo", "a.json", {"hello": 1})
        drop(spool, "fail", "b.json", {"x": 1})
        await until(
            pilot,
            lambda: (
                {(f, s) for _, f, s in shown(app)} == {("echo", "Succeeded"), ("fail", "Failed")}
            ),
            "both events ended, shown live",
        )
        await pilot.press("2")
        assert isinstance(app.screen, FunctionsScreen)
        instances = app.screen.query_one("#instances", DataTable)
        await until(pilot, lambda: instances.row_count >= 1, "the instances")
        functions = app.screen.query_one("#functions", DataTable)
        names = [str(functions.get_row_at(i)[0]) for i in range(functions.row_count)]
        assert {"echo", "fail", "hello"} <= set(names)
        functions.focus()
        functions.move_cursor(row=names.index("fail"))
        await pilot.press("enter")  # a function's events
        assert app.screen.query_one(EventList) and app.flt.function == "fail"
        assert [f for _, f, _ in shown(app)] == ["fail"]


async def test_the_functions_view_shows_the_node_of_each_instance(spool, daemon, ray_cluster):
    pinned = 'code = "lifecycle"\nhandler = "index.handler"\nmin_instances = 1\n'
    (spool / "functions" / "pinned.toml").write_text(pinned + placement_table("node_b"))
    daemon.start("--ray-address", ray_cluster.address)  # "warm" is local, min_instances 1
    app = FnspoolApp(Spool(spool))
    async with app.run_test(size=SIZE) as pilot:
        await pilot.press("2")
        assert isinstance(app.screen, FunctionsScreen)
        instances = app.screen.query_one("#instances", DataTable)
        titles = [str(c.label) for c in instances.columns.values()]
        assert titles[:4] == ["FUNCTION", "INSTANCE", "NODE", "PID"]

        def nodes() -> dict[str, str]:
            rows = [instances.get_row_at(i) for i in range(instances.row_count)]
            return {str(row[0]): str(row[2]) for row in rows}

        wanted = {"pinned": ray_cluster.b[:8], "warm": "local"}
        await until(pilot, lambda: nodes() == wanted, "each instance's node", timeout=120)


async def test_an_instance_on_ray_is_shown_on_ray_until_a_node_takes_it(tmp_path):
    from tui.tail import DaemonStatus, FunctionInfo

    node = "5c8d2e1a" + "0" * 48  # a Ray node id is 56 hexadecimal digits
    instances = {
        "far": [{"id": "ray-far-1", "node": node}, {"id": "ray-far-2", "node": None}],
        "near": [{"id": "python-near-1", "node": None}],
    }
    functions = [FunctionInfo(name="far", engine="ray"), FunctionInfo(name="near")]
    app = FnspoolApp(Spool(tmp_path / "spool"))
    async with app.run_test(size=SIZE) as pilot:
        await pilot.press("2")
        assert isinstance(app.screen, FunctionsScreen)
        app.status = DaemonStatus(pid=4242, ready=True, instances=instances, functions=functions)
        app.screen.refresh_tables()
        grid = app.screen.query_one("#instances", DataTable)
        rows = [grid.get_row_at(i) for i in range(grid.row_count)]
        assert [(str(r[1]), str(r[2])) for r in rows] == [
            ("ray-far-1", "5c8d2e1a"),
            ("ray-far-2", "ray"),  # placed, no node has taken it yet
            ("python-near-1", "local"),
        ]


async def test_pictures_read_after_their_screen_is_taken_down_are_dropped(tmp_path):
    """The pictures are read in a thread: one that ends while the functions view is being taken
    down (the dashboard quitting) is dropped, not an error that ends the dashboard."""
    from tui.pictures import FunctionPictures

    app = FnspoolApp(Spool(tmp_path / "spool"))
    async with app.run_test(size=SIZE) as pilot:
        await pilot.press("2")
        screen = app.screen
        assert isinstance(screen, FunctionsScreen)
        await screen.query_one(FunctionPictures).remove()
        screen.pictured = "far"
        screen._show_pictures("far", "no index yet", 0.0)


async def test_stop_and_reinvoke_through_the_modals_with_a_running_daemon(spool, daemon):
    daemon.start()
    app = FnspoolApp(Spool(spool))
    async with app.run_test(size=SIZE) as pilot:
        await until(pilot, lambda: loaded(app), "the journal read")
        drop(spool, "slow", "s.json", {"sleep": 60})
        await until(pilot, lambda: shown(app) and shown(app)[0][2] == "Running", "running")
        await pilot.press("x", "enter")
        await until(pilot, lambda: shown(app)[0][2] == "Stopped", "the stop applied", 30)
        answered = "the daemon's answer told"
        stop_told = lambda: any(n.startswith("done: stop of") for n in notices(app))  # noqa: E731
        await until(pilot, stop_told, answered)
        stopped = shown(app)[0][0]
        await pilot.press("r", "enter")
        await until(pilot, lambda: len(shown(app)) == 2, "the re-invoked event", 30)
        await until(pilot, lambda: any("re-invoked as" in n for n in notices(app)), answered)
        assert shown(app)[0][0] != stopped and shown(app)[0][1] == "slow"

        for i in range(3):
            drop(spool, "echo", f"e{i}.json", {"i": i})
        await pilot.press("slash", *"echo", "enter")
        await until(pilot, lambda: [s for _, _, s in shown(app)] == ["Succeeded"] * 3, "3 echo")
        await pilot.press("R", "enter")  # all three again, one notification for the lot
        await until(pilot, lambda: len(shown(app)) == 6, "three re-invoked events", 30)
        told = "re-invoke of 3 events: 3 applied"
        await until(pilot, lambda: any(told in n for n in notices(app)), "the bulk answer")


async def test_a_burst_keeps_the_filtered_list_and_counts_exact(spool, daemon):
    daemon.start()
    app = FnspoolApp(Spool(spool))
    async with app.run_test(size=SIZE) as pilot:
        await until(pilot, lambda: loaded(app), "the journal read")
        await pilot.press("s", *["down"] * 5, "space", "enter")  # Succeeded only
        assert app.flt.states == {State.SUCCEEDED}
        for i in range(150):
            drop(spool, "echo" if i % 3 else "fail", f"e{i}.json", {"i": i})
        done = ("echo", State.SUCCEEDED), ("fail", State.FAILED)
        await until(
            pilot, lambda: sum(app.counts.get(k, 0) for k in done) == 150, "the burst ended", 60
        )
        await until(pilot, lambda: loaded(app, 100), "the 100 succeeded events listed")
        expected = EventReads(spool / "journal").select(Filter(states={State.SUCCEEDED}), None)
        assert {r[0] for r in shown(app)} == {e.id for e in expected}
        times = [(e.enqueued_at, e.id) for e in expected]
        by_id = dict(zip((e.id for e in expected), times, strict=True))
        assert [by_id[r[0]] for r in shown(app)] == sorted(times, reverse=True)
        assert {s for _, _, s in shown(app)} == {"Succeeded"}


async def test_archived_events_and_live_ones_from_the_index_and_nothing_written(spool, daemon):
    d = daemon.start("--snapshot-every", "40")  # compactions archive ended events often
    for i in range(60):
        drop(spool, "echo", f"{i:03d}.json", {"i": i})
    wait_for(lambda: len(events(spool, "--status", "Succeeded")) == 60, 60, "the events ended")
    wait_for(lambda: list_archives(spool / "journal"), 30, "an archive")
    archived = {e.id for _, path in list_archives(spool / "journal") for e in _archive(path)}
    journal_files = {p.name: p.stat().st_mtime_ns for p in (spool / "journal").iterdir()}
    app = FnspoolApp(Spool(spool))
    async with app.run_test(size=SIZE) as pilot:
        await until(pilot, lambda: loaded(app, 60), "every event, archived ones too")
        assert app.source == "index" and archived <= {r[0] for r in shown(app)}
        assert len(app.reader.overlay) < 60  # the archived events are read, never held
        with pytest.raises(sqlite3.OperationalError, match="readonly"):
            app.reader.index.db.execute("DELETE FROM events")  # the reader's connection
        drop(spool, "echo", "live.json", {"live": True})
        await until(pilot, lambda: loaded(app, 61) and shown(app)[0][2] == "Succeeded", "live")
        assert app.counts[("echo", State.SUCCEEDED)] == 61
        await pilot.press("G")  # the oldest: an archived event
        events_list = app.screen.query_one(EventList)
        await until(pilot, lambda: events_list.cursor == 60, "the oldest")
        assert events_list.selected_id in archived
    assert d.stop() == 0
    after = {p.name: p.stat().st_mtime_ns for p in (spool / "journal").iterdir()}
    assert {n for n in journal_files if n in after and after[n] != journal_files[n]} <= {
        n for n in journal_files if n.startswith(("segment-", "index.sqlite"))
    }  # the dashboard wrote nothing: only the daemon's own files moved


def _archive(path: Path) -> list[Any]:
    from daemon.journal import read_archive

    return list(read_archive(path)[1].values())


async def test_retention_under_an_open_dashboard_leaves_no_ghosts(spool, daemon):
    d = daemon.start("--snapshot-every", "20", "--retention", "3s")
    for i in range(20):
        drop(spool, "echo", f"old{i}.json", {"i": i})
    wait_for(lambda: len(events(spool, "--status", "Succeeded")) == 20, 60, "the old events")
    wait_for(lambda: list_archives(spool / "journal"), 30, "an archive of them")
    old = {e["id"] for e in events(spool)}
    ended_by = time.time()
    app = FnspoolApp(Spool(spool))
    async with app.run_test(size=SIZE) as pilot:
        await until(pilot, lambda: loaded(app, 20), "the old events listed")
        await pilot.press("down", "down", "enter")  # an old event's detail, follow off
        assert isinstance(app.screen, DetailScreen) and app.screen.event_id in old
        await until(pilot, lambda: time.time() > ended_by + 3.5, "the old events to expire")
        for i in range(20):
            drop(spool, "echo", f"new{i}.json", {"i": i})  # a compaction: retention runs
        await until(
            pilot, lambda: not old & {e["id"] for e in events(spool)}, "the old events gone"
        )
        await pilot.press("escape")  # back to the list, whose rows were dropped meanwhile
        new = {e["id"] for e in events(spool)}
        await until(
            pilot,
            lambda: loaded(app, len(new)) and {r[0] for r in shown(app)} == new,
            "the list without the dropped events",
        )
        assert sum(app.counts.values()) == len(new) == 20  # no ghost counted either
        await pilot.press("G", "g", "down")  # move over the list: every row is a real one
        events_list = app.screen.query_one(EventList)
        await until(pilot, lambda: events_list.selected_id in new, "a retained event selected")
        assert not [n for n in notices(app) if "error" in n.lower()]
    assert d.stop() == 0


async def test_forgotten_events_leave_an_open_dashboard(spool, daemon):
    d = daemon.start()
    for i in range(10):
        drop(spool, "echo", f"ok{i}.json", {"i": i})
    for i in range(5):
        drop(spool, "fail", f"bad{i}.json", {"i": i})
    wait_for(lambda: len(events(spool, "--status", "Succeeded,Failed")) == 15, 60, "the events")
    app = FnspoolApp(Spool(spool))
    async with app.run_test(size=SIZE) as pilot:
        await until(pilot, lambda: loaded(app, 15), "every event listed")
        fnspool(spool, "events", "forget", "--function", "fail", "--yes")
        kept = {e["id"] for e in events(spool)}
        await until(
            pilot,
            lambda: loaded(app, 10) and {r[0] for r in shown(app)} == kept,
            "the list without the forgotten events",
        )
        assert sum(app.counts.values()) == 10 and ("fail", State.FAILED) not in app.counts
    assert d.stop() == 0


async def test_the_header_says_draining_and_the_time_zone(tmp_path, monkeypatch):
    from tui.tail import DaemonStatus

    monkeypatch.setenv("TZ", "XYZ-1")  # POSIX: one hour east of UTC
    time.tzset()
    try:
        spool = tmp_path / "spool"
        write_journal(spool, 3)
        app = FnspoolApp(Spool(spool))
        async with app.run_test(size=SIZE) as pilot:
            await until(pilot, lambda: loaded(app, 3), "the events")
            app.status = DaemonStatus(pid=4242, ready=False, stopping=True)
            app._show_status()
            assert (
                "daemon stopping" in app.status_markup
                and "(pid 4242): draining" in app.status_markup
            )
            assert "times UTC+01:00" in app.status_markup
    finally:
        monkeypatch.delenv("TZ")
        time.tzset()


async def test_the_headers_running_and_queued_are_the_counts_lines(tmp_path):
    """The status line's figures come from the journal's counts, as the counts line's do, not
    from the heartbeat (a beat behind, and counting the daemon's tasks rather than events)."""
    from tui.tail import DaemonStatus

    spool = tmp_path / "spool"
    write_journal(spool, 10)  # the newest Running, the one before it Enqueued
    app = FnspoolApp(Spool(spool))
    async with app.run_test(size=SIZE) as pilot:
        await until(pilot, lambda: loaded(app, 10), "the events")
        app.status = DaemonStatus(pid=4242, ready=True)  # a heartbeat saying nothing runs
        app._show_status()
        assert "Running[/] 1" in app.counts_markup and "Enqueued[/] 1" in app.counts_markup
        assert "queued 1  running 1" in app.status_markup
        records = history(9, "notify", State.SUCCEEDED, T0 + 9)[-1:]
        append_records(spool, [msgspec.structs.replace(records[0], seq=100)])
        await until(pilot, lambda: "running 0" in app.status_markup, "the end, in the header")
        assert "Running" not in app.counts_markup


async def test_the_header_and_the_functions_view_say_what_is_paused(tmp_path):
    from tui.tail import DaemonStatus

    spool = tmp_path / "spool"
    write_journal(spool, 3)
    app = FnspoolApp(Spool(spool))
    async with app.run_test(size=SIZE) as pilot:
        await until(pilot, lambda: loaded(app, 3), "the events")
        name = next(f for f, _state in app.counts)
        app.status = DaemonStatus(pid=4242, ready=True, paused=[name])
        app._show_status()
        assert f"paused: {name}" in app.status_markup
        await pilot.press("2")
        assert isinstance(app.screen, FunctionsScreen)
        app.screen.refresh_tables()
        functions = app.screen.query_one("#functions", DataTable)
        marks = {
            str(functions.get_row_at(i)[0]): str(functions.get_row_at(i)[-1])
            for i in range(functions.row_count)
        }
        assert "paused" in marks[name]
        assert not any("paused" in m for n, m in marks.items() if n != name)
        app.status = DaemonStatus(pid=4242, ready=True, paused_all=True)
        app._show_status()
        assert "paused" in app.status_markup


async def test_the_functions_view_says_which_functions_are_held_and_why(tmp_path):
    from textual.widgets import Static

    from tui.tail import DaemonStatus

    spool = tmp_path / "spool"
    write_journal(spool, 3)
    app = FnspoolApp(Spool(spool))
    async with app.run_test(size=SIZE) as pilot:
        await until(pilot, lambda: loaded(app, 3), "the events")
        name = next(f for f, _state in app.counts)
        why = "cannot reach the Ray cluster at 10.0.0.9:6379"
        app.status = DaemonStatus(pid=4242, ready=True, held={name: why})
        await pilot.press("2")
        assert isinstance(app.screen, FunctionsScreen)
        app.screen.refresh_tables()
        functions = app.screen.query_one("#functions", DataTable)
        marks = {
            str(functions.get_row_at(i)[0]): str(functions.get_row_at(i)[-1])
            for i in range(functions.row_count)
        }
        assert "held" in marks[name]
        assert not any("held" in m for n, m in marks.items() if n != name)
        box = app.screen.query_one("#definition-errors", Static)
        assert box.display and f"{name}: its events wait: {why}" in str(box.render())


async def test_the_text_filter_applies_as_it_is_typed(tmp_path):
    spool = tmp_path / "spool"
    write_journal(spool, 30, snapshot_upto=10)
    app = FnspoolApp(Spool(spool))
    async with app.run_test(size=SIZE) as pilot:
        await until(pilot, lambda: loaded(app, 30), "the events")
        await pilot.press("slash", *"bad input 1")  # no enter
        events = app.screen.query_one(EventList)
        await until(pilot, lambda: events.total == 2, "the list filtered while typing")
        assert isinstance(app.focused, FilterInput) and app.focused.display
        await pilot.press("backspace", "backspace")  # "bad input"
        await until(pilot, lambda: events.total is not None and events.total > 2, "widened")
        await pilot.press("enter")
        assert not app.screen.query_one(FilterInput).display


async def test_from_a_reinvoke_to_the_event_it_reinvokes_and_back(spool, daemon):
    daemon.start()
    fnspool(spool, "invoke", "fail", "--id", "first", "--payload", "1", "--wait", check=False)
    fnspool(spool, "events", "reinvoke", "first", "--wait", check=False)
    (again,) = [e for e in events(spool) if e["id"] != "first"]
    app = FnspoolApp(Spool(spool))
    async with app.run_test(size=SIZE) as pilot:
        await until(pilot, lambda: loaded(app, 2), "the events")
        assert shown(app)[0][0].startswith(again["id"][:8])  # the newest: the re-invoke
        await pilot.press("enter")
        detail = app.screen
        assert isinstance(detail, DetailScreen)
        await until(pilot, lambda: detail.event is not None, "the re-invoke read")
        assert detail.event.retry_of == "first"
        await pilot.press("p")
        original = app.screen
        assert isinstance(original, DetailScreen) and original.event_id == "first"
        await until(pilot, lambda: original.event is not None, "the original read")
        await pilot.press("escape")
        assert app.screen is detail


async def test_the_full_log_is_searched_with_slash_and_n(tmp_path):
    spool = tmp_path / "spool"
    write_journal(spool, 10, snapshot_upto=5)
    log = spool / "logs" / "echo" / f"{event_id(9)}.log"
    log.parent.mkdir(parents=True)
    log.write_text("".join(f"line {n}{' needle' if n in (50, 150) else ''}\n" for n in range(300)))
    app = FnspoolApp(Spool(spool))
    async with app.run_test(size=SIZE) as pilot:
        await until(pilot, lambda: loaded(app, 10), "the events")
        await pilot.press("enter")
        await until(pilot, lambda: app.screen.event is not None, "the event read")
        await pilot.press("o")
        screen = app.screen
        assert isinstance(screen, LogScreen)
        full = screen.query_one("#full-log")
        await until(pilot, lambda: len(full.lines) >= 300, "the whole log")
        await pilot.press("slash", *"NEEDLE", "enter")
        assert screen.at == 50
        await pilot.press("n")
        assert screen.at == 150
        await pilot.press("n")
        assert screen.at == 50  # round again
        await pilot.press("N")
        assert screen.at == 150
        await pilot.press("escape")
        assert isinstance(app.screen, DetailScreen)


async def test_a_running_event_shows_how_long_it_has_run(spool, daemon, monkeypatch):
    from tui import format as formatting

    daemon.start()
    fnspool(spool, "invoke", "sleeper", "--id", "long", "--payload", '{"first_sleep": 60}')
    started = wait_for(
        lambda: (
            (e := fnspool_json(spool, "events", "get", "long"))["state"] == "Running"
            and e["started_at"]
        ),
        30,
        "the event to run",
    )
    text = fnspool(spool, "events", "get", "long").stdout
    assert "running for:" in text and "s so far" in text
    at = datetime.fromisoformat(started.replace("Z", "+00:00")).timestamp()
    monkeypatch.setattr(formatting, "now", lambda: at + 75.5)  # the ISO time is to the ms
    app = FnspoolApp(Spool(spool))
    async with app.run_test(size=SIZE) as pilot:
        await until(pilot, lambda: loaded(app, 1), "the event")
        events = app.screen.query_one(EventList)
        row = events.row_at(events.start)
        assert row is not None and duration_shown(row) == "1m15s…"


async def test_the_stop_dialog_of_a_queued_event_says_it_never_runs(tmp_path):
    spool = tmp_path / "spool"
    write_journal(spool, 10)  # the one before the newest is Enqueued
    app = FnspoolApp(Spool(spool))
    async with app.run_test(size=SIZE) as pilot:
        await until(pilot, lambda: loaded(app, 10), "the events")
        await pilot.press("j", "x")
        dialog = app.screen
        assert isinstance(dialog, ConfirmStop) and dialog.queued
        said = _text(dialog.query_one("#stop-mode"))
        assert "never runs" in said and "killed" not in said
        await pilot.press("g")  # nothing to choose: no instance to signal
        assert not dialog.graceful
        await pilot.press("enter")
        assert control_requests(spool) == [StopRequest(id=event_id(8), graceful=False)]


async def test_rejected_files_are_listed_with_their_reasons_and_submitted_again(spool, daemon):
    from tui.rejected import RejectedScreen

    (spool / "functions" / "later.toml").unlink(missing_ok=True)
    daemon.start()
    (spool / "incoming" / "later.json").write_text('{"function": "later", "payload": 1}')
    wait_for(lambda: list((spool / "rejected").glob("later.json*.reason.json")), what="rejected")
    app = FnspoolApp(Spool(spool))
    async with app.run_test(size=SIZE) as pilot:
        await until(pilot, lambda: app.total is not None, "the list")
        await pilot.press("3")
        screen = app.screen
        assert isinstance(screen, RejectedScreen)
        (item,) = screen.items
        assert item.file == "incoming/later.json" and item.reason == "unknown_function"
        (spool / "functions" / "later.toml").write_text(
            'handler = "index.handler"\ncode = "echo"\n'
        )  # the function is defined now: the same file is taken
        # the daemon has loaded it once it made its drop folder (a file sent before is
        # rejected again as unknown)
        wait_for((spool / "incoming" / "later").is_dir, what="the daemon to load it")
        await pilot.press("enter")
        await pilot.pause()
        assert any("submitted again as incoming/later.json" in n for n in notices(app)), notices(
            app
        )
    ran = wait_for(lambda: events(spool, "--function", "later"), 30, "it to be taken")
    assert ran[0]["state"] in ("Enqueued", "Dequeued", "Running", "Succeeded"), ran


async def test_pause_and_resume_from_the_functions_view_reach_the_daemon(spool, daemon):
    from daemon import heartbeat
    from tui.modals import Confirm

    daemon.start()
    app = FnspoolApp(Spool(spool))

    def beat() -> Any:
        return heartbeat.read(spool / "run")

    async with app.run_test(size=SIZE) as pilot:
        await until(pilot, lambda: "daemon running" in app.status_markup, "the heartbeat")
        await pilot.press("2")
        functions = app.screen.query_one("#functions", DataTable)
        await until(pilot, lambda: functions.row_count >= 3, "the functions")
        names = [str(functions.get_row_at(i)[0]) for i in range(functions.row_count)]
        functions.move_cursor(row=names.index("echo"))
        await pilot.press("p")
        assert isinstance(app.screen, Confirm) and app.screen.title_text == "Pause function echo?"
        await pilot.press("enter")
        await until(pilot, lambda: beat().paused == ["echo"], "the daemon to hold echo")
        told = "done: pause: function echo paused"
        await until(pilot, lambda: told in notices(app), "the daemon's answer")
        await until(pilot, lambda: "paused: echo" in app.status_markup, "the header to say so")
        drop(spool, "echo", "held.json", {"i": 1})
        drop(spool, "hello", "free.json", {"name": "x"})
        held = "the other function's event to run while echo's waits"
        await until(
            pilot,
            lambda: (
                app.counts.get(("hello", State.SUCCEEDED))
                and app.counts.get(("echo", State.ENQUEUED)) == 1
            ),
            held,
        )

        await pilot.press("p")  # echo is paused: p offers its resume
        assert app.screen.title_text == "Resume function echo?"  # type: ignore[attr-defined]
        await pilot.press("enter")
        ended = "the held event to run once resumed"
        await until(pilot, lambda: app.counts.get(("echo", State.SUCCEEDED)) == 1, ended)
        await until(pilot, lambda: beat().paused == [], "the daemon to say so")
        await until(pilot, lambda: "paused" not in app.status_markup, "the header to say so")

        await pilot.press("P", "enter")  # every function
        await until(pilot, lambda: beat().paused_all, "the daemon to hold every function")
        await until(pilot, lambda: "  [$warning]paused[/]" in app.status_markup, "the header")
        await pilot.press("p")  # one function while all are paused: the daemon would refuse
        assert not isinstance(app.screen, Confirm)
        assert any("all functions are paused" in n for n in notices(app))
        await pilot.press("P")
        assert app.screen.title_text == "Resume all functions?"  # type: ignore[attr-defined]
        await pilot.press("enter")
        await until(pilot, lambda: not beat().paused_all, "every function resumed")
        assert not control_requests(spool)  # every request taken and answered
