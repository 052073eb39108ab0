"""The pool's policy, through the dispatcher as the daemon drives it: how many instances run,
which is reused, freezing idle ones (PreFreeze first), recycling, idle reaping, and instances
that cannot start. Fake instances, a real journal; the hooks are read back from it."""

from __future__ import annotations

import signal
from pathlib import Path

from conftest import wait_for_async
from runtime_helpers import on_uvloop

from daemon.model import ErrorInfo, Event, State
from daemon.runtimes.base import Outcome
from policy.fakes import (
    Call,
    FakeClock,
    FakeInstance,
    FakeRuntime,
    Policy,
    define,
    died,
    failed,
    running,
    succeeded,
)

PRE_STOP = {"pre_stop": "index.pre_stop"}


async def ended(*events: Event) -> None:
    """Wait until every one of `events` reaches a terminal state."""
    await wait_for_async(lambda: all(e.ended for e in events), what="the events to end")


def hold_all(_call: Call) -> Outcome | None:
    """A script: every call is held until the test answers it."""
    return None


def hold_named(call: Call) -> Outcome | None:
    """A script: the payload "hold" is held; anything else succeeds at once."""
    return None if call.payload == "hold" else succeeded(call.payload)


async def running_call(runtime: FakeRuntime, payload: object) -> Call:
    """Wait until the attempt of the event with that payload is held by an instance."""
    return await wait_for_async(
        lambda: next((c for c in runtime.held() if c.payload == payload), None),
        what=f"the attempt of {payload!r} to run",
    )


async def settled(policy: Policy, *instances: FakeInstance) -> None:
    """Wait until each instance is frozen, as an idle one ends up (PreFreeze first, if set)."""
    pool = policy.dispatcher.pools["fn"]
    await wait_for_async(
        lambda: all(pool.state_of(i) == "frozen" for i in instances),
        what="the idle instances to be frozen",
    )


# -- how many instances -------------------------------------------------------------------------


@on_uvloop
async def test_events_wait_in_order_for_one_of_max_instances(tmp_path: Path, clock: FakeClock):
    runtime = FakeRuntime(hold_all)
    async with running(tmp_path, runtime, define(max_instances=2)) as policy:
        events = [await policy.submit(n) for n in range(5)]
        await wait_for_async(lambda: len(runtime.held()) == 2, what="two attempts running")
        assert [e.state for e in events[:2]] == [State.RUNNING] * 2
        assert all(e.state in (State.ENQUEUED, State.DEQUEUED) for e in events[2:])
        for n in range(5):
            call = await running_call(runtime, n)
            assert len(runtime.held()) <= 2
            call.answer(succeeded(n))
        await ended(*events)
    assert len(runtime.instances) == 2
    assert [c.payload for c in runtime.calls] == [0, 1, 2, 3, 4]  # first in, first out
    assert all(e.state is State.SUCCEEDED for e in events)


@on_uvloop
async def test_min_instances_are_started_warm_initialized_and_frozen(
    tmp_path: Path, clock: FakeClock
):
    runtime = FakeRuntime()
    fn = define(min_instances=2, max_instances=3, lifecycle={"initializer": "index.init"})
    async with running(tmp_path, runtime, fn) as policy:
        await wait_for_async(lambda: len(runtime.instances) == 2, what="two warm instances")
        await settled(policy, *runtime.instances)
        hooks = await policy.hook_runs()
        event = await policy.submit("x")
        await ended(event)
    assert len(runtime.instances) == 2  # the event took a warm one
    for instance in runtime.instances:
        assert runtime.did(instance)[:3] == ["start", "initializer", "SIGSTOP"]
    assert sorted((h.hook, h.instance, h.request_id) for h in hooks) == sorted(
        ("initializer", i.id, None) for i in runtime.instances
    )


@on_uvloop
async def test_idle_instances_are_retired_after_idle_timeout_down_to_min_instances(
    tmp_path: Path, clock: FakeClock
):
    runtime = FakeRuntime(hold_all)
    fn = define(min_instances=1, max_instances=3, idle_timeout=60.0, lifecycle=PRE_STOP)
    async with running(tmp_path, runtime, fn) as policy:
        await wait_for_async(lambda: runtime.instances, what="the warm instance")
        events = [await policy.submit(n) for n in range(3)]
        await wait_for_async(lambda: len(runtime.held()) == 3, what="three attempts running")
        for call in runtime.held():
            call.answer(succeeded())
        await ended(*events)
        await settled(policy, *runtime.instances)
        clock.advance(59.0)
        await policy.dispatcher.reap_idle()
        assert runtime.alive() == runtime.instances  # not idle long enough
        clock.advance(2.0)
        await policy.dispatcher.reap_idle()
        hooks = await policy.hook_runs()
        retired = [i for i in runtime.instances if i.killed]
        assert len(runtime.alive()) == 1
    assert len(retired) == 2
    for instance in retired:  # thawed, so that PreStop can run, then killed
        assert runtime.did(instance)[-4:] == ["SIGSTOP", "SIGCONT", "pre_stop", "kill"]
    assert sorted(h.instance for h in hooks if h.hook == "pre_stop") == sorted(
        i.id for i in retired
    )


