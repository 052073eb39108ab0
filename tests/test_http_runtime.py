"""The http runtime (FC custom runtime) with a real stdlib http.server: instances on their own,
then end to end through the real daemon."""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from conftest import (
    drop,
    events,
    fnspool,
    fnspool_json,
    gone,
    journal_records,
    process_state,
    wait_for,
)
from runtime_helpers import LINE_TIME, on_uvloop, raw, value

from daemon.functions import FunctionDef, LifecycleConfig
from daemon.model import HookRun
from daemon.runtimes.base import HOOK_LABELS, InstanceStartError
from daemon.runtimes.http import HttpInstance
from daemon.supervise.supervisor import Supervisor

CODE = Path(__file__).parent / "functions" / "http_runtime"
SERVER = [sys.executable, "-u", "server.py"]


def function(**changes: object) -> FunctionDef:
    """An http function served by tests/functions/http_runtime/server.py."""
    fields: dict[str, object] = {
        "name": "custom",
        "runtime": "http",
        "command": SERVER,
        "code_dir": str(CODE),
    }
    return FunctionDef(**{**fields, **changes})  # type: ignore[arg-type]


@contextlib.asynccontextmanager
async def running(**changes: object) -> AsyncIterator[HttpInstance]:
    """A started instance, stopped on the way out."""
    instance = HttpInstance(function(**changes), supervisor=Supervisor())
    await instance.start()
    try:
        yield instance
    finally:
        await instance.stop()


# -- one instance -------------------------------------------------------------------------------


@on_uvloop
async def test_invoke_posts_the_payload_with_fc_headers(tmp_path: Path) -> None:
    async with running() as instance:
        assert instance.state == "idle" and instance.pid is not None
        log = tmp_path / "r1.log"
        outcome = await instance.invoke("r1", raw({"echo": [1, "é"], "print": "hi"}), 2, 10.0, log)
        assert outcome.ok and not outcome.instance_lost, outcome.error
        answer = value(outcome.result)
        assert isinstance(answer, dict)
        assert answer["echo"] == [1, "é"]
        assert answer["pid"] == instance.pid
        assert answer["request_id"] == "r1" and answer["attempt"] == "2"
        assert answer["timeout_ms"] == "10000"
        assert answer["control_path"] == "/invoke"
        assert answer["content_type"] == "application/octet-stream"
        assert outcome.usage.duration_ms > 0
        assert outcome.usage.cpu_ms is not None and outcome.usage.cpu_ms >= 0
        assert outcome.usage.max_memory_mb and outcome.usage.max_memory_mb > 1
        lines = log.read_text().splitlines()
        assert re.fullmatch(f"{LINE_TIME} \\[PLATFORM\\] FC Invoke Start RequestId: r1", lines[0])
        assert re.fullmatch(f"{LINE_TIME} \\[PLATFORM\\] FC Invoke End RequestId: r1", lines[-1])
        assert {"r1 says hi", "r1 warns hi"} <= set(lines)
        assert instance.events_served == 1 and instance.state == "idle"


@on_uvloop
async def test_the_port_is_in_both_variables_and_the_server_is_reused(tmp_path: Path) -> None:
    async with running() as instance:
        pids = set()
        for n in range(20):
            outcome = await instance.invoke(f"r{n}", raw(n), 1, 10.0, tmp_path / f"{n}.log")
            answer = value(outcome.result)
            assert isinstance(answer, dict) and answer["echo"] == n
            pids.add(answer["pid"])
        assert pids == {instance.pid}
        assert answer["ports"] == [str(instance.port)] * 2
        low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
        assert 10000 <= instance.port < low  # never an outgoing connection's port
        assert instance.events_served == 20


