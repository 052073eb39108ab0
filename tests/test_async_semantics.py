"""Stop (forced, graceful), re-invoke, destinations, expiry and durable requests, through the
real daemon and the CLI; stops and retries with the functions on this machine and placed on Ray
(`placement`)."""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path

import pytest
from conftest import drop, events, fnspool, fnspool_json, gone, journal_records, wait_for

from daemon.model import HookRun, Request, State, Transition


def newest(spool: Path, function: str) -> dict | None:
    found = events(spool, "--function", function)
    return found[0] if found else None


def event(spool: Path, request_id: str) -> dict:
    return fnspool_json(spool, "events", "get", request_id)


def state_of(spool: Path, request_id: str) -> str:
    return event(spool, request_id)["state"]


def running(spool: Path, function: str, payload: object) -> dict:
    """Drop an event and wait until its handler runs."""
    drop(spool, function, f"{function}.json", payload)
    found = wait_for(lambda: newest(spool, function), what="the event")
    wait_for(lambda: state_of(spool, found["id"]) == "Running", what="it to run")
    return event(spool, found["id"])


def pid_of_instance(spool: Path, function: str) -> int | None:
    status = json.loads((spool / "run" / "status.json").read_text())
    found = status["instances"].get(function)
    return found[0]["pid"] if found else None


def test_forced_stop_runs_prestop_beside_the_handler_then_kills(spool, placement):
    placement.start("sleeper")
    ev = running(spool, "sleeper", {"sleep": 30})
    pid = wait_for(lambda: pid_of_instance(spool, "sleeper"), what="the instance in status")
    out = fnspool(spool, "events", "stop", ev["id"], "--wait")
    assert f"{ev['id']} Stopped" in out.stdout
    done = event(spool, ev["id"])
    assert [h["state"] for h in done["history"]][-2:] == ["Stopping", "Stopped"]
    assert done["error"]["type"] == "Stopped"
    assert placement.nodes_of(done) <= placement.where
    wait_for(lambda: gone(pid), what="the instance to be killed")
    hooks = [h for h in journal_records(spool, HookRun) if h.hook == "pre_stop"]
    assert [(h.request_id, h.ok) for h in hooks] == [(ev["id"], True)]
    log = Path(done["log_path"]).read_text()
    assert f"FC PreStop Start RequestId: {ev['id']}" in log and "pre-stop: flushing" in log
    # a stopped event goes to on_failure (the dead-letter folder) with condition Stopped
    dead = spool / "destinations" / "dead-letter" / f"{ev['id']}.json"
    record = json.loads(wait_for(lambda: dead.exists() and dead.read_text(), what="dead letter"))
    assert record["requestContext"]["condition"] == "Stopped"
    assert json.loads(record["requestPayload"]) == {"sleep": 30}
    assert json.loads(record["responsePayload"]) == {"errorMessage": "stopped by request"}


def test_graceful_stop_keeps_the_handlers_return_value(spool, placement):
    placement.start("graceful")
    ev = running(spool, "graceful", {})
    # the handler sets its SIGTERM handler first, then prints in its loop
    log_path = Path(ev["log_path"])
    wait_for(lambda: log_path.exists() and "False" in log_path.read_text(), what="its loop")
    fnspool(spool, "events", "stop", ev["id"], "--graceful", "--wait")
    done = event(spool, ev["id"])
    assert done["state"] == "Stopped" and done["result"] == "END"
    assert placement.nodes_of(done) <= placement.where
    log = Path(done["log_path"]).read_text()
    assert "[PLATFORM] Signal received successfully." in log
    assert "do something before shutdown." in log and "Graceful shutdown." in log


def test_graceful_stop_of_a_handler_that_dies_of_sigterm_is_439(spool, placement):
    placement.start("sleeper")
    ev = running(spool, "sleeper", {"sleep": 30})
    fnspool(spool, "events", "stop", ev["id"], "--graceful", "--wait")
    done = event(spool, ev["id"])
    assert done["state"] == "Stopped"
    assert done["error"] == {
        "type": "UserProcessExit",
        "message": "User process exit when running",
        "code": 439,
    }
    assert done["history"][-1]["usage"]["signal"] == signal.SIGTERM
    assert placement.nodes_of(done) <= placement.where
    assert "[PLATFORM] Signal received successfully." in Path(done["log_path"]).read_text()


