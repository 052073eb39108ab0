"""The real daemon over a temporary spool: files in, events out, crashes, bad input, signals."""

from __future__ import annotations

import json
import os
import random
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from conftest import REPO, drop, events, fnspool, fnspool_json, gone, journal_records, wait_for

from daemon import lock
from daemon.journal import encode_record, list_segments, segment_name
from daemon.model import HookRun

FULL_HISTORY = ["Enqueued", "Dequeued", "Running", "Succeeded"]
# DESIGN.md's JSON shapes: `events list` fields, and what `events get` adds
LIST_FIELDS = {"id", "function", "state", "attempts", "enqueued_at", "started_at", "ended_at"}
LIST_FIELDS |= {"duration_ms", "error", "retry_of"}
GET_FIELDS = LIST_FIELDS | {"payload", "result", "history", "log_path"}


def ended(spool, count, function=None):
    args = ["--status", "Succeeded,Failed,Expired,Invalid,Stopped"]
    if function:
        args += ["--function", function]
    found = events(spool, *args)
    return found if len(found) >= count else None


def test_a_dropped_file_succeeds_with_its_whole_history(spool, daemon):
    daemon.start()
    drop(spool, "echo", "first.json", {"n": 1})
    (event,) = wait_for(lambda: ended(spool, 1), what="the event to end")
    full = fnspool_json(spool, "events", "get", event["id"])
    assert full["state"] == "Succeeded"
    assert full["result"] == {"n": 1} and full["payload"] == {"n": 1}
    assert [h["state"] for h in full["history"]] == FULL_HISTORY
    assert full["attempts"] == 1 and full["error"] is None
    assert set(full) >= GET_FIELDS
    assert full["enqueued_at"].endswith("Z") and full["duration_ms"] >= 0
    assert not (spool / "incoming" / "echo" / "first.json").exists()
    log = fnspool(spool, "events", "logs", event["id"]).stdout
    assert f"[PLATFORM] FC Invoke Start RequestId: {event['id']}" in log
    assert f"[PLATFORM] FC Invoke End RequestId: {event['id']}" in log


def test_a_thousand_files_all_succeed_on_few_workers(spool, daemon):
    daemon.start()
    for i in range(1000):
        drop(spool, "echo", f"{i:04d}.json", {"i": i})
    done = wait_for(lambda: ended(spool, 1000), 120, "1000 events to end")
    assert len(done) == 1000 and {e["state"] for e in done} == {"Succeeded"}
    from daemon.journal import JournalFollower

    state = JournalFollower(spool / "journal").load()
    instances = set()
    for event in state.events.values():
        assert [h.state.value for h in event.history] == FULL_HISTORY
        instances.update(h.instance for h in event.history if h.instance)
    payloads = sorted(json.loads(bytes(e.payload))["i"] for e in state.events.values())
    assert payloads == list(range(1000))
    assert len(instances) <= 2, f"{len(instances)} worker processes for 1000 events"
    assert not os.listdir(spool / "incoming" / "echo")


def test_envelopes_ids_and_the_cli_invoke(spool, daemon):
    daemon.start()
    (spool / "incoming" / "env.json").write_text(
        json.dumps({"function": "echo", "payload": [1, 2], "id": "my-key-1"})
    )
    wait_for(lambda: ended(spool, 1), what="the envelope event")
    assert fnspool_json(spool, "events", "get", "my-key-1")["result"] == [1, 2]
    (spool / "incoming" / "again.json").write_text(
        json.dumps({"function": "echo", "payload": 3, "id": "my-key-1"})
    )
    reason = wait_for(
        lambda: list((spool / "rejected").glob("*.reason.json")), what="the duplicate's rejection"
    )
    assert json.loads(reason[0].read_text())["reason"] == "duplicate_id"
    out = fnspool_json(spool, "invoke", "hello", "--payload", '{"name": "Ada"}', "--wait")
    assert out["state"] == "Succeeded" and out["result"] == {"message": "Hello, Ada!"}
    log = fnspool(spool, "events", "logs", out["id"]).stdout
    assert f"request {out['id']}, attempt 1" in log


