"""The event list sorted by any column (tui/sorting.py, tui/ranked.py): the same rows, in the
same order, as the whole journal sorted, whatever the window, the filter or the index's lag; and
the dashboard's keys and header for it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import msgspec
import pytest
from test_tui import SIZE, loaded, notices, shown, until
from test_tui_index import FILTERS, View, _index_then_append, _total, _window, small_slices
from tui_journal import T0, append_records, history, index_journal, write_journal

from daemon.journal import JournalFollower
from daemon.model import Event, State
from daemon.query import Filter
from daemon.spool import Spool
from tui import listing as listing_module
from tui.app import FnspoolApp
from tui.event_list import EventList
from tui.sorting import STATE_ORDER, Order, listing_for

__all__ = ["small_slices"]  # a fixture, used by name

SERVED = [
    Order("function", descending=False),
    Order("function", descending=True),
    Order("state", descending=False),
    Order("state", descending=True),
    Order("enqueued", descending=False),
]
#: the orders sorted in memory (tui/ranked.py)
RANKED = [Order(c, d) for c in ("id", "attempts", "duration", "error") for d in (False, True)]
ORDERS = SERVED + RANKED
RANK = {s: i for i, s in enumerate(STATE_ORDER)}


def _sort_key(order: Order) -> Any:
    """What an event sorts by in `order` (None: it has no value, and comes last either way)."""
    if order.column == "function":
        return lambda e: e.function
    if order.column == "state":
        return lambda e: RANK[e.state]
    if order.column == "id":
        return lambda e: e.id
    if order.column == "attempts":
        return lambda e: e.attempts
    if order.column == "duration":
        return lambda e: e.duration_ms
    if order.column == "error":  # as the index holds it: `type message`, case ignored
        return lambda e: f"{e.error.type} {e.error.message}".lower() if e.error else None
    return lambda e: (e.enqueued_at, e.id)


def _expected(spool: Path, flt: Filter, order: Order) -> list[str]:
    """The whole journal's events passing `flt`, sorted: newest first, then (a stable sort) by
    the order's column, the events without a value in it last."""
    events: list[Event] = list(JournalFollower(spool / "journal").load().events.values())
    newest = sorted(
        (e for e in events if flt.matches(e)), key=lambda e: (e.enqueued_at, e.id), reverse=True
    )
    key = _sort_key(order)
    valued = [e for e in newest if key(e) is not None]
    rest = [e.id for e in newest if key(e) is None]
    return [e.id for e in sorted(valued, key=key, reverse=order.descending)] + rest


@pytest.mark.parametrize("indexed_upto", [0, 25, 40])
@pytest.mark.parametrize("flt", FILTERS, ids=repr)
@pytest.mark.parametrize("order", ORDERS, ids=lambda o: o.text)
def test_sorted_windows_agree_with_the_whole_journal_sorted(
    tmp_path, flt, order, indexed_upto, small_slices, monkeypatch
):
    monkeypatch.setattr(listing_module, "JUMP", 4)  # far windows are sought, not read down to
    spool = tmp_path / "spool"
    recs = write_journal(spool, 40, snapshot_upto=indexed_upto)
    if indexed_upto:
        index_journal(spool)
    else:
        _index_then_append(spool, recs)
    expected = _expected(spool, flt, order)
    view = View(spool)

    def fresh() -> Any:
        return listing_for(order, view.index, flt, view.overlay, view.counts)

    listing = fresh()
    assert _total(listing) == len(expected)
    assert _window(listing, 0, 100) == expected
    for start, count in [(0, 7), (5, 7), (12, 9), (max(0, len(expected) - 3), 7)]:
        assert _window(fresh(), start, count) == expected[start : start + count]
        assert _window(listing, start, count) == expected[start : start + count]
    assert _window(listing, len(expected) + 5, 3) == []


def test_a_sorted_list_follows_live_changes(tmp_path):
    spool = tmp_path / "spool"
    recs = write_journal(spool, 30, snapshot_upto=20)
    index_journal(spool)
    view = View(spool)
    by_state = listing_for(Order("state", False), view.index, Filter(), view.overlay, view.counts)
    oldest = listing_for(Order("enqueued", False), view.index, Filter(), view.overlay, view.counts)
    running = _window(by_state, 0, 100)
    assert running[1] == recs[-1].id  # Enqueued first (one), then Running (event 29)
    seq = recs[-1].seq
    ended = history(29, "notify", State.SUCCEEDED, T0 + 29)[-1]
    new = history(30, "echo", State.ENQUEUED, T0 + 30)
    records = [msgspec.structs.replace(r, seq=seq + 1 + k) for k, r in enumerate([ended, *new])]
    append_records(spool, records)
    for change in view.overlay.fold(view.tail.read()).changes:
        by_state.add(change.after)
        oldest.add(change.after)
    expected = _expected(spool, Filter(), Order("state", False))
    assert _window(by_state, 0, 100) == expected
    assert _window(oldest, 0, 100) == _expected(spool, Filter(), Order("enqueued", False))
    assert _window(oldest, 30, 5) == [new[0].id]  # the newest, last


