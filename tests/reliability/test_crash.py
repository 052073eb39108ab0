"""Crashes: kill -9 while ingesting and while events run, and two daemons racing for one spool."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path

import pytest
from conftest import REPO, drop, gone, note_spool, wait_for

from daemon.model import State
from reliability.conftest import all_ended, feed, make_spool, payload_counts, replay, seeded


def _lock_rounds(spool: Path, rounds: int) -> None:
    spool.mkdir(exist_ok=True)
    note_spool(spool)
    argv = [sys.executable, "-m", "daemon", "daemon", "--spool", str(spool)]
    loser_s: list[float] = []
    for round_ in range(rounds):
        t0 = time.monotonic()
        procs = [
            subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=REPO)
            for _ in range(2)
        ]
        try:
            exited = wait_for(
                lambda procs=procs: [p for p in procs if p.poll() is not None],
                60,
                "one daemon to exit",
            )
            loser_s.append(time.monotonic() - t0)
            assert len(exited) == 1, f"round {round_}: both daemons exited"
            (loser,) = exited
            (winner,) = [p for p in procs if p is not loser]
            err = loser.stderr.read().decode() if loser.stderr else ""
            assert loser.returncode != 0, f"round {round_}: the loser exited 0"
            assert f"pid {winner.pid}" in err, (
                f"round {round_}: the loser does not name the holder: {err}"
            )
            assert "Traceback" not in err
            assert winner.poll() is None, f"round {round_}: the winner is gone"
            winner.send_signal(signal.SIGTERM)
            assert winner.wait(30) == 0, f"round {round_}: the winner did not stop cleanly"
        finally:
            for p in procs:
                if p.poll() is None:
                    p.kill()
                    p.wait()
                for stream in (p.stdout, p.stderr):
                    if stream is not None:
                        stream.close()
    print(
        f"lock: {rounds} rounds, exactly one daemon each; the loser exited after "
        f"median {statistics.median(loser_s) * 1000:.0f} ms, max {max(loser_s) * 1000:.0f} ms "
        "(from both being started, Python start-up included)"
    )


@pytest.mark.reliability
def test_lock_two_daemons_at_once_exactly_one_runs(tmp_path):
    _lock_rounds(tmp_path / "spool", 5)


@pytest.mark.slow
def test_lock_two_daemons_at_once_100_rounds(tmp_path):
    _lock_rounds(tmp_path / "spool", 100)


# -- crash-ingest ---------------------------------------------------------------------------


def _crash_ingest(spool: Path, daemons, total: int, cycles: int) -> None:
    rng = seeded("crash-ingest")
    make_spool(spool)
    (spool / "incoming" / "echo").mkdir(parents=True)
    pace = total / (cycles * 1.1)  # payloads per second: the feeder drops through every cycle
    dropped: list[int] = []

    def feeder() -> None:
        t0 = time.monotonic()
        for start in range(0, total, 10):
            dropped.extend(feed(spool, "echo", range(start, min(start + 10, total))))
            ahead = t0 + (start + 10) / pace - time.monotonic()
            if ahead > 0:
                time.sleep(ahead)

    thread = threading.Thread(target=feeder)
    t0 = time.monotonic()
    thread.start()
    before_ready = 0
    try:
        for _ in range(cycles):
            d = daemons(spool, wait_ready=False)
            deadline = time.monotonic() + rng.uniform(0.05, 2.0)  # the moment is random
            was_ready = False
            while time.monotonic() < deadline:
                was_ready = was_ready or _is_ready(d)
                time.sleep(0.01)
            before_ready += not was_ready
            d.kill()  # SIGKILL
    finally:
        thread.join()
    assert dropped == list(range(total))
    daemons(spool)
    state = wait_for(
        lambda: not os.listdir(spool / "incoming" / "echo") and all_ended(spool, total),
        300,
        "every payload to be taken and run",
    )
    counts = payload_counts(state)
    lost = sorted(set(range(total)) - set(counts))
    twice = sorted(i for i, n in counts.items() if n > 1)
    assert not lost, f"{len(lost)} payloads lost, e.g. {lost[:10]}"
    assert not twice, f"{len(twice)} payloads are two events, e.g. {twice[:10]}"
    assert len(state.events) == total and not state.illegal
    assert not list((spool / "rejected").iterdir()), "a payload was rejected"
    states = Counter(e.state.value for e in state.events.values())
    interrupted = sum(
        1 for e in state.events.values() if any(h.reason == "Interrupted" for h in e.history)
    )
    assert states == {"Succeeded": total}, states
    print(
        f"crash-ingest: {cycles} kill -9 at 50-2000 ms ({before_ready} before the daemon was "
        f"ready), {total} payloads fed at {pace:.0f}/s: {total} events, none lost, none twice, "
        f"all Succeeded ({interrupted} re-run after Interrupted); {time.monotonic() - t0:.1f} s"
    )


def _is_ready(d) -> bool:
    try:
        return d.ready()
    except AssertionError:
        return False


@pytest.mark.reliability
def test_crash_ingest_kill_9_while_feeding(tmp_path, daemons):
    _crash_ingest(tmp_path / "spool", daemons, total=1000, cycles=5)


@pytest.mark.slow
def test_crash_ingest_kill_9_while_feeding_10000(tmp_path, daemons):
    _crash_ingest(tmp_path / "spool", daemons, total=10_000, cycles=30)


# -- crash-running --------------------------------------------------------------------------

HOLD_PY = """
import fcntl, os, time

