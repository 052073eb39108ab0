"""The event list sorted by a column no index orders: id, attempts, duration, error
(tui/ranked.py). The same order as the whole journal sorted (ties newest first, the events with
no value last), whatever the index's lag; refused with the count above the bound; live."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import msgspec
import pytest
from test_tui import loaded, notices, shown, until
from test_tui_index import View, _index_then_append, _total, _window, small_slices
from test_tui_sorting import RANKED, _expected, _header
from textual.widgets import Static
from tui_journal import T0, VARIED_ERRORS, append_records, event_id, index_journal, write_varied

from daemon.eventdb import IndexDB
from daemon.journal import JournalFollower
from daemon.model import State, Transition, raw_json
from daemon.query import Filter
from daemon.spool import Spool
from tui import ranked
from tui.app import FnspoolApp
from tui.event_list import EventList
from tui.modals import HELP, HelpScreen
from tui.ranked import Ranked
from tui.sorting import Order, listing_for

__all__ = ["small_slices"]  # a fixture, used by name

N, LIVE = 40, 4
FILTERS = [
    Filter(),
    Filter(function="notify"),
    Filter(states={State.FAILED, State.RUNNING, State.ENQUEUED}),
    Filter(text="bad input"),  # found through the errors' trigrams, held whole
    Filter(text="RESIZE"),  # a function's name: scanned
    Filter(since=T0 + 2, until=T0 + 7),
]


def _spool(tmp_path: Path, indexed: bool) -> Path:
    spool = tmp_path / "spool"
    recs = write_varied(spool, N, live=LIVE)
    if indexed:
        index_journal(spool)
    else:
        _index_then_append(spool, recs)  # every event from the journal after the index
    return spool


@pytest.mark.parametrize("indexed", [True, False], ids=["indexed", "lagging"])
@pytest.mark.parametrize("flt", FILTERS, ids=repr)
@pytest.mark.parametrize("order", RANKED, ids=lambda o: o.text)
def test_sorted_in_memory_as_the_whole_journal_sorted(tmp_path, order, flt, indexed, small_slices):
    spool = _spool(tmp_path, indexed)
    expected = _expected(spool, flt, order)
    assert expected, "the case should select something"
    view = View(spool)
    listing = listing_for(order, view.index, flt, view.overlay, view.counts)
    assert isinstance(listing, Ranked)
    assert _total(listing) == len(expected)
    assert _window(listing, 0, 100) == expected
    for start, count in [(0, 7), (5, 7), (len(expected) - 3, 7)]:
        assert _window(listing, max(0, start), count) == expected[max(0, start) :][:count]
    assert _window(listing, len(expected) + 5, 3) == []
    for at, event in enumerate(expected):
        assert listing.position((0.0, event)) == at  # by id: the time is not needed


@pytest.mark.parametrize("flt", [Filter(), Filter(text="e"), Filter(since=T0)], ids=repr)
def test_a_filter_matching_more_than_the_bound_is_refused_with_its_count(
    tmp_path, flt, small_slices, monkeypatch
):
    monkeypatch.setattr(ranked, "BOUND", 10)
    spool = _spool(tmp_path, indexed=True)
    view = View(spool)
    listing = Ranked(view.index, flt, view.overlay, view.counts, "duration", True)
    while listing.busy:
        listing.step()
    assert listing.too_many == len(_expected(spool, flt, Order())) > 10
    assert listing.total is None and listing.window(0, 5) is None
    small = Filter(function="resize", states={State.SUCCEEDED, State.FAILED})
    assert 0 < len(_expected(spool, small, Order())) <= 10
    fits = Ranked(view.index, small, view.overlay, view.counts, "duration", True)
    assert _window(fits, 0, 20) == _expected(spool, small, Order("duration", True))


def _records(spool: Path) -> list[Transition]:
    """What the daemon would append next: a running event (36) fails, a queued one (37) starts,
    a new one (40) comes."""
    state = JournalFollower(spool / "journal").load()
    running, queued = state.events[event_id(36)], state.events[event_id(37)]
    at = T0 + 20
    recs = [
        Transition(id=running.id, function=running.function, state=State.FAILED, at=at,
                   attempt=1, error=VARIED_ERRORS[1]),
        Transition(id=queued.id, function=queued.function, state=State.DEQUEUED, at=at),
        Transition(id=queued.id, function=queued.function, state=State.RUNNING, at=at,
                   attempt=1),
        Transition(id=event_id(N), function="echo", state=State.ENQUEUED, at=at,
                   payload=raw_json({"n": N})),
    ]  # fmt: skip
    return [msgspec.structs.replace(r, seq=state.last_seq + k + 1) for k, r in enumerate(recs)]


@pytest.mark.parametrize("order", RANKED, ids=lambda o: o.text)
def test_a_sorted_list_follows_live_changes_and_settles_into_the_index(tmp_path, order):
    spool = _spool(tmp_path, indexed=True)
    view = View(spool)
    listing = listing_for(order, view.index, Filter(), view.overlay, view.counts)
    assert _window(listing, 0, 100) == _expected(spool, Filter(), order)
    append_records(spool, _records(spool))
    for change in view.overlay.fold(view.tail.read()).changes:
        listing.add(change.after)
    expected = _expected(spool, Filter(), order)
    assert _window(listing, 0, 100) == expected and listing.total == N + 1
    moved = event_id(36)  # ended: a duration, an error, each in its place now
    assert listing.position((0.0, moved)) == expected.index(moved)
    index_journal(spool)  # the index takes the ended one in: it keeps its place, once
    view.index.close()
    view.index = listing.index = IndexDB.open_readonly(view.journal)
    for event in view.overlay.settle(view.index.cursor().seq):
        listing.settled(event)
    listing.cache.clear()  # its row is read from the index now
    assert _window(listing, 0, 100) == expected and listing.total == N + 1


# -- the dashboard ------------------------------------------------------------------------------

SIZE = (160, 40)
TITLES = {"id": "ID", "attempts": "ATT", "duration": "DURATION", "error": "ERROR"}


async def _sorted_as(pilot: Any, app: FnspoolApp, spool: Path, order: Order) -> None:
    want = _expected(spool, app.flt, order)
    await until(pilot, lambda: [r[0] for r in shown(app)] == want, order.text)


async def _click_title(pilot: Any, app: FnspoolApp, column: str) -> None:
    x = _header(app).index(TITLES[column])
    await pilot.click(EventList, offset=(x + 1, 0))


async def test_every_column_sorts_both_ways_by_clicking_its_title(tmp_path):
    spool = _spool(tmp_path, indexed=True)
    app = FnspoolApp(Spool(spool))
    async with app.run_test(size=SIZE) as pilot:
        await until(pilot, lambda: loaded(app, N), "the events")
        for column in TITLES:
            first = Order(column, descending=column in ("attempts", "duration"))
            await _click_title(pilot, app, column)
            await _sorted_as(pilot, app, spool, first)
            assert app.order == first and f"sorted by {first.text[10:]}" in app.filter_markup
            await _click_title(pilot, app, column)
            await _sorted_as(pilot, app, spool, first.flipped())
            mark = first.flipped().arrow
            assert f"{TITLES[column]} {mark}" in _header(
                app
            ) or f"{TITLES[column]}{mark}" in _header(app)
        assert not notices(app)


async def test_a_filter_matching_too_many_events_to_sort_is_told_and_kept_in_order(
    tmp_path, monkeypatch
):
    monkeypatch.setattr(ranked, "BOUND", 10)
    spool = _spool(tmp_path, indexed=True)
    app = FnspoolApp(Spool(spool))
    async with app.run_test(size=SIZE) as pilot:
        await until(pilot, lambda: loaded(app, N), "the events")
        generation = app.generation
        await _click_title(pilot, app, "duration")
        told = f"narrow the filter to sort by duration: {N} events match, up to 10 sort"
        await until(pilot, lambda: any(told in n for n in notices(app)), "the refusal")
        assert app.order == Order() and app.generation == generation  # the reader not asked
        await pilot.press("greater_than_sign")  # past duration, error and id: to function
        await _sorted_as(pilot, app, spool, Order("function", descending=False))

        app.flt = Filter(function="resize", states={State.SUCCEEDED, State.FAILED})
        app.refilter()
        await until(pilot, lambda: app.total is not None and 0 < app.total <= 10, "few events")
        await _click_title(pilot, app, "duration")
        await _sorted_as(pilot, app, spool, Order("duration", descending=True))

        await pilot.press("escape")  # every event again: too many, told by the reader
        counted = f"narrow the filter to sort by duration: {N} events match"
        await until(pilot, lambda: sum(counted in n for n in notices(app)) == 2, "told again")
        await _sorted_as(pilot, app, spool, Order("function", descending=False))
        assert app.order == Order("function", descending=False)  # the order served before


async def test_a_list_sorted_by_duration_follows_live_changes(tmp_path):
    spool = _spool(tmp_path, indexed=True)
    app = FnspoolApp(Spool(spool))
    async with app.run_test(size=SIZE) as pilot:
        await until(pilot, lambda: loaded(app, N), "the events")
        app.set_order(Order("duration", descending=False))
        await _sorted_as(pilot, app, spool, Order("duration", descending=False))
        before = [r[0] for r in shown(app)]
        append_records(spool, _records(spool))
        after = _expected(spool, Filter(), Order("duration", descending=False))
        assert after != before
        await until(pilot, lambda: [r[0] for r in shown(app)] == after, "moved, live")
        assert after.index(event_id(36)) < after.index(event_id(N))  # a duration: before
        assert app.total == N + 1


async def test_the_help_fits_an_80_by_24_terminal(tmp_path):
    app = FnspoolApp(Spool(_spool(tmp_path, indexed=True)))
    async with app.run_test(size=(80, 24)) as pilot:
        await until(pilot, lambda: loaded(app, N), "the events")
        await pilot.press("question_mark")
        await until(pilot, lambda: isinstance(app.screen, HelpScreen), "the help")
        await pilot.pause()
        keys = app.screen.query_one("#help-keys", Static)
        dialog = app.screen.query_one(".help")
        assert keys.size.height == len(HELP.split("\n"))  # no line wrapped
        assert dialog.region.contains_region(keys.region)  # none cut off
        assert app.screen.region.contains_region(dialog.region)
