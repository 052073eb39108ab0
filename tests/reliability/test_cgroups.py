"""Where the daemon may make cgroup v2 groups, an instance's kill reaches a process that left its
tree and cleared its environment (neither the process-tree walk nor the token finds it)."""

from __future__ import annotations

import contextlib
import json
import os
import random
import signal
from pathlib import Path

import pytest
from conftest import cgroup_name, drop, events, fnspool, gone, wait_for

from daemon.cgroups import own_cgroup

ESCAPER = """
import os, time


def handler(event, context):
    pid = os.fork()
    if pid == 0:  # a daemon of its own: new session, parent gone, environment cleared
        os.setsid()
        if os.fork() == 0:
            os.execve("/bin/sleep", ["sleep", event["seconds"]], {})
        os._exit(0)
    os.waitpid(pid, 0)
    time.sleep(600)
"""


def _cgroups_usable() -> bool:
    own = own_cgroup()
    if own is None or os.geteuid() != 0:
        return False
    probe = own / f"fnspool-probe-{os.getpid()}"
    try:
        probe.mkdir()
    except OSError:
        return False
    usable = (probe / "cgroup.kill").exists()
    probe.rmdir()
    return usable


pytestmark = [
    pytest.mark.reliability,
    pytest.mark.skipif(not _cgroups_usable(), reason="no writable cgroup v2 with cgroup.kill"),
]


def escapees(seconds: str) -> list[int]:
    """The `sleep SECONDS` processes (SECONDS is unique to the test)."""
    found = []
    for entry in os.listdir("/proc"):
        with contextlib.suppress(OSError):
            if Path(f"/proc/{entry}/cmdline").read_bytes() == f"sleep\0{seconds}\0".encode():
                found.append(int(entry))
    return found


def test_a_forced_stop_kills_what_left_the_tree_and_cleared_its_environment(spool, daemon):
    (spool / "functions" / "escaper").mkdir()
    (spool / "functions" / "escaper" / "index.py").write_text(ESCAPER)
    (spool / "functions" / "escaper.toml").write_text('handler = "index.handler"\ntimeout = 900\n')
    daemon.start()
    seconds = f"1000.{random.randrange(10**6):06d}"
    drop(spool, "escaper", "a.json", {"seconds": seconds})
    found = wait_for(lambda: escapees(seconds), what="the escapee to start")
    assert len(found) == 1 and not Path(f"/proc/{found[0]}/environ").read_bytes()
    # in its instance's group, under the daemon's, named as the session's clean-up expects
    lines = Path(f"/proc/{found[0]}/cgroup").read_text().splitlines()
    group = next(line for line in lines if line.startswith("0::"))
    assert f"/{cgroup_name(spool)}/" in group, group
    event = events(spool, "--function", "escaper")[0]
    fnspool(spool, "events", "stop", event["id"], "--wait")
    try:
        # nothing else finds it: it left the tree and carries no token
        wait_for(lambda: gone(found[0]), what="the escapee killed with its cgroup")
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(found[0], signal.SIGKILL)  # never left running by a failure
    status = json.loads(fnspool(spool, "status", "--json").stdout)
    assert status["running"]