# -- freezing -----------------------------------------------------------------------------------


@on_uvloop
async def test_an_idle_instance_runs_prefreeze_then_is_frozen_and_thawed_for_its_next_event(
    tmp_path: Path, clock: FakeClock
):
    runtime = FakeRuntime()
    fn = define(lifecycle={"pre_freeze": "index.pre_freeze"})
    async with running(tmp_path, runtime, fn) as policy:
        first = await policy.submit(1)
        await ended(first)
        await settled(policy, *runtime.instances)
        second = await policy.submit(2)
        await ended(second)
        await settled(policy, *runtime.instances)
        hooks = await policy.hook_runs()
        [instance] = runtime.instances  # reused
        did = runtime.did(instance)
    assert did == [
        "start",
        f"invoke {first.id}",
        "pre_freeze",
        "SIGSTOP",
        "SIGCONT",
        f"invoke {second.id}",
        "pre_freeze",
        "SIGSTOP",
    ]
    assert [(h.hook, h.instance, h.request_id, h.ok) for h in hooks] == [
        ("pre_freeze", instance.id, None, True)
    ] * 2


@on_uvloop
async def test_a_failed_prefreeze_never_blocks_the_freeze(tmp_path: Path, clock: FakeClock):
    runtime = FakeRuntime()
    runtime.failing_hooks["pre_freeze"] = ErrorInfo(type="HookError", message="no")
    fn = define(lifecycle={"pre_freeze": "index.pre_freeze"})
    async with running(tmp_path, runtime, fn) as policy:
        await ended(await policy.submit(1))
        await settled(policy, *runtime.instances)
        hooks = await policy.hook_runs()
    assert [(h.hook, h.ok) for h in hooks] == [("pre_freeze", False)]
    assert hooks[0].error is not None and hooks[0].error.message == "no"


@on_uvloop
async def test_an_instance_is_not_frozen_when_freeze_is_off(tmp_path: Path, clock: FakeClock):
    runtime = FakeRuntime()
    async with running(tmp_path, runtime, define(freeze=False)) as policy:
        first = await policy.submit(1)
        await ended(first)
        await wait_for_async(
            lambda: policy.dispatcher.pools["fn"].state_of(runtime.instances[0]) == "idle",
            what="the instance idle",
        )
        second = await policy.submit(2)
        await ended(second)
        [instance] = runtime.instances
        assert runtime.did(instance) == ["start", f"invoke {first.id}", f"invoke {second.id}"]


@on_uvloop
async def test_a_burst_goes_from_event_to_event_without_prefreeze(tmp_path: Path, clock: FakeClock):
    runtime = FakeRuntime(hold_named)
    fn = define(max_instances=1, lifecycle={"pre_freeze": "index.pre_freeze"})
    async with running(tmp_path, runtime, fn) as policy:
        events = [await policy.submit(p) for p in ("hold", 1, 2)]
        [call] = await wait_for_async(runtime.held, what="the first attempt running")
        # the next one is waiting for the instance (the one after, behind it)
        await wait_for_async(lambda: events[1].state is State.DEQUEUED, what="the next waiting")
        call.answer(succeeded())
        await ended(*events)
        await settled(policy, *runtime.instances)
        [instance] = runtime.instances
        did = runtime.did(instance)
    invokes = [f"invoke {e.id}" for e in events]
    assert did == ["start", *invokes, "pre_freeze", "SIGSTOP"]


# -- recycling ----------------------------------------------------------------------------------


@on_uvloop
async def test_an_instance_is_recycled_after_max_events_per_instance(
    tmp_path: Path, clock: FakeClock
):
    runtime = FakeRuntime()
    fn = define(max_instances=1, max_events_per_instance=2, lifecycle=PRE_STOP)
    async with running(tmp_path, runtime, fn) as policy:
        events = [await policy.submit(n) for n in range(5)]
        await ended(*events)
        await wait_for_async(lambda: len(runtime.alive()) == 1, what="the recycled ones gone")
        hooks = await policy.hook_runs()
        assert runtime.alive() == runtime.instances[-1:]
    served = [[c.payload for c in runtime.calls if c.instance is i] for i in runtime.instances]
    assert served == [[0, 1], [2, 3], [4]]
    first, second, _third = runtime.instances
    for old in (first, second):
        assert runtime.did(old)[-2:] == ["pre_stop", "kill"]
    assert [(h.hook, h.instance) for h in hooks] == [
        ("pre_stop", first.id),
        ("pre_stop", second.id),
    ]


