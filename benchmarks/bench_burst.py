"""A burst of no-op events, fnspool against Huey, rounds alternating, in the same run.

- fnspool: the normal (durable) daemon over a temporary spool, the python function `noop` on
  2 instances; the client drops N payload files (write in spool/tmp, rename into
  incoming/noop/). Timed from the first file written until the journal says all N ended.
- Huey (see peer_huey.py): SqliteHuey in the same temporary directory, a consumer with 2 worker
  processes; the client enqueues N calls of the same no-op task. Timed from the first enqueue
  until all N results are stored.
- --churn: first the client alone (write + rename of N files, no daemon) and fnspool's burst,
  then 200,000 small files created and deleted beside the spool (on ext4 each new inode then skips
  the recently freed ones), then the same two again; the target is fnspool's burst >= 80 % of
  the client-alone rate. The rounds follow the churn.

- --baseline REV: the daemon of another git revision bursts too, alternating, over a spool of
  its own; e.g. 7b0bfd3^ (the last revision before durable dispatch) prints what a dispatch
  that waits for its records to be on disk costs.

Usage: python benchmarks/bench_burst.py [--events 2000] [--rounds 3] [--churn] [--baseline REV]
Huey is a benchmark-only dependency: .venv/bin/pip install -e '.[bench]'
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import shutil
import statistics
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import NamedTuple

from harness import REPO, Ends, drop, make_spool, running_daemon, wait_ended
from peer_huey import INSTALL_HINT, Huey, running_huey

CHURN_BATCH = 10_000


def fnspool_burst(spool: Path, proc: subprocess.Popen[bytes], count: int, tag: str) -> float:
    """Events/s for `count` payload files dropped by the client, until all ended; prints the
    CPU per event of the daemon and of its file helper."""
    ends = Ends(spool / "journal")
    staging, target = spool / "tmp", spool / "incoming" / "noop"
    pids = {"daemon": proc.pid, **children(proc.pid)}
    before = {name: cpu_seconds(pid) for name, pid in pids.items()}
    start = time.perf_counter()
    for i in range(count):
        drop(staging, target, f"{tag}{i:06d}", b'{"n": %d}' % i)
    rate = count / wait_ended(ends, count, start, proc)
    used = {name: (cpu_seconds(pid) - before[name]) / count * 1e6 for name, pid in pids.items()}
    print("  cpu/event     " + "   ".join(f"{n} {us:.0f} us" for n, us in used.items()))
    return rate


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def children(pid: int) -> dict[str, int]:
    """The daemon's file helper and indexer processes, by name."""
    found = {}
    for entry in filter(str.isdigit, os.listdir("/proc")):
        try:
            ppid = int(Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()[1])
            command = Path(f"/proc/{entry}/cmdline").read_bytes()
        except (OSError, IndexError, ValueError):
            continue
        for name, module in (
            ("filework", b"daemon.files.filework"),
            ("indexer", b"daemon.indexer"),
        ):
            if ppid == pid and module in command:
                found[name] = int(entry)
    return found


def client_alone(root: Path, count: int) -> float:
    """Files/s for the client's part of a burst alone: the same writes and renames, no daemon."""
    staging, target = root / "client" / "tmp", root / "client" / "incoming" / "noop"
    target.mkdir(parents=True)
    staging.mkdir()
    start = time.perf_counter()
    for i in range(count):
        drop(staging, target, f"c{i:06d}", b'{"n": %d}' % i)
    rate = count / (time.perf_counter() - start)
    shutil.rmtree(root / "client")
    return rate


def churn(directory: Path, count: int) -> float:
    """Create and delete `count` small files in `directory`, in batches; return the seconds."""
    directory.mkdir()
    start = time.perf_counter()
    for first in range(0, count, CHURN_BATCH):
        names = [directory / f"f{i:07d}" for i in range(first, min(first + CHURN_BATCH, count))]
        for path in names:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC, 0o644)
            os.write(fd, b"x" * 150)
            os.close(fd)
        for path in names:
            path.unlink()
    directory.rmdir()
    return time.perf_counter() - start


def client_versus_daemon(
    root: Path, spool: Path, proc: subprocess.Popen[bytes], count: int, label: str, tag: str
) -> None:
    """Print the client-alone rate, fnspool's burst and their ratio."""
    alone = client_alone(root, count)
    rate = fnspool_burst(spool, proc, count, tag)
    print(
        f"{label:<14} client alone {alone:>8,.0f} files/s   fnspool burst {rate:>7,.0f} events/s"
        f"   burst/client {rate / alone:.2f} (target >= 0.80)"
    )


