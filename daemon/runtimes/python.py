"""The python runtime: one warm worker process per instance, spoken to over framed pipes.

Frames both ways are a 4-byte big-endian length and a JSON object (see daemon/worker/bootstrap.py).
Everything is read on the event loop from non-blocking pipes: no threads, no extra copies.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import time
from collections.abc import Callable
from pathlib import Path

import msgspec

from daemon.functions import FunctionDef
from daemon.limits import MAX_VALUE_BYTES
from daemon.logfiles import LogSink
from daemon.model import ErrorInfo, Usage
from daemon.runtimes.account import base_env, check_usable, instance_account, needs
from daemon.runtimes.base import (
    HOOK_LABELS,
    LOG_CAP,
    EventLog,
    HookOutcome,
    InstanceBase,
    InstanceStartError,
    Outcome,
    describe_exit,
    exited_message,
    lost_outcome,
    memory_error,
)
from daemon.runtimes.pipes import FrameReader, OutputRouter, PipeWriter
from daemon.runtimes.python_protocol import (
    DECODER,
    Hook,
    HookResult,
    Invoke,
    Ready,
    Result,
    WorkerFrame,
    encode_frame,
)
from daemon.supervise.child import Child, ExitStatus
from daemon.supervise.memory import MemoryWatch
from daemon.supervise.spawn import child_env
from daemon.supervise.supervisor import Supervisor
from daemon.users import Account, R, X

log = logging.getLogger(__name__)

BOOTSTRAP = Path(__file__).resolve().parent.parent / "worker" / "bootstrap.py"
CTL_IN, CTL_OUT, CTL_STOP = 3, 4, 5  # the worker's fds for the control pipes (PreStop: its own)
REAP_GRACE = 10.0  # seconds to wait for a SIGKILLed group leader to be reaped
PIPE_CLOSED_GRACE = 0.5  # seconds between a worker's closed pipe and its kill, if it lives on


class _Timeout:
    """The reply slot's value when the deadline passed first."""


TIMED_OUT = _Timeout()
Reply = WorkerFrame | ExitStatus | _Timeout | ErrorInfo  # ErrorInfo: a protocol fault


# -- the instance -----------------------------------------------------------------------------


