"""The node's side of an instance placed on Ray: the body of its actor, which runs the local
runtime's own instance there, python, http or exec (the same spawn, process group, signals,
pipes, memory watch and timeouts as on the daemon's machine), and answers the daemon's calls.

Runs in the actor's process on the node: a threaded actor (Ray runs its calls on a pool of
threads, and a synchronous call costs the actor about a third less CPU and the idle latency
about 0.2 ms less than an async actor's, see benchmarks/ray_baseline.py) whose instance lives
on a private event loop in a thread of its own, where each call hands its coroutine. Imports
ray only to learn its node's id, so it is also usable, and tested, without a cluster.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import sys
import threading
from collections.abc import Coroutine
from pathlib import Path
from typing import Any, TypeVar

import msgspec

from daemon.functions import FunctionDef
from daemon.runtimes.base import Instance, InstanceStartError
from daemon.runtimes.exec import ExecInstance
from daemon.runtimes.http import HttpInstance
from daemon.runtimes.python import PythonInstance
from daemon.runtimes.ray_wire import (
    HostReply,
    InvokeCall,
    RelaySink,
    decode_call,
    encode_reply,
)
from daemon.supervise.child import ExitStatus
from daemon.supervise.reaper import Reaper
from daemon.supervise.supervisor import Supervisor

log = logging.getLogger(__name__)

T = TypeVar("T")

PULL_WAIT = 5.0  # seconds a pull waits for news before it answers anyway (the daemon asks again)
LIVE_DELAY = 0.05  # seconds output waits for an attempt's answer before a pull brings it


class _ExitNews:
    """Mixed into a runtime's instance of one long-lived process: tells the host at once when
    that process ends on its own (the daemon learns it with the next answer)."""

    exit_news: asyncio.Event | None = None

    def _on_exit(self, exited: asyncio.Future[ExitStatus]) -> None:
        super()._on_exit(exited)  # type: ignore[misc]
        if self.exit_news is not None:
            self.exit_news.set()


class HostedPython(_ExitNews, PythonInstance):
    """The python runtime's instance, on a node."""


class HostedHttp(_ExitNews, HttpInstance):
    """The http runtime's instance, on a node."""


#: the instance of each runtime as a host runs it (exec has no process between attempts)
HOSTED: dict[str, type[HostedPython | HostedHttp | ExecInstance]] = {
    "python": HostedPython,
    "http": HostedHttp,
    "exec": ExecInstance,
}


def on_node(function: FunctionDef, shipped: bool) -> FunctionDef:
    """The definition as it runs on this node: its code in the folder Ray unpacked (the actor's
    working directory), the node's interpreter unless `python` names one, no account switch."""
    return msgspec.structs.replace(
        function,
        code_dir=os.getcwd() if shipped else function.code_dir,
        interpreter=function.python or sys.executable,
        user="",
    )


