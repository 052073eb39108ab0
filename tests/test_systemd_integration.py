"""fnspool under a real systemd: a user manager started as root in a private mount namespace.

PID 1 need not be systemd: `unshare -m` gives the manager its own /run (a tmpfs with
/run/systemd/system and /run/user/0), and the shell that starts it moves into a cgroup of its own
(removed at the end). The unit is the one `fnspool systemd install --user` writes, with a drop-in
for what the test needs: a short watchdog, the stuck-loop knob, a log file, a short drain.
The tests run in order against one manager and one spool.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import REPO, fnspool_json, wait_for

from daemon.cli import systemd as install

SYSTEMD = Path("/usr/lib/systemd/systemd")
RUNTIME_DIR = "/run/user/0"  # inside the manager's mount namespace
DRAIN = 2  # seconds the daemon lets a running event finish on stop
WATCHDOG = 6  # WatchdogSec= for the test (pings every 3 s)
SETUP_DONE = "namespace and cgroup ready"

pytestmark = [
    pytest.mark.skipif(os.geteuid() != 0, reason="a user manager in a mount namespace needs root"),
    pytest.mark.skipif(not SYSTEMD.exists(), reason=f"{SYSTEMD} is not installed"),
    pytest.mark.skipif(
        not (shutil.which("unshare") and shutil.which("nsenter") and shutil.which("systemctl")),
        reason="needs unshare, nsenter and systemctl",
    ),
]

VER_TOML = 'handler = "index.handler"\ntimeout = 10\nenvironment = { VERSION = "VERSION_VALUE" }\n'
VER_PY = "import os\n\n\ndef handler(event, context):\n    return os.environ['VERSION']\n"
SLEEPY_TOML = """handler = "index.handler"
timeout = 120
environment = { MARKS = "MARKS_DIR" }

[lifecycle]
pre_stop = "index.pre_stop"
"""
SLEEPY_PY = """import os
import time

MARKS = os.environ["MARKS"]


def handler(event, context):
    first = not os.path.exists(os.path.join(MARKS, "started"))
    with open(os.path.join(MARKS, "started"), "a") as f:
        f.write(f"{context.request_id} attempt {context.attempt}\\n")
    if first:
        time.sleep(60)  # longer than the drain: cut off by the stop
    return "done"


def pre_stop(context):
    with open(os.path.join(MARKS, "prestop"), "a") as f:
        f.write("PreStop ran\\n")
"""


def _cgroup_roots() -> list[Path]:
    """The cgroup2 mount and the v1 name=systemd mount (hybrid hosts have both)."""
    roots = []
    with open("/proc/self/mountinfo") as f:
        for line in f:
            fields = line.split()
            sep = fields.index("-")
            fstype, options = fields[sep + 1], fields[sep + 3]
            if fstype == "cgroup2" or (fstype == "cgroup" and "name=systemd" in options):
                roots.append(Path(fields[4]))
    return roots


def _remove_cgroup(path: Path) -> None:
    """Kill whatever is left in a cgroup tree, then remove it, deepest first."""
    if not path.exists():
        return
    for _ in range(100):
        pids = [
            int(pid)
            for procs in path.rglob("cgroup.procs")
            for pid in procs.read_text().split()
            if pid.strip()
        ]
        if not pids:
            break
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        time.sleep(0.05)
    for sub in sorted((p for p in path.rglob("*") if p.is_dir()), key=lambda p: -len(p.parts)):
        with contextlib.suppress(OSError):
            sub.rmdir()
    with contextlib.suppress(OSError):
        path.rmdir()


def open_installation(stash: Path) -> str:
    """Shell lines that, inside a private mount namespace, let every user reach this
    installation (an interpreter under /root, as pyenv puts it): each closed directory on the
    way is covered by an open tmpfs holding bind mounts of just the entries needed."""
    paths = [*install.installation_paths(), REPO]
    lines = []
    for i, closed in enumerate(install.unreadable_by_others(paths)):
        if not closed.is_dir():
            continue
        keep = f"{stash}/{i}"
        lines += [f"mkdir -p {keep}", f"mount --bind {closed} {keep}"]
        lines.append(f"mount -t tmpfs -o mode=0755 fnspool-test-open {closed}")
        for entry in sorted({p.relative_to(closed).parts[0] for p in paths if closed in p.parents}):
            make = "mkdir" if (closed / entry).is_dir() else "touch"
            lines += [f"{make} {closed}/{entry}", f"mount --bind {keep}/{entry} {closed}/{entry}"]
    return "\n".join(lines) + "\n"


class UserManager:
    """`systemd --user` in a private mount namespace and a cgroup of its own."""

    def __init__(self, base: Path, setup: str = "") -> None:
        self.base = base
        self.setup = setup  # more shell lines run in the namespace before the manager starts
        self.home = base / "home"
        self.home.mkdir()
        self.log = base / "manager.log"
        self.daemon_log = base / "daemon.log"
        self.results = base / "results"
        self.marks = base / "marks"
        self.marks.mkdir()
        self.spool = self.home / ".local" / "share" / "fnspool"
        name = f"fnspool-test-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        self.cgroups = [root / name for root in _cgroup_roots()]
        self.proc: subprocess.Popen[bytes] | None = None
        self.prestop_seen: bool | None = None

    def env(self) -> dict[str, str]:
        keep = ("PATH", "LANG", "TERM")
        env = {k: os.environ[k] for k in keep if k in os.environ}
        env.update(HOME=str(self.home), XDG_RUNTIME_DIR=RUNTIME_DIR, SYSTEMD_PAGER="")
        return env

    def start(self) -> None:
        cgroups = " ".join(str(c) for c in self.cgroups)
        script = f"""set -e
