"""Soak: payloads at a steady rate for a long time while a reader follows the journal live.
Memory and open descriptors stay flat after warm-up, nothing is lost, segments rotate and
compaction deletes them (issue 7). CI runs 12 s at 150/s; `-m slow` runs 10 min at 500/s."""

from __future__ import annotations

import os
import statistics
import threading
import time
from pathlib import Path

import pytest
from conftest import wait_for

from daemon.journal import JournalFollower, list_segments, list_snapshots
from daemon.model import State, Transition
from reliability.hostile_helpers import drop_envelope, open_fds, rss_kb


class Feeder(threading.Thread):
    """Drops `rate` envelopes a second for `seconds`, on a fixed schedule."""

    def __init__(self, spool: Path, rate: int, seconds: float) -> None:
        super().__init__(daemon=True)
        self.spool, self.rate, self.seconds = spool, rate, seconds
        self.sent = 0
        self.behind = 0.0  # the worst lag behind the schedule, in seconds

    def run(self) -> None:
        start = time.monotonic()
        total = int(self.rate * self.seconds)
        for n in range(total):
            due = start + n / self.rate
            now = time.monotonic()
            if due > now:
                time.sleep(due - now)  # pacing the feeder, not waiting on the daemon
            else:
                self.behind = max(self.behind, now - due)
            rid = f"soak-{n:07d}"
            drop_envelope(self.spool, f"{rid}.json", {"function": "echo", "payload": n, "id": rid})
            self.sent += 1


class Reader:
    """Follows the journal the way the TUI does: every Succeeded soak event it sees, live."""

    def __init__(self, spool: Path) -> None:
        self.follower = JournalFollower(spool / "journal")
        self.follower.load()
        self.succeeded: set[str] = set()
        self.reloads_seen = self.follower.reloads

    def poll(self) -> None:
        for rec in self.follower.poll():
            if isinstance(rec, Transition) and rec.state is State.SUCCEEDED:
                self.succeeded.add(rec.id)
        if self.follower.reloads != self.reloads_seen:
            # compaction outran the reader: it reloaded from the snapshot; take what it holds
            self.reloads_seen = self.follower.reloads
            self.succeeded.update(
                e.id for e in self.follower.state.events.values() if e.state is State.SUCCEEDED
            )


@pytest.mark.parametrize(
    ("rate", "seconds", "retention"),
    [
        pytest.param(150, 12, 4, id="12s-150/s", marks=pytest.mark.reliability),
        pytest.param(
            500, 600, 60, id="10min-500/s", marks=[pytest.mark.slow, pytest.mark.timeout(1200)]
        ),
    ],
)
def test_soak_memory_and_descriptors_flat_nothing_lost_segments_rotate_and_compact(
    spool, daemon, rate, seconds, retention
):
    d = daemon.start(
        "--segment-bytes",
        str(256 << 10),
        "--snapshot-every",
        str(rate * 10),  # records: about every 1.7 s of traffic
        "--retention",
        f"{retention}s",
    )
    pid = d.proc.pid
    reader = Reader(spool)
    feeder = Feeder(spool, rate, seconds)
    samples: list[tuple[float, int, int]] = []  # (seconds since start, RSS KiB, descriptors)
    segments_seen: set[str] = set()
    snapshots_seen: set[str] = set()
    start = time.monotonic()
    feeder.start()
    next_sample = start
    while feeder.is_alive():
        reader.poll()
        now = time.monotonic()
        if now >= next_sample:
            samples.append((now - start, rss_kb(pid), open_fds(pid)))
            segments_seen |= {p.name for _, p in list_segments(spool / "journal")}
            snapshots_seen |= {p.name for _, p in list_snapshots(spool / "journal")}
            next_sample += 1.0
        time.sleep(0.1)  # the reader's poll interval (the TUI's is the same)
    total = feeder.sent

    def all_seen():
        reader.poll()
        return len([i for i in reader.succeeded if i.startswith("soak-")]) >= total

    wait_for(all_seen, 120, f"the reader to see all {total} events succeed")
    segments_now = {p.name for _, p in list_segments(spool / "journal")}
    reader.follower.close()
    assert d.proc.poll() is None

    warm = [s for s in samples if s[0] >= seconds * 0.4]
    first, last = warm[: len(warm) // 3], warm[-(len(warm) // 3) :]
    rss_growth = statistics.median(s[1] for s in last) - statistics.median(s[1] for s in first)
    fd_growth = max(s[2] for s in warm) - min(s[2] for s in warm)
    missing = {f"soak-{n:07d}" for n in range(total)} - reader.succeeded
    print(
        f"\n{total} payloads at {rate}/s for {seconds} s (feeder at most {feeder.behind:.2f} s "
        f"behind); the reader saw all succeed ({reader.follower.reloads - 1} reloads after "
        f"compaction); daemon RSS {samples[0][1] / 1024:.0f} MiB at start, "
        f"{statistics.median(s[1] for s in first) / 1024:.1f} -> "
        f"{statistics.median(s[1] for s in last) / 1024:.1f} MiB after warm-up "
        f"(+{rss_growth / 1024:.1f}), descriptors {min(s[2] for s in warm)}-"
        f"{max(s[2] for s in warm)}; {len(segments_seen)} segments seen, {len(segments_now)} "
        f"left, {len(snapshots_seen)} snapshots"
    )
    assert not missing, sorted(missing)[:10]
    assert not [n for n in os.listdir(spool / "incoming") if n.endswith(".json")]
    assert len(segments_seen) >= 5, "segments did not rotate"
    deleted = segments_seen - segments_now
    assert len(deleted) >= 2 and min(segments_seen) in deleted, "compaction deleted no segment"
    assert len(snapshots_seen) >= 2
    assert rss_growth < 16 * 1024, f"daemon memory grew {rss_growth} KiB after warm-up"
    assert fd_growth <= 8, f"descriptors ranged over {fd_growth}"
    assert "Traceback" not in d.log_text()
