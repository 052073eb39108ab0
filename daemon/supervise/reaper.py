"""What one supervisor spawned and what is left of it: trees killed, orphans killed and reaped.

As a child subreaper (the daemon only) the orphans of instances come to this process rather than
to init: those whose instance has ended are killed, and every exited one is reaped, on a short
timer (uvloop keeps SIGCHLD for itself).
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import itertools
import logging
import os
import signal
from collections.abc import Iterator
from pathlib import Path

from daemon.cgroups import Cgroups
from daemon.supervise import procfs
from daemon.supervise.kill import stop_then_kill

log = logging.getLogger(__name__)

_PR_SET_CHILD_SUBREAPER = 36
REAP_INTERVAL = 0.25  # seconds between looks at orphans: kill those of ended instances, reap


def become_subreaper() -> bool:
    """Make this process a child subreaper; False (logged) where it cannot be."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.prctl(_PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) != 0:
            log.warning("cannot become a child subreaper: errno %d", ctypes.get_errno())
            return False
    except (OSError, AttributeError) as exc:
        log.warning("cannot become a child subreaper: %s", exc)
        return False
    return True


class Reaper:
    """The children of one supervisor, their tokens and their emptied cgroups."""

    def __init__(self) -> None:
        self.adopting = False  # a subreaper: orphans come here, to be killed and reaped
        self._spawned: set[int] = set()  # pids spawned here and not yet reaped: never orphans
        self._live_tokens: set[str] = set()  # tokens of children not yet reaped: orphans may live
        self._emptied: set[Path] = (
            set()
        )  # groups killed, to be removed once their processes are gone

    @classmethod
    def adopt_orphans(cls, loop: asyncio.AbstractEventLoop) -> Reaper:
        """A reaper that makes this process (the daemon, from its main thread) a child
        subreaper: orphaned descendants of instances come to it, to be killed with their instance
        and reaped here. Not for a process that also runs other children (a test runner): their
        statuses would be taken."""
        reaper = cls()
        if become_subreaper():
            reaper.adopting = True

            def tick() -> None:
                reaper.reap_orphans()
                loop.call_later(REAP_INTERVAL, tick)

            loop.call_later(REAP_INTERVAL, tick)
        return reaper

    def spawned(self, pid: int, token: str) -> None:
        """Count `pid`, carrying `token`, among the live children."""
        self._spawned.add(pid)
        self._live_tokens.add(token)

    def emptied(self, group: Path) -> None:
        """`group` was killed: remove it once its processes are gone."""
        self._emptied.add(group)

    def kill_tree(self, pid: int, token: str, cgroup: Path | None) -> None:
        """SIGKILL the group led by `pid`, its descendants, its orphans and its cgroup."""
        self.kill_descendants(pid, token)
        if cgroup is not None:
            Cgroups.kill(cgroup)  # also what left the tree and cleared its environment

    def reaped(self, pid: int, token: str, cgroup: Path | None, *, kill_rest: bool) -> None:
        """`pid` was reaped; `kill_rest`: kill its orphans and what its cgroup holds."""
        if kill_rest:
            self._live_tokens.discard(token)  # orphans in transit: the reaper's next tick
            self.kill_descendants(None, token)  # its orphans, reparented to the daemon
            if cgroup is not None:
                Cgroups.kill(cgroup)
                self._emptied.add(cgroup)
        self._spawned.discard(pid)

    def kill_descendants(self, pid: int | None, token: str) -> int:
        """SIGKILL the group led by `pid`, all its descendants and the orphans marked `token`;
        first SIGSTOP them, round after round, so that nothing forks away meanwhile. How many
        were found."""
        if pid is not None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(pid, signal.SIGSTOP)
        stopped = stop_then_kill(
            lambda: itertools.chain(
                procfs.descendants(pid) if pid is not None else (), self._orphans(token)
            )
        )
        if stopped:
            log.info(
                "killed %d processes %s",
                len(stopped),
                f"descending from pid {pid}" if pid is not None else f"orphaned, marked {token}",
            )
        return len(stopped)

    def _orphans(self, token: str) -> Iterator[int]:
        """Processes reparented to this one that carry `token` (the newest first), and their
        descendants."""
        if not token:
            return
        for pid in reversed(procfs.children(os.getpid())):
            if pid not in self._spawned and procfs.token_of(pid) == token:
                yield pid
                yield from procfs.descendants(pid)

    def reap_orphans(self) -> None:
        """Kill the orphans whose instance has ended (one whose parent was exiting during the kill
        was in neither's list of children then), and reap the ones that exited."""
        if not self.adopting:
            return
        self.remove_emptied()
        for pid in procfs.children(os.getpid()):
            if pid in self._spawned:
                continue
            token = procfs.token_of(pid)
            if token and token not in self._live_tokens:
                self.kill_descendants(None, token)
        self.reap_exited()

    def reap_exited(self) -> None:
        """Reap the orphans that exited (as a subreaper only: else a child is someone else's)."""
        if not self.adopting:
            return
        for pid in procfs.children(os.getpid()):
            if pid not in self._spawned:
                with contextlib.suppress(ChildProcessError):
                    os.waitpid(pid, os.WNOHANG)

    def remove_emptied(self) -> bool:
        """Remove the killed groups whose processes are gone; whether none is left."""
        for group in list(self._emptied):
            if Cgroups.remove(group):
                self._emptied.discard(group)
        return not self._emptied
