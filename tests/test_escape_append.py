"""A payload appended in place is one event or one rejection, never two; a function's child that
forks at once, before the daemon could have moved it, still dies with its instance."""

from __future__ import annotations

import contextlib
import json
import os
import random
import shutil
import signal
import subprocess
import sys
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from conftest import (
    DaemonProcess,
    drop,
    events,
    gone,
    journal_records,
    wait_for,
    wait_for_async,
)
from test_ingest import SETTLE, FakeSink, reason, rejected_names

from daemon.cgroups import own_cgroup
from daemon.ingest import Ingestor
from daemon.model import State, Transition
from daemon.payload import Accepted
from daemon.spool import Spool

# writes each payload in place in incoming/echo/ in two or three write() calls, pausing between
APPENDER = r"""
import os, random, sys, time

folder, tag, count = sys.argv[1], sys.argv[2], int(sys.argv[3])
rng = random.Random(tag)
for n in range(count):
    digits = str(rng.randrange(10**8, 10**9))
    cut = rng.randrange(1, len(digits))
    chunks = [digits[:cut], digits[cut:]] + (["\n"] if n % 2 else [])
    path = os.path.join(folder, f"{tag}-{n}.json")
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    for chunk in chunks:
        os.write(fd, chunk.encode())
        time.sleep(rng.uniform(0.005, 0.05))
    os.close(fd)
    print(f"{tag}-{n}.json {digits}", flush=True)
"""


def _enqueued(spool: Path) -> list[tuple[str, str]]:
    """(file name, payload) of every event taken from incoming/echo/."""
    return [
        (rec.source.path.rsplit("/", 1)[1], bytes(rec.payload).decode())
        for rec in journal_records(spool, Transition)
        if rec.state == State.ENQUEUED
        and rec.source is not None
        and rec.source.path.startswith("incoming/echo/")
    ]


def _outcomes(spool: Path) -> Counter[str]:
    """Per file name, how many events and rejections it became."""
    seen: Counter[str] = Counter()
    for name, _ in _enqueued(spool):
        seen[name] += 1
    for why in (spool / "rejected").glob("*.reason.json"):
        seen[Path(json.loads(why.read_text())["file"]).name] += 1
    return seen


def test_payload_appended_in_place_is_one_event(spool: Path, daemon: DaemonProcess) -> None:
    daemon.start()
    folder = spool / "incoming" / "echo"
    wait_for(folder.is_dir, 20, "incoming/echo/")
    writers = [
        subprocess.Popen(
            [sys.executable, "-c", APPENDER, str(folder), f"w{i}", "40"],
            stdout=subprocess.PIPE,
            text=True,
        )
        for i in range(5)
    ]
    written: dict[str, str] = {}
    for proc in writers:
        out, _ = proc.communicate(timeout=120)
        assert proc.returncode == 0
        written.update(line.split() for line in out.splitlines())
    assert len(written) == 200
    wait_for(lambda: set(_outcomes(spool)) >= set(written), 60, "every payload handled")
    wait_for(lambda: not any(folder.iterdir()), 30, "incoming/echo/ emptied")
    outcomes = _outcomes(spool)
    assert {name: n for name, n in outcomes.items() if n != 1} == {}
    payloads = dict(_enqueued(spool))
    # each writer closed its file well within the settle time: taken whole
    assert {name: p for name, p in payloads.items() if p != written[name]} == {}


async def test_appended_after_it_was_taken_is_rejected_not_a_second_event(tmp_path: Path) -> None:
    sp = Spool(tmp_path / "spool")
    sp.create()
    (sp.incoming / "echo").mkdir()
    path = sp.incoming / "echo" / "late.json"
    sink = FakeSink()

    def append(batch: list[Accepted]) -> None:  # the writer comes back while it is journaled
        if sink.calls == 1:
            with open(path, "a") as f:
                f.write("34")

    sink.before_accept = append
    ing = Ingestor(sp, sink, settle=SETTLE, scan_interval=60.0)
    await ing.start()
    try:
        with open(path, "w") as f:  # closed: taken once it parses
            f.write("12")
        await wait_for_async(lambda: rejected_names(sp), what="the rest set aside")
    finally:
        await ing.stop()
    assert [bytes(a.payload) for a in sink.accepted] == [b"12"]
    assert rejected_names(sp) == ["late.json"] and not path.exists()
    why = reason(sp, "late.json")
    assert why["reason"] == "changed_after_taken" and "req-0" in why["message"]
    assert (sp.rejected / "late.json").read_text() == "1234"


