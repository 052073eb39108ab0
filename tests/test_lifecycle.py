"""The instance lifecycle through the real daemon: Initializer, PreFreeze and freezing, PreStop,
warm pools, recycling, replacement on a definition change, and the memory limit; each test with
its functions on this machine and placed on Ray (`placement`)."""

from __future__ import annotations

import json
import re
import signal
import time
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

from daemon.model import HookRun


@pytest.fixture(autouse=True)
def _marks_outside_the_code_folder(spool: Path) -> None:
    """The hooks write their marks where the test reads them: on Ray, the code folder the
    function runs in is a copy on its node."""
    for path in (spool / "functions").glob("*.toml"):
        text = path.read_text()
        if path.stem == "lifecycle" or 'code = "lifecycle"' in text:
            path.write_text(f'{text}\n[environment]\nMARKS = "{spool.parent / "marks.log"}"\n')


def marks(spool: Path, function: str | None = None) -> list[list[str]]:
    """The lines the test functions' hooks wrote: [what, pid, request id], of one function."""
    path = spool.parent / "marks.log"
    lines = [line.split() for line in path.read_text().splitlines()] if path.exists() else []
    return [line[:3] for line in lines if function in (None, line[3])]


def ended(spool: Path, function: str, count: int) -> list[dict]:
    done = [e for e in events(spool, "--function", function) if e["ended_at"]]
    return done if len(done) >= count else []


def status(spool: Path) -> dict:
    return json.loads((spool / "run" / "status.json").read_text())


def instances(spool: Path, function: str) -> list[dict]:
    return status(spool)["instances"].get(function, [])


def hook_records(spool: Path, function: str) -> list[HookRun]:
    return [h for h in journal_records(spool, HookRun) if h.function == function]


def instance_states(spool: Path, function: str) -> list[str]:
    return [i["state"] for i in instances(spool, function)]


def test_initializer_once_then_prefreeze_and_frozen_between_events(spool, placement):
    placement.start("lifecycle")
    pids = set()
    for n in range(4):
        drop(spool, "lifecycle", f"{n}.json", {})
        done = wait_for(lambda n=n: ended(spool, "lifecycle", n + 1), what=f"event {n}")
        assert {e["state"] for e in done} == {"Succeeded"}
        newest = fnspool_json(spool, "events", "get", done[0]["id"])
        assert placement.nodes_of(newest) <= placement.where
        pid = newest["result"]["pid"]
        pids.add(pid)
        # idle now: PreFreeze ran, then the whole process is stopped (T) until the next event
        wait_for(lambda pid=pid: process_state(pid) == "T", what="the instance to be frozen")
        wait_for(lambda: instance_states(spool, "lifecycle") == ["frozen"], what="status: frozen")
    assert len(pids) == 1
    kinds = [m[0] for m in marks(spool, "lifecycle")]
    assert kinds.count("init") == 1 and kinds[0] == "init"
    assert kinds.count("pre_freeze") == 4

    # the last PreFreeze record may still be on its way to the disk
    wait_for(lambda: len(hook_records(spool, "lifecycle")) == 5, what="every hook record")
    hooks = hook_records(spool, "lifecycle")
    assert [h.hook for h in hooks].count("initializer") == 1
    assert [h.hook for h in hooks].count("pre_freeze") == 4
    kind = placement.kind("python")
    assert all(h.ok and h.instance.startswith(f"{kind}-lifecycle-") for h in hooks)
    # PreFreeze runs for no event: it has its own invocation id, which context.request_id holds
    freezes = [h for h in hooks if h.hook == "pre_freeze"]
    assert all(h.request_id is None and h.invocation_id for h in freezes)
    assert len({h.invocation_id for h in freezes}) == 4
    assert [m[2] for m in marks(spool, "lifecycle") if m[0] == "pre_freeze"] == [
        h.invocation_id for h in freezes
    ]
    first = min(events(spool, "--function", "lifecycle"), key=lambda e: e["enqueued_at"])
    init = next(h for h in hooks if h.hook == "initializer")
    assert init.request_id == first["id"]
    log = Path(fnspool_json(spool, "events", "get", first["id"])["log_path"]).read_text()
    assert re.search(rf"\[PLATFORM\] FC Initialize Start RequestId: {first['id']}\n", log)
    assert f"initializing in {pid}" in log
    assert log.index("FC Initialize End") < log.index("FC Invoke Start")


