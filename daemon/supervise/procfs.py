"""What /proc tells of processes: children, descendants, tokens, liveness, the newest pids.

Every read tolerates a process that exits meanwhile: it is then simply not found.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator

from daemon.supervise.tokens import TOKEN_VAR

NEWEST = 64  # pids last handed out, read first in a sweep of /proc: a pid hopper has one of them


def read_int(path: str) -> int | None:
    """The integer in a /proc file, or None."""
    try:
        with open(path, "rb") as f:
            return int(f.read())
    except (OSError, ValueError):
        return None


def last_pid() -> int | None:
    """The pid last handed out (in this pid namespace), where the kernel tells."""
    return read_int("/proc/sys/kernel/ns_last_pid")


def children(pid: int) -> list[int]:
    """The live children of `pid` (of every thread of it)."""
    found: list[int] = []
    try:
        for task in os.listdir(f"/proc/{pid}/task"):
            with open(f"/proc/{pid}/task/{task}/children", "rb") as f:
                found.extend(int(child) for child in f.read().split())
    except (OSError, ValueError):
        pass  # it exited meanwhile
    return found


def descendants(pid: int) -> Iterator[int]:
    """Every live descendant of `pid` (whatever its session or group), found through /proc; each
    one before its children are read, so that it can be stopped first."""
    found: set[int] = set()
    todo = children(pid)
    while todo:
        current = todo.pop()
        if current not in found:
            found.add(current)
            yield current
            todo.extend(children(current))


def token_of(pid: int) -> str | None:
    """The supervisor token in the environment of `pid`, if it carries one."""
    prefix = f"{TOKEN_VAR}=".encode()
    try:
        with open(f"/proc/{pid}/environ", "rb") as f:
            for entry in f.read().split(b"\0"):
                if entry.startswith(prefix):
                    return entry[len(prefix) :].decode(errors="replace")
    except OSError:
        pass
    return None


def leads(pid: int) -> bool:
    """Whether `pid` is a process (the leader of its thread group), not one of its threads."""
    try:
        with open(f"/proc/{pid}/status", "rb") as f:
            for line in f:
                if line.startswith(b"Tgid:"):
                    return int(line.split()[1]) == pid
    except (OSError, ValueError, IndexError):
        pass
    return False


def alive(pid: int) -> bool:
    """Whether `pid` runs (a zombie does not)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            return f.read().rsplit(b")", 1)[1].split()[0] != b"Z"
    except (OSError, IndexError):
        return False


def carrying(match: Callable[[str], bool]) -> Iterator[int]:
    """Every live process whose token `match`es, the newest first: the last pids handed out are
    read at once (a pid hopper has one of them, and is gone from a pid read too late), then the
    rest of /proc."""
    last = last_pid() or 0
    top = read_int("/proc/sys/kernel/pid_max") or 1 << 22  # pids are handed out in turn to it
    newest = [(last - i - 1) % top + 1 for i in range(NEWEST)] if last else []
    yield from (pid for pid in newest if _carries(pid, match))
    listed = {int(entry) for entry in os.listdir("/proc") if entry.isdigit()} - set(newest)
    rest = sorted(listed, key=lambda pid: (last - pid) % top)
    yield from (pid for pid in rest if _carries(pid, match))


def _carries(pid: int, match: Callable[[str], bool]) -> bool:
    # a thread's id opens in /proc too (though not listed there): only its process counts
    token = token_of(pid) if pid != os.getpid() else None
    return token is not None and match(token) and leads(pid)
