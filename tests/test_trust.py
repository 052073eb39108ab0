"""The trust model (docs/security.md), attacked by real users: a member of the spool's group and
someone outside it run plain shell commands (all an attacker needs) against a spool served by a
real daemon. Each rule has its test here; each attack must fail, each right must work."""

from __future__ import annotations

import json
import os
import shutil
import signal
import stat
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from conftest import (
    EXAMPLES,
    DaemonProcess,
    cgroup_names,
    drop,
    fnspool,
    fnspool_json,
    journal_records,
    remove_cgroups,
    sweep_left_running,
    wait_for,
)
from reliability.hostile_helpers import reasons

from daemon.model import Request
from daemon.spool import Spool

needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="needs root to make users and own files")
TOOLS = ("useradd", "userdel", "groupadd", "groupdel", "gpasswd", "runuser")


@dataclass
class People:
    """The spool's group, a member of it and a user outside it (all made for one test)."""

    group: str
    gid: int
    member: str
    member_uid: int
    outsider: str


def _admin(*argv: str) -> None:
    """Run an account tool, again while another one holds the lock on /etc/passwd."""
    deadline = time.monotonic() + 30
    while True:
        proc = subprocess.run(argv, capture_output=True, text=True, check=False)
        if proc.returncode == 0:
            return
        if "lock" not in proc.stderr or time.monotonic() > deadline:
            raise AssertionError(f"{' '.join(argv)}: {proc.stderr}")
        time.sleep(0.1)


@pytest.fixture
def people() -> Iterator[People]:
    missing = [tool for tool in TOOLS if shutil.which(tool) is None]
    if os.geteuid() != 0 or missing:
        pytest.skip(f"needs root and {', '.join(missing) or 'nothing more'} to make real users")
    tag = uuid.uuid4().hex[:8]
    group, member, outsider = f"fnsg{tag}", f"fnsm{tag}", f"fnso{tag}"
    made: list[list[str]] = []
    try:
        _admin("groupadd", group)
        made.append(["groupdel", group])
        _admin("useradd", "--no-create-home", "--user-group", "--groups", group, member)
        made.append(["userdel", member])
        _admin("useradd", "--no-create-home", "--user-group", outsider)
        made.append(["userdel", outsider])
        yield People(
            group=group,
            gid=_id("group", group),
            member=member,
            member_uid=_id("passwd", member),
            outsider=outsider,
        )
    finally:
        for argv in reversed(made):
            subprocess.run(argv, capture_output=True, check=False)


def _id(database: str, name: str) -> int:
    out = subprocess.run(["getent", database, name], capture_output=True, text=True, check=True)
    return int(out.stdout.split(":")[2])


@pytest.fixture
def shared(people: People) -> Iterator[Path]:
    """A spool made as the daemon makes it, in the spool's group, where its users can reach it;
    the echo and hello functions defined by the administrator (root)."""
    top = Path(tempfile.mkdtemp(prefix="fnspool-trust-", dir="/tmp"))
    try:
        os.chmod(top, 0o755)
        root = top / "spool"
        Spool(root).create()
        for path in [root, *root.iterdir()]:
            os.chown(path, 0, people.gid)
        for name in ("echo", "hello"):  # hello prints: its event has a log file
            shutil.copytree(EXAMPLES / name, root / "functions" / name)
            shutil.copy(EXAMPLES / f"{name}.toml", root / "functions")
        yield root
    finally:
        shutil.rmtree(top, ignore_errors=True)


@pytest.fixture
def served(shared: Path) -> Iterator[DaemonProcess]:
    """The daemon (root) serving the shared spool."""
    d = DaemonProcess(shared)
    try:
        yield d.start()
    finally:
        d.close()
        sweep_left_running(shared)
        remove_cgroups(cgroup_names([shared]))  # while the spool is there to name them


def as_user(user: str, spool: Path, script: str) -> subprocess.CompletedProcess[str]:
    """`sh -c script` as `user`, with $S the spool."""
    return subprocess.run(
        ["runuser", "-u", user, "--", "sh", "-c", f'S="$1"; {script}', "sh", str(spool)],
        capture_output=True,
        text=True,
        timeout=30,
        cwd="/",
        check=False,
    )


def fails(user: str, spool: Path, script: str) -> None:
    """`script` run as `user` must be refused."""
    proc = as_user(user, spool, script)
    assert proc.returncode != 0, f"{user} could: {script}"


