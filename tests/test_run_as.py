"""Functions run as the user they name (`user`, or the daemon's `--run-as`), through the real
daemon: a real user made with useradd, ids checked from inside each runtime, stops, timeouts and
the memory limit still ending everything the user's instance ran, and a root daemon naming every
function that runs as root only because nothing says otherwise."""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import (
    DaemonProcess,
    fnspool,
    fnspool_json,
    journal_records,
    sweep_left_running,
    wait_for,
)

from daemon.cli import parser as cli
from daemon.cli import run as commands
from daemon.errors import FnspoolError
from daemon.model import HookRun
from daemon.users import Account, X, denied, lookup

SYSTEM_PYTHON = "/usr/bin/python3"  # readable by any user, unlike a venv's under /root

HANDLERS = """
import os
import signal
import subprocess
import time


def whoami(event, context):
    return {"uid": os.getuid(), "gid": os.getgid(), "home": os.environ["HOME"]}


def hang(event, context):
    subprocess.Popen(["sleep", "300"])  # a child of its own: the kill must end it too
    print("hanging as", os.getuid(), flush=True)
    time.sleep(300)


def graceful(event, context):
    asked = []
    signal.signal(signal.SIGTERM, lambda *_: asked.append(True))
    print("waiting for SIGTERM", flush=True)
    while not asked:
        time.sleep(0.05)
    return {"stopped_as": os.getuid()}


def pre_stop(context):
    print("pre-stop as", os.getuid(), flush=True)
"""

SERVER = """
import json
import os
from http.server import BaseHTTPRequestHandler, HTTPServer


class Handler(BaseHTTPRequestHandler):
    def do_POST(self):
        self.rfile.read(int(self.headers.get("content-length") or 0))
        body = json.dumps({"uid": os.getuid(), "gid": os.getgid()}).encode()
        self.send_response(200)
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


HTTPServer(("127.0.0.1", int(os.environ["FC_SERVER_PORT"])), Handler).serve_forever()
"""


# -- fixtures ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def account() -> Iterator[Account]:
    """A real user of its own, made for these tests and removed after them."""
    if os.geteuid() != 0:
        pytest.skip("needs root: to make a user and to start instances as another user")
    for tool in ("useradd", "userdel", "setpriv"):
        if shutil.which(tool) is None:
            pytest.skip(f"needs {tool}")
    name = f"fnspt-{secrets.token_hex(3)}"
    subprocess.run(
        ["useradd", "--no-create-home", "--user-group", "--shell", "/usr/sbin/nologin", name],
        check=True,
        capture_output=True,
    )
    try:
        yield lookup(name)
    finally:
        uid = lookup(name).uid
        wait_for(lambda: not processes_of(uid), what=f"no process of {name} before userdel")
        subprocess.run(["userdel", name], capture_output=True)
        subprocess.run(["groupdel", name], capture_output=True)  # if userdel left it


@pytest.fixture
def python3() -> str:
    """An interpreter any user may run (skips where there is none)."""
    if not os.access(SYSTEM_PYTHON, os.X_OK):
        pytest.skip(f"needs {SYSTEM_PYTHON}: the tests' own interpreter may be unusable by others")
    return SYSTEM_PYTHON


@pytest.fixture
def spool(account: Account) -> Iterator[Path]:
    """A spool under a 0755 folder of /tmp (pytest's tmp_path is 0700: the user could not reach
    its code), with a python code folder and an http server in it."""
    root = Path(tempfile.mkdtemp(prefix="fnspool-run-as-", dir="/tmp"))
    os.chmod(root, 0o755)
    spool = root / "spool"
    for folder, name, text in (("py", "index.py", HANDLERS), ("web", "server.py", SERVER)):
        code = spool / "functions" / folder
        code.mkdir(parents=True)
        (code / name).write_text(text)
    for path in (spool, spool / "functions", *(spool / "functions").iterdir()):
        os.chmod(path, 0o755)
    try:
        yield spool
    finally:
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
def daemon(spool: Path) -> Iterator[Any]:
    """Start daemons over `spool`; killed, and what they left swept, at the end."""
    started: list[DaemonProcess] = []

    class Factory:
        def start(self, *extra: str) -> DaemonProcess:
            d = DaemonProcess(spool).start(*extra)
            started.append(d)
            return d

    yield Factory()
    for d in started:
        d.close()
    sweep_left_running(spool)