def test_graceful_stop_is_forced_after_the_grace_period(spool, placement):
    placement.start("deaf")
    ev = running(spool, "deaf", {"sleep": 30})
    wait_for(lambda: "ignoring SIGTERM" in Path(ev["log_path"]).read_text(), what="the handler")
    fnspool(spool, "events", "stop", ev["id"], "--graceful", "--wait")
    done = event(spool, ev["id"])
    assert done["state"] == "Stopped" and done["error"]["type"] == "Stopped"
    assert done["duration_ms"] < 10_000


def test_a_forced_stop_escalates_a_graceful_one_in_progress(spool, placement):
    placement.start("patient")
    ev = running(spool, "patient", {"sleep": 600})  # SIGTERM ignored, a grace of 600 s
    wait_for(lambda: "ignoring SIGTERM" in Path(ev["log_path"]).read_text(), what="the handler")
    fnspool(spool, "events", "stop", ev["id"], "--graceful")
    wait_for(lambda: state_of(spool, ev["id"]) == "Stopping", what="the graceful stop")
    again = fnspool(spool, "events", "stop", ev["id"], "--graceful", check=False)
    assert again.returncode == 1 and "already being stopped (graceful)" in again.stderr
    out = fnspool(spool, "events", "stop", ev["id"], "--wait")
    assert "forcing the graceful stop now" in out.stdout and f"{ev['id']} Stopped" in out.stdout
    done = event(spool, ev["id"])
    assert [(h["state"], h.get("reason")) for h in done["history"]][-2:] == [
        ("Stopping", "graceful"),
        ("Stopped", "forced"),
    ]
    assert done["error"]["type"] == "Stopped"
    asked = [(r.graceful, r.outcome) for r in journal_records(spool, Request) if r.id == ev["id"]]
    assert asked == [(True, "applied"), (False, "applied")]  # the refused one never reached it


def test_stop_before_running_and_while_retrying(spool, daemon):
    daemon.start()
    out = fnspool(spool, "invoke", "echo", "--payload", "{}", "--delay", "60")
    delayed = out.stdout.strip()
    wait_for(lambda: state_of(spool, delayed) == "Enqueued", what="the delayed event")
    fnspool(spool, "events", "stop", delayed, "--wait")
    states = [h["state"] for h in event(spool, delayed)["history"]]
    assert states == ["Enqueued", "Stopping", "Stopped"]  # through Stopping, as on FC

    drop(spool, "slowfail", "a.json", 1)
    failing = wait_for(lambda: newest(spool, "slowfail"), what="the event")
    wait_for(lambda: state_of(spool, failing["id"]) == "Retrying", what="Retrying")
    fnspool(spool, "events", "stop", failing["id"], "--wait")
    done = event(spool, failing["id"])
    assert [h["state"] for h in done["history"]][-3:] == ["Retrying", "Stopping", "Stopped"]
    assert done["attempts"] == 1


def test_stopping_an_ended_event_is_refused_naming_its_state(spool, daemon):
    daemon.start()
    out = fnspool(spool, "invoke", "echo", "--payload", "{}", "--wait")
    request_id = json.loads(fnspool(spool, "events", "list", "--json").stdout)[0]["id"]
    assert out.returncode == 0
    refused = fnspool(spool, "events", "stop", request_id, check=False)
    assert refused.returncode == 1
    assert "already ended: Succeeded" in refused.stderr and "Traceback" not in refused.stderr
    missing = fnspool(spool, "events", "stop", "no-such-id", check=False)
    assert missing.returncode == 4 and "not found" in missing.stderr


def test_reinvoke_one_and_in_bulk_with_lineage(spool, daemon):
    daemon.start()
    for n in range(3):
        drop(spool, "fail", f"{n}.json", n)
    wait_for(lambda: len(events(spool, "--function", "fail", "--status", "Failed")) == 3)
    first = events(spool, "--function", "fail")[-1]
    out = fnspool(
        spool,
        "events",
        "reinvoke",
        first["id"],
        "--payload",
        '"x"',
        "--wait",
        "--json",
        check=False,
    )
    assert out.returncode == 1  # the new event failed too, as its function always does
    again = json.loads(out.stdout)
    assert len(again) == 1 and again[0]["retry_of"] == first["id"]
    assert again[0]["state"] == "Failed"
    new = event(spool, again[0]["id"])
    assert new["retry_of"] == first["id"] and new["payload"] == "x"
    assert new["function"] == "fail" and new["state"] == "Failed"

    bulk = fnspool(
        spool, "events", "reinvoke", "--function", "fail", "--status", "Failed", "--yes", "--json"
    )
    rows = json.loads(bulk.stdout)
    assert len(rows) == 4 and {r["retry_of"] for r in rows} >= {first["id"]}
    wait_for(lambda: len(events(spool, "--function", "fail")) == 8, what="the new events")
    refused = fnspool(spool, "events", "reinvoke", "--function", "fail", check=False, input="")
    assert refused.returncode == 2 and "--yes" in refused.stderr
    # no id and no filter: every ended event, succeeded ones too; refused, even with --yes
    unchosen = fnspool(spool, "events", "reinvoke", "--yes", check=False)
    assert unchosen.returncode == 2 and "give an id or a filter" in unchosen.stderr
    assert len(events(spool, "--function", "fail")) == 8
    requests = journal_records(spool, Request)
    assert all(r.uid == os.getuid() for r in requests)


