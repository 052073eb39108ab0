"""Storage faults under a real daemon: power loss on ext4 (FS_IOC_SHUTDOWN), a full journal
file system (size and inodes), and EIO from fdatasync injected with strace. Root only: each test
skips with its reason elsewhere."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from conftest import wait_for

from daemon.journal_writer import SKIP_FDATASYNC_TEST_ONLY
from reliability.conftest import (
    LoopExt4,
    all_ended,
    feed,
    make_spool,
    need_root,
    payload_counts,
    seeded,
)

pytestmark = pytest.mark.reliability

NOISE = """
import os, sys
path = sys.argv[1]
while True:  # another writer fsyncing on the same file system: journal commits all the time
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    os.write(fd, b"n" * 4096)
    os.fsync(fd)
    os.close(fd)
"""


def incoming_names(spool: Path, function: str = "echo") -> set[int]:
    names = os.listdir(spool / "incoming" / function)
    return {int(n[1:7]) for n in names if re.fullmatch(r"p\d{6}\.json", n)}


class Feeder(threading.Thread):
    """Drops payloads (tmp/, rename) until told to stop or the file system fails."""

    def __init__(self, spool: Path, total: int, per_second: float) -> None:
        super().__init__(daemon=True)
        self.spool, self.total, self.per_second = spool, total, per_second
        self.stop = threading.Event()
        self.dropped: list[int] = []

    def run(self) -> None:
        t0 = time.monotonic()
        for start in range(0, self.total, 5):
            done = feed(
                self.spool, "echo", range(start, min(start + 5, self.total)), stop=self.stop
            )
            self.dropped.extend(done)
            if len(done) < 5:
                return
            ahead = t0 + (start + 5) / self.per_second - time.monotonic()
            if ahead > 0:
                time.sleep(ahead)


# -- power loss ---------------------------------------------------------------------------


def _power_loss(fs: LoopExt4, daemons, rng, *, skip_fdatasync: bool) -> dict[str, int]:
    """One power cut at a random instant while ingesting; what was acknowledged and what is left."""
    spool = make_spool(fs.mnt / "spool")
    env = {SKIP_FDATASYNC_TEST_ONLY: "1"} if skip_fdatasync else None
    log = fs.mnt.parent / "daemon.log"
    d = daemons(spool, env=env, log=log)
    noise = subprocess.Popen(
        [sys.executable, "-c", NOISE, str(fs.mnt / "noise")], stderr=subprocess.DEVNULL
    )
    feeder = Feeder(spool, 5000, per_second=1500)
    feeder.start()
    try:
        time.sleep(rng.uniform(0.3, 2.0))  # the instant of the cut is random on purpose
        fed = list(feeder.dropped)
        acknowledged = set(fed) - incoming_names(spool)  # taken out of incoming/ by the daemon
        fs.shutdown()
    finally:
        feeder.stop.set()
        d.close()  # the power is gone: nothing keeps running (killed, its log closed)
        noise.kill()
        noise.wait()
        feeder.join(30)
    fs.umount()
    fs.mount()
    daemons(spool, log=log)  # the real daemon, fdatasync included, replays what survived
    wait_for(lambda: not incoming_names(spool), 120, "incoming/ to be empty")
    state = wait_for(lambda: all_ended(spool, 0), 120, "every event to end")
    counts = payload_counts(state)
    lost = acknowledged - set(counts)
    twice = [i for i, n in counts.items() if n > 1]
    assert not twice, f"payloads journaled twice: {twice[:10]}"
    assert not state.illegal
    return {
        "fed": len(fed),
        "acknowledged": len(acknowledged),
        "events": len(counts),
        "lost": len(lost),
        "unacknowledged, gone with the power": len(set(fed) - acknowledged - set(counts)),
        "of those, rejected (renamed in, content never written)": len(
            os.listdir(spool / "rejected")
        )
        // 2,
    }


def test_power_loss_loses_nothing_acknowledged(ext4, daemons):
    rng = seeded("power-loss")
    figures = _power_loss(ext4, daemons, rng, skip_fdatasync=False)
    print(f"power-loss: {figures}")
    assert figures["acknowledged"] > 0, "the cut came before anything was taken"
    assert figures["lost"] == 0, f"acknowledged payloads lost at power loss: {figures}"


def test_power_loss_test_fails_without_the_journal_fdatasync(ext4, daemons):
    """The same cut with the journal's fdatasync skipped (a test-only knob) loses acknowledged
    payloads: the test above can fail."""
    rng = seeded("power-loss without fdatasync")
    figures = _power_loss(ext4, daemons, rng, skip_fdatasync=True)
    print(f"power-loss without the journal's fdatasync: {figures}")
    assert figures["lost"] > 0, f"nothing lost without fdatasync: the test proves nothing {figures}"


@pytest.mark.slow
def test_power_loss_rounds(tmp_path, daemons):
    need_root("losetup", "mkfs.ext4", "mount")
    rng = seeded("power-loss rounds")
    for round_ in range(8):
        (tmp_path / f"r{round_}").mkdir()
        fs = LoopExt4(tmp_path / f"r{round_}")
        try:
            figures = _power_loss(fs, daemons, rng, skip_fdatasync=False)
        finally:
            fs.close()
        print(f"power-loss round {round_}: {figures}")
        assert figures["lost"] == 0
