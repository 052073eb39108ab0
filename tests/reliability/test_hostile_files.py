"""Hostile files in incoming/: each one rejected with its reason or accepted exactly once, nothing
outside the spool touched or read, and the daemon responsive throughout (issue 7).

tests/test_ingest.py covers the ingestor alone with a fake sink; these drive the real daemon.
"""

from __future__ import annotations

import json
import os
import random
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from conftest import PATIENCE, REPO, fnspool, wait_for

from daemon.model import State
from daemon.text import file_text
from reliability.hostile_helpers import Journal, Probe, fingerprint, read_bytes, reasons

ACCEPTED = "accepted"
SECRET = b'{"secret": "outside the spool"}'


def _stage(spool: Path, rel: bytes, content: bytes) -> None:
    """Write `content` in tmp/, then rename it to incoming/`rel` (a complete file at once)."""
    temp = spool / "tmp" / f".stage-{random.random()}.tmp"
    temp.write_bytes(content)
    os.rename(temp, os.fsencode(spool / "incoming") + b"/" + rel)


def _hostile_cases(spool: Path, outside: Path) -> dict[bytes, str]:
    """Create every hostile file; return the expected outcome by path under incoming/."""
    echo = spool / "incoming" / "echo"
    rng = random.Random(7)
    content: dict[bytes, tuple[bytes, str]] = {
        b"echo/truncated.json": (b'{"a": [1, 2', "not_json"),
        b"echo/bom.json": (b'\xef\xbb\xbf{"a": 1}', "not_json"),
        b"echo/nul-after.json": (b'{"a": 1}\x00', "not_json"),
        b"echo/nul-in-string.json": (b'{"a": "x\x00y"}', "not_json"),
        b"echo/bad-utf8.json": (b'{"a": "\xff\xfe"}', "bad_encoding"),
        b"echo/overlong-utf8.json": (b'"\xc0\xaf"', "bad_encoding"),
        b"echo/surrogate-utf8.json": (b'"\xed\xa0\x80"', "bad_encoding"),
        b"echo/deep-64.json": (b"[" * 64 + b"]" * 64, ACCEPTED),
        b"echo/deep-65.json": (b"[" * 65 + b"]" * 65, "too_deep"),
        b"echo/deep-1000.json": (b"[" * 1000 + b"]" * 1000, "too_deep"),
        b"echo/deep-100000.json": (b'{"a":' * 100_000 + b"1" + b"}" * 100_000, "too_deep"),
        b"echo/brackets-in-string.json": (b'"' + b"[{" * 50_000 + b'"', ACCEPTED),
        b"echo/huge-int.json": (b"1" + b"0" * 5000, "not_json"),
        b"echo/huge-float.json": (b"1e999999", "not_json"),
        b"echo/empty.json": (b"", "not_json"),
        b"echo/binary-10MiB.json": (rng.randbytes(10 << 20), "too_large"),
        b"echo/a..b.json": (b'{"dots": true}', ACCEPTED),
        b"echo/new\nline.json": (b"{}", "bad_name"),
        b"echo/tab\there.json": (b"{}", "bad_name"),
        b"echo/cr\r.json": (b"{}", "bad_name"),
        b"echo/\xff\xfe-latin1.json": (b"{}", "bad_name"),
        b"echo/" + "é-ü-✓".encode() + b".json": (b'{"utf8": "name"}', ACCEPTED),
        b"echo/" + b"x" * 250 + b".json": (b'{"long": "name"}', ACCEPTED),
        b"echo/" + b"y" * 250 + b".json": (b"{not json", "not_json"),
        b"dotdot-id.json": (b'{"function": "echo", "payload": 1, "id": ".."}', "bad_id"),
        b"traversal-function.json": (
            b'{"function": "../../etc", "payload": 1}',
            "unknown_function",
        ),
        b"traversal-id.json": (b'{"function": "echo", "payload": 1, "id": "../x"}', "bad_id"),
        # a big integer that msgspec still takes (CPython's own limit is 4,300 digits)
        b"echo/big-int-4000.json": (b"1" + b"0" * 3999, ACCEPTED),
        b"big-int-envelope.json": (
            b'{"function": "echo", "payload": 1' + b"0" * 4000 + b"}",
            ACCEPTED,
        ),
        b"huge-int-envelope.json": (  # as in a function's folder (huge-int.json)
            b'{"function": "echo", "payload": 1' + b"0" * 5000 + b"}",
            "not_json",
        ),
    }
    for rel, (data, _) in content.items():
        _stage(spool, rel, data)
    expected = {rel: outcome for rel, (_, outcome) in content.items()}

    # a 1 GiB sparse file: the size is checked before a byte is read
    with open(echo / "sparse-1GiB.json", "wb") as f:
        f.truncate(1 << 30)
    expected[b"echo/sparse-1GiB.json"] = "too_large"
    os.symlink(outside / "secret.json", echo / "link-outside.json")
    expected[b"echo/link-outside.json"] = "symlink"
    os.symlink(outside, echo / "link-dir.json")
    expected[b"echo/link-dir.json"] = "symlink"
    os.symlink(outside / "envelope.json", spool / "incoming" / "link-envelope.json")
    expected[b"link-envelope.json"] = "symlink"
    os.symlink("/etc/passwd", echo / "link-passwd.json")
    expected[b"echo/link-passwd.json"] = "symlink"
    os.link(outside / "hard.json", echo / "hardlink.json")
    expected[b"echo/hardlink.json"] = "hard_link"
    os.mkfifo(echo / "fifo.json")
    expected[b"echo/fifo.json"] = "not_regular"
    sock = socket.socket(socket.AF_UNIX)
    sock.bind(str(echo / "socket.json"))
    sock.close()
    expected[b"echo/socket.json"] = "not_regular"
    (echo / "dir.json").mkdir()
    expected[b"echo/dir.json"] = "not_regular"
    (spool / "incoming" / "a..b").mkdir()
    _stage(spool, b"a..b/x.json", b"{}")
    expected[b"a..b/x.json"] = "unknown_function"
    return expected


