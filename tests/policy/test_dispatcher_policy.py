"""The dispatcher's policy, read back from the journal: retries and backoff, expiry, stops, and
the recovery of attempts a crash or a shutdown cut off. Fake instances, a real journal."""

from __future__ import annotations

import signal
from pathlib import Path

import pytest
from conftest import wait_for_async
from runtime_helpers import on_uvloop

from daemon.dispatcher import BEFORE_RUNNING, MAY_HAVE_STARTED
from daemon.files.eventlog import INTERRUPTED
from daemon.model import ErrorInfo, Event, State, Usage, raw_json
from daemon.refusals import Refused
from daemon.runtimes.base import Outcome
from daemon.store import Store
from policy.fakes import (
    Call,
    FakeClock,
    FakeRuntime,
    Policy,
    TopOfRange,
    define,
    died,
    failed,
    journal_only,
    running,
    succeeded,
)

ENQ, DEQ, RUN, RETRY = State.ENQUEUED, State.DEQUEUED, State.RUNNING, State.RETRYING
STOPPING, STOPPED = State.STOPPING, State.STOPPED
#: backoffs short enough for asyncio's real timers: the delays are read off the journal
QUICK = {"backoff": 0.001, "backoff_max": 0.003}


async def ended(*events: Event) -> None:
    """Wait until every one of `events` reaches a terminal state."""
    await wait_for_async(
        lambda: all(e.ended for e in events),
        what=f"events {', '.join(e.id for e in events)} to end",
    )


async def held(runtime: FakeRuntime, event: Event) -> Call:
    """Wait until an attempt of `event` runs and is held by its instance."""
    return await wait_for_async(
        lambda: next((c for c in runtime.held() if c.request_id == event.id), None),
        what=f"an attempt of {event.id} to be running",
    )


def hold_first(call: Call) -> Outcome | None:
    """A script: the payload "hold" is held until answered; anything else succeeds at once."""
    return None if call.payload == "hold" else succeeded(call.payload)


# -- retries -----------------------------------------------------------------------------------


@on_uvloop
async def test_failures_retry_after_doubling_capped_backoffs_until_max_retries(
    tmp_path: Path, clock: FakeClock, jitter: TopOfRange
):
    runtime = FakeRuntime(lambda _call: failed())
    fn = define(async_={"max_retries": 3, **QUICK})
    async with running(tmp_path, runtime, fn) as policy:
        event = await policy.submit("x")
        await ended(event)
        records = await policy.records(event.id)
    assert [r.state for r in records] == [ENQ, DEQ, *[RUN, RETRY] * 3, RUN, State.FAILED]
    assert [r.attempt for r in records if r.state is RUN] == [1, 2, 3, 4]
    retrying = [r for r in records if r.state is RETRY]
    # backoff, doubled at each failure, capped at backoff_max; the jitter draws from its upper
    # half: [ceiling / 2, ceiling]
    assert jitter.ranges == pytest.approx([(0.0005, 0.001), (0.001, 0.002), (0.0015, 0.003)])
    assert [r.not_before for r in retrying] == [clock.wall + d for d in (0.001, 0.002, 0.003)]
    assert all(r.error is not None and r.error.type == "HandlerError" for r in retrying)
    assert records[-1].error is not None and records[-1].error.type == "HandlerError"
    assert len(runtime.calls) == 4


@on_uvloop
async def test_no_retry_when_max_retries_is_zero(tmp_path: Path, clock: FakeClock):
    runtime = FakeRuntime(lambda _call: failed())
    async with running(tmp_path, runtime, define(async_={"max_retries": 0})) as policy:
        event = await policy.submit("x")
        await ended(event)
        assert await policy.states(event.id) == [ENQ, DEQ, RUN, State.FAILED]
    assert len(runtime.calls) == 1


@on_uvloop
async def test_retry_delay_asked_by_the_handler_replaces_the_backoff(
    tmp_path: Path, clock: FakeClock, jitter: TopOfRange
):
    runtime = FakeRuntime(
        lambda call: failed("Later", retry_delay=0.002) if call.attempt == 1 else succeeded("ok")
    )
    fn = define(async_={"max_retries": 1, "backoff": 60.0})  # a backoff would outlast the test
    async with running(tmp_path, runtime, fn) as policy:
        event = await policy.submit("x")
        await ended(event)
        records = await policy.records(event.id)
    assert [r.state for r in records] == [ENQ, DEQ, RUN, RETRY, RUN, State.SUCCEEDED]
    assert records[3].not_before == clock.wall + 0.002
    assert records[3].error is not None and records[3].error.type == "Later"
    assert records[-1].result == raw_json("ok")
    assert jitter.ranges == []  # no backoff was drawn


