"""sd_notify against sockets the tests open: the sender alone, then the real daemon behind it."""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import socket
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import PATIENCE, drop, events, fnspool, fnspool_json, wait_for, wait_for_async

from daemon.notify import STUCK_LOOP_KNOB, Notifier, monotonic_usec
from daemon.supervise.spawn import STRIPPED_ENV, child_env
from daemon.supervise.supervisor import Supervisor


class Manager:
    """The service manager's end: a datagram socket that collects notify messages."""

    def __init__(self, sock: socket.socket, name: str) -> None:
        self.sock = sock
        self.name = name
        self.messages: list[dict[str, str]] = []

    def poll(self) -> list[dict[str, str]]:
        """Read what has arrived; every message as a dict of its assignments."""
        while True:
            try:
                data = self.sock.recv(4096)
            except BlockingIOError:
                return self.messages
            lines = data.decode().splitlines()
            self.messages.append(dict(line.split("=", 1) for line in lines if line))

    def wait(self, key: str, value: str | None = None, after: int = 0, timeout: float = 20):
        """The first message from index `after` on that sets `key` (to `value`); its index."""

        def found() -> int | None:
            for i, m in enumerate(self.poll()[after:], after):
                if key in m and (value is None or m[key] == value):
                    return i + 1  # truthy even for the first message
            return None

        try:
            return wait_for(found, timeout, f"{key}={value or '*'} on the notify socket") - 1
        except AssertionError as exc:
            raise AssertionError(f"{exc}; received {self.messages}") from None


@pytest.fixture
def manager(tmp_path: Path) -> Iterator[Manager]:
    """A notify socket bound to a path, as systemd's /run/systemd/notify."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    path = tmp_path / "notify"
    sock.bind(str(path))
    sock.setblocking(False)
    yield Manager(sock, str(path))
    sock.close()


@pytest.fixture
def abstract_manager() -> Iterator[Manager]:
    """A notify socket in the abstract namespace (`@name`), as systemd --user may use."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    name = f"fnspool-test-{uuid.uuid4().hex}"
    sock.bind(b"\0" + name.encode())
    sock.setblocking(False)
    yield Manager(sock, "@" + name)
    sock.close()


def test_messages_reach_a_path_socket(manager):
    notifier = Notifier({"NOTIFY_SOCKET": manager.name})
    assert notifier.enabled
    before = monotonic_usec()
    assert notifier.ready("ready: queue 0")
    assert notifier.reloading()
    assert notifier.stopping()
    notifier.close()
    ready, reloading, stopping = wait_for(lambda: len(manager.poll()) >= 3 and manager.messages)
    assert ready == {"READY": "1", "STATUS": "ready: queue 0"}
    assert reloading["RELOADING"] == "1"
    assert before <= int(reloading["MONOTONIC_USEC"]) <= monotonic_usec()
    assert stopping["STOPPING"] == "1"


def test_a_status_line_is_sent_again_only_when_it_changed(manager):
    notifier = Notifier({"NOTIFY_SOCKET": manager.name})
    assert notifier.status("queue 1")
    assert not notifier.status("queue 1")
    assert notifier.ready("queue 2")
    assert not notifier.status("queue 2")
    assert notifier.status("queue 3")
    statuses = wait_for(lambda: len(manager.poll()) >= 3 and manager.messages)
    assert [m["STATUS"] for m in statuses] == ["queue 1", "queue 2", "queue 3"]


def test_messages_reach_an_abstract_socket(abstract_manager):
    notifier = Notifier({"NOTIFY_SOCKET": abstract_manager.name})
    assert notifier.send("STATUS=hello", "WATCHDOG=1")
    (message,) = wait_for(abstract_manager.poll)
    assert message == {"STATUS": "hello", "WATCHDOG": "1"}