@pytest.mark.reliability
def test_every_hostile_file_is_rejected_with_its_reason_or_accepted_once(spool, daemon, tmp_path):
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret.json").write_bytes(SECRET)
    (outside / "envelope.json").write_text(json.dumps({"function": "echo", "payload": "stolen"}))
    (outside / "hard.json").write_bytes(SECRET)
    before = fingerprint(outside)
    d = daemon.start()
    read_before = read_bytes(d.proc.pid)
    started = time.monotonic()
    with Probe(spool) as probe:
        expected = _hostile_cases(spool, outside)

        def settled():
            found = reasons(spool)
            return all(
                file_text(f"incoming/{os.fsdecode(rel)}") in found
                for rel, outcome in expected.items()
                if outcome != ACCEPTED
            )

        wait_for(settled, 60, "every hostile file to be rejected")
        journal = Journal(spool)
        accepted = [rel for rel, outcome in expected.items() if outcome == ACCEPTED]
        wait_for(
            lambda: all(journal.enqueued_sources()[f"incoming/{os.fsdecode(r)}"] for r in accepted),
            30,
            "the good files to be accepted",
        )
        handled = time.monotonic() - started
    read = read_bytes(d.proc.pid) - read_before

    found = reasons(spool)
    sources = journal.enqueued_sources()
    for rel, outcome in expected.items():
        path = f"incoming/{os.fsdecode(rel)}"
        if outcome == ACCEPTED:
            assert sources[path] == 1, (path, sources[path])
            assert file_text(path) not in found, found.get(file_text(path))
        else:
            assert sources[path] == 0, path
            reason = found[file_text(path)]
            assert reason["reason"] == outcome, (path, reason)
            assert reason["message"], reason
            kept = spool / "rejected" / reason["rejected_as"]
            assert kept.exists() or kept.is_symlink(), reason  # set aside, never deleted
            assert "/" not in reason["rejected_as"] and "\n" not in reason["rejected_as"]

    # what is left in incoming/ is the function folders and nothing else (accepted files are
    # unlinked just after their Enqueued record is durable)
    def left():
        return [
            os.path.join(dirpath, name)
            for dirpath, _dirs, files in os.walk(spool / "incoming")
            for name in files
        ]

    wait_for(lambda: not left(), what="incoming/ to empty")
    assert fingerprint(outside) == before, "a file outside the spool changed"
    assert (spool / "rejected" / "link-outside.json").is_symlink()  # moved, not followed
    # an id that reads as a path ("..") is refused at the door: no event, no log for it
    assert ".." not in {r.id for r in journal.records if hasattr(r, "id")}
    for rel in accepted:
        rid = next(
            r.id
            for r in journal.records
            if getattr(r, "source", None) and r.source.path == f"incoming/{os.fsdecode(rel)}"
        )
        journal.wait_state(rid, State.SUCCEEDED)
    journal.close()
    print(
        f"\n{len(expected)} hostile files ({len(accepted)} good) handled in {handled:.2f} s; "
        f"the daemon read {read / 1024:.0f} KiB in all (10 MiB and 1 GiB files never read); "
        f"{probe.figures()}"
    )
    assert read < 4 << 20, f"the daemon read {read} bytes: a large file was read before its size"
    probe.check()
    assert d.proc.poll() is None


