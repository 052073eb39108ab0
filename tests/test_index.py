"""The event index and the archives: the daemon holds only the events in its care, every
retained event stays readable, the journal stays the one source of truth."""

from __future__ import annotations

import grp
import json
import os
import pwd
import shutil
import signal
import subprocess
import sys
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import REPO, drop, events, fnspool_json, wait_for

from daemon.eventdb import INDEX_NAME, IndexDB
from daemon.journal import list_archives
from daemon.journal_writer import recover

ENDED = "Succeeded,Failed,Expired,Invalid,Stopped"
COMPACT_OFTEN = ("--snapshot-every", "40")  # records: a compaction every heartbeat or so


def _ended(spool: Path, count: int) -> list[dict[str, object]] | None:
    found = events(spool, "--status", ENDED)
    return found if len(found) >= count else None


def _indexed_seq(spool: Path) -> int:
    index = IndexDB.open_readonly(spool / "journal")
    if index is None:
        return 0
    try:
        cursor = index.cursor()
        return cursor.seq if cursor else 0
    finally:
        index.close()


def _index_ids(spool: Path) -> set[str]:
    index = IndexDB.open_readonly(spool / "journal")
    if index is None:
        return set()
    try:
        return {r[0] for r in index.db.execute("SELECT id FROM events")}
    finally:
        index.close()


def _run_archived(spool: Path, daemon: object, count: int) -> list[str]:
    """Run `count` events on a daemon that compacts often, until they are archived."""
    d = daemon.start(*COMPACT_OFTEN)  # type: ignore[attr-defined]
    for i in range(count):
        drop(spool, "echo", f"{i:03d}.json", {"i": i})
    done = wait_for(lambda: _ended(spool, count), 60, "the events to end")
    wait_for(lambda: list_archives(spool / "journal"), 30, "an archive")
    ids = [str(e["id"]) for e in done]
    wait_for(lambda: _index_ids(spool) >= set(ids), 30, "the index to hold every event")
    assert d.stop() == 0
    _assert_counts_match_rows(spool)
    return ids


def _assert_counts_match_rows(spool: Path) -> None:
    """The index's counts per function and state are those of its rows."""
    index = IndexDB.open_readonly(spool / "journal")
    assert index is not None
    try:
        rows = index.db.execute("SELECT function, state, count(*) FROM events GROUP BY 1, 2")
        assert {(f, s): n for f, s, n in rows} == {
            (f, s.value): n for (f, s), n in index.counts().items()
        }
    finally:
        index.close()


def test_ended_events_leave_the_daemons_memory_and_stay_readable(spool, daemon):
    ids = _run_archived(spool, daemon, 60)
    archived = {e.id for _, path in list_archives(spool / "journal") for e in _archive(path)}
    assert archived and archived <= set(ids)
    state = recover(spool / "journal")  # what a daemon starting now holds in memory
    assert not set(state.events) & archived
    assert sum((state.archived or {}).values()) == len(archived)
    listed = events(spool, "--limit", "1000")
    assert {e["id"] for e in listed} == set(ids)
    old = fnspool_json(spool, "events", "get", next(iter(archived)))
    assert [h["state"] for h in old["history"]] == ["Enqueued", "Dequeued", "Running", "Succeeded"]
    d = daemon.start()
    assert fnspool_json(spool, "status")["events"] == {"Succeeded": 60}
    d.stop()


def test_delete_the_index_restart_and_everything_is_back(spool, daemon):
    ids = _run_archived(spool, daemon, 40)
    for path in (spool / "journal").glob(f"{INDEX_NAME}*"):
        path.unlink()
    assert {e["id"] for e in events(spool, "--limit", "100")} == set(ids)  # a full replay
    daemon.start()
    wait_for(lambda: _index_ids(spool) == set(ids), 60, "the index to be rebuilt")
    assert {e["id"] for e in events(spool, "--limit", "100")} == set(ids)
    _assert_counts_match_rows(spool)


