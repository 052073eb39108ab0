"""Instances of one function: reuse the warmest idle one, start new ones up to max_instances."""

from __future__ import annotations

import asyncio
import collections
import logging
import time
from collections.abc import Callable
from pathlib import Path

from daemon.functions import FunctionDef
from daemon.runtimes.base import Instance

log = logging.getLogger(__name__)

InstanceFactory = Callable[[FunctionDef], Instance]


class Lease:
    """A reserved place in a pool: an idle instance to reuse, or the right to start one."""

    def __init__(self, pool: FunctionPool, instance: Instance | None) -> None:
        self.pool = pool
        self.instance = instance


class FunctionPool:
    """The warm instances of one function definition."""

    def __init__(self, definition: FunctionDef, factory: InstanceFactory) -> None:
        self.definition = definition
        self._factory = factory
        self.instances: list[Instance] = []
        self._idle: list[Instance] = []  # most recently used last: reuse warmest first
        self._reserved = 0  # leases holding the right to start an instance
        self._waiters: collections.deque[asyncio.Future[Lease]] = collections.deque()
        self.closed = False

    @property
    def busy(self) -> int:
        """Instances serving an event, or about to."""
        return len(self.instances) - len(self._idle) + self._reserved

    def _capacity_left(self) -> bool:
        return len(self.instances) + self._reserved < self.definition.max_instances

    async def lease(self) -> Lease:
        """Wait for an idle instance or room for a new one, in arrival order."""
        if not self._waiters:
            if self._idle:
                return Lease(self, self._idle.pop())
            if self._capacity_left():
                self._reserved += 1
                return Lease(self, None)
        future: asyncio.Future[Lease] = asyncio.get_running_loop().create_future()
        self._waiters.append(future)
        try:
            return await future
        except asyncio.CancelledError:
            if future.done() and not future.cancelled():
                self.give_back(future.result())
            raise

    async def start(self, lease: Lease, request_id: str, log_path: Path) -> Instance:
        """Start a new instance for a lease that has none; on failure the place is freed."""
        instance = self._factory(self.definition)
        try:
            await instance.start(request_id=request_id, log_path=log_path)
        except BaseException:
            self._reserved -= 1
            await instance.stop()
            self._hand_over()
            raise
        self._reserved -= 1
        self.instances.append(instance)
        lease.instance = instance
        log.info(
            "instance %s of %s started (pid %s)", instance.id, self.definition.name, instance.pid
        )
        return instance

    def give_back(self, lease: Lease) -> None:
        """Return a lease unused (the event did not run)."""
        if lease.instance is None:
            self._reserved -= 1
        else:
            self._idle.append(lease.instance)
        lease.instance = None
        self._hand_over()

    async def release(self, instance: Instance, *, lost: bool) -> None:
        """An event ended on `instance`: keep it warm, or discard it when it is lost or recycled."""
        limit = self.definition.max_events_per_instance
        if lost or self.closed or (limit and instance.events_served >= limit):
            await self.discard(instance)
            return
        instance.last_used = time.monotonic()
        self._idle.append(instance)
        self._hand_over()

    async def discard(self, instance: Instance) -> None:
        """Stop an instance and free its place."""
        if instance in self.instances:
            self.instances.remove(instance)
        if instance in self._idle:
            self._idle.remove(instance)
        await instance.stop()
        self._hand_over()

    def _hand_over(self) -> None:
        """Give freed places to waiters, oldest first."""
        while self._waiters:
            if self._waiters[0].done():
                self._waiters.popleft()
                continue
            if self._idle:
                lease = Lease(self, self._idle.pop())
            elif self._capacity_left() and not self.closed:
                self._reserved += 1
                lease = Lease(self, None)
            else:
                return
            self._waiters.popleft().set_result(lease)

    async def reap_idle(self, now: float) -> None:
        """Stop instances idle for longer than idle_timeout."""
        timeout = self.definition.idle_timeout
        for instance in [i for i in self._idle if now - i.last_used >= timeout]:
            log.info(
                "instance %s of %s idle for %.0fs: stopping",
                instance.id,
                instance.function.name,
                timeout,
            )
            await self.discard(instance)

    async def close(self) -> None:
        """Stop every idle instance now and busy ones as they are released."""
        self.closed = True
        await asyncio.gather(*(self.discard(i) for i in list(self._idle)))

    def snapshot(self) -> list[dict[str, object]]:
        """The instances as status.json shows them."""
        idle = set(map(id, self._idle))
        return [
            {
                "id": i.id,
                "pid": i.pid,
                "state": "idle" if id(i) in idle else i.state,
                "started_at": i.started_at,
                "events_served": i.events_served,
            }
            for i in self.instances
        ]
