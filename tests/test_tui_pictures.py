"""The functions view's pictures: the figures of a function's recent events against known
durations, read from the index within the window only; and the view drawing them."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from conftest import PATIENCE, wait_for_async
from textual.app import App, ComposeResult
from textual.widgets import DataTable, Sparkline, Static
from tui_journal import T0, index_journal, write_timed

from daemon.eventdb import IndexDB
from daemon.spool import Spool
from tui import format as formatting
from tui import recent as recent_module
from tui.app import FnspoolApp
from tui.functions import FunctionsScreen
from tui.pictures import Histogram, percentiles_markup
from tui.recent import WINDOW, histogram, percentile, read_recent

NOW = T0 + 400  # the window: T0 - 199 .. T0 + 400
ECHO = [10.0 * (i + 1) for i in range(100)]  # 10 ms .. 1,000 ms


def _spool(tmp_path: Path) -> Path:
    """echo: 100 runs of 10 .. 1,000 ms, one every 3 s in the window, and one still running;
    an echo run long before the window; resize: two runs."""
    spool = tmp_path / "spool"
    runs: list[tuple[str, float, float | None]] = [("echo", T0 - 5000, 99_000.0)]
    runs += [("echo", T0 + 3 * i, ms) for i, ms in enumerate(ECHO)]
    runs += [("echo", T0 + 395.5, None), ("resize", T0 + 10, 7.0), ("resize", T0 + 11, 9.0)]
    write_timed(spool, runs)
    index_journal(spool)
    return spool


def test_percentiles_are_nearest_rank_values_that_were_measured():
    one_to_hundred = [float(v) for v in range(1, 101)]
    assert [percentile(one_to_hundred, q) for q in (50, 95, 99, 100)] == [50, 95, 99, 100]
    assert [percentile([3.0, 7.0, 9.0], q) for q in (50, 95, 99)] == [7.0, 9.0, 9.0]
    assert percentile([42.0], 99) == 42.0
    with pytest.raises(ValueError):
        percentile([], 50)


def test_the_histogram_counts_every_duration_on_a_log_scale():
    counts, low, high = histogram([1.0, 10.0, 100.0, 1000.0], bins=3)
    assert (counts, low, high) == ([1, 1, 2], 1.0, 1000.0)  # decades: 1-10, 10-100, 100-1000
    assert histogram([5.0, 5.0], bins=3) == ([2], 5.0, 5.0)
    assert histogram([], bins=3) == ([], 0.0, 0.0)
    counts, _, _ = histogram(ECHO, bins=20)
    assert sum(counts) == 100 and len(counts) == 20


async def test_the_histograms_bars_stand_on_zero():
    """Bins of 6 and 7 events are both tall (scaled from the smallest count, 6 would be empty)."""

    class Bars(App[None]):
        def compose(self) -> ComposeResult:
            yield Histogram()

    app = Bars()
    async with app.run_test(size=(4, 3)):
        bars = app.query_one(Histogram)
        bars.values = [1.0] * 6 + [10.0] * 7  # two bins of two columns: 1 ms and 10 ms
        assert str(bars.render()).splitlines() == ["▅▅██", "████", "████"]
        bars.values = []
        assert str(bars.render()).strip() == ""


def test_a_functions_recent_figures_come_from_its_window_alone(tmp_path):
    index = IndexDB.open_readonly(_spool(tmp_path) / "journal")
    assert index is not None
    recent = read_recent(index, "echo", NOW)
    assert sorted(recent.durations) == pytest.approx(ECHO)  # not the run before the window
    ordered = sorted(recent.durations)
    assert [percentile(ordered, q) for q in (50, 95, 99)] == pytest.approx([500, 950, 990])
    said = "[b]p50[/] 500 ms  [b]p95[/] 950 ms  [b]p99[/] 990 ms  [$text-muted]of 100 ended"
    assert said in percentiles_markup(recent)
    assert len(recent.per_second) == len(recent.slowest) == WINDOW
    assert sum(recent.per_second) == 101  # the running one was enqueued too
    first = int(NOW) - WINDOW + 1
    assert recent.per_second[int(T0 + 395.5) - first] == 1
    assert recent.slowest[int(T0 + 297) - first] == pytest.approx(1000.0)  # the 100th run
    assert recent.rate == 0.1  # one event enqueued in the last ten seconds
    assert not recent.capped

    other = read_recent(index, "resize", NOW)
    assert sorted(other.durations) == pytest.approx([7.0, 9.0])
    assert sum(other.per_second) == 2


def test_only_the_newest_runs_durations_are_read(tmp_path, monkeypatch):
    monkeypatch.setattr(recent_module, "SAMPLE", 10)
    index = IndexDB.open_readonly(_spool(tmp_path) / "journal")
    assert index is not None
    recent = read_recent(index, "echo", NOW)
    assert recent.capped and sorted(recent.durations) == pytest.approx(ECHO[-10:])
    assert sum(recent.per_second) == 101  # arrivals are counted along the index, all of them
    assert "of the newest 10" in percentiles_markup(recent)


def _text(app: FnspoolApp, selector: str) -> str:
    return str(app.screen.query_one(selector, Static).render())


async def test_the_functions_view_draws_the_selected_functions_pictures(tmp_path, monkeypatch):
    monkeypatch.setattr(formatting, "now", lambda: NOW)
    app = FnspoolApp(Spool(_spool(tmp_path)))
    async with app.run_test(size=(120, 40)) as pilot:

        async def until(predicate: Any, what: str) -> None:
            await wait_for_async(predicate, PATIENCE, what, every=0.05, pause=pilot.pause)

        await until(lambda: app.total is not None, "the list")
        await pilot.press("2")
        assert isinstance(app.screen, FunctionsScreen)
        drawn = "echo's percentiles"
        await until(
            lambda: "p50 500 ms  p95 950 ms  p99 990 ms" in _text(app, "#percentiles"), drawn
        )
        rate = app.screen.query_one("#rate", Sparkline)
        assert rate.data is not None and sum(rate.data) == 101
        assert sorted(app.screen.query_one(Histogram).values) == pytest.approx(ECHO)
        assert "10 ms … 1.00 s" in _text(app, "#histogram-range")

        functions = app.screen.query_one("#functions", DataTable)
        names = [str(functions.get_row_at(i)[0]) for i in range(functions.row_count)]
        functions.move_cursor(row=names.index("resize"))
        await until(lambda: "p50 7.0 ms  p95 9.0 ms" in _text(app, "#percentiles"), "resize's")
        assert "resize" in _text(app, "#pictures-title")


async def test_without_an_index_the_pictures_say_they_wait_for_one(tmp_path, monkeypatch):
    monkeypatch.setattr(formatting, "now", lambda: NOW)
    spool = tmp_path / "spool"
    write_timed(spool, [("echo", T0, 10.0)])  # never indexed: the list replays the journal
    app = FnspoolApp(Spool(spool))
    async with app.run_test(size=(120, 40)) as pilot:
        await wait_for_async(lambda: app.total is not None, what="the list", pause=pilot.pause)
        await pilot.press("2")
        said = "no index yet"
        await wait_for_async(
            lambda: said in _text(app, "#pictures-title"), what=said, pause=pilot.pause
        )
