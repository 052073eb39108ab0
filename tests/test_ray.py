"""Functions placed on Ray (`[placement] engine = "ray"`), through the real daemon and a real Ray
cluster of three nodes on this machine: a head that takes no instance, and two workers, each with
a custom resource of its own to pin a function to it. Small on purpose (the machine is shared):
one cluster for the module, 80 MB of object store per node."""

from __future__ import annotations

import json
import re
import shutil
import signal
from collections.abc import Iterator
from pathlib import Path
from typing import NamedTuple

import pytest
from conftest import (
    REPO,
    drop,
    events,
    fnspool,
    fnspool_json,
    gone,
    journal_records,
    process_state,
    wait_for,
)

from daemon.model import HookRun, State, Transition

pytest.importorskip("ray", reason="Ray is not installed: pip install 'fnspool[ray]'")

CODE = REPO / "tests" / "functions" / "ray_runtime"
STORE = 80 << 20  # bytes of object store per node: the least Ray takes


class Nodes(NamedTuple):
    """The cluster's address and the ids of its two worker nodes."""

    address: str
    a: str  # has the resource node_a
    b: str  # has the resource node_b


@pytest.fixture(scope="module")
def cluster() -> Iterator[Nodes]:
    """A head and two worker nodes, shut down after the module's tests."""
    from ray.cluster_utils import Cluster

    ray_cluster = Cluster()
    try:
        ray_cluster.add_node(num_cpus=0, object_store_memory=STORE, include_dashboard=False)
        a = ray_cluster.add_node(num_cpus=2, resources={"node_a": 4}, object_store_memory=STORE)
        b = ray_cluster.add_node(num_cpus=2, resources={"node_b": 4}, object_store_memory=STORE)
        yield Nodes(ray_cluster.address, a.node_id, b.node_id)
    finally:
        ray_cluster.shutdown()


def on_ray(spool: Path, name: str, body: str, resource: str = "", code: str = "") -> None:
    """Define `name` placed on Ray (pinned to the node with `resource`, if given)."""
    if code == "":
        shutil.copytree(CODE, spool / "functions" / name)
    else:
        body = f'code = "{code}"\n{body}'
    pin = f"resources = {{ {resource} = 1 }}\n" if resource else ""
    table = f'[placement]\nengine = "ray"\nnum_cpus = 0.5\n{pin}'
    (spool / "functions" / f"{name}.toml").write_text(f"memory_mb = 128\n{body}\n{table}")


def place_example(spool: Path, name: str, resource: str = "") -> None:
    """Put an existing definition on Ray, unchanged otherwise."""
    path = spool / "functions" / f"{name}.toml"
    pin = f"resources = {{ {resource} = 1 }}\n" if resource else ""
    path.write_text(f'{path.read_text()}\n[placement]\nengine = "ray"\nnum_cpus = 0.5\n{pin}')


def event(spool: Path, request_id: str) -> dict:
    return fnspool_json(spool, "events", "get", request_id)


def invoked(spool: Path, function: str, payload: str = "{}") -> dict:
    """Invoke and wait for the end; the event."""
    args = ("invoke", function, "--payload", payload, "--wait", "--json")
    out = fnspool(spool, *args, check=False, timeout=180)
    return event(spool, json.loads(out.stdout)["id"])


def running(spool: Path, function: str, payload: object) -> dict:
    """Drop an event and wait until its handler has printed its first line."""
    drop(spool, function, f"{function}.json", payload)
    found = wait_for(lambda: events(spool, "--function", function), 120, "the event")
    request_id = found[0]["id"]
    path = spool / "logs" / function / f"{request_id}.log"
    wait_for(lambda: path.exists() and "slow start" in path.read_text(), 120, "the handler")
    return event(spool, request_id)


def ran_on(ev: dict) -> list[str]:
    """The node of each ended attempt of an event."""
    return [h["usage"]["node"] for h in ev["history"] if "usage" in h]


