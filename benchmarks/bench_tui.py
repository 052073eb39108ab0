"""The dashboard over a million (or ten) retained events: first screen, filters, memory.

Builds a spool as the daemon leaves it after N events ended: archives of 100,000 ended events
each, a snapshot standing on them, a segment of the newest 1,000, and the index built by the
daemon's indexer (`daemon.indexer.Indexer`, as after a start). Then runs `fnspool tui` headless
(Textual's pilot) in a fresh process and prints:

- first screen: from the process start (imports included) and from the app's start to the first
  screen with rows;
- filters: from applying a filter (state, function, free text, time range) to the list showing
  its first rows, and to its total being counted;
- G and PgDn: a seek to the oldest event, and paging from there;
- memory: RSS after the first screen, at the end, and the peak.

Targets (issue "Cost that does not grow with history"): first screen <= 1 s, memory small and
flat, filters prompt.

Usage: python benchmarks/bench_tui.py [--events 1000000] [--spool DIR (reuse or keep)]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from daemon.eventdb import INDEX_NAME, VERSION, IndexDB  # noqa: E402
from daemon.indexer import Indexer  # noqa: E402
from daemon.journal import encode_record, segment_name, write_archive, write_snapshot  # noqa: E402
from daemon.model import (  # noqa: E402
    NO_RAW,
    ErrorInfo,
    Event,
    HistoryEntry,
    Source,
    State,
    Usage,
    raw_json,
)

FUNCTIONS = ("resize", "thumbnail", "notify", "billing", "echo", "hello")
SEGMENT_EVENTS = 1000  # the newest events, still in a segment
ARCHIVE_EVENTS = 100_000  # events per archive (the daemon writes one per compaction)


def ended_event(
    i: int,
    at: float,
    event_id: str,
    function: str,
    *,
    duration_ms: float = 48.0,
    attempts: int = 1,
    error: ErrorInfo | None = None,
) -> Event:
    """Event `i`, enqueued at `at`, ended (Failed when it has an `error`) after `duration_ms`."""
    state = State.FAILED if error is not None else State.SUCCEEDED
    instance = f"python-{function}-{i % 4}"
    started, ended = at + 0.002, at + 0.002 + duration_ms / 1000
    usage = Usage(duration_ms=duration_ms, cpu_ms=3.1, max_memory_mb=21.5)
    return Event(
        id=event_id,
        function=function,
        state=state,
        enqueued_at=at,
        payload=raw_json({"n": i, "user": f"user{i % 1000}@example.com", "size": [640, 480]}),
        attempts=attempts,
        started_at=started,
        ended_at=ended,
        duration_ms=duration_ms,
        result=NO_RAW if error is not None else raw_json({"ok": True}),
        error=error,
        source=Source(path=f"incoming/{function}/{i}.json", uid=1000, size=60),
        history=[
            HistoryEntry(state=State.ENQUEUED, at=at),
            HistoryEntry(state=State.DEQUEUED, at=at + 0.001),
            HistoryEntry(state=State.RUNNING, at=started, attempt=attempts, instance=instance),
            HistoryEntry(
                state=state, at=ended, attempt=attempts, instance=instance, error=error, usage=usage
            ),
        ],
        seq=4 * i + 4,
    )


def _event(i: int, at: float, event_id: str) -> Event:
    failed = i % 10 == 3
    error = ErrorInfo(type="ValueError", message=f"bad input {i % 97}") if failed else None
    return ended_event(i, at, event_id, FUNCTIONS[i % len(FUNCTIONS)], error=error)


def build_spool(root: Path, events: int, make: Callable[[int, float, str], Event] = _event) -> None:
    """A spool as the daemon leaves it after `events` ended: archives, snapshot, segment (each
    event made by `make(i, enqueued_at, id)`, with four records and seq 4 i + 4)."""
    # imported here, not by the measured process (whose start the first screen's time counts)
    from growth_spool import records_of, uuid7

    journal = root / "journal"
    journal.mkdir(parents=True)
    for sub in ("functions", "control", "tmp", "incoming", "logs", "run"):
        (root / sub).mkdir()
    archived = max(0, events - SEGMENT_EVENTS)
    start = time.time() - events * 0.05  # one event every 50 ms, ending now

    def event(i: int) -> Event:
        at = start + i * 0.05
        return make(i, at, uuid7(int(at * 1000), i))

    counts: dict[str, int] = {}
    for first in range(0, archived, ARCHIVE_EVENTS):
        batch = [event(i) for i in range(first, min(archived, first + ARCHIVE_EVENTS))]
        for e in batch:
            counts[e.state.value] = counts.get(e.state.value, 0) + 1
        write_archive(journal, batch[-1].seq, batch[-1].ended_at or 0.0, batch)
    last_seq = 4 * archived
    write_snapshot(journal, last_seq, time.time(), [], archived=counts)
    with open(journal / segment_name(last_seq + 1), "wb") as out:
        for i in range(archived, events):
            for rec in records_of(event(i)):
                out.write(encode_record(rec))


def build_index(journal: Path) -> None:
    """Build the index as the daemon's indexer does: from archives and snapshot, then segments."""
    indexer = Indexer(journal)
    while indexer.step():
        pass
    indexer.db.close_cleanly()


