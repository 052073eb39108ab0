"""Sweeps of all /proc: what a predecessor left running, and what still carries this daemon's
tokens at shutdown, wherever it went."""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator

from daemon.supervise import procfs
from daemon.supervise.kill import stop_then_kill
from daemon.supervise.reaper import Reaper
from daemon.supervise.tokens import Tokens

log = logging.getLogger(__name__)


def sweep_predecessors(tokens: Tokens) -> int:
    """SIGKILL what another supervisor of the same spool left running: a handler's own children
    outlive a `kill -9` of the daemon (only the instance itself has the parent-death signal).
    Call with the spool's lock held, before any spawn of the daemon's. How many were killed."""
    killed = stop_then_kill(lambda: procfs.carrying(tokens.is_predecessors), until_still=True)
    if killed:
        log.warning("killed %d processes a previous daemon of this spool left running", len(killed))
    return len(killed)


def sweep_own(tokens: Tokens, reaper: Reaper) -> set[int]:
    """SIGKILL every process that carries one of `tokens`, wherever it went: at shutdown, once
    every instance is retired, nothing of theirs may outlive the daemon under init (a pid hopper,
    which forks, calls setsid() and exits again and again, can slip between two reads of /proc
    while its instance is killed). What was killed."""

    def find() -> Iterator[int]:
        reaper.reap_exited()  # a hopper leaves a zombie at every hop: the lists stay short
        # the daemon's own children first, the newest first: orphans come to it (a subreaper)
        for pid in reversed(procfs.children(os.getpid())):
            if tokens.is_own(procfs.token_of(pid) or ""):
                yield pid
        yield from procfs.carrying(tokens.is_own)

    killed = stop_then_kill(find, until_still=True)
    if killed:
        log.warning("killed %d processes carrying this daemon's tokens at shutdown", len(killed))
    return killed