def handler(event, context):
    locks = os.environ["LOCKS"]
    fd = os.open(os.path.join(locks, context.request_id), os.O_WRONLY | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # held while this attempt runs
    except BlockingIOError:
        with open(os.path.join(locks, "DOUBLE"), "a") as f:
            f.write(context.request_id + "\\n")
    with open(os.path.join(locks, "starts"), "a") as f:
        f.write(f"{context.request_id} {context.attempt} {os.getpid()}\\n")
    time.sleep(120 if context.attempt == 1 else 0.2)
    return {"attempt": context.attempt}
"""
# the same in sh for the exec runtime: fd 9 holds the lock until `sleep` (same pid) ends
HOLD_SH = (
    'exec 9>>"$LOCKS/$FNSPOOL_REQUEST_ID"; '
    'flock -n 9 || echo "$FNSPOOL_REQUEST_ID" >> "$LOCKS/DOUBLE"; '
    'echo "$FNSPOOL_REQUEST_ID $FNSPOOL_ATTEMPT $$" >> "$LOCKS/starts"; '
    'if [ "$FNSPOOL_ATTEMPT" = 1 ]; then exec sleep 120; fi; echo \'"done"\''
)


def _hold_functions(spool: Path, locks: Path, python: int, exec_: int) -> None:
    functions = spool / "functions"
    (functions / "hold").mkdir(parents=True)
    (functions / "hold" / "index.py").write_text(HOLD_PY)
    env = f'environment = {{ LOCKS = "{locks}" }}\n[async]\nmax_retries = 0\n'
    (functions / "hold.toml").write_text(
        f'handler = "index.handler"\ntimeout = 300\nmax_instances = {python}\nfreeze = false\n'
        + env
    )
    (functions / "holdx").mkdir()
    (functions / "holdx.toml").write_text(
        f'runtime = "exec"\ncommand = ["/bin/sh", "-c", {json.dumps(HOLD_SH)}]\n'
        f"timeout = 300\nmax_instances = {exec_}\n" + env
    )


@pytest.mark.reliability
def test_crash_running_kill_9_with_50_events_running(tmp_path, daemons):
    if shutil.which("flock") is None:
        pytest.skip("needs util-linux's flock")
    spool, locks = tmp_path / "spool", tmp_path / "locks"
    locks.mkdir()
    make_spool(spool)
    python, exec_ = 30, 20
    _hold_functions(spool, locks, python, exec_)
    d = daemons(spool)
    for i in range(python):
        drop(spool, "hold", f"h{i:02d}.json", {"i": i})
    for i in range(exec_):
        drop(spool, "holdx", f"x{i:02d}.json", {"i": python + i})
    total = python + exec_

    def running() -> list[str] | None:
        starts = (locks / "starts").read_text().split() if (locks / "starts").exists() else []
        state = replay(spool)
        on = [e for e in state.events.values() if e.state is State.RUNNING]
        return starts if len(on) == total and len(starts) == 3 * total else None

    starts = wait_for(running, 120, f"{total} events to be Running")
    pids = [int(p) for p in starts[2::3]]
    t_kill = time.monotonic()
    d.kill()  # SIGKILL: nothing of the daemon runs after this
    restarted = daemons(spool, wait_ready=False)  # at once: the old attempts may still run
    survivors = wait_for(
        lambda: not [p for p in pids if not gone(p)] or None, what="every instance to die"
    )
    died_ms = (time.monotonic() - t_kill) * 1000
    wait_for(restarted.ready, 60, "the daemon to be ready again")
    state = wait_for(lambda: all_ended(spool, total), 120, "every event to end")
    assert not (locks / "DOUBLE").exists(), (
        f"ran twice at once: {(locks / 'DOUBLE').read_text().split()}"
    )
    for event in state.events.values():
        reasons = [(h.state.value, h.reason) for h in event.history]
        assert event.state is State.SUCCEEDED, f"{event.id}: {reasons}"
        assert ("Retrying", "Interrupted") in reasons, f"{event.id}: {reasons}"
        assert event.attempts == 2, f"{event.id}: {event.attempts} attempts"
    assert not state.illegal
    assert survivors
    print(
        f"crash-running: kill -9 with {total} events Running ({python} python, {exec_} exec): "
        f"every instance gone {died_ms:.0f} ms after the kill; all {total} re-run after "
        "Interrupted, then Succeeded, on attempt 2 (no retry used); none ran twice at once"
    )


SPAWNER_PY = """
import os, subprocess, time

def handler(event, context):
    child = subprocess.Popen(["sleep", "300"])  # in the instance's process group
    with open(os.environ["PIDS"], "a") as f:
        f.write(f"{os.getpid()} {child.pid}\\n")
    time.sleep(300 if context.attempt == 1 else 0)
    child.kill()
    child.wait()
"""


@pytest.mark.reliability
def test_crash_running_children_of_instances_die_with_the_daemon(tmp_path, daemons):
    spool, pids = tmp_path / "spool", tmp_path / "pids"
    make_spool(spool)
    (spool / "functions" / "spawner").mkdir()
    (spool / "functions" / "spawner" / "index.py").write_text(SPAWNER_PY)
    (spool / "functions" / "spawner.toml").write_text(
        f'handler = "index.handler"\ntimeout = 600\nmax_instances = 3\nfreeze = false\n'
        f'environment = {{ PIDS = "{pids}" }}\n'
    )
    d = daemons(spool)
    for i in range(3):
        drop(spool, "spawner", f"s{i}.json", {"i": i})
    wait_for(lambda: pids.exists() and len(pids.read_text().split()) == 6, 60, "3 children")
    children = [int(p) for p in pids.read_text().split()[1::2]]
    d.kill()
    daemons(spool)  # the restarted daemon could sweep what the old one left
    try:
        wait_for(lambda: all(gone(p) for p in children), what="the instances' children to die")
    finally:
        for pid in children:  # this test's own leftovers: never left running
            if not gone(pid):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)


@pytest.mark.reliability
def test_the_same_file_copied_again_with_its_mtime_is_a_new_payload(tmp_path, daemons):
    """`cp -p`, tar and rsync -t keep the mtime, and a freed inode is soon reused: a copy can
    carry the identity of a file already taken. Only a crash's leftover may be dropped for it,
    also right after a restart."""
    spool = make_spool(tmp_path / "spool")
    target = spool / "incoming" / "echo" / "job.json"
    inodes = []

    def copy_in() -> None:
        temp = spool / "tmp" / ".job.tmp"
        temp.write_bytes(b'{"same": "bytes"}')
        os.utime(temp, ns=(1_700_000_000 * 10**9, 1_700_000_000 * 10**9))
        inodes.append(temp.stat().st_ino)
        os.rename(temp, target)
        wait_for(lambda: not target.exists(), 30, "the copy to be taken")

    copies = 0
    for _ in range(3):  # a restart between rounds: the journal already holds the identity
        d = daemons(spool)
        for _ in range(10):
            copy_in()
            copies += 1
        assert d.stop() == 0
    state = all_ended(spool, copies)
    assert state is not None and len(state.events) == copies, (
        f"{copies - len(replay(spool).events)} copies silently dropped"
    )
    print(
        f"same-identity copies: {copies} copied in over 3 daemon runs ({len(set(inodes))} "
        f"inodes), {len(state.events)} events"
    )


# -- no unrecorded run ----------------------------------------------------------------------


def _crash_runs(spool: Path, daemons, total: int, cycles: int) -> None:
    """kill -9 while a burst runs; every run a handler made (its line in an O_APPEND marker
    file) must be an attempt in the journal: a re-run after a crash is an Interrupted attempt."""
    rng = seeded("crash-runs")
    make_spool(spool)
    marker = spool.parent / "runs.txt"
    target, tmp = spool / "incoming" / "marker", spool / "tmp"
    target.mkdir(parents=True)
    tmp.mkdir()
    for i in range(total):
        (tmp / f".m{i}").write_text(json.dumps({"i": i, "marker": str(marker)}))
        os.rename(tmp / f".m{i}", target / f"m{i:05d}.json")
    for _ in range(cycles):
        d = daemons(spool, wait_ready=False)
        wait_for(lambda: marker.exists(), 60, "a first run")
        time.sleep(rng.uniform(0.05, 0.6))  # the moment of the kill is random, not a wait
        d.kill()
    daemons(spool)
    state = wait_for(lambda: all_ended(spool, total), 300, "every event to end")
    runs = Counter(marker.read_text().split())
    attempts = {
        e.id: sum(1 for h in e.history if h.state is State.RUNNING) for e in state.events.values()
    }
    unrecorded = {i: (n, attempts.get(i, 0)) for i, n in runs.items() if n > attempts.get(i, 0)}
    assert not unrecorded, f"{len(unrecorded)} events ran more often than the journal shows: " + (
        ", ".join(f"{i} ran {n}x, {a} attempts" for i, (n, a) in list(unrecorded.items())[:5])
    )
    assert Counter(e.state.value for e in state.events.values()) == {"Succeeded": total}
    again = sum(1 for n in runs.values() if n > 1)
    print(
        f"crash-runs: {cycles} kill -9 during a burst of {total}: {sum(runs.values())} runs, "
        f"{again} events ran more than once, each run an attempt in the journal"
    )


@pytest.mark.reliability
def test_every_run_is_in_the_journal_across_kill_9(tmp_path, daemons):
    _crash_runs(tmp_path / "spool", daemons, total=1500, cycles=6)