@on_uvloop
async def test_an_instance_dying_mid_event_is_a_failed_attempt_retried(
    tmp_path: Path, clock: FakeClock
):
    runtime = FakeRuntime(lambda call: died(signal.SIGKILL) if call.attempt == 1 else succeeded())
    async with running(tmp_path, runtime, define(async_={"max_retries": 1, **QUICK})) as policy:
        event = await policy.submit("x")
        await ended(event)
        records = await policy.records(event.id)
    assert [r.state for r in records] == [ENQ, DEQ, RUN, RETRY, RUN, State.SUCCEEDED]
    assert records[3].error is not None and records[3].error.type == "ProcessExited"
    assert records[3].usage is not None and records[3].usage.signal == signal.SIGKILL


# -- expiry ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("age", "states"), [(9.0, [RUN, State.SUCCEEDED]), (11.0, [State.EXPIRED])]
)
@on_uvloop
async def test_an_event_older_than_max_event_age_expires_when_dequeued(
    tmp_path: Path, clock: FakeClock, age: float, states: list[State]
):
    runtime = FakeRuntime()
    async with running(tmp_path, runtime, define(async_={"max_event_age": 10.0})) as policy:
        event = policy.store.enqueue("fn", raw_json("x"))
        assert event is not None
        await policy.store.sync()
        clock.advance(age)  # it waited that long before the dispatcher took it
        policy.dispatcher.submit(event)
        await ended(event)
        records = await policy.records(event.id)
    assert [r.state for r in records] == [ENQ, DEQ, *states]
    if states == [State.EXPIRED]:
        assert records[-1].error is not None and records[-1].error.type == "EventExpired"
        assert runtime.instances == []  # no instance started for it
    else:
        assert len(runtime.calls) == 1


@on_uvloop
async def test_an_event_past_max_event_age_expires_before_its_retry(
    tmp_path: Path, clock: FakeClock
):
    def slow_failure(_call: Call) -> Outcome:
        clock.advance(11.0)  # the attempt outlived the event's age limit
        return failed(retry_delay=0.001)

    runtime = FakeRuntime(slow_failure)
    fn = define(async_={"max_event_age": 10.0, "max_retries": 3})
    async with running(tmp_path, runtime, fn) as policy:
        event = await policy.submit("x")
        await ended(event)
        records = await policy.records(event.id)
    assert [r.state for r in records] == [ENQ, DEQ, RUN, RETRY, State.EXPIRED]
    assert records[-1].error is not None and records[-1].error.type == "EventExpired"
    assert len(runtime.calls) == 1


@on_uvloop
async def test_an_event_dequeued_ahead_expires_if_it_grows_too_old_waiting_for_an_instance(
    tmp_path: Path, clock: FakeClock
):
    runtime = FakeRuntime(hold_first)
    fn = define(max_instances=1, async_={"max_event_age": 10.0})
    async with running(tmp_path, runtime, fn) as policy:
        first = await policy.submit("hold")
        call = await held(runtime, first)
        second = await policy.submit("x")
        await wait_for_async(lambda: second.state is DEQ, what="the second dequeued ahead")
        clock.advance(11.0)  # the first attempt runs long
        call.answer(succeeded())
        await ended(first, second)
        records = await policy.records(second.id)
    assert first.state is State.SUCCEEDED
    assert [r.state for r in records] == [ENQ, DEQ, State.EXPIRED]
    assert [c.request_id for c in runtime.calls] == [first.id]


# -- stops -------------------------------------------------------------------------------------


async def _queued(policy: Policy, runtime: FakeRuntime, clock: FakeClock, how: str) -> Event:
    """An event left waiting: Enqueued with a delay, Dequeued behind a busy instance, or
    Retrying with a long backoff."""
    if how == "Enqueued":
        return await policy.submit("x", not_before=clock.wall + 3600)
    if how == "Dequeued":
        await held(runtime, await policy.submit("hold"))
        event = await policy.submit("x")
        await wait_for_async(lambda: event.state is DEQ, what="the second event dequeued ahead")
        return event
    runtime.script = lambda _call: failed(retry_delay=3600)
    event = await policy.submit("x")
    await wait_for_async(lambda: event.state is RETRY, what="the event to wait for its retry")
    return event