def test_reinvoke_of_a_running_event_is_refused(spool, daemon):
    daemon.start()
    ev = running(spool, "sleeper", {"sleep": 30})
    refused = fnspool(spool, "events", "reinvoke", ev["id"], check=False)
    assert refused.returncode == 1 and "has not ended: Running" in refused.stderr


def test_destinations_success_folder_dead_letter_and_function(spool, daemon):
    daemon.start()
    drop(spool, "sleeper", "ok.json", {"sleep": 0})
    ok = wait_for(lambda: newest(spool, "sleeper"), what="the event")
    path = spool / "destinations" / "ok" / f"{ok['id']}.json"
    record = json.loads(wait_for(lambda: path.exists() and path.read_text(), what="on_success"))
    assert record["requestContext"] == {
        "requestId": ok["id"],
        "functionArn": "fnspool:function:sleeper",
        "condition": "Success",
        "approximateInvokeCount": 1,
    }
    assert record["responseContext"] == {"statusCode": 200}
    assert json.loads(record["requestPayload"]) == {"sleep": 0}
    assert "pid" in json.loads(record["responsePayload"])
    assert isinstance(record["timestamp"], int)

    drop(spool, "relay", "r.json", {"sleep": 0})
    relayed = wait_for(lambda: newest(spool, "collector"), what="the collector's event")
    failed = newest(spool, "relay")
    assert relayed["id"] == f"{failed['id']}-UnhandledInvocationError"
    wait_for(lambda: state_of(spool, relayed["id"]) == "Succeeded", what="the collector")
    got = event(spool, relayed["id"])["result"]
    assert got["requestContext"]["condition"] == "UnhandledInvocationError"
    assert got["responseContext"]["functionError"] == "UnhandledInvocationError"
    assert got["fnspool"]["error"]["type"] == "RuntimeError"
    assert json.loads(got["responsePayload"]) == {"errorMessage": "failed on attempt 1"}


def test_undelivered_records_are_delivered_once_after_a_restart(spool, daemon):
    blocker = spool / "destinations" / "ok"
    blocker.parent.mkdir(parents=True)
    blocker.write_text("a file where the folder should be")
    d = daemon.start()
    drop(spool, "sleeper", "ok.json", {"sleep": 0})
    ok = wait_for(lambda: newest(spool, "sleeper"), what="the event")
    wait_for(lambda: "destination delivery failed" in d.log_text(), what="the failed delivery")
    assert d.stop() == 0
    blocker.unlink()
    d = daemon.start()
    path = blocker / f"{ok['id']}.json"
    wait_for(lambda: path.exists(), what="delivery at start-up")
    assert d.stop() == 0
    daemon.start()  # a second restart delivers nothing again
    fnspool(spool, "status")
    assert sorted(p.name for p in blocker.iterdir()) == [f"{ok['id']}.json"]


def test_requests_written_while_the_daemon_is_down_wait_for_it(spool, daemon):
    d = daemon.start()
    ev = running(spool, "sleeper", {"sleep": 30})
    done_first = fnspool(spool, "invoke", "echo", "--payload", "1", "--wait")
    assert done_first.returncode == 0
    echo_id = events(spool, "--function", "echo")[0]["id"]
    d.kill()
    stop = fnspool(spool, "events", "stop", ev["id"])
    assert "not running" in stop.stderr and stop.returncode == 0
    again = fnspool(spool, "events", "reinvoke", echo_id)
    assert "not running" in again.stderr
    new_id = again.stdout.strip()
    assert len(list((spool / "control").iterdir())) == 2
    daemon.start()
    wait_for(lambda: state_of(spool, ev["id"]) == "Stopped", what="the stop to be applied")
    wait_for(lambda: state_of(spool, new_id) == "Succeeded", what="the re-invoke")
    assert event(spool, new_id)["retry_of"] == echo_id
    assert not list((spool / "control").iterdir())
    wait_for(lambda: len(journal_records(spool, Request)) == 2, what="both answers")
    answered = {r.action: r for r in journal_records(spool, Request)}
    assert answered["stop"].uid == os.getuid() and answered["stop"].outcome == "applied"


