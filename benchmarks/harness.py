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


NOOP = "import time\n\ndef handler(event, context):\n    return {'t': time.monotonic()}\n"


def make_spool(root: Path, name: str = "spool") -> Path:
    """A spool `root/name` with one python function, `noop`, on 2 instances."""
    spool = root / name
    (spool / "functions" / "noop").mkdir(parents=True)
    (spool / "functions" / "noop.toml").write_text('handler = "index.handler"\nmax_instances = 2\n')
    (spool / "functions" / "noop" / "index.py").write_text(NOOP)
    return spool


def start_daemon(spool: Path, checkout: Path = REPO) -> subprocess.Popen[bytes]:
    """Start the normal (durable) daemon of `checkout` over `spool`; wait until it is ready."""
    env = dict(os.environ, PYTHONPATH=str(checkout))  # its own code, not this checkout's
    proc = subprocess.Popen(
        [sys.executable, "-m", "daemon", "daemon", "--spool", str(spool)],
        cwd=checkout,
        env=env,
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
def running_daemon(spool: Path, checkout: Path = REPO) -> Iterator[subprocess.Popen[bytes]]:
    """A daemon over `spool` for the length of the block, stopped however the block ends."""
    proc = start_daemon(spool, checkout)
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


SUCCEEDED = b'"state":"Succeeded"'
OTHER_ENDS = tuple(
    b'"state":"%s"' % s.encode() for s in ("Failed", "Expired", "Invalid", "Stopped")
)


class Ends:
    """Counts the end records appended to the journal from now on, by scanning the new bytes:
    as cheap as the peer's count query. Decoding every record cost the client 226 us per event
    here, CPU the daemon lacked on 2 CPUs."""

    def __init__(self, journal: Path) -> None:
        self.journal = journal
        self.succeeded = 0
        self.others: list[bytes] = []  # end lines of events that did not succeed
        self._offsets = {p.name: p.stat().st_size for p in journal.glob("segment-*.jsonl")}

    @property
    def count(self) -> int:
        """Events ended since this counter was made."""
        return self.succeeded + len(self.others)

    def poll(self) -> None:
        """Count the whole lines appended since the last poll."""
        for path in sorted(self.journal.glob("segment-*.jsonl")):
            offset = self._offsets.get(path.name, 0)
            try:
                with open(path, "rb") as segment:
                    segment.seek(offset)
                    data = segment.read()
            except FileNotFoundError:
                continue  # compacted away
            data = data[: data.rfind(b"\n") + 1]
            self._offsets[path.name] = offset + len(data)
            self.succeeded += data.count(SUCCEEDED)
            if any(end in data for end in OTHER_ENDS):
                lines = data.splitlines()
                self.others += [x for x in lines if any(end in x for end in OTHER_ENDS)]


def wait_ended(
    ends: Ends,
    count: int,
    start: float,
    proc: subprocess.Popen[bytes],
    deadline: float = 120.0,
) -> float:
    """Seconds from `start` (perf_counter) until `count` events ended, all Succeeded; exits
    with a message if some failed, the daemon died, or they did not end within `deadline`."""
    while ends.count < count:
        if time.perf_counter() - start > deadline:
            raise SystemExit(f"only {ends.count} of {count} events ended within {deadline:.0f} s")
        if proc.poll() is not None:
            raise SystemExit(f"the daemon exited with code {proc.returncode} during a burst")
        time.sleep(0.005)
        ends.poll()
    elapsed = time.perf_counter() - start
    if ends.others:
        first = ends.others[0].decode(errors="replace")
        raise SystemExit(
            f"{len(ends.others)} of {count} events did not succeed; the first: {first}"
        )
    return elapsed
