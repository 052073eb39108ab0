"""One spawned process: its exit noticed through a pidfd on the event loop, reaped with `wait4`."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
from pathlib import Path
from typing import Protocol

import msgspec

log = logging.getLogger(__name__)

_POLL_INTERVAL = 0.05  # seconds, only where pidfd_open is missing


class ExitStatus(msgspec.Struct, frozen=True, kw_only=True):
    """How a child ended and what it cost over its whole life."""

    returncode: int  # as subprocess: negative for a signal
    cpu_ms: float
    max_memory_mb: float

    @property
    def exit_code(self) -> int | None:
        """The exit code, or None when a signal ended it."""
        return self.returncode if self.returncode >= 0 else None

    @property
    def signal(self) -> int | None:
        """The signal that ended it, or None on a normal exit."""
        return -self.returncode if self.returncode < 0 else None


class Keeper(Protocol):
    """What a child reports to (its supervisor's reaper): kills of its tree, its end."""

    def kill_tree(self, pid: int, token: str, cgroup: Path | None) -> None:
        """SIGKILL the child's group, its descendants, its orphans and its cgroup."""

    def reaped(self, pid: int, token: str, cgroup: Path | None, *, kill_rest: bool) -> None:
        """The child was reaped; `kill_rest`: kill what it left (orphans, its cgroup)."""


class Child:
    """A spawned process leading its own session and process group."""

    def __init__(
        self,
        pid: int,
        keeper: Keeper,
        *,
        kill_group_on_exit: bool,
        token: str = "",
        cgroup: Path | None = None,
    ) -> None:
        self.pid = pid
        self.token = token
        self.cgroup = cgroup
        self.status: ExitStatus | None = None
        self._keeper = keeper
        self._kill_group_on_exit = kill_group_on_exit
        self._loop = asyncio.get_running_loop()
        self.exited: asyncio.Future[ExitStatus] = self._loop.create_future()
        self._pidfd: int | None = None
        try:
            self._pidfd = os.pidfd_open(pid)
        except (AttributeError, OSError):
            self._loop.call_later(_POLL_INTERVAL, self._poll)
        else:
            self._loop.add_reader(self._pidfd, self._reap)

    @property
    def returncode(self) -> int | None:
        """The exit status once reaped (negative for a signal), else None."""
        return self.status.returncode if self.status else None

    def kill_group(self, sig: int) -> bool:
        """Send `sig` to the child's process group; False if it is already gone."""
        if self.status is not None:
            # reaped: the group id may belong to someone else by now
            return False
        if sig == signal.SIGKILL:
            self._keeper.kill_tree(self.pid, self.token, self.cgroup)
        try:
            os.killpg(self.pid, sig)
        except ProcessLookupError:
            return False
        except PermissionError:
            # the group leader is a zombie and every other member is gone
            return False
        return True

    async def wait(self) -> ExitStatus:
        """Wait until the child has exited and been reaped."""
        return await asyncio.shield(self.exited)

    def _poll(self) -> None:
        if not self._reap():
            self._loop.call_later(_POLL_INTERVAL, self._poll)

    def _reap(self) -> bool:
        """Reap the child if it has exited; True once it is."""
        if self.status is not None:
            return True
        if self._kill_group_on_exit:
            # before wait4: the zombie leader keeps the group id from being reused
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.pid, signal.SIGKILL)
        kill_rest = self._kill_group_on_exit
        try:
            pid, status, usage = os.wait4(self.pid, os.WNOHANG)
        except ChildProcessError:
            # reaped by someone else: the status is lost, the notification must not be
            log.warning("child %d was reaped elsewhere: exit status unknown", self.pid)
            pid, status, usage, kill_rest = self.pid, 255 << 8, None, False
        if pid == 0:
            return False
        self._keeper.reaped(self.pid, self.token, self.cgroup, kill_rest=kill_rest)
        self.status = ExitStatus(
            returncode=os.waitstatus_to_exitcode(status),
            cpu_ms=round((usage.ru_utime + usage.ru_stime) * 1000, 3) if usage else 0.0,
            max_memory_mb=round(usage.ru_maxrss / 1024, 2) if usage else 0.0,
        )
        self._close_pidfd()
        if not self.exited.done():
            self.exited.set_result(self.status)
        return True

    def _close_pidfd(self) -> None:
        if self._pidfd is not None:
            self._loop.remove_reader(self._pidfd)
            os.close(self._pidfd)
            self._pidfd = None