@pytest.mark.parametrize("how", ["Enqueued", "Dequeued", "Retrying"])
@on_uvloop
async def test_a_stop_before_running_ends_the_event_at_once(
    tmp_path: Path, clock: FakeClock, how: str
):
    runtime = FakeRuntime(hold_first)
    async with running(tmp_path, runtime, define(max_instances=1)) as policy:
        event = await _queued(policy, runtime, clock, how)
        calls = len(runtime.calls)
        assert policy.dispatcher.stop(event.id, graceful=False) == f"stopped while {how}"
        for call in runtime.held():
            call.answer(succeeded())
        await wait_for_async(lambda: not policy.dispatcher.running, what="every attempt to end")
        records = await policy.records(event.id)
    assert [r.state for r in records][-2:] == [STOPPING, STOPPED]
    assert records[-1].reason == BEFORE_RUNNING
    assert len(runtime.calls) == calls  # it never ran again


@on_uvloop
async def test_a_forced_stop_runs_prestop_then_kills_the_instance(tmp_path: Path, clock: FakeClock):
    runtime = FakeRuntime(hold_first)
    fn = define(lifecycle={"pre_stop": "index.pre_stop"})
    async with running(tmp_path, runtime, fn) as policy:
        event = await policy.submit("hold")
        call = await held(runtime, event)
        assert policy.dispatcher.stop(event.id, graceful=False) == "stopping (forced)"
        await ended(event)
        records = await policy.records(event.id)
        hooks = await policy.hook_runs()
        after = await policy.submit("after")
        await ended(after)
    assert [r.state for r in records] == [ENQ, DEQ, RUN, STOPPING, STOPPED]
    assert [r.reason for r in records[-2:]] == ["forced", "forced"]
    assert records[-1].error is not None and records[-1].error.type == "Stopped"
    assert runtime.did(call.instance) == ["start", f"invoke {event.id}", "pre_stop", "kill"]
    assert [(h.hook, h.request_id, h.instance) for h in hooks] == [
        ("pre_stop", event.id, call.instance.id)
    ]
    assert runtime.calls[-1].instance is not call.instance  # a killed instance is not reused


@on_uvloop
async def test_a_graceful_stop_of_a_handler_killed_by_sigterm_is_code_439(
    tmp_path: Path, clock: FakeClock
):
    runtime = FakeRuntime(hold_first)
    async with running(tmp_path, runtime, define()) as policy:
        event = await policy.submit("hold")
        call = await held(runtime, event)
        assert policy.dispatcher.stop(event.id, graceful=True) == "stopping (graceful)"
        await ended(event)
        records = await policy.records(event.id)
    assert [r.state for r in records] == [ENQ, DEQ, RUN, STOPPING, STOPPED]
    assert [r.reason for r in records[-2:]] == ["graceful", "graceful"]
    error = records[-1].error
    assert error is not None and (error.type, error.code) == ("UserProcessExit", 439)
    assert runtime.did(call.instance)[-2:] == ["SIGTERM", "kill"]
    log = (tmp_path / "logs" / "fn" / f"{event.id}.log").read_text()
    assert "[PLATFORM] Signal received successfully." in log


@on_uvloop
async def test_a_graceful_stop_keeps_what_the_handler_returned_and_retires_its_instance(
    tmp_path: Path, clock: FakeClock
):
    runtime = FakeRuntime(hold_first)
    runtime.on_sigterm = lambda _call: succeeded("cleaned up")
    fn = define(lifecycle={"pre_stop": "index.pre_stop"})
    async with running(tmp_path, runtime, fn) as policy:
        event = await policy.submit("hold")
        call = await held(runtime, event)
        policy.dispatcher.stop(event.id, graceful=True)
        await ended(event)
        await wait_for_async(lambda: call.instance.killed, what="the signalled instance retired")
        records = await policy.records(event.id)
    assert [r.state for r in records][-2:] == [STOPPING, STOPPED]
    assert records[-1].result == raw_json("cleaned up")
    assert records[-1].error is None
    assert runtime.did(call.instance)[-3:] == ["SIGTERM", "pre_stop", "kill"]


@on_uvloop
async def test_a_graceful_stop_is_forced_once_the_grace_has_passed(
    tmp_path: Path, clock: FakeClock
):
    runtime = FakeRuntime(hold_first)
    runtime.on_sigterm = lambda _call: None  # the handler ignores SIGTERM
    async with running(tmp_path, runtime, define()) as policy:
        event = await policy.submit("hold")
        call = await held(runtime, event)
        looks = clock.looks
        policy.dispatcher.stop(event.id, graceful=True, grace=10.0)
        await wait_for_async(lambda: signal.SIGTERM in call.instance.signals, what="SIGTERM")
        # the grace is set, looked at, waited for, and looked at again: not over, no force
        await wait_for_async(lambda: clock.looks >= looks + 3, what="the grace looked at twice")
        assert not event.ended and not call.instance.killed
        clock.advance(10.5)
        await ended(event)
        records = await policy.records(event.id)
    assert [r.state for r in records][-2:] == [STOPPING, STOPPED]
    assert [r.reason for r in records[-2:]] == ["graceful", "forced"]
    assert records[-1].error is not None and records[-1].error.type == "Stopped"
    assert runtime.did(call.instance)[-2:] == ["SIGTERM", "kill"]


