"""Costs that must not grow with history: the daemon and the CLI over 10k to 10M retained events.

For each size N it builds (once, cached under --cache) a spool whose journal holds N ended events
in the layout compaction leaves: archives of 50k events with their headers, a snapshot of a few
live (delayed) events whose header counts the archived ones by state, and a short segment tail of
ended events not archived yet; then the index, built by one run of the indexer (`python -m
daemon.indexer`), timed: that is what a rebuild costs. Every measurement runs on a clone of the
cached spool (hard links to the immutable archives and snapshot, copies of the segment and the
index) so reruns start from the same state, and prints:

- start-up: from starting `fnspool daemon` to the state in which `fnspool status` exits 0
  (median over the daemon starts of the run), and the RSS of the daemon and of its indexer;
- CLI reads, whole process, median of --repeat (wall and CPU): `events get ID` (an archived
  event), `events get PREFIX` (a unique prefix, when supported), `events list --limit 50` without
  a filter, with each single filter (P: 8 characters of an id, a 65 s window of UUIDv7 ids), and
  with two states or a 4-character prefix; beside each, the same read in this process;
- burst: --burst files into a daemon with 2 warm instances, with a compaction running in it
  (`--snapshot-every 1000`, the burst started half a heartbeat before the chore that compacts) and
  without (the default, no compaction due), alternating daemons, median events/s of --rounds;
- disk: the journal's segments, archives, snapshots and index.

Baselines measured in the same run (the machine is shared and noisy): `python -c pass` and
`fnspool --help`. Targets at 10M: start-up <= 2 s, daemon RSS <= 200 MiB, events get <= 100 ms,
events list --limit 50 with any one filter <= 200 ms (both including the CLI's own start), burst
during a compaction >= 80 % of the burst without.

Usage: python benchmarks/bench_growth.py [--sizes 10k,100k,1M] [--cache DIR] [--repeat 7]
"""

from __future__ import annotations

import argparse
import compileall
import contextlib
import json
import os
import resource
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import NamedTuple

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from growth_spool import (  # noqa: E402
    cached_spool,
    clone,
    indexed_seq,
    parse_size,
    progress,
    size_name,
)

from daemon.journal import (  # noqa: E402
    Damage,
    JournalTail,
    Outrun,
    list_archives,
    list_snapshots,
)
from daemon.model import TERMINAL_STATES, State, Transition  # noqa: E402
from daemon.query import Filter  # noqa: E402
from daemon.reads import EventReads  # noqa: E402

FNSPOOL = [str(Path(sys.executable).with_name("fnspool"))]
COMPACT_OFTEN = ("--snapshot-every", "1000")
HEARTBEAT = 1.0  # the daemon's chore period (Settings.heartbeat)


# -- the spool --------------------------------------------------------------------------------


# -- the daemon -------------------------------------------------------------------------------


def read_status(spool: Path) -> dict[str, object]:
    """run/status.json, or {} while it is missing or being replaced."""
    try:
        return json.loads((spool / "run" / "status.json").read_text())
    except (OSError, ValueError):
        return {}


@contextlib.contextmanager
def running_daemon(spool: Path, *extra: str) -> Iterator[tuple[subprocess.Popen[bytes], float]]:
    """A daemon on `spool` and its start-up time: until `fnspool status` would exit 0."""
    log = open(spool / "daemon.log", "ab")  # noqa: SIM115 (closed below, after the daemon)
    started = time.perf_counter()
    argv = [*FNSPOOL, "daemon", "--spool", str(spool), "--retention", "36500d", *extra]
    proc = subprocess.Popen(argv, stderr=log, cwd=spool)
    try:
        while not ((status := read_status(spool)).get("ready") and status["pid"] == proc.pid):
            if proc.poll() is not None or time.perf_counter() - started > 300:
                raise SystemExit(f"the daemon did not become ready: see {log.name}")
            time.sleep(0.005)
        startup = time.perf_counter() - started
        if (status_run := cli(spool, "status")).returncode != 0:
            said = (status_run.stdout + status_run.stderr).decode(errors="replace")
            raise SystemExit(
                f"`fnspool status` exits {status_run.returncode} on a ready daemon:\n{said}"
            )
        yield proc, startup
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(120)
        finally:
            if proc.poll() is None:
                proc.kill()
            log.close()


def rss_mib(pid: int) -> float:
    """A process's resident set, MiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def indexer_pid(spool: Path) -> int:
    """The running indexer's pid, once the daemon has written it in run/status.json."""
    limit = time.monotonic() + 30
    while not (pid := (read_status(spool).get("indexer") or {}).get("pid")):  # type: ignore[attr-defined]
        if time.monotonic() > limit:
            raise SystemExit("the daemon names no indexer in run/status.json")
        time.sleep(0.05)
    return int(pid)


