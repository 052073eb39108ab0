"""Runs events: per-function order, dequeue checks, attempts, retries, expiry and stops."""

from __future__ import annotations

import asyncio
import collections
import itertools
import logging
import random
import signal
import time
from collections.abc import Callable, Coroutine, Iterator, Mapping
from enum import StrEnum
from pathlib import Path
from typing import Any, NamedTuple

import msgspec

from daemon.errors import ErrorType, error
from daemon.files.eventlog import INTERRUPTED, journal_lines
from daemon.files.logfiles import EventLogs, LogPaths, LogWrite, append_all
from daemon.functions import AsyncConfig, Definitions, FunctionDef
from daemon.ids import id_problem
from daemon.journal_writer import JournalFailed
from daemon.limits import bounded_error
from daemon.metrics import Metrics
from daemon.model import NO_RAW, ErrorInfo, Event, HookRun, Source, State, Usage
from daemon.pausing import paused_after, resumed_after
from daemon.pool import FunctionPool, InstanceFactory, Lease, PoolClosed
from daemon.refusals import refuse_if, stop_refusal
from daemon.runtimes.base import (
    EventLog,
    HookOutcome,
    Instance,
    InstanceStartError,
    Outcome,
    PlaceUnavailable,
    bounded,
)
from daemon.store import Store
from daemon.text import printable

log = logging.getLogger(__name__)

MAY_HAVE_STARTED = "dequeued before a crash: it may have started"
# events dequeued ahead per instance, so that one fsync covers the intents of many: after a
# crash, these may show an Interrupted attempt they never started (not held against the bound)
AHEAD_PER_INSTANCE = 16
AHEAD_MAX = 256
USER_EXIT = error(ErrorType.USER_PROCESS_EXIT, "User process exit when running", code=439)
STOPPED_ERROR = error(ErrorType.STOPPED, "stopped by request")
#: seconds before an event whose instance's place was down is tried again, when its function is
#: not held (the place came back, or never said it was down)
PLACE_RETRY = 1.0

Ended = Callable[[Event], None]
#: why a function's events wait for now (its Ray cluster cannot be reached); None: they run
Held = Callable[[FunctionDef], str | None]


def backoff_delay(definition: FunctionDef, failures: int) -> float:
    """The wait before retry number `failures` (1-based): doubling, capped, with full jitter."""
    cfg = definition.async_
    ceiling = min(cfg.backoff * 2 ** (failures - 1), cfg.backoff_max)
    return random.uniform(ceiling / 2, ceiling)


def interruptions(event: Event) -> int:
    """Attempts cut off by the daemon's end (a crash, or a shutdown past its drain timeout)
    after their start was on disk, or by the loss of their Ray node: an event dequeued ahead
    that may not even have started is not held against the bound (a crash loop would fail the
    innocent events next in line)."""
    return sum(
        1
        for before, after in itertools.pairwise(event.history)
        if after.state is State.RETRYING
        and after.reason == INTERRUPTED
        and before.reason != MAY_HAVE_STARTED
    )


def too_many_interruptions(count: int, limit: int) -> ErrorInfo:
    """The error of an event ended because its attempts keep being cut off."""
    message = (
        f"the daemon ended (or a Ray node was lost) during {count} attempts of this event, "
        f"more than async.max_interruptions ({limit}): it is not run again"
    )
    return error(ErrorType.TOO_MANY_INTERRUPTIONS, message)


def failed_attempts(event: Event) -> int:
    """Attempts that failed and counted against the retry budget (interruptions do not)."""
    return sum(1 for h in event.history if h.state is State.RETRYING and h.reason != INTERRUPTED)


def _log_made(event: Event) -> bool | None:
    """Whether the event's log file exists: not before anything ran (the usual case, known
    without a look at the disk); unknown once something may have, before a restart."""
    if all(h.state in (State.ENQUEUED, State.DEQUEUED) for h in event.history):
        return False
    return None


def _write_now(write: LogWrite) -> None:
    append_all([write])


def _result(o: Outcome) -> msgspec.Raw:
    """What an attempt returned, for its record (nothing when it failed)."""
    return o.result if o.ok and o.result is not None else NO_RAW


BEFORE_RUNNING = "stopped before running"  # the reason of a stop that found no attempt running


class StopMode(StrEnum):
    """How a running attempt is being stopped."""

    FORCED = "forced"  # PreStop, then its instance is killed
    GRACEFUL = "graceful"  # SIGTERM to the instance first, forced after the grace


