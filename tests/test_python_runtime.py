"""The python runtime with real workers: processes, pipes, signals and logs, under uvloop."""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import signal
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path

import msgspec
import pytest
from conftest import gone, wait_for_async
from runtime_helpers import LINE_TIME, on_uvloop, raw, value

from daemon.functions import FunctionDef, LifecycleConfig
from daemon.pool import INIT_INSTANCES, FunctionPool
from daemon.runtimes.base import HookOutcome, InstanceStartError
from daemon.runtimes.python import PythonInstance
from daemon.supervise.supervisor import Supervisor

CODE = Path(__file__).parent / "functions" / "python_runtime"


def function(handler: str, **changes: object) -> FunctionDef:
    """A python function served from tests/functions/python_runtime."""
    fields: dict[str, object] = {
        "name": "pyt",
        "handler": handler,
        "code_dir": str(CODE),
        "interpreter": sys.executable,
    }
    return FunctionDef(**{**fields, **changes})  # type: ignore[arg-type]


@contextlib.asynccontextmanager
async def running(handler: str, **changes: object) -> AsyncIterator[PythonInstance]:
    """A started instance, stopped on the way out."""
    instance = PythonInstance(function(handler, **changes), supervisor=Supervisor())
    await instance.start()
    try:
        yield instance
    finally:
        await instance.stop()


@on_uvloop
async def test_runs_on_uvloop() -> None:
    assert type(asyncio.get_running_loop()).__module__.startswith("uvloop")


@on_uvloop
async def test_echo_returns_the_event(tmp_path: Path) -> None:
    async with running("handlers.echo") as instance:
        assert instance.state == "idle"
        outcome = await instance.invoke("r1", raw({"a": [1, "é"]}), 1, 10.0, tmp_path / "r1.log")
        assert outcome.ok and not outcome.instance_lost
        assert value(outcome.result) == {"a": [1, "é"]}
        assert outcome.usage.duration_ms > 0
        assert outcome.usage.max_memory_mb and outcome.usage.max_memory_mb > 1
        assert outcome.usage.cpu_ms is not None


@on_uvloop
async def test_instances_run_as_batch_work_that_never_preempts_the_daemon(tmp_path: Path) -> None:
    # SCHED_BATCH: a worker woken by an event's frame no longer takes the CPU from the event
    # loop in the middle of its write; what the handler starts inherits it
    async with running("handlers.policies") as instance:
        outcome = await instance.invoke("r1", raw(None), 1, 10.0, tmp_path / "r1.log")
        assert outcome.ok, outcome.error
        assert value(outcome.result) == [os.SCHED_BATCH, os.SCHED_BATCH]
    assert os.sched_getscheduler(0) == os.SCHED_OTHER  # the daemon itself is left as it was


@on_uvloop
async def test_one_instance_serves_100_events(tmp_path: Path) -> None:
    async with running("handlers.pid") as instance:
        pids = set()
        for n in range(100):
            outcome = await instance.invoke(f"r{n}", raw(n), 1, 10.0, tmp_path / f"r{n}.log")
            assert outcome.ok
            pids.add(value(outcome.result))
        assert pids == {instance.pid}
        assert instance.events_served == 100
        assert instance.state == "idle"