# -- helpers ----------------------------------------------------------------------------------


def define(spool: Path, name: str, body: str) -> None:
    """Write functions/NAME.toml."""
    path = spool / "functions" / f"{name}.toml"
    path.write_text(body)
    os.chmod(path, 0o644)


def exec_function(spool: Path, name: str, command: list[str], extra: str = "") -> None:
    """An exec function running `command` (in the python code folder: it needs one)."""
    define(spool, name, f'runtime = "exec"\ncode = "py"\ncommand = {json.dumps(command)}\n{extra}')


def user(account: Account) -> str:
    """The definition line that names `account`."""
    return f'user = "{account.name}"\n'


def invoke(spool: Path, function: str, payload: object = None) -> dict[str, Any]:
    """Invoke and wait until the event ends; the event in full."""
    args = ["invoke", function, "--payload", json.dumps(payload or {}), "--wait", "--json"]
    return json.loads(fnspool(spool, *args, check=False).stdout)


def running(spool: Path, function: str) -> str:
    """Invoke without waiting; the id once the event runs."""
    request_id = fnspool_json(spool, "invoke", function)["id"]
    wait_for(lambda: state_of(spool, request_id) == "Running", what=f"{function} to run")
    return request_id


def state_of(spool: Path, request_id: str) -> str | None:
    found = fnspool(spool, "events", "get", request_id, "--json", check=False)
    return json.loads(found.stdout)["state"] if found.returncode == 0 else None


