"""Core figures, each beside a baseline measured in the same run (this machine is shared and noisy).

- baseline: a bare warm-worker pipe round trip (length-prefixed frames to a child python). On a
  virtual machine it moves with the load: a round trip to an idle CPU pays that CPU's wake-up
  (here 8 us with the other CPU busy, 70 us with both idle);
- baseline: creating a small file where the spool is. On ext4 without a journal (this machine's
  disk) it grows with the files deleted in the last minutes (each new inode skips the recently
  freed ones), so back-to-back runs are slower: the log file of each event pays it;
- burst: N no-op events dropped as files (tmp/ -> rename) into a running daemon with 2 instances,
  durable journaling on: events/s from the first rename until all have Succeeded;
- latency: an idle daemon, one file at a time: from its rename into incoming/ to its handler
  starting (CLOCK_MONOTONIC is shared by every process on the machine), p50 and p99.

Usage: python benchmarks/bench_core.py [--events 2000] [--samples 300]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import struct
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

from harness import REPO, Ends, make_spool, running_daemon, wait_ended

from daemon.journal import JournalFollower

ECHO_CHILD = textwrap.dedent(
    """
    import os, struct
    r, w = 0, 1
    while True:
        head = os.read(r, 4)
        if not head:
            break
        n = struct.unpack(">I", head)[0]
        body = os.read(r, n)
        os.write(w, struct.pack(">I", len(body)) + body)
    """
)


def pipe_baseline(rounds: int) -> float:
    """Round trips per second to a warm child over pipes, framed as the runtime frames."""
    child = subprocess.Popen(
        [sys.executable, "-c", ECHO_CHILD], stdin=subprocess.PIPE, stdout=subprocess.PIPE
    )
    assert child.stdin is not None and child.stdout is not None
    w, r = child.stdin.fileno(), child.stdout.fileno()
    body = json.dumps({"t": "invoke", "id": "x" * 36, "payload": {}}).encode()
    frame = struct.pack(">I", len(body)) + body
    start = time.perf_counter()
    for _ in range(rounds):
        os.write(w, frame)
        n = struct.unpack(">I", os.read(r, 4))[0]
        os.read(r, n)
    elapsed = time.perf_counter() - start
    child.stdin.close()
    child.wait()
    return rounds / elapsed


def file_create_baseline(directory: Path, count: int = 500) -> float:
    """Microseconds to create, write and close a small new file here (one log file per event)."""
    start = time.perf_counter()
    for i in range(count):
        fd = os.open(directory / f"f{i:06d}.log", os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC, 0o640)
        os.write(fd, b"x" * 150)
        os.close(fd)
    return (time.perf_counter() - start) / count * 1e6


_HZ = os.sysconf("SC_CLK_TCK")


def _cpu(stat_path: str) -> float:
    fields = Path(stat_path).read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / _HZ  # utime + stime


def cpu_split(pid: int) -> dict[str, float]:
    """CPU seconds so far of the daemon's event-loop thread, its other threads, its file helper
    and its instances."""
    main = _cpu(f"/proc/{pid}/task/{pid}/stat")
    split = {"event loop": main, "daemon threads": _cpu(f"/proc/{pid}/stat") - main}
    split["file helper"] = split["instances"] = 0.0
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            fields = Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()
            helper = b"daemon.files.filework" in Path(f"/proc/{entry}/cmdline").read_bytes()
        except OSError:
            continue
        if int(fields[1]) == pid:
            part = "file helper" if helper else "instances"
            split[part] += (int(fields[11]) + int(fields[12])) / _HZ
    return split


def burst(spool: Path, proc: subprocess.Popen[bytes], count: int, deadline: float = 120.0) -> float:
    """Events/s for `count` files renamed into incoming/ at once, until all Succeeded."""
    staging = spool / "tmp"
    names = []
    for i in range(count):
        path = staging / f".b{i:06d}.tmp"
        path.write_text(f'{{"n": {i}}}')
        names.append(path)
    target = spool / "incoming" / "noop"
    ends = Ends(spool / "journal")
    start = time.perf_counter()
    for i, path in enumerate(names):
        os.rename(path, target / f"b{i:06d}.json")
    return count / wait_ended(ends, count, start, proc, deadline)


def latency(spool: Path, samples: int) -> list[float]:
    """Milliseconds from a file's rename into incoming/ to its handler starting, one at a time."""
    follower = JournalFollower(spool / "journal")
    follower.load()
    target = spool / "incoming" / "noop"
    results = []
    for i in range(samples):
        temp = spool / "tmp" / f".l{i}.tmp"
        temp.write_text("{}")
        before = set(follower.state.events)
        t0 = time.monotonic()
        os.rename(temp, target / f"l{i:05d}.json")
        while True:
            follower.poll()
            new = [follower.state.events[k] for k in follower.state.events.keys() - before]
            if new and new[0].state.value == "Succeeded":
                break
            time.sleep(0.0005)
        handler_start = json.loads(bytes(new[0].result))["t"]
        results.append((handler_start - t0) * 1000)
        time.sleep(0.005)  # let the daemon go idle again
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=2000)
    parser.add_argument("--samples", type=int, default=300)
    parser.add_argument(
        "--dir",
        type=Path,
        default=REPO,
        help="where the spool is made (default: the checkout, like ./spool)",
    )
    args = parser.parse_args()
    baseline = pipe_baseline(5000)
    print(
        f"baseline  warm-worker pipe round trip: {baseline:,.0f}/s ({1e6 / baseline:.1f} us each)"
    )
    with tempfile.TemporaryDirectory(dir=args.dir, prefix=".bench-") as root:
        files = Path(root) / "files"
        files.mkdir()
        print(
            f"baseline  creating a small file in {args.dir}: "
            f"{file_create_baseline(files):.0f} us each"
        )
        spool = make_spool(Path(root))
        with running_daemon(spool) as proc:
            burst(spool, proc, 50)  # warm both instances
            before = cpu_split(proc.pid)
            rate = burst(spool, proc, args.events)
            after = cpu_split(proc.pid)
            print(
                f"burst     {args.events} files, 2 instances, durable: {rate:,.0f} events/s "
                f"({rate / baseline:.3f} of the baseline; target >= 5,000/s)"
            )
            where = ", ".join(
                f"{name} {(after[name] - before[name]) * 1e6 / args.events:.0f} us"
                for name in after
            )
            print(f"          CPU per event (10 ms ticks, so roughly): {where}")
            lat = sorted(latency(spool, args.samples))
            p50 = statistics.median(lat)
            p99 = lat[int(len(lat) * 0.99) - 1]
            base_us = 1e3 / baseline
            print(
                f"latency   rename -> handler start: p50 {p50:.3f} ms, p99 {p99:.3f} ms "
                f"(p50 = {p50 / base_us:.1f}x a pipe round trip; target p50 <= 1 ms)"
            )


if __name__ == "__main__":
    main()