@on_uvloop
async def test_a_stop_is_refused_for_an_event_ended_or_being_stopped(
    tmp_path: Path, clock: FakeClock
):
    runtime = FakeRuntime(hold_first)
    runtime.on_sigterm = lambda _call: None
    async with running(tmp_path, runtime, define()) as policy:
        done = await policy.submit("x")
        await ended(done)
        with pytest.raises(Refused, match="has already ended: Succeeded"):
            policy.dispatcher.stop(done.id, graceful=False)
        stopping = await policy.submit("hold")
        await held(runtime, stopping)
        policy.dispatcher.stop(stopping.id, graceful=True)
        with pytest.raises(Refused, match="already being stopped"):
            policy.dispatcher.stop(stopping.id, graceful=True)
        policy.dispatcher.stop(stopping.id, graceful=False)  # escalates the graceful stop
        with pytest.raises(Refused, match=r"already being stopped \(forced\)"):
            policy.dispatcher.stop(stopping.id, graceful=False)


# -- recovery after a crash or a shutdown ------------------------------------------------------


@on_uvloop
async def test_an_event_dequeued_before_a_crash_may_have_started_and_runs_again(
    tmp_path: Path, clock: FakeClock
):
    async with journal_only(tmp_path) as store:
        event = store.enqueue("fn", raw_json("x"))
        assert event is not None
        store.transition(event, DEQ)
    runtime = FakeRuntime()
    async with running(tmp_path, runtime, define()) as policy:
        event = policy.store.events[event.id]
        await ended(event)
        records = await policy.records(event.id)
    assert [(r.state, r.attempt, r.reason) for r in records] == [
        (ENQ, 0, None),
        (DEQ, 0, None),
        (RUN, 1, MAY_HAVE_STARTED),
        (RETRY, 1, INTERRUPTED),
        (RUN, 2, None),
        (State.SUCCEEDED, 2, None),
    ]


@on_uvloop
async def test_an_interrupted_attempt_does_not_use_up_a_retry(tmp_path: Path, clock: FakeClock):
    async with journal_only(tmp_path) as store:
        event = store.enqueue("fn", raw_json("x"))
        assert event is not None
        store.transition(store.transition(event, DEQ), RUN, attempt=1)
    runtime = FakeRuntime(lambda _call: failed())
    async with running(tmp_path, runtime, define(async_={"max_retries": 1, **QUICK})) as policy:
        event = policy.store.events[event.id]
        await ended(event)
        records = await policy.records(event.id)
    states = [RUN, RETRY, RUN, RETRY, RUN, State.FAILED]
    assert [r.state for r in records] == [ENQ, DEQ, *states]
    assert [r.reason for r in records if r.state is RETRY] == [INTERRUPTED, None]
    assert len(runtime.calls) == 2  # attempts 2 and 3: the one retry allowed, after the cut


def _interrupted(store: Store, event: Event, *, times: int, first_reason: str | None) -> Event:
    """`event` (Dequeued) cut off `times` times, each run found Running at the next start;
    the first run with `first_reason`; left Running, as a crash leaves it."""
    for attempt in range(1, times + 1):
        reason = first_reason if attempt == 1 else None
        store.transition(event, RUN, attempt=attempt, reason=reason)
        store.transition(event, RETRY, reason=INTERRUPTED)
    return store.transition(event, RUN, attempt=times + 1)


@pytest.mark.parametrize(
    ("limit", "cuts", "first_reason", "ends"),
    [
        (2, 2, None, State.FAILED),  # cut off a third time: more than 2
        (3, 2, None, State.SUCCEEDED),
        (1, 1, None, State.FAILED),
        (1, 1, MAY_HAVE_STARTED, State.SUCCEEDED),  # the first was only dequeued ahead
    ],
)
@on_uvloop
async def test_an_event_cut_off_more_than_max_interruptions_times_fails(
    tmp_path: Path, clock: FakeClock, limit: int, cuts: int, first_reason: str | None, ends: State
):
    fn = define(async_={"max_interruptions": limit})
    async with journal_only(tmp_path) as store:
        event = store.enqueue("fn", raw_json("x"))
        assert event is not None
        _interrupted(store, store.transition(event, DEQ), times=cuts, first_reason=first_reason)
    runtime = FakeRuntime()
    async with running(tmp_path, runtime, fn) as policy:
        event = policy.store.events[event.id]
        await ended(event)
        records = await policy.records(event.id)
    assert records[-1].state is ends
    if ends is State.FAILED:
        assert records[-2].state is RUN  # straight from the cut-off attempt
        assert records[-1].reason == INTERRUPTED
        assert records[-1].error is not None
        assert records[-1].error.type == "TooManyInterruptions"
        assert runtime.calls == []
    else:
        assert [r.state for r in records[-4:]] == [RUN, RETRY, RUN, State.SUCCEEDED]
        assert len(runtime.calls) == 1


