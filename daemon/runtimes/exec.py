"""The exec runtime: one process per attempt, the payload on its stdin, the result from its stdout.

Exit code 0 is success; anything else fails the attempt with the end of stderr in the error.
stderr also goes to the event's log. The instance owns no process while idle, so it is cheap to
keep, and a timeout or a crash costs only its own attempt.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import time
from pathlib import Path

import msgspec

from daemon.errors import (
    ErrorType,
    cannot_start,
    describe_exit,
    error,
    memory_exceeded,
    timed_out,
    unavailable,
)
from daemon.files.logfiles import LogSink
from daemon.functions import FunctionDef, run_folder
from daemon.instances import SERVING, InstanceState
from daemon.limits import MAX_VALUE_BYTES, result_too_large
from daemon.model import Usage
from daemon.runtimes.base import (
    LOG_CAP,
    EventLog,
    HookOutcome,
    InstanceBase,
    Outcome,
)
from daemon.runtimes.command import (
    as_result,
    bound_to_daemon,
    command_account,
    command_argv,
    command_env,
)
from daemon.runtimes.pipes import OutputRouter, read_some
from daemon.runtimes.process import reaped
from daemon.supervise.child import Child, ExitStatus
from daemon.supervise.memory import MemoryWatch
from daemon.supervise.supervisor import Supervisor
from daemon.users import Account

log = logging.getLogger(__name__)

STDERR_TAIL = 1000  # characters of stderr quoted in a failed attempt's error
_READ_SIZE = 1 << 16


class ExecInstance(InstanceBase):
    """Runs a function's `command` once per attempt (the pool gives each instance one at a time)."""

    kind = "exec"

    def __init__(
        self,
        function: FunctionDef,
        *,
        log_cap: int = LOG_CAP,
        logs: LogSink | None = None,
        supervisor: Supervisor,
    ) -> None:
        super().__init__(function, log_cap=log_cap, logs=logs)
        self._supervisor = supervisor  # spawns each attempt's process
        self._argv: list[str] = []
        self._account: Account | None = None  # who the command runs as (None: the daemon)
        self._running: set[Child] = set()

    async def start(self, *, request_id: str | None = None, log_path: Path | None = None) -> None:
        """Check that the command can run (InstanceStartError if not); no process starts."""
        self._argv = command_argv(self.function)
        self._account = command_account(self.function, self._argv)
        self.state = InstanceState.IDLE
        self.started_at = time.time()
        self.last_used = time.monotonic()

    async def invoke(
        self, request_id: str, payload: msgspec.Raw, attempt: int, timeout: float, log_path: Path
    ) -> Outcome:
        """Run the command once with the payload on stdin; stderr goes to the event's log."""
        if self.state not in SERVING or len(self._running) >= self.function.concurrency:
            return self._unavailable(request_id)
        event_log = self._event_log(log_path)
        event_log.platform(f"FC Invoke Start RequestId: {request_id}")
        began = time.monotonic()
        try:
            run = _Run(self._argv, self._env(request_id, attempt, timeout), payload, event_log)
            run.spawn(self._supervisor, run_folder(self.function), self._account)
        except OSError as exc:
            event_log.platform(f"FC Invoke End RequestId: {request_id}")
            event_log.close()
            failed = cannot_start(self._argv[0], exc)
            return Outcome(ok=False, error=failed, usage=Usage(duration_ms=0.0))
        assert run.child is not None
        self._running.add(run.child)
        self.pid, self.state = run.child.pid, InstanceState.BUSY
        if self.function.memory_mb > 0:
            run.watch_memory(self.function.memory_mb)
        try:
            status, deadline_passed = await run.wait(timeout)
        except asyncio.CancelledError:
            run.child.kill_group(signal.SIGKILL)  # the attempt is cut off, and its processes
            raise
        finally:
            self._running.discard(run.child)
            run.close()
            event_log.platform(f"FC Invoke End RequestId: {request_id}")
            event_log.close()
            self.last_used = time.monotonic()
            if not self._running and self.state is InstanceState.BUSY:
                self.pid, self.state = None, InstanceState.IDLE
        self.events_served += 1
        duration = round((time.monotonic() - began) * 1000, 3)
        return _outcome(run, status, deadline_passed, duration, timeout, self.function.memory_mb)

    async def run_hook(
        self, hook: str, *, request_id: str, log_path: Path | None = None
    ) -> HookOutcome:
        """No hooks: a process per attempt has nothing to initialize, freeze or stop."""
        return HookOutcome(hook=hook, ok=True, started=time.time(), duration_ms=0.0)

    async def stop(self) -> None:
        """Kill every attempt still running and wait for them; idempotent."""
        if self.state is not InstanceState.DEAD:
            self.state = InstanceState.STOPPING
        for child in list(self._running):
            child.kill_group(signal.SIGKILL)
        for child in list(self._running):
            await reaped(child, f"instance {self.id}")
        self.state = InstanceState.DEAD

    def signal(self, sig: int) -> bool:
        """Send `sig` to the process group of every running attempt; False if there is none."""
        sent = [child.kill_group(sig) for child in list(self._running)]
        return any(sent)

    def _env(self, request_id: str, attempt: int, timeout: float) -> dict[str, str]:
        return command_env(
            self.function,
            self.id,
            {
                "FNSPOOL_REQUEST_ID": request_id,
                "FNSPOOL_ATTEMPT": str(attempt),
                "FNSPOOL_TIMEOUT_MS": str(int(timeout * 1000)),
            },
            self._account,
        )

    def _unavailable(self, request_id: str) -> Outcome:
        log.error("instance %s asked to run %s while %s with %d attempts running",
                  self.id, request_id, self.state, len(self._running))  # fmt: skip
        message = f"instance {self.id} is {self.state} with {len(self._running)} attempts running"
        lost = self.state not in SERVING
        return Outcome(
            ok=False, error=unavailable(message), usage=Usage(duration_ms=0.0), instance_lost=lost
        )