@on_uvloop
async def test_an_instance_lost_mid_event_is_discarded_at_once_without_prestop(
    tmp_path: Path, clock: FakeClock
):
    runtime = FakeRuntime(lambda c: died(signal.SIGKILL) if c.payload == "die" else succeeded())
    fn = define(lifecycle=PRE_STOP, async_={"max_retries": 0})
    async with running(tmp_path, runtime, fn) as policy:
        first = await policy.submit("die")
        await ended(first)
        [lost] = runtime.instances
        pool = policy.dispatcher.pools["fn"]
        await wait_for_async(
            lambda: lost.killed and not pool.instances, what="the lost instance discarded"
        )
        second = await policy.submit("next")
        await ended(second)
        hooks = await policy.hook_runs()
        records = [*await policy.records(first.id), *await policy.records(second.id)]
    lost, fresh = runtime.instances
    assert runtime.did(lost) == ["start", f"invoke {first.id}", "kill"]  # no PreStop: it is dead
    assert [r.instance for r in records if r.state is State.RUNNING] == [lost.id, fresh.id]
    assert [r.state for r in records if r.state.terminal] == [State.FAILED, State.SUCCEEDED]
    assert hooks == []


@on_uvloop
async def test_a_handler_error_keeps_its_instance_for_the_retry(tmp_path: Path, clock: FakeClock):
    runtime = FakeRuntime(lambda c: failed() if c.attempt == 1 else succeeded())
    async with running(tmp_path, runtime, define(async_={"backoff": 0.001})) as policy:
        event = await policy.submit("x")
        await ended(event)
        records = await policy.records(event.id)
    [instance] = runtime.instances
    assert [r.instance for r in records if r.state is State.RUNNING] == [instance.id] * 2
    assert records[-1].state is State.SUCCEEDED


@on_uvloop
async def test_a_changed_definition_replaces_idle_instances_prestop_first(
    tmp_path: Path, clock: FakeClock
):
    runtime = FakeRuntime()
    fn = define(lifecycle=PRE_STOP)
    async with running(tmp_path, runtime, fn) as policy:
        first = await policy.submit(1)
        await ended(first)
        await settled(policy, *runtime.instances)
        policy.catalog.functions["fn"] = define(lifecycle=PRE_STOP, timeout=5.0)
        policy.dispatcher.reconcile()
        second = await policy.submit(2)
        await ended(second)
        await wait_for_async(lambda: runtime.instances[0].killed, what="the old instance gone")
        old, new = runtime.instances
        assert runtime.alive() == [new]
    assert runtime.did(old)[-3:] == ["SIGCONT", "pre_stop", "kill"]
    assert f"invoke {second.id}" in runtime.did(new)


# -- instances that cannot start ----------------------------------------------------------------


@on_uvloop
async def test_an_instance_that_cannot_start_makes_the_event_invalid_and_frees_its_place(
    tmp_path: Path, clock: FakeClock
):
    runtime = FakeRuntime()
    runtime.start_error = ErrorInfo(type="ImportError", message="no module named index")
    async with running(tmp_path, runtime, define(max_instances=1)) as policy:
        events = [await policy.submit(n) for n in range(2)]
        await ended(*events)  # the second is not left waiting for the first's place
        records = await policy.records(events[0].id)
    assert [r.state for r in records] == [State.ENQUEUED, State.DEQUEUED, State.INVALID]
    assert records[-1].error == runtime.start_error
    assert all(e.state is State.INVALID for e in events)


@on_uvloop
async def test_a_failed_initializer_discards_the_instance_and_the_event_is_invalid(
    tmp_path: Path, clock: FakeClock
):
    runtime = FakeRuntime()
    runtime.failing_hooks["initializer"] = ErrorInfo(type="InitError", message="no database")
    fn = define(lifecycle={"initializer": "index.init"})
    async with running(tmp_path, runtime, fn) as policy:
        event = await policy.submit("x")
        await ended(event)
        records = await policy.records(event.id)
        hooks = await policy.hook_runs()
    [instance] = runtime.instances
    assert runtime.did(instance) == ["start", "initializer", "kill"]
    assert records[-1].state is State.INVALID
    assert records[-1].error == runtime.failing_hooks["initializer"]
    assert [(h.hook, h.ok, h.request_id) for h in hooks] == [("initializer", False, event.id)]
    assert runtime.calls == []
