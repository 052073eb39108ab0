"""A helper process for the spool's small-file work: event log appends and the removal of
journaled incoming files.

Each of those files costs a few system calls, and in a thread of the daemon each call passes the
GIL to the event loop and back: in a burst the hand-overs cost the loop more than the calls. In a
process of its own they cost the daemon two pipe operations per batch. Calls block (the caller is
a worker thread) until the work is done, so an event's log is written before the record that
shows it. If the helper cannot start or dies, the work is done in the calling thread.

The process itself is daemon/files/filework.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import sys
import threading
from pathlib import Path

import msgspec

from daemon.files.filework import ANSWERS, ENCODER, Append, Done, Remove, read_frame, write_frame
from daemon.files.logfiles import LogWrite, append_all
from daemon.spool import FileId, Key, remove_journaled
from daemon.supervise.child import Child
from daemon.supervise.supervisor import Supervisor

log = logging.getLogger(__name__)

_EXIT_GRACE = 5.0  # seconds for the helper to exit once its pipes are closed


class FileHelper:
    """The daemon's side: one helper process. Calls come from worker threads (the journal's
    writer, the ingestor's unlinker) and are served one at a time."""

    def __init__(self) -> None:
        self._child: Child | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._to = self._from = -1
        self._lock = threading.Lock()

    @property
    def pid(self) -> int | None:
        """The helper's process id, once started."""
        return self._child.pid if self._child is not None else None

    @property
    def running(self) -> bool:
        """Whether the work goes to the helper (else it is done in the daemon)."""
        return self._to >= 0

    def start(self, supervisor: Supervisor) -> None:
        """Start the process (from the event loop); on failure, work stays in-process."""
        to_r, to_w = os.pipe2(os.O_CLOEXEC)
        from_r, from_w = os.pipe2(os.O_CLOEXEC)
        env = dict(os.environ)
        package_root = str(Path(__file__).resolve().parents[2])  # beside daemon/
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [package_root, env.get("PYTHONPATH")]))
        try:
            self._child = supervisor.spawn(
                [sys.executable, "-m", "daemon.files.filework"], env, {0: to_r, 1: from_w, 2: 2}
            )
        except OSError as exc:
            log.error("cannot start the file helper, file work stays in the daemon: %s", exc)
            os.close(to_w)
            os.close(from_r)
            return
        finally:
            os.close(to_r)
            os.close(from_w)
        self._to, self._from = to_w, from_r
        self._loop = asyncio.get_running_loop()

    def append(self, writes: list[LogWrite]) -> None:
        """Do event log writes; returns once written."""
        if writes and self._call(Append(writes)) is None:
            append_all(writes)

    def remove(self, incoming: Path, files: list[tuple[Key, FileId]]) -> set[Key]:
        """spool.remove_journaled, in the helper: the keys of the files it could not remove."""
        done = self._call(Remove(str(incoming), files))
        if done is None:
            return remove_journaled(str(incoming), files)
        return {(a, b) for a, b in done.failed}

    async def stop(self) -> None:
        """Close the pipes: the helper exits once it has read their end; killed if it lingers."""
        with self._lock:
            if self._to >= 0:
                self._close_pipes()
        if self._child is not None:
            try:
                await asyncio.wait_for(self._child.wait(), _EXIT_GRACE)
            except TimeoutError:
                log.error("the file helper did not exit: killed")
                self._child.kill_group(signal.SIGKILL)

    def _call(self, request: Append | Remove) -> Done | None:
        """Send a request and wait for its answer; None when there is no helper (any more)."""
        with self._lock:
            if self._to < 0:
                return None
            try:
                write_frame(self._to, ENCODER.encode(request))
                return ANSWERS.decode(read_frame(self._from))
            except (OSError, EOFError, msgspec.DecodeError) as exc:
                log.error("the file helper failed (%r): file work goes on in the daemon", exc)
                self._close_pipes()
                if self._child is not None and self._loop is not None:
                    with contextlib.suppress(RuntimeError):  # the loop has closed: it is gone
                        self._loop.call_soon_threadsafe(self._child.kill_group, signal.SIGKILL)
                return None

    def _close_pipes(self) -> None:
        os.close(self._to)
        os.close(self._from)
        self._to = self._from = -1
