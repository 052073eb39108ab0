"""The http runtime (FC's custom runtime contract): the instance is the function's own HTTP
server, started on a free port, sent `POST /invoke` per event and the lifecycle paths per hook.

Status codes mean what they mean on FC (seed 002): a hook answering 4xx fails that hook (the pool
calls an Initializer again on the same instance); a 5xx, a server that dies, hangs up or cannot be
reached loses the instance (the pool starts another).
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import os
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import msgspec

from daemon import isolation
from daemon.errors import (
    cannot_start,
    describe,
    process_exited,
    spawn_failed,
    start_timeout,
    unavailable,
    unreachable,
)
from daemon.files.logfiles import LogSink
from daemon.functions import FunctionDef, run_folder
from daemon.instances import SERVING, InstanceState
from daemon.model import ErrorInfo, Usage
from daemon.runtimes.account import check_usable
from daemon.runtimes.base import (
    HOOK_LABELS,
    LOG_CAP,
    EventLog,
    HookOutcome,
    InstanceStartError,
    Outcome,
    lost_outcome,
)
from daemon.runtimes.command import (
    as_result,
    bound_to_daemon,
    command_account,
    command_argv,
    command_env,
    process_cpu_ms,
)
from daemon.runtimes.http_client import (
    HOOK_REQUESTS,
    Response,
    claim_host_port,
    free_port,
    invoke_error,
    load_aiohttp,
    new_session,
    release_port,
    request,
    status_error,
    wait_listening,
)
from daemon.runtimes.netns import SocketMaker
from daemon.runtimes.pipes import OutputRouter
from daemon.runtimes.process import TIMED_OUT, ProcessInstance, TimedOut
from daemon.supervise.child import ExitStatus
from daemon.supervise.memory import peak_memory_mb
from daemon.supervise.supervisor import Supervisor
from daemon.users import R, X

if TYPE_CHECKING:
    import aiohttp

log = logging.getLogger(__name__)

CHANNEL_FD = 3  # the socket maker's end of the daemon's channel, in an isolated server
HANG_UP_GRACE = 0.2  # seconds a server that hung up is given to show that it is exiting

Reply = Response | ExitStatus | TimedOut | ErrorInfo  # ErrorInfo: the server could not be reached


class HttpInstance(ProcessInstance):
    """One running HTTP server of one function, serving up to `concurrency` events at once."""

    kind = "http"

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
        self.port = 0
        self._session: aiohttp.ClientSession | None = None
        self._maker: SocketMaker | None = None  # set when the server has a namespace of its own
        self._in_flight = 0  # events being served
        # logs of the calls in flight, oldest first: the server's output goes to the first one
        self._logs: dict[int, EventLog] = {}
        self._tokens = itertools.count()

    # -- public ------------------------------------------------------------------------------

    async def start(self, *, request_id: str | None = None, log_path: Path | None = None) -> None:
        """Start the server and wait until it listens; InstanceStartError if it does not.

        The Initializer is run by the pool (`run_hook`), so that it is journaled."""
        event_log = self._event_log(log_path) if log_path is not None else None
        token = self._attach(event_log)
        try:
            self._spawn()
            await load_aiohttp()  # while the server starts
            await self._listening()
            factory = self._maker.take if self._maker is not None else None
            self._session = new_session(self.port, factory)
        except BaseException:
            await self.stop()
            raise
        finally:
            self._detach(token, event_log)
        self.state = InstanceState.IDLE
        self.started_at = time.time()
        self.last_used = time.monotonic()
        where = "in a network namespace of its own" if self._maker is not None else "on the host"
        log.debug("instance %s listening on port %d %s", self.id, self.port, where)

    async def invoke(
        self, request_id: str, payload: msgspec.Raw, attempt: int, timeout: float, log_path: Path
    ) -> Outcome:
        """POST the payload to the invoke path; the server's output goes to the event's log."""
        if self.state not in SERVING or self._in_flight >= self.function.concurrency:
            return self._unavailable(request_id)
        self._in_flight += 1
        self.state = InstanceState.BUSY
        if self._in_flight == 1:
            self._watch_memory()
        event_log = self._event_log(log_path)
        event_log.platform(f"FC Invoke Start RequestId: {request_id}")
        token = self._attach(event_log)
        path = self.function.invoke_path
        headers = {
            **self._headers(request_id, path),
            "content-type": "application/octet-stream",
            "x-fnspool-attempt": str(attempt),
            "x-fnspool-timeout-ms": str(int(timeout * 1000)),
        }
        began, cpu_before = time.monotonic(), self._cpu_ms()
        try:
            reply = await self._call("POST", path, headers, bytes(payload), timeout)
            outcome = await self._outcome(reply, began, cpu_before, timeout)
        except asyncio.CancelledError:
            self._kill()  # the attempt is cut off: so is the server's work on it
            raise
        finally:
            self._in_flight -= 1
            if not self._in_flight:
                self._unwatch_memory()
            self._detach(token, event_log, f"FC Invoke End RequestId: {request_id}")
            self.last_used = time.monotonic()
        if self.state is InstanceState.BUSY and not self._in_flight:
            self.state = InstanceState.IDLE
        return outcome

    async def run_hook(
        self, hook: str, *, request_id: str, log_path: Path | None = None
    ) -> HookOutcome:
        """Call a lifecycle hook's path when `[lifecycle]` turns it on; ok without a call if not."""
        started, began = time.time(), time.monotonic()
        method_path = HOOK_REQUESTS.get(hook)
        if method_path is None or not getattr(self.function.lifecycle, hook, False):
            return HookOutcome(hook=hook, ok=True, started=started, duration_ms=0.0)
        method, path = method_path
        timeout = float(getattr(self.function.lifecycle, f"{hook}_timeout", 10.0))
        label, rid = HOOK_LABELS.get(hook, hook), request_id
        event_log = self._event_log(log_path) if log_path is not None else None
        if event_log is not None:
            event_log.platform(f"{label} Start RequestId: {rid}")
        token = self._attach(event_log)
        error: ErrorInfo | None = None
        try:
            headers = self._headers(rid, path)
            reply = await self._call(method, path, headers, None, timeout)
            error, lost = await self._hook_error(reply, f"{method} {path}", label, timeout)
        finally:
            if event_log is not None and error is not None:
                event_log.platform(f"{label} Error RequestId: {rid} {describe(error)}")
            self._detach(token, event_log, f"{label} End RequestId: {rid}")
        if error is not None:
            log.warning("instance %s: %s %s failed: %s", self.id, hook, rid, error.message)
        duration = round((time.monotonic() - began) * 1000, 3)
        refused = isinstance(reply, Response) and 400 <= reply.status < 500
        return HookOutcome(
            hook=hook, ok=error is None, started=started, duration_ms=duration,
            error=error, instance_lost=lost, retry_same=refused,
        )  # fmt: skip

    async def _release(self) -> None:
        """Close the session and the socket maker, let go of the port."""
        session, self._session = self._session, None
        if session is not None:
            await session.close()
        maker, self._maker = self._maker, None
        if maker is not None:
            maker.close()
        await super()._release()
        self._output = None
        release_port(self.port)

    # -- start-up ------------------------------------------------------------------------------

    def _spawn(self) -> None:
        fn = self.function
        command = command_argv(fn)
        account = command_account(fn, command)
        argv = bound_to_daemon(command)
        self.port = self._take_port()
        port = str(self.port)
        env = command_env(fn, self.id, {"FC_SERVER_PORT": port, "PORT": port}, account)
        # one pipe for stdout and stderr: their lines stay in order, and one read drains both
        out_r, out_w = os.pipe2(os.O_CLOEXEC)
        fds = {1: out_w, 2: out_w}
        if self._isolated:
            check_usable(account, {"the namespace helper": (str(isolation.ENTRY), R),
                                   "the daemon's python": (sys.executable, X)})  # fmt: skip
            self._maker, fds[CHANNEL_FD] = SocketMaker.pair()
            argv = isolation.isolated_argv(CHANNEL_FD, argv)
        try:
            child = self._supervisor.spawn(argv, env, fds, cwd=run_folder(fn), user=account)
        except OSError as exc:
            os.close(out_r)
            raise InstanceStartError(cannot_start(argv[0], exc)) from exc
        finally:
            os.close(out_w)
            if CHANNEL_FD in fds:
                os.close(fds[CHANNEL_FD])
        output = OutputRouter({out_r: "output"}, self.id)
        output.attach(next(iter(self._logs.values()), None))
        self._started(child, output)
        log.debug("instance %s spawned (pid %d, port %d)", self.id, self.pid, self.port)

    @property
    def _isolated(self) -> bool:
        """Whether the server gets a network namespace: a fixed port, where one can be made."""
        return bool(self.function.port) and not self.function.one_at_a_time

    def _take_port(self) -> int:
        """The server's port: a free one, the fixed one in its namespace, or the fixed one on
        the host when no namespace can be made (if no other process holds it)."""
        port = self.function.port
        if not port:
            return free_port()
        if not self._isolated:
            claim_host_port(port)
        return port

    async def _listening(self) -> None:
        """Wait until the server accepts connections on its port; InstanceStartError if it exits
        or time runs out first."""
        child = self._child
        assert child is not None
        make = self._maker.make if self._maker is not None else None
        try:
            if await wait_listening(self.port, child.exited, self.start_timeout, make):
                return
        except OSError as exc:  # the socket maker is gone: the server's start failed
            await asyncio.wait([child.exited], timeout=HANG_UP_GRACE)
            if child.status is None:
                message = f"the server's network namespace cannot be reached: {exc}"
                raise InstanceStartError(spawn_failed(message)) from exc
        if child.status is not None:
            before = "server exited before it listened"
            raise InstanceStartError(self._early_exit(before, child.status, 1000))
        message = (
            f"the server did not listen on port {self.port} within {self.start_timeout:.2f} seconds"
        )
        raise InstanceStartError(start_timeout(message))

    # -- requests --------------------------------------------------------------------------------

    def _headers(self, request_id: str, control_path: str) -> dict[str, str]:
        fn, hooks = self.function, self.function.lifecycle
        headers = {
            "x-fc-request-id": request_id,
            "x-fc-function-name": fn.name,
            "x-fc-function-handler": fn.handler,
            "x-fc-function-memory": str(fn.memory_mb),
            "x-fc-function-timeout": str(int(fn.timeout)),
            # every fnspool function is its own latest code: FC's qualifier for it
            "x-fc-qualifier": "LATEST",
            "x-fc-version-id": "LATEST",
            "x-fc-control-path": control_path,
            "x-fnspool-instance-id": self.id,
        }
        for hook, header in _HOOK_HEADERS.items():
            if getattr(hooks, hook):
                headers[header] = _handler_name(getattr(hooks, hook))
        if hooks.initializer:
            headers["x-fc-initialization-timeout"] = str(int(hooks.initializer_timeout))
        return headers

    async def _call(
        self, method: str, path: str, headers: dict[str, str], body: bytes | None, timeout: float
    ) -> Reply:
        """Make one request; its answer, the server's exit, TIMED_OUT, or why it failed."""
        child, session = self._child, self._session
        if child is None or session is None:
            return unavailable(f"instance {self.id} is stopped")
        if child.status is not None:
            return child.status
        if self._maker is not None:
            try:  # the connection's socket, made in the server's namespace
                await asyncio.wait_for(self._maker.prepare(), timeout)
            except (OSError, TimeoutError) as exc:
                why = str(exc) or type(exc).__name__
                message = f"{method} {path} failed: no socket from the server's namespace: {why}"
                return child.status or unreachable(message)
        call = asyncio.ensure_future(request(session, method, path, headers, body))
        either: list[asyncio.Future[Any]] = [call, child.exited]
        try:
            done, _ = await asyncio.wait(
                either, timeout=timeout, return_when=asyncio.FIRST_COMPLETED
            )
        finally:
            if not call.done():
                call.cancel()
        if call in done:
            reply = call.result()
            if isinstance(reply, ErrorInfo):
                # a server that hangs up is often on its way out: say so when it is
                await asyncio.wait([child.exited], timeout=HANG_UP_GRACE)
                return child.status or reply
            return reply
        return child.status or TIMED_OUT

    async def _outcome(
        self, reply: Reply, began: float, cpu_before: float | None, timeout: float
    ) -> Outcome:
        duration = round((time.monotonic() - began) * 1000, 3)
        match reply:
            case Response() as response:
                return self._response_outcome(response, duration, cpu_before)
            case TimedOut():
                error, status = await self._timed_out(timeout)
                return lost_outcome(error, duration, status, _cpu_delta(status, cpu_before))
            case ExitStatus() as status:
                error = self._exit_error(duration, status)
                return lost_outcome(error, duration, status, _cpu_delta(status, cpu_before))
            case ErrorInfo() as error:
                return lost_outcome(error, duration, await self._kill_and_reap())
        raise AssertionError(f"unexpected reply {reply!r}")

    def _response_outcome(
        self, response: Response, duration: float, cpu_before: float | None
    ) -> Outcome:
        cpu_after = self._cpu_ms()
        cpu = None if cpu_before is None or cpu_after is None else round(cpu_after - cpu_before, 3)
        memory = peak_memory_mb(self.pid) if self.pid is not None else None
        usage = Usage(duration_ms=duration, cpu_ms=cpu, max_memory_mb=memory)
        self.events_served += 1
        error = invoke_error(response, self.function.invoke_path)
        if error is None:
            return Outcome(ok=True, result=as_result(response.body), usage=usage)
        lost = response.status >= 500
        return Outcome(ok=False, error=error, usage=usage, instance_lost=lost)

    async def _hook_error(
        self, reply: Reply, request: str, label: str, timeout: float
    ) -> tuple[ErrorInfo | None, bool]:
        """Why the hook failed (None if it did not) and whether the instance is lost."""
        match reply:
            case Response(status=status) if 200 <= status < 300:
                return None, False
            case Response() as response:
                return status_error(request, response), response.status >= 500
            case TimedOut():
                error, _ = await self._timed_out(timeout, label)
                return error, True
            case ExitStatus() as status:
                return process_exited(0, status), True
            case ErrorInfo() as error:
                self._kill()
                return error, True
        raise AssertionError(f"unexpected reply {reply!r}")

    def _unavailable(self, request_id: str) -> Outcome:
        log.error("instance %s asked to run %s while %s with %d events in flight",
                  self.id, request_id, self.state, self._in_flight)  # fmt: skip
        message = f"instance {self.id} is {self.state} with {self._in_flight} events in flight"
        error = unavailable(message)
        lost = self.state not in SERVING  # a full one keeps serving its other events
        return Outcome(ok=False, error=error, usage=Usage(duration_ms=0.0), instance_lost=lost)

    # -- process and output ------------------------------------------------------------------

    def _cpu_ms(self) -> float | None:
        return process_cpu_ms(self.pid) if self.pid is not None else None

    def _attach(self, event_log: EventLog | None) -> int | None:
        """Count `event_log` among the calls in flight; the server's output goes to the oldest."""
        if event_log is None:
            return None
        token = next(self._tokens)
        self._logs[token] = event_log
        if self._output is not None and len(self._logs) == 1:
            self._output.attach(event_log)
        return token

    def _detach(
        self, token: int | None, event_log: EventLog | None, last_line: str | None = None
    ) -> None:
        if token is None or event_log is None:
            return
        if self._output is not None:
            self._output.drain()  # what the server wrote before answering belongs to this call
            self._output.detach(event_log)
        del self._logs[token]
        if self._output is not None and self._logs:
            self._output.attach(next(iter(self._logs.values())))
        if last_line is not None:
            event_log.platform(last_line)
        event_log.close()


#: lifecycle hook -> FC's header naming its handler, sent on every request when it is on
_HOOK_HEADERS = {
    "initializer": "x-fc-function-initializer",
    "pre_freeze": "x-fc-instance-lifecycle-pre-freeze-handler",
    "pre_stop": "x-fc-instance-lifecycle-pre-stop-handler",
}


def _handler_name(value: str | bool) -> str:
    """A hook's handler as defined: its name, or "true" for `hook = true`."""
    return value if isinstance(value, str) else "true"


def _cpu_delta(status: ExitStatus | None, before: float | None) -> float | None:
    if status is None or before is None:
        return None
    return max(0.0, round(status.cpu_ms - before, 3))
