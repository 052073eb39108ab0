"""What the daemon must survive without losing or repeating work: a definition saved with an
error, a result too large for a journal record, a handler that kills the daemon."""

from __future__ import annotations

import json
from pathlib import Path

from conftest import drop, events, fnspool, fnspool_json, wait_for

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