def works(user: str, spool: Path, script: str) -> str:
    """`script` run as `user` must succeed; its output."""
    proc = as_user(user, spool, script)
    assert proc.returncode == 0, f"{user} could not: {script}: {proc.stderr}"
    return proc.stdout


def put(target: str, text: str) -> str:
    """The shell to drop `text` the maildir way: written in tmp/, renamed to `target`."""
    temp = f'"$S/tmp/.{uuid.uuid4().hex}.tmp"'
    return f"printf '%s' '{text}' > {temp} && mv {temp} \"$S/{target}\""


def tree(root: Path) -> dict[str, tuple[int, int, bytes]]:
    """Every path under `root`: its mode, owner and (for a file) content."""
    found = {}
    for path in sorted(root.rglob("*")):
        st = path.lstat()
        data = path.read_bytes() if stat.S_ISREG(st.st_mode) else b""
        found[str(path.relative_to(root))] = (st.st_mode, st.st_uid, data)
    return found


def sources(spool: Path) -> dict[str, int | None]:
    """The uid of each journaled incoming file, by its path."""
    return {
        r.source.path: r.source.uid
        for r in journal_records(spool)
        if getattr(r, "source", None) is not None and r.source.path
    }


# -- fresh spools ----------------------------------------------------------------------------


def test_a_fresh_spool_gives_the_group_only_its_drop_folders_whatever_the_umask(tmp_path):
    old = os.umask(0)
    try:
        spool = Spool(tmp_path / "spool")
        spool.create()
    finally:
        os.umask(old)
    for path in (spool.root, spool.functions, spool.journal, spool.run, spool.rejected):
        assert stat.S_IMODE(path.stat().st_mode) == 0o2750, path
    for path in (spool.logs, spool.destinations):
        assert stat.S_IMODE(path.stat().st_mode) == 0o2750, path
    for path in (spool.incoming, spool.control, spool.tmp):
        assert stat.S_IMODE(path.stat().st_mode) == 0o3770, path


# -- the administrator's: definitions, journal, run state, rejected/ -------------------------


@needs_root
def test_a_member_cannot_define_or_change_a_function(shared, people):
    before = tree(shared / "functions")
    for script in (
        'echo \'runtime = "python"\' > "$S/functions/evil.toml"',
        "echo '# more' >> \"$S/functions/echo.toml\"",
        "echo 'def handler(e, c): pass' > \"$S/functions/echo/index.py\"",
        'echo x > "$S/functions/echo/evil.py"',
        'mkdir "$S/functions/evil"',
        'mv "$S/functions/echo" "$S/functions/old"',
        'mv "$S/functions" "$S/old-functions"',
        'rm -rf "$S/functions/echo"',
    ):
        fails(people.member, shared, script)
    assert tree(shared / "functions") == before


@needs_root
@pytest.mark.parametrize("folder", ["incoming", "rejected", "control", "journal", "run"])
def test_a_member_cannot_swap_a_spool_folder_for_a_link(shared, people, folder):
    outside = f"/tmp/{folder}-{uuid.uuid4().hex}"
    fails(people.member, shared, f'mv "$S/{folder}" "$S/{folder}.old"')
    fails(people.member, shared, f'rm -rf "$S/{folder}" && ln -s {outside} "$S/{folder}"')
    fails(people.member, shared, f'ln -s {outside} "$S/{folder}.link"')
    assert (shared / folder).is_dir() and not (shared / folder).is_symlink()
    assert not os.path.lexists(shared / f"{folder}.old")


@needs_root
def test_a_member_cannot_remove_the_lock_so_no_second_daemon_starts(shared, people, served):
    lock = shared / "run" / "lock"
    inode = lock.stat().st_ino
    fails(people.member, shared, 'rm -f "$S/run/lock"')
    fails(people.member, shared, 'mv "$S/run/lock" "$S/run/lock.old"')
    assert lock.stat().st_ino == inode
    second = fnspool(shared, "daemon", check=False, timeout=30)
    assert second.returncode != 0 and f"pid {served.pid}" in second.stderr, second.stderr


