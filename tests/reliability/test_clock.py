"""Wall-clock jumps (libfaketime, preloaded into the daemon only) do not fire timeouts or backoffs
early or late, and do not expire events wrongly: those run on the monotonic clock; the wall clock
is only recorded (issue 7). The test's own clock is never faked: it measures the real delays."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest
from conftest import wait_for

from daemon.model import State, Transition
from reliability.hostile_helpers import Journal, drop_envelope, install_functions

LIBFAKETIME = next(iter(sorted(Path("/usr/lib").glob("*/faketime/libfaketimeMT.so.1"))), None)
JUMP = 2 * 3600  # seconds: twice the clock function's max_event_age


@pytest.fixture
def faked(spool: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The daemon's wall clock follows an offset written in a file (FAKETIME "+0" / "+2h")."""
    if LIBFAKETIME is None:
        pytest.skip("libfaketime is not installed (Debian: apt-get install libfaketime)")
    install_functions(spool)
    clock = tmp_path / "faketime"
    clock.write_text("+0\n")
    monkeypatch.setenv("LD_PRELOAD", str(LIBFAKETIME))
    monkeypatch.setenv("FAKETIME_TIMESTAMP_FILE", str(clock))
    monkeypatch.setenv("FAKETIME_NO_CACHE", "1")  # read the file at every call: jumps at once
    monkeypatch.setenv("FAKETIME_DONT_FAKE_MONOTONIC", "1")  # only the wall clock jumps
    return clock


def jump(clock: Path, offset: int) -> None:
    """Set the daemon's wall clock to real time + `offset` seconds."""
    temp = clock.with_suffix(".tmp")
    temp.write_text(f"{offset:+d}\n")
    os.rename(temp, clock)


@pytest.mark.reliability
def test_wall_clock_jumps_do_not_move_timeouts_backoffs_or_expiry(spool, daemon, faked):
    daemon.start()
    journal = Journal(spool)

    def attempt_state(rid: str, state: State, attempt: int) -> float:
        """Wait for `rid` to pass `state` in `attempt`; the (real) monotonic time it was seen."""

        def passed():
            journal.poll()
            event = journal.events.get(rid)
            return event and any(h.state is state and h.attempt == attempt for h in event.history)

        wait_for(passed, 30, f"{rid} to pass {state.value} in attempt {attempt}")
        return time.monotonic()

    # 1. forward 2 h while an attempt runs: its 3 s timeout neither fires at once nor late
    slow = "clock-slow"
    drop_envelope(spool, f"{slow}.json", {"function": "clock", "payload": {}, "id": slow})
    t0 = attempt_state(slow, State.RUNNING, 1)
    jump(faked, +JUMP)
    t1 = attempt_state(slow, State.RETRYING, 1)
    timeout_forward = t1 - t0
    # 2. the backoff (1-2 s) runs under the +2 h clock; the event, 2 h old by the wall clock
    # (max_event_age is 1 h), is not expired: it has existed for seconds
    t2 = attempt_state(slow, State.RUNNING, 2)
    backoff_forward = t2 - t1
    # 3. back 2 h while the second attempt runs: its timeout is not 2 h late
    jump(faked, 0)
    t3 = attempt_state(slow, State.FAILED, 2)
    timeout_backward = t3 - t2

    # 4. back 2 h during a backoff: the retry is not 2 h late
    jump(faked, +JUMP)
    failing = "clock-failing"
    drop_envelope(
        spool, f"{failing}.json", {"function": "clock", "payload": {"fail": True}, "id": failing}
    )
    t4 = attempt_state(failing, State.RETRYING, 1)
    jump(faked, 0)
    t5 = attempt_state(failing, State.RUNNING, 2)
    backoff_backward = t5 - t4
    journal.wait_state(failing, State.FAILED)

    # the jumps were real inside the daemon: its records carry the faked wall-clock times
    ats = [r.at for r in journal.records if isinstance(r, Transition) and r.id == slow]
    journal.close()
    print(
        f"\nwall clock +2h during a 3 s timeout: fired after {timeout_forward:.2f} s; backoff "
        f"(1-2 s) under +2h: {backoff_forward:.2f} s, not Expired; -2h during a 3 s timeout: "
        f"{timeout_backward:.2f} s; -2h during a backoff (1-2 s): {backoff_backward:.2f} s; "
        f"journal times spanned {max(ats) - min(ats):.0f} s"
    )
    assert max(ats) - min(ats) > JUMP - 60, "the daemon's wall clock did not jump"
    assert 2.7 <= timeout_forward <= 4.5
    assert 0.8 <= backoff_forward <= 3.5
    assert 2.7 <= timeout_backward <= 4.5
    assert 0.8 <= backoff_backward <= 3.5
