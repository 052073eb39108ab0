"""The error catalogue: the runtimes name their errors through it; a refusal is no ValueError."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from daemon.errors import ErrorType, Refused, describe, timed_out
from daemon.refusals import refuse_if

DAEMON = Path(__file__).resolve().parent.parent / "daemon"


def test_the_daemon_writes_no_error_type_by_hand() -> None:
    written = {
        f"{path.relative_to(DAEMON)}: {m.group(0)}"
        for path in DAEMON.rglob("*.py")
        if path.name != "errors.py"
        for m in re.finditer(r'ErrorInfo\(\s*type="\w+"', path.read_text())
    }
    assert not written


def test_a_refusal_is_not_taken_for_bad_input() -> None:
    with pytest.raises(Refused) as caught:
        refuse_if("event e has already ended: Succeeded")
    assert not isinstance(caught.value, ValueError)


def test_errors_are_described_one_way() -> None:
    error = timed_out(1.5)
    assert error.type == ErrorType.FUNCTION_TIMEOUT == "FunctionTimeout"
    assert describe(error) == "FunctionTimeout: Function timed out after 1.50 seconds"
