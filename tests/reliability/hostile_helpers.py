"""Helpers for the hostile-input, misbehaving-function, abuse, clock, soak and model tests."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from conftest import PATIENCE, wait_for

from daemon.journal import JournalFollower, load_snapshot
from daemon.model import Request, State, Transition

FUNCTIONS = Path(__file__).parent / "functions"


def install_functions(spool: Path) -> None:
    """Copy the reliability test functions into the spool (before the daemon starts)."""
    shutil.copytree(FUNCTIONS, spool / "functions", dirs_exist_ok=True)


def fingerprint(root: Path) -> dict[str, tuple[int, int, str]]:
    """Every file under `root`: (mode, mtime_ns, sha256) by relative path, links not followed."""
    found = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            path = Path(dirpath) / name
            st = path.lstat()
            digest = ""
            if path.is_file() and not path.is_symlink():
                digest = hashlib.sha256(path.read_bytes()).hexdigest()
            found[str(path.relative_to(root))] = (st.st_mode, st.st_mtime_ns, digest)
    return found


def reasons(spool: Path) -> dict[str, dict[str, Any]]:
    """The reason files in rejected/, by the path of the file they set aside."""
    found = {}
    for path in (spool / "rejected").glob("*.reason.json"):
        try:
            reason = json.loads(path.read_text())
        except (OSError, ValueError):
            continue  # being written (they are renamed in, so this is rare)
        found[reason["file"]] = reason
    return found


class Journal:
    """A live reader of the spool's journal (the way the TUI follows it)."""

    def __init__(self, spool: Path) -> None:
        self.follower = JournalFollower(spool / "journal")
        # not load(): the records it reads would not be returned; these tests start before any
        # compaction, and a snapshot's events still come into `events`
        load_snapshot(spool / "journal", self.follower.state)
        self.records: list[Any] = []
        self.poll()

    def poll(self) -> list[Any]:
        """New records since the last poll."""
        new = self.follower.poll()
        self.records += new
        return new

    @property
    def events(self) -> dict[str, Any]:
        """The folded events."""
        return self.follower.state.events

    def enqueued_sources(self) -> Counter[str]:
        """How many Enqueued records each incoming path produced."""
        self.poll()
        return Counter(
            r.source.path
            for r in self.records
            if isinstance(r, Transition) and r.state is State.ENQUEUED and r.source is not None
        )

    def requests(self) -> list[Request]:
        """Every control answer so far."""
        self.poll()
        return [r for r in self.records if isinstance(r, Request)]

    def state_of(self, request_id: str) -> State | None:
        """The event's state now, or None while unknown."""
        self.poll()
        event = self.events.get(request_id)
        return event.state if event is not None else None

    def wait_state(self, request_id: str, *states: State, timeout: float = PATIENCE) -> Any:
        """Wait until the event is in one of `states`; return it."""
        wanted = set(states)
        wait_for(
            lambda: self.state_of(request_id) in wanted,
            timeout,
            f"{request_id} to reach {sorted(s.value for s in wanted)}",
        )
        return self.events[request_id]

    def close(self) -> None:
        """Close the open segment."""
        self.follower.close()


def drop_envelope(spool: Path, name: str, envelope: dict[str, Any]) -> None:
    """Write an envelope in tmp/ and rename it into incoming/."""
    temp = spool / "tmp" / f".{name}.tmp"
    temp.parent.mkdir(parents=True, exist_ok=True)
    temp.write_text(json.dumps(envelope))
    os.rename(temp, spool / "incoming" / name)


