"""What the runtimes share about their processes: a warm instance's one process (its child, its
output router, its memory watch, stop, signal, kill, reap), and the reap that every kill waits
for (the exec runtime's processes, one per attempt, use it too)."""

from __future__ import annotations

import asyncio
import logging
import signal
from typing import TypeVar

from daemon.errors import describe_exit, exited_early, memory_exceeded, process_exited, timed_out
from daemon.files.logfiles import LogSink
from daemon.functions import FunctionDef
from daemon.instances import InstanceState
from daemon.loops import LoopOnce
from daemon.model import ErrorInfo
from daemon.runtimes.base import InstanceBase
from daemon.runtimes.pipes import OutputRouter
from daemon.supervise.child import Child, ExitStatus
from daemon.supervise.memory import MemoryWatch
from daemon.supervise.supervisor import Supervisor

log = logging.getLogger(__name__)

REAP_GRACE = 10.0  # seconds to wait for a SIGKILLed group leader to be reaped


class TimedOut:
    """A reply slot's value when the deadline passed first."""


TIMED_OUT = TimedOut()


async def reaped(child: Child | None, who: str) -> ExitStatus | None:
    """`child`'s exit status once it is reaped, None if that takes over REAP_GRACE seconds."""
    if child is None:
        return None
    try:
        return await asyncio.wait_for(child.wait(), REAP_GRACE)
    except TimeoutError:
        log.error("%s: pid %d not reaped %.0fs after SIGKILL", who, child.pid, REAP_GRACE)
        return None


T = TypeVar("T")


def settle(future: asyncio.Future[T], value: T) -> None:
    """Give `future` its value unless it has one already."""
    if not future.done():
        future.set_result(value)


class ProcessInstance(InstanceBase, LoopOnce):
    """An instance that is one long-lived process group: started once, killed once."""

    def __init__(
        self,
        function: FunctionDef,
        *,
        log_cap: int,
        logs: LogSink | None,
        supervisor: Supervisor,
        start_timeout: float,
    ) -> None:
        super().__init__(function, log_cap=log_cap, logs=logs)
        self._supervisor = supervisor  # spawns the process
        self.start_timeout = start_timeout
        self._child: Child | None = None
        self._output: OutputRouter | None = None  # the process's stdout and stderr
        self._watch: MemoryWatch | None = None  # while it serves events, if memory_mb is set
        self._memory_used: float | None = None  # set when the memory watch killed it

    async def stop(self) -> None:
        """Kill the process group, reap it and release the rest; idempotent."""
        if self.state is not InstanceState.DEAD:
            self.state = InstanceState.STOPPING
        child = self._child
        if child is not None and child.status is None:
            child.kill_group(signal.SIGKILL)
            await reaped(child, f"instance {self.id}")
        await self._release()
        self.state = InstanceState.DEAD

    def signal(self, sig: int) -> bool:
        """Send `sig` to the process group; False if it is gone."""
        return self._child.kill_group(sig) if self._child is not None else False

    async def _release(self) -> None:
        """Let go of what the instance holds besides its process (its process is gone)."""
        if self._output is not None:
            self._output.close()

    def _started(self, child: Child, output: OutputRouter) -> None:
        """Take over a spawned `child` whose output `output` reads."""
        self._child, self.pid, self._output = child, child.pid, output
        child.exited.add_done_callback(self._on_exit)

    def _on_exit(self, exited: asyncio.Future[ExitStatus]) -> None:
        if self._output is not None:
            self._output.drain()
        if self.state not in (InstanceState.STOPPING, InstanceState.DEAD):
            status = exited.result()
            log.warning("instance %s exited on its own (%s)", self.id, describe_exit(status))
            self.state = InstanceState.DEAD

    def _kill(self) -> None:
        if self._child is not None:
            self._child.kill_group(signal.SIGKILL)

    async def _kill_and_reap(self) -> ExitStatus | None:
        self._kill()
        return await reaped(self._child, f"instance {self.id}")

    async def _timed_out(
        self, timeout: float, what: str = "Function"
    ) -> tuple[ErrorInfo, ExitStatus | None]:
        """Kill the process that ran past `timeout`; the error, and its status once reaped."""
        status = await self._kill_and_reap()
        return timed_out(timeout, what), status

    def _exit_error(self, duration_ms: float, status: ExitStatus) -> ErrorInfo:
        """Why an attempt failed whose process ended under it: its memory, or the exit."""
        if self._memory_used is not None:
            return memory_exceeded(self._memory_used, self.function.memory_mb)
        return process_exited(duration_ms, status)

    def _early_exit(self, before: str, status: ExitStatus, tail_chars: int | None) -> ErrorInfo:
        """The error of a process that ended before it was ready, quoting its output's end."""
        if self._output is not None:
            self._output.drain()
        tail = self._output.tail() if self._output is not None else ""
        return exited_early(before, status, tail[-tail_chars:] if tail_chars else tail)

    def _watch_memory(self) -> None:
        self._memory_used = None
        if self.function.memory_mb > 0 and self.pid is not None:
            self._watch = MemoryWatch(
                self.pid, self.function.memory_mb, self._over_memory, loop=self.loop
            )

    def _unwatch_memory(self) -> None:
        watch, self._watch = self._watch, None
        if watch is not None:
            watch.stop()

    def _over_memory(self, used_mb: float) -> None:
        log.warning("instance %s: %.0f MB resident, over memory_mb %d: killing it",
                    self.id, used_mb, self.function.memory_mb)  # fmt: skip
        self._memory_used, self._watch = used_mb, None
        self._kill()
