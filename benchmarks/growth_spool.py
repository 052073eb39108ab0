"""The spools the growth benchmark runs on: N retained ended events in the layout compaction
leaves (archives of 50k events, a snapshot of a few live events counting the archived ones, a
short segment tail), and their index built by one run of the indexer. Built once, kept in a cache.

The tail's Failed events (one in ten) owe their dead-letter records, as after a crash: a clone's
first daemon delivers them (100 small files). Four records per event, no Delivered records.
"""

from __future__ import annotations

import collections
import concurrent.futures
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from daemon.eventdb import INDEX_NAME, VERSION, IndexDB  # noqa: E402
from daemon.journal import (  # noqa: E402
    encode_record,
    list_archives,
    list_segments,
    list_snapshots,
    segment_name,
    write_archive,
    write_snapshot,
)
from daemon.model import (  # noqa: E402
    NO_RAW,
    ErrorInfo,
    Event,
    HistoryEntry,
    Source,
    State,
    Transition,
    Usage,
    raw_json,
)

FUNCTIONS = ("resize", "thumbnail", "notify", "billing", "echo", "hello")
ARCHIVE_EVENTS = 50_000
TAIL_EVENTS = 1_000  # ended, in the segment after the snapshot
LIVE_EVENTS = 5  # delayed far into the future: in the daemon's care, never run
SPAN = 48 * 3600.0  # the retained events' enqueue times spread over two days up to the build
RECORDS = 4  # Enqueued, Dequeued, Running, Succeeded or Failed
NOOP = "def handler(event, context):\n    return None\n"


def progress(text: str) -> None:
    """A progress line on stderr (the figures go to stdout)."""
    print(f"[{time.strftime('%H:%M:%S')}] {text}", file=sys.stderr, flush=True)


def parse_size(text: str) -> int:
    """`10k`, `1M`, `2500` as a number of events."""
    scale = {"k": 1_000, "m": 1_000_000}.get(text[-1:].lower(), 1)
    return int(float(text[:-1] if scale > 1 else text) * scale)


def size_name(n: int) -> str:
    """1000000 as `1M`, 10000 as `10k`."""
    if n % 1_000_000 == 0:
        return f"{n // 1_000_000}M"
    return f"{n // 1000}k" if n % 1000 == 0 else str(n)


def uuid7(ms: int, n: int) -> str:
    """A UUIDv7-shaped id for millisecond `ms`, made unique by `n`."""
    h = f"{ms:012x}7{n >> 48 & 0xFFF:03x}{0x8000 | (n >> 36) & 0x3FFF:04x}{n & 0xFFFFFFFFF:012x}"
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:32]}"


def ended_event(i: int, at: float, seq: int) -> Event:
    """Event number `i`, enqueued at `at`, ended 50 ms later; `seq` is its last record."""
    function = FUNCTIONS[i % len(FUNCTIONS)]
    failed = i % 10 == 3
    state = State.FAILED if failed else State.SUCCEEDED
    error = (
        ErrorInfo(
            type="ValueError",
            message=f"bad input {i % 97}",
            traceback=f'  File "index.py", line 7, in handler\nValueError: bad input {i % 97}\n',
        )
        if failed
        else None
    )
    instance = f"python-{function}-{i % 4}"
    usage = Usage(duration_ms=48.0, cpu_ms=3.1, max_memory_mb=21.5, exit_code=None)
    event_id = uuid7(int(at * 1000), i)
    return Event(
        id=event_id,
        function=function,
        state=state,
        enqueued_at=at,
        payload=raw_json({"n": i, "user": f"user{i % 1000}@example.com", "size": [640, 480]}),
        attempts=1,
        started_at=at + 0.002,
        ended_at=at + 0.05,
        duration_ms=48.0,
        result=NO_RAW if failed else raw_json({"ok": True, "bytes": 1000 + i % 5000}),
        error=error,
        source=Source(
            path=f"incoming/{function}/{event_id}.json",
            device=2049,
            inode=1_000_000 + i * 7919 % 5000,  # files are deleted once taken: inodes recycle
            size=72,
            mtime_ns=int(at * 1e9),
            uid=1000,
        ),
        history=[
            HistoryEntry(state=State.ENQUEUED, at=at),
            HistoryEntry(state=State.DEQUEUED, at=at + 0.001),
            HistoryEntry(state=State.RUNNING, at=at + 0.002, attempt=1, instance=instance),
            HistoryEntry(
                state=state, at=at + 0.05, attempt=1, instance=instance, error=error, usage=usage
            ),
        ],
        seq=seq,
    )


def live_event(i: int, now: float, seq: int) -> Event:
    """An Enqueued event delayed by ten years: in the daemon's care, never dispatched."""
    return Event(
        id=uuid7(int(now * 1000), 1 << 40 | i),
        function="noop",
        state=State.ENQUEUED,
        enqueued_at=now,
        payload=raw_json({"live": i}),
        not_before=now + 10 * 365 * 86400,
        history=[HistoryEntry(state=State.ENQUEUED, at=now)],
        seq=seq,
    )


def records_of(event: Event) -> Iterator[Transition]:
    """The transitions that fold into `event` (its last one carries `event.seq`)."""
    first = event.seq - len(event.history) + 1
    for n, h in enumerate(event.history):
        yield Transition(
            seq=first + n,
            at=h.at,
            id=event.id,
            function=event.function,
            state=h.state,
            attempt=h.attempt,
            instance=h.instance,
            payload=event.payload if h.state is State.ENQUEUED else NO_RAW,
            source=event.source if h.state is State.ENQUEUED else None,
            result=event.result if h.state is State.SUCCEEDED else NO_RAW,
            error=h.error,
            usage=h.usage,
        )


