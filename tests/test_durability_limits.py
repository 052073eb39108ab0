"""What the daemon must survive without losing or repeating work: a definition saved with an
error, a result too large for a journal record, a handler that kills the daemon."""

from __future__ import annotations

import functools
import json
import signal
import sys
from collections import Counter
from pathlib import Path

import msgspec
import pytest
from conftest import DaemonProcess, drop, events, fnspool, fnspool_json, journal_records, wait_for
from runtime_helpers import on_uvloop, raw

from daemon.fcrecord import encode_within
from daemon.functions import FunctionDef
from daemon.journal import MAX_RECORD_BYTES, encode_record
from daemon.limits import MAX_ERROR_CHARS, MAX_VALUE_BYTES, bounded_error
from daemon.model import ErrorInfo, State, Transition
from daemon.runtimes.http import HttpInstance
from daemon.supervise.supervisor import Supervisor

ENDED = "Succeeded,Failed,Expired,Invalid,Stopped"


def define(spool: Path, name: str, toml: str, code: str | None = None) -> Path:
    """Write functions/NAME.toml (and functions/NAME/index.py); the definition's path."""
    if code is not None:
        (spool / "functions" / name).mkdir(parents=True, exist_ok=True)
        (spool / "functions" / name / "index.py").write_text(code)
    path = spool / "functions" / f"{name}.toml"
    path.write_text(toml)
    return path


def of(spool: Path, function: str, *args: str) -> list[dict]:
    return events(spool, "--function", function, *args)


def status_file(spool: Path) -> dict:
    return json.loads((spool / "run" / "status.json").read_text())


# -- a definition saved with an error keeps the last good one -------------------------------------

GATED = """
import os, time

def handler(event, context):
    deadline = time.monotonic() + 60
    while not os.path.exists("gate") and time.monotonic() < deadline:
        time.sleep(0.01)
    return {"version": os.environ["VERSION"], "n": event["n"]}
"""


def test_a_broken_definition_keeps_serving_the_last_good_one(spool, daemon):
    toml = define(spool, "gated", 'max_instances = 1\nenvironment = { VERSION = "1" }\n', GATED)
    d = daemon.start()
    for n in range(3):
        drop(spool, "gated", f"a{n}.json", {"n": n})
    wait_for(lambda: len(of(spool, "gated", "--status", "Running")) == 1, what="one to run")
    assert len(of(spool, "gated")) == 3  # two wait in the queue behind the gate

    toml.write_text('max_instances = "one"\nenvironment = { VERSION = "1" }\n')
    wait_for(lambda: "gated" in status_file(spool)["definition_errors"], what="the error")
    for n in range(3, 5):
        drop(spool, "gated", f"b{n}.json", {"n": n})
    wait_for(lambda: len(of(spool, "gated")) == 5, what="the new files to be accepted")
    assert not (spool / "rejected").exists() or not list((spool / "rejected").iterdir())

    (listed,) = [f for f in fnspool_json(spool, "functions", "list") if f["name"] == "gated"]
    assert "max_instances" in listed["error"] and listed["last_good_in_use"] is True
    text = fnspool(spool, "functions", "list", check=False).stdout
    assert "ERROR" in text and "runs its last good definition" in text
    said = fnspool(spool, "status").stdout
    assert "definition error: gated:" in said and "last good definition stays in use" in said
    assert "gated.toml" in d.log_text() and "last good definition stays in use" in d.log_text()

    (spool / "functions" / "gated" / "gate").touch()
    done = wait_for(lambda: of(spool, "gated", "--status", ENDED) if len(
        of(spool, "gated", "--status", ENDED)) == 5 else None, what="the queue to run")  # fmt: skip
    assert {e["state"] for e in done} == {"Succeeded"}
    results = [fnspool_json(spool, "events", "get", e["id"])["result"] for e in done]
    assert sorted(r["n"] for r in results) == list(range(5))
    assert {r["version"] for r in results} == {"1"}

    toml.write_text('max_instances = 1\nenvironment = { VERSION = "2" }\n')
    wait_for(lambda: not status_file(spool)["definition_errors"], what="the fix to be loaded")
    assert status_file(spool)["last_good_definitions"] == []
    drop(spool, "gated", "c.json", {"n": 9})
    wait_for(lambda: len(of(spool, "gated", "--status", ENDED)) == 6, what="the fixed one to run")
    (last,) = [e for e in of(spool, "gated", "--status", ENDED) if e["id"] not in
               {e["id"] for e in done}]  # fmt: skip
    assert fnspool_json(spool, "events", "get", last["id"])["result"] == {"version": "2", "n": 9}


