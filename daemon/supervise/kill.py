"""Kill a process tree that may fork while it is being killed: stop first, then kill."""

from __future__ import annotations

import contextlib
import os
import signal
from collections.abc import Callable, Iterable

from daemon.supervise import procfs

MAX_KILL_ROUNDS = 50  # rounds of "stop what is new" before the kill, against a forking tree


def stop_then_kill(find: Callable[[], Iterable[int]], *, until_still: bool = False) -> set[int]:
    """SIGSTOP each process `find` yields as soon as it is found, round after round until a round
    finds none new (so that nothing forks away meanwhile), then SIGKILL all of it; what was found.
    `until_still`: and until no process at all was made during a round, for a search of all /proc:
    a pid hopper may have left a pid in the instant between the listing and its reading."""
    stopped: set[int] = set()
    for _ in range(MAX_KILL_ROUNDS):
        last = procfs.last_pid() if until_still else None
        new = False
        for each in find():
            if each not in stopped:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.kill(each, signal.SIGSTOP)
                stopped.add(each)
                new = True
        if not new and (last is None or procfs.last_pid() == last):
            break
    for each in stopped:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(each, signal.SIGKILL)
    return stopped