def index_current(journal: Path) -> bool:
    """Whether the spool's index is of this checkout's version (else the indexer builds anew)."""
    index = IndexDB.open_readonly(journal)
    if index is not None:
        index.close()
    return index is not None and (journal / INDEX_NAME).exists()


# -- the measurement (in a fresh process) ------------------------------------------------------


async def measure(spool: Path, spawned_at: float) -> dict[str, float]:
    """Run the app headless over `spool`; the figures."""
    from daemon.model import State
    from daemon.query import Filter
    from daemon.spool import Spool
    from tui.app import FnspoolApp
    from tui.event_list import EventList

    figures: dict[str, float] = {}
    started = time.time()
    app = FnspoolApp(Spool(spool))
    async with app.run_test(size=(160, 40)) as pilot:
        events = app.screen.query_one(EventList)
        while not events.rows:
            await pilot.pause(0.005)
        painted = asyncio.Event()
        app.call_after_refresh(painted.set)  # the screen with the rows was rendered
        await painted.wait()
        now = time.time()
        figures["first_screen_from_process_start_s"] = now - spawned_at
        figures["first_screen_from_app_start_s"] = now - started
        figures["rows_in_first_window"] = len(events.rows)
        figures["events"] = events.total or 0
        newest = events.rows[0]
        rss_first = rss_mib()

        async def shown(generation: int, counted: bool) -> None:
            while events.generation != generation or not events.loaded:
                await asyncio.sleep(0.001)
            while counted and events.total is None:
                await asyncio.sleep(0.005)
            done = asyncio.Event()
            app.screen.refresh()  # a screen that did not change is not painted again
            app.call_after_refresh(done.set)
            await done.wait()

        filters = {
            "state Failed": Filter(states={State.FAILED}),
            "function billing": Filter(function="billing"),
            "text 'bad input 42'": Filter(text="bad input 42"),
            "text id prefix": Filter(text=newest.id[:11]),
            "time range last hour": Filter(since=newest.enqueued_at - 3600),
            "Failed + billing + 1 day": Filter(
                states={State.FAILED}, function="billing", since=newest.enqueued_at - 86400
            ),
        }
        for name, flt in filters.items():
            t = time.perf_counter()
            app.flt = flt
            app.refilter()
            await shown(app.generation, counted=False)
            figures[f"filter {name}: first rows (ms)"] = (time.perf_counter() - t) * 1000
            await shown(app.generation, counted=True)
            figures[f"filter {name}: counted (ms)"] = (time.perf_counter() - t) * 1000
            figures[f"filter {name}: rows"] = events.total or 0
        app.flt = Filter()
        app.refilter()
        await shown(app.generation, counted=True)
        t = time.perf_counter()
        await pilot.press("G")  # the oldest: a seek to the far end
        while events.cursor != (events.total or 0) - 1 or events.row_at(events.cursor) is None:
            await asyncio.sleep(0.002)
        figures["G (to the oldest) (ms)"] = (time.perf_counter() - t) * 1000
        t = time.perf_counter()
        for _ in range(20):
            await pilot.press("pagedown")
        while events.row_at(events.cursor) is None:
            await asyncio.sleep(0.002)
        figures["20 x PgDn (ms)"] = (time.perf_counter() - t) * 1000
        figures["rss_after_first_screen_mib"] = rss_first
        figures["rss_at_end_mib"] = rss_mib()
    figures["peak_rss_mib"] = peak_rss_mib()
    return figures


def rss_mib() -> float:
    """This process's resident set, MiB."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize() / 2**20


def peak_rss_mib() -> float:
    """This process's peak (getrusage's would carry the builder's over the exec)."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return 0.0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument("--spool", type=Path, help="use (or build and keep) this spool")
    parser.add_argument("--measure", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--spawned-at", type=float, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.measure:
        print(json.dumps(asyncio.run(measure(args.measure, args.spawned_at))))
        return 0

    temp = None
    spool = args.spool
    if spool is None:
        temp = tempfile.mkdtemp(prefix="fnspool-bench-tui-")
        spool = Path(temp) / "spool"
    try:
        if not (spool / "journal").exists():
            t = time.perf_counter()
            build_spool(spool, args.events)
            built = time.perf_counter() - t
            build_index(spool / "journal")
            size = sum(p.stat().st_size for p in (spool / "journal").iterdir())
            print(
                f"built {args.events:,} events in {built:.0f} s, indexed them in "
                f"{time.perf_counter() - t - built:.0f} s ({size / 2**20:,.0f} MiB of journal "
                "and index)"
            )
        elif not index_current(spool / "journal"):
            t = time.perf_counter()
            build_index(spool / "journal")
            print(f"index of version {VERSION} built anew in {time.perf_counter() - t:.0f} s")
        spawned = time.time()
        out = subprocess.run(
            [sys.executable, __file__, "--measure", str(spool), "--spawned-at", str(spawned)],
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
    ok = (
        figures["first_screen_from_process_start_s"] <= 1.0
        and all(v <= 200 for k, v in figures.items() if k.endswith("first rows (ms)"))
        and figures["peak_rss_mib"] <= 256
    )
    print(
        "targets (first screen <= 1 s, a filter's first rows <= 200 ms, memory <= 256 MiB):",
        "met" if ok else "NOT met",
    )
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
