"""http functions on a fixed port (`port`, `invoke_path`): each instance in a network namespace
of its own where one can be made, else one at a time on the host's port; and FC's headers."""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import drop, events, fnspool, fnspool_json, wait_for
from runtime_helpers import on_uvloop, raw, value
from test_http_runtime import function

from daemon import isolation
from daemon.functions import LifecycleConfig, load_function
from daemon.runtimes.base import InstanceStartError
from daemon.runtimes.http import HttpInstance
from daemon.supervise.supervisor import Supervisor

needs_netns = pytest.mark.skipif(
    bool(isolation.unavailable()), reason=f"no network namespace: {isolation.unavailable()}"
)


@contextlib.contextmanager
def listening_on_host() -> Iterator[int]:
    """A port of the host another process (this test) listens on."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("0.0.0.0", 0))
        s.listen()
        yield s.getsockname()[1]


def free_host_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("0.0.0.0", 0))
        return int(s.getsockname()[1])


@needs_netns
@on_uvloop
async def test_instances_on_one_fixed_port_run_at_once_in_namespaces(tmp_path: Path) -> None:
    with listening_on_host() as port:  # taken on the host: the servers must not need it
        instances = [HttpInstance(function(port=port), supervisor=Supervisor()) for _ in range(2)]
        try:
            await asyncio.gather(*(i.start() for i in instances))
            calls = [
                i.invoke(f"r{n}", raw({"sleep": 0.3}), 1, 20.0, tmp_path / f"{n}.log")
                for n, i in enumerate(instances)
            ]
            outcomes = await asyncio.gather(*calls)
        finally:
            await asyncio.gather(*(i.stop() for i in instances))
    answers = [value(o.result) for o in outcomes]
    assert all(o.ok for o in outcomes), [o.error for o in outcomes]
    assert [a["ports"] for a in answers] == [[str(port)] * 2] * 2  # type: ignore[index]
    assert {a["pid"] for a in answers} == {i.pid for i in instances}  # type: ignore[index]
    assert len({i.pid for i in instances}) == 2


@on_uvloop
async def test_without_a_namespace_the_hosts_port_is_used_only_when_free(tmp_path: Path) -> None:
    alone = "port on the host, one instance at a time"
    with listening_on_host() as port:
        instance = HttpInstance(function(port=port, one_at_a_time=alone), supervisor=Supervisor())
        with pytest.raises(InstanceStartError) as caught:
            await instance.start()
        assert f"port {port} is in use on this host by another process" in str(
            caught.value.error.message
        )
    port = free_host_port()
    instance = HttpInstance(function(port=port, one_at_a_time=alone), supervisor=Supervisor())
    await instance.start()
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=10):
            pass  # the server listens on the host's port itself
        second = HttpInstance(function(port=port, one_at_a_time=alone), supervisor=Supervisor())
        with pytest.raises(InstanceStartError, match="another instance of this daemon"):
            await second.start()
        outcome = await instance.invoke("r", raw(1), 1, 20.0, tmp_path / "r.log")
        assert outcome.ok and value(outcome.result)["ports"] == [str(port)] * 2  # type: ignore[index]
    finally:
        await instance.stop()


@on_uvloop
async def test_events_go_to_the_invoke_path_with_fcs_headers(tmp_path: Path) -> None:
    hooks = LifecycleConfig(initializer="index.init", pre_stop=True, initializer_timeout=7)
    instance = HttpInstance(
        function(invoke_path="/event-invoke", lifecycle=hooks, timeout=42), supervisor=Supervisor()
    )
    await instance.start()
    try:
        outcome = await instance.invoke("r", raw(1), 1, 20.0, tmp_path / "r.log")
    finally:
        await instance.stop()
    # tests/functions/http_runtime/server.py answers 404 on any path but /invoke
    assert outcome.error is not None
    assert outcome.error.message == "POST /event-invoke answered 404 Not Found: no such path"
    instance = HttpInstance(function(lifecycle=hooks, timeout=42), supervisor=Supervisor())
    await instance.start()
    try:
        outcome = await instance.invoke("r", raw(1), 1, 20.0, tmp_path / "r.log")
    finally:
        await instance.stop()
    headers = value(outcome.result)["fc_headers"]  # type: ignore[index]
    assert headers["x-fc-function-initializer"] == "index.init"
    assert headers["x-fc-initialization-timeout"] == "7"
    assert headers["x-fc-instance-lifecycle-pre-stop-handler"] == "true"
    assert "x-fc-instance-lifecycle-pre-freeze-handler" not in headers  # not turned on
    assert headers["x-fc-qualifier"] == headers["x-fc-version-id"] == "LATEST"
    assert headers["x-fc-function-timeout"] == "42"


def test_port_and_invoke_path_are_checked(tmp_path: Path) -> None:
    path = tmp_path / "f.toml"
    for body, error in (
        ('command = ["cat"]\nruntime = "exec"\nport = 9000\n', "`port` is for the http runtime"),
        ('command = ["s"]\nruntime = "http"\nport = 70000\n', "`port` must be from 1 to 65535"),
        ('command = ["s"]\nruntime = "http"\ninvoke_path = "x"\n', "must be a path starting"),
        ('command = ["s"]\nruntime = "http"\none_at_a_time = "x"\n', "unknown field"),
    ):
        path.write_text(body)
        with pytest.raises(ValueError, match=error):
            load_function(path)


def test_without_namespaces_one_at_a_time_on_the_hosts_port(
    spool: Path, daemon, monkeypatch: pytest.MonkeyPatch
) -> None:
    with listening_on_host() as held:
        one_at_a_time_on_the_host(spool, daemon, monkeypatch, held)


def one_at_a_time_on_the_host(
    spool: Path, daemon, monkeypatch: pytest.MonkeyPatch, held: int
) -> None:
    port = free_host_port()
    code = Path(__file__).parent / "functions" / "http_runtime"
    for name, on in (("fixed", port), ("held", held)):
        (spool / "functions" / f"{name}.toml").write_text(
            f'runtime = "http"\ncode = "{code}"\ncommand = ["python3", "-u", "server.py"]\n'
            f"port = {on}\nmax_instances = 3\n[async]\nmax_retries = 0\n"
        )
    monkeypatch.setenv(isolation.NO_NETNS_TEST_ONLY, "1")
    d = daemon.start()
    drop(spool, "fixed", "a.json", {"echo": 1})
    drop(spool, "held", "b.json", {"echo": 1})
    done = wait_for(lambda: events(spool, "--status", "Succeeded"), 60, "the event")
    failed = wait_for(
        lambda: [
            e for e in events(spool, "--function", "held") if e["state"] in ("Failed", "Invalid")
        ],
        60,
        "the other",
    )
    error = fnspool_json(spool, "events", "get", failed[0]["id"])["error"]
    assert f"port {held} is in use on this host by another process" in error["message"], error
    assert fnspool_json(spool, "events", "get", done[0]["id"])["result"]["ports"] == [str(port)] * 2
    row = next(r for r in fnspool_json(spool, "functions", "list") if r["name"] == "fixed")
    assert row["max_instances"] == 1
    assert row["one_at_a_time"].startswith(f"port {port} on the host, one instance at a time")
    text = fnspool(spool, "functions", "list").stdout
    assert f"port {port} on the host, one instance at a time: no network namespace" in text
    assert "function fixed: port" in d.log_text()
