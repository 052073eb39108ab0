"""The CLI's reads as a user meets them: ids by their start, and nothing a handler wrote can
drive the terminal."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from datetime import UTC, datetime

from conftest import drop, events, fnspool, fnspool_json, wait_for

from daemon.model import State
from daemon.query import parse_states

ENDED = "Succeeded,Failed,Expired,Invalid,Stopped"


def _ended(spool, count):
    found = events(spool, "--status", ENDED)
    return found if len(found) >= count else None


def test_an_event_is_found_by_the_start_of_its_id_unless_that_start_is_shared(spool, daemon):
    daemon.start()
    drop(spool, "echo", "a.json", {"n": 1})
    drop(spool, "echo", "b.json", {"n": 2})
    first, second = wait_for(lambda: _ended(spool, 2), what="both events to end")
    unique = next(
        n for n in range(1, 37) if first["id"][:n] != second["id"][:n]
    )  # the shortest start that tells them apart
    got = fnspool_json(spool, "events", "get", first["id"][:unique])
    assert got["id"] == first["id"]
    shared = fnspool(spool, "events", "get", first["id"][: unique - 1], check=False)
    assert shared.returncode == 2 and "several ids" in shared.stderr
    assert first["id"] in fnspool(spool, "events", "wait", first["id"][:unique]).stdout
    missing = fnspool(spool, "events", "get", "ffffffff", check=False)
    assert missing.returncode == 4


def test_escape_codes_in_an_error_never_reach_the_terminal(spool, daemon):
    printf = "printf '\\\\033[31mred\\\\033]0;title\\\\007' >&2; exit 1"
    (spool / "functions" / "red.toml").write_text(
        f'runtime = "exec"\ncommand = ["sh", "-c", "{printf}"]\n[async]\nmax_retries = 0\n'
    )
    (spool / "functions" / "red").mkdir()
    daemon.start()
    drop(spool, "red", "x.json", {})
    (event,) = wait_for(lambda: _ended(spool, 1), what="the event to fail")
    assert event["state"] == "Failed" and "\x1b" in event["error"]["message"]  # kept as written
    for args in (("events", "list"), ("events", "get", event["id"])):
        out = fnspool(spool, *args).stdout
        assert "\x1b" not in out and "\x07" not in out, out
        assert "\\x1b[31mred" in out


def test_scfs_state_names_select_their_fnspool_states(spool, daemon):
    daemon.start()
    fnspool(spool, "invoke", "echo", "--id", "ok-1", "--payload", "1", "--wait", check=False)
    fnspool(spool, "invoke", "fail", "--id", "bad-1", "--payload", "1", "--wait", check=False)
    listed = {name: {e["id"] for e in events(spool, "--status", name)} for name in SCF_NAMES}
    assert listed == {"FINISHED": {"ok-1"}, "FAILED": {"bad-1"}, "TERMINATED": set()}
    both = {e["id"] for e in events(spool, "--status", "finished,FAILED")}
    assert both == {"ok-1", "bad-1"}
    refused = fnspool(spool, "events", "list", "--status", "done", check=False)
    assert refused.returncode == 2 and "RUNNING, FINISHED, FAILED, TERMINATED" in refused.stderr


SCF_NAMES = ("FINISHED", "FAILED", "TERMINATED")


def test_scfs_running_is_every_state_not_ended_and_fnspools_names_stay_theirs():
    assert parse_states("RUNNING") == {s for s in State if not s.terminal}
    assert parse_states("running") == parse_states("Running") == {State.RUNNING}
    assert parse_states("FAILED") == {State.FAILED, State.EXPIRED, State.INVALID}
    assert parse_states("failed") == {State.FAILED}
    assert parse_states("Finished,terminated") == {State.SUCCEEDED, State.STOPPED}


def test_events_list_shows_50_by_default_and_says_when_more_match(spool, daemon):
    daemon.start()
    for n in range(53):
        drop(spool, "echo", f"e{n:02d}.json", {"n": n})
    wait_for(lambda: len(events(spool, "--status", "Succeeded")) == 53, 60, "the events to end")
    out = fnspool(spool, "events", "list")
    assert len(out.stdout.splitlines()) == 1 + 50 and "50 shown, more match" in out.stderr
    assert len(events(spool, "--limit", "53")) == 53
    assert "more match" not in fnspool(spool, "events", "list", "--limit", "53").stderr
    assert len(json.loads(fnspool(spool, "events", "list", "--all", "--json").stdout)) == 53


def test_events_are_listed_by_end_time_and_paged(spool, daemon):
    daemon.start()
    fnspool(spool, "invoke", "echo", "--id", "early", "--payload", "1", "--wait")
    wait_for(lambda: time.time() > _ended_at(spool, "early") + 0.05, what="time to pass")
    between = time.time()
    fnspool(spool, "invoke", "echo", "--id", "late", "--payload", "2", "--wait")
    running = fnspool(
        spool, "invoke", "sleeper", "--id", "busy", "--payload", '{"first_sleep": 60}'
    )
    assert running.returncode == 0
    stamp = datetime.fromtimestamp(between, UTC).isoformat()
    assert [e["id"] for e in events(spool, "--ended-since", stamp)] == ["late"]
    assert [e["id"] for e in events(spool, "--ended-until", stamp)] == ["early"]
    newest = [e["id"] for e in events(spool)]
    assert newest[0] == "busy" and set(newest) == {"busy", "late", "early"}
    paged = [e["id"] for e in events(spool, "--limit", "1", "--offset", "1")]
    assert paged == newest[1:2]


def _ended_at(spool, request_id):
    text = fnspool_json(spool, "events", "get", request_id)["ended_at"]
    return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


def test_times_are_local_with_their_offset_or_utc_and_json_stays_utc(spool, daemon):
    daemon.start()
    fnspool(spool, "invoke", "echo", "--id", "tz-1", "--payload", "1", "--wait")
    env = {**os.environ, "TZ": "XYZ-1"}  # POSIX: one hour east of UTC, no tz database needed

    def run(*argv: str) -> str:
        out = subprocess.run(
            [sys.executable, "-m", "daemon", *argv, "--spool", str(spool)],
            env=env, capture_output=True, text=True, check=True,
        )  # fmt: skip
        return out.stdout

    local = run("events", "get", "tz-1")
    assert re.search(r"enqueued_at: +\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d{3}\+01:00", local), local
    utc = run("--utc", "events", "get", "tz-1")
    assert re.search(r"enqueued_at: +\S+ \S+\+00:00", utc), utc
    assert "+01:00" in run("events", "list") and "+00:00" in run("events", "list", "--utc")
    assert json.loads(run("events", "get", "tz-1", "--json"))["enqueued_at"].endswith("Z")
