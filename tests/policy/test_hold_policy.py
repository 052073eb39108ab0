"""Events held while the place their instances run cannot be reached (a Ray cluster down), read
back from the journal: new ones stay Enqueued, one whose instance start found the place down
waits first in line (not Invalid, no attempt spent), all run once it is back, and expiry still
applies. Fake instances, a real journal."""

from __future__ import annotations

from pathlib import Path

from conftest import wait_for_async
from runtime_helpers import on_uvloop

from daemon.functions import FunctionDef
from daemon.model import ErrorInfo, Event, State
from policy.fakes import FakeClock, FakeRuntime, Policy, define, running

ENQ, DEQ, RUN, OK = State.ENQUEUED, State.DEQUEUED, State.RUNNING, State.SUCCEEDED
DOWN = "cannot reach the Ray cluster at 10.0.0.9:6379"


async def ended(event: Event) -> None:
    """Wait until `event` reaches a terminal state."""
    await wait_for_async(lambda: event.ended, what=f"event {event.id} to end ({event.state})")


def hold(policy: Policy, why: str | None) -> None:
    """Hold the events of `fn` for `why` (None: release them), as the Ray engine does."""
    policy.dispatcher.held = lambda d: why if d.name == "fn" else None
    policy.dispatcher.wake()


async def waited_behind(policy: Policy) -> None:
    """Let the dispatcher look at every queue: an event of another function runs to its end."""
    other = await policy.submit("other", function="other")
    await ended(other)


@on_uvloop
async def test_a_held_functions_events_stay_enqueued_and_run_once_released(tmp_path: Path):
    runtime = FakeRuntime()
    async with running(tmp_path, runtime, define("fn"), define("other")) as policy:
        hold(policy, DOWN)
        events = [await policy.submit(i) for i in range(3)]
        await waited_behind(policy)
        assert [e.state for e in events] == [ENQ] * 3  # not even Dequeued
        hold(policy, None)
        for event in events:
            await ended(event)
        assert [await policy.states(e.id) for e in events] == [[ENQ, DEQ, RUN, OK]] * 3
    assert [c.payload for c in runtime.calls if c.payload != "other"] == [0, 1, 2]


@on_uvloop
async def test_a_start_that_finds_the_place_down_leaves_the_event_waiting_first_in_line(
    tmp_path: Path,
):
    runtime = FakeRuntime()
    runtime.start_error = ErrorInfo(type="InstanceUnavailable", message=DOWN)
    runtime.place_down = True

    def down_once_tried(definition: FunctionDef) -> str | None:
        """As the engine: it learns that the cluster is down when a start tries to reach it."""
        return DOWN if runtime.instances else None

    async with running(tmp_path, runtime, define("fn")) as policy:
        policy.dispatcher.held = down_once_tried
        first = await policy.submit("first")
        await wait_for_async(lambda: runtime.instances, what="a start to be tried")
        second = await policy.submit("second")
        await wait_for_async(lambda: policy.dispatcher.queue_depth == 2, what="both to wait")
        assert (first.state, second.state) == (DEQ, ENQ)  # waiting, not Invalid
        assert len(runtime.instances) == 1  # no start tried again while held
        runtime.start_error = None
        hold(policy, None)
        await ended(first)
        await ended(second)
        assert await policy.states(first.id) == [ENQ, DEQ, RUN, OK]
        assert await policy.states(second.id) == [ENQ, DEQ, RUN, OK]
    assert [c.payload for c in runtime.calls] == ["first", "second"]


@on_uvloop
async def test_a_place_down_but_not_held_is_tried_again_after_a_while_not_at_once(
    tmp_path: Path,
):
    runtime = FakeRuntime()
    runtime.start_error = ErrorInfo(type="InstanceUnavailable", message=DOWN)
    runtime.place_down = True
    async with running(tmp_path, runtime, define("fn")) as policy:
        event = await policy.submit("x")
        await wait_for_async(lambda: len(runtime.instances) == 2, what="a second try")
        assert len(runtime.instances) == 2  # one try, then one after PLACE_RETRY: no busy loop
        runtime.start_error = None
        await ended(event)
        assert await policy.states(event.id) == [ENQ, DEQ, RUN, OK]


@on_uvloop
async def test_a_held_event_past_max_event_age_expires_when_released(
    tmp_path: Path, clock: FakeClock
):
    runtime = FakeRuntime()
    async with running(tmp_path, runtime, define(async_={"max_event_age": 10.0})) as policy:
        hold(policy, DOWN)
        event = await policy.submit("x")
        clock.advance(11.0)  # held longer than it may wait
        hold(policy, None)
        await ended(event)
        assert await policy.states(event.id) == [ENQ, DEQ, State.EXPIRED]
    assert runtime.calls == []
