"""Rough edges on faults: destinations that would feed the daemon its own output."""

from __future__ import annotations

import json

import pytest
from conftest import drop, events, fnspool, fnspool_json, wait_for

LOOPING = ["incoming/echo", "./control", "tmp/x", "journal", "run/r", "functions"]


@pytest.mark.parametrize("folder", LOOPING)
def test_a_destination_inside_the_daemons_folders_is_a_definition_error(spool, daemon, folder):
    definition = (
        f'runtime = "python"\nhandler = "index.handler"\n[async]\non_success = "{folder}"\n'
    )
    (spool / "functions" / "loop.toml").write_text(definition)
    daemon.start()
    errors = fnspool_json(spool, "status")["definition_errors"]
    assert "`async.on_success` must not be inside the daemon's" in errors["loop"]
    assert folder in errors["loop"]


FORGED = "2026-01-01 00:00:00,000 INFO    daemon.service: FORGED"


def test_outside_text_cannot_split_or_forge_a_daemon_log_line(spool, daemon):
    code = spool / "functions" / "forge"
    code.mkdir()
    (code / "index.py").write_text(
        "def handler(event, context):\n    return 1\n\n\n"
        f"def init(context):\n    raise RuntimeError('boom\\n' + {FORGED!r})\n"
    )
    (spool / "functions" / "forge.toml").write_text(
        'handler = "index.handler"\n[lifecycle]\ninitializer = "index.init"\n'
    )
    d = daemon.start()
    (spool / "incoming" / "echo" / f"x\n{FORGED}.json").write_text("{}")
    drop(spool, "forge", "f.json", {})
    wait_for(lambda: events(spool, "--status", "Invalid"), 30, "the event to be Invalid")
    wait_for(lambda: list((spool / "rejected").glob("*.reason.json")), 30, "the bad name")
    wait_for(lambda: "boom" in d.log_text(), 30, "the initializer's error in the daemon log")
    lines = d.log_text().splitlines()
    assert not [line for line in lines if line.startswith(FORGED)], lines
    assert [line for line in lines if "boom\\n" + FORGED in line], lines


@pytest.mark.parametrize("runtime", ["python", "exec"])
def test_concurrency_on_a_runtime_that_serves_one_event_is_a_definition_error(tmp_path, runtime):
    from daemon.functions import load_function

    body = 'handler = "index.handler"\n' if runtime == "python" else 'command = ["cat"]\n'
    path = tmp_path / "wide.toml"
    path.write_text(f'runtime = "{runtime}"\n{body}concurrency = 4\n')
    with pytest.raises(ValueError, match="`concurrency` is for http servers"):
        load_function(path)
    path.write_text(f'runtime = "{runtime}"\n{body}concurrency = 1\n')
    assert load_function(path).concurrency == 1


def test_a_command_that_needs_no_code_folder_runs_without_one(spool, daemon):
    (spool / "functions" / "inline.toml").write_text(
        'runtime = "exec"\ncommand = ["python3", "-c", "import sys; print(sys.stdin.read())"]\n'
    )
    (spool / "functions" / "lost.toml").write_text('handler = "index.handler"\n')  # no lost/
    daemon.start()
    out = fnspool(spool, "invoke", "inline", "--payload", '{"a": 1}', "--wait", "--json")
    assert out.returncode == 0, out.stdout
    assert json.loads(out.stdout)["result"] == {"a": 1}
    listed = fnspool(spool, "functions", "list", check=False)
    assert listed.returncode == 1
    assert f"its code folder {spool / 'functions' / 'lost'} is missing" in listed.stdout
    assert "inline" in listed.stdout and "functions/inline is missing" not in listed.stdout
