"""The pool's record of each instance, state by state: busy, freezing while PreFreeze runs,
frozen, thawed, stopping while PreStop runs, and the moves between them that no test named
before (an event waiting for a freezing instance, a retire during PreFreeze, a process that
died while idle); what status.json shows of each."""

from __future__ import annotations

import asyncio
from pathlib import Path

from conftest import wait_for_async
from runtime_helpers import on_uvloop

from daemon.instances import POOL_MOVES, InstanceState
from daemon.pool import FunctionPool, Lease
from policy.fakes import (
    Call,
    FakeClock,
    FakeInstance,
    FakeRuntime,
    define,
    running,
    succeeded,
)
from policy.test_pool_policy import ended, hold_named, running_call

HOOKS = {"pre_freeze": "index.pre_freeze", "pre_stop": "index.pre_stop"}


async def reaches(pool: FunctionPool, instance: FakeInstance, state: InstanceState) -> None:
    """Wait until the pool holds `instance` in `state`."""
    await wait_for_async(lambda: pool.state_of(instance) is state, what=f"{instance.id} {state}")


def shown(pool: FunctionPool) -> list[tuple[str, int]]:
    """(state, events running) of each instance, as status.json shows them."""
    return [(v.state, v.running) for v in pool.snapshot()]


def watch_leases(pool: FunctionPool) -> list[int]:
    """The leases asked of `pool` from now on, one entry each: another task sees an entry only
    once the pool has taken the request in (given a place, or queued it), as the pool's part
    up to its first wait runs in the same step."""
    asked: list[int] = []
    lease = pool.lease

    async def counted() -> Lease:
        asked.append(1)
        return await lease()

    pool.lease = counted  # type: ignore[method-assign]
    return asked


def gated(runtime: FakeRuntime, *hooks: str) -> list[asyncio.Event]:
    """Hold those hooks, once begun, until the test sets their gates."""
    runtime.gates.update({h: asyncio.Event() for h in hooks})
    return [runtime.gates[h] for h in hooks]


def test_the_states_users_see_are_the_ones_they_always_saw():
    assert {s.shown.value for s in InstanceState} == {
        "starting", "idle", "busy", "frozen", "stopping", "dead"
    }  # fmt: skip
    assert InstanceState.FREEZING.shown is InstanceState.BUSY  # PreFreeze runs its code
    assert POOL_MOVES[InstanceState.STOPPING] == frozenset()  # a retire is never undone


@on_uvloop
async def test_an_instance_goes_busy_freezing_frozen_busy_then_stopping(
    tmp_path: Path, clock: FakeClock
):
    runtime = FakeRuntime(hold_named)
    pre_freeze, pre_stop = gated(runtime, "pre_freeze", "pre_stop")
    fn = define(idle_timeout=60.0, lifecycle=HOOKS)
    async with running(tmp_path, runtime, fn) as policy:
        first = await policy.submit("hold")
        call: Call = await running_call(runtime, "hold")
        pool = policy.dispatcher.pools["fn"]  # made for the first event
        [instance] = runtime.instances
        assert pool.state_of(instance) is InstanceState.BUSY
        assert shown(pool) == [("busy", 1)]
        call.answer(succeeded())
        await ended(first)
        await reaches(pool, instance, InstanceState.FREEZING)
        assert shown(pool) == [("busy", 0)]  # PreFreeze runs: shown busy, as ever
        pre_freeze.set()
        await reaches(pool, instance, InstanceState.FROZEN)
        assert shown(pool) == [("frozen", 0)]
        second = await policy.submit("hold")
        call = await running_call(runtime, "hold")
        assert pool.state_of(instance) is InstanceState.BUSY  # thawed for it
        call.answer(succeeded())
        await ended(second)
        await reaches(pool, instance, InstanceState.FROZEN)
        clock.advance(61.0)
        reaping = asyncio.ensure_future(policy.dispatcher.reap_idle())
        await reaches(pool, instance, InstanceState.STOPPING)  # PreStop runs
        assert shown(pool) == [("stopping", 0)]
        pre_stop.set()
        await reaping
        assert pool.instances == [] and shown(pool) == []
    assert runtime.did(instance) == [
        "start",
        f"invoke {first.id}",
        "pre_freeze",
        "pre_freeze let go",
        "SIGSTOP",
        "SIGCONT",
        f"invoke {second.id}",
        "pre_freeze",
        "pre_freeze let go",
        "SIGSTOP",
        "SIGCONT",
        "pre_stop",
        "pre_stop let go",
        "kill",
    ]