def test_an_indexer_killed_is_started_again_and_catches_up(spool, daemon):
    d = daemon.start()
    pid = wait_for(lambda: fnspool_json(spool, "status").get("indexer", {}).get("pid"))
    os.kill(pid, signal.SIGKILL)
    drop(spool, "echo", "after.json", {"n": 1})
    (event,) = wait_for(lambda: _ended(spool, 1), 30, "the event to end")
    wait_for(lambda: event["id"] in _index_ids(spool), 30, "a new indexer to index it")
    assert "the indexer exited" in d.log_text()


def test_the_indexer_leaves_with_its_daemon(spool, daemon):
    d = daemon.start()
    pid = wait_for(lambda: fnspool_json(spool, "status").get("indexer", {}).get("pid"))
    d.signal(signal.SIGKILL)
    wait_for(lambda: not _alive(pid), 30, "the indexer to leave once its daemon is killed")


def test_an_indexer_whose_daemon_died_before_it_started_leaves(spool):
    """The daemon's pid comes as an argument: one killed between spawning the indexer and the
    indexer's first look left getppid() at 1, and an indexer that took init for its daemon
    ran on for ever."""
    (spool / "journal").mkdir(exist_ok=True)
    gone = subprocess.Popen(["true"])
    gone.wait()
    indexer = subprocess.Popen(
        [sys.executable, "-m", "daemon.indexer", str(spool / "journal"), str(gone.pid)], cwd=REPO
    )
    try:
        assert indexer.wait(30) == 0
    finally:
        indexer.kill()
        indexer.wait()


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    with open(f"/proc/{pid}/stat") as stat:  # a zombie has left, only not been reaped yet
        return stat.read().rsplit(")", 1)[1].split()[0] != "Z"


def test_readers_see_what_the_index_has_not_taken_in_yet(spool, daemon):
    d = daemon.start()
    pid = wait_for(lambda: fnspool_json(spool, "status").get("indexer", {}).get("pid"))
    os.kill(pid, signal.SIGSTOP)  # the index lags: readers fold the journal after its cursor
    try:
        seq = _indexed_seq(spool)
        drop(spool, "echo", "late.json", {"n": 2})
        (event,) = wait_for(lambda: _ended(spool, 1), 30, "the event to end")
        assert _indexed_seq(spool) == seq and event["id"] not in _index_ids(spool)
        full = fnspool_json(spool, "events", "get", event["id"])
        assert full["state"] == "Succeeded" and full["result"] == {"n": 2}
    finally:
        os.kill(pid, signal.SIGCONT)
    d.stop()


def _archive(path: Path) -> list[object]:
    from daemon.journal import read_archive

    return list(read_archive(path)[1].values())


# -- a member of the spool's group reads without write access -----------------------------


@pytest.fixture
def reader() -> Iterator[str]:
    """A real user of its own, created for the test and removed after it."""
    if os.geteuid() != 0 or not shutil.which("useradd") or not shutil.which("runuser"):
        pytest.skip("needs root with useradd and runuser to make a real user")
    name = f"fnsr{uuid.uuid4().hex[:8]}"
    subprocess.run(["useradd", "--no-create-home", "--user-group", name], check=True)
    try:
        yield name
    finally:
        subprocess.run(["userdel", name], check=False)
        subprocess.run(["groupdel", name], check=False, stderr=subprocess.DEVNULL)


def _as(user: str, site: Path, spool: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """The CLI run as `user`, from a copy of the code that user can read."""
    argv = [SYSTEM_PYTHON, "-m", "daemon", *args, "--spool", str(spool)]
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "PYTHONPATH": str(site)}
    return subprocess.run(
        ["runuser", "-u", user, "--", "env", *(f"{k}={v}" for k, v in env.items()), *argv],
        capture_output=True,
        text=True,
        cwd="/",
        timeout=60,
    )


SYSTEM_PYTHON = "/usr/bin/python3"


