"""SVG snapshots of the dashboard's main screens over a hand-written journal (fixed ids and times).

Update them after an intended change with `pytest tests/test_tui_snapshots.py --snapshot-update`
and look at the report it writes before committing.
"""

from __future__ import annotations

import time

import pytest
from conftest import wait_for_async
from tui_journal import T0, index_journal, write_journal, write_timed

from daemon.spool import Spool
from tui import format as formatting
from tui.app import FnspoolApp
from tui.detail import DetailScreen
from tui.functions import FunctionsScreen

SIZE = (140, 32)


@pytest.fixture
def app(tmp_path, monkeypatch):
    """The dashboard over 40 events, in UTC, with the spool shown as `spool`."""
    monkeypatch.setenv("TZ", "UTC")
    time.tzset()
    monkeypatch.setattr(formatting, "now", lambda: T0 + 3600)  # running times that do not move
    monkeypatch.chdir(tmp_path)
    write_journal(tmp_path / "spool", 40, snapshot_upto=30)
    index_journal(tmp_path / "spool")  # as the daemon's indexer leaves it: the snapshot's 30
    yield FnspoolApp(Spool("spool"))
    monkeypatch.delenv("TZ")
    time.tzset()


async def _loaded(pilot) -> None:
    app = pilot.app
    await wait_for_async(
        lambda: app.total is not None and "daemon down" in app.status_markup,
        what="the journal to be read",
        every=0.05,
        pause=pilot.pause,
    )
    await pilot.pause()


def test_events_screen(app, snap_compare):
    assert snap_compare(app, terminal_size=SIZE, run_before=_loaded)


def test_events_screen_at_80_columns(app, snap_compare):
    """A narrow terminal keeps the state, the duration and the error: the id is cut with an
    ellipsis, the attempts are left out, the time is the time of day."""
    assert snap_compare(app, terminal_size=(80, 24), run_before=_loaded)


def test_events_filtered_by_state_and_text(app, snap_compare):
    async def run_before(pilot) -> None:
        await _loaded(pilot)
        await pilot.press("s", *["down"] * 6, "space", "enter")
        await pilot.press("slash", *"resize", "enter")

    assert snap_compare(app, terminal_size=SIZE, run_before=run_before)


def test_detail_screen(app, snap_compare):
    async def run_before(pilot) -> None:
        await _loaded(pilot)
        await pilot.press(*"jjjjjj", "enter")  # event 33: failed
        screen = pilot.app.screen
        assert isinstance(screen, DetailScreen)
        await wait_for_async(
            lambda: screen.event is not None and screen.query_one("#detail-log").lines,
            what="the event and its log",
            every=0.05,
            pause=pilot.pause,
        )
        await pilot.pause()

    assert snap_compare(app, terminal_size=SIZE, run_before=run_before)


def test_functions_screen(app, snap_compare):
    async def run_before(pilot) -> None:
        await _loaded(pilot)
        await pilot.press("2")
        assert isinstance(pilot.app.screen, FunctionsScreen)
        await wait_for_async(  # nothing in the window: the run is an hour old
            lambda: "no event" in str(pilot.app.screen.query_one("#percentiles").render()),
            what="the pictures",
            every=0.05,
            pause=pilot.pause,
        )

    assert snap_compare(app, terminal_size=SIZE, run_before=run_before)


def test_stop_modal(app, snap_compare):
    async def run_before(pilot) -> None:
        await _loaded(pilot)
        await pilot.press("x", "g")

    assert snap_compare(app, terminal_size=SIZE, run_before=run_before)


def test_functions_screen_pictures_at_80_columns(tmp_path, monkeypatch, snap_compare):
    """The selected function's last minutes: events per second, the slowest per second, and
    the histogram of durations with its percentiles, in an 80-column terminal."""
    monkeypatch.setenv("TZ", "UTC")
    time.tzset()
    now = T0 + 400
    monkeypatch.setattr(formatting, "now", lambda: now)
    monkeypatch.chdir(tmp_path)
    runs: list[tuple[str, float, float | None]] = [
        ("echo", T0 + 2 * i + (i % 7) / 10, 5.0 * 1.07**i) for i in range(150)
    ]
    write_timed(tmp_path / "spool", runs)
    index_journal(tmp_path / "spool")
    app = FnspoolApp(Spool("spool"))

    async def run_before(pilot) -> None:
        await _loaded(pilot)
        await pilot.press("2")
        await wait_for_async(
            lambda: "p50" in str(pilot.app.screen.query_one("#percentiles").render()),
            what="the pictures",
            every=0.05,
            pause=pilot.pause,
        )

    try:
        assert snap_compare(app, terminal_size=(80, 24), run_before=run_before)
    finally:
        monkeypatch.delenv("TZ")
        time.tzset()