def test_bad_files_are_rejected_with_reasons_and_the_daemon_keeps_serving(spool, daemon, tmp_path):
    daemon.start()
    incoming = spool / "incoming"
    (incoming / "echo" / "notjson.json").write_text("{nope")
    (incoming / "shape.json").write_text(json.dumps({"payload": 1}))
    (incoming / "unknown.json").write_text(json.dumps({"function": "nosuch", "payload": 1}))
    (incoming / "echo" / "big.json").write_text(json.dumps("x" * (2 << 20)))
    (incoming / "echo" / "deep.json").write_text("[" * 5000 + "]" * 5000)
    (incoming / "dup.json").write_text('{"function": "echo", "function": "x", "payload": 1}')
    outside = tmp_path / "secret.json"
    outside.write_text('{"secret": true}')
    os.symlink(outside, incoming / "echo" / "link.json")
    (incoming / "echo" / "bad name.txt").write_text("{}")
    os.mkfifo(incoming / "echo" / "fifo.json")
    (tmp_path / "kept.json").write_text("{}")
    os.link(tmp_path / "kept.json", incoming / "echo" / "linked.json")
    (incoming / "echo" / "adir.json").mkdir()
    expected = {"not_json", "bad_shape", "unknown_function", "too_large", "too_deep", "symlink"}
    expected |= {"bad_name", "not_regular", "hard_link", "duplicate_key"}

    def reasons():
        found = {
            json.loads(p.read_text())["reason"] for p in (spool / "rejected").glob("*.reason.json")
        }
        return found if found >= expected else None

    wait_for(reasons, 30, "every bad file to be rejected")
    assert outside.read_text() == '{"secret": true}'
    drop(spool, "echo", "good.json", {"ok": True})
    wait_for(lambda: ended(spool, 1), what="a good file after the bad ones")
    assert daemon_alive(spool)


def daemon_alive(spool):
    return fnspool(spool, "status", check=False).returncode == 0


def test_a_second_daemon_exits_naming_the_first(spool, daemon):
    first = daemon.start()
    proc = fnspool(spool, "daemon", check=False, timeout=30)
    assert proc.returncode != 0
    assert f"pid {first.proc.pid}" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_status_exit_codes(spool, daemon):
    assert fnspool(spool, "status", check=False).returncode == 3
    d = daemon.start()
    status = fnspool_json(spool, "status")
    assert status["running"] and status["pid"] == d.proc.pid
    assert d.stop() == 0
    assert fnspool(spool, "status", check=False).returncode == 3


def test_unknown_id_is_not_found(spool, daemon):
    daemon.start()
    proc = fnspool(spool, "events", "get", "no-such-id", check=False)
    assert proc.returncode == 4 and "not found" in proc.stderr and "Traceback" not in proc.stderr


def test_sigterm_drains_running_events_and_exits_zero(spool, daemon):
    d = daemon.start()
    assert (spool / "run" / "daemon.pid").read_text() == f"{d.proc.pid}\n"
    drop(spool, "slow", "s.json", {"sleep": 1})
    wait_for(lambda: events(spool, "--status", "Running"), what="the event to run")
    d.signal(signal.SIGTERM)
    assert d.proc.wait(30) == 0
    (event,) = events(spool)
    assert event["state"] == "Succeeded", "a running event finishes within the drain timeout"
    assert not (spool / "run" / "daemon.pid").exists(), "a clean stop leaves no pid file"


def test_a_draining_daemon_says_it_is_stopping(spool, daemon):
    d = daemon.start("--drain-timeout", "120")
    drop(spool, "slow", "s.json", {"sleep": 120})
    wait_for(lambda: events(spool, "--status", "Running"), what="the event to run")
    d.signal(signal.SIGTERM)
    view = wait_for(
        lambda: (
            (v := json.loads(fnspool(spool, "status", "--json", check=False).stdout))
            and v["stopping"]
            and v
        ),
        30,
        "status to say stopping",
    )
    assert not view["running"] and view["pid"] == d.proc.pid
    text = fnspool(spool, "status", check=False).stdout
    assert f"stopping (pid {d.proc.pid}): draining" in text, text