class _Run:
    """One attempt's process: stdin from a memory file, stdout collected, stderr routed."""

    def __init__(
        self, argv: list[str], env: dict[str, str], payload: msgspec.Raw, event_log: EventLog
    ) -> None:
        self.argv, self.env, self.payload, self.event_log = argv, env, payload, event_log
        self.child: Child | None = None
        self.stdout = bytearray()
        self.stdout_size = 0
        self._stdout_fd: int | None = None
        self._stderr: OutputRouter | None = None
        self.memory_used: float | None = None  # set when the memory watch killed it
        self._watch: MemoryWatch | None = None

    def spawn(self, supervisor: Supervisor, cwd: str, user: Account | None) -> None:
        """Start the process (as `user` when given); OSError if it cannot be."""
        # a memory file rather than a pipe: nothing to feed while the process runs, and a
        # program that never reads its stdin cannot block the daemon or get SIGPIPE
        stdin = os.memfd_create("fnspool-payload", os.MFD_CLOEXEC)
        out_r, out_w = os.pipe2(os.O_CLOEXEC)
        err_r, err_w = os.pipe2(os.O_CLOEXEC)
        try:
            view = memoryview(bytes(self.payload))
            while view:
                view = view[os.write(stdin, view) :]
            os.lseek(stdin, 0, os.SEEK_SET)
            fds = {0: stdin, 1: out_w, 2: err_w}
            bound = bound_to_daemon(self.argv)
            self.child = supervisor.spawn(bound, self.env, fds, cwd=cwd, user=user)
        except BaseException:
            os.close(out_r)
            os.close(err_r)
            raise
        finally:
            for fd in (stdin, out_w, err_w):
                os.close(fd)
        self._stdout_fd = out_r
        os.set_blocking(out_r, False)
        asyncio.get_running_loop().add_reader(out_r, self._read_stdout)
        self._stderr = OutputRouter({err_r: "stderr"}, f"exec pid {self.child.pid}")
        self._stderr.attach(self.event_log)

    def watch_memory(self, limit_mb: int) -> None:
        """Kill the process group if it grows past `limit_mb` resident."""
        assert self.child is not None
        self._watch = MemoryWatch(self.child.pid, limit_mb, self._over_memory)

    def _over_memory(self, used_mb: float) -> None:
        assert self.child is not None
        log.warning("exec pid %d: %.0f MB resident, over memory_mb: killing it",
                    self.child.pid, used_mb)  # fmt: skip
        self.memory_used, self._watch = used_mb, None
        self.child.kill_group(signal.SIGKILL)

    async def wait(self, timeout: float) -> tuple[ExitStatus | None, bool]:
        """The exit status, and whether the deadline killed it first."""
        assert self.child is not None
        try:
            return await asyncio.wait_for(self.child.wait(), timeout), False
        except TimeoutError:
            self.child.kill_group(signal.SIGKILL)
            return await reaped(self.child, f"exec pid {self.child.pid}"), True

    def stderr_tail(self) -> str:
        """The end of what the process wrote to stderr."""
        tail = self._stderr.tail() if self._stderr is not None else ""
        return tail[-STDERR_TAIL:]

    def close(self) -> None:
        """Take what is left in the pipes and close them (the process group is gone by now)."""
        if self._watch is not None:
            self._watch.stop()
            self._watch = None
        while self._stdout_fd is not None and self._read_stdout():
            pass
        if self._stdout_fd is not None:
            asyncio.get_running_loop().remove_reader(self._stdout_fd)
            os.close(self._stdout_fd)
            self._stdout_fd = None
        if self._stderr is not None:
            self._stderr.drain()
            self._stderr.detach(self.event_log)
            self._stderr.close()

    def _read_stdout(self) -> bool:
        """Read once; True if there may be more."""
        assert self._stdout_fd is not None
        data = read_some(self._stdout_fd, _READ_SIZE)
        if data is None:
            return False
        if not data:
            asyncio.get_running_loop().remove_reader(self._stdout_fd)
            os.close(self._stdout_fd)
            self._stdout_fd = None
            return False
        self.stdout_size += len(data)
        if self.stdout_size <= MAX_VALUE_BYTES:  # the rest is counted, not kept
            self.stdout += data
        return True


def _outcome(
    run: _Run,
    status: ExitStatus | None,
    deadline_passed: bool,
    duration: float,
    timeout: float,
    memory_mb: int,
) -> Outcome:
    usage = Usage(
        duration_ms=duration,
        cpu_ms=status.cpu_ms if status else None,
        max_memory_mb=status.max_memory_mb if status else None,
        exit_code=status.exit_code if status else None,
        signal=status.signal if status else None,
    )
    if deadline_passed:
        return Outcome(ok=False, error=timed_out(timeout), usage=usage)
    if run.memory_used is not None:
        return Outcome(ok=False, error=memory_exceeded(run.memory_used, memory_mb), usage=usage)
    if status is None or status.returncode != 0:
        how = describe_exit(status) if status else "an unknown status"
        tail = run.stderr_tail()
        message = f"the command ended with {how}" + (f": {tail}" if tail else "")
        code = status.exit_code if status else None
        failed = error(ErrorType.EXEC_ERROR, message, code)
        return Outcome(ok=False, error=failed, usage=usage)
    if run.stdout_size > MAX_VALUE_BYTES:
        too_large = result_too_large("the command's stdout", run.stdout_size)
        return Outcome(ok=False, error=too_large, usage=usage)
    return Outcome(ok=True, result=as_result(bytes(run.stdout)), usage=usage)