def test_prestop_runs_on_idle_timeout_and_the_process_is_gone(spool, placement):
    placement.start("idler")
    drop(spool, "idler", "a.json", {})
    done = wait_for(lambda: ended(spool, "idler", 1), what="the event")
    pid = fnspool_json(spool, "events", "get", done[0]["id"])["result"]["pid"]
    wait_for(lambda: gone(pid), what="the idle instance to be gone")
    wait_for(lambda: not instances(spool, "idler"), what="status to drop the instance")
    stops = wait_for(
        lambda: [h for h in journal_records(spool, HookRun) if h.hook == "pre_stop"],
        what="the PreStop record",
    )
    assert len(stops) == 1 and stops[0].ok and stops[0].request_id is None
    # no event: the hook's own invocation id, in the hook's context and in its log lines
    rid = stops[0].invocation_id
    assert rid and ["pre_stop", str(pid), rid] in marks(spool)
    log = (spool / "logs" / "idler" / f"{stops[0].instance}.log").read_text()
    assert f"[PLATFORM] FC PreStop Start RequestId: {rid}\n" in log
    assert f"[PLATFORM] FC PreStop End RequestId: {rid}\n" in log


def test_shutdown_runs_prestop_and_a_hanging_one_is_cut_at_its_timeout(spool, placement):
    d = placement.start("lifecycle", "stubborn")
    drop(spool, "lifecycle", "a.json", {})
    drop(spool, "stubborn", "b.json", {})
    wait_for(lambda: ended(spool, "lifecycle", 1) and ended(spool, "stubborn", 1), what="events")
    pids = {
        name: fnspool_json(spool, "events", "get", ended(spool, name, 1)[0]["id"])["result"]["pid"]
        for name in ("lifecycle", "stubborn")
    }
    began = time.monotonic()
    assert d.stop() == 0
    # a PreStop that sleeps 1000 s: a clean exit within stop()'s deadline is the cut
    print(
        f"\nshutdown took {time.monotonic() - began:.1f} s with a PreStop that hangs (timeout 1 s)"
    )
    assert all(gone(pid) for pid in pids.values())
    stops = {h.function: h for h in journal_records(spool, HookRun) if h.hook == "pre_stop"}
    assert ["pre_stop", str(pids["lifecycle"]), stops["lifecycle"].invocation_id] in marks(spool)
    hung = ["pre_stop_hangs", str(pids["stubborn"]), stops["stubborn"].invocation_id]
    assert hung in marks(spool) and all(h.invocation_id for h in stops.values())
    assert stops["lifecycle"].ok
    assert not stops["stubborn"].ok and stops["stubborn"].error.type == "FunctionTimeout"


def test_a_failing_initializer_makes_the_event_invalid_with_its_error(spool, placement):
    placement.start("badinit")
    drop(spool, "badinit", "a.json", {})
    done = wait_for(lambda: ended(spool, "badinit", 1), what="the event")
    event = fnspool_json(spool, "events", "get", done[0]["id"])
    assert event["state"] == "Invalid"
    assert event["error"]["type"] == "RuntimeError"
    assert event["error"]["message"] == "the database is unreachable"
    assert "FC Initialize Error" in Path(event["log_path"]).read_text()
    hook = next(h for h in journal_records(spool, HookRun) if h.function == "badinit")
    assert hook.hook == "initializer" and not hook.ok
    wait_for(lambda: not instances(spool, "badinit"), what="the instance to be discarded")