def test_malformed_control_files_are_set_aside_with_a_reason(spool, daemon):
    daemon.start()
    (spool / "control" / "junk.json").write_text('{"action": "explode", "id": 3}')
    reason = spool / "rejected" / "junk.json.reason.json"
    wait_for(reason.exists, what="the reason")
    assert json.loads(reason.read_text())["reason"] == "bad_request"
    refused = wait_for(
        lambda: [r for r in journal_records(spool, Request) if r.name == "junk.json"],
        what="the answer",
    )
    assert refused and refused[0].outcome == "refused"
    out = fnspool(spool, "invoke", "echo", "--payload", "2", "--wait")
    assert out.returncode == 0  # still serving


def test_an_event_older_than_max_event_age_expires_instead_of_running(spool, daemon):
    (spool / "functions" / "brief.toml").write_text(
        'code = "lifecycle"\nhandler = "index.handler"\n[async]\nmax_event_age = 1\n'
    )
    daemon.start()
    out = fnspool(
        spool, "invoke", "brief", "--payload", "{}", "--delay", "1.5", "--wait", check=False
    )
    assert out.returncode == 1
    ev = newest(spool, "brief")
    done = event(spool, ev["id"])
    assert done["state"] == "Expired" and done["error"]["type"] == "EventExpired"
    assert [h["state"] for h in done["history"]] == ["Enqueued", "Dequeued", "Expired"]
    dead = spool / "destinations" / "dead-letter" / f"{ev['id']}.json"
    record = json.loads(wait_for(lambda: dead.exists() and dead.read_text(), what="dead letter"))
    assert record["requestContext"]["condition"] == "EventAgeExceeded"


def test_a_flaky_handler_succeeds_on_its_third_attempt(spool, placement):
    placement.start("flaky")
    drop(spool, "flaky", "a.json", {})
    ev = wait_for(lambda: newest(spool, "flaky"), what="the event")
    wait_for(lambda: state_of(spool, ev["id"]) == "Succeeded", what="success")
    done = event(spool, ev["id"])
    assert done["attempts"] == 3 and done["result"] == {"attempt": 3}
    assert [h["state"] for h in done["history"]] == [
        "Enqueued", "Dequeued", "Running", "Retrying", "Running", "Retrying", "Running",
        "Succeeded",
    ]  # fmt: skip
    assert done["history"][3]["error"]["type"] == "ConnectionError"
    # each attempt's wall time, CPU time and peak memory, and where it ran
    usages = [h["usage"] for h in done["history"] if "usage" in h]
    assert len(usages) == 3
    assert all(u["duration_ms"] > 0 and u["cpu_ms"] >= 0 and u["max_memory_mb"] > 0 for u in usages)
    assert placement.nodes_of(done) <= placement.where


def test_a_handler_asking_for_a_retry_later_runs_again_after_its_delay(spool, placement):
    placement.start("delayed")  # Retry("not yet", delay=1.5) on the first attempt; backoff 60 s
    drop(spool, "delayed", "a.json", {})
    ev = wait_for(lambda: newest(spool, "delayed"), what="the event")
    wait_for(lambda: state_of(spool, ev["id"]) == "Succeeded", what="the second attempt")
    done = event(spool, ev["id"])
    assert done["attempts"] == 2 and done["result"] == {"attempt": 2}
    [retrying] = [
        r
        for r in journal_records(spool, Transition)
        if r.id == ev["id"] and r.state is State.RETRYING
    ]
    assert (retrying.error.type, retrying.error.message) == ("Retry", "not yet")
    assert retrying.not_before is not None
    assert abs(retrying.not_before - retrying.at - 1.5) < 0.5  # the handler's delay, not backoff
    assert placement.nodes_of(done) <= placement.where


