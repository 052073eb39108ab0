"""Destination records as Function Compute writes them (seed 004), parsed with the seed's field
types, and `events get` saying whether and where each one went."""

from __future__ import annotations

import json
import time
from pathlib import Path

import msgspec
from conftest import drop, events, fnspool, fnspool_json, wait_for

from daemon.fcrecord import CONDITIONS, build_record
from daemon.model import Event, HistoryEntry, State, raw_json


class RequestContext(msgspec.Struct, forbid_unknown_fields=True):
    """Seed 004's `requestContext`."""

    requestId: str
    functionArn: str
    condition: str
    approximateInvokeCount: int


class ResponseContext(msgspec.Struct, forbid_unknown_fields=True):
    """Seed 004's `responseContext`: a failure is status 200 with `functionError`."""

    statusCode: int
    functionError: str | msgspec.UnsetType = msgspec.UNSET


class FCRecord(msgspec.Struct, forbid_unknown_fields=True):
    """Seed 004's record, field for field and type for type, plus fnspool's one added key."""

    timestamp: int
    requestContext: RequestContext
    requestPayload: str
    responseContext: ResponseContext
    responsePayload: str
    fnspool: dict[str, object] = {}


SEED_004 = """{
  "timestamp":1680000000000,
  "requestContext":{
    "requestId":"xxxx",
    "functionArn":"acs:fc:::services/Stateful-Invocation-demo.LATEST/functions/main",
    "condition":"UnhandledInvocationError",
    "approximateInvokeCount":1
  },
  "requestPayload":"{\\"failure\\":true}",
  "responseContext":{
    "statusCode":200,
    "functionError":"UnhandledInvocationError"
  },
  "responsePayload":"{\\"errorMessage\\":\\"Process exited unexpectedly before completing request (duration: 13689ms, maxMemoryUsage: 10.86MB)\\"}"
}"""  # noqa: E501 - the seed's record as it is printed there

decode = msgspec.json.Decoder(FCRecord).decode


def record_at(path: Path) -> FCRecord:
    return decode(wait_for(lambda: path.exists() and path.read_bytes(), what=f"{path.name}"))


def test_the_seed_record_parses_with_these_types():
    record = decode(SEED_004)
    assert json.loads(record.requestPayload) == {"failure": True}
    assert json.loads(record.responsePayload)["errorMessage"].startswith("Process exited")


def test_a_failed_event_is_a_dead_letter_as_fc_writes_it(spool, daemon):
    daemon.start()
    before = time.time()
    drop(spool, "doomed", "a.json", {"n": 1})
    (ev,) = wait_for(lambda: events(spool, "--function", "doomed"), what="the event")
    record = record_at(spool / "destinations" / "dead-letter" / f"{ev['id']}.json")
    assert record.requestContext == RequestContext(
        requestId=ev["id"], functionArn="fnspool:function:doomed",
        condition="UnhandledInvocationError", approximateInvokeCount=3,
    )  # fmt: skip
    assert record.responseContext == ResponseContext(
        statusCode=200, functionError="UnhandledInvocationError"
    )
    assert json.loads(record.requestPayload) == {"n": 1}
    assert json.loads(record.responsePayload) == {"errorMessage": "failed on attempt 3"}
    assert before * 1000 <= record.timestamp <= time.time() * 1000
    extra = record.fnspool
    assert extra["state"] == "Failed" and extra["retry_of"] is None and extra["node"]
    assert isinstance(extra["error"], dict) and extra["error"]["type"] == "RuntimeError"
    attempts = extra["attempts"]
    assert isinstance(attempts, list)
    assert [(a["attempt"], a["state"]) for a in attempts] == [
        (1, "Retrying"), (2, "Retrying"), (3, "Failed"),
    ]  # fmt: skip

    # events get says where it went, in JSON and in words
    wait_for(lambda: fnspool_json(spool, "events", "get", ev["id"])["destination"])
    shown = fnspool_json(spool, "events", "get", ev["id"])["destination"]
    assert shown["delivered"] is True and shown["to"] == "destinations/dead-letter"
    assert shown["record"] == f"destinations/dead-letter/{ev['id']}.json"
    assert shown["condition"] == "UnhandledInvocationError" and shown["at"].endswith("Z")
    text = fnspool(spool, "events", "get", ev["id"]).stdout
    assert f"delivered to destinations/dead-letter/{ev['id']}.json (UnhandledInvocationError)" in (
        text
    )