class Probe:
    """Measures, while a test abuses the daemon, how long a fresh event takes from drop to
    Succeeded (ingest + dispatch + run) and how late the daemon's 1 s heartbeat is (event loop
    stalls), from a thread, until stopped."""

    def __init__(self, spool: Path, function: str = "echo", every: float = 0.2) -> None:
        self.spool = spool
        self.function = function
        self.every = every
        self.latencies: list[float] = []
        self.heartbeat_gaps: list[float] = []
        self.failures: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._beats = threading.Thread(target=self._watch_heartbeat, daemon=True)

    def __enter__(self) -> Probe:
        self._thread.start()
        self._beats.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(60)
        self._beats.join(10)

    def _run(self) -> None:
        journal = Journal(self.spool)
        n = 0
        try:
            # at least one probe, however soon the test stops it (a fast intake did before this
            # thread ran: no probe at all)
            while n == 0 or not self._stop.is_set():
                n += 1
                rid = f"probe-{os.getpid()}-{n}-{time.monotonic_ns()}"
                started = time.monotonic()
                drop_envelope(
                    self.spool, f"{rid}.json", {"function": self.function, "payload": n, "id": rid}
                )
                try:
                    journal.wait_state(rid, State.SUCCEEDED, timeout=2 * PATIENCE)
                except AssertionError as exc:
                    self.failures.append(str(exc))
                    return
                self.latencies.append(time.monotonic() - started)
                self._stop.wait(self.every)
        finally:
            journal.close()

    def _watch_heartbeat(self) -> None:
        last = None
        status = self.spool / "run" / "status.json"
        while not self._stop.wait(0.02):
            try:
                updated = json.loads(status.read_text())["updated_at"]
            except (OSError, ValueError, KeyError):
                continue
            if last is not None and updated != last:
                self.heartbeat_gaps.append(updated - last)
            last = updated

    def figures(self) -> str:
        """The figures, for the test's output."""
        lat = sorted(self.latencies) or [float("nan")]
        gaps = self.heartbeat_gaps or [float("nan")]
        return (
            f"probe events: {len(self.latencies)}, drop->Succeeded median "
            f"{lat[len(lat) // 2] * 1000:.0f} ms, max {lat[-1] * 1000:.0f} ms; "
            f"heartbeat (1 s) max gap {max(gaps):.2f} s over {len(gaps)} beats"
        )

    def check(self) -> None:
        """Assert that probe events kept succeeding, each within the generous deadline (how
        fast they did is a figure: `figures()`, printed by the tests)."""
        assert not self.failures, self.failures
        assert self.latencies, "no probe event completed"


def rss_kb(pid: int) -> int:
    """Resident memory of `pid` in KiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def open_fds(pid: int) -> int:
    """How many descriptors `pid` holds."""
    return len(os.listdir(f"/proc/{pid}/fd"))


def read_bytes(pid: int) -> int:
    """Bytes `pid` has read through read(2) and friends so far (/proc/PID/io rchar)."""
    for line in Path(f"/proc/{pid}/io").read_text().splitlines():
        if line.startswith("rchar:"):
            return int(line.split()[1])
    return 0


def newest_pids(probe: int = 64) -> Iterator[int]:
    """Pids to read, the most recently handed out first: the last `probe` handed out (at once,
    without listing /proc: some are gone, or threads), then every other one listed. A pid hopper
    (a lineage that forks and exits again and again) has one of the last, and is gone from a pid
    read too late."""
    try:
        last = int(Path("/proc/sys/kernel/ns_last_pid").read_bytes())
        top = int(Path("/proc/sys/kernel/pid_max").read_bytes())
    except (OSError, ValueError):
        last, top = 0, 1 << 22
    newest = [(last - i - 1) % top + 1 for i in range(probe)] if last else []
    yield from newest
    listed = [int(e) for e in os.listdir("/proc") if e.isdigit()]
    yield from sorted(set(listed) - set(newest), key=lambda pid: (last - pid) % top)


def processes_with(
    needles: set[bytes], *, but: int, then: Callable[[int], object] | None = None
) -> set[int]:
    """Every live (non-zombie) process whose environment holds all of `needles`, except `but`,
    the newest first (see `newest_pids`); `then(pid)` is called on each as soon as it is found
    (SIGSTOP: it forks no more)."""
    found = set()
    for pid in newest_pids():
        if pid == but:
            continue
        try:
            with open(f"/proc/{pid}/environ", "rb") as f:
                environ = f.read()
            if all(n in environ for n in needles) and needles <= set(environ.split(b"\0")):
                status = dict(
                    line.split(b":", 1)
                    for line in Path(f"/proc/{pid}/status").read_bytes().split(b"\n")
                    if b":" in line
                )
                # a zombie is gone; a thread's pid is read too (not listed, but there): its process
                if not status[b"State"].strip().startswith(b"Z") and int(status[b"Tgid"]) == pid:
                    found.add(pid)
                    if then is not None:
                        then(pid)
        except (OSError, KeyError, ValueError):
            continue  # gone meanwhile, or never there
    return found