@on_uvloop
async def test_an_event_being_stopped_at_a_crash_is_stopped_at_the_start(
    tmp_path: Path, clock: FakeClock
):
    async with journal_only(tmp_path) as store:
        event = store.enqueue("fn", raw_json("x"))
        assert event is not None
        event = store.transition(store.transition(event, DEQ), RUN, attempt=1)
        store.transition(event, STOPPING, reason="forced")
    runtime = FakeRuntime()
    async with running(tmp_path, runtime, define()) as policy:
        records = await policy.records(event.id)
    assert [r.state for r in records][-2:] == [STOPPING, STOPPED]
    assert records[-1].reason == "stopped before the daemon restarted"
    assert runtime.calls == []


@on_uvloop
async def test_a_shutdown_cuts_a_running_attempt_which_runs_again_after_the_start(
    tmp_path: Path, clock: FakeClock
):
    runtime = FakeRuntime(hold_first)
    fn = define(lifecycle={"pre_stop": "index.pre_stop"})
    async with running(tmp_path, runtime, fn) as policy:
        event = await policy.submit("hold")
        call = await held(runtime, event)
        await policy.dispatcher.drain(0)  # past the drain timeout at once
        assert await policy.states(event.id) == [ENQ, DEQ, RUN]  # left Running: Interrupted
    assert runtime.did(call.instance)[-2:] == ["pre_stop", "kill"]
    runtime.script = lambda call: succeeded("second")
    async with running(tmp_path, runtime, fn) as policy:
        event = policy.store.events[event.id]
        await ended(event)
        records = await policy.records(event.id)
    assert [(r.state, r.attempt, r.reason) for r in records[2:]] == [
        (RUN, 1, None),
        (RETRY, 1, INTERRUPTED),
        (RUN, 2, None),
        (State.SUCCEEDED, 2, None),
    ]


def node_lost(node: str) -> Outcome:
    """The attempt was cut off by the loss of its instance's Ray node."""
    error = ErrorInfo(type="NodeLost", message=f"its Ray node {node} was lost")
    usage = Usage(duration_ms=1.0, node=node)
    return Outcome(ok=False, error=error, usage=usage, instance_lost=True, interrupted=True)


@on_uvloop
async def test_an_attempt_cut_off_by_a_lost_node_runs_again_without_using_a_retry(
    tmp_path: Path, clock: FakeClock
):
    runtime = FakeRuntime(lambda call: node_lost("n1") if call.attempt == 1 else succeeded())
    async with running(tmp_path, runtime, define(async_={"max_retries": 0})) as policy:
        event = await policy.submit("x")
        await ended(event)
        records = await policy.records(event.id)
    assert [(r.state, r.attempt, r.reason) for r in records[2:]] == [
        (RUN, 1, None),
        (RETRY, 1, INTERRUPTED),
        (RUN, 2, None),
        (State.SUCCEEDED, 2, None),
    ]
    cut = records[3]
    assert cut.error is not None and cut.error.type == "NodeLost" and "n1" in cut.error.message
    assert cut.usage is not None and cut.usage.node == "n1"
    assert cut.not_before == clock.wall  # at once: no backoff
    assert runtime.did(runtime.calls[0].instance)[-1] == "kill"  # a lost instance


@on_uvloop
async def test_attempts_cut_off_by_lost_nodes_count_against_max_interruptions(
    tmp_path: Path, clock: FakeClock
):
    runtime = FakeRuntime(lambda call: node_lost(f"n{call.attempt}"))
    async with running(tmp_path, runtime, define(async_={"max_interruptions": 2})) as policy:
        event = await policy.submit("x")
        await ended(event)
        records = await policy.records(event.id)
    assert [r.state for r in records[2:]] == [RUN, RETRY, RUN, RETRY, RUN, State.FAILED]
    assert records[-1].reason == INTERRUPTED
    assert records[-1].error is not None and records[-1].error.type == "TooManyInterruptions"
    assert len(runtime.calls) == 3