@on_uvloop
async def test_cpu_time_is_the_servers_over_the_attempt(tmp_path: Path) -> None:
    async with running() as instance:
        spin = await instance.invoke("s", raw({"spin": 0.3}), 1, 10.0, tmp_path / "s.log")
        idle = await instance.invoke("i", raw({"sleep": 0.3}), 1, 10.0, tmp_path / "i.log")
        assert spin.usage.cpu_ms is not None and 280 <= spin.usage.cpu_ms < 1000
        assert idle.usage.cpu_ms is not None and idle.usage.cpu_ms < 100


@on_uvloop
async def test_a_body_that_is_not_json_is_kept_as_a_string(tmp_path: Path) -> None:
    async with running() as instance:
        outcome = await instance.invoke("r", raw({"text": "plain words"}), 1, 10.0, tmp_path / "l")
        assert outcome.ok and value(outcome.result) == "plain words"
        empty = await instance.invoke("e", raw({"text": ""}), 1, 10.0, tmp_path / "e")
        assert empty.ok and value(empty.result) is None


@on_uvloop
async def test_4xx_on_invoke_fails_the_attempt_and_keeps_the_instance(tmp_path: Path) -> None:
    async with running() as instance:
        event = {"status": 404, "body": "no such thing here"}
        outcome = await instance.invoke("r", raw(event), 1, 10.0, tmp_path / "r.log")
        assert not outcome.ok and not outcome.instance_lost
        assert outcome.error is not None and outcome.error.type == "HTTPError"
        assert outcome.error.code == 404
        assert outcome.error.message == "POST /invoke answered 404 Not Found: no such thing here"
        assert (await instance.invoke("r2", raw(1), 1, 10.0, tmp_path / "r2.log")).ok


@on_uvloop
async def test_5xx_on_invoke_loses_the_instance(tmp_path: Path) -> None:
    async with running() as instance:
        event = {"status": 503, "body": "overloaded"}
        outcome = await instance.invoke("r", raw(event), 1, 10.0, tmp_path / "r.log")
        assert not outcome.ok and outcome.instance_lost
        assert outcome.error is not None and outcome.error.code == 503
        assert "503 Service Unavailable: overloaded" in outcome.error.message


@on_uvloop
async def test_a_server_dying_mid_event_fails_it_as_fc_says(tmp_path: Path) -> None:
    instance = HttpInstance(function(), supervisor=Supervisor())
    await instance.start()
    try:
        outcome = await instance.invoke("r", raw({"exit": 7}), 1, 10.0, tmp_path / "r.log")
        assert not outcome.ok and outcome.instance_lost
        assert outcome.error is not None and outcome.error.type == "ProcessExited"
        assert re.fullmatch(
            r"Process exited unexpectedly before completing request "
            r"\(duration: [\d.]+ms, maxMemoryUsage: [\d.]+MB\)",
            outcome.error.message,
        )
        assert outcome.usage.exit_code == 7
        assert instance.state == "dead"
        assert "exiting" in (tmp_path / "r.log").read_text()
    finally:
        await instance.stop()


@on_uvloop
async def test_timeout_kills_the_server(tmp_path: Path) -> None:
    async with running() as instance:
        pid = instance.pid
        assert pid is not None
        began = time.monotonic()
        outcome = await instance.invoke("r", raw({"sleep": 30}), 1, 0.5, tmp_path / "r.log")
        print(f"\na 0.5 s timeout returned after {time.monotonic() - began:.2f} s")
        assert not outcome.ok and outcome.instance_lost
        assert outcome.error is not None and outcome.error.type == "FunctionTimeout"
        assert outcome.error.message == "Function timed out after 0.50 seconds"
        assert gone(pid)


@on_uvloop
async def test_memory_over_the_limit_kills_the_server(tmp_path: Path) -> None:
    async with running(memory_mb=60) as instance:
        began = time.monotonic()
        outcome = await instance.invoke("r", raw({"hog": 200}), 1, 30.0, tmp_path / "r.log")
        print(f"\nthe memory hog was killed after {time.monotonic() - began:.2f} s")
        assert not outcome.ok and outcome.instance_lost
        assert outcome.error is not None and outcome.error.type == "MemoryLimitExceeded"
        assert outcome.error.message.endswith("the limit is 60MB")
        assert instance.state == "dead"