def test_retries_exhausted_after_three_attempts_with_one_dead_letter(spool, daemon):
    daemon.start()
    drop(spool, "doomed", "a.json", {"n": 1})
    ev = wait_for(lambda: newest(spool, "doomed"), what="the event")
    wait_for(lambda: state_of(spool, ev["id"]) == "Failed", what="Failed")
    done = event(spool, ev["id"])
    assert done["attempts"] == 3
    assert done["error"]["message"] == "failed on attempt 3"
    wait_for(lambda: list((spool / "destinations" / "dead-letter").glob(f"{ev['id']}*")))
    letters = list((spool / "destinations" / "dead-letter").glob(f"{ev['id']}*"))
    assert [p.name for p in letters] == [f"{ev['id']}.json"]
    record = json.loads(letters[0].read_text())
    assert set(record) >= {
        "timestamp", "requestContext", "requestPayload", "responseContext", "responsePayload",
    }  # fmt: skip
    assert record["requestContext"]["condition"] == "UnhandledInvocationError"
    assert record["requestContext"]["approximateInvokeCount"] == 3
    assert record["responseContext"] == {
        "statusCode": 200, "functionError": "UnhandledInvocationError",
    }  # fmt: skip
    assert json.loads(record["requestPayload"]) == {"n": 1}
    assert [a["error_type"] for a in record["fnspool"]["attempts"]] == ["RuntimeError"] * 3


def test_an_event_expires_while_the_only_instance_is_busy(spool, daemon):
    daemon.start()
    drop(spool, "single", "a.json", {"sleep": 2})
    first = wait_for(lambda: newest(spool, "single"), what="the first event")
    wait_for(lambda: state_of(spool, first["id"]) == "Running", what="it to run")
    drop(spool, "single", "b.json", {})
    second = wait_for(
        lambda: [e for e in events(spool, "--function", "single") if e["id"] != first["id"]],
        what="the second event",
    )[0]
    wait_for(lambda: state_of(spool, second["id"]) == "Expired", what="expiry")
    assert state_of(spool, first["id"]) == "Succeeded"
    assert event(spool, second["id"])["attempts"] == 0


def test_forced_stop_of_an_endless_loop(spool, placement):
    placement.start("spinner")
    ev = running(spool, "spinner", {})
    wait_for(lambda: "spinning" in Path(ev["log_path"]).read_text(), what="the loop")
    pid = wait_for(lambda: pid_of_instance(spool, "spinner"), what="the instance")
    fnspool(spool, "events", "stop", ev["id"], "--wait")
    wait_for(lambda: gone(pid), what="the process to be gone")
    done = event(spool, ev["id"])
    assert done["state"] == "Stopped" and done["attempts"] == 1
    hooks = [h for h in journal_records(spool, HookRun) if h.function == "spinner"]
    assert [(h.hook, h.ok, h.request_id) for h in hooks] == [("pre_stop", True, ev["id"])]
    assert state_of(spool, ev["id"]) == "Stopped"  # never retried


def test_kill_9_during_an_attempt_then_it_succeeds_after_restart(spool, daemon):
    d = daemon.start()
    ev = running(spool, "sleeper", {"first_sleep": 60})
    pid = wait_for(lambda: pid_of_instance(spool, "sleeper"), what="the instance")
    d.kill()
    wait_for(lambda: gone(pid), what="the instance to die with the daemon")
    daemon.start()
    wait_for(lambda: state_of(spool, ev["id"]) == "Succeeded", what="the rerun")
    done = event(spool, ev["id"])
    assert done["attempts"] == 2
    retry = next(h for h in done["history"] if h["state"] == "Retrying")
    assert retry["reason"] == "Interrupted"


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to own a file as another user")
def test_a_request_from_a_user_outside_the_spool_group_is_set_aside(spool, daemon):
    daemon.start()
    out = fnspool(spool, "invoke", "echo", "--payload", "1", "--wait")
    assert out.returncode == 0
    request_id = events(spool, "--function", "echo")[0]["id"]
    staged = spool / "tmp" / ".intruder.tmp"
    staged.write_text(json.dumps({"action": "reinvoke", "id": request_id, "new_id": "x-1"}))
    os.chown(staged, 54321, 54321)
    os.rename(staged, spool / "control" / "intruder.json")
    reason = spool / "rejected" / "intruder.json.reason.json"
    wait_for(reason.exists, what="the reason")
    assert json.loads(reason.read_text())["reason"] == "owner"
    answer = wait_for(
        lambda: [r for r in journal_records(spool, Request) if r.name == "intruder.json"],
        what="the answer",
    )[0]
    assert answer.outcome == "refused" and answer.uid == 54321
    assert len(events(spool, "--function", "echo")) == 1  # nothing re-invoked
