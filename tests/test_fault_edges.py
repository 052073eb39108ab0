"""Rough edges on faults: destinations that would feed the daemon its own output."""

from __future__ import annotations

import pytest
from conftest import drop, events, fnspool_json, wait_for

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
