"""The hardened system unit, run for real: as the fnspool user, in its sandbox, over /var/spool.

The same private manager as test_systemd_integration, with a private copy of /etc mounted over
/etc (so `fnspool systemd install` can create the fnspool user for real without touching the
host) and tmpfs on /var/spool and /mnt. The system units are installed into the manager's unit
path. Sandboxing options that the host cannot give any unit at all (probed with systemd-run, as a
container may forbid some mounts) are switched off in a drop-in and reported; the rest must let
the daemon serve while keeping everything but the spool read-only.
"""

from __future__ import annotations

import json
import os
import shutil
import warnings
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import EXAMPLES, drop, fnspool_json, wait_for
from test_systemd_integration import UserManager, _ended, open_installation, pytestmark  # noqa: F401 - same skips

from daemon.cli import systemd as install

SPOOL = "/var/spool/fnspool"
OPEN_DIR = "/mnt"  # world-writable in the namespace: the sandbox alone must keep it read-only
# the unit's options that need mounts or namespaces; a host may refuse some to every unit
PROBED = (
    "ProtectSystem=strict",
    "ProtectHome=yes",
    "PrivateTmp=yes",
    "PrivateDevices=yes",
    "PrivateMounts=yes",
    "ProtectKernelTunables=yes",
    "ProtectKernelModules=yes",
    "ProtectKernelLogs=yes",
    "ProtectControlGroups=yes",
    "ProtectClock=yes",
    "ProtectHostname=yes",
    "ProtectProc=invisible",
    "ProcSubset=pid",
)
PROBE_TOML = 'handler = "index.handler"\ntimeout = 10\n'
PROBE_PY = """import os


def handler(event, context):
    found = {"uid": os.getuid(), "policy": os.sched_getscheduler(0), "writes": {}}
    for path in event["paths"]:
        try:
            with open(os.path.join(path, ".fnspool-probe"), "w") as f:
                f.write("x")
            os.unlink(os.path.join(path, ".fnspool-probe"))
            found["writes"][path] = "writable"
        except OSError as exc:
            found["writes"][path] = exc.strerror
    return found
"""


@pytest.fixture(scope="module")
def system(tmp_path_factory: pytest.TempPathFactory) -> Iterator[UserManager]:
    hidden = install.under_tmp(install.installation_paths())
    if hidden:
        pytest.skip(f"this installation lies in {hidden[0]}, which the unit's PrivateTmp hides")
    base = tmp_path_factory.mktemp("system-unit")
    etc = base / "etc"
    shutil.copytree("/etc", etc, symlinks=True)
    setup = open_installation(base / "stash") + (
        f"mount --bind {etc} /etc\n"
        "mount -t tmpfs -o mode=0755 fnspool-test-spool /var/spool\n"
        f"mount -t tmpfs -o mode=1777 fnspool-test-open {OPEN_DIR}\n"
    )
    m = UserManager(base, setup=setup)
    try:
        m.start()
        # a user manager's notify socket is for its own user; systemd's own is open to all
        # (/run/systemd/notify), which a daemon running as fnspool needs
        for path, mode in (("/run/user/0", 0o755), ("/run/user/0/systemd", 0o755)):
            os.chmod(m.path(path), mode)
        os.chmod(m.path("/run/user/0/systemd/notify"), 0o777)
        _install(m)
        yield m
    finally:
        m.close()


def _install(m: UserManager) -> None:
    units = m.home / ".config" / "systemd" / "user"
    proc = m.inside(
        *install.fnspool_command(), "systemd", "install", "--unit-dir", str(units), "--spool", SPOOL
    )
    assert "fnspool.service" in proc.stdout
    refused = [opt for opt in PROBED if not _unit_may_use(m, opt)]
    if refused:
        refusals = ", ".join(refused)
        warnings.warn(f"this host refuses {refusals} to every unit: off here", stacklevel=1)
    for unit in ("fnspool.service", "fnspool@.service"):
        dropin = units / f"{unit}.d" / "test.conf"
        dropin.parent.mkdir()
        dropin.write_text(
            "[Service]\n"
            + "".join(f"{opt.split('=')[0]}=no\n" for opt in refused)
            + f"StandardOutput=append:{m.daemon_log}\nStandardError=inherit\n"
        )
    m.refused = refused  # type: ignore[attr-defined]
    functions = m.path(SPOOL) / "functions"
    shutil.copytree(EXAMPLES / "echo", functions / "echo")
    shutil.copy(EXAMPLES / "echo.toml", functions / "echo.toml")
    (functions / "probe").mkdir()
    (functions / "probe" / "index.py").write_text(PROBE_PY)
    (functions / "probe.toml").write_text(PROBE_TOML)
    m.systemctl("daemon-reload")


def _unit_may_use(m: UserManager, option: str) -> bool:
    proc = m.inside("systemd-run", "--user", "--wait", "-q", "-p", option, "/bin/true", check=False)
    return proc.returncode == 0