def wait_indexed(spool: Path, deadline: float = 300.0) -> None:
    """Until the running indexer has taken in the whole journal."""
    journal = spool / "journal"
    end = JournalTail.from_end(journal, []).cursor.seq
    limit = time.monotonic() + deadline
    while indexed_seq(journal) < end:
        if time.monotonic() > limit:
            raise SystemExit("the indexer did not catch up")
        time.sleep(0.05)


# -- the CLI ----------------------------------------------------------------------------------


def cli(spool: Path, *args: str) -> subprocess.CompletedProcess[bytes]:
    """Run `fnspool ARGS --spool SPOOL`."""
    return subprocess.run(
        [*FNSPOOL, *args, "--spool", str(spool)], capture_output=True, check=False
    )


class Timing(NamedTuple):
    """Median wall and CPU seconds of a whole process, its exit status and lines of output."""

    wall: float
    cpu: float
    code: int
    lines: int


def timed(argv: list[str], repeat: int) -> Timing:
    """Run `argv` `repeat` times; the medians (CPU time is steadier on a loaded machine)."""
    walls, cpus, code, lines = [], [], 0, 0
    for _ in range(repeat):
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        started = time.perf_counter()
        done = subprocess.run(argv, capture_output=True, check=False)
        walls.append(time.perf_counter() - started)
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        cpus.append(after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime)
        code, lines = done.returncode, done.stdout.count(b"\n")
    return Timing(statistics.median(walls), statistics.median(cpus), code, lines)


class Read(NamedTuple):
    """A CLI read: the whole process, and the same read in this process (None: not measured)."""

    process: Timing
    query: float | None


def in_process(call: Callable[[], object], repeat: int) -> float:
    """Median seconds of a read made in this process (no interpreter start, no imports)."""
    samples = []
    for _ in range(repeat):
        started = time.perf_counter()
        call()
        samples.append(time.perf_counter() - started)
    return statistics.median(samples)


def iso(ts: float) -> str:
    """Epoch seconds as ISO 8601 (what `--since` takes)."""
    return datetime.fromtimestamp(ts, UTC).isoformat()


def reads(spool: Path, meta: dict[str, object], repeat: int) -> dict[str, object]:
    """The CLI's reads, whole process; with each, the same read in this process."""
    sample = str(meta["sample_id"])
    since = float(meta["built_at"]) - 3600  # type: ignore[arg-type]
    prefix = sample[:8]  # UUIDv7: a 65 s window of submissions
    lists: dict[str, tuple[list[str], Filter]] = {
        "list --limit 50": ([], Filter()),
        "list --function billing": (["--function", "billing"], Filter(function="billing")),
        "list --status Failed": (["--status", "Failed"], Filter(states={State.FAILED})),
        "list --status Succeeded": (["--status", "Succeeded"], Filter(states={State.SUCCEEDED})),
        "list --since 1h": (["--since", iso(since)], Filter(since=since)),
        "list --id-prefix P": (["--id-prefix", prefix], Filter(id_prefix=prefix)),
        # beyond the single filters: what SQLite used to sort whole
        "list --status Failed,Expired": (
            ["--status", "Failed,Expired"],
            Filter(states={State.FAILED, State.EXPIRED}),
        ),
        "list --id-prefix (4 chars)": (["--id-prefix", sample[:4]], Filter(id_prefix=sample[:4])),
    }
    event_reads = EventReads(spool / "journal")
    figures: dict[str, object] = {}
    base, where = [*FNSPOOL, "events"], ["--spool", str(spool)]
    timing = timed([*base, "get", sample, *where], repeat)
    assert timing.code == 0, f"events get {sample} exited {timing.code}"
    get = in_process(lambda: event_reads.get(sample), repeat)
    figures["events get ID"] = Read(timing._replace(lines=0), get)
    unique = sample[:13]  # the millisecond part of the id: unique here
    figures["events get PREFIX"] = None  # not supported by this CLI
    if cli(spool, "events", "get", unique).returncode == 0:
        prefixed = timed([*base, "get", unique, *where], repeat)
        figures["events get PREFIX"] = Read(prefixed._replace(lines=0), None)
    for name, (args, flt) in lists.items():
        timing = timed([*base, "list", "--limit", "50", *args, *where], repeat)
        assert timing.code == 0, f"events {name} exited {timing.code}"
        query = in_process(lambda flt=flt: event_reads.select(flt, 50), repeat)  # type: ignore[misc]
        figures[name] = Read(timing._replace(lines=timing.lines - 1), query)  # less the heading
    return figures


def baselines(repeat: int) -> dict[str, Timing]:
    """Process start-up costs that say how loaded the machine is now."""
    return {
        "python -c pass": timed([sys.executable, "-c", "pass"], repeat),
        "fnspool --help": timed([*FNSPOOL, "--help"], repeat),
    }