def test_a_definition_never_good_is_refused_as_before(spool, daemon):
    define(spool, "never", 'max_instances = "one"\n', "def handler(e, c):\n    return 1\n")
    daemon.start()
    assert "never" in status_file(spool)["definition_errors"]
    assert status_file(spool)["last_good_definitions"] == []
    (listed,) = [f for f in fnspool_json(spool, "functions", "list") if f["name"] == "never"]
    assert listed["last_good_in_use"] is False
    drop(spool, "never", "x.json", {})
    (reason,) = wait_for(lambda: list((spool / "rejected").glob("*.reason.json")), what="refusal")
    assert json.loads(reason.read_text())["reason"] == "unknown_function"


# -- one size limit for what enters a record ------------------------------------------------------

HUGE = """
import os

def handler(event, context):
    with open("runs", "a") as f:
        f.write(event["kind"] + "\\n")
    if event["kind"] == "error":
        raise ValueError("e" * (20 << 20))
    return "x" * (20 << 20)
"""


def test_results_and_errors_over_the_limit_fail_and_never_run_again(spool, daemon):
    exe = sys.executable
    define(spool, "huge", '[async]\nmax_retries = 0\non_failure = ""\n', HUGE)
    blast = "import sys; sys.stdout.write('x' * (20 << 20))"
    define(spool, "blast", f'runtime = "exec"\ncommand = [{json.dumps(exe)}, "-c", '
           f'{json.dumps(blast)}]\n[async]\nmax_retries = 1\nbackoff = 0.01\non_failure = ""\n',
           "")  # fmt: skip
    d = daemon.start()
    drop(spool, "huge", "result.json", {"kind": "result"})
    drop(spool, "huge", "error.json", {"kind": "error"})
    drop(spool, "blast", "out.json", {})
    wait_for(lambda: len(events(spool, "--status", ENDED)) == 3, 60, "the three to end")
    by_kind = check_ended(spool)
    result, error, out = by_kind["result"], by_kind["error"], by_kind["out"]
    assert result["error"]["type"] == "ResultTooLarge"
    assert "20,971,522 bytes" in result["error"]["message"]
    assert f"{MAX_VALUE_BYTES:,}-byte limit" in result["error"]["message"]
    assert out["error"]["type"] == "ResultTooLarge" and out["attempts"] == 2  # retried as usual
    assert "stdout is 20,971,520 bytes" in out["error"]["message"]
    assert error["error"]["type"] == "ValueError"
    assert len(error["error"]["message"]) < MAX_ERROR_CHARS + 100
    assert "characters cut" in error["error"]["message"]

    d.signal(signal.SIGKILL)
    d.proc.wait()
    daemon.start()
    assert status_file(spool)["journal_damage"] == []
    drop(spool, "echo", "after.json", {"n": 1})  # the queue has run by the time this ends
    wait_for(lambda: of(spool, "echo", "--status", "Succeeded"), what="a later event to run")
    assert check_ended(spool) == by_kind
    assert sorted((spool / "functions" / "huge" / "runs").read_text().split()) == [
        "error",
        "result",
    ]


def check_ended(spool: Path) -> dict[str, dict]:
    """The three events, Failed, each with its whole record, by what it tried."""
    found = {}
    for e in events(spool, "--function", "huge") + events(spool, "--function", "blast"):
        full = fnspool_json(spool, "events", "get", e["id"])
        assert full["state"] == "Failed", full["history"]
        assert [h.get("reason") for h in full["history"]].count("Interrupted") == 0
        kind = full["payload"].get("kind", "out")
        found[kind] = {k: full[k] for k in ("state", "attempts", "error", "history")}
    return found