@pytest.mark.reliability
def test_a_file_swapped_for_a_link_while_it_is_taken_never_leaks(spool, daemon, tmp_path):
    """Renames a good file in, then at once a symlink (to a secret outside) or a hard link over
    the same name, many times: no event ever carries the secret, each name is enqueued at most
    once, the secret is untouched, and every swapped-in link ends in rejected/."""
    seed = int(os.environ.get("FNSPOOL_TEST_SEED", time.time_ns() % 1_000_000))
    print(f"\nseed {seed} (FNSPOOL_TEST_SEED={seed} to repeat)")
    rng = random.Random(seed)
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret.json").write_bytes(SECRET)
    before = fingerprint(outside)
    daemon.start()
    rounds = 300
    for n in range(rounds):
        name = f"swap-{n}.json"
        good = spool / "tmp" / f".good-{n}.tmp"
        good.write_text(json.dumps({"n": n}))
        evil = spool / "tmp" / f".evil-{n}.tmp"
        if rng.random() < 0.5:
            os.symlink(outside / "secret.json", evil)
        else:
            os.link(outside / "secret.json", evil)
        os.rename(good, spool / "incoming" / "echo" / name)
        # a random moment: before, while or after the daemon takes the good file
        time.sleep(rng.random() * 0.004)
        os.rename(evil, spool / "incoming" / "echo" / name)
    journal = Journal(spool)

    def all_set_aside():
        # the reason is written just after the move: wait for both
        return not os.listdir(spool / "incoming" / "echo") and len(reasons(spool)) >= rounds

    wait_for(all_set_aside, 60, "incoming/echo/ to empty, every link with its reason")
    sources = journal.enqueued_sources()
    found = reasons(spool)
    accepted = rejected = 0
    for n in range(rounds):
        path = f"incoming/echo/swap-{n}.json"
        assert sources[path] <= 1, path
        accepted += sources[path]
        reason = found.get(path)
        # the link swapped in last is always set aside (hard link or symlink)
        assert reason is not None and reason["reason"] in ("symlink", "hard_link"), (path, reason)
        rejected += 1
    for r in journal.records:
        assert b"secret" not in bytes(getattr(r, "payload", b"")), r
    assert fingerprint(outside) == before
    journal.close()
    print(
        f"{rounds} swaps: {accepted} good files taken before the swap, {rejected} links set aside"
    )


