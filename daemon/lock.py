"""The single-daemon lock: an flock on run/lock (POSIX lockf locks vanish with any closed fd)."""

from __future__ import annotations

import contextlib
import fcntl
import os
from pathlib import Path

from daemon.atomic import write_whole


class LockHeld(Exception):
    """Another daemon holds the spool."""

    def __init__(self, pid: int | None) -> None:
        holder = f"pid {pid}" if pid else "another process"
        super().__init__(f"another fnspool daemon ({holder}) already serves this spool")
        self.pid = pid


def _read_pid(run_dir: Path) -> int | None:
    try:
        return int((run_dir / "daemon.pid").read_text().strip())
    except (OSError, ValueError):
        return None


def _flock_owner(fd: int) -> int | None:
    """The pid the kernel names as holding an flock on `fd`'s file (from /proc/locks), if any.

    The pid file is written just after the lock is taken, so a daemon that loses the race at
    start-up could read the previous holder's pid there; the kernel's table is never stale.
    """
    st = os.fstat(fd)
    ident = f"{os.major(st.st_dev):02x}:{os.minor(st.st_dev):02x}:{st.st_ino}"
    try:
        with open("/proc/locks") as f:
            for line in f:
                fields = line.split()
                # "1: FLOCK  ADVISORY  WRITE 4069 fe:00:2252965 0 EOF" ("->" marks a waiter)
                if len(fields) >= 6 and fields[1] == "FLOCK" and fields[5] == ident:
                    pid = int(fields[4])
                    return pid if pid > 0 else None
    except (OSError, ValueError):
        return None
    return None


def _holder_pid(fd: int, run_dir: Path) -> int | None:
    return _flock_owner(fd) or _read_pid(run_dir)


def acquire(run_dir: Path) -> int:
    """Take the lock and write our pid; return the lock's fd (keep it open). LockHeld if taken."""
    fd = os.open(run_dir / "lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o640)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        try:
            raise LockHeld(_holder_pid(fd, run_dir)) from None
        finally:
            os.close(fd)
    write_whole(run_dir / "daemon.pid", f"{os.getpid()}\n".encode())
    return fd


def release(run_dir: Path, fd: int) -> None:
    """Remove our pid file, then let the lock go (a pid file left behind names a dead daemon)."""
    with contextlib.suppress(FileNotFoundError):
        os.unlink(run_dir / "daemon.pid")
    os.close(fd)


def holder(run_dir: Path) -> int | None:
    """The pid of the daemon holding the lock, 0 when held by an unknown pid, None when free."""
    try:
        fd = os.open(run_dir / "lock", os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return _holder_pid(fd, run_dir) or 0
    finally:
        os.close(fd)
    return None