def _readable_code(shared: Path) -> Path:
    """The daemon package and msgspec where another user can read them (the test's own venv
    may live under a private home)."""
    import msgspec

    if not os.access(SYSTEM_PYTHON, os.X_OK):
        pytest.skip(f"needs {SYSTEM_PYTHON} for another user to run the CLI")
    found = subprocess.run(
        [SYSTEM_PYTHON, "-c", "import sys; print(sys.version_info[:2])"],
        capture_output=True,
        text=True,
    )
    if found.stdout.strip() != str(sys.version_info[:2]):
        pytest.skip(
            f"{SYSTEM_PYTHON} is not Python {sys.version_info[:2]} (msgspec is built for it)"
        )
    site = shared / "site"
    shutil.copytree(REPO / "daemon", site / "daemon", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copytree(Path(msgspec.__file__).parent, site / "msgspec")
    for path in [site, *site.rglob("*")]:
        os.chmod(path, 0o755 if path.is_dir() else 0o644)
    return site


def test_a_group_member_reads_the_index_without_write_access(spool, reader):
    shared = Path(tempfile.mkdtemp(prefix="fnspool-ro-"))
    try:
        os.chmod(shared, 0o755)
        site = _readable_code(shared)
        root = shared / "spool"
        shutil.copytree(spool, root)
        gid = grp.getgrnam(reader).gr_gid
        os.chown(root, 0, gid)
        os.chmod(root, 0o2750)
        (root / "journal").mkdir(mode=0o2750)
        os.chown(root / "journal", 0, gid)
        os.chmod(root / "journal", 0o2750)  # the group reads, never writes
        from conftest import DaemonProcess

        d = DaemonProcess(root).start()
        try:
            drop(root, "echo", "x.json", {"n": 3})
            (event,) = wait_for(lambda: _ended(root, 1), 30, "the event to end")
            wait_for(lambda: event["id"] in _index_ids(root), 30, "the index to hold it")
            running = _as(reader, site, root, "events", "get", str(event["id"]), "--json")
            assert running.returncode == 0, running.stderr
            assert '"Succeeded"' in running.stdout
            assert d.stop() == 0
        finally:
            d.close()
        assert not list((root / "journal").glob(f"{INDEX_NAME}-*"))  # left in rollback mode
        stopped = _as(reader, site, root, "events", "list", "--json")
        assert stopped.returncode == 0, stopped.stderr
        assert str(event["id"]) in stopped.stdout
        assert pwd.getpwnam(reader).pw_uid not in {
            p.stat().st_uid for p in (root / "journal").iterdir()
        }  # it wrote nothing there
    finally:
        shutil.rmtree(shared, ignore_errors=True)


def _envelope(spool: Path, name: str, body: dict[str, object]) -> None:
    (spool / "tmp").mkdir(exist_ok=True)
    staged = spool / "tmp" / f".{name}"
    staged.write_text(json.dumps(body))
    os.rename(staged, spool / "incoming" / name)


def test_an_id_used_by_an_archived_event_is_refused_after_a_restart(spool, daemon):
    d = daemon.start(*COMPACT_OFTEN)
    for i in range(30):
        _envelope(spool, f"e{i}.json", {"function": "echo", "payload": i, "id": f"order-{i}"})
    wait_for(lambda: _ended(spool, 30), 60, "the events to end")
    archived = wait_for(
        lambda: {e.id for _, p in list_archives(spool / "journal") for e in _archive(p)},
        30,
        "an archive",
    )
    assert d.stop() == 0
    reused = sorted(archived)[0]
    state = recover(spool / "journal")
    assert reused not in state.events  # not in the daemon's memory: only the index knows it
    daemon.start()
    _envelope(spool, "again.json", {"function": "echo", "payload": "again", "id": reused})
    reason = wait_for(lambda: list((spool / "rejected").glob("again.json*.reason.json")))
    assert "duplicate_id" in reason[0].read_text()
    assert fnspool_json(spool, "events", "get", reused)["payload"] != "again"