def _succeeded(spool: Path, function: str) -> list[dict] | None:
    found = fnspool_json(spool, "events", "list", "--function", function, "--status", "Succeeded")
    return found or None


def test_the_system_unit_serves_as_fnspool_with_only_the_spool_writable(system):
    m = system
    m.systemctl("start", "fnspool.service")
    props = m.show("ActiveState", "MainPID", "User")
    assert props["ActiveState"] == "active" and props["User"] == "fnspool"
    passwd = (m.base / "etc" / "passwd").read_text()
    uid = next(int(x.split(":")[2]) for x in passwd.splitlines() if x.startswith("fnspool:"))
    status = (Path("/proc") / props["MainPID"] / "status").read_text()
    assert f"Uid:\t{uid}\t" in status, "the daemon runs as the fnspool user"
    spool = m.path(SPOOL)
    assert json.loads((spool / "run" / "status.json").read_text())["ready"]
    # a file dropped by someone else (root here) is taken and run
    drop(spool, "echo", "hello.json", {"n": 1})
    (event,) = wait_for(lambda: _succeeded(spool, "echo"), 30, "the echo event")
    assert fnspool_json(spool, "events", "get", event["id"])["result"] == {"n": 1}
    # in an instance: the spool is writable, the rest of the system is not, not even a
    # world-writable folder (ProtectSystem=strict); /tmp is the unit's own (PrivateTmp)
    paths = [SPOOL + "/tmp", OPEN_DIR, "/etc", "/var/tmp", "/tmp"]
    drop(spool, "probe", "probe.json", {"paths": paths})
    (event,) = wait_for(lambda: _succeeded(spool, "probe"), 30, "the probe event")
    result = fnspool_json(spool, "events", "get", event["id"])["result"]
    assert result["uid"] == uid
    assert result["policy"] == os.SCHED_BATCH  # the unit's system call filter lets it be set
    writable = result["writes"]
    assert writable[SPOOL + "/tmp"] == "writable"
    if "ProtectSystem=strict" not in m.refused:  # type: ignore[attr-defined]
        assert writable[OPEN_DIR] == "Read-only file system", writable
    assert writable["/etc"] != "writable"
    assert not (m.path(OPEN_DIR) / ".fnspool-probe").exists()
    # a member of the fnspool group drops files too (incoming/ and tmp/ are group-writable)
    m.inside("useradd", "--no-log-init", "--no-create-home", "--groups", "fnspool", "ada")
    invoke = [*install.fnspool_command(), "invoke", "echo", "--payload", '{"by": "ada"}']
    proc = m.inside("runuser", "-u", "ada", "--", *invoke, "--spool", SPOOL)
    request_id = proc.stdout.strip()
    event = wait_for(lambda: _ended(spool, request_id), 30, "ada's event")
    assert event["state"] == "Succeeded" and event["result"] == {"by": "ada"}
    # reload and a clean stop, as the system unit does them
    m.systemctl("reload", "fnspool.service")
    m.systemctl("stop", "fnspool.service")
    props = m.show("Result", "ExecMainStatus")
    assert props == {"Result": "success", "ExecMainStatus": "0"}, props
    assert "SIGHUP: reloading definitions" in m.daemon_text()
    assert os.stat(spool).st_mode & 0o7777 == 0o2750


def test_the_template_serves_a_second_spool_it_creates(system):
    m = system
    m.systemctl("start", "fnspool@two.service")
    spool = m.path(SPOOL + "-two")
    st = spool.stat()
    passwd = (m.base / "etc" / "passwd").read_text()
    uid = next(int(x.split(":")[2]) for x in passwd.splitlines() if x.startswith("fnspool:"))
    assert st.st_uid == uid and st.st_mode & 0o7777 == 0o2750
    assert json.loads((spool / "run" / "status.json").read_text())["ready"]
    assert fnspool_json(spool, "status")["running"]
    m.systemctl("stop", "fnspool@two.service")
    out = m.systemctl("show", "fnspool@two.service", "-p", "Result").stdout
    assert out.strip() == "Result=success"


def test_the_path_unit_starts_the_service_when_an_envelope_waits(system):
    m = system
    m.systemctl("stop", "fnspool.service")
    m.systemctl("start", "fnspool.path")
    try:
        assert m.show("ActiveState")["ActiveState"] == "inactive"
        invoke = [*install.fnspool_command(), "invoke", "echo", "--payload", '{"path": 1}']
        request_id = m.inside(*invoke, "--spool", SPOOL).stdout.strip()
        event = wait_for(lambda: _ended(m.path(SPOOL), request_id), 30, "the event, via .path")
        assert event["state"] == "Succeeded"
        assert m.show("ActiveState")["ActiveState"] == "active"
    finally:
        m.systemctl("stop", "fnspool.path", "fnspool.service")
