"""Crashes: kill -9 while ingesting and while events run, and two daemons racing for one spool."""

from __future__ import annotations

import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import REPO, wait_for

pytestmark = pytest.mark.reliability


def _lock_rounds(spool: Path, rounds: int) -> None:
    spool.mkdir(exist_ok=True)
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


def test_lock_two_daemons_at_once_exactly_one_runs(tmp_path):
    _lock_rounds(tmp_path / "spool", 5)


@pytest.mark.slow
def test_lock_two_daemons_at_once_100_rounds(tmp_path):
    _lock_rounds(tmp_path / "spool", 100)
