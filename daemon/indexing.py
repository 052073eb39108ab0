"""The daemon's side of the indexer (daemon/indexer.py): start it, start it again when it dies,
and stop it once the journal is closed, so that it leaves an index that is complete.

Nothing waits on the indexer: readers fold what it has not taken in yet, and compaction keeps
every segment it has not read. A dead indexer costs disk, never an answer.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import sys
import time
from pathlib import Path

from daemon.supervise.child import Child
from daemon.supervise.supervisor import Supervisor

log = logging.getLogger(__name__)

RESTART_DELAY = 1.0  # seconds before an indexer that died is started again, doubling
RESTART_DELAY_MAX = 60.0
STOP_GRACE = 30.0  # seconds for it to take in the last records and close the index


class Indexing:
    """One indexer process for the spool's journal."""

    def __init__(self, journal: Path) -> None:
        self.journal = journal
        self._child: Child | None = None
        self._watch: asyncio.Task[None] | None = None
        self._stopping = False

    @property
    def pid(self) -> int | None:
        """The indexer's process id, while it runs."""
        return self._child.pid if self._child is not None else None

    def start(self, supervisor: Supervisor) -> None:
        """Start the indexer (from the event loop) and keep it running."""
        self._watch = asyncio.get_running_loop().create_task(self._keep_running(supervisor))

    async def _keep_running(self, supervisor: Supervisor) -> None:
        delay = RESTART_DELAY
        while not self._stopping:
            started = time.monotonic()
            try:
                self._child = self._spawn(supervisor)
            except OSError as exc:
                log.error("cannot start the indexer (reads stay correct, slower): %s", exc)
            else:
                status = await self._child.wait()
                if self._stopping:
                    return
                log.error(
                    "the indexer exited (%s): starting it again in %.0fs", status.returncode, delay
                )
            if time.monotonic() - started > RESTART_DELAY_MAX:
                delay = RESTART_DELAY  # it ran a good while: not a crash loop
            await asyncio.sleep(delay)
            delay = min(delay * 2, RESTART_DELAY_MAX)

    def _spawn(self, supervisor: Supervisor) -> Child:
        env = dict(os.environ)
        package_root = str(Path(__file__).resolve().parent.parent)
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [package_root, env.get("PYTHONPATH")]))
        argv = [sys.executable, "-m", "daemon.indexer", str(self.journal), str(os.getpid())]
        return supervisor.spawn(argv, env, {1: 2, 2: 2})

    async def stop(self) -> None:
        """Let the indexer take in the last records and close the index; kill it if it lingers."""
        self._stopping = True
        child = self._child
        if child is not None and child.returncode is None:
            child.kill_group(signal.SIGTERM)
            try:
                await asyncio.wait_for(child.wait(), STOP_GRACE)
            except TimeoutError:
                log.error("the indexer did not stop in %.0fs: killed", STOP_GRACE)
                child.kill_group(signal.SIGKILL)
        if self._watch is not None:
            self._watch.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._watch