@on_uvloop
async def test_an_event_waits_for_a_freezing_instance_which_is_then_not_frozen(
    tmp_path: Path, clock: FakeClock
):
    runtime = FakeRuntime()
    [pre_freeze] = gated(runtime, "pre_freeze")
    fn = define(max_instances=3, lifecycle=HOOKS)
    async with running(tmp_path, runtime, fn) as policy:
        first = await policy.submit(1)
        await ended(first)
        pool = policy.dispatcher.pools["fn"]
        [instance] = runtime.instances
        await reaches(pool, instance, InstanceState.FREEZING)
        asked = watch_leases(pool)
        second = await policy.submit(2)
        await wait_for_async(lambda: asked, what="the second event to ask for an instance")
        assert pool.busy == 0 and len(runtime.instances) == 1  # it waits: no cold start
        pre_freeze.set()
        await ended(second)
        await reaches(pool, instance, InstanceState.FROZEN)
    assert runtime.instances == [instance]
    assert runtime.did(instance)[:5] == [
        "start",
        f"invoke {first.id}",
        "pre_freeze",
        "pre_freeze let go",
        f"invoke {second.id}",  # straight from PreFreeze to the waiting event: no SIGSTOP
    ]


@on_uvloop
async def test_an_instance_retired_during_prefreeze_stays_stopping_and_is_never_frozen(
    tmp_path: Path, clock: FakeClock
):
    runtime = FakeRuntime()
    pre_freeze, pre_stop = gated(runtime, "pre_freeze", "pre_stop")
    async with running(tmp_path, runtime, define(lifecycle=HOOKS)) as policy:
        await ended(await policy.submit(1))
        old = policy.dispatcher.pools["fn"]
        [instance] = runtime.instances
        await reaches(old, instance, InstanceState.FREEZING)
        policy.catalog.functions["fn"] = define(lifecycle=HOOKS, timeout=5.0)
        policy.dispatcher.reconcile()  # the definition changed: the old pool closes
        await reaches(old, instance, InstanceState.STOPPING)
        assert runtime.did(instance)[-1] == "pre_stop"
        pre_freeze.set()  # PreFreeze ends while PreStop still runs
        await wait_for_async(
            lambda: "pre_freeze let go" in runtime.did(instance), what="PreFreeze to end"
        )
        assert old.state_of(instance) is InstanceState.STOPPING
        pre_stop.set()
        await wait_for_async(lambda: instance.killed, what="the old instance gone")
        assert old.instances == []
    assert "SIGSTOP" not in runtime.did(instance)


@on_uvloop
async def test_an_instance_that_died_while_idle_shows_dead_and_is_replaced_at_the_next_event(
    tmp_path: Path, clock: FakeClock
):
    runtime = FakeRuntime()
    async with running(tmp_path, runtime, define(freeze=False)) as policy:
        await ended(await policy.submit(1))
        pool = policy.dispatcher.pools["fn"]
        [dead] = runtime.instances
        await reaches(pool, dead, InstanceState.IDLE)
        dead.die()
        assert pool.state_of(dead) is InstanceState.DEAD and shown(pool) == [("dead", 0)]
        second = await policy.submit(2)
        await ended(second)
        _, fresh = runtime.instances
        await wait_for_async(lambda: dead.killed, what="the dead instance destroyed")
        assert pool.instances == [fresh]
    assert runtime.did(dead)[-2:] == ["died", "kill"]
    assert f"invoke {second.id}" in runtime.did(fresh)