@on_uvloop
async def test_an_event_makes_no_look_up_of_the_running_loop(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # each look-up is a getpid() system call: the instance keeps the loop it started on
    async with running("handlers.echo") as instance:
        assert instance.function.memory_mb > 0  # the memory watch is made for each event too
        looked_up = []
        real = asyncio.get_running_loop
        monkeypatch.setattr(asyncio, "get_running_loop", lambda: looked_up.append(1) or real())
        for n in range(3):
            outcome = await instance.invoke(f"r{n}", raw(n), 1, 10.0, tmp_path / f"r{n}.log")
            assert outcome.ok
        assert looked_up == []


@on_uvloop
async def test_large_payload_round_trip(tmp_path: Path) -> None:
    async with running("handlers.echo") as instance:
        payload = {"blob": "y" * (3 << 20)}  # far more than a pipe holds
        outcome = await instance.invoke("big", raw(payload), 1, 30.0, tmp_path / "big.log")
        assert outcome.ok and value(outcome.result) == payload


@on_uvloop
async def test_output_goes_to_its_own_event_log(tmp_path: Path) -> None:
    async with running("handlers.chatty") as instance:
        for n in (1, 2):
            assert (await instance.invoke(f"req-{n}", raw(n), 1, 10.0, tmp_path / f"{n}.log")).ok
        lines = (tmp_path / "1.log").read_text().splitlines()
        assert re.fullmatch(
            f"{LINE_TIME} \\[PLATFORM\\] FC Invoke Start RequestId: req-1", lines[0]
        )
        assert re.fullmatch(f"{LINE_TIME} \\[PLATFORM\\] FC Invoke End RequestId: req-1", lines[-1])
        body = lines[1:-1]
        assert "out 1" in body and "err 1" in body
        assert any(re.fullmatch(f"{LINE_TIME} req-1 \\[INFO\\] logged 1", line) for line in body)
        assert not {"out 2", "err 2"} & set(body)
        assert not any("logged 2" in line for line in body)
        second = (tmp_path / "2.log").read_text()
        assert "out 2" in second and "out 1" not in second


@on_uvloop
async def test_log_is_capped_with_a_marker(tmp_path: Path) -> None:
    instance = PythonInstance(
        function("handlers.big_output"), log_cap=1000, supervisor=Supervisor()
    )
    await instance.start()
    try:
        outcome = await instance.invoke("r", raw(200_000), 1, 10.0, tmp_path / "r.log")
    finally:
        await instance.stop()
    assert outcome.ok
    text = (tmp_path / "r.log").read_text()
    assert text.count("x") == 1000
    assert "[PLATFORM] log truncated at 1000 bytes" in text
    assert text.rstrip().endswith("FC Invoke End RequestId: r")


@on_uvloop
async def test_exception_is_reported(tmp_path: Path) -> None:
    async with running("handlers.boom") as instance:
        outcome = await instance.invoke("r", raw(7), 1, 10.0, tmp_path / "r.log")
        assert not outcome.ok and not outcome.instance_lost
        assert outcome.error is not None
        assert (outcome.error.type, outcome.error.message) == ("ValueError", "boom 7")
        assert outcome.error.traceback is not None
        assert "handlers.py" in outcome.error.traceback
        assert outcome.error.traceback.rstrip().endswith("ValueError: boom 7")
        assert "bootstrap.py" not in outcome.error.traceback
        assert instance.state == "idle"


@on_uvloop
async def test_non_serialisable_result_is_invalid(tmp_path: Path) -> None:
    async with running("handlers.not_json") as instance:
        outcome = await instance.invoke("r", raw(None), 1, 10.0, tmp_path / "r.log")
        assert not outcome.ok and outcome.error is not None
        assert outcome.error.type == "InvalidResult"
        assert "not JSON-serialisable" in outcome.error.message and "set" in outcome.error.message
        assert not outcome.instance_lost
        assert (await instance.invoke("r2", raw(None), 1, 10.0, tmp_path / "r2.log")).error


@on_uvloop
async def test_timeout_kills_the_whole_group(tmp_path: Path) -> None:
    async with running("handlers.sleepy") as instance:
        pid = instance.pid
        assert pid is not None
        log = tmp_path / "r.log"
        outcome = await instance.invoke("r", raw(1000), 1, 1.0, log)
        assert not outcome.ok and outcome.instance_lost
        assert outcome.error is not None and outcome.error.type == "FunctionTimeout"
        assert outcome.error.message == "Function timed out after 1.00 seconds"
        assert outcome.usage.signal == signal.SIGKILL
        # uvloop's timers run on its cached millisecond clock: allow that much early
        assert 990 <= outcome.usage.duration_ms < 5000
        match = re.search(r"grandchild (\d+)", log.read_text())
        assert match, log.read_text()
        await wait_for_async(lambda: gone(int(match.group(1))))
        assert gone(pid)
        assert "FC Invoke End RequestId: r" in log.read_text()


@on_uvloop
async def test_exit_mid_event(tmp_path: Path) -> None:
    async with running("handlers.exit3") as instance:
        outcome = await instance.invoke("r", raw(None), 1, 10.0, tmp_path / "r.log")
        assert not outcome.ok and outcome.instance_lost
        assert outcome.error is not None and outcome.error.type == "ProcessExited"
        assert re.fullmatch(
            r"Process exited unexpectedly before completing request "
            r"\(duration: \d+\.\d\dms, maxMemoryUsage: \d+\.\d\dMB\)",
            outcome.error.message,
        )
        assert (outcome.usage.exit_code, outcome.usage.signal) == (3, None)
        assert instance.state == "dead"
        assert "about to exit" in (tmp_path / "r.log").read_text()


@on_uvloop
async def test_import_error_fails_the_start(tmp_path: Path) -> None:
    instance = PythonInstance(function("broken.handler"), supervisor=Supervisor())
    with pytest.raises(InstanceStartError) as caught:
        await instance.start(request_id="r", log_path=tmp_path / "r.log")
    assert caught.value.error.type == "ModuleNotFoundError"
    assert "module_that_does_not_exist" in caught.value.error.message
    assert caught.value.error.traceback and "broken.py" in caught.value.error.traceback
    assert instance.state == "dead"
    assert instance.pid is not None and gone(instance.pid)


@on_uvloop
async def test_missing_handler_fails_the_start() -> None:
    instance = PythonInstance(function("handlers.nope"), supervisor=Supervisor())
    with pytest.raises(InstanceStartError) as caught:
        await instance.start()
    assert caught.value.error.type == "AttributeError"


@on_uvloop
async def test_missing_interpreter_fails_the_start() -> None:
    instance = PythonInstance(
        function("handlers.echo", interpreter="/nonexistent/python"), supervisor=Supervisor()
    )
    with pytest.raises(InstanceStartError) as caught:
        await instance.start()
    assert caught.value.error.type == "SpawnError"
    assert "/nonexistent/python" in caught.value.error.message


@on_uvloop
async def test_async_handler(tmp_path: Path) -> None:
    async with running("handlers.async_echo") as instance:
        outcome = await instance.invoke("r", raw(5), 1, 10.0, tmp_path / "r.log")
        assert outcome.ok and value(outcome.result) == {"async": 5}


@on_uvloop
async def test_retry_asks_for_a_delay(tmp_path: Path) -> None:
    async with running("handlers.retry_later") as instance:
        outcome = await instance.invoke("r", raw(None), 1, 10.0, tmp_path / "r.log")
        assert not outcome.ok and outcome.error is not None
        assert (outcome.error.type, outcome.error.message) == ("Retry", "not yet")
        assert outcome.retry_delay == 2
        assert not outcome.instance_lost


@on_uvloop
async def test_handler_catches_sigterm(tmp_path: Path) -> None:
    async with running("handlers.graceful") as instance:
        log = tmp_path / "r.log"
        task = asyncio.create_task(instance.invoke("r", raw(None), 1, 30.0, log))
        await wait_for_async(lambda: log.exists() and "installed" in log.read_text())
        assert instance.signal(signal.SIGTERM)
        outcome = await task
        assert outcome.ok, outcome.error
        assert value(outcome.result) == {"graceful": True, "signal": signal.SIGTERM}


@on_uvloop
async def test_context(tmp_path: Path) -> None:
    async with running("handlers.describe") as instance:
        outcome = await instance.invoke("req-9", raw(None), 3, 20.0, tmp_path / "r.log")
    described = value(outcome.result)
    assert isinstance(described, dict)
    assert described["request_id"] == "req-9"
    assert (described["function_name"], described["attempt"]) == ("pyt", 3)
    assert 0 < described["remaining_ms"] <= 20_000
    assert described["cwd"] == str(CODE)
    assert described["loaded"] == []  # neither fnspool's package nor msgspec in the worker


@on_uvloop
async def test_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NOTIFY_SOCKET", "/run/systemd/notify")
    monkeypatch.setenv("WATCHDOG_USEC", "1000000")
    names = ["NOTIFY_SOCKET", "WATCHDOG_USEC", "LEVEL"]
    async with running("handlers.environment", environment={"LEVEL": "debug"}) as instance:
        outcome = await instance.invoke("r", raw(names), 1, 20.0, tmp_path / "r.log")
    assert value(outcome.result) == {"NOTIFY_SOCKET": None, "WATCHDOG_USEC": None, "LEVEL": "debug"}


@on_uvloop
async def test_another_interpreter(tmp_path: Path) -> None:
    interpreter = os.path.realpath(sys.executable)  # outside the venv: no msgspec, no fnspool
    async with running("handlers.describe", interpreter=interpreter) as instance:
        outcome = await instance.invoke("r", raw(None), 1, 10.0, tmp_path / "r.log")
        assert outcome.ok
        described = value(outcome.result)
        assert isinstance(described, dict)
        assert described["executable"] == interpreter
        assert described["prefix"] != sys.prefix


class Started(msgspec.Struct, kw_only=True):
    """What starting through a pool gave: the instance or the error, and the hooks run."""

    pool: FunctionPool
    made: list[PythonInstance]
    hooks: list[HookOutcome]
    instance: PythonInstance | None = None
    error: InstanceStartError | None = None


async def started_by_pool(definition: FunctionDef, log: Path) -> Started:
    """Start an instance the way the daemon does: through its pool, Initializer included."""
    made: list[PythonInstance] = []

    def factory(d: FunctionDef) -> PythonInstance:
        made.append(PythonInstance(d, supervisor=Supervisor()))
        return made[-1]

    hooks: list[HookOutcome] = []
    pool = FunctionPool(definition, factory, record_hook=lambda i, o, r, c: hooks.append(o))
    started = Started(pool=pool, made=made, hooks=hooks)
    lease = await pool.lease()
    try:
        await pool.start(lease, "r", log)
        started.instance = made[0]
    except InstanceStartError as exc:
        started.error = exc
    return started


@on_uvloop
async def test_initializer_runs_before_the_first_event(tmp_path: Path) -> None:
    lifecycle = LifecycleConfig(initializer="handlers.init")
    log = tmp_path / "r.log"
    started = await started_by_pool(function("handlers.was_initialized", lifecycle=lifecycle), log)
    assert started.instance is not None
    try:
        outcome = await started.instance.invoke("r", raw(None), 1, 10.0, log)
    finally:
        await started.pool.retire_all("test over")
    assert outcome.ok and value(outcome.result) is True
    assert [(h.hook, h.ok) for h in started.hooks] == [("initializer", True)]
    lines = [re.sub(f"^{LINE_TIME} ", "", line) for line in log.read_text().splitlines()]
    assert lines[:3] == [
        "[PLATFORM] FC Initialize Start RequestId: r",
        "initializing r",
        "[PLATFORM] FC Initialize End RequestId: r",
    ]
    assert lines[3] == "[PLATFORM] FC Invoke Start RequestId: r"


@on_uvloop
async def test_failing_initializer_fails_the_start(tmp_path: Path) -> None:
    lifecycle = LifecycleConfig(initializer="handlers.bad_init")
    started = await started_by_pool(
        function("handlers.echo", lifecycle=lifecycle), tmp_path / "r.log"
    )
    assert started.error is not None
    assert (started.error.error.type, started.error.error.message) == (
        "RuntimeError",
        "init failed",
    )
    assert [(h.hook, h.ok) for h in started.hooks] == [("initializer", False)]
    assert started.pool.instances == [] and started.pool.busy == 0
    pid = started.made[0].pid
    assert pid is not None and gone(pid)
    assert (
        "FC Initialize Error RequestId: r RuntimeError: init failed"
        in (tmp_path / "r.log").read_text()
    )


@on_uvloop
async def test_initializer_timeout(tmp_path: Path) -> None:
    lifecycle = LifecycleConfig(initializer="handlers.slow_init", initializer_timeout=0.5)
    began = time.monotonic()
    started = await started_by_pool(
        function("handlers.echo", lifecycle=lifecycle), tmp_path / "r.log"
    )
    assert started.error is not None and started.error.error.type == "FunctionTimeout"
    assert started.hooks[0].instance_lost
    # a timeout loses the instance: another is tried, up to INIT_INSTANCES
    assert len(started.made) == len(started.hooks) == INIT_INSTANCES
    assert started.error.error.message.endswith(f"({INIT_INSTANCES} instances)")
    print(f"\na 0.5 s initializer timeout returned after {time.monotonic() - began:.2f} s")
    pid = started.made[0].pid
    assert pid is not None and gone(pid)


@on_uvloop
async def test_stop_is_idempotent_and_kills() -> None:
    async with running("handlers.echo") as instance:
        pid = instance.pid
        assert pid is not None
        await instance.stop()
        await instance.stop()
        assert instance.state == "dead" and gone(pid)
        assert not instance.signal(signal.SIGTERM)


@on_uvloop
async def test_death_while_idle_is_noticed() -> None:
    async with running("handlers.echo") as instance:
        assert instance.signal(signal.SIGKILL)
        await wait_for_async(lambda: instance.state == "dead")


def test_plain_asyncio_loop_works_too(tmp_path: Path) -> None:
    async def scenario() -> object:
        instance = PythonInstance(function("handlers.echo"), supervisor=Supervisor())
        await instance.start()
        try:
            outcome = await instance.invoke("r", raw([1, 2]), 1, 10.0, tmp_path / "r.log")
        finally:
            await instance.stop()
        return value(outcome.result)

    with asyncio.Runner(loop_factory=asyncio.SelectorEventLoop) as runner:
        assert runner.run(scenario()) == [1, 2]


@on_uvloop
async def test_pre_stop_runs_beside_a_busy_handler(tmp_path: Path) -> None:
    lifecycle = LifecycleConfig(pre_stop="handlers.pre_stop")
    log = tmp_path / "r.log"
    async with running("handlers.sleepy", lifecycle=lifecycle) as instance:
        invoke = asyncio.ensure_future(instance.invoke("r", raw(30), 1, 60.0, log))
        await wait_for_async(lambda: log.exists() and "grandchild" in log.read_text())
        began = time.monotonic()
        hook = await instance.run_hook("pre_stop", request_id="r", log_path=log)
        took = time.monotonic() - began
        assert hook.ok
        assert not invoke.done()  # the handler (30 s) still runs on the main thread
        print(f"\nPreStop beside a busy handler took {took:.2f} s")
        await instance.stop()
        outcome = await invoke
        assert not outcome.ok and outcome.instance_lost
    await wait_for_async(lambda: "pre-stop r" in log.read_text())