@on_uvloop
async def test_an_http_answer_over_the_limit_fails_the_attempt(tmp_path: Path) -> None:
    code = Path(__file__).parent / "functions" / "http_runtime"
    server = [sys.executable, "-u", "server.py"]
    instance = HttpInstance(
        FunctionDef(name="custom", runtime="http", command=server, code_dir=str(code)),
        supervisor=Supervisor(),
    )
    await instance.start()
    try:
        text = "y" * (MAX_VALUE_BYTES + 1)
        outcome = await instance.invoke("r", raw({"text": text}), 1, 30.0, tmp_path / "l")
        assert not outcome.ok and outcome.error is not None
        assert outcome.error.type == "ResultTooLarge"
        assert f"answer is {MAX_VALUE_BYTES + 1:,} bytes" in outcome.error.message
        fits = await instance.invoke("s", raw({"text": "y" * 1000}), 1, 30.0, tmp_path / "m")
        assert fits.ok
    finally:
        await instance.stop()


def test_the_largest_record_reads_back():
    """A result at the limit with the largest error still makes a record the journal reads."""
    error = bounded_error(
        ErrorInfo(type="T" * 10_000, message="\x01" * (1 << 20), traceback="\x01" * (1 << 20))
    )
    assert len(error.type) == 200 and len(error.message) < MAX_ERROR_CHARS + 100
    assert error.traceback is not None and len(error.traceback) < MAX_ERROR_CHARS + 100
    result = msgspec.Raw(b'"' + b"r" * (MAX_VALUE_BYTES - 2) + b'"')
    rec = Transition(id="x" * 128, function="f" * 64, state=State.STOPPED, result=result,
                     error=error, reason="forced", instance="i" * 200)  # fmt: skip
    assert len(encode_record(rec)) < MAX_RECORD_BYTES
    short = ErrorInfo(type="E", message="short", traceback="tb")
    assert bounded_error(short) is short


def test_a_destination_record_for_a_function_is_held_to_the_limit():
    payload, result = json.dumps({"p": "a" * (5 << 20)}), json.dumps("b" * (6 << 20))
    record = {"requestContext": {"requestId": "r"}, "requestPayload": payload,
              "responsePayload": result, "fnspool": {"node": "n"}}  # fmt: skip
    data = encode_within(record)
    assert len(data) <= MAX_VALUE_BYTES
    out = json.loads(data)
    # FC's fields keep their type (JSON text); what was left out is said under fnspool
    assert out["responsePayload"] == "null" and out["requestPayload"] == payload
    assert out["fnspool"] == {"node": "n", "truncated": {"responsePayload": len(result)}}
    small = {"requestPayload": "1", "responsePayload": "2"}
    assert json.loads(encode_within(small)) == small


# -- interrupted attempts are bounded -------------------------------------------------------------

KILLER = """
import os, time
from pathlib import Path

def on_file(rid, state):
    marks = (f'"id":"{rid}"', f'"state":"{state}"')
    for segment in Path(os.environ["JOURNAL"]).glob("segment-*.jsonl"):
        if any(all(m in line for m in marks) for line in segment.read_text().splitlines()):
            return True
    return False

def handler(event, context):
    first = not os.path.exists("runs")
    with open("runs", "a") as f:
        f.write(f"{context.attempt}\\n")
    deadline = time.monotonic() + 60
    while first and not on_file(context.request_id, os.environ["WAIT_FOR"]):
        if time.monotonic() > deadline:
            raise RuntimeError("the record never reached the journal")
        time.sleep(0.01)
    os.kill(os.getppid(), 9)
    time.sleep(60)
"""