@on_uvloop
async def test_concurrency_serves_events_side_by_side(tmp_path: Path) -> None:
    async with running(concurrency=3) as instance:
        began = time.monotonic()
        outcomes = await asyncio.gather(
            *(
                instance.invoke(
                    f"c{n}", raw({"sleep": 1, "print": n}), 1, 10.0, tmp_path / f"c{n}.log"
                )
                for n in range(3)
            )
        )
        took = time.monotonic() - began
        assert all(o.ok for o in outcomes)
        # side by side: the server's output goes to the oldest call in flight, so one log holds
        # what the server printed for all three before answering the first
        logs = [(tmp_path / f"c{n}.log").read_text() for n in range(3)]
        assert any(all(f"c{n} says {n}" in log for n in range(3)) for log in logs), logs
        print(f"\nthree 1 s events on one instance took {took:.2f} s")
        assert instance.state == "idle" and instance.events_served == 3
        over = [
            instance.invoke(f"d{n}", raw({"sleep": 0.3}), 1, 10.0, tmp_path / f"d{n}.log")
            for n in range(4)
        ]
        results = await asyncio.gather(*over)
        refused = [o for o in results if not o.ok]
        assert len(refused) == 1 and not refused[0].instance_lost
        assert refused[0].error is not None and refused[0].error.type == "InstanceUnavailable"


@on_uvloop
async def test_hooks_call_their_paths_and_4xx_fails_only_the_hook(tmp_path: Path) -> None:
    lifecycle = LifecycleConfig(initializer=True, pre_freeze=True, pre_stop=True)
    env = {"STATUS_PRE_FREEZE": "409", "HOOK_LOG": str(tmp_path / "hooks")}
    async with running(lifecycle=lifecycle, environment=env) as instance:
        log = tmp_path / "init.log"
        init = await instance.run_hook("initializer", request_id="r0", log_path=log)
        assert init.ok and init.duration_ms > 0 and init.hook == "initializer"
        text = log.read_text()
        assert "[PLATFORM] FC Initialize Start RequestId: r0" in text
        assert "hook initialize for r0" in text
        assert text.rstrip().endswith("[PLATFORM] FC Initialize End RequestId: r0")
        freeze = await instance.run_hook("pre_freeze", request_id="f1")
        assert not freeze.ok and not freeze.instance_lost
        assert freeze.error is not None and freeze.error.code == 409
        assert (
            freeze.error.message == "GET /pre-freeze answered 409 Conflict: pre_freeze answered 409"
        )
        outcome = await instance.invoke("r1", raw(1), 1, 10.0, tmp_path / "r1.log")
        answer = value(outcome.result)
        assert isinstance(answer, dict) and answer["initialized"] == 1
        stop = await instance.run_hook("pre_stop", request_id="r1")
        assert stop.ok
        hooks = (tmp_path / "hooks").read_text().split()
        assert hooks[::2] == ["initialize", "pre_freeze", "pre_stop"]


@on_uvloop
async def test_5xx_hook_loses_the_instance_and_unset_hooks_do_nothing(tmp_path: Path) -> None:
    lifecycle = LifecycleConfig(initializer=True)
    env = {"STATUS_INITIALIZE": "500", "HOOK_LOG": str(tmp_path / "hooks")}
    async with running(lifecycle=lifecycle, environment=env) as instance:
        assert (await instance.run_hook("pre_stop", request_id="s")).ok  # not turned on: no call
        init = await instance.run_hook("initializer", request_id="r")
        assert not init.ok and init.instance_lost
        assert init.error is not None and init.error.code == 500
        assert (tmp_path / "hooks").read_text().split()[::2] == ["initialize"]