class PythonInstance(InstanceBase):
    """One warm worker process of one python function."""

    kind = "python"

    def __init__(
        self,
        function: FunctionDef,
        *,
        log_cap: int = LOG_CAP,
        start_timeout: float = 30.0,
        on_exit: Callable[[PythonInstance], None] | None = None,
        logs: LogSink | None = None,
        supervisor: Supervisor,
    ) -> None:
        super().__init__(function, log_cap=log_cap, logs=logs)
        self._supervisor = supervisor  # spawns the worker
        self.start_timeout = start_timeout
        self.on_exit = on_exit  # called once when the worker dies on its own
        self._child: Child | None = None
        self._reader: FrameReader[WorkerFrame] | None = None
        self._writer: PipeWriter | None = None
        self._stop_writer: PipeWriter | None = None
        self._output: OutputRouter | None = None
        self._reply: asyncio.Future[Reply] | None = None
        self._stop_reply: asyncio.Future[Reply] | None = None
        self._cpu_reported = 0.0
        self._memory_used: float | None = None  # set when the memory watch killed the worker

    # -- public ----------------------------------------------------------------------------

    async def start(self, *, request_id: str | None = None, log_path: Path | None = None) -> None:
        """Spawn the worker and wait until its handler is imported; InstanceStartError on failure.

        The Initializer is the pool's to run (`run_hook`), so that it is journaled."""
        event_log = self._event_log(log_path) if log_path is not None else None
        try:
            self._spawn()
            assert self._output is not None
            self._output.attach(event_log)
            self._check_ready(await self._exchange(None, self.start_timeout))
        except BaseException:
            await self.stop()
            raise
        finally:
            self._detach_log(event_log)
        self.state = "idle"
        self.started_at = time.time()
        self.last_used = time.monotonic()

    async def invoke(
        self, request_id: str, payload: msgspec.Raw, attempt: int, timeout: float, log_path: Path
    ) -> Outcome:
        """Run one attempt; the function's output goes to `log_path` between Start/End lines."""
        if self.state != "idle":
            return self._not_idle(request_id)
        self.state = "busy"
        message = Invoke(
            id=request_id,
            function=self.function.name,
            attempt=attempt,
            timeout_ms=int(timeout * 1000),
            payload=payload,
        )
        began = time.monotonic()
        watch = self._watch_memory()
        # the frame goes first so that the worker runs while the log is opened; its output
        # cannot be read before the await below, by which time the log is attached
        expected = self._expect(encode_frame(message), timeout)
        event_log = self._event_log(log_path)
        event_log.platform(f"FC Invoke Start RequestId: {request_id}")
        assert self._output is not None
        self._output.attach(event_log)
        try:
            reply = await self._reply_to(expected)
            outcome = await self._outcome(reply, request_id, began, timeout)
        except asyncio.CancelledError:
            self._kill()
            raise
        finally:
            if watch is not None:
                watch.stop()
            self._detach_log(event_log, f"FC Invoke End RequestId: {request_id}")
            self.last_used = time.monotonic()
        if self.state == "busy":
            self.state = "idle"
        return outcome

    def _watch_memory(self) -> MemoryWatch | None:
        self._memory_used = None
        if self.function.memory_mb <= 0 or self.pid is None:
            return None
        return MemoryWatch(self.pid, self.function.memory_mb, self._over_memory)

    def _over_memory(self, used_mb: float) -> None:
        log.warning(
            "instance %s: %.0f MB resident, over memory_mb %d: killing it",
            self.id,
            used_mb,
            self.function.memory_mb,
        )
        self._memory_used = used_mb
        self._kill()

    async def run_hook(
        self, hook: str, *, request_id: str, log_path: Path | None = None
    ) -> HookOutcome:
        """Run a lifecycle hook by its `[lifecycle]` name; ok without running if none is set."""
        event_log = self._event_log(log_path) if log_path is not None else None
        try:
            return await self._hook(hook, request_id, event_log)
        finally:
            self._detach_log(event_log)

    async def stop(self) -> None:
        """Kill the worker's process group, reap it and close the pipes; idempotent."""
        child = self._child
        if self.state != "dead":
            self.state = "stopping"
        if child is not None and child.status is None:
            child.kill_group(signal.SIGKILL)
            await self._reaped(child)
        self._close_pipes()
        self.state = "dead"

    def signal(self, sig: int) -> bool:
        """Send `sig` to the worker's process group; False if it is gone."""
        return self._child.kill_group(sig) if self._child is not None else False

    # -- start-up ---------------------------------------------------------------------------

    def _spawn(self) -> None:
        fn = self.function
        account = self._account()
        ctl_in_r, ctl_in_w = os.pipe2(os.O_CLOEXEC)
        ctl_out_r, ctl_out_w = os.pipe2(os.O_CLOEXEC)
        stop_r, stop_w = os.pipe2(os.O_CLOEXEC)
        # one pipe for stdout and stderr: their lines stay in order, and one read drains both
        out_r, out_w = os.pipe2(os.O_CLOEXEC)
        ours, theirs = (ctl_in_w, ctl_out_r, stop_w, out_r), (ctl_in_r, ctl_out_w, stop_r, out_w)
        env = child_env(base_env(account), {**fn.environment, **self._worker_env()})
        fds = {1: out_w, 2: out_w, CTL_IN: ctl_in_r, CTL_OUT: ctl_out_w, CTL_STOP: stop_r}
        try:
            argv = [fn.interpreter, "-u", str(BOOTSTRAP)]
            self._child = self._supervisor.spawn(argv, env, fds, user=account)
        except OSError as exc:
            for fd in ours:
                os.close(fd)
            message = f"cannot start {fn.interpreter}: {exc.strerror or exc}"
            raise InstanceStartError(ErrorInfo(type="SpawnError", message=message)) from exc
        finally:
            for fd in theirs:
                os.close(fd)
        self.pid = self._child.pid
        self._reader = FrameReader(ctl_out_r, DECODER, self._on_frame, self._on_pipe_closed)
        self._writer = PipeWriter(ctl_in_w)
        self._stop_writer = PipeWriter(stop_w)
        self._output = OutputRouter({out_r: "output"}, self.id)
        self._child.exited.add_done_callback(self._on_exit)
        log.debug("instance %s spawned (pid %d)", self.id, self.pid)

    def _account(self) -> Account | None:
        """Who the worker runs as, checked to be able to start it (InstanceStartError if not)."""
        fn = self.function
        account = instance_account(fn)
        check_usable(
            account,
            {
                "the code folder": (fn.code_dir, R | X),
                "the interpreter": (fn.interpreter, needs(fn.interpreter)),
                "the worker bootstrap": (str(BOOTSTRAP), R),
            },
        )
        return account

    def _worker_env(self) -> dict[str, str]:
        fn = self.function
        return {
            "FNSPOOL_CTL_IN": str(CTL_IN),
            "FNSPOOL_CTL_OUT": str(CTL_OUT),
            "FNSPOOL_CTL_STOP": str(CTL_STOP),
            "FNSPOOL_PARENT_PID": str(os.getpid()),
            "FNSPOOL_CODE_DIR": fn.code_dir,
            "FNSPOOL_HANDLER": fn.handler,
            "FNSPOOL_FUNCTION_NAME": fn.name,
            "FNSPOOL_MEMORY_MB": str(fn.memory_mb),
            "FNSPOOL_MAX_RESULT": str(MAX_VALUE_BYTES),  # refused there: never sent here
        }

    def _check_ready(self, reply: Reply) -> None:
        match reply:
            case Ready(error=None):
                return
            case Ready(error=ErrorInfo() as error):
                raise InstanceStartError(error)
            case _Timeout():
                message = f"the worker was not ready within {self.start_timeout:.2f} seconds"
                raise InstanceStartError(ErrorInfo(type="StartTimeout", message=message))
            case ExitStatus() as status:
                raise InstanceStartError(self._early_exit(status))
            case ErrorInfo() as error:
                raise InstanceStartError(error)
            case _:
                raise InstanceStartError(_unexpected(reply, "ready"))

    def _early_exit(self, status: ExitStatus) -> ErrorInfo:
        how = describe_exit(status)
        tail = self._output.tail() if self._output is not None else ""
        message = f"the worker exited before it was ready ({how})" + (f": {tail}" if tail else "")
        return ErrorInfo(type="ProcessExited", message=message)

    # -- hooks ----------------------------------------------------------------------------------

    async def _hook(self, hook: str, request_id: str, event_log: EventLog | None) -> HookOutcome:
        name, timeout = self._hook_config(hook)
        started, began = time.time(), time.monotonic()
        if not name:
            return HookOutcome(hook=hook, ok=True, started=started, duration_ms=0.0)
        label, rid = HOOK_LABELS.get(hook, hook), request_id
        if event_log is not None and self._output is not None:
            self._output.attach(event_log)
            event_log.platform(f"{label} Start RequestId: {rid}")
        frame = encode_frame(Hook(hook=hook, name=name, timeout_ms=int(timeout * 1000), id=rid))
        if hook == "pre_stop":  # on its own pipe and thread: it may run beside a stopped event
            reply = await self._stop_exchange(frame, timeout)
        else:
            previous, self.state = self.state, "busy"
            reply = await self._exchange(frame, timeout)
            if self.state == "busy":
                self.state = previous
        error, lost = await self._hook_error(reply, label, timeout)
        duration = round((time.monotonic() - began) * 1000, 3)
        if event_log is not None:
            if error is not None:
                event_log.platform(f"{label} Error RequestId: {rid} {error.type}: {error.message}")
            event_log.platform(f"{label} End RequestId: {rid}")
        if error is not None:
            log.warning("instance %s: %s %s failed: %s", self.id, hook, rid, error.message)
        return HookOutcome(
            hook=hook, ok=error is None, started=started, duration_ms=duration,
            error=error, instance_lost=lost,
        )  # fmt: skip

    def _hook_config(self, hook: str) -> tuple[str, float]:
        lifecycle = self.function.lifecycle
        name = getattr(lifecycle, hook, "")
        timeout = getattr(lifecycle, f"{hook}_timeout", 10.0)
        return (name if isinstance(name, str) else ""), float(timeout)

    async def _hook_error(
        self, reply: Reply, label: str, timeout: float
    ) -> tuple[ErrorInfo | None, bool]:
        match reply:
            case HookResult(ok=True):
                return None, False
            case HookResult(error=error):
                return error or ErrorInfo(type="HookError", message=f"{label} failed"), False
            case _Timeout():
                self._kill()
                await self._reaped(self._child)
                message = f"{label} timed out after {timeout:.2f} seconds"
                return ErrorInfo(type="FunctionTimeout", message=message), True
            case ExitStatus() as status:
                return ErrorInfo(type="ProcessExited", message=exited_message(0, status)), True
            case ErrorInfo() as error:
                return error, True
            case _:
                self._kill()
                return _unexpected(reply, "hook_result"), True

    # -- events ---------------------------------------------------------------------------------

    async def _outcome(
        self, reply: Reply, request_id: str, began: float, timeout: float
    ) -> Outcome:
        duration = round((time.monotonic() - began) * 1000, 3)
        match reply:
            case Result(id=rid) if rid == request_id:
                return self._result_outcome(reply, duration)
            case _Timeout():
                self._kill()
                status = await self._reaped(self._child)
                message = f"Function timed out after {timeout:.2f} seconds"
                error = ErrorInfo(type="FunctionTimeout", message=message)
                return lost_outcome(error, duration, status)
            case ExitStatus() as status:
                cpu = max(0.0, status.cpu_ms - self._cpu_reported)
                error = ErrorInfo(type="ProcessExited", message=exited_message(duration, status))
                if self._memory_used is not None:
                    error = memory_error(self._memory_used, self.function.memory_mb)
                return lost_outcome(error, duration, status, cpu)
            case ErrorInfo() as error:
                return lost_outcome(error, duration, None)
            case _:
                self._kill()
                return lost_outcome(_unexpected(reply, f"result of {request_id}"), duration, None)

    def _result_outcome(self, frame: Result, duration: float) -> Outcome:
        self.events_served += 1
        self._cpu_reported += frame.cpu_ms or 0.0
        usage = Usage(duration_ms=duration, cpu_ms=frame.cpu_ms, max_memory_mb=frame.max_memory_mb)
        if frame.ok:
            return Outcome(ok=True, result=frame.result, usage=usage)
        error = frame.error or ErrorInfo(type="UnknownError", message="the handler failed")
        return Outcome(ok=False, error=error, usage=usage, retry_delay=frame.retry_delay)

    def _not_idle(self, request_id: str) -> Outcome:
        log.error("instance %s asked to run %s while %s", self.id, request_id, self.state)
        message = f"instance {self.id} is {self.state}, not idle"
        error = ErrorInfo(type="InstanceUnavailable", message=message)
        return Outcome(ok=False, error=error, usage=Usage(duration_ms=0.0), instance_lost=True)

    # -- the exchange -----------------------------------------------------------------------------

    def _expect(
        self, frame: bytearray | None, timeout: float
    ) -> tuple[asyncio.Future[Reply], asyncio.TimerHandle | None]:
        """Send `frame` (if any); the future gets the next reply, the worker's exit or TIMED_OUT."""
        loop = asyncio.get_running_loop()
        reply: asyncio.Future[Reply] = loop.create_future()
        child = self._child
        if child is None or child.status is not None:
            reply.set_result(child.status if child is not None and child.status else TIMED_OUT)
            return reply, None
        self._reply = reply
        if frame is not None and self._writer is not None:
            self._writer.write(frame)
        return reply, loop.call_later(timeout, _settle, reply, TIMED_OUT)

    async def _reply_to(
        self, expected: tuple[asyncio.Future[Reply], asyncio.TimerHandle | None]
    ) -> Reply:
        """Wait for what `_expect` set up."""
        reply, timer = expected
        try:
            return await reply
        finally:
            if timer is not None:
                timer.cancel()
            self._reply = None

    async def _exchange(self, frame: bytearray | None, timeout: float) -> Reply:
        """Send `frame` (if any) and wait for the next reply, the worker's exit or the deadline."""
        return await self._reply_to(self._expect(frame, timeout))

    async def _stop_exchange(self, frame: bytearray, timeout: float) -> Reply:
        """Send PreStop on its own pipe and wait for its result, the worker's exit or the
        deadline."""
        loop = asyncio.get_running_loop()
        child = self._child
        if child is None or child.status is not None or self._stop_writer is None:
            return child.status if child is not None and child.status else TIMED_OUT
        reply: asyncio.Future[Reply] = loop.create_future()
        self._stop_reply = reply
        self._stop_writer.write(frame)
        timer = loop.call_later(timeout, _settle, reply, TIMED_OUT)
        try:
            return await reply
        finally:
            timer.cancel()
            self._stop_reply = None

    def _on_frame(self, frame: WorkerFrame | ErrorInfo) -> None:
        stop_reply = self._stop_reply
        if isinstance(frame, HookResult) and frame.hook == "pre_stop" and stop_reply is not None:
            _settle(stop_reply, frame)
        elif self._reply is not None and not self._reply.done():
            self._reply.set_result(frame)
        elif isinstance(frame, ErrorInfo):
            log.error("instance %s: %s", self.id, frame.message)
            self._kill()
        else:
            log.warning("instance %s sent an unexpected %s frame", self.id, type(frame).__name__)

    def _on_exit(self, exited: asyncio.Future[ExitStatus]) -> None:
        status = exited.result()
        if self._reader is not None:
            self._reader.drain()  # a reply written just before the exit still counts
        if self._output is not None:
            self._output.drain()
        for reply in (self._reply, self._stop_reply):
            if reply is not None:
                _settle(reply, status)
        if self.state not in ("stopping", "dead"):
            log.warning("instance %s exited on its own (%s)", self.id, describe_exit(status))
            self.state = "dead"
            if self.on_exit is not None:
                self.on_exit(self)

    def _on_pipe_closed(self) -> None:
        # a worker that exits closes its pipe too: give the exit a moment to be noticed first
        asyncio.get_running_loop().call_later(PIPE_CLOSED_GRACE, self._kill_if_mute)

    def _kill_if_mute(self) -> None:
        if self._child is not None and self._child.status is None and self.state != "dead":
            log.error("instance %s closed its pipe to the daemon but still runs: killed", self.id)
            self._kill()

    def _kill(self) -> None:
        if self._child is not None:
            self._child.kill_group(signal.SIGKILL)

    async def _reaped(self, child: Child | None) -> ExitStatus | None:
        if child is None:
            return None
        try:
            return await asyncio.wait_for(child.wait(), REAP_GRACE)
        except TimeoutError:
            log.error(
                "instance %s: pid %d not reaped %.0fs after SIGKILL", self.id, child.pid, REAP_GRACE
            )
            return None

    def _detach_log(self, event_log: EventLog | None, last_line: str | None = None) -> None:
        if event_log is None:
            return
        if self._output is not None:
            self._output.drain()  # whatever the function wrote before replying is this event's
            self._output.detach(event_log)
        if last_line is not None:
            event_log.platform(last_line)
        event_log.close()

    def _close_pipes(self) -> None:
        for part in (self._reader, self._writer, self._stop_writer, self._output):
            if part is not None:
                part.close()


# -- helpers ------------------------------------------------------------------------------------


def _settle(future: asyncio.Future[Reply], value: Reply) -> None:
    if not future.done():
        future.set_result(value)


def _unexpected(reply: object, wanted: str) -> ErrorInfo:
    message = f"the worker sent {type(reply).__name__} when {wanted} was expected"
    return ErrorInfo(type="ProtocolError", message=message)
