"""Request ids are checked by one rule at every door: the CLI, envelopes in incoming/, control
requests, ids derived for destinations, and events found in an older journal. A bad id never
becomes a path, never reaches a terminal or the daemon log raw, and never hangs the CLI."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from conftest import fnspool, fnspool_json, journal_records, wait_for
from tui_journal import T0

from daemon.files.logfiles import LogPaths, event_log_path
from daemon.ids import MAX_ID_LENGTH, BadId, check_id, derived_id, new_request_id
from daemon.journal import encode_record, segment_name
from daemon.model import Request, State, Transition, raw_json
from daemon.text import printable

GOOD = [
    new_request_id(),
    f"{new_request_id()}-RetriesExhausted",  # a destination event's id
    "video-42.mp4",
    "order:17",
    "_private",
    "Task_2024-06-01.1",
    "x" * MAX_ID_LENGTH,
]
BAD = [
    "",
    ".",
    "..",
    "../../x",
    "/abs/x",
    "a b/c",
    "bad id",
    ".hidden",
    "-rf",
    ":x",
    "\x1b[2Jx",
    "x\x1b[31m",
    "ok\n",
    "a\u202eb",  # a bidi override: shows text reversed
    "é",
    "x" * (MAX_ID_LENGTH + 1),
]


def outside(tmp_path: Path, spool: Path) -> set[Path]:
    """Every path under tmp_path that is not in the spool."""
    return {p for p in tmp_path.rglob("*") if not p.is_relative_to(spool)}


def ended_event(spool: Path) -> str:
    """Run one echo event to its end; its id."""
    return fnspool_json(spool, "invoke", "echo", "--payload", "1", "--wait")["id"]


def put_request(spool: Path, name: str, request: dict) -> None:
    """Write a control request the maildir way, with whatever ids it holds."""
    temp = spool / "tmp" / f".{name}.tmp"
    temp.write_text(json.dumps(request))
    os.rename(temp, spool / "control" / name)


def reason_of(spool: Path, name: str) -> dict:
    path = spool / "rejected" / f"{name}.reason.json"
    return json.loads(wait_for(lambda: path.exists() and path.read_text(), what=f"{name} aside"))


# -- the rule -----------------------------------------------------------------------------


@pytest.mark.parametrize("text", GOOD)
def test_the_id_rule_takes_generated_derived_and_fc_style_ids(text):
    assert check_id(text) == text


@pytest.mark.parametrize("text", BAD)
def test_the_id_rule_refuses_paths_spaces_controls_and_leading_dots_with_a_printable_reason(text):
    with pytest.raises(BadId) as caught:
        check_id(text)
    message = str(caught.value)
    assert message.startswith("bad request id") and message.isprintable(), message


def test_a_derived_id_stays_within_the_rule_and_is_the_same_at_every_delivery():
    long_a, long_b = "a" * MAX_ID_LENGTH, "a" * (MAX_ID_LENGTH - 1) + "b"
    derived = derived_id(long_a, "RetriesExhausted")
    assert check_id(derived) and derived.endswith("-RetriesExhausted")
    assert derived == derived_id(long_a, "RetriesExhausted")
    assert derived != derived_id(long_b, "RetriesExhausted")
    rid = new_request_id()
    assert derived_id(rid, "Success") == f"{rid}-Success"


def test_a_log_path_is_only_built_from_a_valid_id_and_function_name(tmp_path):
    logs = tmp_path / "logs"
    assert event_log_path(logs, "echo", "a.b") == logs / "echo" / "a.b.log"
    paths = LogPaths(logs)  # the dispatcher's: each function's folder checked once
    assert paths.of("echo", "a.b") == logs / "echo" / "a.b.log"
    for function, rid in [("echo", "../../x"), ("echo", "/abs/x"), ("echo\n", "ok"), ("..", "ok")]:
        with pytest.raises(BadId):
            event_log_path(logs, function, rid)
        with pytest.raises(BadId):
            paths.of(function, rid)


def test_printable_leaves_no_control_character_for_a_terminal():
    for text in ["a\x1b[2Jb", "x\ny", "\u202eevil", "\x9b1m", "\udcff"]:
        shown = printable(text)
        assert shown.isprintable(), repr(shown)
    assert printable("plain-name.json") == "plain-name.json"


# -- the CLI ------------------------------------------------------------------------------


@pytest.mark.parametrize("bad", ["/../escape", "../../escape", "a b/c", "\x1b[2Jx"])
def test_invoke_refuses_a_bad_id_with_a_clear_error_and_writes_nothing(spool, tmp_path, bad):
    before = outside(tmp_path, spool)
    out = fnspool(spool, "invoke", "echo", "--id", bad, check=False, timeout=20)
    assert out.returncode == 2, out.stderr
    assert "bad request id" in out.stderr and "Traceback" not in out.stderr
    assert "\x1b" not in out.stderr
    assert outside(tmp_path, spool) == before
    assert not Path("/escape.json").exists()
    assert not (spool / "incoming").exists() or not list((spool / "incoming").iterdir())


def test_invoke_wait_with_a_bad_id_exits_at_once_instead_of_waiting_forever(spool):
    out = fnspool(spool, "invoke", "echo", "--id", "bad id", "--wait", check=False, timeout=20)
    assert out.returncode == 2
    assert 'bad request id "bad id": a space at position 4' in out.stderr


@pytest.mark.parametrize(
    "command",
    [
        ("events", "get", "../x"),
        ("events", "logs", "/etc/passwd"),
        ("events", "stop", "a b"),
        ("events", "reinvoke", ".."),
        ("events", "wait", "fine-id", "-"),
        ("events", "wait", "x\x1b[2J"),
    ],
)
def test_events_commands_refuse_a_bad_id_with_exit_code_2(spool, command):
    out = fnspool(spool, *command, check=False, timeout=20)
    assert out.returncode == 2, out.stderr
    assert "Traceback" not in out.stderr and "\x1b" not in out.stderr
    assert "bad request id" in out.stderr


# -- envelopes ------------------------------------------------------------------------------


def test_envelopes_with_bad_ids_are_set_aside_with_a_reason(spool, daemon):
    d = daemon.start()
    ids = {"esc.json": "\x1b[2Jx", "newline.json": "ok\n", "dots.json": "..", "dash.json": "-rf"}
    for name, rid in ids.items():
        temp = spool / "tmp" / f".{name}.tmp"
        temp.write_text(json.dumps({"function": "echo", "payload": 1, "id": rid}))
        os.rename(temp, spool / "incoming" / name)
    for name in ids:
        reason = reason_of(spool, name)
        assert reason["reason"] == "bad_id", reason
        assert reason["message"].startswith("bad request id") and reason["message"].isprintable()
    assert fnspool_json(spool, "events", "list") == []
    assert "\x1b" not in d.log_text()


# -- control requests ---------------------------------------------------------------------


def test_reinvoke_requests_with_path_ids_are_set_aside_and_write_nothing_outside(
    spool, tmp_path, daemon
):
    d = daemon.start()
    old = ended_event(spool)
    before = outside(tmp_path, spool)
    target = tmp_path / "abs" / "x"
    bad = {"up.json": "../../x", "upup.json": "../../../x", "abs.json": str(target)}
    for name, new_id in bad.items():
        put_request(spool, name, {"action": "reinvoke", "id": old, "new_id": new_id})
    for name in bad:
        reason = reason_of(spool, name)
        assert reason["reason"] == "bad_id" and "bad new_id" in reason["message"], reason

    def answers() -> list[Request]:
        return [r for r in journal_records(spool, Request) if r.name in bad]

    wait_for(lambda: len(answers()) == len(bad), what="the answers")
    assert {r.outcome for r in answers()} == {"refused"}
    assert outside(tmp_path, spool) == before and not target.parent.exists()
    assert not list(tmp_path.rglob("x.log"))
    assert [e["id"] for e in fnspool_json(spool, "events", "list")] == [old]
    assert d.proc is not None and d.proc.poll() is None  # still serving
    assert fnspool(spool, "invoke", "echo", "--payload", "2", "--wait").returncode == 0


def test_a_stop_request_with_an_escape_code_id_is_set_aside_and_kept_out_of_the_log(spool, daemon):
    d = daemon.start()
    put_request(spool, "esc.json", {"action": "stop", "id": "\x1b[2J\x1b[31mgotcha"})
    reason = reason_of(spool, "esc.json")
    assert reason["reason"] == "bad_id" and reason["message"].isprintable()
    wait_for(
        lambda: [r for r in journal_records(spool, Request) if r.name == "esc.json"],
        what="the answer",
    )
    assert "\x1b" not in d.log_text()


# -- ids derived and ids from older journals ----------------------------------------------


def test_a_destination_event_of_a_128_character_id_gets_a_valid_id(spool, daemon):
    daemon.start()
    rid = "r" * MAX_ID_LENGTH
    temp = spool / "tmp" / ".long.tmp"
    temp.write_text(json.dumps({"function": "relay", "payload": {"sleep": 0}, "id": rid}))
    os.rename(temp, spool / "incoming" / "long.json")
    relayed = wait_for(
        lambda: fnspool_json(spool, "events", "list", "--function", "collector"),
        what="the collector's event",
    )[0]["id"]
    assert relayed == derived_id(rid, "UnhandledInvocationError") and check_id(relayed)
    done = fnspool_json(spool, "events", "get", relayed)  # the CLI takes it
    assert done["retry_of"] is None and done["function"] == "collector"


def test_an_event_with_a_bad_id_in_an_older_journal_never_runs_nor_writes_outside(
    spool, tmp_path, daemon
):
    legacy = "../../../legacy"  # logs/echo/ + this = a file beside the spool
    journal = spool / "journal"
    journal.mkdir(parents=True)
    rec = Transition(
        id=legacy, function="echo", state=State.ENQUEUED, at=T0, payload=raw_json(1), seq=1
    )
    (journal / segment_name(1)).write_bytes(encode_record(rec))
    daemon.start()
    ended = wait_for(
        lambda: [
            r
            for r in journal_records(spool, Transition)
            if r.id == legacy and r.state is State.INVALID
        ],
        what="the event to be ended as Invalid",
    )
    assert ended[0].error is not None and ended[0].error.type == "InvalidRequestId"
    assert not (tmp_path / "legacy.log").exists()
    assert not [r for r in journal_records(spool, Transition) if r.state is State.RUNNING]