def _header(app: FnspoolApp) -> str:
    events = app.screen.query_one(EventList)
    return events.render_line(0).text


async def test_the_list_is_sorted_by_keys_and_by_clicking_a_title(tmp_path):
    spool = tmp_path / "spool"
    write_journal(spool, 30, snapshot_upto=20)
    index_journal(spool)
    app = FnspoolApp(Spool(spool))
    async with app.run_test(size=SIZE) as pilot:
        await until(pilot, lambda: loaded(app, 30), "the events")
        assert "ENQUEUED ▼" in _header(app) and "sorted by" not in app.filter_markup

        async def sorted_as(order: Order) -> None:
            want = _expected(spool, Filter(), order)
            await until(pilot, lambda: [r[0] for r in shown(app)] == want, order.text)

        await pilot.press("less_than_sign")  # the previous column: attempts, most first
        await sorted_as(Order("attempts", descending=True))
        await pilot.press("less_than_sign")
        await sorted_as(Order("state", descending=False))
        assert [r[2] for r in shown(app)][:2] == ["Enqueued", "Running"]
        await pilot.press("less_than_sign")  # function, A to Z
        await sorted_as(Order("function", descending=False))
        assert "FUNCTION ▲" in _header(app) and "ENQUEUED ▼" not in _header(app)
        assert "sorted by function ▲" in app.filter_markup
        await pilot.press("I")
        await sorted_as(Order("function", descending=True))
        assert "FUNCTION ▼" in _header(app)
        for order in [Order("id", False), Order("error", False), Order("duration", True)]:
            await pilot.press("less_than_sign")  # round the end: id, then error, duration
            await sorted_as(order)
        assert "DURATION▼" in _header(app) and "sorted by duration ▼" in app.filter_markup
        await pilot.press("greater_than_sign")
        await sorted_as(Order("error", descending=False))

        events = app.screen.query_one(EventList)
        x = _header(app).index("ENQUEUED")
        await pilot.click(EventList, offset=(x + 1, 0))  # by enqueue time, newest first
        await sorted_as(Order("enqueued", descending=True))
        await pilot.click(EventList, offset=(x + 1, 0))  # again: oldest first
        await sorted_as(Order("enqueued", descending=False))
        assert "ENQUEUED ▲" in _header(app) and events.selected_id == shown(app)[0][0]

        x = _header(app).index("DURATION")
        await pilot.click(EventList, offset=(x + 1, 0))  # the longest first
        await sorted_as(Order("duration", descending=True))
        await pilot.click(EventList, offset=(x + 1, 0))
        await sorted_as(Order("duration", descending=False))
        assert not notices(app)


async def test_a_list_sorted_by_state_moves_an_event_as_its_state_changes(tmp_path):
    spool = tmp_path / "spool"
    recs = write_journal(spool, 30, snapshot_upto=20)
    index_journal(spool)
    app = FnspoolApp(Spool(spool))
    by_state = Order("state", descending=True)  # Stopped .. Succeeded .. Running, Enqueued
    async with app.run_test(size=SIZE) as pilot:
        await until(pilot, lambda: loaded(app, 30), "the events")
        app.set_order(by_state)
        want = _expected(spool, Filter(), by_state)
        await until(pilot, lambda: [r[0] for r in shown(app)] == want, "sorted by state")
        assert [r[2] for r in shown(app)][-2:] == ["Running", "Enqueued"]
        ended = history(29, "notify", State.SUCCEEDED, T0 + 29)[-1]
        append_records(spool, [msgspec.structs.replace(ended, seq=recs[-1].seq + 1)])
        moved = _expected(spool, Filter(), by_state)
        assert moved != want
        await until(pilot, lambda: [r[0] for r in shown(app)] == moved, "it moved, live")
        succeeded = [r for r in shown(app) if r[2] == "Succeeded"]
        assert succeeded[0][0] == recs[-1].id  # the newest of its new state