@on_uvloop
async def test_a_server_that_exits_at_start_says_why(tmp_path: Path) -> None:
    instance = HttpInstance(
        function(environment={"FAIL_AT_START": "no database"}), supervisor=Supervisor()
    )
    with pytest.raises(InstanceStartError) as caught:
        await instance.start()
    assert caught.value.error.type == "ProcessExited"
    assert caught.value.error.message == (
        "the server exited before it listened (exit code 3): cannot start: no database"
    )
    assert instance.state == "dead"


@on_uvloop
async def test_a_server_that_never_listens_times_out(tmp_path: Path) -> None:
    instance = HttpInstance(
        function(environment={"START_DELAY": "30"}), start_timeout=0.5, supervisor=Supervisor()
    )
    began = time.monotonic()
    with pytest.raises(InstanceStartError) as caught:
        await instance.start()
    print(f"\na 0.5 s start timeout returned after {time.monotonic() - began:.2f} s")
    assert caught.value.error.type == "StartTimeout"
    assert instance.pid is not None and gone(instance.pid)


@on_uvloop
async def test_a_missing_command_is_a_start_error(tmp_path: Path) -> None:
    instance = HttpInstance(function(command=["./nowhere"]), supervisor=Supervisor())
    with pytest.raises(InstanceStartError) as caught:
        await instance.start()
    assert caught.value.error.type == "SpawnError"
    assert "'./nowhere' is not a file in" in caught.value.error.message


# -- through the daemon ---------------------------------------------------------------------------


def http_function(spool: Path, name: str, extra: str = "") -> None:
    """Write an http function definition served by the test server."""
    command = json.dumps(SERVER)
    (spool / "functions" / f"{name}.toml").write_text(
        f'runtime = "http"\ncode = {json.dumps(str(CODE))}\ncommand = {command}\n'
        f"timeout = 10\n{extra}"
    )


def ended(spool: Path, count: int, function: str) -> list[dict] | None:
    found = events(spool, "--function", function, "--status", "Succeeded,Failed,Invalid")
    return found if len(found) >= count else None


def test_through_the_daemon_with_hooks(spool: Path, placement, tmp_path: Path) -> None:
    hooks = tmp_path / "hooks"
    http_function(
        spool,
        "custom",
        "max_instances = 1\nfreeze = false\n"
        f"environment = {{ HOOK_LOG = {json.dumps(str(hooks))} }}\n"
        "[async]\nmax_retries = 1\nbackoff = 0.1\n"
        "[lifecycle]\ninitializer = true\npre_stop = true\n",
    )
    d = placement.start("custom")
    for n in range(3):
        drop(spool, "custom", f"{n}.json", {"echo": n, "print": f"event {n}"})
    done = wait_for(lambda: ended(spool, 3, "custom"), what="three http events")
    assert {e["state"] for e in done} == {"Succeeded"}
    results = [fnspool_json(spool, "events", "get", e["id"]) for e in done]
    pids = {r["result"]["pid"] for r in results}
    assert len(pids) == 1, "one instance served every event"
    assert {r["result"]["initialized"] for r in results} == {1}
    assert set.union(*(placement.nodes_of(r) for r in results)) <= placement.where
    first = min(results, key=lambda r: r["id"])
    log = Path(first["log_path"]).read_text()
    assert "[PLATFORM] FC Initialize Start RequestId:" in log
    assert f"{first['id']} says event" in log

    # a 5xx loses the instance: the retry runs on a new one
    drop(spool, "custom", "boom.json", {"status": 500, "body": "broken"})
    (failed,) = wait_for(
        lambda: events(spool, "--function", "custom", "--status", "Failed"), what="the 5xx event"
    )
    full = fnspool_json(spool, "events", "get", failed["id"])
    assert full["error"]["message"] == "POST /invoke answered 500 Internal Server Error: broken"
    assert full["attempts"] == 2
    drop(spool, "custom", "after.json", {"echo": "after"})
    wait_for(lambda: ended(spool, 5, "custom"), what="an event after the 5xx")
    (pid,) = pids
    assert gone(pid), "the instance that answered 5xx was discarded"

    assert d.stop() == 0
    kinds = [line.split()[0] for line in hooks.read_text().splitlines()]
    assert kinds.count("initialize") == 3  # the first instance, and one after each 5xx
    assert kinds[-1] == "pre_stop", "PreStop ran at shutdown"