class Attempt:
    """An attempt running now: where it runs, and how it is being stopped, if it is."""

    def __init__(self, event: Event, pool: FunctionPool, instance: Instance, path: Path) -> None:
        self.event = event
        self.pool = pool
        self.instance = instance
        self.log_path = path
        self.stop: StopMode | None = None


class FunctionQueue:
    """The ids waiting for an instance of one function, first in, first out. It remembers how
    many at its head were already looked at for dequeuing ahead, so each dispatch looks at the
    new ones only (looking at all 32 every time was 33 store look-ups per event)."""

    def __init__(self) -> None:
        self._ids: collections.deque[str] = collections.deque()
        self._looked = 0

    def __len__(self) -> int:
        return len(self._ids)

    def append(self, request_id: str) -> None:
        """Queue an id at the end."""
        self._ids.append(request_id)

    def popleft(self) -> str:
        """Take the id at the head."""
        self._looked = max(0, self._looked - 1)
        return self._ids.popleft()

    def put_back(self, request_id: str) -> None:
        """Queue an id taken from the head at the head again (it was looked at)."""
        self._ids.appendleft(request_id)
        self._looked += 1

    def not_looked_at(self, depth: int) -> Iterator[str]:
        """The ids among the first `depth` not yet looked at (they are now)."""
        start = self._looked
        self._looked = max(start, min(depth, len(self._ids)))
        return itertools.islice(self._ids, start, self._looked)


class NewEvent(NamedTuple):
    """An event to journal as Enqueued and run."""

    function: str
    payload: msgspec.Raw
    request_id: str | None = None  # None: a new id
    source: Source | None = None
    retry_of: str | None = None
    not_before: float | None = None  # wall clock