def test_going_over_memory_mb_is_memory_limit_exceeded(spool, placement):
    placement.start("hog")
    drop(spool, "hog", "a.json", {"hog_mb": 300})
    done = wait_for(lambda: ended(spool, "hog", 1), what="the event")
    event = fnspool_json(spool, "events", "get", done[0]["id"])
    assert event["state"] == "Failed"
    assert event["error"]["type"] == "MemoryLimitExceeded"
    assert "the limit is 100MB" in event["error"]["message"]
    usage = event["history"][-1]["usage"]
    assert usage["signal"] == signal.SIGKILL
    assert placement.nodes_of(event) <= placement.where
    text = fnspool(spool, "events", "get", done[0]["id"]).stdout
    assert "error:        MemoryLimitExceeded: Memory limit exceeded" in text
    assert re.search(r"wall [\d.]+ms, .*peak memory [\d.]+MB, killed by signal 9", text)


def test_min_instances_kept_warm_and_recycled_after_max_events(spool, placement):
    placement.start("warm")
    warm = wait_for(lambda: instances(spool, "warm"), what="a warm instance before any event")
    first_pid = warm[0]["pid"]
    assert warm[0]["events_served"] == 0
    pids = []
    for n in range(4):
        drop(spool, "warm", f"{n}.json", {})
        done = wait_for(lambda n=n: ended(spool, "warm", n + 1), what=f"event {n}")
        newest = max(done, key=lambda e: e["enqueued_at"])
        pids.append(fnspool_json(spool, "events", "get", newest["id"])["result"]["pid"])
    assert pids[0] == pids[1] == first_pid
    assert pids[2] == pids[3] != first_pid  # recycled after 2 events, PreStop first
    wait_for(lambda: gone(first_pid), what="the recycled instance to be gone")
    rid = next(m[2] for m in marks(spool) if m[:2] == ["pre_stop", str(first_pid)])
    wait_for(
        lambda: rid in {h.invocation_id for h in journal_records(spool, HookRun)},
        what="the PreStop's record with the id its context had",
    )
    # a new warm instance (the second one was recycled too); freeze = false: idle, never stopped
    wait_for(
        lambda: (
            [(i["state"], i["pid"] in pids) for i in instances(spool, "warm")] == [("idle", False)]
        ),
        what="a new idle warm instance",
    )
    assert process_state(instances(spool, "warm")[0]["pid"]) in ("S", "R")


def test_a_changed_definition_replaces_its_instances_prestop_first(spool, placement):
    placement.start("lifecycle")
    drop(spool, "lifecycle", "a.json", {})
    done = wait_for(lambda: ended(spool, "lifecycle", 1), what="the first event")
    old_pid = fnspool_json(spool, "events", "get", done[0]["id"])["result"]["pid"]
    toml = spool / "functions" / "lifecycle.toml"
    toml.write_text(toml.read_text().replace("max_instances = 1", "max_instances = 2"))
    stopped = wait_for(
        lambda: [m for m in marks(spool) if m[:2] == ["pre_stop", str(old_pid)]],
        what="PreStop of old",
    )
    assert stopped[0][2] != "-"  # its own invocation id: the hook runs for no event
    drop(spool, "lifecycle", "b.json", {})
    done = wait_for(lambda: ended(spool, "lifecycle", 2), what="the second event")
    newest = max(done, key=lambda e: e["enqueued_at"])
    new_pid = fnspool_json(spool, "events", "get", newest["id"])["result"]["pid"]
    assert new_pid != old_pid and gone(old_pid)


def test_back_to_back_invokes_wait_for_the_instance_in_prefreeze(spool, placement):
    placement.start("settler")
    pids = []
    for n in range(3):  # each arrives while the instance runs the last one's PreFreeze
        out = fnspool(spool, "invoke", "settler", "--payload", json.dumps({"n": n}), "--wait",
                      "--json")  # fmt: skip
        done = json.loads(out.stdout)
        assert done["state"] == "Succeeded"
        pids.append(done["result"]["pid"])
    assert len(set(pids)) == 1  # one warm instance, not three
    wait_for(lambda: len(instances(spool, "settler")) == 1, what="status: the instance")