def test_an_event_cut_off_by_shutdown_runs_again_without_using_a_retry(spool, daemon):
    d = daemon.start("--drain-timeout", "0.2")
    drop(spool, "slow", "s.json", {"sleep": 3})
    wait_for(lambda: events(spool, "--status", "Running"), what="the event to run")
    assert d.stop() == 0
    assert events(spool)[0]["state"] == "Running"
    daemon.start()
    (event,) = wait_for(lambda: ended(spool, 1), 30, "the interrupted event to end")
    full = fnspool_json(spool, "events", "get", event["id"])
    assert full["state"] == "Succeeded" and full["attempts"] == 2
    states = [(h["state"], h.get("reason")) for h in full["history"]]
    assert ("Retrying", "Interrupted") in states


def test_sighup_and_file_changes_reload_definitions(spool, daemon):
    d = daemon.start()
    bad = spool / "functions" / "broken.toml"
    bad.write_text('runtime = "python"\ntimeout = "soon"\n')
    d.signal(signal.SIGHUP)
    listing = wait_for(
        lambda: [f for f in fnspool_json(spool, "functions", "list") if f["name"] == "broken"],
        what="the broken definition to be listed",
    )
    assert "timeout" in listing[0]["error"] and "float" in listing[0]["error"]
    assert "broken.toml" in listing[0]["path"]
    (spool / "functions" / "late").mkdir()
    (spool / "functions" / "late" / "index.py").write_text(
        "def handler(e, c):\n    return 'late'\n"
    )
    (spool / "functions" / "late.toml").write_text('handler = "index.handler"\n')
    wait_for(lambda: (spool / "incoming" / "late").is_dir(), what="the new function's drop folder")
    drop(spool, "late", "x.json", {})
    (event,) = wait_for(lambda: ended(spool, 1, "late"), what="the new function to run")
    assert event["state"] == "Succeeded"
    assert "timeout" in d.log_text() and "broken.toml" in d.log_text()


def test_failures_retry_then_fail_with_the_error(spool, daemon):
    daemon.start()
    drop(spool, "fail", "f.json", {"x": 1})
    (event,) = wait_for(lambda: ended(spool, 1), what="the failing event to end")
    full = fnspool_json(spool, "events", "get", event["id"])
    assert full["state"] == "Failed" and full["attempts"] == 2
    assert full["error"]["type"] == "ValueError" and "bad input" in full["error"]["message"]
    assert "Traceback" in full["error"]["traceback"]
    assert [h["state"] for h in full["history"]] == [
        "Enqueued",
        "Dequeued",
        "Running",
        "Retrying",
        "Running",
        "Failed",
    ]


def test_list_filters_and_shapes(spool, daemon):
    daemon.start()
    drop(spool, "echo", "a.json", 1)
    wait_for(lambda: ended(spool, 1), what="the first event")
    middle = time.time()
    time.sleep(0.01)  # the two batches must differ in enqueue time for --since/--until
    drop(spool, "echo", "b.json", 2)
    drop(spool, "fail", "c.json", 3)
    wait_for(lambda: ended(spool, 3), what="all three events")
    everything = events(spool)
    assert [e["id"] for e in everything] == sorted((e["id"] for e in everything), reverse=True)
    assert [e["id"] for e in events(spool, "--order", "asc")] == sorted(e["id"] for e in everything)
    assert {e["function"] for e in events(spool, "--function", "fail")} == {"fail"}
    assert [e["state"] for e in events(spool, "--status", "failed")] == ["Failed"]
    assert len(events(spool, "--status", "Succeeded,Failed")) == 3
    assert len(events(spool, "--limit", "2")) == 2
    prefix = everything[0]["id"][:20]
    assert all(e["id"].startswith(prefix) for e in events(spool, "--id-prefix", prefix))
    iso_middle = (
        time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(middle)) + f".{int(middle % 1 * 1000):03d}Z"
    )
    assert len(events(spool, "--since", iso_middle)) == 2
    assert len(events(spool, "--until", iso_middle)) == 1
    assert len(events(spool, "--since", "1h")) == 3
    assert set(everything[0]) == LIST_FIELDS
    bad = fnspool(spool, "events", "list", "--status", "Sleeping", check=False)
    assert bad.returncode == 2 and "unknown state" in bad.stderr and "Traceback" not in bad.stderr


