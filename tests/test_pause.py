"""`fnspool pause` / `resume` on a real daemon: queued events wait, through a restart and a
compaction, and run once resumed; the paused state shows in status, functions list and metrics."""

from __future__ import annotations

from pathlib import Path

from conftest import drop, events, fnspool, fnspool_json, journal_records, wait_for

from daemon.journal import list_snapshots, read_snapshot
from daemon.model import Paused, PauseState

COMPACT_OFTEN = ("--snapshot-every", "40")  # records: a compaction every heartbeat or so
HELD = PauseState(functions=("echo",))


def _states(spool: Path, function: str) -> list[str]:
    return [e["state"] for e in events(spool, "--function", function)]


def _snapshot_holds_pause(spool: Path) -> bool:
    """Whether a snapshot newer than the Paused record carries the paused state."""
    paused_at = max(r.seq for r in journal_records(spool, Paused))
    snapshots = [p for seq, p in list_snapshots(spool / "journal") if seq > paused_at]
    return any(read_snapshot(p)[0].paused == HELD for p in snapshots)


def _others_ran(spool: Path, count: int) -> bool:
    return _states(spool, "hello").count("Succeeded") == count


def test_paused_events_wait_through_a_restart_and_a_compaction_and_run_when_resumed(spool, daemon):
    d = daemon.start(*COMPACT_OFTEN)
    paused = fnspool(spool, "pause", "echo")
    assert paused.stdout.strip() == "echo: function echo paused"
    for i in range(3):
        drop(spool, "echo", f"{i}.json", {"i": i})
    for i in range(30):  # another function's events run meanwhile, and fill a compaction
        drop(spool, "hello", f"h{i}.json", {"name": str(i)})
    wait_for(lambda: _others_ran(spool, 30), 60, "the other function's events to run")
    assert _states(spool, "echo") == ["Enqueued"] * 3
    wait_for(lambda: _snapshot_holds_pause(spool), 60, "a snapshot after the pause")
    assert d.stop() == 0

    daemon.start(*COMPACT_OFTEN)
    status = fnspool_json(spool, "status")
    assert (status["paused"], status["paused_all"]) == (["echo"], False)
    assert "paused: echo" in fnspool(spool, "status").stdout
    listed = {row["name"]: row for row in fnspool_json(spool, "functions", "list")}
    assert listed["echo"]["paused"] and not listed["hello"]["paused"]
    metrics = fnspool(spool, "metrics").stdout
    assert 'fnspool_paused{function="echo"} 1' in metrics
    assert 'fnspool_paused{function="hello"} 0' in metrics
    drop(spool, "hello", "after.json", {"name": "after"})
    wait_for(lambda: _others_ran(spool, 31), 60, "an event of another function to run")
    assert _states(spool, "echo") == ["Enqueued"] * 3

    resumed = fnspool(spool, "resume", "echo")
    assert resumed.stdout.strip() == "echo: function echo resumed"
    wait_for(lambda: _states(spool, "echo") == ["Succeeded"] * 3, 60, "the echo events to run")
    wait_for(lambda: fnspool_json(spool, "status")["paused"] == [], 30, "status to say so")


def test_pause_refuses_an_unknown_function_and_resume_of_one_while_all_are_paused(spool, daemon):
    daemon.start()
    unknown = fnspool(spool, "pause", "nope", check=False)
    assert unknown.returncode == 1
    assert "no function named 'nope'" in unknown.stderr
    assert fnspool(spool, "pause").stdout.strip() == "all functions paused"
    wait_for(lambda: fnspool_json(spool, "status")["paused_all"], 30, "status to say so")
    one = fnspool(spool, "resume", "echo", check=False)
    assert one.returncode == 1
    assert "all functions are paused" in one.stderr
    assert fnspool(spool, "resume").stdout.strip() == "all functions resumed"
    wait_for(lambda: not fnspool_json(spool, "status")["paused_all"], 30, "status to say so")