def _burst(spool: Path, count: int, delay: float) -> float:
    """Write `count` envelopes in tmp/ and rename them all into incoming/ as fast as possible
    (from a child process, so this test's own GIL does not pace it); the seconds it took."""
    script = f"""
import json, os, sys, time
tmp, inc = sys.argv[1], sys.argv[2]
names = []
for n in range({count}):
    name = f"burst-{{n:06d}}.json"
    with open(os.path.join(tmp, "." + name + ".tmp"), "w") as f:
        json.dump({{"function": "echo", "payload": n, "id": f"burst-{{n}}", "delay": {delay}}}, f)
    names.append(name)
t = time.monotonic()
for name in names:
    os.rename(os.path.join(tmp, "." + name + ".tmp"), os.path.join(inc, name))
print(time.monotonic() - t)
"""
    out = subprocess.run(
        [sys.executable, "-c", script, str(spool / "tmp"), str(spool / "incoming")],
        capture_output=True,
        text=True,
        check=True,
        cwd=REPO,
    )
    return float(out.stdout)


@pytest.mark.parametrize(
    "count",
    [
        pytest.param(20_000, id="20k", marks=pytest.mark.reliability),
        pytest.param(100_000, id="100k", marks=pytest.mark.slow),
    ],
)
def test_a_burst_of_files_is_taken_exactly_once_while_the_daemon_stays_responsive(
    spool, daemon, count
):
    """A burst larger than inotify's queue (16,384 events by default): every file enqueued
    exactly once (the overflow forces a rescan), and probe events keep flowing meanwhile. The
    burst's events are delayed by an hour so the test measures intake, not the echo function."""
    d = daemon.start()
    journal = Journal(spool)
    queue = int(Path("/proc/sys/fs/inotify/max_queued_events").read_text())
    # the daemon is frozen during the burst, so its inotify queue cannot be read: it overflows
    d.signal(signal.SIGSTOP)
    try:
        rename_s = _burst(spool, count, delay=3600)
    finally:
        d.signal(signal.SIGCONT)
    started = time.monotonic()

    def heartbeat() -> float:
        return json.loads((spool / "run" / "status.json").read_text())["updated_at"]

    frozen_beat = heartbeat()
    # the heartbeat gap that spans the freeze is not the daemon's: probe from the next beat on
    wait_for(lambda: heartbeat() != frozen_beat, what="a heartbeat after the freeze")
    with Probe(spool, every=0.1) as probe:

        def taken():
            return sum(1 for p in journal.enqueued_sources() if p.startswith("incoming/burst-"))

        wait_for(lambda: taken() >= count, 300, f"{count} files to be enqueued")
        took = time.monotonic() - started
        wait_for(lambda: not [n for n in os.listdir(spool / "incoming") if n.endswith(".json")])
    sources = journal.enqueued_sources()
    twice = [p for p, n in sources.items() if n > 1]
    assert not twice, twice[:10]
    assert sum(1 for p in sources if p.startswith("incoming/burst-")) == count
    assert not list((spool / "rejected").glob("burst-*")), "a burst file was rejected"
    overflowed = "inotify queue overflowed" in d.log_text()
    journal.close()
    print(
        f"\n{count} files renamed in {rename_s:.2f} s into a frozen daemon (inotify queue "
        f"{queue}; overflow seen: {overflowed}); all enqueued exactly once {took:.2f} s after "
        f"it resumed ({count / took:.0f}/s); {probe.figures()}"
    )
    if count > queue:
        assert overflowed, "the burst should have overflowed inotify's queue"
    probe.check()


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to own files as other users")
@pytest.mark.reliability
def test_payloads_from_users_outside_the_spool_group_are_rejected_and_logged(spool, daemon):
    """The spool's group may submit; other users may not (the same rule as control requests)."""
    nobody = 65534  # nobody:nogroup on Debian
    spool.mkdir(exist_ok=True)
    os.chown(spool, 0, nobody)  # the spool's group: nogroup, which nobody is in
    d = daemon.start()
    for name, uid, gid in (("member.json", nobody, nobody), ("outsider.json", 1, 1)):
        staged = spool / "tmp" / f".{name}.tmp"
        staged.write_text(json.dumps({"who": name}))
        os.chown(staged, uid, gid)
        os.rename(staged, spool / "incoming" / "echo" / name)
    wait_for(lambda: "incoming/echo/outsider.json" in reasons(spool), what="the outsider's reason")
    reason = reasons(spool)["incoming/echo/outsider.json"]
    assert reason["reason"] == "owner" and "uid 1" in reason["message"], reason
    journal = Journal(spool)
    wait_for(lambda: journal.enqueued_sources()["incoming/echo/member.json"] == 1)
    assert journal.enqueued_sources()["incoming/echo/outsider.json"] == 0
    member = next(r for r in journal.records if getattr(r, "source", None))
    assert member.source.uid == nobody
    journal.close()
    assert "incoming/echo/outsider.json" in d.log_text() and "owner" in d.log_text()