def test_a_function_placed_by_resource_runs_on_that_node(spool, daemon, cluster):
    init = '[lifecycle]\ninitializer = "index.init"'
    on_ray(spool, "on_b", f'handler = "index.where"\n{init}', "node_b")
    on_ray(spool, "on_a", 'handler = "index.where"', "node_a")
    d = daemon.start("--ray-address", cluster.address)
    first, second = invoked(spool, "on_b", '{"n": 1}'), invoked(spool, "on_b", '{"n": 2}')
    assert (first["state"], second["state"]) == ("Succeeded", "Succeeded")
    assert ran_on(first) == ran_on(second) == [cluster.b]
    assert ran_on(invoked(spool, "on_a")) == [cluster.a]
    # the code folder was shipped: the handler runs in Ray's copy of it, not in the spool
    assert "_ray_pkg_" in second["result"]["cwd"]
    assert not second["result"]["cwd"].startswith(str(spool))
    # one instance, one Initializer, journaled; its lines in the first event's log
    assert second["result"]["inits"] == 1
    assert first["history"][2]["instance"] == second["history"][2]["instance"]
    inits = [h for h in journal_records(spool, HookRun) if h.function == "on_b"]
    assert [(h.hook, h.request_id, h.ok) for h in inits] == [("initializer", first["id"], True)]
    log = Path(first["log_path"]).read_text()
    lines = [re.sub(r"^\S+Z (?=\[PLATFORM\])", "", line) for line in log.splitlines()]
    assert lines == [
        f"[PLATFORM] FC Initialize Start RequestId: {first['id']}",
        f"initializing {first['id']}",
        f"[PLATFORM] FC Initialize End RequestId: {first['id']}",
        f"[PLATFORM] FC Invoke Start RequestId: {first['id']}",
        f"running {{'n': 1}} in {first['result']['cwd']}",
        f"[PLATFORM] FC Invoke End RequestId: {first['id']}",
    ], log
    shown = fnspool(spool, "events", "get", second["id"]).stdout
    assert f"on Ray node {cluster.b}" in shown
    # metrics.prom counts the attempts per node
    prom = spool / "run" / "metrics.prom"
    counted = [
        f'fnspool_node_attempts_total{{node="{node}",outcome="Succeeded"}} {n}'
        for node, n in ((cluster.a, 1), (cluster.b, 2))
    ]
    wait_for(lambda: all(c in prom.read_text() for c in counted), what="metrics.prom per node")
    assert d.stop() == 0


def test_a_failed_attempt_is_retried_on_ray(spool, daemon, cluster):
    body = 'handler = "index.flaky"\n[async]\nmax_retries = 3\nbackoff = 0.05'
    on_ray(spool, "flaky_ray", body)
    d = daemon.start("--ray-address", cluster.address)
    done = invoked(spool, "flaky_ray")
    assert done["state"] == "Succeeded" and done["attempts"] == 3
    assert done["result"] == {"attempt": 3}
    retried = [h for h in done["history"] if h["state"] == "Retrying"]
    assert [h["error"]["type"] for h in retried] == ["ConnectionError", "ConnectionError"]
    assert len(ran_on(done)) == 3 and set(ran_on(done)) <= {cluster.a, cluster.b}
    assert "attempt 3 speaks" in Path(done["log_path"]).read_text()
    assert d.stop() == 0


def test_a_timeout_on_ray_kills_the_handler_and_its_instance(spool, daemon, cluster):
    body = 'handler = "index.slow"\ntimeout = 1\n[async]\nmax_retries = 0'
    on_ray(spool, "late", body, "node_a")
    d = daemon.start("--ray-address", cluster.address)
    done = invoked(spool, "late", '{"sleep": 600}')
    assert done["state"] == "Failed"
    assert done["error"]["type"] == "FunctionTimeout"
    assert done["error"]["message"] == "Function timed out after 1.00 seconds"
    assert ran_on(done) == [cluster.a]
    assert "slow start" in Path(done["log_path"]).read_text()
    again = invoked(spool, "late", '{"sleep": 600}')  # on a new instance: the old one was lost
    assert again["history"][2]["instance"] != done["history"][2]["instance"]
    assert d.stop() == 0


def test_a_forced_stop_on_ray_runs_prestop_then_kills(spool, daemon, cluster):
    body = 'handler = "index.slow"\n[async]\nmax_retries = 0\n'
    body += '[lifecycle]\npre_stop = "index.pre_stop"'
    on_ray(spool, "held", body, "node_b")
    d = daemon.start("--ray-address", cluster.address)
    ev = running(spool, "held", {"sleep": 600})
    pid = wait_for(lambda: _instance_pid(spool, "held"), what="the instance in status")
    fnspool(spool, "events", "stop", ev["id"], "--wait", timeout=120)
    done = event(spool, ev["id"])
    assert [h["state"] for h in done["history"]][-2:] == ["Stopping", "Stopped"]
    assert done["error"]["type"] == "Stopped"
    assert ran_on(done) == [cluster.b]
    hooks = [h for h in journal_records(spool, HookRun) if h.hook == "pre_stop"]
    assert [(h.request_id, h.ok) for h in hooks] == [(ev["id"], True)]
    log = Path(done["log_path"]).read_text()
    assert f"FC PreStop Start RequestId: {ev['id']}" in log and "pre-stop: flushing" in log
    wait_for(lambda: gone(pid), what="the handler's process on the node to be killed")
    assert d.stop() == 0