def write_archive_of(journal: Path, first: int, end: int, start: float, step: float) -> dict:
    """Write the archive of events [first, end) as the compaction after them would; its counts."""
    chunk = [ended_event(i, start + i * step, RECORDS * (i + 1)) for i in range(first, end)]
    header = write_archive(journal, RECORDS * end, chunk[-1].ended_at or start, chunk)
    counts: dict[str, int] = {}
    for e in chunk:
        counts[e.state.value] = counts.get(e.state.value, 0) + 1
    return {"path": header.name, "counts": counts}


def write_journal(journal: Path, events: int, now: float) -> dict[str, object]:
    """Archives, snapshot and segment tail for `events` ended events; what the spool holds."""
    journal.mkdir(parents=True)
    archived = max(0, events - TAIL_EVENTS)
    step = SPAN / events
    start = now - SPAN
    counts: collections.Counter[str] = collections.Counter()
    with concurrent.futures.ProcessPoolExecutor(os.cpu_count()) as pool:
        jobs = [
            pool.submit(
                write_archive_of, journal, first, min(archived, first + ARCHIVE_EVENTS), start, step
            )
            for first in range(0, archived, ARCHIVE_EVENTS)
        ]
        for job in jobs:
            counts.update(job.result()["counts"])
    seq = RECORDS * archived
    live = [live_event(k, now, seq + k + 1) for k in range(LIVE_EVENTS)]
    seq += LIVE_EVENTS
    write_snapshot(journal, seq, now, live, dict(counts))
    with open(journal / segment_name(seq + 1), "wb") as out:
        for i in range(archived, events):
            seq += RECORDS
            event = ended_event(i, start + i * step, seq)
            out.write(b"".join(encode_record(r) for r in records_of(event)))
    middle = archived // 2 if archived else events - 1  # an archived event, when there are any
    sample = ended_event(middle, start + middle * step, 0).id
    return {"events": events, "built_at": now, "last_seq": seq, "sample_id": sample}


def build_index(journal: Path, last_seq: int) -> float:
    """Run the indexer once over the journal until its index reaches `last_seq`; seconds."""
    started = time.perf_counter()
    with open(journal.parent / "indexer-build.log", "wb") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "daemon.indexer", str(journal)], cwd=REPO, stderr=log
        )
        try:
            while indexed_seq(journal) < last_seq:
                if proc.poll() is not None:
                    raise SystemExit(f"the indexer exited ({proc.returncode}): see {log.name}")
                time.sleep(0.1)
            proc.send_signal(signal.SIGTERM)
            if proc.wait(600) != 0:
                raise SystemExit(f"the indexer failed ({proc.returncode}): see {log.name}")
        finally:
            if proc.poll() is None:
                proc.kill()
    return time.perf_counter() - started


def indexed_seq(journal: Path) -> int:
    """How far into the journal the index goes (0 without one)."""
    index = IndexDB.open_readonly(journal)
    if index is None:
        return 0
    try:
        cursor = index.cursor()
        return cursor.seq if cursor is not None else 0
    finally:
        index.close()


def cached_spool(cache: Path, events: int) -> tuple[Path, dict[str, object]]:
    """The spool of `events` events under `cache`, built (and timed) unless already there; its
    index built again (and timed) when it is of another version than this checkout's."""
    home = cache / size_name(events)
    meta_path = home / "built.json"
    spool = home / "spool"
    if meta_path.exists():
        meta = json.loads(meta_path.read_text())
    else:
        shutil.rmtree(home, ignore_errors=True)
        (spool / "functions" / "noop").mkdir(parents=True)
        (spool / "functions" / "noop.toml").write_text(
            'handler = "index.handler"\nmax_instances = 2\n'
        )
        (spool / "functions" / "noop" / "index.py").write_text(NOOP)
        progress(f"{size_name(events)}: writing the journal")
        started = time.perf_counter()
        meta = write_journal(spool / "journal", events, time.time())
        meta["generate_s"] = time.perf_counter() - started
    if meta.get("index_version") != VERSION:
        progress(f"{size_name(events)}: indexing")
        for suffix in ("", "-wal", "-shm", "-journal"):
            Path(f"{spool / 'journal' / INDEX_NAME}{suffix}").unlink(missing_ok=True)
        meta["index_build_s"] = build_index(spool / "journal", int(meta["last_seq"]))
        meta["index_version"] = VERSION
        meta["disk"] = disk_use(spool / "journal")
        meta_path.write_text(json.dumps(meta))
    return spool, meta


def clone(cached: Path, run: Path) -> None:
    """A spool to run on: links to the immutable files, copies of those a daemon writes."""
    shutil.rmtree(run, ignore_errors=True)
    shutil.copytree(cached / "functions", run / "functions")
    (run / "journal").mkdir(parents=True)
    source = cached / "journal"
    for _seq, path in list_archives(source) + list_snapshots(source):
        os.link(path, run / "journal" / path.name)
    for _seq, path in list_segments(source):
        shutil.copyfile(path, run / "journal" / path.name)
    shutil.copyfile(source / INDEX_NAME, run / "journal" / INDEX_NAME)


def disk_use(journal: Path) -> dict[str, int]:
    """Bytes of the journal by kind of file."""
    use = {"segments": 0, "archives": 0, "snapshots": 0, "index": 0}
    for entry in os.scandir(journal):
        kind = (
            "index"
            if entry.name.startswith(INDEX_NAME)
            else entry.name.split("-")[0] + "s"
            if entry.name.endswith(".jsonl")
            else None
        )
        if kind in use:
            use[kind] += entry.stat().st_size
    return use
