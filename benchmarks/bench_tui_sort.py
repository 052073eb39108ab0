"""The dashboard sorted by a column no index orders (tui/ranked.py), over a million events.

Builds a spool as bench_tui.py does (archives, snapshot, segment, the indexer's index), with one
function, `rare`, holding one event in twenty (50,000 of a million), durations spread from 1 ms
to 1 s, errors of a few hundred texts and some second attempts. Then runs `fnspool tui` headless
in a fresh process and prints, under the filter `function rare`:

- the list's first rows in enqueue order (the index's own order), for comparison;
- for each of id, attempts, duration and error: from choosing the sort to its first rows on
  screen (the (id, value) pairs read and sorted, the window's rows read by id);
- G and PgDn in the list sorted by duration;
- without a filter: from choosing the sort by duration to the dashboard saying the filter
  matches too many events (known from the counts: nothing is read);
- memory: RSS before and after the sorts, and the peak.

Usage: python benchmarks/bench_tui_sort.py [--events 1000000] [--spool DIR (reuse or keep)]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from bench_tui import (  # noqa: E402
    FUNCTIONS,
    build_index,
    build_spool,
    ended_event,
    index_current,
    peak_rss_mib,
    rss_mib,
)

from daemon.model import (  # noqa: E402
    ErrorInfo,
    Event,
)

RARE = "rare"  # one event in twenty


def sort_event(i: int, at: float, event_id: str) -> Event:
    """Event `i`: `rare` one in twenty, a duration of 1 ms to 1 s, a second attempt one in seven."""
    failed = i % 10 == 3
    return ended_event(
        i,
        at,
        event_id,
        RARE if i % 20 == 7 else FUNCTIONS[i % len(FUNCTIONS)],
        duration_ms=round(1.0 + (i * 7919 % 99_991) / 100, 3),
        attempts=2 if i % 7 == 0 else 1,
        error=ErrorInfo(type="ValueError", message=f"bad input {i % 397}") if failed else None,
    )


async def measure(spool: Path) -> dict[str, float]:
    """Run the app headless over `spool`; the figures."""
    from daemon.query import Filter
    from daemon.spool import Spool
    from tui.app import FnspoolApp
    from tui.event_list import EventList
    from tui.ranked import BOUND
    from tui.sorting import SORTABLE, Order

    figures: dict[str, float] = {}
    app = FnspoolApp(Spool(spool))
    async with app.run_test(size=(160, 40)) as pilot:
        events = app.screen.query_one(EventList)
        while not events.rows:
            await pilot.pause(0.005)

        async def shown() -> None:
            while events.generation != app.generation or not events.rows:
                await asyncio.sleep(0.001)
            done = asyncio.Event()
            app.screen.refresh()  # a screen that did not change is not painted again
            app.call_after_refresh(done.set)
            await done.wait()

        t = time.perf_counter()
        app.flt = Filter(function=RARE)
        app.refilter()
        await shown()
        figures[f"function {RARE}: first rows by enqueue time (ms)"] = _ms(t)
        figures[f"function {RARE}: events"] = events.total or 0
        figures["rss_before_sorts_mib"] = rss_mib()
        for column in ("id", "attempts", "duration", "error"):
            t = time.perf_counter()
            app.set_order(Order(column, SORTABLE[column]))
            await shown()
            figures[f"sorted by {column}: first rows (ms)"] = _ms(t)
        t = time.perf_counter()
        await pilot.press("G")
        while events.cursor != (events.total or 0) - 1 or events.row_at(events.cursor) is None:
            await asyncio.sleep(0.002)
        figures["sorted by error: G (ms)"] = _ms(t)
        for order in (Order(), Order("duration", True)):  # the index's order, for comparison
            app.set_order(order)
            await shown()
            t = time.perf_counter()
            for _ in range(20):
                await pilot.press("pagedown")
            while events.row_at(events.cursor) is None:
                await asyncio.sleep(0.002)
            figures[f"sorted by {order.column}: 20 x PgDn (ms)"] = _ms(t)
        figures["rss_after_sorts_mib"] = rss_mib()
        app.flt = Filter()
        app.set_order(Order())
        await shown()
        while app.total is None:
            await asyncio.sleep(0.002)
        figures["every event: events"] = app.total
        if app.total > BOUND:
            told = len(app._notifications)
            t = time.perf_counter()
            app.set_order(Order("duration", True))
            while len(app._notifications) == told:
                await asyncio.sleep(0.001)
            figures["every event, sort by duration: refused (ms)"] = _ms(t)
    figures["peak_rss_mib"] = peak_rss_mib()
    return figures


def _ms(started: float) -> float:
    return (time.perf_counter() - started) * 1000


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument("--spool", type=Path, help="use (or build and keep) this spool")
    parser.add_argument("--measure", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.measure:
        print(json.dumps(asyncio.run(measure(args.measure))))
        return 0
    temp = None
    spool = args.spool
    if spool is None:
        temp = tempfile.mkdtemp(prefix="fnspool-bench-sort-")
        spool = Path(temp) / "spool"
    try:
        if not (spool / "journal").exists():
            t = time.perf_counter()
            build_spool(spool, args.events, sort_event)
            build_index(spool / "journal")
            print(f"built and indexed {args.events:,} events in {time.perf_counter() - t:.0f} s")
        elif not index_current(spool / "journal"):
            build_index(spool / "journal")
        out = subprocess.run(
            [sys.executable, __file__, "--measure", str(spool)],
            capture_output=True,
            text=True,
            check=True,
            cwd=REPO,
        )
        figures = json.loads(out.stdout.strip().splitlines()[-1])
    finally:
        if temp is not None:
            shutil.rmtree(temp, ignore_errors=True)
    for name, value in figures.items():
        print(f"{name:58} {value:12,.3f}" if isinstance(value, float) else f"{name:58} {value}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
