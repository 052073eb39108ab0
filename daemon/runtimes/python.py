"""The python runtime: one warm worker process per instance, spoken to over framed pipes.

Frames both ways are a 4-byte big-endian length and a JSON object (see daemon/worker/bootstrap.py).
Everything is read on the event loop from non-blocking pipes: no threads, no extra copies.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from pathlib import Path

import msgspec

from daemon.errors import (
    ErrorType,
    cannot_start,
    describe,
    error,
    process_exited,
    protocol_error,
    start_timeout,
    unavailable,
)
from daemon.files.logfiles import LogSink
from daemon.functions import FunctionDef
from daemon.instances import InstanceState
from daemon.limits import MAX_VALUE_BYTES
from daemon.model import ErrorInfo, Usage
from daemon.runtimes.account import base_env, check_usable, instance_account, needs
from daemon.runtimes.base import (
    HOOK_LABELS,
    LOG_CAP,
    EventLog,
    HookOutcome,
    InstanceStartError,
    Outcome,
    lost_outcome,
)
from daemon.runtimes.pipes import FrameReader, OutputRouter, PipeWriter
from daemon.runtimes.process import TIMED_OUT, ProcessInstance, TimedOut, settle
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
from daemon.supervise.child import ExitStatus
from daemon.supervise.spawn import child_env
from daemon.supervise.supervisor import Supervisor
from daemon.users import Account, R, X

log = logging.getLogger(__name__)

BOOTSTRAP = Path(__file__).resolve().parent.parent / "worker" / "bootstrap.py"
CTL_IN, CTL_OUT, CTL_STOP = 3, 4, 5  # the worker's fds for the control pipes (PreStop: its own)
PIPE_CLOSED_GRACE = 0.5  # seconds between a worker's closed pipe and its kill, if it lives on

Reply = WorkerFrame | ExitStatus | TimedOut | ErrorInfo  # ErrorInfo: a protocol fault


# -- the instance -----------------------------------------------------------------------------


class PythonInstance(ProcessInstance):
    """One warm worker process of one python function."""

    kind = "python"

    def __init__(
        self,
        function: FunctionDef,
        *,
        log_cap: int = LOG_CAP,
        start_timeout: float = 30.0,
        logs: LogSink | None = None,
        supervisor: Supervisor,
    ) -> None:
        super().__init__(
            function,
            log_cap=log_cap,
            logs=logs,
            supervisor=supervisor,
            start_timeout=start_timeout,
        )
        self._reader: FrameReader[WorkerFrame] | None = None
        self._writer: PipeWriter | None = None
        self._stop_writer: PipeWriter | None = None
        self._reply: asyncio.Future[Reply] | None = None
        self._stop_reply: asyncio.Future[Reply] | None = None
        self._cpu_reported = 0.0

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
        self.state = InstanceState.IDLE
        self.started_at = time.time()
        self.last_used = time.monotonic()

    async def invoke(
        self, request_id: str, payload: msgspec.Raw, attempt: int, timeout: float, log_path: Path
    ) -> Outcome:
        """Run one attempt; the function's output goes to `log_path` between Start/End lines."""
        if self.state is not InstanceState.IDLE:
            return self._not_idle(request_id)
        self.state = InstanceState.BUSY
        message = Invoke(
            id=request_id,
            function=self.function.name,
            attempt=attempt,
            timeout_ms=int(timeout * 1000),
            payload=payload,
        )
        began = time.monotonic()
        self._watch_memory()
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
            self._unwatch_memory()
            self._detach_log(event_log, f"FC Invoke End RequestId: {request_id}")
            self.last_used = time.monotonic()
        if self.state is InstanceState.BUSY:
            self.state = InstanceState.IDLE
        return outcome

    async def run_hook(
        self, hook: str, *, request_id: str, log_path: Path | None = None
    ) -> HookOutcome:
        """Run a lifecycle hook by its `[lifecycle]` name; ok without running if none is set."""
        event_log = self._event_log(log_path) if log_path is not None else None
        try:
            return await self._hook(hook, request_id, event_log)
        finally:
            self._detach_log(event_log)

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
            child = self._supervisor.spawn(argv, env, fds, user=account)
        except OSError as exc:
            for fd in ours:
                os.close(fd)
            raise InstanceStartError(cannot_start(fn.interpreter, exc)) from exc
        finally:
            for fd in theirs:
                os.close(fd)
        self._reader = FrameReader(ctl_out_r, DECODER, self._on_frame, self._on_pipe_closed)
        self._writer = PipeWriter(ctl_in_w)
        self._stop_writer = PipeWriter(stop_w)
        self._started(child, OutputRouter({out_r: "output"}, self.id))
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
            case TimedOut():
                message = f"the worker was not ready within {self.start_timeout:.2f} seconds"
                raise InstanceStartError(start_timeout(message))
            case ExitStatus() as status:
                before = "worker exited before it was ready"
                raise InstanceStartError(self._early_exit(before, status, None))
            case ErrorInfo() as error:
                raise InstanceStartError(error)
            case _:
                raise InstanceStartError(_unexpected(reply, "ready"))

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
            previous, self.state = self.state, InstanceState.BUSY
            reply = await self._exchange(frame, timeout)
            if self.state is InstanceState.BUSY:
                self.state = previous
        error, lost = await self._hook_error(reply, label, timeout)
        duration = round((time.monotonic() - began) * 1000, 3)
        if event_log is not None:
            if error is not None:
                event_log.platform(f"{label} Error RequestId: {rid} {describe(error)}")
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
            case HookResult(error=failed):
                return failed or error(ErrorType.HOOK_ERROR, f"{label} failed"), False
            case TimedOut():
                timeout_error, _ = await self._timed_out(timeout, label)
                return timeout_error, True
            case ExitStatus() as status:
                return process_exited(0, status), True
            case ErrorInfo() as fault:
                return fault, True
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
            case TimedOut():
                timeout_error, status = await self._timed_out(timeout)
                return lost_outcome(timeout_error, duration, status)
            case ExitStatus() as status:
                cpu = max(0.0, status.cpu_ms - self._cpu_reported)
                return lost_outcome(self._exit_error(duration, status), duration, status, cpu)
            case ErrorInfo() as fault:
                return lost_outcome(fault, duration, None)
            case _:
                self._kill()
                return lost_outcome(_unexpected(reply, f"result of {request_id}"), duration, None)

    def _result_outcome(self, frame: Result, duration: float) -> Outcome:
        self.events_served += 1
        self._cpu_reported += frame.cpu_ms or 0.0
        usage = Usage(duration_ms=duration, cpu_ms=frame.cpu_ms, max_memory_mb=frame.max_memory_mb)
        if frame.ok:
            return Outcome(ok=True, result=frame.result, usage=usage)
        failed = frame.error or error(ErrorType.UNKNOWN_ERROR, "the handler failed")
        return Outcome(ok=False, error=failed, usage=usage, retry_delay=frame.retry_delay)

    def _not_idle(self, request_id: str) -> Outcome:
        log.error("instance %s asked to run %s while %s", self.id, request_id, self.state)
        message = f"instance {self.id} is {self.state}, not idle"
        return Outcome(
            ok=False, error=unavailable(message), usage=Usage(duration_ms=0.0), instance_lost=True
        )

    # -- the exchange -----------------------------------------------------------------------------

    def _expect(
        self, frame: bytearray | None, timeout: float
    ) -> tuple[asyncio.Future[Reply], asyncio.TimerHandle | None]:
        """Send `frame` (if any); the future gets the next reply, the worker's exit or TIMED_OUT."""
        loop = self.loop
        reply: asyncio.Future[Reply] = loop.create_future()
        child = self._child
        if child is None or child.status is not None:
            reply.set_result(child.status if child is not None and child.status else TIMED_OUT)
            return reply, None
        self._reply = reply
        if frame is not None and self._writer is not None:
            self._writer.write(frame)
        return reply, loop.call_later(timeout, settle, reply, TIMED_OUT)

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
        timer = loop.call_later(timeout, settle, reply, TIMED_OUT)
        try:
            return await reply
        finally:
            timer.cancel()
            self._stop_reply = None

    def _on_frame(self, frame: WorkerFrame | ErrorInfo) -> None:
        stop_reply = self._stop_reply
        if isinstance(frame, HookResult) and frame.hook == "pre_stop" and stop_reply is not None:
            settle(stop_reply, frame)
        elif self._reply is not None and not self._reply.done():
            self._reply.set_result(frame)
        elif isinstance(frame, ErrorInfo):
            log.error("instance %s: %s", self.id, frame.message)
            self._kill()
        else:
            log.warning("instance %s sent an unexpected %s frame", self.id, type(frame).__name__)

    def _on_exit(self, exited: asyncio.Future[ExitStatus]) -> None:
        if self._reader is not None:
            self._reader.drain()  # a reply written just before the exit still counts
        super()._on_exit(exited)
        for reply in (self._reply, self._stop_reply):
            if reply is not None:
                settle(reply, exited.result())

    def _on_pipe_closed(self) -> None:
        # a worker that exits closes its pipe too: give the exit a moment to be noticed first
        asyncio.get_running_loop().call_later(PIPE_CLOSED_GRACE, self._kill_if_mute)

    def _kill_if_mute(self) -> None:
        if (
            self._child is not None
            and self._child.status is None
            and self.state is not InstanceState.DEAD
        ):
            log.error("instance %s closed its pipe to the daemon but still runs: killed", self.id)
            self._kill()

    def _detach_log(self, event_log: EventLog | None, last_line: str | None = None) -> None:
        if event_log is None:
            return
        if self._output is not None:
            self._output.drain()  # whatever the function wrote before replying is this event's
            self._output.detach(event_log)
        if last_line is not None:
            event_log.platform(last_line)
        event_log.close()

    async def _release(self) -> None:
        for part in (self._reader, self._writer, self._stop_writer):
            if part is not None:
                part.close()
        await super()._release()


# -- helpers ------------------------------------------------------------------------------------


def _unexpected(reply: object, wanted: str) -> ErrorInfo:
    message = f"the worker sent {type(reply).__name__} when {wanted} was expected"
    return protocol_error(message)