@pytest.mark.reliability
@pytest.mark.parametrize(
    ("loose", "fix"),
    [
        ("incoming", "chmod o-w"),
        ("journal", "chmod go-w"),
        ("control", "chmod o-w"),
        (".", "chmod go-w"),
    ],
)
def test_the_daemon_refuses_a_world_writable_spool_and_says_how_to_fix_it(spool, loose, fix):
    (spool / loose).mkdir(parents=True, exist_ok=True)
    path = (spool / loose).resolve()
    os.chmod(path, 0o777)
    proc = fnspool(spool, "daemon", check=False, timeout=30)
    assert proc.returncode != 0
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert "world-writable" in lines[0] and f"{fix} {path}" in lines[0], lines[0]
    assert not (spool / "run" / "status.json").exists()  # it never started


@pytest.mark.reliability
def test_the_outside_file_behind_a_symlink_is_never_opened(spool, daemon, tmp_path):
    """A symlink to a FIFO outside the spool: opening the target would block on the FIFO (or
    wake a writer waiting on it); the daemon must reject the link without opening it."""
    fifo = tmp_path / "outside.fifo"
    os.mkfifo(fifo)
    opened = threading.Event()

    def writer():
        try:
            fd = os.open(fifo, os.O_WRONLY)  # blocks until someone opens the read side
        except OSError:
            return
        opened.set()
        os.close(fd)

    daemon.start()
    t = threading.Thread(target=writer, daemon=True)
    t.start()
    os.symlink(fifo, spool / "incoming" / "echo" / "to-fifo.json")
    wait_for(lambda: "incoming/echo/to-fifo.json" in reasons(spool), what="the link's reason")
    assert reasons(spool)["incoming/echo/to-fifo.json"]["reason"] == "symlink"
    assert not opened.is_set(), "the daemon opened the FIFO behind the link"
    # release the writer thread: open the read side ourselves
    fd = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK)
    t.join(PATIENCE)
    os.close(fd)
    assert opened.is_set()


@pytest.mark.reliability
def test_a_file_renamed_over_a_journaled_one_just_before_its_removal_is_kept(tmp_path, monkeypatch):
    """The swap race made deterministic: between the identity check and the removal, a new file
    takes the name. A check-then-unlink removes the new file (never journaled: lost); the daemon
    renames aside, checks again and puts the new one back."""
    from daemon import spool as spool_module

    folder = tmp_path / "dir"
    folder.mkdir()
    (folder / "a.json").write_text("old")
    journaled = os.stat(folder / "a.json")
    real = spool_module.same_file
    calls = []

    def same_file_then_swap(dir_fd, name, st):
        result = real(dir_fd, name, st)
        if not calls:  # right after the first check: a writer renames a new file in
            (folder / ".new.tmp").write_text("new")
            os.rename(folder / ".new.tmp", folder / "a.json")
        calls.append(name)
        return result

    monkeypatch.setattr(spool_module, "same_file", same_file_then_swap)
    fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    try:
        removed = spool_module.unlink_if_same(fd, "a.json", journaled)
    finally:
        os.close(fd)
    assert not removed
    assert (folder / "a.json").read_text() == "new"  # kept, under its name
    assert sorted(os.listdir(folder)) == ["a.json"]  # nothing left aside