# -- the burst --------------------------------------------------------------------------------


def drop_files(spool: Path, count: int) -> list[tuple[Path, Path]]:
    """`count` payload files for noop written in tmp/: (temp, final name in incoming/noop/)."""
    (spool / "tmp").mkdir(exist_ok=True)
    files = []
    for i in range(count):
        name = f"b{uuid.uuid4().hex}"
        temp = spool / "tmp" / f".{name}.tmp"
        temp.write_text(f'{{"n": {i}}}')
        files.append((temp, spool / "incoming" / "noop" / f"{name}.json"))
    return files


def burst(spool: Path, count: int, start_at: float | None = None) -> tuple[float, int, int]:
    """Events/s for `count` files renamed into incoming/ at once (at `start_at`, monotonic),
    until all ended; and the first and last sequence numbers of their records."""
    files = drop_files(spool, count)
    damages: list[Damage] = []
    tail = JournalTail.from_end(spool / "journal", damages)
    if start_at is not None:
        time.sleep(max(0.0, start_at - time.monotonic()))
    started = time.perf_counter()
    since = time.time()
    for temp, final in files:
        os.rename(temp, final)
    done = failed = first = last = 0
    while done < count:
        if time.perf_counter() - started > 600:
            raise SystemExit(f"only {done} of {count} events ended within 600 s")
        time.sleep(0.005)
        try:
            records = list(tail.read())
        except Outrun:  # two compactions outran this reader: ask the index instead
            ended = EventReads(spool / "journal").select(
                Filter(function="noop", states=set(TERMINAL_STATES), since=since), None
            )
            done, failed = len(ended), sum(e.state is not State.SUCCEEDED for e in ended)
            continue
        for rec in records:
            if isinstance(rec, Transition) and rec.function == "noop":
                first, last = first or rec.seq, rec.seq
                done += rec.state in TERMINAL_STATES
                failed += rec.state in TERMINAL_STATES and rec.state is not State.SUCCEEDED
    elapsed = time.perf_counter() - started
    tail.close()
    if failed:
        raise SystemExit(f"{failed} burst events did not succeed: see `fnspool events list`")
    return count / elapsed, first, last


def next_heartbeat(spool: Path) -> float:
    """The monotonic time of the daemon's next chore round (the next compaction, when due)."""
    seen = read_status(spool).get("updated_at")
    while (now := read_status(spool).get("updated_at")) == seen or now is None:
        time.sleep(0.002)
    return time.monotonic() + HEARTBEAT


def compactions_in(journal: Path, first: int, last: int) -> int:
    """Compactions that cut the journal between records `first` and `last`."""
    cuts = {seq for seq, _ in list_archives(journal) + list_snapshots(journal)}
    return sum(first <= seq <= last for seq in cuts)


def aligned_burst(spool: Path, count: int, lead: float) -> tuple[float, int]:
    """A burst started `lead` seconds before the next chore round; events/s and the number
    of compactions that ran inside it."""
    rate, first, last = burst(spool, count, next_heartbeat(spool) - lead)
    return rate, compactions_in(spool / "journal", first, last)


def bursts(spool: Path, count: int, rounds: int, startups: list[float]) -> dict[str, object]:
    """Median events/s without and with a compaction in the burst, alternating daemons."""
    plain: list[float] = []
    compacting: list[float] = []
    overlaps = 0
    for r in range(rounds):
        with running_daemon(spool) as (_proc, startup):
            startups.append(startup)
            burst(spool, 50)  # warm both instances
            plain.append(aligned_burst(spool, count, 0.5)[0])
        with running_daemon(spool, *COMPACT_OFTEN) as (_proc, startup):
            startups.append(startup)
            burst(spool, 50)
            time.sleep(2 * HEARTBEAT)  # the compaction of the tail found at start is over
            for lead in (0.5, 0.25, 0.1):  # until a compaction lands inside the burst
                rate, inside = aligned_burst(spool, count, lead)
                if inside:
                    break
            compacting.append(rate)
            overlaps += inside > 0
        progress(f"  burst round {r + 1}: {plain[-1]:,.0f}/s plain, {rate:,.0f}/s compacting")
    return {
        "burst": statistics.median(plain),
        "burst compacting": statistics.median(compacting),
        "bursts with a compaction inside": f"{overlaps}/{rounds}",
    }


# -- one size, and the table ------------------------------------------------------------------