def hook_runs(spool: Path, function: str) -> list[HookRun]:
    return [h for h in journal_records(spool, HookRun) if h.function == function]


def initializer_runs(spool: Path, function: str) -> list[HookRun]:
    return [
        h for h in journal_records(spool, HookRun)
        if h.function == function and h.hook == "initializer"
    ]  # fmt: skip


def test_an_initializer_answering_4xx_is_called_again_on_the_same_instance(
    spool: Path, daemon, tmp_path: Path
) -> None:
    plan, hooks = tmp_path / "plan", tmp_path / "hooks"
    plan.write_text("409\n404\n")  # then 200
    env = f"environment = {{ INIT_PLAN = {json.dumps(str(plan))}, HOOK_LOG = {json.dumps(str(hooks))} }}\n"  # noqa: E501
    http_function(spool, "shy", env + "[lifecycle]\ninitializer = true\n")
    daemon.start()
    drop(spool, "shy", "a.json", {"echo": 1})
    (event,) = wait_for(lambda: ended(spool, 1, "shy"), what="the event to end")
    done = fnspool_json(spool, "events", "get", event["id"])
    assert done["state"] == "Succeeded" and done["result"]["initialized"] == 1
    calls = [line.split() for line in hooks.read_text().splitlines()]
    assert [c[0] for c in calls] == ["initialize"] * 3
    assert len({c[1] for c in calls}) == 1, "every call went to the same server"
    runs = wait_for(
        lambda: len(initializer_runs(spool, "shy")) == 3 and initializer_runs(spool, "shy")
    )
    assert [r.ok for r in runs] == [False, False, True]
    assert len({r.instance for r in runs}) == 1
    assert [r.error.code for r in runs[:2] if r.error] == [409, 404]
    log = Path(done["log_path"]).read_text()
    assert log.count("FC Initialize Start RequestId: " + event["id"]) == 3


def test_an_initializer_answering_5xx_or_dying_replaces_the_instance(
    spool: Path, daemon, tmp_path: Path
) -> None:
    plan, hooks = tmp_path / "plan", tmp_path / "hooks"
    plan.write_text("500\nexit\n")  # the first server answers 500, the second dies, then 200
    env = f"environment = {{ INIT_PLAN = {json.dumps(str(plan))}, HOOK_LOG = {json.dumps(str(hooks))} }}\n"  # noqa: E501
    http_function(spool, "phoenix", env + "[lifecycle]\ninitializer = true\n")
    daemon.start()
    drop(spool, "phoenix", "a.json", {"echo": 1})
    (event,) = wait_for(lambda: ended(spool, 1, "phoenix"), what="the event to end")
    done = fnspool_json(spool, "events", "get", event["id"])
    assert done["state"] == "Succeeded", done["error"]
    calls = [line.split() for line in hooks.read_text().splitlines()]
    assert [c[0] for c in calls] == ["initialize", "initialize-exit", "initialize"]
    assert len({c[1] for c in calls}) == 3, "a new server after the 5xx and after the crash"
    assert all(gone(int(c[1])) for c in calls[:2])
    assert done["result"]["pid"] == int(calls[2][1])
    runs = wait_for(
        lambda: len(initializer_runs(spool, "phoenix")) == 3 and initializer_runs(spool, "phoenix")
    )
    assert [r.ok for r in runs] == [False, False, True]
    assert len({r.instance for r in runs}) == 3


