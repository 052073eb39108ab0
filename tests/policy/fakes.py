"""What the policy tests drive: a scripted instance in place of a runtime's, the daemon's own
dispatcher, pools and store over a real journal in a temporary folder, and a clock moved by hand.

The fake instance keeps the runtime contract of daemon/runtimes/base.py as the python runtime
does: it serves one event at a time, counts the events it answered (not those it died in), dies
on SIGKILL (`stop`) and, unless told otherwise, on SIGTERM, and never runs while frozen.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import msgspec
from conftest import journal_records

from daemon.dispatcher import Dispatcher, NewEvent
from daemon.files.logfiles import EventLogs
from daemon.functions import AsyncConfig, Catalog, Definitions, FunctionDef, LifecycleConfig
from daemon.instances import InstanceState
from daemon.journal_writer import JournalWriter, recover
from daemon.model import ErrorInfo, Event, HookRun, State, Transition, Usage, raw_json
from daemon.runtimes.base import (
    LOG_CAP,
    HookOutcome,
    InstanceBase,
    InstanceStartError,
    Outcome,
    PlaceUnavailable,
)
from daemon.store import Store

# -- the clock and the jitter ----------------------------------------------------------------


class FakeClock:
    """Stands in for the `time` module of daemon.dispatcher and daemon.pool: both clocks stand
    still until the test moves them (asyncio's own timers still run on the real clock)."""

    def __init__(self) -> None:
        self.wall = time.time()
        self.mono = time.monotonic()
        self.looks = 0  # readings of the monotonic clock: a timer loop shows it went round

    def time(self) -> float:
        """The wall clock."""
        return self.wall

    def monotonic(self) -> float:
        """The monotonic clock."""
        self.looks += 1
        return self.mono

    def advance(self, seconds: float) -> None:
        """Move both clocks on."""
        self.wall += seconds
        self.mono += seconds


class TopOfRange:
    """Stands in for `random` in daemon.dispatcher: each jitter draw is its range's top, and
    every range asked for is kept."""

    def __init__(self) -> None:
        self.ranges: list[tuple[float, float]] = []

    def uniform(self, low: float, high: float) -> float:
        """The top of the range."""
        self.ranges.append((low, high))
        return high


# -- outcomes --------------------------------------------------------------------------------


def succeeded(value: Any = None) -> Outcome:
    """The handler returned `value`."""
    return Outcome(ok=True, result=raw_json(value), usage=Usage(duration_ms=1.0))


def failed(kind: str = "HandlerError", *, retry_delay: float | None = None) -> Outcome:
    """The handler raised (`retry_delay`: it raised the runtime's Retry(delay))."""
    error = ErrorInfo(type=kind, message=f"{kind} raised")
    return Outcome(ok=False, error=error, usage=Usage(duration_ms=1.0), retry_delay=retry_delay)


def died(sig: int) -> Outcome:
    """The instance's process was killed by `sig` mid-event."""
    error = ErrorInfo(type="ProcessExited", message=f"killed by signal {sig}")
    usage = Usage(duration_ms=1.0, signal=sig)
    return Outcome(ok=False, error=error, usage=usage, instance_lost=True)


# -- the fake instance -----------------------------------------------------------------------


class Call:
    """One invoke of a fake instance: answered by its script at once, or held until the test
    answers it or the instance is signalled or killed."""

    def __init__(
        self, instance: FakeInstance, request_id: str, payload: msgspec.Raw, attempt: int
    ) -> None:
        self.instance = instance
        self.request_id = request_id
        self.attempt = attempt
        self.payload = msgspec.json.decode(payload)
        self.reply: asyncio.Future[Outcome] = asyncio.get_running_loop().create_future()

    def answer(self, outcome: Outcome) -> None:
        """End the call with `outcome` (the first answer wins)."""
        if not self.reply.done():
            self.reply.set_result(outcome)


#: what an instance does with a call: an outcome now, or None to hold it
Script = Callable[[Call], Outcome | None]
#: what a held call does on SIGTERM: its outcome, or None to ignore the signal
OnSigterm = Callable[[Call], Outcome | None]


class FakeRuntime:
    """The factory of fake instances (an InstanceFactory) and the record of what they did."""

    def __init__(self, script: Script | None = None) -> None:
        self.script: Script = script or (lambda call: succeeded(call.payload))
        self.on_sigterm: OnSigterm = lambda _call: died(signal.SIGTERM)
        self.start_error: ErrorInfo | None = None
        self.place_down = False  # the start error is PlaceUnavailable (a Ray cluster down)
        self.failing_hooks: dict[str, ErrorInfo] = {}
        #: hooks that, once begun, wait for their gate to be set
        self.gates: dict[str, asyncio.Event] = {}
        self.instances: list[FakeInstance] = []
        self.calls: list[Call] = []
        #: what each instance was asked to do, in order: (instance id, what)
        self.timeline: list[tuple[str, str]] = []

    def __call__(self, function: FunctionDef) -> FakeInstance:
        instance = FakeInstance(self, function)
        self.instances.append(instance)
        return instance

    def did(self, instance: InstanceBase) -> list[str]:
        """What one instance was asked to do, in order (`invoke ID`, hooks, signals, `kill`)."""
        return [what for who, what in self.timeline if who == instance.id]

    def held(self) -> list[Call]:
        """The calls not answered yet."""
        return [c for c in self.calls if not c.reply.done()]

    def call_of(self, request_id: str) -> Call | None:
        """The latest call of that event, if any."""
        return next((c for c in reversed(self.calls) if c.request_id == request_id), None)

    def alive(self) -> list[FakeInstance]:
        """The instances started and not stopped."""
        return [i for i in self.instances if i.state is not InstanceState.DEAD]


class FakeInstance(InstanceBase):
    """An instance whose handler is the runtime's script."""

    kind = "fake"

    def __init__(self, runtime: FakeRuntime, function: FunctionDef) -> None:
        super().__init__(function, log_cap=LOG_CAP, logs=None)
        self.runtime = runtime
        self.signals: list[int] = []
        self.frozen = False
        self.call: Call | None = None
        self.killed = False

    async def start(self, *, request_id: str | None = None, log_path: Path | None = None) -> None:
        """Ready at once, or InstanceStartError when the runtime says so."""
        if self.runtime.start_error is not None:
            self.state = InstanceState.DEAD
            failure = PlaceUnavailable if self.runtime.place_down else InstanceStartError
            raise failure(self.runtime.start_error)
        self.state = InstanceState.IDLE
        self.started_at = time.time()
        self._did("start")

    async def invoke(
        self, request_id: str, payload: msgspec.Raw, attempt: int, timeout: float, log_path: Path
    ) -> Outcome:
        """Run the script on the call; a frozen or busy instance cannot take it."""
        if self.state is not InstanceState.IDLE or self.frozen:
            why = "frozen" if self.frozen else self.state
            error = ErrorInfo(type="InstanceUnavailable", message=f"{self.id} is {why}")
            return Outcome(ok=False, error=error, usage=Usage(duration_ms=0.0), instance_lost=True)
        self.state = InstanceState.BUSY
        self.call = call = Call(self, request_id, payload, attempt)
        self.runtime.calls.append(call)
        self._did(f"invoke {request_id}")
        now = self.runtime.script(call)
        if now is not None:
            call.answer(now)
        try:
            outcome = await call.reply
        finally:
            self.call = None
            if self.state is InstanceState.BUSY:
                self.state = InstanceState.IDLE
        if outcome.instance_lost:
            self.state = InstanceState.DEAD  # its process died, or was killed by its runtime
        else:
            self.events_served += 1
        return outcome

    async def run_hook(
        self, hook: str, *, request_id: str | None = None, log_path: Path | None = None
    ) -> HookOutcome:
        """Run a hook the definition sets (ok without running one it does not)."""
        started = time.time()
        if not getattr(self.function.lifecycle, hook, ""):
            return HookOutcome(hook=hook, ok=True, started=started, duration_ms=0.0)
        self._did(hook)
        gate = self.runtime.gates.get(hook)
        if gate is not None:
            await gate.wait()
            self._did(f"{hook} let go")
        error = self.runtime.failing_hooks.get(hook)
        return HookOutcome(
            hook=hook, ok=error is None, started=started, duration_ms=0.0, error=error
        )

    async def stop(self) -> None:
        """SIGKILL to its process group (dead or not): a held call ends as killed; idempotent."""
        if not self.killed:
            self.killed = True
            self._did("kill")
        self.state = InstanceState.DEAD
        if self.call is not None:
            self.call.answer(died(signal.SIGKILL))

    def die(self) -> None:
        """Its process exits on its own, between events (as a runtime's reaper marks it)."""
        self.state = InstanceState.DEAD
        self._did("died")

    def signal(self, sig: int) -> bool:
        """Deliver `sig`: SIGSTOP/SIGCONT freeze and thaw, SIGTERM goes to the held call."""
        if self.state is InstanceState.DEAD:
            return False
        self.signals.append(sig)
        self._did(signal.Signals(sig).name)
        if sig == signal.SIGSTOP:
            self.frozen = True
        elif sig == signal.SIGCONT:
            self.frozen = False
        elif sig == signal.SIGTERM and self.call is not None:
            outcome = self.runtime.on_sigterm(self.call)
            if outcome is not None:
                self.call.answer(outcome)
        return True

    def _did(self, what: str) -> None:
        self.runtime.timeline.append((self.id, what))


# -- definitions -----------------------------------------------------------------------------


def define(
    name: str = "fn",
    *,
    async_: dict[str, Any] | None = None,
    lifecycle: dict[str, Any] | None = None,
    **fields: Any,
) -> FunctionDef:
    """A function definition as load_function makes it (its `[async]` and `[lifecycle]` given
    as dicts)."""
    return FunctionDef(
        name=name,
        async_=AsyncConfig(**(async_ or {})),
        lifecycle=LifecycleConfig(**(lifecycle or {})),
        **fields,
    )


# -- the daemon's wiring over a temporary journal ---------------------------------------------


class Policy:
    """The dispatcher, its pools and the store as daemon/service.py wires them, over a real
    journal under `root`; the instances are the runtime's fakes."""

    def __init__(self, root: Path, store: Store, dispatcher: Dispatcher, catalog: Catalog) -> None:
        self.root = root
        self.store = store
        self.dispatcher = dispatcher
        self.catalog = catalog

    async def submit(self, payload: Any = None, function: str = "fn", **kw: Any) -> Event:
        """Enqueue an event as the ingestor does, and wait until its records are on disk."""
        [event] = self.dispatcher.enqueue([NewEvent(function, raw_json(payload), **kw)])
        assert event is not None
        await self.store.sync()
        return event

    async def records(self, request_id: str) -> list[Transition]:
        """The transitions of one event, as the journal on disk holds them."""
        await self.store.sync()
        found = journal_records(self.root, Transition)
        return [r for r in found if r.id == request_id]

    async def states(self, request_id: str) -> list[State]:
        """The states one event went through, from the journal on disk."""
        return [r.state for r in await self.records(request_id)]

    async def hook_runs(self) -> list[HookRun]:
        """Every hook run the journal on disk holds."""
        await self.store.sync()
        return journal_records(self.root, HookRun)


def journal_of(root: Path) -> Path:
    """The journal folder under `root` (made if missing)."""
    journal = root / "journal"
    journal.mkdir(parents=True, exist_ok=True)
    return journal


@contextlib.asynccontextmanager
async def running(
    root: Path, runtime: FakeRuntime, *definitions: FunctionDef
) -> AsyncIterator[Policy]:
    """Start as the daemon does (the journal recovered, the pools reconciled, unfinished events
    resumed); at the end shut down as it does and close the journal."""
    journal = journal_of(root)
    state = recover(journal)
    writer = JournalWriter(journal, state.last_seq + 1)
    store = Store(writer, state, root / "logs")
    logs = EventLogs(writer.write_log)
    catalog = Catalog(functions={d.name: d for d in definitions})
    dispatcher = Dispatcher(
        store, Definitions(catalog), {"python": runtime}, root / "logs", log_sink=logs
    )
    dispatcher.reconcile()
    dispatcher.recover()
    await store.sync()
    try:
        yield Policy(root, store, dispatcher, catalog)
    finally:
        for gate in runtime.gates.values():  # a test that failed holding a hook ends all the same
            gate.set()
        try:
            await dispatcher.drain(0)
        finally:
            await writer.close()


@contextlib.asynccontextmanager
async def journal_only(root: Path) -> AsyncIterator[Store]:
    """A store over `root`'s journal with no dispatcher: to write the journal a daemon that
    crashed would have left."""
    journal = journal_of(root)
    state = recover(journal)
    writer = JournalWriter(journal, state.last_seq + 1)
    try:
        yield Store(writer, state, root / "logs")
        await writer.sync()
    finally:
        await writer.close()
