"""`fnspool events stop` and `events forget` by id and by filter, on a real daemon: only what
matches is touched, nothing without an id or a filter, a prompt that lists what it would touch
(or `--yes`); forgotten events stay gone through a restart, a rebuilt index and compactions,
which drop their records; a forgotten id may be used again."""

from __future__ import annotations

import os
import pty
import select
import subprocess
import sys
import time
from pathlib import Path

from conftest import REPO, Deadline, drop, events, fnspool, fnspool_json, wait_for

from daemon.cli.completion import candidates
from daemon.cli.parser import build_parser
from daemon.eventdb import INDEX_NAME, IndexDB
from daemon.journal import archive_ids, list_archives

COMPACT_OFTEN = ("--snapshot-every", "40")  # records: a compaction every heartbeat or so


def _states(spool: Path, function: str) -> list[str]:
    return [e["state"] for e in events(spool, "--function", function)]


def _running(spool: Path, function: str, count: int) -> list[str]:
    for n in range(count):
        drop(spool, function, f"{function}-{n}.json", {"sleep": 120})
    wait_for(lambda: _states(spool, function) == ["Running"] * count, 60, f"{function} to run")
    return [e["id"] for e in events(spool, "--function", function)]


def on_terminal(spool: Path, *args: str, answer: str) -> tuple[int, str]:
    """Run the CLI on a pseudo-terminal, answer its question; its exit status and output."""
    leader, follower = pty.openpty()
    proc = subprocess.Popen(
        [sys.executable, "-m", "daemon", *args, "--spool", str(spool)],
        stdin=follower,
        stdout=follower,
        stderr=follower,
        cwd=REPO,
    )
    os.close(follower)
    out = b""
    deadline = Deadline(60, "the question")
    while b"[y/N]" not in out:
        deadline.check()
        if select.select([leader], [], [], 0.1)[0]:
            out += os.read(leader, 4096)
    os.write(leader, answer.encode() + b"\n")
    while True:  # until the command has exited and its output is read
        try:
            chunk = os.read(leader, 4096) if select.select([leader], [], [], 0.1)[0] else b""
        except OSError:  # EIO: every end of the terminal is closed
            break
        out += chunk
        if not chunk and proc.poll() is not None:
            break
    os.close(leader)
    return proc.wait(60), out.decode(errors="replace")


def test_stop_by_filter_stops_only_the_matching_events_after_asking(spool, daemon):
    daemon.start()
    sleepers = _running(spool, "sleeper", 3)
    [other] = _running(spool, "idler", 1)

    unchosen = fnspool(spool, "events", "stop", "--yes", check=False)
    assert unchosen.returncode == 2 and "give an id or a filter" in unchosen.stderr
    no_terminal = fnspool(spool, "events", "stop", "--function", "sleeper", check=False, input="")
    assert no_terminal.returncode == 2 and "add --yes" in no_terminal.stderr
    both = fnspool(spool, "events", "stop", other, "--function", "idler", check=False)
    assert both.returncode == 2 and "not both" in both.stderr

    status, said = on_terminal(spool, "events", "stop", "--function", "sleeper", answer="n")
    assert status == 1 and "Stop 3 events? [y/N]" in said
    assert all(f"{i}  sleeper  Running" in said for i in sleepers)
    assert "nothing stopped" in said
    assert _states(spool, "sleeper") == ["Running"] * 3

    status, said = on_terminal(spool, "events", "stop", "--status", "running", answer="y")
    assert status == 0 and "Stop 4 events? [y/N]" in said  # both functions' running events
    wait_for(lambda: _states(spool, "idler") == ["Stopped"], 60, "the idler to stop")
    wait_for(lambda: _states(spool, "sleeper") == ["Stopped"] * 3, 60, "the sleepers to stop")


def test_stop_by_filter_with_yes_and_wait_and_by_ids(spool, daemon):
    daemon.start()
    sleepers = _running(spool, "sleeper", 2)
    [other] = _running(spool, "idler", 1)
    out = fnspool(spool, "events", "stop", "--function", "sleeper", "--yes", "--wait")
    assert sorted(out.stdout.split("\n")[-3:-1]) == sorted(f"{i} Stopped" for i in sleepers)
    assert _states(spool, "idler") == ["Running"]
    again = fnspool(spool, "events", "stop", "--function", "sleeper", "--yes", check=False)
    assert again.returncode == 1 and "no event that can be stopped matches" in again.stderr
    ended = fnspool(spool, "events", "stop", other, sleepers[0], check=False)
    assert ended.returncode == 1 and "already ended: Stopped" in ended.stderr
    assert _states(spool, "idler") == ["Running"]  # nothing sent when one id is refused
    fnspool(spool, "events", "stop", other, "--wait")
    assert _states(spool, "idler") == ["Stopped"]


def _archived(spool: Path, ids: list[str]) -> bool:
    held = {i for _s, path in list_archives(spool / "journal") for i, _f in archive_ids(path)}
    return set(ids) <= held


def _index_ids(spool: Path) -> set[str] | None:
    index = IndexDB.open_readonly(spool / "journal")
    if index is None or index.cursor() is None:
        return None
    try:
        return {r[0] for r in index.db.execute("SELECT id FROM events")}
    finally:
        index.close()


def _journal_mentions(spool: Path, ids: list[str]) -> list[str]:
    """The journal's files (segments, snapshots, archives) that name any of `ids`."""
    found = []
    for path in (spool / "journal").glob("*.jsonl"):
        data = path.read_bytes()
        found += [path.name for i in ids if i.encode() in data]
    return found