@needs_root
def test_a_member_reads_the_journal_and_logs_but_cannot_write_them(shared, people, served):
    drop(shared, "hello", "first.json", {"n": 1})  # it prints: its log is a file
    (event,) = wait_for(lambda: fnspool_json(shared, "events", "list", "--status", "Succeeded"))
    segments = sorted((shared / "journal").glob("segment-*.jsonl"))
    assert event["id"] in works(people.member, shared, 'cat "$S"/journal/segment-*.jsonl')
    assert event["id"] in works(people.member, shared, 'cat "$S"/logs/hello/*.log')
    works(people.member, shared, 'cat "$S/run/status.json"')
    before = [p.read_bytes() for p in segments]
    forged = '{"kind": "Enqueued"}'
    fails(people.member, shared, f"echo '{forged}' >> \"{segments[-1]}\"")
    fails(people.member, shared, f"echo '{forged}' > \"$S/journal/segment-9999999999999999.jsonl\"")
    fails(people.member, shared, f"echo '{forged}' > \"$S/destinations/forged.json\"")
    fails(people.member, shared, 'echo x > "$S/rejected/forged.json.reason.json"')
    assert [p.read_bytes() for p in segments[: len(before)]] == before
    assert not (shared / "journal" / "segment-9999999999999999.jsonl").exists()


# -- the group's: incoming/ and control/ ---------------------------------------------------


@needs_root
def test_a_member_drops_payloads_envelopes_and_requests(shared, people, served):
    held = {"function": "echo", "payload": {"n": 2}, "id": "held-1", "delay": 3600}
    works(people.member, shared, put("incoming/echo/mine.json", '{"n": 1}'))
    works(people.member, shared, put("incoming/envelope.json", json.dumps(held)))
    wait_for(lambda: "incoming/envelope.json" in sources(shared), 30, "the envelope")
    works(people.member, shared, put("control/stop.json", '{"action": "stop", "id": "held-1"}'))
    wait_for(lambda: fnspool_json(shared, "events", "get", "held-1")["state"] == "Stopped", 30)
    found = sources(shared)
    assert found["incoming/echo/mine.json"] == people.member_uid
    assert found["incoming/envelope.json"] == people.member_uid
    (answer,) = [r for r in journal_records(shared, Request) if r.name == "stop.json"]
    assert answer.uid == people.member_uid and answer.outcome == "applied", answer
    assert not list((shared / "rejected").iterdir())


@needs_root
def test_a_member_forgets_only_the_events_they_submitted(shared, people, served):
    """Forgetting erases history: a member may forget their own ended events, not another's;
    the administrator (root here) may forget any."""
    works(people.member, shared, put("incoming/echo/mine.json", '{"n": 1}'))
    drop(shared, "echo", "roots.json", {"n": 2})  # by root
    wait_for(lambda: len(fnspool_json(shared, "events", "list", "--status", "Succeeded")) == 2)
    by_path = {r.source.path: r.id for r in journal_records(shared) if getattr(r, "source", None)}
    mine, roots = by_path["incoming/echo/mine.json"], by_path["incoming/echo/roots.json"]
    forget = {"action": "forget", "id": mine, "ids": [roots]}
    works(people.member, shared, put("control/forget.json", json.dumps(forget)))
    wait_for(
        lambda: len([r for r in journal_records(shared, Request) if r.name == "forget.json"]) == 2
    )
    answers = {r.id: r for r in journal_records(shared, Request) if r.name == "forget.json"}
    assert answers[mine].outcome == "applied", answers[mine]
    assert answers[roots].outcome == "refused"
    assert "only its submitter or the administrator" in answers[roots].message
    assert [e["id"] for e in fnspool_json(shared, "events", "list")] == [roots]
    fnspool(shared, "events", "forget", roots, "--yes")
    assert fnspool_json(shared, "events", "list") == []


@needs_root
def test_someone_outside_the_group_can_do_nothing(shared, people, served):
    drop(shared, "echo", "first.json", {"n": 1})
    wait_for(lambda: fnspool_json(shared, "events", "list", "--status", "Succeeded"))
    for script in (
        'ls "$S"',
        'cat "$S/run/status.json"',
        'cat "$S"/journal/segment-*.jsonl',
        'echo x > "$S/tmp/.x.tmp"',
        'echo {} > "$S/incoming/echo/x.json"',
        'echo {} > "$S/incoming/x.json"',
        'echo \'{"action": "stop", "id": "x"}\' > "$S/control/x.json"',
        'rm -f "$S/run/lock"',
    ):
        fails(people.outsider, shared, script)