def test_a_graceful_stop_on_ray_reaches_the_handler(spool, daemon, cluster):
    place_example(spool, "graceful", "node_a")  # SCF's sample: returns "END" on SIGTERM
    d = daemon.start("--ray-address", cluster.address)
    drop(spool, "graceful", "g.json", {})
    found = wait_for(lambda: events(spool, "--function", "graceful"), 120, "the event")
    request_id = found[0]["id"]
    path = spool / "logs" / "graceful" / f"{request_id}.log"
    wait_for(lambda: path.exists() and "False" in path.read_text(), 120, "the handler's loop")
    fnspool(spool, "events", "stop", request_id, "--graceful", "--wait", timeout=120)
    done = event(spool, request_id)
    assert done["state"] == "Stopped" and done["result"] == "END"
    assert ran_on(done) == [cluster.a]
    log = path.read_text()
    assert "[PLATFORM] Signal received successfully." in log
    assert "do something before shutdown." in log and "Graceful shutdown." in log
    assert d.stop() == 0


def test_a_graceful_stop_on_ray_of_a_handler_dying_of_sigterm_is_439(spool, daemon, cluster):
    on_ray(spool, "plain", 'handler = "index.slow"\n[async]\nmax_retries = 0', "node_b")
    d = daemon.start("--ray-address", cluster.address)
    ev = running(spool, "plain", {"sleep": 600})
    fnspool(spool, "events", "stop", ev["id"], "--graceful", "--wait", timeout=120)
    done = event(spool, ev["id"])
    assert done["state"] == "Stopped"
    assert done["error"] == {
        "type": "UserProcessExit",
        "message": "User process exit when running",
        "code": 439,
    }
    assert done["history"][-1]["usage"]["signal"] == signal.SIGTERM
    assert done["history"][-1]["usage"]["node"] == cluster.b
    assert "[PLATFORM] Signal received successfully." in Path(done["log_path"]).read_text()
    assert d.stop() == 0


def test_an_idle_instance_on_ray_is_prefrozen_then_frozen_and_thawed(spool, daemon, cluster):
    place_example(spool, "lifecycle", "node_b")  # Initializer, PreFreeze, PreStop, freeze
    d = daemon.start("--ray-address", cluster.address)
    pids = set()
    for n in range(2):
        done = invoked(spool, "lifecycle", f'{{"n": {n}}}')
        assert done["state"] == "Succeeded" and ran_on(done) == [cluster.b]
        pid = done["result"]["pid"]
        pids.add(pid)
        # idle now: PreFreeze ran on the node, then the process is stopped (T) until its next event
        wait_for(lambda pid=pid: process_state(pid) == "T", 60, "the instance to be frozen")
        wait_for(lambda: _instance_states(spool, "lifecycle") == ["frozen"], 60, "frozen")
    assert len(pids) == 1
    wait_for(lambda: len(_hooks(spool, "lifecycle")) == 3, 60, "every hook record")
    hooks = _hooks(spool, "lifecycle")
    assert [h.hook for h in hooks] == ["initializer", "pre_freeze", "pre_freeze"]
    assert all(h.ok and h.instance.startswith("ray-lifecycle-") for h in hooks)
    assert all(h.request_id is None and h.invocation_id for h in hooks[1:])
    assert d.stop() == 0
    stops = [h for h in _hooks(spool, "lifecycle") if h.hook == "pre_stop"]
    assert [h.ok for h in stops] == [True]  # at shutdown
    assert gone(next(iter(pids)))


def test_going_over_memory_mb_on_ray_is_memory_limit_exceeded(spool, daemon, cluster):
    place_example(spool, "hog", "node_a")  # memory_mb = 100, the handler touches 300 MB
    d = daemon.start("--ray-address", cluster.address)
    done = invoked(spool, "hog", '{"hog_mb": 300}')
    assert done["state"] == "Failed"
    assert done["error"]["type"] == "MemoryLimitExceeded"
    assert "the limit is 100MB" in done["error"]["message"]
    usage = done["history"][-1]["usage"]
    assert (usage["signal"], usage["node"]) == (signal.SIGKILL, cluster.a)
    assert d.stop() == 0


def test_warm_instances_on_ray_and_recycling(spool, daemon, cluster):
    place_example(spool, "warm")  # min_instances 1, recycled after 2 events, no freeze
    d = daemon.start("--ray-address", cluster.address)
    warm = wait_for(lambda: _instances(spool, "warm"), 120, "a warm instance before any event")
    first_pid = warm[0]["pid"]
    pids = [invoked(spool, "warm")["result"]["pid"] for _ in range(3)]
    assert pids[0] == pids[1] == first_pid
    assert pids[2] != first_pid  # recycled after 2 events, PreStop first
    wait_for(lambda: gone(first_pid), 60, "the recycled instance's process to be gone")
    stops = [h for h in _hooks(spool, "warm") if h.hook == "pre_stop"]
    assert stops and stops[0].ok
    assert d.stop() == 0


