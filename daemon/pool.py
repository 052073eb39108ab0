"""Instances of one function and their lifecycle: reuse the warmest free one, start new ones up to
max_instances, PreFreeze and freeze idle ones, PreStop before every destruction."""

from __future__ import annotations

import asyncio
import collections
import logging
import signal
import time
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

import msgspec

from daemon.functions import FunctionDef
from daemon.heartbeat import InstanceView
from daemon.ids import new_request_id
from daemon.instances import POOL_MOVES, SERVING, IllegalMove, InstanceState
from daemon.loops import LoopOnce
from daemon.model import ErrorInfo
from daemon.runtimes.base import HookOutcome, Instance, InstanceStartError, PlaceUnavailable

log = logging.getLogger(__name__)

InstanceFactory = Callable[[FunctionDef], Instance]
#: journals one hook run: (instance, outcome, request id of the event it ran for if any, the
#: request id the hook was called with)
HookRecorder = Callable[[Instance, HookOutcome, str | None, str], None]

RETIRE_SLACK = 5.0  # seconds beyond a PreStop's own timeout before the kill goes ahead anyway
#: calls of an Initializer answering 4xx on one instance (seed 002: retried on the same instance)
INIT_CALLS = 3
INIT_PAUSE = 0.5  # seconds before the second call, doubling
#: instances tried for one start when the Initializer loses them (a 5xx, a crash, a timeout)
INIT_INSTANCES = 3


def _spent(error: ErrorInfo, calls: int, instances: int) -> ErrorInfo:
    """The error of an Initializer whose bounded tries are spent, saying how many there were."""
    tries = [f"{calls} calls"] if calls > 1 else []
    tries += [f"{instances} instances"] if instances > 1 else []
    if not tries:
        return error
    return msgspec.structs.replace(error, message=f"{error.message} ({', '.join(tries)})")


class PoolClosed(Exception):
    """The pool was replaced (its definition changed) while waiting for a place in it."""


class Member(msgspec.Struct):
    """The pool's record of one instance: the one owner of its state in the pool."""

    instance: Instance
    state: InstanceState = InstanceState.BUSY  # made with its first event
    load: int = 1  # events running on it


class Lease:
    """A reserved place in a pool: a free instance to reuse, or the right to start one."""

    def __init__(self, pool: FunctionPool, instance: Instance | None) -> None:
        self.pool = pool
        self.instance = instance