def processes_of(uid: int) -> list[int]:
    """Every live process whose real uid is `uid` (zombies left out: they are gone)."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            text = Path(f"/proc/{entry}/status").read_text()
        except OSError:
            continue
        fields = dict(line.split(":", 1) for line in text.splitlines() if ":" in line)
        if int(fields["Uid"].split()[0]) == uid and not fields["State"].strip().startswith("Z"):
            found.append(int(entry))
    return found


def status_json(spool: Path) -> dict[str, Any]:
    return json.loads((spool / "run" / "status.json").read_text())


def instance_pid(spool: Path, function: str) -> int | None:
    found = status_json(spool)["instances"].get(function)
    return found[0]["pid"] if found else None


# -- who runs what ----------------------------------------------------------------------------


def test_exec_function_runs_as_its_user(spool, daemon, account):
    exec_function(spool, "who", ["id", "-u"], user(account))
    daemon.start()
    done = invoke(spool, "who")
    assert done["state"] == "Succeeded", done["error"]
    assert done["result"] == account.uid
    assert done["history"][-1]["usage"]["max_memory_mb"] > 0  # wait4 still sees its cost


def test_python_function_runs_as_its_user_in_its_cgroup(spool, daemon, account, python3):
    define(
        spool,
        "py",
        f'python = "{python3}"\nhandler = "index.whoami"\nuser = "{account.name}"\n',
    )
    d = daemon.start()
    done = invoke(spool, "py")
    assert done["state"] == "Succeeded", done["error"]
    assert done["result"] == {"uid": account.uid, "gid": account.gid, "home": account.home}
    pid = wait_for(lambda: instance_pid(spool, "py"), what="the instance in status.json")
    if "instances get cgroups under" in d.log_text():
        # moved into its group by the root daemon although it runs as the user
        group = Path(f"/proc/{pid}/cgroup").read_text()
        assert "/fnspool-" in group, group


def test_http_server_runs_as_its_user_and_dies_with_the_daemon(spool, daemon, account, python3):
    define(
        spool,
        "web",
        f'runtime = "http"\ncommand = ["{python3}", "server.py"]\nuser = "{account.name}"\n',
    )
    d = daemon.start()
    done = invoke(spool, "web")
    assert done["state"] == "Succeeded", done["error"]
    assert done["result"] == {"uid": account.uid, "gid": account.gid}
    assert processes_of(account.uid)
    # the parent-death signal is set after the switch to the user (a switch clears it)
    d.kill()
    wait_for(lambda: not processes_of(account.uid), what="the server to die with the daemon")


def test_run_as_applies_to_functions_without_a_user(spool, daemon, account):
    exec_function(spool, "plain", ["id", "-u"])
    exec_function(spool, "rooted", ["id", "-u"], 'user = "root"\n')
    daemon.start("--run-as", account.name)
    assert invoke(spool, "plain")["result"] == account.uid
    assert invoke(spool, "rooted")["result"] == 0  # the function's own `user` comes first
    rows = {row["name"]: row for row in fnspool_json(spool, "functions", "list")}
    assert (rows["plain"]["user"], rows["plain"]["implicit_root"]) == (account.name, False)
    assert (rows["rooted"]["user"], rows["rooted"]["implicit_root"]) == ("root", False)
    assert fnspool_json(spool, "status")["implicit_root"] == []


def test_run_as_is_read_from_the_environment(monkeypatch):
    monkeypatch.setenv("FNSPOOL_RUN_AS", "someone")
    assert cli.build_parser().parse_args(["daemon"]).run_as == "someone"
    assert cli.build_parser().parse_args(["daemon", "--run-as", "other"]).run_as == "other"


def test_an_unknown_run_as_user_is_refused():
    with pytest.raises(FnspoolError, match="unknown user 'fnspool-no-such-user'"):
        commands._run_as("fnspool-no-such-user")


# -- definition errors and the root flag ------------------------------------------------------


def test_an_unknown_user_is_a_definition_error(spool, daemon, account):
    exec_function(spool, "ghost", ["id"], 'user = "fnspool-no-such-user"\n')
    exec_function(spool, "who", ["id", "-u"], user(account))
    daemon.start()
    rows = {row["name"]: row for row in fnspool_json(spool, "functions", "list")}
    assert "`user`: unknown user 'fnspool-no-such-user'" in rows["ghost"]["error"]
    assert rows["ghost"]["path"].endswith("functions/ghost.toml")
    errors = fnspool_json(spool, "status")["definition_errors"]
    assert "unknown user 'fnspool-no-such-user'" in errors["ghost"]
    assert invoke(spool, "who")["result"] == account.uid  # the others keep running
    # and a daemon-wide --run-as naming nobody is refused at start
    refused = fnspool(spool, "daemon", "--run-as", "fnspool-no-such-user", check=False)
    assert refused.returncode == 2
    assert "unknown user 'fnspool-no-such-user'" in refused.stderr


def test_a_root_daemon_flags_functions_without_a_user(spool, daemon, account):
    exec_function(spool, "plain", ["id", "-u"])
    exec_function(spool, "mine", ["id", "-u"], user(account))
    exec_function(spool, "rooted", ["id", "-u"], 'user = "root"\n')
    d = daemon.start()
    rows = {row["name"]: row for row in fnspool_json(spool, "functions", "list")}
    assert {name: (row["user"], row["implicit_root"]) for name, row in rows.items()} == {
        "plain": ("root", True),
        "mine": (account.name, False),
        "rooted": ("root", False),  # said outright: not flagged
    }
    assert "as ROOT (no user set)" in fnspool(spool, "functions", "list").stdout
    assert fnspool_json(spool, "status")["implicit_root"] == ["plain"]
    assert status_json(spool)["implicit_root"] == ["plain"]
    text = fnspool(spool, "status").stdout
    assert "running as root with no `user` set (set one, or --run-as): plain" in text
    assert invoke(spool, "plain")["result"] == 0  # flagged, not refused
    # one warning per function, when its definition is loaded: not again at a reload
    d.signal(signal.SIGHUP)
    wait_for(lambda: status_json(spool)["reloads"] == 1, what="the reload")
    warnings = [line for line in d.log_text().splitlines() if "runs as root" in line]
    assert len(warnings) == 1 and "function plain runs as root" in warnings[0]


# -- stops, timeouts and limits of an instance running as the user ----------------------------


def test_forced_stop_kills_everything_the_users_instance_ran(spool, daemon, account, python3):
    define(
        spool,
        "hang",
        f'python = "{python3}"\ncode = "py"\nhandler = "index.hang"\nuser = "{account.name}"\n'
        'timeout = 600\n[lifecycle]\npre_stop = "index.pre_stop"\n',
    )
    daemon.start()
    request_id = running(spool, "hang")
    wait_for(lambda: len(processes_of(account.uid)) >= 2, what="the worker and its child")
    fnspool(spool, "events", "stop", request_id, "--wait")
    done = fnspool_json(spool, "events", "get", request_id)
    assert done["state"] == "Stopped"
    wait_for(lambda: not processes_of(account.uid), what="no process of the user left")
    hooks = [h for h in journal_records(spool, HookRun) if h.hook == "pre_stop"]
    assert [(h.request_id, h.ok) for h in hooks] == [(request_id, True)]
    log = Path(done["log_path"]).read_text()
    assert f"pre-stop as {account.uid}" in log


def test_graceful_stop_reaches_the_users_instance(spool, daemon, account, python3):
    define(
        spool,
        "polite",
        f'python = "{python3}"\ncode = "py"\nhandler = "index.graceful"\n'
        f'user = "{account.name}"\ntimeout = 600\n',
    )
    daemon.start()
    request_id = running(spool, "polite")
    log = Path(fnspool_json(spool, "events", "get", request_id)["log_path"])
    wait_for(lambda: log.exists() and "waiting for SIGTERM" in log.read_text(), what="handler")
    fnspool(spool, "events", "stop", request_id, "--graceful", "--wait")
    done = fnspool_json(spool, "events", "get", request_id)
    assert done["state"] == "Stopped" and done["result"] == {"stopped_as": account.uid}


def test_timeout_kills_everything_the_users_command_ran(spool, daemon, account):
    command = ["sh", "-c", "sleep 300 & sleep 300"]
    exec_function(spool, "slow", command, f"{user(account)}timeout = 2\n[async]\nmax_retries = 0\n")
    daemon.start()
    request_id = fnspool_json(spool, "invoke", "slow")["id"]
    wait_for(lambda: len(processes_of(account.uid)) >= 2, what="the command and its child")
    wait_for(lambda: state_of(spool, request_id) == "Failed", what="the timeout")
    done = fnspool_json(spool, "events", "get", request_id)
    assert done["error"]["type"] == "FunctionTimeout"
    wait_for(lambda: not processes_of(account.uid), what="no process of the user left")


def test_memory_limit_still_kills_the_users_instance(spool, daemon, account, python3):
    grow = "b = b'x' * (200 << 20); import time; time.sleep(60)"
    limit = "memory_mb = 64\n[async]\nmax_retries = 0\n"
    exec_function(spool, "hog", [python3, "-c", grow], user(account) + limit)
    daemon.start()
    done = invoke(spool, "hog")
    assert done["state"] == "Failed" and done["error"]["type"] == "MemoryLimitExceeded"
    wait_for(lambda: not processes_of(account.uid), what="no process of the user left")


# -- what the user cannot reach ---------------------------------------------------------------


def test_a_code_folder_the_user_cannot_read_is_a_clear_error(spool, daemon, account):
    code = spool / "functions" / "locked"
    code.mkdir(mode=0o700)
    (code / "run").write_text("#!/bin/sh\nid -u\n")
    os.chmod(code / "run", 0o755)
    define(spool, "locked", f'runtime = "exec"\ncommand = ["./run"]\n{user(account)}')
    daemon.start()
    done = invoke(spool, "locked")
    assert done["state"] == "Invalid"
    assert done["error"]["message"] == (
        f"the code folder {code} (mode 0700, owner root) is not readable and executable "
        f"by user {account.name}"
    )


def test_an_interpreter_the_user_cannot_reach_is_a_clear_error(spool, daemon, account):
    blocked = denied(account, sys.executable, X)  # the daemon's own, the default `python`
    if blocked is None:
        pytest.skip(f"{sys.executable} is usable by any user here")
    define(spool, "py", f'handler = "index.whoami"\nuser = "{account.name}"\n')
    daemon.start()
    done = invoke(spool, "py")
    assert done["state"] == "Invalid"
    message = done["error"]["message"]
    assert message.startswith(f"the interpreter {sys.executable} ") and blocked[1] in message