def test_the_event_is_invalid_only_when_the_bounded_tries_are_spent(
    spool: Path, daemon, tmp_path: Path
) -> None:
    for name, status in (("webinit", 403), ("broken", 503)):
        env = f'environment = {{ STATUS_INITIALIZE = "{status}" }}\n'
        http_function(spool, name, env + "[lifecycle]\ninitializer = true\n")
    daemon.start()
    drop(spool, "webinit", "one.json", {"echo": 1})
    drop(spool, "broken", "two.json", {"echo": 2})
    (refused,) = wait_for(lambda: ended(spool, 1, "webinit"), what="the 4xx event to end")
    assert refused["state"] == "Invalid"
    message = refused["error"]["message"]
    assert message.startswith("POST /initialize answered 403 Forbidden")
    assert message.endswith("(3 calls)")
    runs = initializer_runs(spool, "webinit")
    assert len(runs) == 3 and len({r.instance for r in runs}) == 1
    (lost,) = wait_for(lambda: ended(spool, 1, "broken"), what="the 5xx event to end")
    assert lost["state"] == "Invalid"
    assert lost["error"]["message"].startswith("POST /initialize answered 503")
    assert lost["error"]["message"].endswith("(3 instances)")
    runs = initializer_runs(spool, "broken")
    assert len(runs) == 3 and len({r.instance for r in runs}) == 3
    record = spool / "destinations" / "dead-letter" / f"{lost['id']}.json"
    letter = json.loads(wait_for(lambda: record.exists() and record.read_text()))
    assert letter["requestContext"]["condition"] == "InvalidInvocation"


def test_frozen_between_events_and_stopped_when_idle(
    spool: Path, placement, tmp_path: Path
) -> None:
    hooks = tmp_path / "hooks"
    http_function(
        spool,
        "sleepy",
        "max_instances = 1\nidle_timeout = 3\n"
        f"environment = {{ HOOK_LOG = {json.dumps(str(hooks))} }}\n"
        "[lifecycle]\npre_freeze = true\npre_stop = true\n",
    )
    placement.start("sleepy")
    pids = set()
    for n in range(2):
        drop(spool, "sleepy", f"{n}.json", {"echo": n})
        done = wait_for(lambda n=n: ended(spool, n + 1, "sleepy"), what=f"event {n}")
        assert {e["state"] for e in done} == {"Succeeded"}
        pid = fnspool_json(spool, "events", "get", done[0]["id"])["result"]["pid"]
        pids.add(pid)
        # PreFreeze answered, then the server is stopped (T) until the next event thaws it
        wait_for(lambda pid=pid: process_state(pid) == "T", what="the server to be frozen")
    assert len(pids) == 1
    (pid,) = pids
    wait_for(lambda: gone(pid), what="the idle server to be stopped")
    kinds = [line.split()[0] for line in hooks.read_text().splitlines()]
    assert kinds == ["pre_freeze", "pre_freeze", "pre_stop"]
    # no event: each call has its own invocation id, sent as x-fc-request-id and in the log lines
    runs = wait_for(
        lambda: len(hook_runs(spool, "sleepy")) == 3 and hook_runs(spool, "sleepy"),
        what="the hook records",
    )
    ids = [h.invocation_id for h in runs]
    assert all(ids) and len(set(ids)) == 3 and all(h.request_id is None for h in runs)
    log = (spool / "logs" / "sleepy" / f"{runs[0].instance}.log").read_text()
    for h in runs:
        label = HOOK_LABELS[h.hook]
        assert f"[PLATFORM] {label} Start RequestId: {h.invocation_id}\n" in log
        assert f"[PLATFORM] {label} End RequestId: {h.invocation_id}\n" in log
        assert f"hook {h.hook} for {h.invocation_id}\n" in log
    assert "RequestId: \n" not in log


