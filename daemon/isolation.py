"""Network namespaces for http servers on a fixed port: whether this machine lets the daemon
make them, and the command that starts a server inside one (daemon/worker/netns.py).

Light on purpose (no asyncio): the CLI asks too, to say in `functions list` why a fixed-port
function runs one instance at a time.
"""

from __future__ import annotations

import functools
import logging
import os
import shutil
import subprocess
import sys
from pathlib import Path

log = logging.getLogger(__name__)

ENTRY = Path(__file__).resolve().parent / "worker" / "netns.py"
#: the namespaces an instance gets: a user namespace makes the net one without privilege
UNSHARE_ARGS = ("--user", "--net", "--map-root-user")

#: TEST ONLY: behave as on a machine where no network namespace can be made (fixed-port servers
#: then run on the host, one at a time). Never set it anywhere else.
NO_NETNS_TEST_ONLY = "FNSPOOL_TEST_ONLY_NO_NETNS"


@functools.cache
def unavailable() -> str:
    """Why this process cannot give a server a network namespace of its own, "" when it can.
    Found once by making one (about 5 ms): kernels, sysctls and security modules differ."""
    if os.environ.get(NO_NETNS_TEST_ONLY) == "1":
        log.critical("%s is set: no network namespaces (tests only)", NO_NETNS_TEST_ONLY)
        return f"{NO_NETNS_TEST_ONLY} is set"
    unshare = shutil.which("unshare")
    if unshare is None:
        return "util-linux's unshare is not installed"
    try:
        proc = subprocess.run(
            [unshare, *UNSHARE_ARGS, "true"], capture_output=True, text=True, timeout=10
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"unshare {' '.join(UNSHARE_ARGS)} failed: {exc}"
    if proc.returncode != 0:
        return proc.stderr.strip() or f"unshare {' '.join(UNSHARE_ARGS)} exited {proc.returncode}"
    return ""


def isolated_argv(channel_fd: int, argv: list[str]) -> list[str]:
    """`argv` started in new user and network namespaces, `channel_fd` (in the child) being its
    socket maker's end of the daemon's channel."""
    unshare = shutil.which("unshare") or "unshare"
    entry = [sys.executable, "-I", "-S", str(ENTRY), str(channel_fd), "--"]
    return [unshare, *UNSHARE_ARGS, "--", *entry, *argv]


def one_at_a_time_reason(port: int) -> str:
    """Why a function on `port` runs one instance at a time, "" when it need not."""
    if not port:
        return ""
    why = unavailable()
    if not why:
        return ""
    return f"port {port} on the host, one instance at a time: no network namespace ({why})"