# -- a function's child that forks at once -------------------------------------------------


def _cgroups_usable() -> bool:
    """Whether this process may make cgroup v2 groups with cgroup.kill (as the daemon will)."""
    own = own_cgroup()
    if own is None or os.geteuid() != 0:
        return False
    probe = own / f"fnspool-probe-{os.getpid()}"
    try:
        probe.mkdir()
    except OSError:
        return False
    usable = (probe / "cgroup.kill").exists()
    probe.rmdir()
    return usable


needs_cgroups = pytest.mark.skipif(
    not _cgroups_usable() or shutil.which("strace") is None or shutil.which("setsid") is None,
    reason="needs root, a writable cgroup v2 with cgroup.kill (Linux 5.14+), strace and setsid",
)


def _sleepers(seconds: str) -> list[int]:
    """The `sleep SECONDS` processes (SECONDS is unique to the test)."""
    found = []
    for entry in os.listdir("/proc"):
        with contextlib.suppress(OSError):
            if Path(f"/proc/{entry}/cmdline").read_bytes() == f"/bin/sleep\0{seconds}\0".encode():
                found.append(int(entry))
    return found


def _fleeing_function(spool: Path, then: str) -> str:
    """Define exec function `fleeing`: it starts a `sleep` in a session of its own with an empty
    environment as its very first action, then runs `then`; the sleep's unique SECONDS."""
    seconds = f"300.{random.randrange(10**6):06d}"
    script = f"setsid -f env -i /bin/sleep {seconds}; {then}"
    toml = f'runtime = "exec"\ncommand = ["sh", "-c", {json.dumps(script)}]\ncode = "."\n'
    (spool / "functions" / "fleeing.toml").write_text(toml + "timeout = 600\n")
    return seconds


def _slow_cgroup_move(daemon: DaemonProcess) -> None:
    """Hold the daemon for a second between spawning a child and its next step (the syscall that
    follows posix_spawn): what the child forks meanwhile must already be in its group."""
    daemon.prefix = ["strace", "-qq", "-o", "/dev/null", "-e", "trace=sched_setscheduler"]
    daemon.prefix += ["-e", "inject=sched_setscheduler:delay_exit=1000000"]


def _killed(pid: int) -> Callable[[], bool]:
    return lambda: gone(pid)


def _stop(d: DaemonProcess) -> None:
    """Stop the daemon under strace (killing strace alone would leave it running, detached)."""
    pid = d.pid
    if pid > 0 and d.proc is not None and d.proc.poll() is None:
        os.kill(pid, signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            d.proc.wait(60)
    d.close()


@needs_cgroups
def test_a_child_forked_at_once_dies_at_the_attempts_end(spool: Path, daemon: Any) -> None:
    seconds = _fleeing_function(spool, "echo done")
    d = DaemonProcess(spool)
    _slow_cgroup_move(d)
    d.start()
    try:
        drop(spool, "fleeing", "a.json", {})
        wait_for(lambda: [e for e in events(spool) if e["state"] == "Succeeded"], 60, "the event")
        found = _sleepers(seconds)
        assert len(found) <= 1
        for pid in found:  # when not yet gone, it is on its way out
            wait_for(_killed(pid), 20, "the escapee killed with its attempt's group")
    finally:
        for pid in _sleepers(seconds):
            os.kill(pid, signal.SIGKILL)  # never left running by a failure
        _stop(d)


@needs_cgroups
def test_a_child_forked_at_once_dies_when_the_next_daemon_starts(spool: Path, daemon: Any) -> None:
    seconds = _fleeing_function(spool, "sleep 600")
    d = DaemonProcess(spool)
    _slow_cgroup_move(d)
    d.start()
    try:
        drop(spool, "fleeing", "a.json", {})
        found = wait_for(lambda: _sleepers(seconds), 60, "the escapee to start")
        assert len(found) == 1 and not Path(f"/proc/{found[0]}/environ").read_bytes()
        os.kill(d.pid, signal.SIGKILL)
        wait_for(lambda: d.proc is not None and d.proc.poll() is not None, 30, "the daemon gone")
        assert not gone(found[0])  # nothing of the killed daemon stopped it
        daemon.start()  # its predecessor sweep empties the killed daemon's groups
        wait_for(_killed(found[0]), 20, "the escapee killed by the next daemon")
    finally:
        for pid in _sleepers(seconds):
            os.kill(pid, signal.SIGKILL)
        _stop(d)
