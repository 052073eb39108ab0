"""The daemon's side of an instance placed on Ray: the Instance the pool and the dispatcher use,
forwarding each call to the instance's actor (daemon/runtimes/ray_host.py), which runs the local
runtime's instance on its node. The function's output comes back as the actor's numbered log
writes, through a long poll while the instance lives and with every answer (ray_wire.py).

What Ray adds and the local runtimes do not have: an actor that cannot be placed (no node has
room) is a start that times out; an actor that dies loses the instance, as a dead process does;
one whose node is lost (ray_fate.py) also loses the instance, and cuts its attempt off as a
crash of the daemon would: the attempt is Interrupted and runs again without spending a retry.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import msgspec

from daemon.errors import actor_died, node_lost, start_timeout, unavailable, unreachable
from daemon.files.logfiles import LogSink
from daemon.functions import FunctionDef
from daemon.instances import InstanceState
from daemon.runtimes.base import (
    LOG_CAP,
    HookOutcome,
    Instance,
    InstanceBase,
    InstanceStartError,
    Outcome,
    PlaceUnavailable,
    lost_outcome,
)
from daemon.runtimes.ray_engine import ClusterDown, EngineError, RayEngine
from daemon.runtimes.ray_fate import lost_node
from daemon.runtimes.ray_wire import HostReply, InvokeCall, LogRelay, decode_reply, encode_call

InstanceFactory = Callable[[FunctionDef], Instance]

log = logging.getLogger(__name__)

#: seconds a start may take on Ray beyond the runtime's own start timeout: placement, shipping
#: the code folder and a new worker process on the node
PLACEMENT_TIME = 60.0
#: seconds an attempt's or a hook's answer may come after its own timeout (the node kills and
#: reaps the function's process first) before the actor is taken for lost
ANSWER_SLACK = 30.0
STOP_TIME = 30.0  # seconds the node has to stop the function's process before its actor is killed


class ActorLost(Exception):
    """The actor died or did not answer in time; the message says which."""


class NodeLost(ActorLost):
    """The actor was lost with its node; the message names the node."""


class ActorDied(ActorLost):
    """The actor died on a node that lives (its process killed, out of memory)."""


class RayInstance(InstanceBase):
    """One instance of a function placed on Ray: an actor on some node."""

    kind = "ray"

    def __init__(
        self,
        function: FunctionDef,
        *,
        engine: RayEngine,
        logs: LogSink | None = None,
        log_cap: int = LOG_CAP,
        start_timeout: float = 30.0,
    ) -> None:
        super().__init__(function, log_cap=log_cap, logs=logs)
        self.start_timeout = start_timeout
        self.node: str | None = None  # the Ray node it runs on, once placed
        self._engine = engine
        self._actor: Any = None
        self._relay = LogRelay(self.logs)
        self._follower: asyncio.Task[None] | None = None
        self._calls: set[asyncio.Future[Any]] = set()  # calls whose answers are awaited
        self._in_flight = 0  # attempts running on the node
        self._sent = 0  # calls numbered so far (_number)
        self._fate: asyncio.Future[str | None] | None = None  # how its node died, once lost
        self._generation = -1  # the engine's connection its actor was made in
        self._cut: str | None = None  # why the daemon let go of its cluster, if it did

    def cluster_gone(self, why: str) -> None:
        """The daemon disconnected from the cluster its actor was in (`why`): the instance is
        lost, and the calls it waits on end now (Ray would never answer them)."""
        self._cut = why
        if self.state is not InstanceState.STOPPING:
            self.state = InstanceState.DEAD
        for future in self._calls:
            future.cancel()

    def _stale(self) -> bool:
        """Whether its actor was made in an earlier connection (Ray knows it no more)."""
        return self._actor is not None and self._generation != self._engine.generation

    # -- the Instance protocol ---------------------------------------------------------------

    async def start(self, *, request_id: str | None = None, log_path: Path | None = None) -> None:
        """Place the actor and start the function's process on its node; InstanceStartError if
        the cluster cannot be reached, no node takes it in time, or the process fails."""
        try:
            self._actor = await self._engine.actor(self.id, self.function)
            self._generation = self._engine.generation
            self._engine.track(self)
        except ClusterDown as exc:
            raise PlaceUnavailable(unavailable(str(exc))) from None
        except EngineError as exc:
            raise InstanceStartError(unavailable(str(exc))) from None
        path = str(log_path) if log_path is not None else None
        try:
            reply = await self._call(
                self._actor.start.remote(request_id, path), self.start_timeout + PLACEMENT_TIME
            )
        except ActorLost as exc:
            await self.stop()
            if self._cut is not None or self._engine.down is not None:  # the cluster went
                raise PlaceUnavailable(unavailable(self._cut or str(self._engine.down))) from None
            raise InstanceStartError(start_timeout(self._not_started(exc))) from None
        except BaseException:
            await self.stop()
            raise
        if reply.start_error is not None:
            await self.stop()
            raise InstanceStartError(reply.start_error)
        self.state = InstanceState.IDLE
        self.started_at = time.time()
        self.last_used = time.monotonic()
        self._follower = asyncio.get_running_loop().create_task(self._follow())
        log.info("instance %s placed on Ray node %s (pid %s there)", self.id, self.node, self.pid)

    async def invoke(
        self, request_id: str, payload: msgspec.Raw, attempt: int, timeout: float, log_path: Path
    ) -> Outcome:
        """Run one attempt on the node; an actor lost meanwhile fails it and loses the instance.
        An http server serves up to `concurrency` at once, python and exec one."""
        if (
            self._actor is None
            or self.state not in (InstanceState.IDLE, InstanceState.BUSY)
            or self._full()
        ):
            message = f"instance {self.id} is {self.state}, not idle"
            return lost_outcome(unavailable(message), 0.0, None)
        self._in_flight += 1
        self.state = InstanceState.BUSY
        began = time.monotonic()
        actor, seq = self._actor, self._number()
        call = InvokeCall(
            seq=seq, request_id=request_id, payload=payload, attempt=attempt,
            timeout=timeout, log_path=str(log_path), written=self._relay.written,
        )  # fmt: skip
        ref = actor.invoke.remote(encode_call(call))
        try:
            reply = await self._call(ref, timeout + ANSWER_SLACK)
        except asyncio.CancelledError:
            actor.cancel.remote(seq)  # the node kills the function's process, as a local cut does
            raise
        except NodeLost as exc:  # cut off: Interrupted, as by a crash
            duration = round((time.monotonic() - began) * 1000, 3)
            lost = lost_outcome(node_lost(str(exc)), duration, None)
            return self._on_node(msgspec.structs.replace(lost, interrupted=True))
        except ActorLost as exc:
            duration = round((time.monotonic() - began) * 1000, 3)
            died = isinstance(exc, ActorDied)  # as a local instance whose process dies
            why = actor_died(duration, str(exc)) if died else unreachable(str(exc))
            return self._on_node(lost_outcome(why, duration, None))
        finally:
            self._in_flight -= 1
            self.last_used = time.monotonic()
            if self._in_flight == 0 and self.state is InstanceState.BUSY:
                self.state = InstanceState.IDLE
        assert reply.outcome is not None, "an invoke's answer carries its outcome"
        return self._on_node(reply.outcome)

    def _full(self) -> bool:
        slots = self.function.concurrency if self.function.runtime == "http" else 1
        return self._in_flight >= max(1, slots)

    async def run_hook(
        self, hook: str, *, request_id: str, log_path: Path | None = None
    ) -> HookOutcome:
        """Run a lifecycle hook on the node."""
        timeout = float(getattr(self.function.lifecycle, f"{hook}_timeout", 10.0))
        path = str(log_path) if log_path is not None else None
        started = time.time()
        try:
            if self._actor is None or self._stale():
                raise ActorLost(f"instance {self.id} is {self.state}")
            written, seq = self._relay.written, self._number()
            ref = self._actor.run_hook.remote(hook, request_id, path, written, seq)
            reply = await self._call(ref, timeout + ANSWER_SLACK)
        except ActorLost as exc:
            return HookOutcome(
                hook=hook, ok=False, started=started, duration_ms=0.0,
                error=unreachable(str(exc)), instance_lost=True,
            )  # fmt: skip
        assert reply.hook is not None, "a hook's answer carries its outcome"
        return reply.hook

    def signal(self, sig: int) -> bool:
        """Send `sig` to the function's process group on its node (the call is not awaited);
        False if the instance is gone."""
        if self._actor is None or self.state is InstanceState.DEAD:
            return False
        if sig != signal.SIGCONT:  # the node thaws a frozen instance at its next call
            self._actor.signal.remote(sig, self._number())
        return True

    def _number(self) -> int:
        """The number of the next call to the actor (the actor drops a freeze sent before a call
        it has begun: Ray does not keep the order of a threaded actor's calls)."""
        self._sent += 1
        return self._sent

    async def stop(self) -> None:
        """Stop the function's process on its node, then end the actor; idempotent."""
        if self.state is not InstanceState.DEAD:
            self.state = InstanceState.STOPPING
        stale = self._stale()  # its cluster is gone: nothing to stop there
        actor, self._actor = self._actor, None
        if self._follower is not None:
            self._follower.cancel()
        if actor is not None and not stale:
            with contextlib.suppress(ActorLost):
                await self._call(actor.stop.remote(), STOP_TIME)
            # an attempt's answer is on its way once its process is reaped: let it arrive
            if self._calls:
                await asyncio.wait(set(self._calls), timeout=STOP_TIME)
            self._engine.kill(actor)
        self.state = InstanceState.DEAD

    # -- calls --------------------------------------------------------------------------------

    async def _call(self, ref: Any, timeout: float) -> HostReply:
        """The answer to one actor call, its log writes written; ActorLost if the actor died or
        did not answer within `timeout` seconds."""
        from ray.exceptions import RayActorError, RayTaskError

        future = asyncio.wrap_future(ref.future())  # its answer, set from a thread of Ray's
        self._calls.add(future)
        try:
            data = await _within(future, timeout)
        except TimeoutError:
            message = f"instance {self.id}: its Ray actor gave no answer in {timeout:.0f}s"
            raise ActorLost(message) from None
        except RayActorError as exc:
            self.state = InstanceState.DEAD
            raise await self._lost(exc) from None
        except RayTaskError as exc:  # a fault of fnspool's own on the node: the instance is lost
            log.error("instance %s: the call failed on its node: %s", self.id, exc)
            raise ActorLost(f"instance {self.id}: {_first_line(exc)}") from None
        except asyncio.CancelledError:
            if self._cut is None or not future.cancelled():
                raise
            raise NodeLost(f"instance {self.id}: {self._cut}") from None  # cluster_gone
        finally:
            self._calls.discard(future)
        return self._take(decode_reply(data))

    async def _lost(self, exc: Exception) -> ActorLost:
        """Why the actor was lost, once the cluster can tell (its node, or itself); asked once
        per instance, however many calls were waiting on it."""
        from ray.exceptions import ActorDiedError

        if self._fate is None:
            died = isinstance(exc, ActorDiedError)
            self._fate = asyncio.ensure_future(
                asyncio.to_thread(lost_node, self._actor, self.node, died)
            )
        while not self._fate.done() and self._engine.down is None:
            await asyncio.wait({self._fate}, timeout=1.0)
        death = self._fate.result() if self._fate.done() else None
        gone = self._cut or self._engine.down
        if gone is not None:  # the whole cluster went: as good as a lost node
            return NodeLost(f"instance {self.id}: {gone}")
        if death is not None:
            return NodeLost(f"instance {self.id}: its Ray node {self.node} was lost ({death})")
        return ActorDied(f"instance {self.id}: its Ray actor died: {_first_line(exc)}")

    def _take(self, reply: HostReply) -> HostReply:
        """Write the answer's log writes and keep what it says of the instance."""
        self._relay.take(reply.chunks)
        self.node, self.pid, self.events_served = reply.node, reply.pid, reply.events_served
        if reply.state == InstanceState.DEAD and self.state not in (
            InstanceState.STOPPING,
            InstanceState.DEAD,
        ):
            log.warning("instance %s: its process on Ray node %s ended", self.id, self.node)
            self.state = InstanceState.DEAD
        return reply

    async def _follow(self) -> None:
        """Fetch the function's output while the instance lives (a long poll)."""
        while self._actor is not None and self.state not in (
            InstanceState.STOPPING,
            InstanceState.DEAD,
        ):
            try:
                await self._call(self._actor.pull.remote(self._relay.written), ANSWER_SLACK)
            except ActorLost as exc:
                if self.state not in (InstanceState.STOPPING, InstanceState.DEAD):
                    log.warning("%s", exc)
                    self.state = InstanceState.DEAD
                return

    def _on_node(self, outcome: Outcome) -> Outcome:
        """The outcome with the node it ran on in its usage."""
        usage = msgspec.structs.replace(outcome.usage, node=self.node)
        return msgspec.structs.replace(outcome, usage=usage)

    def _not_started(self, exc: ActorLost) -> str:
        p = self.function.placement
        asks = f"num_cpus={p.num_cpus:g}, num_gpus={p.num_gpus:g}"
        asks += f", memory_mb={self.function.memory_mb}"
        for name, amount in sorted(p.resources.items()):
            asks += f", {name}={amount:g}"
        return f"{exc} (no Ray node took it, or it did not start; it asks for {asks})"


async def _within(answer: asyncio.Future[bytes], timeout: float) -> bytes:
    """The answer, or TimeoutError after `timeout` seconds. One timer and no task: a caller
    cancelled meanwhile leaves the answer to come (stop waits for those in `_calls`)."""
    done, _ = await asyncio.wait((answer,), timeout=timeout)
    if not done:
        raise TimeoutError
    return answer.result()


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def by_placement(local: InstanceFactory, remote: InstanceFactory) -> InstanceFactory:
    """A factory making `remote` instances of functions placed on Ray, `local` ones of others."""

    def make(function: FunctionDef) -> Instance:
        return remote(function) if function.placement.remote else local(function)

    return make