def test_events_wait_and_logs_follow(spool, daemon):
    daemon.start()
    out = fnspool(spool, "invoke", "slow", "--payload", '{"sleep": 0.5}').stdout.strip()
    follow = subprocess.Popen(
        [sys.executable, "-m", "daemon", "events", "logs", out, "--follow", "--spool", str(spool)],
        stdout=subprocess.PIPE,
        text=True,
        cwd=REPO,
    )
    waited = fnspool(spool, "events", "wait", out)
    assert waited.stdout.strip() == f"{out} Succeeded"
    text, _ = follow.communicate(timeout=30)
    assert f"FC Invoke End RequestId: {out}" in text
    failing = fnspool(spool, "invoke", "fail").stdout.strip()
    assert fnspool(spool, "events", "wait", failing, check=False).returncode == 1


def test_journal_damage_survives_a_restart(spool, daemon):
    d = daemon.start()
    for i in range(20):
        drop(spool, "echo", f"{i}.json", {"i": i})
    wait_for(lambda: ended(spool, 20), what="20 events")
    assert d.stop() == 0
    (_, segment), *_ = list_segments(spool / "journal")
    data = bytearray(segment.read_bytes())
    lines = data.split(b"\n")
    victim = sum(len(x) + 1 for x in lines[:40]) + 20  # inside a late record (not an Enqueued one)
    data[victim] ^= 0x01
    segment.write_bytes(bytes(data) + b'0123abcd {"kind":"state","id"')
    d = daemon.start()
    status = fnspool_json(spool, "status")
    reasons = {x["reason"] for x in status["journal_damage"]}
    assert "torn tail cut" in reasons and "checksum mismatch" in reasons
    assert len(events(spool)) == 20
    drop(spool, "echo", "after.json", {"after": True})
    wait_for(lambda: len(events(spool)) == 21, what="a new event after the damage")


@pytest.mark.parametrize("rounds", [4])
def test_kill_9_during_ingest_never_loses_or_duplicates_a_file(spool, daemon, rounds):
    total = 1500
    feeder_done = threading.Event()

    def feed():
        for i in range(total):
            drop(spool, "echo", f"p{i:05d}.json", {"i": i})
            if i % 100 == 0:
                time.sleep(0.01)
        feeder_done.set()

    (spool / "incoming" / "echo").mkdir(parents=True, exist_ok=True)
    feeder = threading.Thread(target=feed)
    feeder.start()
    rng = random.Random(7)
    for _ in range(rounds):
        d = daemon.start()
        time.sleep(rng.uniform(0.05, 0.6))  # the crash moment is random on purpose
        d.kill()
    feeder.join()
    daemon.start()
    wait_for(lambda: not os.listdir(spool / "incoming" / "echo"), 120, "incoming/ to empty")
    from daemon.journal import JournalFollower

    state = JournalFollower(spool / "journal").load()
    payloads = sorted(json.loads(bytes(e.payload))["i"] for e in state.events.values())
    assert payloads == list(range(total)), "every dropped file is exactly one event"
    assert not list((spool / "rejected").glob("*"))


def test_compaction_snapshots_the_journal_and_drops_expired_events(spool, daemon):
    daemon.start("--snapshot-every", "20", "--retention", "2s")
    for i in range(10):
        drop(spool, "hello", f"old{i}.json", {"i": i})  # it prints: a file each
    old = wait_for(lambda: ended(spool, 10), what="the first events")
    old_logs = [Path(fnspool_json(spool, "events", "get", e["id"])["log_path"]) for e in old]
    assert all(p.exists() for p in old_logs)
    wait_for(lambda: list((spool / "journal").glob("snapshot-*.jsonl")), what="a first snapshot")
    time.sleep(2.1)  # let the first events age past the retention
    for i in range(10):
        drop(spool, "echo", f"new{i}.json", {"i": i})
    wait_for(
        lambda: ended(spool, 10) and len(events(spool)) == 10, 30, "the old events to be dropped"
    )
    assert not any(p.exists() for p in old_logs)
    assert {e["id"] for e in events(spool)}.isdisjoint(e["id"] for e in old)
    assert len(list_segments(spool / "journal")) <= 3