class InstanceHost:
    """One instance on one node: the actor's class, which the daemon wraps with `ray.remote` as a
    threaded actor (its calls run on a pool of Ray's threads: a signal, stop or pull must not
    queue behind the attempt running). Each call hands its work to the instance's own event loop,
    in a thread of its own, and waits. No method of this class may be a coroutine: Ray would
    make it an async actor."""

    def __init__(
        self, definition: bytes, instance_id: str, *, shipped: bool, node: str | None = None
    ) -> None:
        function = on_node(msgspec.json.decode(definition, type=FunctionDef), shipped)
        node = node if node is not None else _ray_node_id()
        self.body = HostedInstance(function, instance_id, node)
        # the instance needs a running loop between calls too (its pipes, its exit, a pull)
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name=instance_id)
        self._thread.daemon = True
        self._thread.start()

    def close(self) -> None:
        """End the instance's loop and its thread, after a stop (an actor's end does it too, with
        its process; a host made outside an actor must be closed)."""
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join()
        self._loop.close()

    def _run(self, work: Coroutine[Any, Any, T]) -> T:
        """Run `work` on the instance's loop and wait for its end, on the calling thread."""
        return asyncio.run_coroutine_threadsafe(work, self._loop).result()

    def start(self, request_id: str | None, log_path: str | None) -> bytes:
        """Spawn the function's process and wait until it is ready."""
        return self._run(self.body.start(request_id, log_path))

    def invoke(self, call: bytes) -> bytes:
        """Run one attempt (an InvokeCall); the outcome, with the log writes not yet
        acknowledged. concurrent.futures.CancelledError if the daemon cancelled it."""
        return self._run(self.body.invoke(decode_call(call)))

    def cancel(self, seq: int) -> None:
        """Cut off the attempt numbered `seq` (the daemon gave up waiting for it): its process is
        killed, as a local instance's is when its attempt is cancelled. Ray does not interrupt
        a threaded actor's call, so this is the daemon's own call."""
        self._run(self.body.cancel(seq))

    def run_hook(
        self, hook: str, request_id: str, log_path: str | None, written: int = 0, seq: int = 0
    ) -> bytes:
        """Run a lifecycle hook of the function's (the daemon has the writes up to `written`)."""
        return self._run(self.body.run_hook(hook, request_id, log_path, written, seq))

    def signal(self, sig: int, seq: int = 0) -> bool:
        """Send `sig` to the function's process group; False if it is gone. A freeze the daemon
        sent before a call that has begun here already is dropped (HostedInstance._begin)."""
        return self._run(self.body.signal(sig, seq))

    def stop(self) -> bytes:
        """Kill the function's process group and reap it."""
        return self._run(self.body.stop())

    def pull(self, written: int) -> bytes:
        """Forget the log writes up to `written` (the daemon has them); answer once the instance
        died or wrote what no answer has carried yet, or after PULL_WAIT seconds. Output waits
        `live_delay` seconds first: an attempt ending meanwhile carries it in its own answer,
        so a short attempt that prints costs no second call."""
        return self._run(self.body.pull(written))


