"""sd_notify and the watchdog: a short sender of our own (one datagram per message).

The protocol (sd_notify(3)): newline-separated `KEY=VALUE` assignments in one datagram sent to
the AF_UNIX socket named by `$NOTIFY_SOCKET`; a name starting with `@` is in the abstract
namespace. Outside systemd there is no socket and every call does nothing. A message that cannot
be sent is logged, never raised: the service manager's bookkeeping must not stop the daemon.

The watchdog pings come from a task on the event loop, so a loop stuck in a callback stops them
and systemd restarts the daemon (`WatchdogSec=`).
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import socket
import time
from collections.abc import Mapping

log = logging.getLogger(__name__)

#: set to "1" (tests only) so that SIGUSR1 wedges the event loop: the watchdog must catch it
STUCK_LOOP_KNOB = "FNSPOOL_TEST_STUCK_LOOP_ON_SIGUSR1"


def _address(name: str) -> str | bytes:
    """The socket address for a `$NOTIFY_SOCKET` value (abstract names start with `@`)."""
    if name.startswith("@"):
        return b"\0" + name[1:].encode()
    return name


def monotonic_usec() -> int:
    """CLOCK_MONOTONIC in microseconds, as `MONOTONIC_USEC=` wants it."""
    return time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000


class Notifier:
    """Sends state changes to the service manager, if there is one."""

    def __init__(self, environ: Mapping[str, str] | None = None) -> None:
        env = os.environ if environ is None else environ
        self.socket_name = env.get("NOTIFY_SOCKET", "")
        self.watchdog_usec = _watchdog_usec(env)
        self._sock: socket.socket | None = None
        self._failed = False
        self._status = ""  # the last STATUS= sent: the heartbeat repeats only a change
        if self.socket_name and (self.socket_name[0] in "/@"):
            self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
            self._sock.setblocking(False)
        elif self.socket_name:
            log.warning("NOTIFY_SOCKET=%r is not a unix socket path: ignored", self.socket_name)

    @property
    def enabled(self) -> bool:
        """Whether a service manager listens."""
        return self._sock is not None

    def send(self, *assignments: str) -> bool:
        """Send `KEY=VALUE` assignments as one datagram; True when it went out."""
        if self._sock is None:
            return False
        data = "\n".join(assignments).encode() + b"\n"
        try:
            self._sock.sendto(data, _address(self.socket_name))
        except OSError as exc:
            # a full socket buffer or a manager gone: report once, keep serving
            if not self._failed:
                log.warning("sd_notify to %s failed: %s", self.socket_name, exc)
            self._failed = True
            return False
        self._failed = False
        for assignment in assignments:
            if assignment.startswith("STATUS="):
                self._status = assignment[len("STATUS=") :]
        return True

    def ready(self, status: str = "") -> bool:
        """Start-up (or a reload) is complete."""
        return self.send("READY=1", *([f"STATUS={status}"] if status else []))

    def reloading(self) -> bool:
        """A reload begins; READY=1 must follow when it ends."""
        return self.send("RELOADING=1", f"MONOTONIC_USEC={monotonic_usec()}", "STATUS=reloading")

    def stopping(self, status: str = "stopping") -> bool:
        """Shutdown begins."""
        return self.send("STOPPING=1", f"STATUS={status}")

    def status(self, text: str) -> bool:
        """A free-form status line (`systemctl status` shows it), sent when it changed."""
        if text == self._status:
            return False
        return self.send(f"STATUS={text}")

    def watchdog(self) -> bool:
        """The event loop is alive."""
        return self.send("WATCHDOG=1")

    async def run_watchdog(self) -> None:
        """Ping at half of `WATCHDOG_USEC`, forever; returns at once when no watchdog is set."""
        if self._sock is None or not self.watchdog_usec:
            return
        interval = self.watchdog_usec / 2e6
        log.info("watchdog: pinging every %.1fs", interval)
        while True:
            self.watchdog()
            await asyncio.sleep(interval)

    def close(self) -> None:
        """Release the socket."""
        if self._sock is not None:
            self._sock.close()
            self._sock = None


def _watchdog_usec(env: Mapping[str, str]) -> int:
    """`WATCHDOG_USEC` when it is meant for this process (`WATCHDOG_PID` unset or ours), else 0."""
    try:
        usec = int(env.get("WATCHDOG_USEC", "0"))
        pid = int(env.get("WATCHDOG_PID", "0"))
    except ValueError:
        return 0
    if pid and pid != os.getpid():
        return 0
    return max(usec, 0)


def install_stuck_loop_knob(loop: asyncio.AbstractEventLoop) -> None:
    """Tests only: with STUCK_LOOP_KNOB=1, SIGUSR1 blocks the event loop for good."""
    if os.environ.get(STUCK_LOOP_KNOB) != "1":
        return

    def wedge() -> None:
        log.warning("SIGUSR1 with %s=1: blocking the event loop", STUCK_LOOP_KNOB)
        while True:
            time.sleep(3600)

    loop.add_signal_handler(signal.SIGUSR1, wedge)
