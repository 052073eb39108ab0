"""An event's log as users see it (`events logs`, `-f`, `events get`): live from the moment an
attempt starts, in the order things happened, and no file for a handler that prints nothing.
Through the real daemon and the CLI."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

from conftest import REPO, drop, events, fnspool, fnspool_json, wait_for

LINE = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z \[PLATFORM\] (.*)")


def platform_lines(text: str) -> list[str]:
    """The `[PLATFORM]` lines of a log, without their times (every line must be well formed)."""
    found = []
    for line in text.splitlines():
        m = LINE.fullmatch(line)
        if m:
            found.append(m.group(1))
    return found


def logs(spool: Path, request_id: str) -> str:
    return fnspool(spool, "events", "logs", request_id).stdout


def only_event(spool: Path, function: str) -> dict | None:
    found = events(spool, "--function", function)
    return found[0] if found else None


def state_of(spool: Path, request_id: str) -> str:
    return fnspool_json(spool, "events", "get", request_id)["state"]


def test_a_silent_handlers_log_shows_its_start_while_it_runs_and_makes_no_file(spool, daemon):
    daemon.start()
    drop(spool, "slow", "quiet.json", {"sleep": 30})
    ev = wait_for(lambda: only_event(spool, "slow"), what="the event")
    rid = ev["id"]
    start = f"FC Invoke Start RequestId: {rid}"
    wait_for(lambda: platform_lines(logs(spool, rid)) == [start], what="the Start line")
    assert state_of(spool, rid) == "Running"
    shown = fnspool(spool, "events", "get", rid).stdout
    assert re.search(rf"^log:\n  \S+ \[PLATFORM\] {start}$", shown, re.M), shown
    log_path = Path(fnspool_json(spool, "events", "get", rid)["log_path"])
    fnspool(spool, "events", "stop", rid, "--wait", check=False)
    assert platform_lines(logs(spool, rid)) == [start, f"FC Invoke End RequestId: {rid}"]
    assert not log_path.exists() and not list((spool / "logs").rglob(f"{rid}*"))


def test_a_graceful_stops_signal_line_comes_after_start(spool, daemon):
    daemon.start()
    drop(spool, "slow", "stopped.json", {"sleep": 30})  # prints nothing; dies of SIGTERM
    ev = wait_for(lambda: only_event(spool, "slow"), what="the event")
    rid = ev["id"]
    wait_for(lambda: state_of(spool, rid) == "Running", what="it to run")
    fnspool(spool, "events", "stop", rid, "--graceful", "--wait", check=False)
    assert platform_lines(logs(spool, rid)) == [
        f"FC Invoke Start RequestId: {rid}",
        "Signal received successfully.",
        f"FC Invoke End RequestId: {rid}",
    ]
    # the file holds the same text (made at the Signal line, with the Start line first)
    log_path = Path(fnspool_json(spool, "events", "get", rid)["log_path"])
    assert log_path.read_text() == logs(spool, rid)


def test_each_retry_shows_its_start_and_end_in_order(spool, daemon):
    daemon.start()
    drop(spool, "fail", "twice.json", {"n": 1})  # raises: 2 attempts (max_retries 1)
    ev = wait_for(lambda: only_event(spool, "fail"), what="the event")
    rid = ev["id"]
    wait_for(lambda: state_of(spool, rid) == "Failed", what="both attempts")
    start, end = f"FC Invoke Start RequestId: {rid}", f"FC Invoke End RequestId: {rid}"
    assert platform_lines(logs(spool, rid)) == [start, end, start, end]


def test_a_retry_that_prints_keeps_the_silent_attempts_lines_before_its_own(spool, daemon):
    daemon.start()
    drop(spool, "loud", "third.json", {})  # fails twice, silently, then prints and succeeds
    ev = wait_for(lambda: only_event(spool, "loud"), what="the event")
    rid = ev["id"]
    wait_for(lambda: state_of(spool, rid) == "Succeeded", what="the third attempt")
    text = logs(spool, rid)
    start, end = f"FC Invoke Start RequestId: {rid}", f"FC Invoke End RequestId: {rid}"
    assert platform_lines(text) == [start, end] * 3
    assert text.index("attempt 3 speaks") > text.rindex(start)
    assert Path(fnspool_json(spool, "events", "get", rid)["log_path"]).read_text() == text
    times = [line.split(" ", 1)[0] for line in text.splitlines() if "[PLATFORM]" in line]
    assert times == sorted(times), "lines in the order they happened"


def test_logs_follow_an_event_from_enqueued_to_its_end(spool, daemon):
    daemon.start()
    out = fnspool(spool, "invoke", "hello", "--payload", '{"name": "Ada"}', "--delay", "2")
    rid = out.stdout.strip()
    assert state_of(spool, rid) == "Enqueued"
    follow = subprocess.Popen(
        [sys.executable, "-m", "daemon", "events", "logs", rid, "--follow", "--spool", str(spool)],
        stdout=subprocess.PIPE,
        text=True,
        cwd=REPO,
    )
    try:
        text, _ = follow.communicate(timeout=60)  # it returns by itself once the event ends
    finally:
        follow.kill()
    assert follow.returncode == 0
    assert state_of(spool, rid) == "Succeeded"
    assert platform_lines(text) == [
        f"FC Invoke Start RequestId: {rid}",
        f"FC Invoke End RequestId: {rid}",
    ]
    assert f"request {rid}, attempt 1" in text
    assert text == logs(spool, rid)


def test_a_failing_handlers_traceback_is_in_its_log_between_start_and_end(spool, daemon):
    daemon.start()
    drop(spool, "fail", "f.json", {"n": 1})
    event = wait_for(
        lambda: (e := only_event(spool, "fail")) and e["state"] == "Failed" and e, 30, "Failed"
    )
    lines = logs(spool, event["id"]).splitlines()
    assert lines[1] == "Traceback (most recent call last):", lines
    assert "ValueError: bad input {'n': 1}" in lines
    end = next(i for i, line in enumerate(lines) if "FC Invoke End" in line)
    assert lines.index("ValueError: bad input {'n': 1}") < end


def test_events_get_shows_the_error_with_its_traceback(spool, daemon):
    daemon.start()
    drop(spool, "fail", "f.json", {"n": 2})
    event = wait_for(
        lambda: (e := only_event(spool, "fail")) and e["state"] == "Failed" and e, 30, "Failed"
    )
    text = fnspool(spool, "events", "get", event["id"]).stdout
    error_at = text.index("error:        ValueError: bad input {'n': 2}")
    assert text.index("Traceback (most recent call last):", error_at) < text.index("history:")


def test_a_start_or_end_line_is_formatted_only_when_a_file_will_hold_it(tmp_path, monkeypatch):
    """The sink drops a journaled line while its event has no file (readers render it): the
    instance does not format it for nothing; when written, the line is the same bytes."""
    from daemon.files.logfiles import EventLogs, LogWrite
    from daemon.runtimes import base

    formatted: list[str] = []
    format_line = base.platform_line
    monkeypatch.setattr(
        base, "platform_line", lambda at, text: formatted.append(text) or format_line(at, text)
    )
    writes: list[LogWrite] = []
    sink = EventLogs(writes.append)
    path = tmp_path / "echo" / "r1.log"
    sink.track("r1", path, lambda: b"RENDERED\n", exists=False)
    log = base.EventLog(path, sink=sink)
    log.platform("FC Invoke Start RequestId: r1")
    assert (formatted, writes) == ([], [])
    log.write(b"out\n")  # the first line the journal does not hold makes the file
    log.platform("FC Invoke End RequestId: r1")
    assert formatted == ["FC Invoke End RequestId: r1"]
    assert [(w.data, w.prefix) for w in writes[:1]] == [(b"out\n", b"RENDERED\n")]
    assert LINE.fullmatch(writes[1].data.decode().rstrip("\n"))
    assert writes[1].data.endswith(b" [PLATFORM] FC Invoke End RequestId: r1\n")
    assert not writes[1].if_exists

    sink.track("r2", tmp_path / "echo" / "r2.log", lambda: b"", exists=None)  # after a restart
    base.EventLog(tmp_path / "echo" / "r2.log", sink=sink).platform("FC Invoke Start RequestId: r2")
    assert writes[2].if_exists and writes[2].data.endswith(b"FC Invoke Start RequestId: r2\n")
    base.EventLog(tmp_path / "own.log", sink=sink).platform("FC Invoke Start RequestId: r3")
    assert writes[3].path == str(tmp_path / "own.log")  # not an event in care: every line
