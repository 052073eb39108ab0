"""What only functions placed on Ray (`[placement] engine = "ray"`) have, through the real daemon
and the session's Ray cluster (tests/ray_cluster.py): placement by resource, the code folder
shipped, each instance's node in `functions list`, a daemon killed with -9, the sweep of a
predecessor's actors. What local instances do
too (hooks, stops, timeouts, memory, retries, warm instances) is tested with both placements
where it is tested for local instances (the `placement` fixture)."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest
from conftest import (
    REPO,
    drop,
    events,
    fnspool,
    fnspool_json,
    gone,
    journal_records,
    wait_for,
)
from ray_cluster import NO_RAY, placement_table

from daemon.model import HookRun

pytest.importorskip("ray", reason=NO_RAY)

CODE = REPO / "tests" / "functions" / "ray_runtime"


def on_ray(spool: Path, name: str, body: str, resource: str = "", code: str = "") -> None:
    """Define `name` placed on Ray (pinned to the node with `resource`, if given)."""
    if code == "":
        shutil.copytree(CODE, spool / "functions" / name)
    else:
        body = f'code = "{code}"\n{body}'
    table = placement_table(resource)
    (spool / "functions" / f"{name}.toml").write_text(f"memory_mb = 128\n{body}\n{table}")


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


def test_a_function_placed_by_resource_runs_on_that_node(spool, daemon, ray_cluster):
    init = '[lifecycle]\ninitializer = "index.init"'
    on_ray(spool, "on_b", f'handler = "index.where"\n{init}', "node_b")
    on_ray(spool, "on_a", 'handler = "index.where"', "node_a")
    d = daemon.start("--ray-address", ray_cluster.address)
    first, second = invoked(spool, "on_b", '{"n": 1}'), invoked(spool, "on_b", '{"n": 2}')
    assert (first["state"], second["state"]) == ("Succeeded", "Succeeded")
    assert ran_on(first) == ran_on(second) == [ray_cluster.b]
    assert ran_on(invoked(spool, "on_a")) == [ray_cluster.a]
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
    assert f"on Ray node {ray_cluster.b}" in shown
    # metrics.prom counts the attempts per node
    prom = spool / "run" / "metrics.prom"
    counted = [
        f'fnspool_node_attempts_total{{node="{node}",outcome="Succeeded"}} {n}'
        for node, n in ((ray_cluster.a, 1), (ray_cluster.b, 2))
    ]
    wait_for(lambda: all(c in prom.read_text() for c in counted), what="metrics.prom per node")
    assert d.stop() == 0


def test_functions_list_shows_the_node_of_each_instance(spool, daemon, ray_cluster):
    on_ray(spool, "pinned", 'handler = "index.where"\nmin_instances = 1', "node_b")
    d = daemon.start("--ray-address", ray_cluster.address)  # "warm" is local, min_instances 1

    def listed() -> dict[str, dict] | None:
        rows = {row["name"]: row for row in fnspool_json(spool, "functions", "list")}
        placed = [i for i in rows["pinned"]["instances"] if i["node"]]
        return rows if placed and rows["warm"]["instances"] else None

    rows = wait_for(listed, 120, "a warm instance of each, the one on Ray placed")
    assert [i["node"] for i in rows["pinned"]["instances"]] == [ray_cluster.b]  # the whole id
    assert [i["node"] for i in rows["warm"]["instances"]] == [None]  # this machine
    lines = fnspool(spool, "functions", "list", check=False).stdout.splitlines()
    at = next(n for n, line in enumerate(lines) if line.startswith("pinned "))
    assert lines[at + 1].split() == ["instances", "on", "Ray", "nodes", ray_cluster.b[:8], "(1)"]
    assert sum("on Ray nodes" in line for line in lines) == 1  # none for local instances
    assert d.stop() == 0


def test_a_daemon_killed_with_9_leaves_nothing_on_ray_and_the_event_runs_again(
    spool, daemon, ray_cluster
):
    on_ray(spool, "cut", 'handler = "index.slow"', "node_a")
    first = daemon.start("--ray-address", ray_cluster.address)
    ev = running(spool, "cut", {"sleep": 600})
    pid = wait_for(lambda: _instance_pid(spool, "cut"), what="the instance in status")
    first.kill()
    # Ray ends the actors of a driver that died, and the handler's process dies with its actor
    wait_for(lambda: gone(pid), 120, "the handler's process on the node to end")
    second = daemon.start("--ray-address", ray_cluster.address)
    wait_for(lambda: event(spool, ev["id"])["state"] == "Succeeded", 120, "the run again")
    done = event(spool, ev["id"])
    assert [(h["state"], h.get("reason")) for h in done["history"]][3:5] == [
        ("Retrying", "Interrupted"),
        ("Running", None),
    ]
    assert ran_on(done) == [ray_cluster.a]
    assert second.stop() == 0


def test_a_starting_daemon_kills_the_actors_left_in_its_spools_namespace(
    spool, daemon, ray_cluster
):
    import ray

    from daemon.runtimes.ray_engine import namespace_of

    namespace = namespace_of(spool)
    ray.init(address=ray_cluster.address, namespace=namespace, log_to_driver=False)
    try:
        leftover = ray.remote(type("Leftover", (), {"ping": lambda self: "pong"}))
        actor = leftover.options(name="ray-gone-0badcafe", lifetime="detached", num_cpus=0).remote()
        assert ray.get(actor.ping.remote(), timeout=120) == "pong"
        on_ray(spool, "any", 'handler = "index.where"')  # defined: the daemon connects at once
        d = daemon.start("--ray-address", ray_cluster.address)
        wait_for(lambda: "ray-gone-0badcafe" not in ray.util.list_named_actors(), 120, "the sweep")
        # the actor is gone as soon as it is killed, a moment before the daemon logs it
        said = "killed Ray actor ray-gone-0badcafe, left by a previous daemon"
        wait_for(lambda: said in d.log_text(), 30, "the sweep in the daemon's log")
        assert d.stop() == 0
    finally:
        ray.shutdown()


def _instances(spool: Path, function: str) -> list[dict]:
    status = json.loads((spool / "run" / "status.json").read_text())
    return status["instances"].get(function, [])


def _instance_pid(spool: Path, function: str) -> int | None:
    found = _instances(spool, function)
    return found[0]["pid"] if found else None
