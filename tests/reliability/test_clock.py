"""Wall-clock jumps (libfaketime, preloaded into the daemon only) do not fire timeouts or backoffs
early or late, and do not expire events wrongly: those run on the monotonic clock; the wall clock
is only recorded (issue 7). The test's own clock is never faked: it measures the real delays."""

from __future__ import annotations

import os
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
    """Early is read from the daemon's own records: their wall-clock times, less the offset the
    test set when each was written, give the real delay whatever this test's own pace. Late (by
    the 2 h of a jump) would never come: each wait has a deadline of seconds."""
    daemon.start()
    journal = Journal(spool)

    def attempt_state(rid: str, state: State, attempt: int) -> Transition:
        """Wait for `rid` to pass `state` in `attempt`; that record."""

        def passed() -> Transition | None:
            journal.poll()
            return next(
                (
                    r
                    for r in journal.records
                    if isinstance(r, Transition)
                    and (r.id, r.state, r.attempt) == (rid, state, attempt)
                ),
                None,
            )

        return wait_for(passed, what=f"{rid} to pass {state.value} in attempt {attempt}")

    # 1. forward 2 h while an attempt runs: its 3 s timeout neither fires at once nor late
    slow = "clock-slow"
    drop_envelope(spool, f"{slow}.json", {"function": "clock", "payload": {}, "id": slow})
    running = attempt_state(slow, State.RUNNING, 1)
    jump(faked, +JUMP)
    retrying = attempt_state(slow, State.RETRYING, 1)
    timeout_forward = retrying.at - JUMP - running.at
    # 2. the backoff (1-2 s) runs under the +2 h clock; the event, 2 h old by the wall clock
    # (max_event_age is 1 h), is not expired: it has existed for seconds
    running = attempt_state(slow, State.RUNNING, 2)
    backoff_forward = running.at - retrying.at
    # 3. back 2 h while the second attempt runs: its timeout is not 2 h late
    jump(faked, 0)
    failed = attempt_state(slow, State.FAILED, 2)
    timeout_backward = failed.at - (running.at - JUMP)

    # 4. back 2 h during a backoff: the retry is not 2 h late
    jump(faked, +JUMP)
    failing = "clock-failing"
    drop_envelope(
        spool, f"{failing}.json", {"function": "clock", "payload": {"fail": True}, "id": failing}
    )
    retrying = attempt_state(failing, State.RETRYING, 1)
    jump(faked, 0)
    running = attempt_state(failing, State.RUNNING, 2)
    backoff_backward = running.at - (retrying.at - JUMP)
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
    assert timeout_forward >= 2.9 and timeout_backward >= 2.9, "a timeout fired early"
    assert backoff_forward >= 0.9 and backoff_backward >= 0.9, "a backoff ended early"