def test_retry_with_a_delay_on_ray(spool, daemon, cluster):
    on_ray(spool, "later", 'handler = "index.later"')
    d = daemon.start("--ray-address", cluster.address)
    done = invoked(spool, "later")
    assert done["state"] == "Succeeded" and done["result"] == {"attempt": 2}
    [retrying] = [
        r
        for r in journal_records(spool, Transition)
        if r.id == done["id"] and r.state is State.RETRYING
    ]
    assert retrying.error.type == "Retry" and retrying.not_before is not None
    assert abs(retrying.not_before - retrying.at - 1.5) < 0.5  # the handler's delay, not backoff
    assert len(ran_on(done)) == 2
    assert d.stop() == 0


def test_exec_and_http_functions_on_ray(spool, daemon, cluster):
    place_example(spool, "shout", "node_a")  # exec: a process per event, its code folder shipped
    place_example(spool, "web", "node_b")  # http: a server per instance, its hooks over HTTP
    d = daemon.start("--ray-address", cluster.address)
    shouted = invoked(spool, "shout", '{"say": "hello"}')
    assert shouted["state"] == "Succeeded" and shouted["result"] == {"SAY": "HELLO"}
    assert ran_on(shouted) == [cluster.a]
    assert f"shouted for {shouted['id']}" in Path(shouted["log_path"]).read_text()
    served = [invoked(spool, "web", f'{{"name": "n{n}"}}') for n in range(2)]
    assert [e["state"] for e in served] == ["Succeeded", "Succeeded"]
    assert [ran_on(e) for e in served] == [[cluster.b], [cluster.b]]
    assert served[0]["history"][2]["instance"] == served[1]["history"][2]["instance"]
    log = Path(served[0]["log_path"]).read_text()
    assert "FC Initialize Start" in log and "FC Invoke End" in log
    hooks = [h.hook for h in _hooks(spool, "web")]
    assert hooks.count("initializer") == 1
    assert d.stop() == 0


def test_a_daemon_killed_with_9_leaves_nothing_on_ray_and_the_event_runs_again(
    spool, daemon, cluster
):
    on_ray(spool, "cut", 'handler = "index.slow"', "node_a")
    first = daemon.start("--ray-address", cluster.address)
    ev = running(spool, "cut", {"sleep": 600})
    pid = wait_for(lambda: _instance_pid(spool, "cut"), what="the instance in status")
    first.kill()
    # Ray ends the actors of a driver that died, and the handler's process dies with its actor
    wait_for(lambda: gone(pid), 120, "the handler's process on the node to end")
    second = daemon.start("--ray-address", cluster.address)
    wait_for(lambda: event(spool, ev["id"])["state"] == "Succeeded", 120, "the run again")
    done = event(spool, ev["id"])
    assert [(h["state"], h.get("reason")) for h in done["history"]][3:5] == [
        ("Retrying", "Interrupted"),
        ("Running", None),
    ]
    assert ran_on(done) == [cluster.a]
    assert second.stop() == 0


def test_a_starting_daemon_kills_the_actors_left_in_its_spools_namespace(spool, daemon, cluster):
    import ray

    from daemon.runtimes.ray_engine import namespace_of

    namespace = namespace_of(spool)
    ray.init(address=cluster.address, namespace=namespace, log_to_driver=False)
    try:
        leftover = ray.remote(type("Leftover", (), {"ping": lambda self: "pong"}))
        actor = leftover.options(name="ray-gone-0badcafe", lifetime="detached", num_cpus=0).remote()
        assert ray.get(actor.ping.remote(), timeout=120) == "pong"
        on_ray(spool, "any", 'handler = "index.where"')  # defined: the daemon connects at once
        d = daemon.start("--ray-address", cluster.address)
        wait_for(lambda: "ray-gone-0badcafe" not in ray.util.list_named_actors(), 120, "the sweep")
        assert "killed Ray actor ray-gone-0badcafe, left by a previous daemon" in d.log_text()
        assert d.stop() == 0
    finally:
        ray.shutdown()


def _instances(spool: Path, function: str) -> list[dict]:
    status = json.loads((spool / "run" / "status.json").read_text())
    return status["instances"].get(function, [])


def _instance_pid(spool: Path, function: str) -> int | None:
    found = _instances(spool, function)
    return found[0]["pid"] if found else None


def _instance_states(spool: Path, function: str) -> list[str]:
    return [i["state"] for i in _instances(spool, function)]


def _hooks(spool: Path, function: str) -> list[HookRun]:
    return [h for h in journal_records(spool, HookRun) if h.function == function]