class HostedInstance:
    """The runtime's instance with what the daemon's calls need, on the instance's loop."""

    def __init__(self, function: FunctionDef, instance_id: str, node: str) -> None:
        self._function = function
        self._id = instance_id
        self._node = node
        self._sink = RelaySink()
        self._instance: Instance | None = None  # made by start, on the instance's loop
        self._frozen = False
        self._begun = 0  # the daemon's number of the newest invoke or hook begun here
        self._carried = 0  # the newest log write an answer carried
        self._attempts: dict[int, asyncio.Task[Any]] = {}  # running, by number
        self._cancelled: set[int] = set()  # numbers of attempts cancelled before they began
        self.live_delay = LIVE_DELAY
        self.pulling = 0  # pulls waiting for news here (the daemon sends one at a time)

    def _made(self) -> Instance:
        """The instance, made at the first call, on the instance's loop."""
        if self._instance is None:
            supervisor = Supervisor(reaper=Reaper.adopt_orphans(asyncio.get_running_loop()))
            kind = HOSTED[self._function.runtime]
            instance = kind(self._function, logs=self._sink, supervisor=supervisor)
            if isinstance(instance, _ExitNews):
                instance.exit_news = self._sink.changed
            instance.id = self._id  # its lines in the node's log name the daemon's id
            self._instance = instance
        return self._instance

    async def start(self, request_id: str | None, log_path: str | None) -> bytes:
        """InstanceHost.start, on the loop."""
        path = Path(log_path) if log_path is not None else None
        try:
            await self._made().start(request_id=request_id, log_path=path)
        except InstanceStartError as exc:
            return self._reply(start_error=exc.error)
        return self._reply()

    async def cancel(self, seq: int) -> None:
        """InstanceHost.cancel, on the loop."""
        running = self._attempts.get(seq)
        if running is not None:
            running.cancel()
        elif seq > self._begun:  # not begun yet: its cancel came first (Ray keeps no order)
            self._cancelled.add(seq)

    async def invoke(self, attempt: InvokeCall) -> bytes:
        """InstanceHost.invoke, on the loop: the attempt as a task that a cancel can cut."""
        if attempt.seq in self._cancelled:
            self._cancelled.discard(attempt.seq)
            raise asyncio.CancelledError
        task = asyncio.current_task()
        assert task is not None, "an attempt runs as a task of the instance's loop"
        self._attempts[attempt.seq] = task
        try:
            return await self._attempt(attempt)
        finally:
            del self._attempts[attempt.seq]

    async def _attempt(self, attempt: InvokeCall) -> bytes:
        self._begin(attempt.seq, attempt.written)
        outcome = await self._made().invoke(
            attempt.request_id,
            attempt.payload,
            attempt.attempt,
            attempt.timeout,
            Path(attempt.log_path),
        )
        return self._reply(outcome=outcome)

    async def run_hook(
        self, hook: str, request_id: str, log_path: str | None, written: int, seq: int
    ) -> bytes:
        """InstanceHost.run_hook, on the loop."""
        self._begin(seq, written)
        path = Path(log_path) if log_path is not None else None
        outcome = await self._made().run_hook(hook, request_id=request_id, log_path=path)
        return self._reply(hook=outcome)

    async def signal(self, sig: int, seq: int) -> bool:
        """InstanceHost.signal, on the loop."""
        return self._send(sig, seq)

    def _send(self, sig: int, seq: int = 0) -> bool:
        if sig == signal.SIGSTOP and 0 < seq < self._begun:
            return True
        if sig in (signal.SIGSTOP, signal.SIGCONT):
            self._frozen = sig == signal.SIGSTOP
        return self._made().signal(sig)

    async def stop(self) -> bytes:
        """InstanceHost.stop, on the loop."""
        await self._made().stop()
        self._sink.changed.set()
        return self._reply()

    async def pull(self, written: int) -> bytes:
        """InstanceHost.pull, on the loop."""
        self.pulling += 1
        try:
            return await self._pull(written)
        finally:
            self.pulling -= 1

    async def _pull(self, written: int) -> bytes:
        self._sink.acknowledge(written)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + PULL_WAIT
        while not self._news(written) and (left := deadline - loop.time()) > 0:
            self._sink.changed.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._sink.changed.wait(), left)
            if self._news(written) and self._made().state != "dead":
                await asyncio.sleep(self.live_delay)
        return self._reply()

    def _news(self, written: int) -> bool:
        """Whether a pull has something to tell: a death, or output no answer carried (a Start
        or End line is carried by its attempt's answer)."""
        return self._made().state == "dead" or self._sink.last_output > max(written, self._carried)

    def _begin(self, seq: int, written: int) -> None:
        """A call that needs the instance running begins: note its number, forget the log writes
        the daemon has, thaw a frozen instance (the daemon sends no SIGCONT: a round trip less
        between an event's arrival and its start).

        The daemon sends a freeze (SIGSTOP) without waiting for it, and this is a threaded actor:
        Ray runs its calls concurrently and does not keep their order (only a synchronous,
        single-threaded actor runs one caller's calls in the order sent). A freeze may thus
        arrive after the attempt the daemon sent next, which would then hang frozen: so every
        call is numbered by the daemon, and a freeze older than a call begun here is dropped."""
        self._begun = max(self._begun, seq)
        self._sink.acknowledge(written)
        if self._frozen:
            self._send(signal.SIGCONT)

    def _reply(self, **result: object) -> bytes:
        instance = self._made()
        self._carried = self._sink.last
        return encode_reply(
            HostReply(
                state=instance.state,
                node=self._node,
                pid=instance.pid,
                events_served=instance.events_served,
                chunks=self._sink.unacknowledged(),
                **result,  # type: ignore[arg-type]
            )
        )


def _ray_node_id() -> str:
    """The id of the Ray node this actor runs on."""
    import ray  # only ever on a node, inside an actor

    return ray.get_runtime_context().get_node_id()