def test_success_and_invalid_records_keep_fcs_types(spool, daemon):
    daemon.start()
    drop(spool, "sleeper", "ok.json", {"sleep": 0})
    drop(spool, "badinit", "bad.json", {"b": 2})
    ok = wait_for(lambda: events(spool, "--function", "sleeper"), what="the event")[0]
    record = record_at(spool / "destinations" / "ok" / f"{ok['id']}.json")
    assert record.requestContext.condition == "Success"
    assert record.responseContext == ResponseContext(statusCode=200)  # no functionError
    assert "pid" in json.loads(record.responsePayload)
    bad = wait_for(lambda: events(spool, "--function", "badinit"), what="the event")[0]
    record = record_at(spool / "destinations" / "dead-letter" / f"{bad['id']}.json")
    assert record.requestContext.condition == "InvalidInvocation"
    assert record.responseContext.functionError == "InvalidInvocation"
    assert json.loads(record.responsePayload) == {"errorMessage": "the database is unreachable"}
    assert record.requestContext.approximateInvokeCount == 0


def test_events_get_says_a_record_not_yet_delivered_and_then_where_it_went(spool, daemon):
    blocker = spool / "destinations" / "ok"
    blocker.parent.mkdir(parents=True)
    blocker.write_text("a file where the folder should be")
    d = daemon.start()
    drop(spool, "sleeper", "ok.json", {"sleep": 0})
    ok = wait_for(lambda: events(spool, "--function", "sleeper", "--status", "Succeeded"))[0]
    wait_for(lambda: "destination delivery failed" in d.log_text(), what="the failed delivery")
    shown = fnspool_json(spool, "events", "get", ok["id"])["destination"]
    assert shown == {"delivered": False, "to": "destinations/ok", "record": None,
                     "condition": "Success", "at": None}  # fmt: skip
    assert "not delivered yet: to destinations/ok (Success)" in (
        fnspool(spool, "events", "get", ok["id"]).stdout
    )
    assert d.stop() == 0
    blocker.unlink()
    daemon.start()
    shown = wait_for(
        lambda: (
            fnspool_json(spool, "events", "get", ok["id"])["destination"]["delivered"]
            and fnspool_json(spool, "events", "get", ok["id"])["destination"]
        ),
        what="the delivery at start-up",
    )
    assert shown["record"] == f"destinations/ok/{ok['id']}.json"
    # an event whose function names no destination for its end owes none
    drop(spool, "echo", "e.json", {"x": 1})
    echo = wait_for(lambda: events(spool, "--function", "echo", "--status", "Succeeded"))[0]
    assert fnspool_json(spool, "events", "get", echo["id"])["destination"] is None
    assert "destination:  none" in fnspool(spool, "events", "get", echo["id"]).stdout


def test_every_terminal_state_has_a_documented_condition():
    documented = (Path(__file__).parent.parent / "docs" / "events.md").read_text()
    assert set(CONDITIONS) == {s for s in State if s.terminal}
    for condition in CONDITIONS.values():
        assert f"`{condition}`" in documented, condition


def test_a_stop_before_running_says_why_in_errormessage():
    event = Event(id="e1", function="f", state=State.STOPPED, enqueued_at=1.5, ended_at=2.25)
    event.payload = raw_json({"a": 1})
    event.history = [HistoryEntry(state=State.STOPPED, at=2.25, reason="stopped before running")]
    record = decode(msgspec.json.encode(build_record(event)))
    assert record.timestamp == 2250 and record.requestPayload == '{"a":1}'
    assert json.loads(record.responsePayload) == {"errorMessage": "stopped before running"}
    assert record.responseContext.functionError == "Stopped"