def _gone(spool: Path, ids: list[str]) -> None:
    assert not [e for e in events(spool) if e["id"] in ids]
    for request_id in ids:
        got = fnspool(spool, "events", "get", request_id, check=False)
        assert got.returncode == 4 and "not found" in got.stderr


def test_forget_by_filter_survives_restart_rebuilt_index_and_compaction(spool, daemon):
    d = daemon.start(*COMPACT_OFTEN)
    for n in range(2):
        drop(spool, "loud", f"early-{n}.json", {"n": n})
    for n in range(30):  # fill a compaction: the loud events go to an archive
        drop(spool, "echo", f"e{n}.json", {"n": n})
    wait_for(lambda: _states(spool, "loud") == ["Succeeded"] * 2, 60, "the loud events")
    early = [e["id"] for e in events(spool, "--function", "loud")]
    wait_for(lambda: _archived(spool, early), 60, "their archive")
    drop(spool, "loud", "late.json", {"n": 9})
    wait_for(lambda: _states(spool, "loud") == ["Succeeded"] * 3, 60, "the last loud event")
    loud = [e["id"] for e in events(spool, "--function", "loud")]
    logs = [spool / "logs" / "loud" / f"{i}.log" for i in loud]
    assert all(log.exists() for log in logs)

    refused = fnspool(spool, "events", "forget", "--function", "loud", check=False, input="")
    assert refused.returncode == 2 and "add --yes" in refused.stderr
    out = fnspool(spool, "events", "forget", "--function", "loud", "--yes")
    assert sorted(out.stdout.splitlines()) == sorted(f"{i}: forgotten" for i in loud)
    _gone(spool, loud)
    assert len(events(spool, "--function", "echo")) == 30
    wait_for(lambda: not any(log.exists() for log in logs), 30, "their logs to go")
    assert d.stop() == 0

    d = daemon.start()
    _gone(spool, loud)
    assert fnspool_json(spool, "status")["events"] == {"Succeeded": 30}
    assert d.stop() == 0
    (spool / "journal" / INDEX_NAME).unlink()
    d = daemon.start()
    wait_for(lambda: _index_ids(spool) is not None, 60, "the index to be built again")
    _gone(spool, loud)
    assert not set(loud) & (_index_ids(spool) or set())
    assert d.stop() == 0

    daemon.start(*COMPACT_OFTEN)
    fed = iter(range(1000))

    def compacted() -> bool:
        drop(spool, "echo", f"more-{next(fed)}.json", {})  # records, so compactions come
        return not _journal_mentions(spool, loud)

    wait_for(compacted, 120, "compactions to drop every record of them", every=0.3)
    _gone(spool, loud)
    assert not set(loud) & (_index_ids(spool) or set())


def test_forget_refuses_what_has_not_ended_or_owes_its_record_and_frees_the_id(spool, daemon):
    blocker = spool / "destinations" / "ok"  # the sleeper's on_success: it cannot be written
    blocker.parent.mkdir(parents=True)
    blocker.write_text("a file where the folder should be")
    d = daemon.start()
    [busy] = _running(spool, "sleeper", 1)
    refused = fnspool(spool, "events", "forget", busy, check=False)
    assert refused.returncode == 1 and f"event {busy} has not ended: Running" in refused.stderr
    fnspool(spool, "events", "stop", busy, "--wait")
    fnspool(spool, "invoke", "sleeper", "--id", "owed", "--payload", "{}", "--wait")
    wait_for(lambda: "destination delivery failed" in d.log_text(), 30, "the failed delivery")
    owed = fnspool(spool, "events", "forget", "owed", busy, check=False)
    assert owed.returncode == 1
    assert "owed: event owed has ended, but its destination record is not delivered" in owed.stderr
    assert f"{busy}: forgotten" in owed.stdout  # the other one is
    assert fnspool_json(spool, "events", "get", "owed")["state"] == "Succeeded"

    fnspool(spool, "invoke", "echo", "--id", "key", "--payload", '"first"', "--wait")
    fnspool(spool, "events", "forget", "key")
    again = fnspool_json(spool, "invoke", "echo", "--id", "key", "--payload", '"second"', "--wait")
    assert again["id"] == "key" and again["result"] == "second"
    assert [e["id"] for e in events(spool, "--function", "echo")] == ["key"]


def test_completion_knows_forget_and_its_options():
    parser = build_parser()
    assert "forget" in candidates(parser, ["fnspool", "events", ""], 2)
    assert "--yes" in candidates(parser, ["fnspool", "events", "forget", "--y"], 3)
    assert "--graceful" in candidates(parser, ["fnspool", "events", "stop", "--g"], 3)


def test_a_bulk_forget_of_many_events_is_answered_for_each(spool, daemon):
    daemon.start()
    for n in range(25):
        drop(spool, "echo", f"{n:02d}.json", {"n": n})
    wait_for(lambda: _states(spool, "echo") == ["Succeeded"] * 25, 60, "the events")
    started = time.monotonic()
    out = fnspool(spool, "events", "forget", "--status", "finished", "--limit", "20", "--yes")
    print(f"forgot 20 events in {time.monotonic() - started:.2f}s")
    assert len(out.stdout.splitlines()) == 20
    assert len(events(spool, "--function", "echo")) == 5