class FunctionPool(LoopOnce):
    """The warm instances of one function definition."""

    def __init__(
        self,
        definition: FunctionDef,
        factory: InstanceFactory,
        *,
        record_hook: HookRecorder | None = None,
        logs_dir: Path | None = None,
    ) -> None:
        self.definition = definition
        self._factory = factory
        self._record_hook = record_hook
        self._logs_dir = logs_dir
        self._members: dict[str, Member] = {}  # by instance id, in the order they started
        # indexes kept by _move and the leases, for speed: the state is the member's
        self._free: list[Instance] = []  # one entry per free slot, most recently freed last
        self._freezing = 0  # members running PreFreeze: an event waits for one of them
        self._reserved = 0  # leases holding the right to start an instance
        self._waiters: collections.deque[asyncio.Future[Lease]] = collections.deque()
        self._tasks: set[asyncio.Task[None]] = set()
        self.closed = False

    @property
    def slots(self) -> int:
        """Events one instance serves at once (http only: python and exec serve one)."""
        return max(1, self.definition.concurrency) if self.definition.runtime == "http" else 1

    @property
    def instances(self) -> list[Instance]:
        """The pool's instances, in the order they started."""
        return [m.instance for m in self._members.values()]

    @property
    def busy(self) -> int:
        """Instances serving an event, or about to."""
        return sum(1 for m in self._members.values() if m.load) + self._reserved

    # -- leases ---------------------------------------------------------------------------

    async def lease(self) -> Lease:
        """Wait for a free instance or room for a new one, in arrival order."""
        if not self._waiters:
            lease = self._try_lease()
            if lease is not None:
                return lease
        if self.closed:
            raise PoolClosed(self.definition.name)
        future: asyncio.Future[Lease] = self.loop.create_future()
        self._waiters.append(future)
        try:
            return await future
        except asyncio.CancelledError:
            if future.done() and not future.cancelled():
                self.give_back(future.result())
            raise

    def _try_lease(self) -> Lease | None:
        while self._free:
            instance = self._free.pop()
            if instance.state is InstanceState.DEAD:  # died while idle: it serves nobody
                self._forget(instance)
                self._spawn(self._destroy(instance))
                continue
            self._take(self._members[instance.id])
            return Lease(self, instance)
        if self._freezing:
            # an instance running PreFreeze is free in a moment: wait for it rather than
            # cold-start another (three back-to-back invokes made three instances)
            return None
        if not self.closed and len(self._members) + self._reserved < self.definition.max_instances:
            self._reserved += 1
            return Lease(self, None)
        return None

    def _hand_over(self) -> None:
        """Give freed places to waiters, oldest first."""
        while self._waiters:
            if self._waiters[0].done():
                self._waiters.popleft()
                continue
            lease = self._try_lease()
            if lease is None:
                return
            self._waiters.popleft().set_result(lease)

    async def start(self, lease: Lease, request_id: str | None, log_path: Path | None) -> Instance:
        """Start a new instance for a lease that has none (Initializer included); on failure
        the place is freed and InstanceStartError raised. Without an event, the start and the
        Initializer write to the instance's own log."""
        try:
            instance = await self._ready_instance(request_id, log_path)
        except BaseException:
            self._reserved -= 1
            self._hand_over()
            raise
        self._reserved -= 1
        self._members[instance.id] = Member(instance)
        self._free.extend([instance] * (self.slots - 1))
        lease.instance = instance
        log.info(
            "instance %s of %s started (pid %s)", instance.id, self.definition.name, instance.pid
        )
        self._hand_over()
        return instance

    async def _ready_instance(self, request_id: str | None, log_path: Path | None) -> Instance:
        """A started instance whose Initializer succeeded. One the Initializer lost (an http
        5xx, a crash, a timeout) is replaced, up to INIT_INSTANCES in all (seed 002)."""
        for tried in range(1, INIT_INSTANCES + 1):
            instance = self._factory(self.definition)
            path = log_path or self._instance_log(instance)
            try:
                await instance.start(request_id=request_id, log_path=path)
                outcome, calls = await self._initialize(instance, request_id, path)
            except BaseException:
                await instance.stop()
                raise
            if outcome.ok:
                return instance
            await instance.stop()
            assert outcome.error is not None
            if not outcome.instance_lost or tried == INIT_INSTANCES:
                raise InstanceStartError(_spent(outcome.error, calls, tried))
            log.warning("instance %s of %s: the Initializer lost it (%s): starting another",
                        instance.id, self.definition.name, outcome.error.message)  # fmt: skip
        raise AssertionError("unreachable: the last try returns or raises")

    async def _initialize(
        self, instance: Instance, request_id: str | None, path: Path | None
    ) -> tuple[HookOutcome, int]:
        """Run the Initializer; one that answers 4xx is called again on the same instance, up to
        INIT_CALLS calls begun within `initializer_timeout` of the first. The last outcome, and
        how many calls were made."""
        lifecycle = self.definition.lifecycle
        if not lifecycle.initializer:
            return HookOutcome(hook="initializer", ok=True, started=time.time(), duration_ms=0), 0
        until, pause = time.monotonic() + lifecycle.initializer_timeout, INIT_PAUSE
        for call in range(1, INIT_CALLS + 1):
            outcome = await self._hook(instance, "initializer", request_id, path)
            if outcome.ok or not outcome.retry_same or call == INIT_CALLS:
                break
            if time.monotonic() + pause >= until:
                break
            await asyncio.sleep(pause)
            pause *= 2
        return outcome, call

    def give_back(self, lease: Lease) -> None:
        """Return a lease unused (the event did not run)."""
        instance, lease.instance = lease.instance, None
        if instance is None:
            self._reserved -= 1
            self._hand_over()
        else:
            self.release(instance, lost=False)

    def release(self, instance: Instance, *, lost: bool) -> None:
        """An event ended on `instance`: keep it warm (frozen when idle), or let it go when it is
        lost, recycled or its pool closed."""
        member = self._members.get(instance.id)
        if member is None:
            return  # already destroyed (a forced stop, a shutdown)
        self._leave(member)
        limit = self.definition.max_events_per_instance
        if lost:
            self._forget(instance)
            self._spawn(self._destroy(instance))
            return
        if (
            self.closed
            or member.state is InstanceState.STOPPING
            or (limit and instance.events_served >= limit)
        ):
            self._drop_slots(instance)
            if member.load == 0:
                self._spawn(self.retire(instance, "recycled" if not self.closed else "replaced"))
            return
        instance.last_used = time.monotonic()
        self._free.append(instance)
        if self._waiters:
            self._hand_over()  # straight to the next event: no PreFreeze, no freeze
        elif member.load == 0:
            # idle once the callbacks already due have run: in a burst, the queue's runner
            # (woken by another instance's release) takes this one there, unfrozen
            self.loop.call_soon(self._idle_if_free, instance)

    def _idle_if_free(self, instance: Instance) -> None:
        member = self._members.get(instance.id)
        # still here, still without an event, neither freezing, frozen nor retiring
        if member is not None and member.state is InstanceState.IDLE and not self.closed:
            self._go_idle(member)

    # -- states ---------------------------------------------------------------------------

    def _move(self, member: Member, state: InstanceState) -> None:
        """The one place a member's state changes (POOL_MOVES), keeping the indexes."""
        if state not in POOL_MOVES[member.state]:
            raise IllegalMove(member.instance.id, member.state, state)
        if member.state is InstanceState.FREEZING:
            self._freezing -= 1
        if state is InstanceState.FREEZING:
            self._freezing += 1
        member.state = state

    def _take(self, member: Member) -> None:
        """One more event on the member (thawed if frozen)."""
        member.load += 1
        if member.state is InstanceState.FROZEN:
            member.instance.signal(signal.SIGCONT)
        if member.state is not InstanceState.BUSY:
            self._move(member, InstanceState.BUSY)

    def _leave(self, member: Member) -> None:
        """One event less on the member: idle after its last (unless retiring)."""
        member.load -= 1
        if member.load == 0 and member.state is InstanceState.BUSY:
            self._move(member, InstanceState.IDLE)

    # -- freezing -------------------------------------------------------------------------

    def _go_idle(self, member: Member) -> None:
        """The instance has no event left: PreFreeze (if set), then SIGSTOP its group until its
        next event. Its places are taken away while PreFreeze runs."""
        if not self.definition.lifecycle.pre_freeze:
            self._freeze(member)
            return
        self._drop_slots(member.instance)
        self._move(member, InstanceState.FREEZING)
        self._spawn(self._pre_freeze(member))

    async def _pre_freeze(self, member: Member) -> None:
        instance = member.instance
        try:
            outcome = await self._hook(instance, "pre_freeze", None, None)
        finally:
            # whatever became of it, an event waiting for it is served (by it, or another)
            if member.state is InstanceState.FREEZING:  # not retired meanwhile
                self._move(member, InstanceState.IDLE)
            self.loop.call_soon(self._hand_over)
        if outcome.instance_lost:
            self._forget(instance)
            await self._destroy(instance)
            return
        if self._members.get(instance.id) is member and member.state is InstanceState.IDLE:
            if self.closed:
                return
            if not self._waiters:  # an event waits for it: it is not frozen only to be thawed
                self._freeze(member)
            self._free.extend([instance] * self.slots)
            self._hand_over()

    def _freeze(self, member: Member) -> None:
        if self.definition.freeze and member.instance.signal(signal.SIGSTOP):
            self._move(member, InstanceState.FROZEN)

    # -- ending instances -----------------------------------------------------------------

    async def retire(
        self,
        instance: Instance,
        why: str,
        *,
        request_id: str | None = None,
        log_path: Path | None = None,
    ) -> None:
        """PreStop (bounded by its timeout; a failure is logged, never blocks), then destroy."""
        member = self._members.get(instance.id)
        if member is None or member.state is InstanceState.STOPPING:
            return
        if member.state is InstanceState.FROZEN:
            instance.signal(signal.SIGCONT)
        self._move(member, InstanceState.STOPPING)
        self._drop_slots(instance)
        log.info("instance %s of %s: stopping (%s)", instance.id, self.definition.name, why)
        if self.definition.lifecycle.pre_stop and instance.state is not InstanceState.DEAD:
            timeout = self.definition.lifecycle.pre_stop_timeout + RETIRE_SLACK
            try:
                await asyncio.wait_for(
                    self._hook(instance, "pre_stop", request_id, log_path), timeout
                )
            except TimeoutError:
                log.error("instance %s: PreStop did not end in time: killing", instance.id)
        self._forget(instance)
        await self._destroy(instance)

    async def retire_all(self, why: str) -> None:
        """Retire every instance, busy ones included (PreStop runs beside their events)."""
        await asyncio.gather(*(self.retire(i, why) for i in list(self.instances)))

    async def reap_idle(self, now: float) -> None:
        """Retire instances idle past idle_timeout (keeping min_instances); start missing warm
        ones."""
        timeout = self.definition.idle_timeout
        idle = [
            m.instance
            for m in self._members.values()
            if m.state in (InstanceState.IDLE, InstanceState.FROZEN)
            and now - m.instance.last_used >= timeout
        ]
        excess = len(self._members) - self.definition.min_instances
        for instance in idle[: max(0, excess)]:
            await self.retire(instance, f"idle for {timeout:.0f}s")
        self.keep_warm()

    def keep_warm(self) -> None:
        """Start instances until min_instances are up (Initializer included)."""
        while (
            not self.closed
            and len(self._members) + self._reserved < self.definition.min_instances
            and len(self._members) + self._reserved < self.definition.max_instances
        ):
            self._reserved += 1
            self._spawn(self._warm_one())

    async def _warm_one(self) -> None:
        lease = Lease(self, None)
        try:
            instance = await self.start(lease, None, None)
        except PlaceUnavailable:
            return  # said once by its engine; tried again at the next round
        except InstanceStartError as exc:
            log.warning("warm instance of %s failed to start: %s", self.definition.name, exc)
            return
        self.release(instance, lost=False)

    async def close(self) -> None:
        """Take no more events: retire idle instances now, busy ones as they are released."""
        self.closed = True
        for waiter in self._waiters:
            if not waiter.done():
                waiter.set_exception(PoolClosed(self.definition.name))
        self._waiters.clear()
        idle = [m.instance for m in self._members.values() if not m.load]
        await asyncio.gather(*(self.retire(i, "replaced or shut down") for i in idle))
        while self._tasks:
            await asyncio.gather(*list(self._tasks), return_exceptions=True)

    async def _destroy(self, instance: Instance) -> None:
        await instance.stop()
        self._hand_over()

    def _forget(self, instance: Instance) -> None:
        self._drop_slots(instance)
        member = self._members.pop(instance.id, None)
        if member is not None and member.state is InstanceState.FREEZING:
            self._freezing -= 1

    def _drop_slots(self, instance: Instance) -> None:
        self._free = [i for i in self._free if i is not instance]

    # -- hooks ----------------------------------------------------------------------------

    async def _hook(
        self, instance: Instance, hook: str, request_id: str | None, log_path: Path | None
    ) -> HookOutcome:
        log_path = log_path or self._instance_log(instance)
        # a hook run for no event has its own invocation id, as on FC (seed 002's PreStop lines)
        invocation_id = request_id or new_request_id()
        outcome = await instance.run_hook(hook, request_id=invocation_id, log_path=log_path)
        if self._record_hook is not None:
            self._record_hook(instance, outcome, request_id, invocation_id)
        return outcome

    def _instance_log(self, instance: Instance) -> Path | None:
        """Where hooks that belong to no event write: logs/NAME/INSTANCE_ID.log."""
        if self._logs_dir is None:
            return None
        return self._logs_dir / self.definition.name / f"{instance.id}.log"

    def _spawn(self, work: Coroutine[Any, Any, None]) -> None:
        task = asyncio.get_running_loop().create_task(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # -- views ----------------------------------------------------------------------------

    def state_of(self, instance: Instance) -> InstanceState:
        """The pool's state of the instance, or its process's when that died (or is stopping)
        while the pool held it idle."""
        member = self._members.get(instance.id)
        state = member.state if member is not None else InstanceState.IDLE
        if state is InstanceState.IDLE and instance.state not in SERVING:
            return instance.state
        return state

    def snapshot(self) -> list[InstanceView]:
        """The instances as status.json shows them."""
        return [
            InstanceView(
                id=m.instance.id,
                pid=m.instance.pid,
                node=m.instance.node,
                state=self.state_of(m.instance).shown,
                started_at=m.instance.started_at,
                events_served=m.instance.events_served,
                running=m.load,
            )
            for m in self._members.values()
        ]
