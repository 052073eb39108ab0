"""Runs events: per-function order, dequeue checks, attempts, retries with backoff, expiry."""

from __future__ import annotations

import asyncio
import collections
import logging
import random
import time
from collections.abc import Callable, Mapping
from pathlib import Path

from daemon.functions import Catalog, FunctionDef
from daemon.model import NO_RAW, ErrorInfo, Event, State
from daemon.pool import FunctionPool, InstanceFactory, Lease
from daemon.query import log_path
from daemon.runtimes.base import InstanceStartError, Outcome
from daemon.store import Store

log = logging.getLogger(__name__)

INTERRUPTED = "Interrupted"


def backoff_delay(definition: FunctionDef, failures: int) -> float:
    """The wait before retry number `failures` (1-based): doubling, capped, with full jitter."""
    cfg = definition.async_
    ceiling = min(cfg.backoff * 2 ** (failures - 1), cfg.backoff_max)
    return random.uniform(ceiling / 2, ceiling)


def failed_attempts(event: Event) -> int:
    """Attempts that failed and counted against the retry budget (interruptions do not)."""
    return sum(1 for h in event.history if h.state is State.RETRYING and h.reason != INTERRUPTED)


class Dispatcher:
    """Takes durable Enqueued events and drives each to a terminal state."""

    def __init__(
        self,
        store: Store,
        catalog: Callable[[], Catalog],
        factories: Mapping[str, InstanceFactory],
        logs_dir: Path,
    ) -> None:
        self.store = store
        self._catalog = catalog
        self._factories = factories
        self.logs_dir = logs_dir
        self.pools: dict[str, FunctionPool] = {}
        self._queues: dict[str, collections.deque[str]] = {}
        self._ready: dict[str, asyncio.Event] = {}
        self._runners: dict[str, asyncio.Task[None]] = {}
        self._running: set[asyncio.Task[None]] = set()
        self._timers: set[asyncio.TimerHandle] = set()
        self.accepting = True

    # -- queueing -------------------------------------------------------------------------

    def submit(self, event: Event) -> None:
        """Queue an event now, or when its `not_before` time comes."""
        wait = (event.not_before or 0) - time.time()
        if wait > 0:
            handle = asyncio.get_running_loop().call_later(wait, self._due, event.id)
            self._timers.add(handle)
            return
        name = event.function
        if name not in self._queues:
            self._queues[name] = collections.deque()
            self._ready[name] = asyncio.Event()
            self._runners[name] = asyncio.get_running_loop().create_task(
                self._run_queue(name), name=f"queue-{name}"
            )
        self._queues[name].append(event.id)
        self._ready[name].set()

    def _due(self, request_id: str) -> None:
        self._timers = {t for t in self._timers if not t.cancelled() and t.when() > 0}
        event = self.store.get(request_id)
        if event is not None and not event.ended and self.accepting:
            event.not_before = None
            self.submit(event)

    @property
    def queue_depth(self) -> int:
        """Events waiting for an instance."""
        return sum(len(q) for q in self._queues.values())

    @property
    def running(self) -> int:
        """Events being run."""
        return len(self._running)

    # -- the per-function loop ------------------------------------------------------------

    async def _run_queue(self, name: str) -> None:
        queue, ready = self._queues[name], self._ready[name]
        while True:
            while not queue:
                ready.clear()
                await ready.wait()
            if not self.accepting:
                return
            definition = self._catalog().functions.get(name)
            if definition is None:
                self._invalidate(
                    queue.popleft(), "FunctionNotFound", f"function {name!r} is not defined"
                )
                continue
            lease = await self._pool(definition).lease()
            event = self.store.get(queue.popleft()) if queue else None
            if event is None or event.ended or not self.accepting:
                lease.pool.give_back(lease)
                continue
            task = asyncio.get_running_loop().create_task(self._run_event(event, definition, lease))
            self._running.add(task)
            task.add_done_callback(self._running.discard)

    def _pool(self, definition: FunctionDef) -> FunctionPool:
        pool = self.pools.get(definition.name)
        if pool is None or pool.definition != definition:
            if pool is not None:
                asyncio.get_running_loop().create_task(pool.close())
            factory = self._factories.get(definition.runtime, self._factories["python"])
            pool = self.pools[definition.name] = FunctionPool(definition, factory)
        return pool

    def _invalidate(self, request_id: str, kind: str, message: str) -> None:
        event = self.store.get(request_id)
        if event is None or event.ended:
            return
        if event.state is State.ENQUEUED:
            event = self.store.transition(event, State.DEQUEUED)
        if event.state is State.DEQUEUED:
            self.store.transition(event, State.INVALID, error=ErrorInfo(type=kind, message=message))
            log.warning("event %s Invalid: %s", request_id, message)

    # -- one event ------------------------------------------------------------------------

    async def _run_event(self, event: Event, definition: FunctionDef, lease: Lease) -> None:
        try:
            if not self._dequeue(event, definition):
                lease.pool.give_back(lease)
                return
            await self._attempt(event, definition, lease)
        except Exception:
            log.exception("event %s: internal error while running", event.id)
            raise

    def _dequeue(self, event: Event, definition: FunctionDef) -> bool:
        """Dequeued (or due again after Retrying); expire an event too old to run."""
        if event.state is State.ENQUEUED:
            self.store.transition(event, State.DEQUEUED)
        age = time.time() - event.enqueued_at
        if age > definition.async_.max_event_age:
            limit = definition.async_.max_event_age
            message = f"event is {age:.0f}s old, older than max_event_age {limit:.0f}s"
            self.store.transition(
                event, State.EXPIRED, error=ErrorInfo(type="EventExpired", message=message)
            )
            log.info("event %s Expired", event.id)
            return False
        return True

    async def _attempt(self, event: Event, definition: FunctionDef, lease: Lease) -> None:
        path = log_path(self.logs_dir, event)
        instance = lease.instance
        if instance is None:
            try:
                instance = await lease.pool.start(lease, event.id, path)
            except InstanceStartError as exc:
                self._start_failed(event, exc)
                return
        attempt = event.attempts + 1
        self.store.transition(event, State.RUNNING, attempt=attempt, instance=instance.id)
        outcome = await instance.invoke(event.id, event.payload, attempt, definition.timeout, path)
        self._finish(event, definition, instance.id, attempt, outcome)
        # the instance takes its next event while this outcome is being fsynced
        await lease.pool.release(instance, lost=outcome.instance_lost)
        await self.store.sync()

    def _start_failed(self, event: Event, exc: InstanceStartError) -> None:
        if event.state is State.RETRYING:
            # a retry whose new instance failed to start: the attempt fails (Invalid is for
            # Dequeued events only)
            self.store.transition(event, State.RUNNING, attempt=event.attempts + 1)
            self.store.transition(event, State.FAILED, error=exc.error)
        else:
            self.store.transition(event, State.INVALID, error=exc.error)
        log.warning("event %s: instance could not start: %s", event.id, exc.error.message)

    def _finish(
        self, event: Event, definition: FunctionDef, instance: str, attempt: int, outcome: Outcome
    ) -> None:
        """Journal how the attempt ended and decide what follows (no await: cannot be cut off)."""
        state, not_before = State.SUCCEEDED, None
        if not outcome.ok:
            failures = failed_attempts(event) + 1
            state = State.RETRYING if failures <= definition.async_.max_retries else State.FAILED
            if state is State.RETRYING:
                delay = outcome.retry_delay
                not_before = time.time() + (
                    delay if delay is not None else backoff_delay(definition, failures)
                )
        self.store.transition(
            event,
            state,
            attempt=attempt,
            instance=instance,
            usage=outcome.usage,
            result=outcome.result if outcome.ok and outcome.result is not None else NO_RAW,
            error=outcome.error,
            not_before=not_before,
        )
        if state is State.RETRYING:
            self.submit(event)
        log.info("event %s %s (attempt %d)", event.id, state.value, attempt)

    # -- start-up and shutdown ------------------------------------------------------------

    def recover(self) -> None:
        """Resume every unfinished event found in the journal at start-up."""
        for event in sorted(self.store.events.values(), key=lambda e: e.id):
            if event.ended:
                continue
            if event.state is State.RUNNING:
                self.store.transition(
                    event, State.RETRYING, reason=INTERRUPTED, not_before=time.time()
                )
            elif event.state is State.STOPPING:
                self.store.transition(
                    event, State.STOPPED, reason="stopped before the daemon restarted"
                )
                continue
            self.submit(event)

    async def drain(self, timeout: float) -> None:
        """Stop starting events; let running ones finish up to `timeout`; cut off the rest."""
        self.accepting = False
        for timer in self._timers:
            timer.cancel()
        for name, ready in self._ready.items():
            ready.set()
            self._runners[name].cancel()
        if self._running:
            _, pending = await asyncio.wait(set(self._running), timeout=timeout)
            for task in pending:
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)
        await asyncio.gather(*(p.close() for p in self.pools.values()), return_exceptions=True)
        await asyncio.gather(*(i.stop() for p in self.pools.values() for i in list(p.instances)))

    async def reap_idle(self) -> None:
        """Stop instances idle past their timeout."""
        now = time.monotonic()
        for pool in list(self.pools.values()):
            await pool.reap_idle(now)
