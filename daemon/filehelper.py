"""A helper process for the spool's small-file work: event log appends and the removal of
journaled incoming files.

Each of those files costs a few system calls, and in a thread of the daemon each call passes the
GIL to the event loop and back: in a burst the hand-overs cost the loop more than the calls. In a
process of its own they cost the daemon two pipe operations per batch. Calls block (the caller is
a worker thread) until the work is done, so an event's log is written before the record that
shows it. If the helper cannot start or dies, the work is done in the calling thread.

Run as `python -m daemon.filehelper`: requests on stdin, answers on stdout.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import sys
import threading
from pathlib import Path

import msgspec

from daemon import supervise
from daemon.logfiles import append_all
from daemon.spool import FileId, Key, remove_journaled

log = logging.getLogger(__name__)

_HEADER = 4  # bytes of big-endian frame length
_EXIT_GRACE = 5.0  # seconds for the helper to exit once its pipes are closed


class Append(msgspec.Struct, tag=True, array_like=True):
    """Append to event logs, in order."""

    writes: list[tuple[str, bytes]]


class Remove(msgspec.Struct, tag=True, array_like=True):
    """Remove journaled files from incoming/ (spool.remove_journaled)."""

    incoming: str
    files: list[tuple[Key, FileId]]


class Done(msgspec.Struct, array_like=True):
    """The answer: the keys of the files that could not be removed."""

    failed: list[Key] = []


_encoder = msgspec.msgpack.Encoder()
_requests = msgspec.msgpack.Decoder(Append | Remove)
_answers = msgspec.msgpack.Decoder(Done)


class FileHelper:
    """The daemon's side: one helper process, called by one thread at a time."""

    def __init__(self) -> None:
        self._child: supervise.Child | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._to = self._from = -1
        self._lock = threading.Lock()

    @property
    def pid(self) -> int | None:
        """The helper's process id, once started."""
        return self._child.pid if self._child is not None else None

    def start(self) -> None:
        """Start the process (from the event loop); on failure, work stays in-process."""
        to_r, to_w = os.pipe2(os.O_CLOEXEC)
        from_r, from_w = os.pipe2(os.O_CLOEXEC)
        env = dict(os.environ)
        package_root = str(Path(__file__).resolve().parent.parent)
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [package_root, env.get("PYTHONPATH")]))
        try:
            self._child = supervise.spawn(
                [sys.executable, "-m", "daemon.filehelper"], env, {0: to_r, 1: from_w, 2: 2}
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

    def append(self, writes: list[tuple[Path, bytes]]) -> None:
        """Append to event logs; returns once written."""
        if writes and self._call(Append([(str(p), d) for p, d in writes])) is None:
            append_all(writes)

    def remove(self, incoming: Path, files: list[tuple[Key, FileId]]) -> set[Key]:
        """spool.remove_journaled, in the helper."""
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
                _write_frame(self._to, _encoder.encode(request))
                return _answers.decode(_read_frame(self._from))
            except (OSError, EOFError, msgspec.DecodeError) as exc:
                log.error("the file helper failed (%r): file work goes on in the daemon", exc)
                self._close_pipes()
                if self._child is not None and self._loop is not None:
                    self._loop.call_soon_threadsafe(self._child.kill_group, signal.SIGKILL)
                return None

    def _close_pipes(self) -> None:
        os.close(self._to)
        os.close(self._from)
        self._to = self._from = -1


def _write_frame(fd: int, body: bytes) -> None:
    view = memoryview(len(body).to_bytes(_HEADER, "big") + body)
    while view:
        view = view[os.write(fd, view) :]


def _read_frame(fd: int) -> bytes:
    size = int.from_bytes(_read_exactly(fd, _HEADER), "big")
    return _read_exactly(fd, size)


def _read_exactly(fd: int, size: int) -> bytes:
    chunks = []
    while size:
        chunk = os.read(fd, size)
        if not chunk:
            raise EOFError("the pipe was closed")
        chunks.append(chunk)
        size -= len(chunk)
    return b"".join(chunks)


def _serve(request: Append | Remove) -> Done:
    if isinstance(request, Append):
        append_all([(Path(p), d) for p, d in request.writes])
        return Done()
    return Done(sorted(remove_journaled(request.incoming, request.files)))


def main() -> int:
    """Serve requests until the daemon closes the pipe (or dies)."""
    logging.basicConfig(
        level=logging.INFO,
        format="%(asctime)s %(levelname)-7s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    while True:
        try:
            request = _requests.decode(_read_frame(0))
            _write_frame(1, _encoder.encode(_serve(request)))
        except (EOFError, BrokenPipeError):  # the daemon is gone, or stopping
            return 0


if __name__ == "__main__":
    sys.exit(main())
