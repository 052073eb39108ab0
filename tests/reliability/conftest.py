"""Helpers for the reliability matrix: seeded randomness, daemons under a wrapper (strace), real
file systems (ext4 on a loop device, a small tmpfs), and reading back what the journal holds."""

from __future__ import annotations

import contextlib
import json
import os
import random
import shutil
import struct
import subprocess
from collections import Counter
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest
from conftest import EXAMPLES, DaemonProcess, cgroup_names, remove_cgroups, wait_for

from daemon.journal import JournalFollower, JournalState
from daemon.model import State

E2E_FUNCTIONS = Path(__file__).resolve().parent.parent / "e2e_functions"
FS_IOC_SHUTDOWN = 0x8004587D  # _IOR('X', 125, __u32)
FS_GOING_NOLOGFLUSH = 2  # the log is not flushed: whatever was not fsynced is gone
ENDED = {State.SUCCEEDED, State.FAILED, State.EXPIRED, State.INVALID, State.STOPPED}


def seeded(name: str) -> random.Random:
    """A random generator whose seed is printed (pytest shows it on failure); FNSPOOL_SEED
    replays one."""
    seed = int(os.environ.get("FNSPOOL_SEED") or random.SystemRandom().randrange(1 << 32))
    print(f"{name}: seed {seed} (FNSPOOL_SEED={seed} replays it)")
    return random.Random(seed)


def need_root(*tools: str) -> None:
    """Skip unless root and every tool is on PATH."""
    if os.geteuid() != 0:
        pytest.skip("needs root (mounts, loop devices or ptrace)")
    for tool in tools:
        if shutil.which(tool) is None:
            pytest.skip(f"needs {tool} (Debian: .ci/run installs it)")


def make_spool(root: Path) -> Path:
    """The test spool's functions under `root` (as the `spool` fixture makes them)."""
    shutil.copytree(EXAMPLES, root / "functions", dirs_exist_ok=True)
    shutil.copytree(E2E_FUNCTIONS, root / "functions", dirs_exist_ok=True)
    return root


def feed(spool: Path, function: str, indexes: Sequence[int], *, stop: Any = None) -> list[int]:
    """Drop payloads {"i": n} the maildir way (tmp/, then rename); return those renamed in."""
    tmp, target = spool / "tmp", spool / "incoming" / function
    tmp.mkdir(parents=True, exist_ok=True)
    target.mkdir(parents=True, exist_ok=True)
    done = []
    for i in indexes:
        if stop is not None and stop.is_set():
            break
        try:
            temp = tmp / f".p{i:06d}.tmp"
            temp.write_bytes(b'{"i": %d, "pad": "%s"}' % (i, b"x" * 64))
            os.rename(temp, target / f"p{i:06d}.json")
        except OSError:
            break  # the file system went away under us (a shutdown)
        done.append(i)
    return done


def replay(spool: Path) -> JournalState:
    """What a reader finds in the journal (read-only: nothing is cut or set aside)."""
    follower = JournalFollower(spool / "journal")
    try:
        return follower.load()
    finally:
        follower.close()


def payload_counts(state: JournalState) -> Counter[int]:
    """How many events carry each payload index `i`."""
    return Counter(json.loads(bytes(e.payload))["i"] for e in state.events.values())


def all_ended(spool: Path, count: int) -> JournalState | None:
    """The journal's state once `count` events have ended, else None."""
    state = replay(spool)
    ended = sum(1 for e in state.events.values() if e.state in ENDED)
    return state if len(state.events) >= count and ended == len(state.events) else None


class Daemon(DaemonProcess):
    """The conftest's daemon process, with a wrapper command (strace), environment and log
    chosen, and its exit awaited with a deadline."""

    def __init__(
        self,
        spool: Path,
        prefix: Sequence[str] = (),
        env: dict[str, str] | None = None,
        log: Path | None = None,
    ):
        super().__init__(spool)
        self.prefix = list(prefix)
        self.env = env
        if log is not None:  # e.g. off a file system that is to be unmounted
            self.log = log

    def wait(self, timeout: float) -> int:
        """Wait for the process to exit; fail after `timeout` seconds."""
        assert self.proc is not None
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"daemon still running after {timeout}s") from None


