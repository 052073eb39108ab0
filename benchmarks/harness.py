"""What the benchmarks share: a temporary spool with a no-op function, a daemon over it, payload
files dropped the way clients drop them, and a bounded wait for the events to end."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from daemon.journal import JournalFollower  # noqa: E402
from daemon.model import State, Transition  # noqa: E402

NOOP = "import time\n\ndef handler(event, context):\n    return {'t': time.monotonic()}\n"


def make_spool(root: Path) -> Path:
    """A spool under `root` with one python function, `noop`, on 2 instances."""
    spool = root / "spool"
    (spool / "functions" / "noop").mkdir(parents=True)
    (spool / "functions" / "noop.toml").write_text('handler = "index.handler"\nmax_instances = 2\n')
    (spool / "functions" / "noop" / "index.py").write_text(NOOP)
    return spool


def start_daemon(spool: Path) -> subprocess.Popen[bytes]:
    """Start the normal (durable) daemon over `spool` and wait until it says it is ready."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "daemon", "daemon", "--spool", str(spool)],
        cwd=REPO,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            if json.loads((spool / "run" / "status.json").read_text()).get("ready"):
                return proc
        except (OSError, ValueError):
            pass
        if proc.poll() is not None:
            raise SystemExit(f"the daemon exited with code {proc.returncode} while starting")
        time.sleep(0.01)
    stop_daemon(proc)
    raise SystemExit("the daemon did not become ready within 30 s")


def stop_daemon(proc: subprocess.Popen[bytes]) -> None:
    """SIGTERM (the daemon drains and stops its instances), SIGKILL if it is not gone in 30 s."""
    proc.terminate()
    try:
        proc.wait(30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


@contextmanager
def running_daemon(spool: Path) -> Iterator[subprocess.Popen[bytes]]:
    """A daemon over `spool` for the length of the block, stopped however the block ends."""
    proc = start_daemon(spool)
    try:
        yield proc
    finally:
        stop_daemon(proc)


def drop(staging: Path, target: Path, name: str, body: bytes) -> None:
    """Drop one payload as a client does: write it under `staging`, rename it into `target`."""
    temp = staging / f".{name}.tmp"
    fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644)
    try:
        os.write(fd, body)
    finally:
        os.close(fd)
    os.rename(temp, target / f"{name}.json")


def ended(follower: JournalFollower) -> tuple[int, list[Transition]]:
    """Events ended since the last call, and the end records of those that did not succeed
    (cheap: only the new records are read)."""
    done, failed = 0, list[Transition]()
    for rec in follower.poll():
        if isinstance(rec, Transition) and rec.state.terminal:
            done += 1
            if rec.state is not State.SUCCEEDED:
                failed.append(rec)
    return done, failed


def describe(rec: Transition) -> str:
    """One line on a failed event, from its end record: the spool is gone once the run ends."""
    why = f"{rec.error.type}: {rec.error.message}" if rec.error else rec.reason or "no reason"
    return f"{rec.id} {rec.state.value} ({why})"


def wait_ended(
    follower: JournalFollower,
    count: int,
    start: float,
    proc: subprocess.Popen[bytes],
    deadline: float = 120.0,
) -> float:
    """Seconds from `start` (perf_counter) until `count` more events ended, all Succeeded; exits
    with a message if some failed, the daemon died, or they did not end within `deadline`."""
    done, failed = 0, list[Transition]()
    while done < count:
        if time.perf_counter() - start > deadline:
            raise SystemExit(f"only {done} of {count} events ended within {deadline:.0f} s")
        if proc.poll() is not None:
            raise SystemExit(f"the daemon exited with code {proc.returncode} during a burst")
        time.sleep(0.005)
        more, bad = ended(follower)
        done, failed = done + more, failed + bad
    elapsed = time.perf_counter() - start
    if failed:
        raise SystemExit(
            f"{len(failed)} of {count} events did not succeed; the first: {describe(failed[0])}"
        )
    return elapsed
