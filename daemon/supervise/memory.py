"""Resident memory of instances: a tree's total, a process's peak, and the `memory_mb` watch."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable

_PAGE_MB = os.sysconf("SC_PAGE_SIZE") / (1 << 20)


def peak_memory_mb(pid: int) -> float | None:
    """Peak resident memory (VmHWM) of a live process in MB, or None if unknown."""
    try:
        with open(f"/proc/{pid}/status", "rb") as f:
            for line in f:
                if line.startswith(b"VmHWM:"):
                    return round(int(line.split()[1]) / 1024, 2)
    except (OSError, ValueError, IndexError):
        return None
    return None


def tree_rss_mb(pid: int) -> float:
    """Resident memory of `pid` and all its descendants, in MB (0 for what is gone)."""
    total, todo, seen = 0.0, [pid], set()
    while todo:
        current = todo.pop()
        if current in seen:
            continue
        seen.add(current)
        try:
            with open(f"/proc/{current}/statm", "rb") as f:
                total += int(f.read().split()[1]) * _PAGE_MB
            for task in os.listdir(f"/proc/{current}/task"):
                with open(f"/proc/{current}/task/{task}/children", "rb") as f:
                    todo.extend(int(child) for child in f.read().split())
        except (OSError, ValueError, IndexError):
            continue  # it exited meanwhile
    return total


class MemoryWatch:
    """Polls a process tree's resident memory while it works; calls `on_exceed(used_mb)` once
    when it passes `limit_mb` (the caller kills it: MemoryLimitExceeded)."""

    interval = 0.05  # seconds

    def __init__(
        self,
        pid: int,
        limit_mb: float,
        on_exceed: Callable[[float], None],
        *,
        loop: asyncio.AbstractEventLoop | None = None,  # the running one, if the caller has it
    ) -> None:
        self.pid = pid
        self.limit_mb = limit_mb
        self.on_exceed = on_exceed
        self.peak_mb = 0.0
        self._loop = loop or asyncio.get_running_loop()
        # the first look after one interval: most events end sooner and cost nothing here
        self._timer: asyncio.TimerHandle | None = self._loop.call_later(self.interval, self._check)

    def _check(self) -> None:
        used = tree_rss_mb(self.pid)
        self.peak_mb = max(self.peak_mb, used)
        if used > self.limit_mb:
            self._timer = None
            self.on_exceed(used)
            return
        self._timer = self._loop.call_later(self.interval, self._check)

    def stop(self) -> None:
        """Stop watching."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