def test_without_a_manager_nothing_is_sent_and_nothing_fails(tmp_path, caplog):
    assert not Notifier({}).enabled
    assert Notifier({}).ready() is False
    assert not Notifier({"NOTIFY_SOCKET": "relative/path"}).enabled
    gone = Notifier({"NOTIFY_SOCKET": str(tmp_path / "no-such-socket")})
    assert gone.enabled and gone.ready() is False and gone.status("x") is False
    warnings = [r for r in caplog.records if "sd_notify" in r.getMessage()]
    assert len(warnings) == 1, "a failing socket is reported once, not at every heartbeat"


async def test_watchdog_pings_at_half_the_interval(manager, monkeypatch):
    env = {
        "NOTIFY_SOCKET": manager.name,
        "WATCHDOG_USEC": "200000",
        "WATCHDOG_PID": str(os.getpid()),
    }
    notifier = Notifier(env)
    # the pauses the watchdog asks for between pings (they are slept for real)
    pauses: list[float] = []
    real_sleep = asyncio.sleep

    async def sleep(delay: float, *args: Any) -> Any:
        if asyncio.current_task() is task:
            pauses.append(delay)
        return await real_sleep(delay, *args)

    monkeypatch.setattr(asyncio, "sleep", sleep)
    task = asyncio.get_running_loop().create_task(notifier.run_watchdog())
    start = time.monotonic()
    await wait_for_async(lambda: len(manager.poll()) >= 4, what="four pings")
    elapsed = time.monotonic() - start
    task.cancel()
    assert all(m == {"WATCHDOG": "1"} for m in manager.messages)
    # a ping, then 0.1 s, then a ping...: half of the 0.2 s watchdog
    assert pauses[:3] == [0.1] * 3, pauses
    assert elapsed >= 0.25, elapsed  # the pauses were slept, not skipped
    print(f"\nfour pings took {elapsed:.2f} s (0.3 s expected)")


async def test_watchdog_meant_for_another_process_is_ignored(manager):
    other = Notifier({"NOTIFY_SOCKET": manager.name, "WATCHDOG_USEC": "1000", "WATCHDOG_PID": "1"})
    assert other.watchdog_usec == 0
    await asyncio.wait_for(other.run_watchdog(), PATIENCE)  # returns at once, never pings
    assert Notifier({"NOTIFY_SOCKET": manager.name, "WATCHDOG_USEC": "x"}).watchdog_usec == 0


def test_the_service_manager_variables_never_reach_a_child_env():
    base = {
        "PATH": "/usr/bin",
        "NOTIFY_SOCKET": "/run/n",
        "WATCHDOG_USEC": "1",
        "WATCHDOG_PID": "2",
    }
    env = child_env(base, {"LEVEL": "info"})
    assert env == {"PATH": "/usr/bin", "LEVEL": "info"}
    assert {"NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID"} <= set(STRIPPED_ENV)


