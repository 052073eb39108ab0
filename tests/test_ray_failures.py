"""Failures of a Ray cluster under functions placed on it, through the real daemon: a node lost
in the middle of an event (its attempt is Interrupted and the event runs again on another node,
no retry spent, run to completion once), and a cluster that cannot be reached (the events wait,
Enqueued, with the reason shown, and run once it is back). Small clusters on this machine, 80 MB
of object store per node, each test with clusters of its own making or the module's."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import REPO, drop, events, fnspool, fnspool_json, gone, wait_for

pytest.importorskip("ray", reason="Ray is not installed: pip install 'fnspool[ray]'")

CODE = REPO / "tests" / "functions" / "ray_failures"
STORE = 80 << 20  # bytes of object store per node: the least Ray takes
PIN = "shared_pin"  # the custom resource both worker nodes have


@pytest.fixture(scope="module")
def cluster() -> Iterator[Any]:
    """A head that takes no instance and two worker nodes that both have the resource PIN."""
    from ray.cluster_utils import Cluster

    ray_cluster = Cluster()
    try:
        ray_cluster.add_node(num_cpus=0, object_store_memory=STORE, include_dashboard=False)
        for _ in range(2):
            ray_cluster.add_node(num_cpus=1, resources={PIN: 2}, object_store_memory=STORE)
        yield ray_cluster
    finally:
        ray_cluster.shutdown()


def on_ray(spool: Path, name: str, handler: str, extra: str = "", pin: bool = True) -> None:
    """Define `name` placed on Ray, pinned to the nodes that have PIN (if `pin`)."""
    shutil.copytree(CODE, spool / "functions" / name)
    table = '[placement]\nengine = "ray"\nnum_cpus = 0.5\n'
    if pin:
        table += f"resources = {{ {PIN} = 1 }}\n"
    body = f'memory_mb = 128\nhandler = "{handler}"\n{extra}\n{table}'
    (spool / "functions" / f"{name}.toml").write_text(body)


def event(spool: Path, request_id: str) -> dict:
    return fnspool_json(spool, "events", "get", request_id)


def parent_of(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("PPid:"):
            return int(line.split()[1])
    return 0


def node_running(cluster: Any, pid: int) -> Any:
    """The cluster's worker node whose raylet is an ancestor of process `pid`."""
    from ray._private import ray_constants

    raylets = {
        node.all_processes[ray_constants.PROCESS_TYPE_RAYLET][0].process.pid: node
        for node in cluster.worker_nodes
    }
    while pid > 1:
        if pid in raylets:
            return raylets[pid]
        pid = parent_of(pid)
    raise AssertionError("the handler runs on none of the cluster's worker nodes")


def sleeping(spool: Path, marker: Path, function: str = "pinned") -> tuple[str, int]:
    """Drop an event for `function` and wait until its handler sleeps; its id and pid."""
    drop(spool, function, "e.json", {"marker": str(marker), "sleep": 120})
    request_id = wait_for(lambda: events(spool, "--function", function), 120, "the event")[0]["id"]
    path = spool / "logs" / function / f"{request_id}.log"
    wait_for(lambda: path.exists() and "slow start 1 pid" in path.read_text(), 120, "the handler")
    return request_id, int(path.read_text().split("slow start 1 pid ")[1].split()[0])


def ended(spool: Path, request_id: str) -> dict:
    """The event once it has ended."""
    return wait_for(
        lambda: (e := event(spool, request_id))["state"] in ("Succeeded", "Failed") and e,
        180,
        "the event to end",
    )


def test_a_node_lost_mid_event_interrupts_the_attempt_and_the_event_runs_again_elsewhere(
    spool, daemon, cluster, tmp_path
):
    on_ray(spool, "pinned", "index.once")
    marker = tmp_path / "completions"
    d = daemon.start("--ray-address", cluster.address)
    request_id, pid = sleeping(spool, marker)
    lost = node_running(cluster, pid)
    cluster.remove_node(lost, allow_graceful=False)
    wait_for(lambda: gone(pid), 60, "the handler on the lost node to die with it")
    ended_event = ended(spool, request_id)
    assert ended_event["state"] == "Succeeded", ended_event
    retrying = [h for h in ended_event["history"] if h["state"] == "Retrying"]
    # one Retrying, Interrupted: no failed attempt, no retry spent
    assert [h.get("reason") for h in retrying] == ["Interrupted"], retrying
    assert lost.node_id in json.dumps(retrying[0]), retrying
    assert retrying[0]["error"]["type"] == "NodeLost"
    nodes = [h["usage"]["node"] for h in ended_event["history"] if "usage" in h]
    assert nodes[-1] != lost.node_id and nodes[-1] is not None, nodes
    assert marker.read_text().splitlines() == [f"{request_id} 2"]
    shown = fnspool(spool, "events", "get", request_id).stdout
    assert lost.node_id in shown, shown
    assert d.stop() == 0
    # the cluster gets a node with PIN again, for the module's other tests
    cluster.add_node(num_cpus=1, resources={PIN: 2}, object_store_memory=STORE)