def test_an_attempt_past_its_timeout_fails_and_its_processes_are_gone(spool, placement):
    placement.start("hang")
    drop(spool, "hang", "h.json", {})
    (event,) = wait_for(lambda: ended(spool, 1), what="the hanging event to time out")
    full = fnspool_json(spool, "events", "get", event["id"])
    assert full["state"] == "Failed"
    assert full["error"]["type"] == "FunctionTimeout"
    assert full["error"]["message"] == "Function timed out after 0.50 seconds"
    assert placement.nodes_of(full) <= placement.where
    said = re.search(r"hanging; grandchild (\d+)", Path(full["log_path"]).read_text())
    assert said, "the handler's line in its log"
    grandchild = int(said[1])
    wait_for(lambda: gone(grandchild), what="the instance's grandchild to die with it")
    drop(spool, "hang", "again.json", {})  # on a new instance: the timed-out one was killed
    again = max(
        wait_for(lambda: ended(spool, 2), what="the second event"), key=lambda e: e["enqueued_at"]
    )
    instances = [fnspool_json(spool, "events", "get", e["id"])["history"][2]["instance"]
                 for e in (full, again)]  # fmt: skip
    assert instances[0] != instances[1]


def test_metrics_file_in_prometheus_text_format(spool, daemon):
    daemon.start()
    for i in range(3):
        drop(spool, "echo", f"{i}.json", i)
    wait_for(lambda: ended(spool, 3), what="the events")
    metrics = spool / "run" / "metrics.prom"

    def scraped() -> dict[str, float]:
        lines = metrics.read_text().splitlines() if metrics.exists() else []
        return {k: float(v) for k, v in (line.rsplit(" ", 1) for line in lines if line[:1] != "#")}

    wait_for(lambda: scraped().get('fnspool_events{state="Succeeded"}') == 3, what="metrics")
    figures = scraped()
    assert figures['fnspool_attempts_total{function="echo",outcome="Succeeded"}'] == 3
    assert 1 <= figures['fnspool_cold_starts_total{function="echo"}'] <= 2
    assert figures['fnspool_attempt_duration_seconds_count{function="echo"}'] == 3
    assert figures['fnspool_attempt_duration_seconds_bucket{function="echo",le="+Inf"}'] == 3
    assert figures['fnspool_attempt_duration_seconds_bucket{function="echo",le="300.0"}'] == 3
    assert figures["fnspool_queue_depth"] == 0
    assert "# TYPE fnspool_attempts_total counter" in metrics.read_text()
    assert "# TYPE fnspool_attempt_duration_seconds histogram" in metrics.read_text()
    (spool / "incoming" / "echo" / "bad.json").write_text("{nope")
    wait_for(lambda: scraped().get('fnspool_files_total{outcome="rejected"}') == 1, what="counted")
    assert scraped()['fnspool_files_total{outcome="accepted"}'] == 3
    printed = fnspool(spool, "metrics").stdout
    assert 'fnspool_files_total{outcome="rejected"} 1' in printed


def test_a_file_left_aside_by_a_crash_mid_removal_is_taken_if_not_journaled(spool, daemon):
    # the instant between moving a journaled file aside and deleting it: a file renamed over it
    # meanwhile was moved aside in its place, and must not be lost when the daemon dies there
    folder = spool / "incoming" / "echo"
    folder.mkdir(parents=True)
    (folder / ".fnspool-removing.1234.1.1").write_text('{"swapped": true}')
    daemon.start()
    done = wait_for(lambda: ended(spool, 1), what="the recovered payload")
    assert fnspool_json(spool, "events", "get", done[0]["id"])["payload"] == {"swapped": True}
    assert not [p for p in folder.iterdir() if p.name.startswith(".fnspool-removing.")]


def _file_helper_of(daemon_pid: int) -> int | None:
    """The pid of the daemon's file helper process."""
    for entry in filter(str.isdigit, os.listdir("/proc")):
        try:
            ppid = int(Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()[1])
            command = Path(f"/proc/{entry}/cmdline").read_bytes()
        except (OSError, IndexError, ValueError):
            continue
        if ppid == daemon_pid and b"daemon.files.filework" in command:
            return int(entry)
    return None