def with_churn(
    root: Path, spool: Path, proc: subprocess.Popen[bytes], count: int, files: int
) -> None:
    """Client alone against fnspool's burst, before and after a churn of `files` files."""
    client_versus_daemon(root, spool, proc, count, "without churn", "pre-")
    seconds = churn(root / "churn", files)
    print(f"churn          {files:,} small files created and deleted in {seconds:.1f} s")
    client_versus_daemon(root, spool, proc, count, "after churn", "post-")


class Baseline(NamedTuple):
    """Another checkout's daemon over a spool of its own, run beside this one's."""

    rev: str
    spool: Path
    proc: subprocess.Popen[bytes]


@contextmanager
def baseline_daemon(root: Path, rev: str | None) -> Iterator[Baseline | None]:
    """The daemon of git revision `rev` (a worktree under `root`), or None without one."""
    if rev is None:
        yield None
        return
    checkout = root / "baseline"
    git = ["git", "-C", str(REPO), "worktree"]
    subprocess.run([*git, "add", "--detach", "-q", str(checkout), rev], check=True)
    try:
        spool = make_spool(root, "baseline-spool")
        with running_daemon(spool, checkout) as proc:
            fnspool_burst(spool, proc, 50, "w")  # warm both instances
            yield Baseline(rev, spool, proc)
    finally:
        subprocess.run([*git, "remove", "--force", str(checkout)], check=False)


def rounds(
    spool: Path,
    proc: subprocess.Popen[bytes],
    peer: Huey,
    baseline: Baseline | None,
    count: int,
    n: int,
) -> None:
    """Alternate fnspool, the baseline's and Huey's bursts; print each round and the spread of
    the ratios."""
    ratios, to_baseline = [], []
    for r in range(1, n + 1):
        ours = fnspool_burst(spool, proc, count, f"r{r}-")
        line = f"round {r}        fnspool {ours:>7,.0f} events/s"
        if baseline is not None:
            before = fnspool_burst(baseline.spool, baseline.proc, count, f"r{r}-")
            to_baseline.append(ours / before)
            line += f"   at {baseline.rev} {before:>7,.0f} events/s"
        theirs = peer.burst(count)
        ratios.append(ours / theirs)
        print(f"{line}   Huey {theirs:>7,.0f} events/s   fnspool/Huey {ratios[-1]:.2f}")
    spread("fnspool/Huey", ratios, f"({n} round{'s' * (n > 1)} of {count} events)")
    if baseline is not None:
        spread(f"fnspool/{baseline.rev}", to_baseline, "(this checkout against the baseline)")


def spread(label: str, ratios: list[float], note: str) -> None:
    """One line: the min, median and max of `ratios`."""
    print(
        f"{label:<14} min {min(ratios):.2f}   median {statistics.median(ratios):.2f}"
        f"   max {max(ratios):.2f}   {note}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--churn", action="store_true", help="measure after a file churn too")
    parser.add_argument("--churn-files", type=int, default=200_000)
    parser.add_argument(
        "--baseline",
        metavar="REV",
        help="also burst the daemon of this git revision, alternating (e.g. 7b0bfd3^, the last "
        "before durable dispatch)",
    )
    parser.add_argument(
        "--dir",
        type=Path,
        default=REPO,
        help="where the spool is made (default: the checkout, like ./spool)",
    )
    args = parser.parse_args()
    if importlib.util.find_spec("huey") is None:
        raise SystemExit(INSTALL_HINT)

    load = os.getloadavg()[0]
    print(f"machine        {os.cpu_count()} CPUs, load average {load:.2f} at the start (shared)")
    with tempfile.TemporaryDirectory(dir=args.dir, prefix=".bench-") as tmp:
        root = Path(tmp)
        spool = make_spool(root)
        with (
            running_daemon(spool) as proc,
            running_huey(root) as peer,
            baseline_daemon(root, args.baseline) as baseline,
        ):
            fnspool_burst(spool, proc, 50, "w")  # warm both instances
            peer.burst(50)  # the consumer is up and its workers have run a task
            if args.churn:
                with_churn(root, spool, proc, args.events, args.churn_files)
            rounds(spool, proc, peer, baseline, args.events, args.rounds)


if __name__ == "__main__":
    main()
