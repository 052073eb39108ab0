"""Rough edges on faults: destinations that would feed the daemon its own output."""

from __future__ import annotations

import pytest
from conftest import fnspool_json

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