class Daemons:
    """Starts `Daemon`s; `closing()` kills every one still running when its block ends (before
    the file system they use is unmounted)."""

    def __init__(self) -> None:
        self.started: list[Daemon] = []

    def __call__(
        self,
        spool: Path,
        *extra: str,
        prefix: Sequence[str] = (),
        wait_ready: bool = True,
        env: dict[str, str] | None = None,
        log: Path | None = None,
    ) -> Daemon:
        d = Daemon(spool, prefix, env, log)
        self.started.append(d)
        return d.start(*extra, wait_ready=wait_ready)

    def close(self) -> None:
        for d in self.started:
            d.close()
        # before the file system they ran on goes: their cgroups are named after their spools
        remove_cgroups(cgroup_names({d.spool for d in self.started}))
        self.started.clear()

    @contextlib.contextmanager
    def closing(self) -> Iterator[None]:
        try:
            yield
        finally:
            self.close()


@pytest.fixture
def daemons() -> Iterator[Daemons]:
    """Start `Daemon`s; every one still running is killed at the end."""
    started = Daemons()
    yield started
    started.close()


def run(*argv: str) -> str:
    """Run a system command; its stdout."""
    return subprocess.run(argv, check=True, capture_output=True, text=True, timeout=60).stdout


class LoopExt4:
    """ext4 in a file, on a loop device, mounted: the spool's file system in power-loss tests."""

    def __init__(self, where: Path, size_mb: int = 96) -> None:
        self.image = where / "ext4.img"
        self.mnt = where / "mnt"
        self.mnt.mkdir()
        with open(self.image, "wb") as f:
            f.truncate(size_mb << 20)
        run(
            "mkfs.ext4", "-q", "-F", "-E", "lazy_itable_init=0,lazy_journal_init=0", str(self.image)
        )
        self.dev = run("losetup", "--find", "--show", str(self.image)).strip()
        self.mounted = False
        self.mount()

    def mount(self) -> None:
        run("mount", "-t", "ext4", self.dev, str(self.mnt))
        self.mounted = True

    def remount_elsewhere(self) -> None:
        """Unmount, then mount the image from another loop device: after a reboot a disk may
        come back with another device number, and the spool must not care."""
        self.umount()
        old, self.dev = self.dev, run("losetup", "--find", "--show", str(self.image)).strip()
        run("losetup", "-d", old)
        self.mount()

    def shutdown(self) -> None:
        """FS_IOC_SHUTDOWN with NOLOGFLUSH: as if the power went, for everything not fsynced."""
        import fcntl

        fd = os.open(self.mnt, os.O_RDONLY | os.O_DIRECTORY)
        try:
            fcntl.ioctl(fd, FS_IOC_SHUTDOWN, struct.pack("I", FS_GOING_NOLOGFLUSH))
        finally:
            os.close(fd)

    def umount(self) -> None:
        if self.mounted:
            umount(self.mnt)
            self.mounted = False

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.umount()
        with contextlib.suppress(Exception):
            run("losetup", "-d", self.dev)


@pytest.fixture
def ext4(tmp_path: Path) -> Iterator[LoopExt4]:
    """A fresh ext4 file system on a loop device (root only)."""
    need_root("losetup", "mkfs.ext4", "mount")
    if not Path("/dev/loop-control").exists():
        pytest.skip("no loop devices here (/dev/loop-control)")
    fs = LoopExt4(tmp_path)
    try:
        yield fs
    finally:
        fs.close()


@contextlib.contextmanager
def tmpfs(path: Path, options: str) -> Iterator[Path]:
    """A tmpfs mounted at `path` with `options` (size=, nr_inodes=) for the block."""
    path.mkdir(parents=True, exist_ok=True)
    run("mount", "-t", "tmpfs", "-o", options, "tmpfs", str(path))
    try:
        yield path
    finally:
        umount(path)


def umount(path: Path) -> None:
    """Unmount `path`, again while a process that had files open there is still exiting."""

    def unmounted() -> bool:
        try:
            run("umount", str(path))
        except subprocess.CalledProcessError:
            return False
        return True

    wait_for(unmounted, what=f"{path} to unmount", every=0.1)