def test_the_examples_run(spool: Path, daemon) -> None:
    daemon.start()
    web = json.loads(
        fnspool(spool, "invoke", "web", "--payload", '{"name": "Ada"}', "--wait", "--json").stdout
    )
    assert web["state"] == "Succeeded", web
    assert web["result"] == {"greeting": "Hello, Ada!", "served": 1}
    log = Path(web["log_path"]).read_text()
    assert "initialized for" in log and f"{web['id']}: greeting Ada" in log
    shout = json.loads(
        fnspool(spool, "invoke", "shout", "--payload", '{"say": "hi"}', "--wait", "--json").stdout
    )
    assert shout["state"] == "Succeeded" and shout["result"] == {"SAY": "HI"}
    assert f"shouted for {shout['id']}" in Path(shout["log_path"]).read_text()


def test_a_forced_stop_runs_prestop_and_kills_the_server(
    spool: Path, placement, tmp_path: Path
) -> None:
    hooks = tmp_path / "hooks"
    http_function(
        spool,
        "slow",
        f"environment = {{ HOOK_LOG = {json.dumps(str(hooks))} }}\n[lifecycle]\npre_stop = true\n",
    )
    placement.start("slow")
    drop(spool, "slow", "a.json", {"sleep": 30})
    (event,) = wait_for(lambda: events(spool, "--status", "Running"), what="the event to run")
    log = spool / "logs" / "slow" / f"{event['id']}.log"
    wait_for(lambda: log.exists(), what="the event's log")
    fnspool(spool, "events", "stop", event["id"])
    (stopped,) = wait_for(lambda: events(spool, "--status", "Stopped"), what="the stop")
    assert stopped["error"]["type"] == "Stopped"
    wait_for(lambda: hooks.exists(), what="PreStop")
    kind, pid = hooks.read_text().split()
    assert kind == "pre_stop"
    wait_for(lambda: gone(int(pid)), what="the server to be killed")
    text = log.read_text()
    assert "[PLATFORM] FC PreStop Start RequestId: " + event["id"] in text


def test_one_server_serves_concurrency_events_at_once(spool: Path, placement) -> None:
    http_function(spool, "wide", "concurrency = 3\nmax_instances = 1\n")
    placement.start("wide")
    for n in range(3):
        drop(spool, "wide", f"{n}.json", {"sleep": 1, "echo": n})
    done = wait_for(lambda: ended(spool, 3, "wide"), what="three concurrent events")
    full = [fnspool_json(spool, "events", "get", e["id"]) for e in done]
    assert {e["state"] for e in full} == {"Succeeded"}
    assert len({e["result"]["pid"] for e in full}) == 1
    assert set.union(*(placement.nodes_of(e) for e in full)) <= placement.where
    starts = sorted(e["started_at"] for e in full)
    ends = sorted(e["ended_at"] for e in full)
    assert starts[-1] < ends[0], "all three ran side by side on one server"


def test_instances_die_with_a_killed_daemon(spool: Path, daemon) -> None:
    http_function(spool, "orphan", "")
    (spool / "functions" / "nap.toml").write_text(
        'runtime = "exec"\ncode = "."\ncommand = ["sleep", "60"]\ntimeout = 120\n'
    )
    d = daemon.start()
    drop(spool, "orphan", "a.json", {"echo": 1})
    (done,) = wait_for(lambda: ended(spool, 1, "orphan"), what="the http event")
    server = fnspool_json(spool, "events", "get", done["id"])["result"]["pid"]
    wait_for(lambda: process_state(server) == "T", what="the server to be frozen")
    drop(spool, "nap", "b.json", {})

    def napping() -> int | None:
        status = json.loads((spool / "run" / "status.json").read_text())
        pids = [i["pid"] for i in status["instances"].get("nap", []) if i["pid"]]
        return pids[0] if pids and process_state(pids[0]) == "S" else None

    sleeper = wait_for(napping, what="the exec attempt to run")
    d.kill()  # SIGKILL: no PreStop, no cleanup: the kernel's parent-death signal does it
    wait_for(lambda: gone(server), what="the frozen server to die with the daemon")
    wait_for(lambda: gone(sleeper), what="the exec attempt to die with the daemon")