async def test_a_spawned_instance_process_does_not_inherit_them(tmp_path):
    out = tmp_path / "env.txt"
    env = {**os.environ, "NOTIFY_SOCKET": "@x", "WATCHDOG_USEC": "5", "WATCHDOG_PID": "7"}
    fd = os.open(out, os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        child = Supervisor().spawn(["/usr/bin/env"], env, {1: fd})
    finally:
        os.close(fd)
    assert (await asyncio.wait_for(child.wait(), PATIENCE)).returncode == 0
    names = {line.split("=", 1)[0] for line in out.read_text().splitlines()}
    assert "PATH" in names
    assert not names & {"NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID"}


# -- the real daemon behind a notify socket ------------------------------------------------

ENV_FUNCTION = 'runtime = "python"\nhandler = "index.handler"\ntimeout = 10\n'
ENV_HANDLER = "import os\n\ndef handler(event, context):\n    return sorted(os.environ)\n"


@pytest.fixture
def notified_daemon(spool, daemon, manager, monkeypatch):
    """The daemon started with NOTIFY_SOCKET and a watchdog of 1 s, as systemd would."""
    (spool / "functions" / "envdump").mkdir(parents=True)
    (spool / "functions" / "envdump.toml").write_text(ENV_FUNCTION)
    (spool / "functions" / "envdump" / "index.py").write_text(ENV_HANDLER)
    monkeypatch.setenv("NOTIFY_SOCKET", manager.name)
    monkeypatch.setenv("WATCHDOG_USEC", "1000000")
    monkeypatch.setenv(STUCK_LOOP_KNOB, "1")
    monkeypatch.delenv("WATCHDOG_PID", raising=False)
    # waiting before the start: READY=1 must come after the first scan has journaled it
    (spool / "incoming").mkdir(parents=True, exist_ok=True)
    envelope = {"function": "echo", "payload": {}, "id": "waiting"}
    (spool / "incoming" / "waiting.json").write_text(json.dumps(envelope))
    return daemon.start(wait_ready=False)


def test_the_daemon_speaks_the_protocol(spool, notified_daemon, manager):
    d = notified_daemon
    ready = manager.wait("READY", "1")
    assert d.ready(), "READY=1 only once the daemon is ready (status.json says so)"
    assert re.fullmatch(
        r"ready: queue \d+, running \d+, instances \d+", manager.messages[ready]["STATUS"]
    )
    # the file that waited is journaled (durably: Enqueued is fsynced before READY=1)
    assert fnspool_json(spool, "events", "get", "waiting")["function"] == "echo"
    first_ping = manager.wait("WATCHDOG", "1")
    manager.wait("WATCHDOG", "1", after=first_ping + 1)  # and again: pings keep coming
    # an event runs, and its instance does not see the daemon's notify socket or watchdog
    drop(spool, "envdump", "e.json", {})
    (event,) = wait_for(
        lambda: events(spool, "--status", "Succeeded", "--function", "envdump"), what="the event"
    )
    names = fnspool_json(spool, "events", "get", event["id"])["result"]
    assert "PATH" in names and not set(names) & {"NOTIFY_SOCKET", "WATCHDOG_USEC"}
    # the heartbeat tells systemd of the change (one more instance: envdump's)
    manager.wait("STATUS", after=ready + 1)
    # SIGHUP: RELOADING=1 with MONOTONIC_USEC, then READY=1
    mark = len(manager.poll())
    d.signal(signal.SIGHUP)
    reloading = manager.wait("RELOADING", "1", after=mark)
    assert int(manager.messages[reloading]["MONOTONIC_USEC"]) <= monotonic_usec()
    manager.wait("READY", "1", after=reloading + 1)
    # SIGTERM: STOPPING=1, then a clean exit
    mark = len(manager.poll())
    assert d.stop() == 0
    manager.wait("STOPPING", "1", after=mark)


def test_a_stuck_loop_stops_the_watchdog_pings(notified_daemon, manager):
    d = notified_daemon
    manager.wait("WATCHDOG", "1")
    d.signal(signal.SIGUSR1)  # the test-only knob: the loop blocks for good
    # logged before blocking: a ping sent before that is already in the socket's buffer
    wait_for(lambda: "blocking the event loop" in d.log_text(), what="the loop to block")
    mark = len(manager.poll())
    # a live loop pings every 0.5 s: after 1.5 s of silence systemd would have killed it
    deadline = time.monotonic() + 1.5
    while time.monotonic() < deadline:
        assert not any("WATCHDOG" in m for m in manager.poll()[mark:]), "pings from a stuck loop"
        time.sleep(0.05)
    assert d.proc is not None and d.proc.poll() is None
    d.kill()


def test_systemd_reload_waits_until_the_daemon_has_reloaded(spool, daemon):
    d = daemon.start()
    assert d.proc is not None
    status = spool / "run" / "status.json"
    before = fnspool_json(spool, "status")
    assert before["running"]
    proc = fnspool(spool, "systemd", "reload", "--pid", str(d.proc.pid))
    assert proc.returncode == 0
    # it returned after the reload, not merely after the signal
    assert json.loads(status.read_text())["reloads"] == 1
    assert "SIGHUP: reloading definitions" in d.log_text()
    gone = fnspool(spool, "systemd", "reload", "--pid", "999999999", check=False)
    assert gone.returncode != 0 and "no process" in gone.stderr
