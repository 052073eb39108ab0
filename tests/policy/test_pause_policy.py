"""Pause and resume of dispatch, read back from the journal: a paused function's queued events
wait with no Dequeued, running ones finish, resume runs them (expiry still applies), and the
paused state outlives a restart and a compaction. Fake instances, a real journal."""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import wait_for_async
from runtime_helpers import on_uvloop

from daemon.journal import list_snapshots, read_snapshot
from daemon.journal_writer import recover
from daemon.model import Event, PauseState, State
from daemon.refusals import Refused
from policy.fakes import FakeClock, FakeRuntime, Policy, define, running, succeeded

ENQ, DEQ, RUN, OK = State.ENQUEUED, State.DEQUEUED, State.RUNNING, State.SUCCEEDED


async def ended(event: Event) -> None:
    """Wait until `event` reaches a terminal state."""
    await wait_for_async(lambda: event.ended, what=f"event {event.id} to end ({event.state})")


async def waited_behind(policy: Policy, event: Event) -> None:
    """Let the dispatcher look at `event`'s queue: an event of another function, submitted after
    it, runs to its end (the paused queue had its turn meanwhile)."""
    other = await policy.submit("other", function="other")
    await ended(other)
    assert policy.dispatcher.queue_depth >= 1


@on_uvloop
async def test_a_paused_functions_events_stay_enqueued_and_run_when_resumed(tmp_path: Path):
    runtime = FakeRuntime()
    async with running(tmp_path, runtime, define("fn"), define("other")) as policy:
        assert policy.dispatcher.pause("fn") == "function fn paused"
        events = [await policy.submit(i) for i in range(3)]
        await waited_behind(policy, events[0])
        for event in events:
            assert await policy.states(event.id) == [ENQ]  # no lease, no Dequeued ahead
        assert [c.request_id for c in runtime.calls] != [] and all(
            c.request_id not in {e.id for e in events} for c in runtime.calls
        )
        assert policy.dispatcher.resume("fn") == "function fn resumed"
        for event in events:
            await ended(event)
            assert await policy.states(event.id) == [ENQ, DEQ, RUN, OK]


@on_uvloop
async def test_pausing_all_holds_every_function_until_all_resume(tmp_path: Path):
    runtime = FakeRuntime()
    async with running(tmp_path, runtime, define("fn"), define("other")) as policy:
        assert policy.dispatcher.pause(None) == "all functions paused"
        held = [await policy.submit(1), await policy.submit(2, function="other")]
        with pytest.raises(Refused, match="all functions are paused"):
            policy.dispatcher.resume("fn")
        assert policy.dispatcher.queue_depth == 2
        assert [await policy.states(e.id) for e in held] == [[ENQ], [ENQ]]
        assert policy.dispatcher.resume(None) == "all functions resumed"
        for event in held:
            await ended(event)
        assert policy.store.paused == PauseState()


@on_uvloop
async def test_a_running_event_finishes_while_its_function_is_paused(tmp_path: Path):
    runtime = FakeRuntime(lambda call: None if call.payload == "hold" else succeeded(call.payload))
    async with running(tmp_path, runtime, define("fn"), define("other")) as policy:
        first = await policy.submit("hold")
        call = await wait_for_async(
            lambda: runtime.call_of(first.id), what="the first event to be running"
        )
        policy.dispatcher.pause("fn")
        second = await policy.submit("next")
        call.answer(succeeded("done"))
        await ended(first)
        assert await policy.states(first.id) == [ENQ, DEQ, RUN, OK]
        await waited_behind(policy, second)
        assert await policy.states(second.id) == [ENQ]
        policy.dispatcher.resume("fn")
        await ended(second)
        assert second.state is OK


@on_uvloop
async def test_an_event_past_max_event_age_expires_when_its_function_resumes(
    tmp_path: Path, clock: FakeClock
):
    runtime = FakeRuntime()
    async with running(tmp_path, runtime, define(async_={"max_event_age": 10.0})) as policy:
        policy.dispatcher.pause("fn")
        event = await policy.submit("x")
        clock.advance(11.0)  # paused longer than it may wait
        policy.dispatcher.resume("fn")
        await ended(event)
        assert await policy.states(event.id) == [ENQ, DEQ, State.EXPIRED]
    assert runtime.calls == []


@on_uvloop
async def test_an_unknown_function_cannot_be_paused_nor_resumed(tmp_path: Path):
    async with running(tmp_path, FakeRuntime(), define("fn")) as policy:
        for act in (policy.dispatcher.pause, policy.dispatcher.resume):
            with pytest.raises(Refused, match="no function named 'nope'"):
                act("nope")
        assert policy.store.paused == PauseState()


@pytest.mark.parametrize("compact", [False, True])
@on_uvloop
async def test_the_paused_state_outlives_a_restart_and_a_compaction(tmp_path: Path, compact: bool):
    runtime = FakeRuntime()
    async with running(tmp_path, runtime, define("fn"), define("other")) as policy:
        policy.dispatcher.pause("fn")
        event = await policy.submit("x")
        if compact:
            await policy.store.compact()
    if compact:  # the snapshot carries it: the segments before it may go
        [*_, (_seq, newest)] = list_snapshots(tmp_path / "journal")
        header, _events = read_snapshot(newest)
        assert header.paused == PauseState(functions=("fn",))
    state = recover(tmp_path / "journal")
    assert state.paused == PauseState(functions=("fn",))
    async with running(tmp_path, runtime, define("fn"), define("other")) as policy:
        assert policy.store.paused == PauseState(functions=("fn",))
        event = policy.store.events[event.id]
        await waited_behind(policy, event)
        assert event.state is ENQ
        policy.dispatcher.resume("fn")
        await ended(event)
        assert event.state is OK