@pytest.mark.parametrize("wait_for_record", ["Running", "Dequeued"])
def test_a_handler_that_kills_the_daemon_ends_failed_after_the_bound(
    spool, daemon, wait_for_record
):
    """With WAIT_FOR=Running the first kill comes once the attempt is on file; with Dequeued it
    may come before (a first attempt starts before its record is written, and is then run again
    as the same attempt, on file before it starts: one more start at most)."""
    bound = 2
    define(spool, "killer", f'environment = {{ JOURNAL = "{spool / "journal"}", '
           f'WAIT_FOR = "{wait_for_record}" }}\n'
           f'[async]\nmax_interruptions = {bound}\non_failure = ""\n', KILLER)  # fmt: skip
    extra = 0 if wait_for_record == "Running" else 1
    d = daemon.start()
    drop(spool, "killer", "k.json", {})
    restarts = 0
    while True:  # as systemd's Restart=on-failure would
        what = wait_for(functools.partial(next_step, spool, d), 60, "a kill or the event's end")
        if what == "failed":
            break
        assert d.proc.returncode == -signal.SIGKILL
        assert restarts <= bound + extra, "the event runs at every start"
        d = daemon.start(wait_ready=False)
        restarts += 1
    wait_for(d.ready, 60, "the daemon to be ready")
    assert bound + 1 <= restarts <= bound + 1 + extra
    (event,) = of(spool, "killer")
    full = fnspool_json(spool, "events", "get", event["id"])
    # a first kill before its Running was on file is an attempt that may not have started: it
    # shows, and is not held against the bound
    assert full["state"] == "Failed" and bound + 1 <= full["attempts"] <= bound + 1 + extra
    assert full["error"]["type"] == "TooManyInterruptions"
    assert f"max_interruptions ({bound})" in full["error"]["message"]
    reasons = [(h["state"], h.get("reason")) for h in full["history"]]
    assert reasons.count(("Retrying", "Interrupted")) == full["attempts"] - 1
    assert reasons[-1] == ("Failed", "Interrupted")
    runs = (spool / "functions" / "killer" / "runs").read_text().split()
    assert set(runs) <= {str(n) for n in range(1, full["attempts"] + 1)}
    assert len(runs) == restarts  # each start but the last ran it once


def next_step(spool: Path, d: DaemonProcess) -> str | None:
    """What happened first: the killer's end in the journal, or the daemon's death."""
    for rec in journal_records(spool, Transition):
        if rec.function == "killer" and rec.state is State.FAILED:
            return "failed"
    return "killed" if d.proc is not None and d.proc.poll() is not None else None


PICKY = """
import os, time
from pathlib import Path

def dequeued(count):
    found = 0
    for segment in Path(os.environ["JOURNAL"]).glob("segment-*.jsonl"):
        for line in segment.read_text().splitlines():
            found += '"state":"Dequeued"' in line and '"function":"picky"' in line
    return found >= count

def handler(event, context):
    if not event["kill"]:
        return "fine"
    deadline = time.monotonic() + 60
    while not dequeued(1 + int(os.environ["BEHIND"])):  # the others, dequeued ahead
        if time.monotonic() > deadline:
            raise RuntimeError("the events behind were never dequeued ahead")
        time.sleep(0.01)
    os.kill(os.getppid(), 9)
    time.sleep(60)
"""


def test_events_dequeued_behind_a_killer_are_not_held_against_their_bound(spool, daemon):
    """With max_interruptions = 0 the first cut-off attempt ends an event; the events dequeued
    ahead for the killer's instance were cut off too, but never started: they run."""
    behind = 5
    journal = spool / "journal"
    define(spool, "picky", f'max_instances = 1\nenvironment = {{ JOURNAL = "{journal}", '
           f'BEHIND = "{behind}" }}\n[async]\nmax_interruptions = 0\non_failure = ""\n',
           PICKY)  # fmt: skip
    d = daemon.start()
    drop(spool, "picky", "killer.json", {"kill": True})
    wait_for(lambda: of(spool, "picky", "--status", "Running"), 30, "the killer to run")
    for n in range(behind):
        drop(spool, "picky", f"innocent-{n}.json", {"kill": False})
    wait_for(lambda: d.proc.poll() is not None, 60, "the killer to kill the daemon")
    daemon.start()

    def all_ended() -> list[dict] | None:
        found = of(spool, "picky")
        ended = [e for e in found if e["state"] in ("Failed", "Succeeded")]
        return ended if len(ended) == behind + 1 else None

    done = wait_for(all_ended, 60, "every event to end")
    states = Counter(e["state"] for e in done)
    assert states == {"Failed": 1, "Succeeded": behind}, states
    for event in done:
        full = fnspool_json(spool, "events", "get", event["id"])
        reasons = [(h["state"], h.get("reason")) for h in full["history"]]
        if full["state"] == "Failed":
            assert full["error"]["type"] == "TooManyInterruptions"
            assert reasons[-1] == ("Failed", "Interrupted")
        else:  # cut off by the kill while dequeued ahead, then run
            assert ("Retrying", "Interrupted") in reasons, reasons