def measure(cache: Path, events: int, args: argparse.Namespace) -> dict[str, object]:
    """Every figure for one size."""
    spool, meta = cached_spool(cache, events)
    run = spool.parent / "run"
    progress(f"{size_name(events)}: cloning the cached spool")
    clone(spool, run)
    os.sync()  # the copied index written out now, not while the daemon starts
    figures: dict[str, object] = {"meta": meta, **baselines(args.repeat)}
    startups: list[float] = []
    try:
        with running_daemon(run) as (proc, startup):
            startups.append(startup)
            progress(f"{size_name(events)}: ready in {startup:.2f} s; reads")
            wait_indexed(run)
            indexer = indexer_pid(run)
            figures["daemon RSS"] = rss_mib(proc.pid)
            figures["indexer RSS"] = rss_mib(indexer)
            figures.update(reads(run, meta, args.repeat))
        progress(f"{size_name(events)}: bursts")
        figures.update(bursts(run, args.burst, args.rounds, startups))
        figures["start-up"] = statistics.median(startups)
    finally:
        if not args.keep:
            shutil.rmtree(run, ignore_errors=True)
    return figures


TARGETS = {
    "start-up": "<= 2 s",
    "daemon RSS": "<= 200 MiB",
    "events get ID": "<= 100 ms",
    "list": "<= 200 ms",
    "burst compacting": ">= 80 %",
}


def _ms(t: Timing) -> str:
    return f"{t.wall * 1000:.0f} ms (cpu {t.cpu * 1000:.0f})"


def rows(figures: dict[str, object]) -> dict[str, str]:
    """One size's column of the table."""
    meta = figures["meta"]
    assert isinstance(meta, dict)
    help_t = figures["fnspool --help"]
    assert isinstance(help_t, Timing)
    col = {
        "baseline: python -c pass": _ms(figures["python -c pass"]),  # type: ignore[arg-type]
        "baseline: fnspool --help": _ms(help_t),
        "build: journal written": f"{meta['generate_s']:.1f} s",
        "build: index (rebuild)": f"{meta['index_build_s']:.1f} s "
        f"({meta['events'] / meta['index_build_s']:,.0f}/s)",
    }
    for kind, size in meta["disk"].items():
        col[f"disk: {kind}"] = f"{size / (1 << 20):,.1f} MiB"
    col["start-up"] = f"{figures['start-up']:.2f} s"
    col["daemon RSS"] = f"{figures['daemon RSS']:.0f} MiB"
    col["indexer RSS"] = f"{figures['indexer RSS']:.0f} MiB"
    for name, value in figures.items():
        if name.startswith(("events get", "list")):
            col[name] = _read_cell(value, help_t)
    rate, compacting = float(figures["burst"]), float(figures["burst compacting"])  # type: ignore[arg-type]
    col["burst"] = f"{rate:,.0f}/s"
    col["burst compacting"] = f"{compacting:,.0f}/s ({compacting / rate:.0%})"
    col["bursts with a compaction inside"] = str(figures["bursts with a compaction inside"])
    return col


def _read_cell(value: object, help_t: Timing) -> str:
    if not isinstance(value, Read):
        return "unsupported"
    cell = f"{_ms(value.process)} {value.process.wall / help_t.wall:.2f}x help"
    if value.query is not None:
        cell += f"; in-process {value.query * 1000:.1f} ms"
    return cell + (f"; {value.process.lines} rows" if value.process.lines else "")


def print_table(results: dict[int, dict[str, object]]) -> None:
    """Figures by size, with the 10M target beside each."""
    columns = {size_name(n): rows(f) for n, f in results.items()}
    names = list(next(iter(columns.values())))
    width = max(len(n) for n in names) + 2
    cells = {c: max(len(c), *(len(v) for v in col.values())) + 2 for c, col in columns.items()}
    print(f"{'figure':{width}}{'target @10M':14}" + "".join(f"{c:{cells[c]}}" for c in columns))
    for name in names:
        target = next((t for k, t in TARGETS.items() if name.startswith(k)), "")
        values = "".join(f"{col.get(name, '-'):{cells[c]}}" for c, col in columns.items())
        print(f"{name:{width}}{target:14}{values}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="10k,100k,1M", help="e.g. 10k,100k,1M,10M")
    parser.add_argument(
        "--cache",
        type=Path,
        default=Path(tempfile.gettempdir()) / "fnspool-bench-growth",
        help="where built spools are kept between runs",
    )
    parser.add_argument("--repeat", type=int, default=7, help="runs of each CLI read")
    parser.add_argument("--burst", type=int, default=2000, help="events per burst")
    parser.add_argument("--rounds", type=int, default=3, help="bursts of each kind")
    parser.add_argument("--keep", action="store_true", help="keep the clones run on")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args()
    args.cache.mkdir(parents=True, exist_ok=True)
    # as installed: bytecode compiled (PYTHONDONTWRITEBYTECODE would compile each run anew)
    compileall.compile_dir(REPO / "daemon", quiet=1)
    results = {}
    for n in (parse_size(s) for s in args.sizes.split(",")):
        results[n] = measure(args.cache, n, args)
    print_table(results)
    if args.json:
        args.json.write_text(json.dumps({size_name(n): f for n, f in results.items()}, indent=1))


if __name__ == "__main__":
    main()
