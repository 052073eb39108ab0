"""Stops escalated and warm reuse during PreFreeze, as the dispatcher and the pool decide them:
fake instances, a real journal, a clock moved by hand."""

from __future__ import annotations

import asyncio
import signal
from pathlib import Path

import pytest
from conftest import wait_for_async
from runtime_helpers import on_uvloop

from daemon.functions import FunctionDef
from daemon.model import Event, State
from daemon.refusals import Refused
from daemon.runtimes.base import HookOutcome, Outcome
from policy.fakes import Call, FakeClock, FakeInstance, FakeRuntime, define, running, succeeded

STOPPING, STOPPED = State.STOPPING, State.STOPPED


async def ended(*events: Event) -> None:
    """Wait until every one of `events` reaches a terminal state."""
    await wait_for_async(lambda: all(e.ended for e in events), what="the events to end")


def hold_first(call: Call) -> Outcome | None:
    """A script: the payload "hold" is held until answered; anything else succeeds at once."""
    return None if call.payload == "hold" else succeeded(call.payload)


async def held(runtime: FakeRuntime, event: Event) -> Call:
    """Wait until an attempt of `event` runs and is held by its instance."""
    return await wait_for_async(
        lambda: next((c for c in runtime.held() if c.request_id == event.id), None),
        what=f"an attempt of {event.id} to be running",
    )


# -- a graceful stop escalated -------------------------------------------------------------------


@on_uvloop
async def test_a_forced_stop_escalates_a_graceful_one_at_once(tmp_path: Path, clock: FakeClock):
    runtime = FakeRuntime(hold_first)
    runtime.on_sigterm = lambda _call: None  # the handler ignores SIGTERM
    fn = define(lifecycle={"pre_stop": "index.pre_stop"})
    async with running(tmp_path, runtime, fn) as policy:
        event = await policy.submit("hold")
        call = await held(runtime, event)
        policy.dispatcher.stop(event.id, graceful=True, grace=3600.0)
        await wait_for_async(lambda: signal.SIGTERM in call.instance.signals, what="SIGTERM")
        answer = policy.dispatcher.stop(event.id, graceful=False)
        await ended(event)  # the clock stands still: the grace never passed
        with pytest.raises(Refused, match="has already ended: Stopped"):
            policy.dispatcher.stop(event.id, graceful=False)
        records = await policy.records(event.id)
    assert answer == "forcing the graceful stop now"
    assert [r.state for r in records][-2:] == [STOPPING, STOPPED]
    assert [r.reason for r in records[-2:]] == ["graceful", "forced"]
    assert records[-1].error is not None and records[-1].error.type == "Stopped"
    assert runtime.did(call.instance)[-3:] == ["SIGTERM", "pre_stop", "kill"]


# -- warm reuse while PreFreeze runs ---------------------------------------------------------------


class HeldPreFreeze(FakeRuntime):
    """Fake instances whose PreFreeze runs until the test lets it end."""

    def __init__(self) -> None:
        super().__init__()
        self.pre_freeze_done = asyncio.Event()

    def __call__(self, function: FunctionDef) -> FakeInstance:
        instance = SlowPreFreeze(self, function)
        self.instances.append(instance)
        return instance


class SlowPreFreeze(FakeInstance):
    """A fake instance whose PreFreeze waits for its runtime's `pre_freeze_done`."""

    runtime: HeldPreFreeze

    async def run_hook(
        self, hook: str, *, request_id: str | None = None, log_path: Path | None = None
    ) -> HookOutcome:
        """Run the hook; PreFreeze ends only when the test says so."""
        outcome = await super().run_hook(hook, request_id=request_id, log_path=log_path)
        if hook == "pre_freeze":
            await self.runtime.pre_freeze_done.wait()
        return outcome


@on_uvloop
async def test_an_event_arriving_during_prefreeze_waits_for_that_instance(
    tmp_path: Path, clock: FakeClock
):
    runtime = HeldPreFreeze()
    fn = define(max_instances=3, lifecycle={"pre_freeze": "index.pre_freeze"})
    async with running(tmp_path, runtime, fn) as policy:
        first = await policy.submit(1)
        await ended(first)
        [instance] = runtime.instances
        await wait_for_async(lambda: "pre_freeze" in runtime.did(instance), what="PreFreeze")
        second = await policy.submit(2)
        pool = policy.dispatcher.pools["fn"]
        try:
            await wait_for_async(
                lambda: pool._waiters or len(runtime.instances) > 1,
                what="the second event to wait for an instance",
            )
            assert len(runtime.instances) == 1  # no cold start beside the instance settling
        finally:
            runtime.pre_freeze_done.set()  # the shutdown waits for PreFreeze to end
        await ended(second)
        third = await policy.submit(3)
        await ended(third)
    assert len(runtime.instances) == 1
    assert all(e.state is State.SUCCEEDED for e in (first, second, third))
    assert runtime.did(instance)[:4] == ["start", f"invoke {first.id}", "pre_freeze",
                                         f"invoke {second.id}"]  # fmt: skip
    assert not instance.frozen