@needs_root
def test_a_member_removed_from_the_group_is_refused_from_then_on(shared, people, served):
    """A session started while a member keeps the group (supplementary groups are fixed at
    login), so the kernel still lets it write: the daemon must check membership anew."""
    held = {"function": "echo", "payload": {}, "id": "held-2", "delay": 3600}
    drop(shared, "", "held.json", held)  # by root: an envelope in incoming/ itself
    wait_for(lambda: "incoming/held.json" in sources(shared), 30, "the held event")
    session = subprocess.Popen(
        [
            "runuser", "-u", people.member, "--", "sh", "-c",
            f'S="$1"; {put("incoming/echo/before.json", "{}")} || exit 3; read go; '
            f'{put("incoming/echo/after.json", "{}")} || exit 4; '
            f"{put('control/stop.json', json.dumps({'action': 'stop', 'id': 'held-2'}))} || exit 5",
            "sh", str(shared),
        ],
        stdin=subprocess.PIPE,
        text=True,
        cwd="/",
    )  # fmt: skip
    try:
        wait_for(lambda: "incoming/echo/before.json" in sources(shared), 30, "the member's payload")
        _admin("gpasswd", "--delete", people.member, people.group)
        assert session.stdin is not None
        session.stdin.write("go\n")
        session.stdin.close()
        assert session.wait(30) == 0
    finally:
        session.kill()
    wait_for(lambda: {"incoming/echo/after.json", "control/stop.json"} <= reasons(shared).keys())
    for name in ("incoming/echo/after.json", "control/stop.json"):
        reason = reasons(shared)[name]
        assert reason["reason"] == "owner" and str(people.member_uid) in reason["message"]
    assert "incoming/echo/after.json" not in sources(shared)
    assert fnspool_json(shared, "events", "get", "held-2")["state"] == "Enqueued"


# -- the daemon refuses what it cannot trust -------------------------------------------------


def _loose(spool: Path, case: str) -> tuple[Path, str]:
    """Break one rule on `spool`; the path the refusal must name, and its fix (or the words)."""
    functions = spool / "functions"
    match case:
        case "functions":
            os.chmod(functions, 0o2770)
            return functions, "chmod go-w"
        case "definition":
            os.chmod(functions / "echo.toml", 0o664)
            return functions / "echo.toml", "chmod go-w"
        case "code":
            os.chmod(functions / "echo" / "index.py", 0o666)
            return functions / "echo" / "index.py", "chmod go-w"
        case "code-folder-link":
            (functions / "echo").rename(spool.parent / "echo-code")
            (functions / "echo").symlink_to(spool.parent / "echo-code")
            return functions / "echo", "is a symbolic link"
        case "journal-link":
            (spool / "journal").rename(spool.parent / "journal")
            (spool / "journal").symlink_to(spool.parent / "journal")
            return spool / "journal", "is a symbolic link"
        case "run":
            os.chmod(spool / "run", 0o2770)
            return spool / "run", "chmod go-w"
        case "rejected-owner":
            os.chown(spool / "rejected", 54321, 54321)
            return spool / "rejected", "is owned by 54321"
        case "forged-segment":
            forged = spool / "journal" / "segment-0000000000000099.jsonl"
            forged.write_text("")
            os.chown(forged, 54321, 54321)
            return forged, "is owned by 54321"
        case "incoming-not-sticky":
            os.chmod(spool / "incoming", 0o2770)
            return spool / "incoming", "chmod +t"
        case "above":
            os.chmod(spool.parent, 0o777)
            return spool.parent, "chmod go-w"
    raise AssertionError(case)


@needs_root
@pytest.mark.parametrize(
    "case",
    [
        "functions",
        "definition",
        "code",
        "code-folder-link",
        "journal-link",
        "run",
        "rejected-owner",
        "forged-segment",
        "incoming-not-sticky",
        "above",
    ],
)
def test_the_daemon_refuses_a_spool_others_could_change_naming_path_and_fix(spool, case):
    Spool(spool).create()
    mode = spool.parent.stat().st_mode
    path, fix = _loose(spool, case)
    try:
        proc = fnspool(spool, "daemon", check=False, timeout=30)
    finally:
        os.chmod(spool.parent, mode)
    assert proc.returncode == 1
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert "unsafe spool" in lines[0] and str(path) in lines[0] and fix in lines[0], lines[0]
    if fix.startswith(("chmod", "chown")):
        assert f"{fix} {path}" in lines[0], lines[0]
    assert not (spool / "run" / "status.json").exists()  # it never started