def test_an_actor_that_dies_on_a_live_node_is_a_lost_instance_and_a_failed_attempt(
    spool, daemon, cluster, tmp_path
):
    on_ray(spool, "pinned", "index.once", "[async]\nmax_retries = 1\nbackoff = 0.1")
    marker = tmp_path / "completions"
    d = daemon.start("--ray-address", cluster.address)
    request_id, pid = sleeping(spool, marker)
    actor = parent_of(pid)  # the instance's actor, on its node: killed as a process may die
    os.kill(actor, signal.SIGKILL)
    ended_event = ended(spool, request_id)
    assert ended_event["state"] == "Succeeded", ended_event
    retrying = [h for h in ended_event["history"] if h["state"] == "Retrying"]
    assert [h.get("reason") for h in retrying] == [None], retrying  # a retry spent
    assert retrying[0]["error"]["type"] == "ProcessExited", retrying  # as a local process
    assert "its Ray actor died" in retrying[0]["error"]["message"], retrying
    running = [h["instance"] for h in ended_event["history"] if h["state"] == "Running"]
    assert running[0] != running[1]  # a new instance
    assert marker.read_text().splitlines() == [f"{request_id} 2"]
    assert d.stop() == 0


#: seconds Ray lets the daemon live without its cluster's GCS, in this test (the daemon lets go
#: within about 11: 3 looks 2 s apart, then a ray.shutdown of 5 s)
RAY_PATIENCE = 20


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("", 0))
        return s.getsockname()[1]


def head_at(port: int) -> Any:
    """A cluster of one node (1 CPU) whose GCS listens at `port`."""
    from ray.cluster_utils import Cluster

    return Cluster(
        initialize_head=True,
        head_node_args={
            "gcs_server_port": port,
            "num_cpus": 1,
            "object_store_memory": STORE,
            "include_dashboard": False,
        },
    )


def held(spool: Path, function: str) -> str | None:
    """Why the daemon says the function's events wait (status.json), if it does."""
    return fnspool_json(spool, "status").get("held", {}).get(function)


def test_events_wait_enqueued_while_the_cluster_is_down_and_run_when_it_is_back(
    spool, daemon, tmp_path, monkeypatch
):
    from ray.util import get_node_ip_address

    # Ray ends a driver (the daemon) whose GCS is gone this long: short, to show it lives on
    monkeypatch.setenv("RAY_gcs_rpc_server_reconnect_timeout_s", str(RAY_PATIENCE))
    port = free_port()
    address = f"{get_node_ip_address()}:{port}"
    on_ray(spool, "later", "index.quick", pin=False)
    on_ray(spool, "long", "index.once", pin=False)
    marker = tmp_path / "completions"
    d = daemon.start("--ray-address", address)
    why = wait_for(lambda: held(spool, "later"), 60, "the function to be held")
    assert f"cannot reach the Ray cluster at {address}" in why
    drop(spool, "later", "first.json", {})
    first = wait_for(lambda: events(spool, "--function", "later"), 60, "the event")[0]["id"]
    assert event(spool, first)["state"] == "Enqueued"
    shown = fnspool(spool, "status").stdout
    assert f"held: later: its events wait: cannot reach the Ray cluster at {address}" in shown
    listed = fnspool(spool, "functions", "list").stdout
    assert "its events wait: cannot reach the Ray cluster" in listed, listed
    assert 'fnspool_held{function="later"} 1' in (spool / "run" / "metrics.prom").read_text()
    cluster = head_at(port)
    try:
        done = wait_for(lambda: event(spool, first)["state"] == "Succeeded", 180, "the event")
        assert done and held(spool, "later") is None
        metrics = spool / "run" / "metrics.prom"
        wait_for(lambda: 'fnspool_held{function="later"} 0' in metrics.read_text(), 30, "0")
        states = [h["state"] for h in event(spool, first)["history"]]
        assert states == ["Enqueued", "Dequeued", "Running", "Succeeded"], states
        # the cluster goes, with an attempt running: the daemon lets go of it, and outlives
        # Ray's patience
        cut, pid = sleeping(spool, marker, "long")
        cluster.shutdown()
        why = wait_for(lambda: held(spool, "later"), 60, "the function to be held again")
        assert f":{port}" in why, why
        drop(spool, "later", "second.json", {})
        found = wait_for(lambda: len(events(spool, "--function", "later")) == 2, 60, "the event")
        assert found
        second = next(e["id"] for e in events(spool, "--function", "later") if e["id"] != first)
        past = time.monotonic() + RAY_PATIENCE + 5  # a wait on purpose: Ray's timeout passes
        wait_for(lambda: d.ready() and time.monotonic() > past, 60, "Ray's patience to pass")
        assert event(spool, second)["state"] == "Enqueued"
        cluster = head_at(port)
        done = wait_for(lambda: event(spool, second)["state"] == "Succeeded", 180, "the event")
        assert done and d.ready()
        # the attempt the cluster's end cut off runs again, no retry spent, once to the end
        ran = ended(spool, cut)
        assert ran["state"] == "Succeeded", ran
        retrying = [h for h in ran["history"] if h["state"] == "Retrying"]
        assert [(h.get("reason"), h["error"]["type"]) for h in retrying] == [
            ("Interrupted", "NodeLost")
        ], retrying
        assert marker.read_text().splitlines() == [f"{cut} 2"]
        assert gone(pid)
    finally:
        cluster.shutdown()
    assert d.stop() == 0