for cg in {cgroups}; do mkdir "$cg"; echo $$ > "$cg/cgroup.procs"; done
mount -t tmpfs -o mode=0755 fnspool-test /run
# a manager that is not PID 1 still logs to /dev/console: into our log instead
mount --bind {self.log} /dev/console
mkdir -p /run/systemd/system {RUNTIME_DIR}
chmod 0700 {RUNTIME_DIR}
{self.setup}
echo "{SETUP_DONE}"
exec {SYSTEMD} --user --log-target=console --log-level=info
"""
        self.log.touch()
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(
                ["unshare", "-m", "--propagation", "private", "sh", "-c", script],
                stdout=log,
                stderr=subprocess.STDOUT,
                env=self.env(),
                start_new_session=True,
            )
        private = Path(f"/proc/{self.proc.pid}/root{RUNTIME_DIR}/systemd/private")

        def up() -> bool:
            if self.proc is not None and self.proc.poll() is not None:
                text = self.log.read_text(errors="replace")
                if SETUP_DONE not in text:  # no namespace or no writable cgroup: a container
                    pytest.skip(f"cannot host a user manager here: {text.strip()[-300:]}")
                raise AssertionError(f"the user manager exited:\n{text}")
            return private.exists()

        wait_for(up, 30, "the user manager's private socket")

    def inside(self, *argv: str, check: bool = True) -> subprocess.CompletedProcess:
        """Run a command in the manager's mount namespace."""
        assert self.proc is not None
        proc = subprocess.run(
            ["nsenter", "-t", str(self.proc.pid), "-m", "--", *argv],
            capture_output=True,
            text=True,
            env=self.env(),
            timeout=60,
            check=False,
            cwd=REPO,
        )
        if check and proc.returncode != 0:
            raise AssertionError(
                f"{' '.join(argv)}: exit {proc.returncode}\n{proc.stderr}\n"
                f"--- daemon log ---\n{self.daemon_text()[-3000:]}"
            )
        return proc

    def systemctl(self, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        proc = self.inside("systemctl", "--user", *args, check=False)
        if check and proc.returncode != 0:
            unit = next((a for a in reversed(args) if a.endswith(".service")), "fnspool.service")
            status = self.inside("systemctl", "--user", "status", unit, check=False)
            raise AssertionError(
                f"systemctl --user {' '.join(args)}: exit {proc.returncode}\n{proc.stderr}\n"
                f"{status.stdout}\n--- daemon log ---\n{self.daemon_text()[-3000:]}"
            )
        return proc

    def path(self, path: str | Path) -> Path:
        """A path of the namespace, seen from outside it."""
        assert self.proc is not None
        return Path(f"/proc/{self.proc.pid}/root") / Path(path).relative_to("/")

    def show(self, *props: str) -> dict[str, str]:
        out = self.systemctl("show", "fnspool.service", "-p", ",".join(props)).stdout
        return dict(line.split("=", 1) for line in out.splitlines() if "=" in line)

    def daemon_text(self) -> str:
        try:
            return self.daemon_log.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def last_result(self) -> str:
        """`SERVICE_RESULT EXIT_CODE EXIT_STATUS` of the last run that ended."""
        return self.results.read_text().splitlines()[-1]

    def status(self) -> dict:
        return json.loads((self.spool / "run" / "status.json").read_text())

    def close(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.systemctl("stop", "fnspool.service", check=False)
            self.proc.send_signal(signal.SIGTERM)  # a user manager exits on SIGTERM
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        for cgroup in self.cgroups:
            _remove_cgroup(cgroup)


def _write_functions(spool: Path, marks: Path, version: str) -> None:
    functions = spool / "functions"
    (functions / "ver").mkdir(parents=True, exist_ok=True)
    (functions / "ver" / "index.py").write_text(VER_PY)
    (functions / "ver.toml").write_text(VER_TOML.replace("VERSION_VALUE", version))
    (functions / "sleepy").mkdir(exist_ok=True)
    (functions / "sleepy" / "index.py").write_text(SLEEPY_PY)
    (functions / "sleepy.toml").write_text(SLEEPY_TOML.replace("MARKS_DIR", str(marks)))


@pytest.fixture(scope="module")
def manager(tmp_path_factory: pytest.TempPathFactory) -> Iterator[UserManager]:
    """The manager, with the user unit installed and a drop-in for the test; the unit stopped."""
    m = UserManager(tmp_path_factory.mktemp("systemd"))
    env = {**m.env(), "PATH": os.environ.get("PATH", "/usr/bin:/bin")}
    proc = subprocess.run(
        [sys.executable, "-m", "daemon", "systemd", "install", "--user"],
        capture_output=True,
        text=True,
        env=env,
        cwd=REPO,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    unit = m.home / ".config" / "systemd" / "user" / "fnspool.service"
    assert unit.exists(), proc.stdout
    command = " ".join(install.fnspool_command())
    dropin = unit.parent / "fnspool.service.d" / "test.conf"
    dropin.parent.mkdir()
    dropin.write_text(
        "[Service]\n"
        f"Environment=FNSPOOL_TEST_STUCK_LOOP_ON_SIGUSR1=1\n"
        f"WatchdogSec={WATCHDOG}\n"
        "RestartSec=200ms\n"
        f"StandardOutput=append:{m.daemon_log}\n"
        "StandardError=inherit\n"
        "ExecStart=\n"
        f"ExecStart={command} daemon --spool %h/.local/share/fnspool --drain-timeout {DRAIN}\n"
        # how each run ended, as systemd saw it (a user manager's own log goes nowhere here)
        "ExecStopPost=/bin/sh -c 'echo $$SERVICE_RESULT $$EXIT_CODE $$EXIT_STATUS >> "
        f"{m.results}'\n"
    )
    _write_functions(m.spool, m.marks, "1")
    try:
        m.start()
        m.systemctl("daemon-reload")
        yield m
    finally:
        m.close()


def _event(spool: Path, request_id: str) -> dict | None:
    try:
        return fnspool_json(spool, "events", "get", request_id)
    except AssertionError:
        return None  # not journaled yet


def _ended(spool: Path, request_id: str) -> dict | None:
    event = _event(spool, request_id)
    return event if event and event["ended_at"] else None


def _invoke(m: UserManager, function: str, request_id: str) -> str:
    """Drop an envelope with an explicit id, the maildir way; return the id."""
    temp = m.spool / "tmp" / f".{request_id}.tmp"
    temp.write_text(json.dumps({"function": function, "payload": {}, "id": request_id}))
    os.rename(temp, m.spool / "incoming" / f"{request_id}.json")
    return request_id


def test_start_returns_once_the_daemon_is_ready(manager):
    m = manager
    m.systemctl("start", "fnspool.service")  # Type=notify: returns after READY=1
    # READY=1 is sent after status.json says ready: both hold the moment start returns
    status = m.status()
    props = m.show("ActiveState", "SubState", "MainPID", "StatusText", "Type", "NRestarts")
    assert props["ActiveState"] == "active" and props["SubState"] == "running", props
    assert props["Type"] == "notify"
    assert status["ready"] and int(props["MainPID"]) == status["pid"]
    assert props["StatusText"].startswith("ready: queue 0"), props
    assert props["NRestarts"] == "0"


def test_a_dropped_file_succeeds(manager):
    request_id = _invoke(manager, "ver", "first")
    event = wait_for(lambda: _ended(manager.spool, request_id), 30, "the event to end")
    assert event["state"] == "Succeeded" and event["result"] == "1"


def test_reload_waits_and_the_new_definition_is_used(manager):
    m = manager
    before = m.status()["reloads"]
    _write_functions(m.spool, m.marks, "2")
    m.systemctl("reload", "fnspool.service")  # ExecReload returns once the daemon reloaded
    assert m.status()["reloads"] == before + 1
    assert "SIGHUP: reloading definitions" in m.daemon_text()
    assert m.show("ActiveState")["ActiveState"] == "active"
    request_id = _invoke(m, "ver", "second")
    event = wait_for(lambda: _ended(m.spool, request_id), 30, "the event to end")
    assert event["state"] == "Succeeded" and event["result"] == "2"


def test_the_watchdog_restarts_a_daemon_whose_loop_is_stuck(manager):
    m = manager
    old_pid = int(m.show("MainPID")["MainPID"])
    m.systemctl("kill", "--kill-whom=main", "--signal=SIGUSR1", "fnspool.service")
    wait_for(lambda: "blocking the event loop" in m.daemon_text(), what="the loop to block")

    def restarted() -> dict[str, str] | None:
        props = m.show("ActiveState", "MainPID", "NRestarts")
        pid = int(props["MainPID"] or 0)
        if props["ActiveState"] == "active" and pid not in (0, old_pid):
            return props
        return None

    props = wait_for(restarted, WATCHDOG + 30, "systemd to restart the stuck daemon")
    assert props["NRestarts"] == "1"
    # killed by the watchdog (SIGABRT), not by anything else
    assert m.last_result().split()[:1] == ["watchdog"], m.last_result()
    with contextlib.suppress(ProcessLookupError):
        os.kill(old_pid, 0)
        raise AssertionError(f"the stuck daemon {old_pid} is still alive")
    # and the new one serves
    request_id = _invoke(m, "ver", "third")
    event = wait_for(lambda: _ended(m.spool, request_id), 30, "the event to end")
    assert event["state"] == "Succeeded"


def test_stop_with_a_running_event_then_it_runs_again_after_start(manager):
    m = manager
    request_id = _invoke(m, "sleepy", "long")
    wait_for(lambda: (m.marks / "started").exists(), 30, "the handler to start")
    wait_for(
        lambda: (_event(m.spool, request_id) or {}).get("state") == "Running",
        what="Running in the journal",
    )
    began = time.monotonic()
    m.systemctl("stop", "fnspool.service")  # SIGTERM to the daemon only (KillMode=mixed)
    took = time.monotonic() - began
    props = m.show("ActiveState", "Result", "ExecMainStatus", "ExecMainCode")
    assert props["ActiveState"] == "inactive"
    # a clean exit 0 of its own (not systemd's SIGKILL), after the drain
    assert props["Result"] == "success" and props["ExecMainStatus"] == "0", props
    assert took >= DRAIN, took
    print(f"\nsystemctl stop took {took:.2f} s (drain {DRAIN} s)")
    assert m.last_result() == "success exited 0"
    m.prestop_seen = (m.marks / "prestop").exists()
    cut_off = fnspool_json(m.spool, "events", "get", request_id)
    assert cut_off["state"] == "Running" and not cut_off["ended_at"], "cut off, not ended"
    m.systemctl("start", "fnspool.service")
    event = wait_for(lambda: _ended(m.spool, request_id), 30, "the event to run again")
    assert event["state"] == "Succeeded" and event["result"] == "done"
    states = [h["state"] for h in event["history"]]
    assert states.count("Running") == 2 and "Retrying" in states, states
    retry = next(h for h in event["history"] if h["state"] == "Retrying")
    assert retry["reason"] == "Interrupted", retry
    assert not any(h["state"] in ("Failed", "Stopped") for h in event["history"])
    assert len((m.marks / "started").read_text().splitlines()) == 2


def test_stop_ran_prestop_on_the_instance(manager):
    if manager.prestop_seen is None:
        pytest.skip("the stop test did not run")
    assert manager.prestop_seen, "PreStop did not run when systemd stopped the daemon"


def test_install_now_enables_and_uninstall_now_removes(manager):
    m = manager
    unit = m.home / ".config" / "systemd" / "user" / "fnspool.service"
    m.systemctl("stop", "fnspool.service")
    proc = m.inside(*install.fnspool_command(), "systemd", "install", "--user", "--now")
    assert "running: systemctl --user enable --now fnspool.service" in proc.stdout
    assert (unit.parent / "default.target.wants" / "fnspool.service").is_symlink()
    assert m.show("ActiveState", "UnitFileState") == {
        "ActiveState": "active",
        "UnitFileState": "enabled",
    }
    m.inside(*install.fnspool_command(), "systemd", "uninstall", "--user", "--now")
    assert not unit.exists()
    assert not (unit.parent / "default.target.wants" / "fnspool.service").is_symlink()
    props = m.show("ActiveState", "LoadState")
    assert props == {"ActiveState": "inactive", "LoadState": "not-found"}, props
    assert (m.spool / "journal").is_dir(), "the spool is kept"