@needs_root
def test_a_definition_others_could_change_is_refused_and_not_kept(spool, daemon, tmp_path):
    """Checked at each load too: a code folder outside the spool (found only by reading the
    definition), and one loosened while the daemon runs, seen at the next reload."""
    far = tmp_path / "far-code"
    shutil.copytree(spool / "functions" / "echo", far)
    os.chmod(far, 0o775)  # its group could put code there
    (spool / "functions" / "far.toml").write_text(f'code = "{far}"\n')
    d = daemon.start()

    def errors() -> dict[str, str]:
        return json.loads((spool / "run" / "status.json").read_text())["definition_errors"]

    assert "not trusted" in errors()["far"] and f"chmod go-w {far}" in errors()["far"]
    os.chmod(spool / "functions" / "echo", 0o2775)
    d.signal(signal.SIGHUP)
    wait_for(lambda: "echo" in errors(), what="echo refused at the reload")
    assert f"chmod go-w {spool / 'functions' / 'echo'}" in errors()["echo"]
    drop(spool, "echo", "late.json", {})  # its last good definition is not served either
    wait_for(lambda: "incoming/echo/late.json" in reasons(spool), what="the late payload refused")
    assert reasons(spool)["incoming/echo/late.json"]["reason"] == "unknown_function"


# -- folders swapped while the daemon runs ---------------------------------------------------


@needs_root
def test_a_folder_swapped_for_a_link_while_running_is_never_followed(spool, daemon, tmp_path):
    """Only root (or the daemon's user) could swap them now: this simulates it. The daemon
    works through descriptors opened with O_NOFOLLOW, so the links lead it nowhere."""
    d = daemon.start()
    outside = tmp_path / "outside"
    (outside / "rejected").mkdir(parents=True)
    (spool / "rejected").rename(spool / "rejected.away")
    (spool / "rejected").symlink_to(outside / "rejected")
    bad = spool / "incoming" / "bad.json"
    bad.write_text("not json")
    wait_for(lambda: "cannot reject incoming/bad.json" in d.log_text(), 30, "the refused move")
    assert bad.exists(), "kept where it was"
    (outside / "incoming" / "echo").mkdir(parents=True)
    (outside / "incoming" / "bad.json").write_text("not json")
    (outside / "incoming" / "echo" / "p.json").write_text("{}")
    (outside / "control").mkdir()
    (outside / "control" / "stop.json").write_text('{"action": "stop", "id": "x"}')
    before = tree(outside)
    for folder in ("incoming", "control"):
        (spool / folder).rename(spool / f"{folder}.away")
        (spool / folder).symlink_to(outside / folder)
    wait_for(lambda: "cannot list incoming/" in d.log_text(), 30, "the refused incoming/")
    wait_for(lambda: f"cannot list {spool / 'control'}" in d.log_text(), 30, "refused control/")
    assert tree(outside) == before
    assert not [p for p in sources(spool) if "p.json" in p or "bad.json" in p]


# -- what the daemon writes ------------------------------------------------------------------


@needs_root
@pytest.mark.parametrize("umask", [0o000, 0o077])
def test_what_the_daemon_writes_is_for_its_group_only_whatever_its_umask(spool, daemon, umask):
    old = os.umask(umask)  # inherited by the daemon
    try:
        d = daemon.start("--snapshot-every", "1", wait_ready=False)
    finally:
        os.umask(old)
    wait_for(d.ready, 60, "the daemon to be ready")
    drop(spool, "fail", "f.json", {})
    drop(spool, "echo", "e.json", {})
    (spool / "incoming" / "bad.json").write_text("not json")
    letters = spool / "destinations" / "dead-letter"
    wait_for(lambda: letters.is_dir() and list(letters.iterdir()), 60, "the dead letter")
    wait_for(lambda: list((spool / "journal").glob("snapshot-*")), 30, "a snapshot")
    wait_for(lambda: list((spool / "rejected").glob("*.reason.json")), 30, "the reason")
    d.stop()
    written = [
        *(spool / "journal").iterdir(),
        *(spool / "logs").rglob("*"),
        *(spool / "destinations").rglob("*"),
        *(spool / "run").iterdir(),
        *(spool / "rejected").glob("*.reason.json"),
    ]
    for path in written:
        mode = stat.S_IMODE(path.lstat().st_mode)
        assert not mode & 0o027, f"{path}: {mode:o}"  # nothing for others, no group writes
        assert mode & stat.S_IRGRP, f"{path}: {mode:o}"  # the group reads
    kinds = {p.name.split("-")[0] for p in written}
    assert {"segment", "snapshot", "status.json", "lock"} <= kinds, kinds