class Dispatcher:
    """Journals new events and drives each to a terminal state."""

    def __init__(
        self,
        store: Store,
        definitions: Definitions,
        factories: Mapping[str, InstanceFactory],
        logs_dir: Path,
        on_ended: Ended | None = None,
        log_sink: EventLogs | None = None,
        held: Held | None = None,
    ) -> None:
        self.store = store
        self.definitions = definitions
        self._factories = factories
        self.logs_dir = logs_dir
        self._log_paths = LogPaths(logs_dir)
        self.on_ended = on_ended  # destinations: called once the terminal record is written
        self.held = held or (lambda _definition: None)
        # where the instances write event logs too
        self.log_sink = log_sink or EventLogs(_write_now)
        self.pools: dict[str, FunctionPool] = {}
        self.attempts: dict[str, Attempt] = {}
        self._queues: dict[str, FunctionQueue] = {}
        self._ready: dict[str, asyncio.Event] = {}
        self._runners: dict[str, asyncio.Task[None]] = {}
        self._running: set[asyncio.Task[None]] = set()
        # backoffs waiting, by a number of their own: each forgets itself when it fires (uvloop
        # hands out a plain Handle, with no `when`, for a wait under half a millisecond)
        self._timers: dict[int, asyncio.Handle] = {}
        self._timer_numbers = itertools.count()
        # submitted before their records were on disk, with when they are due (monotonic)
        self._undurable: list[tuple[Event, float]] = []
        # when each unfinished event was born, on the monotonic clock: its age for expiry
        # does not move with wall-clock jumps (taken from the wall clock once, when first seen)
        self._born: dict[str, float] = {}
        self.metrics = Metrics()
        self.accepting = True
        self._cutting = False  # shutting down: attempts cut off now stay Running (Interrupted)

    # -- queueing -------------------------------------------------------------------------

    def enqueue(self, new: list[NewEvent], *, checked: bool = False) -> list[Event | None]:
        """Journal new events as Enqueued, with the intent to run those next in line, and queue
        each once its records are on disk (`store.sync()` says when). None for an id already
        used (`checked`: the caller asked `store.taken` for these ids just now)."""
        events = [
            self.store.enqueue(
                n.function,
                n.payload,
                request_id=n.request_id,
                source=n.source,
                retry_of=n.retry_of,
                not_before=n.not_before,
                checked=checked,
            )
            for n in new
        ]
        fresh = [e for e in events if e is not None]
        self._dequeue_early(fresh)
        for event in fresh:
            self.submit(event)
        return events

    def submit(self, event: Event) -> None:
        """Queue an event once its records are durable, now or when its `not_before` comes."""
        # only a journal written before ids were checked can hold a bad id
        if (why := id_problem(event.id)) is not None:
            self._refuse_bad_id(event, why)
            return
        if event.id not in self._born:
            self._born[event.id] = time.monotonic() - max(0.0, time.time() - event.enqueued_at)
        # the wait is read off the wall clock now, and kept on the monotonic one: a clock that
        # jumps while the records become durable moves no backoff
        due = time.monotonic() + max(0.0, (event.not_before or 0) - time.time())
        if event.seq > self.store.writer.durable_seq:
            self._undurable.append((event, due))
            if len(self._undurable) == 1:
                asyncio.get_running_loop().create_task(self._submit_when_durable())
            return
        self._queue_at(event, due)

    def _queue_at(self, event: Event, due: float) -> None:
        wait = due - time.monotonic()
        if wait > 0:
            number = next(self._timer_numbers)
            loop = asyncio.get_running_loop()
            self._timers[number] = loop.call_later(wait, self._due, number, event.id)
            return
        name = event.function
        if name not in self._queues:
            self._queues[name] = FunctionQueue()
            self._ready[name] = asyncio.Event()
            self._runners[name] = asyncio.get_running_loop().create_task(
                self._run_queue(name), name=f"queue-{name}"
            )
        self._queues[name].append(event.id)
        self._ready[name].set()

    async def _submit_when_durable(self) -> None:
        try:
            await self.store.sync()
        except JournalFailed:
            return  # the daemon stops; the restart queues them
        waiting, self._undurable = self._undurable, []
        for event, due in waiting:
            if not event.ended:
                self._queue_at(event, due)

    def _due(self, number: int, request_id: str) -> None:
        self._timers.pop(number, None)
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
        loop = asyncio.get_running_loop()  # once: each look-up is a getpid() system call
        while True:
            while not queue or self._holds(name):  # paused or held: queued events wait
                ready.clear()
                await ready.wait()
            if not self.accepting:
                return
            definition = self.definitions.get(name)
            if definition is None:
                self._invalidate(
                    queue.popleft(),
                    ErrorType.FUNCTION_NOT_FOUND,
                    f"function {name!r} is not defined",
                )
                continue
            self._dequeue_ahead(queue, definition)
            try:
                lease = await self._pool(definition).lease()
            except PoolClosed:
                continue  # its definition changed meanwhile: wait in the new pool
            if self._holds(name):  # paused or held while waiting for an instance
                lease.pool.give_back(lease)
                continue
            event = self.store.get(queue.popleft()) if queue else None
            if event is None or event.ended or not self.accepting:
                lease.pool.give_back(lease)
                continue
            task = loop.create_task(self._run_event(event, definition, lease))
            self._running.add(task)
            task.add_done_callback(self._running.discard)

    def _dequeue_early(self, events: list[Event]) -> None:
        """Journal Dequeued now for new events that will be dispatched at once, so one fsync
        makes both their Enqueued and the intent to run them durable (an idle daemon then pays
        one fsync between a file's arrival and its handler's start, not two)."""
        ahead: collections.Counter[str] = collections.Counter()
        for event in events:
            definition = self.definitions.get(event.function)
            if definition is None or event.not_before is not None:
                continue
            if self._holds(event.function):
                continue
            queued = len(self._queues.get(event.function, ())) + ahead[event.function]
            if queued < min(AHEAD_PER_INSTANCE * definition.max_instances, AHEAD_MAX):
                ahead[event.function] += 1
                self._dequeue(event, definition)

    def _dequeue_ahead(self, queue: FunctionQueue, definition: FunctionDef) -> None:
        """Journal Dequeued for the events next in line before an instance is free: that record
        is the intent to run them, and its fsync goes on while earlier events run."""
        depth = min(AHEAD_PER_INSTANCE * definition.max_instances, AHEAD_MAX)
        for request_id in list(queue.not_looked_at(depth)):
            event = self.store.get(request_id)
            if event is not None and event.state is State.ENQUEUED:
                self._dequeue(event, definition)  # an event too old ends Expired here

    def _holds(self, name: str) -> bool:
        """Whether the function's queued events wait: paused, or held (its place is down)."""
        if self.store.paused.holds(name):
            return True
        definition = self.definitions.get(name)
        return definition is not None and self.held(definition) is not None

    def wake(self) -> None:
        """Look at every queue again (a function's events are no longer held)."""
        for ready in self._ready.values():
            ready.set()

    def _pool(self, definition: FunctionDef) -> FunctionPool:
        pool = self.pools.get(definition.name)
        if pool is None or pool.definition != definition:
            if pool is not None:  # a changed definition replaces its instances, PreStop first
                self._close_soon(pool)
            pool = self.pools[definition.name] = self._new_pool(definition)
        return pool

    def _close_soon(self, pool: FunctionPool) -> None:
        task = asyncio.get_running_loop().create_task(pool.close())
        self._running.add(task)  # a shutdown waits for it
        task.add_done_callback(self._running.discard)

    def _new_pool(self, definition: FunctionDef) -> FunctionPool:
        factory = self._factories.get(definition.runtime, self._factories["python"])
        pool = FunctionPool(
            definition, factory, record_hook=self._record_hook, logs_dir=self.logs_dir
        )
        pool.keep_warm()
        return pool

    def reconcile(self) -> None:
        """After a reload: replace the pools of changed definitions (PreStop first), close those
        of deleted ones, and start the warm instances (min_instances) of the rest."""
        for name, pool in list(self.pools.items()):
            if self.definitions.get(name) != pool.definition:
                del self.pools[name]
                self._close_soon(pool)
        for definition in self.definitions.functions.values():
            if definition.min_instances > 0 or definition.name in self.pools:
                self._pool(definition)

    def _record_hook(
        self, instance: Instance, outcome: HookOutcome, request_id: str | None, invocation_id: str
    ) -> None:
        record = HookRun(
            at=time.time(),
            instance=instance.id,
            function=instance.function.name,
            hook=outcome.hook,
            started=outcome.started,
            duration_ms=outcome.duration_ms,
            ok=outcome.ok,
            error=bounded_error(outcome.error) if outcome.error is not None else None,
            request_id=request_id,
            invocation_id=invocation_id,
        )
        try:
            self.store.note(record)
        except JournalFailed:  # the daemon is stopping: PreStop goes on, unrecorded
            log.info(
                "instance %s: %s not journaled (the journal failed)", instance.id, outcome.hook
            )

    def _refuse_bad_id(self, event: Event, why: str) -> None:
        """End an event whose id could not name its log (nor a file anywhere): never run."""
        message = f"its request id is not valid: {why}"
        if event.state is State.RETRYING:  # interrupted by a crash: Invalid cannot follow
            self._end(event, State.STOPPED, reason=message)
            log.warning("event %s Stopped: %s", printable(event.id), message)
        else:
            self._invalidate(event.id, ErrorType.INVALID_REQUEST_ID, message)

    def _invalidate(self, request_id: str, kind: ErrorType, message: str) -> None:
        event = self.store.get(request_id)
        if event is None or event.ended:
            return
        if event.state is State.ENQUEUED:
            event = self.store.transition(event, State.DEQUEUED)
        if event.state is State.DEQUEUED:
            self._end(event, State.INVALID, error=error(kind, message))
            log.warning("event %s Invalid: %s", printable(request_id), message)

    # -- one event ------------------------------------------------------------------------

    async def _run_event(self, event: Event, definition: FunctionDef, lease: Lease) -> None:
        try:
            if not self._dequeue(event, definition):
                lease.pool.give_back(lease)
                return
            await self._attempt(event, definition, lease)
        except JournalFailed:
            # the daemon is stopping (the journal failed): the restart replays this event
            log.info("event %s: left to the restart (the journal failed)", event.id)
        except Exception:
            log.exception("event %s: internal error while running", event.id)
            raise

    def _dequeue(self, event: Event, definition: FunctionDef) -> bool:
        """Dequeued (or due again after Retrying); expire an event too old to run."""
        if event.state is State.ENQUEUED:
            self.store.transition(event, State.DEQUEUED)
        age = self._age(event)
        if age > definition.async_.max_event_age:
            limit = definition.async_.max_event_age
            message = f"event is {age:.0f}s old, older than max_event_age {limit:.0f}s"
            self._end(event, State.EXPIRED, error=error(ErrorType.EVENT_EXPIRED, message))
            log.info("event %s Expired", event.id)
            return False
        return True

    async def _attempt(self, event: Event, definition: FunctionDef, lease: Lease) -> None:
        path = self._log_paths.of(event.function, event.id)
        self.log_sink.track(event.id, path, lambda: journal_lines(event), _log_made(event))
        instance = lease.instance
        if instance is None:
            self.metrics.cold_start(event.function)
            try:
                instance = await lease.pool.start(lease, event.id, path)
            except InstanceStartError as exc:
                self._start_failed(event, exc)
                return
        if event.ended:  # stopped while its instance was starting
            lease.pool.release(instance, lost=False)
            return
        attempt = event.attempts + 1
        # no run the journal does not know: a first attempt runs once its Dequeued (the intent,
        # journaled ahead) is on disk, a retry once its Running is; a crash then shows the
        # attempt as Interrupted. Running itself records the real start either way.
        intent = event.seq if event.state is State.DEQUEUED else None
        self.store.transition(event, State.RUNNING, attempt=attempt, instance=instance.id)
        self.attempts[event.id] = running = Attempt(event, lease.pool, instance, path)
        try:
            await self.store.sync(intent)
            if running.stop is None:
                outcome = bounded(
                    await instance.invoke(
                        event.id, event.payload, attempt, definition.timeout, path
                    )
                )
            else:  # stopped while its Running was being made durable: it never started
                outcome = Outcome(ok=False, error=STOPPED_ERROR, usage=Usage(duration_ms=0.0))
        finally:
            del self.attempts[event.id]
        if self._cutting and not outcome.ok:
            return  # cut off by the shutdown: Interrupted at the next start
        self._finish(event, definition, running, attempt, outcome)
        # the instance takes its next event while this outcome is being fsynced
        if running.stop is None:
            lease.pool.release(instance, lost=outcome.instance_lost)
        await self.store.sync()

    def _start_failed(self, event: Event, exc: InstanceStartError) -> None:
        if isinstance(exc, PlaceUnavailable):  # it waits, first in line, where it was
            log.info("event %s waits: %s", event.id, exc.error.message)
            self._put_back(event)
            return
        log.warning("event %s: instance could not start: %s", event.id, exc.error.message)
        if event.state is State.RETRYING:
            # a retry whose new instance failed to start: the attempt fails (Invalid is for
            # Dequeued events only)
            self.store.transition(event, State.RUNNING, attempt=event.attempts + 1)
            self._end(event, State.FAILED, error=exc.error)
        elif event.state is State.DEQUEUED:
            self._end(event, State.INVALID, error=exc.error)

    def _put_back(self, event: Event) -> None:
        """Queue an event whose instance could not start for now at the head of its queue: at
        once if its function is held (it waits there), else after a while (no busy loop)."""
        if self._holds(event.function):
            self._to_head(None, event.id)
            return
        number = next(self._timer_numbers)
        loop = asyncio.get_running_loop()
        self._timers[number] = loop.call_later(PLACE_RETRY, self._to_head, number, event.id)

    def _to_head(self, number: int | None, request_id: str) -> None:
        if number is not None:
            self._timers.pop(number, None)
        event = self.store.get(request_id)
        if event is not None and not event.ended and self.accepting:
            self._queues[event.function].put_back(event.id)
            self._ready[event.function].set()

    def _finish(
        self, event: Event, definition: FunctionDef, running: Attempt, attempt: int, o: Outcome
    ) -> None:
        """Journal how the attempt ended and decide what follows (no await: cannot be cut off)."""
        if event.state is State.STOPPING:
            self._stopped(event, running, attempt, o)
            self.metrics.attempt_ended(
                event.function, State.STOPPED, o.usage.duration_ms, o.usage.node
            )
            return
        if o.interrupted:
            self._interrupted(event, definition, running, attempt, o)
            return
        state, not_before = State.SUCCEEDED, None
        if not o.ok:
            failures = failed_attempts(event) + 1
            state = State.RETRYING if failures <= definition.async_.max_retries else State.FAILED
            if state is State.RETRYING:
                delay = o.retry_delay
                not_before = time.time() + (
                    delay if delay is not None else backoff_delay(definition, failures)
                )
        fields: dict[str, Any] = {
            "attempt": attempt,
            "instance": running.instance.id,
            "usage": o.usage,
        }
        if state is State.RETRYING:
            self.store.transition(event, state, error=o.error, not_before=not_before, **fields)
            self.submit(event)
        else:
            self._end(event, state, result=_result(o), error=o.error, **fields)
        self.metrics.attempt_ended(event.function, state, o.usage.duration_ms, o.usage.node)
        # a success is the common case, and the journal has it: the daemon log keeps the rest
        level = logging.DEBUG if state is State.SUCCEEDED else logging.INFO
        log.log(level, "event %s %s (attempt %d)", event.id, state.value, attempt)

    def _interrupted(
        self, event: Event, definition: FunctionDef, running: Attempt, attempt: int, o: Outcome
    ) -> None:
        """An attempt cut off by the loss of its node: Retrying (Interrupted) at once, as after a
        crash, no retry spent; Failed once cut off more often than max_interruptions."""
        fields: dict[str, Any] = {"attempt": attempt, "instance": running.instance.id}
        count, limit = interruptions(event) + 1, definition.async_.max_interruptions
        state = State.RETRYING if count <= limit else State.FAILED
        if state is State.RETRYING:
            self.store.transition(
                event, state, reason=INTERRUPTED, error=o.error, usage=o.usage,
                not_before=time.time(), **fields,
            )  # fmt: skip
            self.submit(event)
        else:
            error = too_many_interruptions(count, limit)
            self._end(event, state, reason=INTERRUPTED, error=error, usage=o.usage, **fields)
        self.metrics.attempt_ended(event.function, state, o.usage.duration_ms, o.usage.node)
        log.warning("event %s %s: %s", event.id, state.value, o.error.message if o.error else "")

    def _stopped(self, event: Event, running: Attempt, attempt: int, o: Outcome) -> None:
        """A stopped attempt ended: its return value is kept; death by SIGTERM is code 439."""
        error = None
        if not o.ok:
            sigterm = running.stop is StopMode.GRACEFUL and o.usage.signal == signal.SIGTERM
            error = USER_EXIT if sigterm else STOPPED_ERROR
        self._end(
            event,
            State.STOPPED,
            attempt=attempt,
            instance=running.instance.id,
            usage=o.usage,
            result=_result(o),
            error=error,
            reason=running.stop,
        )
        log.info("event %s Stopped (%s)", event.id, running.stop)

    def _age(self, event: Event) -> float:
        """Seconds since the event was enqueued, on the monotonic clock once it is known here."""
        born = self._born.get(event.id)
        if born is None:
            return time.time() - event.enqueued_at
        return time.monotonic() - born

    def _end(self, event: Event, state: State, **fields: Any) -> None:
        """Journal a terminal state, then hand the event to the destinations."""
        self._born.pop(event.id, None)
        self.store.transition(event, state, **fields)
        self.log_sink.forget(event.id)
        if self.on_ended is not None:
            self.on_ended(event)

    # -- pausing --------------------------------------------------------------------------

    def pause(self, function: str | None) -> str:
        """Hold dispatch of `function` (None: all): its queued events wait, running ones
        finish. What was done, in words; Refused for an undefined function."""
        paused, message = paused_after(self.store.paused, function, self.definitions.functions)
        if paused != self.store.paused:
            self.store.set_paused(paused)
        return message

    def resume(self, function: str | None) -> str:
        """Release dispatch of `function` (None: all) and wake its queue; what was done."""
        paused, message = resumed_after(self.store.paused, function, self.definitions.functions)
        if paused != self.store.paused:
            self.store.set_paused(paused)
            for name, ready in self._ready.items():
                if not paused.holds(name):
                    ready.set()
        return message

    # -- stopping -------------------------------------------------------------------------

    def stop(self, request_id: str, *, graceful: bool, grace: float = 10.0) -> str:
        """Stop an event (TerminateAsyncEvent); what was done, in words. Refused if it has
        already ended, is unknown, or is being stopped (unless a forced stop escalates a
        graceful one in progress)."""
        event = self.store.get(request_id)
        running = self.attempts.get(request_id)
        how = running.stop if running is not None else None
        state = event.state if event is not None else None
        refuse_if(
            stop_refusal(request_id, state, graceful=graceful, stopping=how or BEFORE_RUNNING)
        )
        assert event is not None
        if running is not None and running.stop is StopMode.GRACEFUL:
            running.stop = StopMode.FORCED  # a second forced request is refused from now on
            self._spawn(self._force(running))
            log.info("event %s: graceful stop forced by request", event.id)
            return "forcing the graceful stop now"
        if running is None:  # Enqueued, Dequeued, Retrying: never runs again
            was = event.state.value
            self.store.transition(event, State.STOPPING, reason=BEFORE_RUNNING)
            self._end(event, State.STOPPED, reason=BEFORE_RUNNING)
            return f"stopped while {was}"
        running.stop = StopMode.GRACEFUL if graceful else StopMode.FORCED
        self.store.transition(event, State.STOPPING, reason=running.stop)
        self._spawn(self._force(running) if not graceful else self._terminate(running, grace))
        return f"stopping ({running.stop})"

    def _spawn(self, work: Coroutine[Any, Any, None]) -> None:
        """Run stop work beside the attempt; a shutdown waits for it."""
        task = asyncio.get_running_loop().create_task(work)
        self._running.add(task)
        task.add_done_callback(self._running.discard)

    async def _force(self, running: Attempt) -> None:
        """PreStop on the event's instance, then its process group killed (the attempt ends)."""
        running.stop = StopMode.FORCED
        await running.pool.retire(
            running.instance,
            f"event {running.event.id} stopped",
            request_id=running.event.id,
            log_path=running.log_path,
        )

    async def _terminate(self, running: Attempt, grace: float) -> None:
        """SIGTERM to the instance; forced if the attempt still runs after `grace` seconds."""
        event_log = EventLog(running.log_path, sink=self.log_sink)
        sent = running.instance.signal(signal.SIGTERM)
        event_log.platform("Signal received successfully." if sent else "Signal reception failed.")
        event_log.close()
        deadline = time.monotonic() + grace
        while self.attempts.get(running.event.id) is running and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        if self.attempts.get(running.event.id) is running:
            log.info("event %s still running %.0fs after SIGTERM: forcing", running.event.id, grace)
            await self._force(running)
        else:  # it returned or died: the instance got SIGTERM, so it is not reused
            await running.pool.retire(running.instance, f"event {running.event.id} stopped")

    # -- start-up and shutdown ------------------------------------------------------------

    def recover(self) -> None:
        """Resume every unfinished event found in the journal at start-up."""
        for event in sorted(self.store.events.values(), key=lambda e: e.id):
            if event.ended:
                continue
            if event.state is State.DEQUEUED:  # its intent was on disk: it may have started
                self.store.transition(
                    event, State.RUNNING, attempt=event.attempts + 1, reason=MAY_HAVE_STARTED
                )
            elif event.state is State.RUNNING and self._interrupted_too_often(event):
                continue
            if event.state is State.RUNNING:
                self.store.transition(
                    event, State.RETRYING, reason=INTERRUPTED, not_before=time.time()
                )
            elif event.state is State.STOPPING:
                self._end(event, State.STOPPED, reason="stopped before the daemon restarted")
                continue
            self.submit(event)

    def _interrupted_too_often(self, event: Event) -> bool:
        """End a Running event found at start-up as Failed once it has been cut off more often
        than its function allows (a handler that kills the daemon would run at every start)."""
        definition = self.definitions.get(event.function)
        limit = (definition.async_ if definition is not None else AsyncConfig()).max_interruptions
        count = interruptions(event) + 1
        if count <= limit:
            return False
        error = too_many_interruptions(count, limit)
        self._end(event, State.FAILED, attempt=event.attempts, reason=INTERRUPTED, error=error)
        log.warning("event %s Failed: %s", event.id, error.message)
        return True

    async def drain(self, timeout: float) -> None:
        """Stop starting events; let running ones finish up to `timeout`; then PreStop every
        instance and cut off the rest (they run again after the next start)."""
        self.accepting = False
        for timer in self._timers.values():
            timer.cancel()
        self._timers.clear()
        for name, ready in self._ready.items():
            ready.set()
            self._runners[name].cancel()
        if self._running:
            _, pending = await asyncio.wait(set(self._running), timeout=timeout)
            if pending:
                self._cutting = True
                await asyncio.gather(
                    *(p.retire_all("daemon shutdown") for p in self.pools.values())
                )
                _, pending = await asyncio.wait(pending, timeout=5.0)
                for task in pending:  # still starting an instance: its start is cut
                    task.cancel()
                await asyncio.gather(*pending, return_exceptions=True)
        await asyncio.gather(*(p.close() for p in self.pools.values()), return_exceptions=True)

    async def reap_idle(self) -> None:
        """Retire instances idle past their timeout; keep min_instances warm."""
        now = time.monotonic()
        for pool in list(self.pools.values()):
            await pool.reap_idle(now)