def test_events_keep_their_logs_when_the_file_helper_is_killed(spool, daemon):
    d = daemon.start()
    helper = wait_for(lambda: _file_helper_of(d.pid), what="the daemon's file helper")
    assert fnspool_json(spool, "status")["file_helper"] == {"pid": helper, "running": True}
    os.kill(helper, signal.SIGKILL)
    for i in range(20):
        drop(spool, "hello", f"{i:02d}.json", {"i": i})  # it prints: each event has a file
    done = wait_for(lambda: ended(spool, 20), what="20 events to end")
    assert {e["state"] for e in done} == {"Succeeded"}
    for event in done:
        log = (spool / "logs" / "hello" / f"{event['id']}.log").read_text()
        start, end = (f"FC Invoke {s} RequestId: {event['id']}" for s in ("Start", "End"))
        assert log.index(start) < log.index(f"request {event['id']}, attempt 1") < log.index(end)
    wait_for(lambda: not list((spool / "incoming" / "hello").iterdir()), what="incoming/ emptied")
    assert "the file helper failed" in d.log_text()
    helper_state = {"pid": helper, "running": False}
    wait_for(lambda: fnspool_json(spool, "status")["file_helper"] == helper_state, what="status")
    assert "file helper: not running" in fnspool(spool, "status").stdout
    assert d.stop() == 0


def test_sigterm_while_starting_is_a_clean_stop(spool, daemon):
    # a journal that takes a while to replay keeps the daemon starting (`systemctl stop` during
    # activation): the stop must wait for the start, then drain and exit 0, never die by signal
    journal = spool / "journal"
    journal.mkdir(parents=True)
    hook = {"instance": "i", "function": "echo", "hook": "pre_freeze", "started": 1.0}
    records = (
        encode_record(HookRun(seq=seq, at=1.0, duration_ms=0.1, ok=True, **hook))
        for seq in range(1, 300_001)
    )
    (journal / segment_name(1)).write_bytes(b"".join(records))
    d = daemon.start(wait_ready=False)
    wait_for(lambda: lock.holder(spool / "run") == d.pid, what="the daemon to take its lock")
    assert not (spool / "run" / "status.json").exists(), "ready already: replay a longer journal"
    d.signal(signal.SIGTERM)
    assert d.proc.wait(60) == 0, d.log_text()
    assert "SIGTERM: draining" in d.log_text()
    status = json.loads((spool / "run" / "status.json").read_text())
    assert status["stopped"] and not status["ready"]


def test_a_burst_does_not_freeze_instances_between_its_events(spool, daemon):
    # an instance freed while events wait goes to the next one: no PreFreeze (nor SIGSTOP and
    # SIGCONT) per event, only once the queue has run dry (the files wait before the start, so
    # the first scan queues them all at once)
    code = spool / "functions" / "busy"
    code.mkdir(parents=True)
    (code / "index.py").write_text(
        "def handler(event, context):\n    return event\n\n\ndef pre_freeze(context):\n    pass\n"
    )
    (spool / "functions" / "busy.toml").write_text(
        'handler = "index.handler"\nmax_instances = 2\n'
        '[lifecycle]\npre_freeze = "index.pre_freeze"\n'
    )
    for i in range(400):
        drop(spool, "busy", f"b{i:03d}.json", {"i": i})
    d = daemon.start()
    done = wait_for(lambda: ended(spool, 400, "busy"), 120, "400 events to end")
    assert {e["state"] for e in done} == {"Succeeded"}
    freezes = [r for r in journal_records(spool, HookRun) if r.hook == "pre_freeze"]
    # one when each instance went idle at the end (the old pool froze dozens to hundreds)
    assert len(freezes) <= 4, f"{len(freezes)} PreFreeze runs for 400 events in one burst"
    assert d.stop() == 0


def test_a_duration_histogram_counts_each_attempt_in_its_bucket_and_every_one_above():
    from daemon.metrics import FileCounts, Metrics
    from daemon.model import State

    metrics = Metrics()
    for ms in (3, 40, 40, 7000, 900_000):
        metrics.attempt_ended("f", State.SUCCEEDED, ms)
    text = metrics.render({}, {}, 0, FileCounts())
    lines = dict(line.rsplit(" ", 1) for line in text.splitlines() if line[:1] != "#")
    bucket = 'fnspool_attempt_duration_seconds_bucket{{function="f",le="{}"}}'
    assert lines[bucket.format("0.005")] == "1"
    assert lines[bucket.format("0.05")] == "3"
    assert lines[bucket.format("10.0")] == "4"
    assert lines[bucket.format("300.0")] == "4"
    assert lines[bucket.format("+Inf")] == "5"
    assert lines['fnspool_attempt_duration_seconds_count{function="f"}'] == "5"
