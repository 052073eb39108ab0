"""Non-blocking pipe ends read and written on the event loop: frames, and routed output."""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Callable
from typing import Generic, TypeVar

import msgspec

from daemon.errors import protocol_error
from daemon.model import ErrorInfo
from daemon.runtimes.base import EventLog

log = logging.getLogger(__name__)

T = TypeVar("T")

MAX_FRAME = 256 << 20  # bytes; a larger length means a confused or hostile worker
_READ_SIZE = 1 << 18
_STRAY_CAP = 64 << 10  # bytes of output outside events logged per gap between events
_TAIL = 2048  # bytes of output kept to explain a worker that dies at start


def read_some(fd: int, size: int = _READ_SIZE) -> bytes | None:
    """One read from a non-blocking pipe: the bytes, b"" at its end (or on a read error), None
    when nothing is there yet."""
    try:
        return os.read(fd, size)
    except BlockingIOError:
        return None
    except OSError:
        return b""


class FrameReader(Generic[T]):
    """Reads length-prefixed JSON frames from a pipe and hands each one, decoded, to `on_frame`.

    A frame that cannot be decoded is handed over as an ErrorInfo of type ProtocolError, and
    reading stops.
    """

    def __init__(
        self,
        fd: int,
        decoder: msgspec.json.Decoder[T],
        on_frame: Callable[[T | ErrorInfo], None],
        on_eof: Callable[[], None] | None = None,
    ) -> None:
        self.fd: int | None = fd
        self._decoder = decoder
        self._on_frame = on_frame
        self._on_eof = on_eof
        self._buf = bytearray()
        self._loop = asyncio.get_running_loop()
        os.set_blocking(fd, False)
        self._loop.add_reader(fd, self._on_readable)

    def drain(self) -> None:
        """Read and dispatch everything already in the pipe."""
        while self.fd is not None and self._on_readable():
            pass

    def close(self) -> None:
        """Stop reading and close the pipe end."""
        if self.fd is not None:
            self._loop.remove_reader(self.fd)
            os.close(self.fd)
            self.fd = None

    def _on_readable(self) -> bool:
        """Read once; True if there may be more to read."""
        assert self.fd is not None
        data = read_some(self.fd)
        if data is None:
            return False
        if not data:
            self._loop.remove_reader(self.fd)  # EOF: the process exit is noticed elsewhere
            if self._on_eof is not None:  # (unless it closed the pipe and lives on)
                self._on_eof()
            return False
        if not self._buf and self._one_frame(data):
            return True
        self._buf += data
        self._parse()
        return True

    def _one_frame(self, data: bytes) -> bool:
        """The common case, a read holding exactly one frame: decode it without copying."""
        if len(data) < 4 or int.from_bytes(data[:4], "big") != len(data) - 4:
            return False
        self._dispatch(memoryview(data)[4:])
        return True

    def _parse(self) -> None:
        buf = self._buf
        while len(buf) >= 4 and self.fd is not None:
            size = int.from_bytes(buf[:4], "big")
            if size > MAX_FRAME:
                self._fault(f"the worker announced a frame of {size} bytes")
                return
            if len(buf) < 4 + size:
                return
            body = bytes(buf[4 : 4 + size])
            del buf[: 4 + size]
            self._dispatch(body)

    def _dispatch(self, body: bytes | memoryview) -> None:
        try:
            frame = self._decoder.decode(body)
        except msgspec.DecodeError as exc:
            self._fault(f"the worker sent a bad frame: {exc}")
            return
        self._on_frame(frame)

    def _fault(self, message: str) -> None:
        self._buf.clear()
        if self.fd is not None:
            self._loop.remove_reader(self.fd)
        self._on_frame(protocol_error(message))


class PipeWriter:
    """Writes frames to a pipe without blocking: what the pipe cannot take now is sent when it
    can."""

    def __init__(self, fd: int) -> None:
        self.fd: int | None = fd
        self._pending = bytearray()
        self._loop = asyncio.get_running_loop()
        os.set_blocking(fd, False)

    def write(self, data: bytes | bytearray) -> None:
        """Queue `data`; written at once when the pipe has room."""
        if self.fd is None:
            return
        if self._pending:
            self._pending += data
            return
        sent = self._send(data)
        if sent < len(data):
            self._pending += memoryview(data)[sent:]
            self._loop.add_writer(self.fd, self._on_writable)

    def close(self) -> None:
        """Drop what is pending and close the pipe end (the worker then sees EOF)."""
        if self.fd is not None:
            if self._pending:
                self._loop.remove_writer(self.fd)
                self._pending.clear()
            os.close(self.fd)
            self.fd = None

    def _send(self, data: bytes | bytearray) -> int:
        assert self.fd is not None
        try:
            return os.write(self.fd, data)
        except BlockingIOError:
            return 0
        except OSError:
            # the worker is gone: its exit settles whatever waits for a reply
            return len(data)

    def _on_writable(self) -> None:
        assert self.fd is not None
        sent = self._send(self._pending)
        del self._pending[:sent]
        if not self._pending:
            self._loop.remove_writer(self.fd)


class OutputRouter:
    """Routes a process's stdout and stderr to the attached event log, else to the daemon's log
    (capped)."""

    def __init__(self, fds: dict[int, str], owner: str) -> None:
        self._fds = dict(fds)  # fd -> stream name
        self._owner = owner
        self._log: EventLog | None = None
        self._stray_left = _STRAY_CAP
        self._tail = b""
        self._loop = asyncio.get_running_loop()
        for fd in self._fds:
            os.set_blocking(fd, False)
            self._loop.add_reader(fd, self._on_readable, fd)

    def attach(self, event_log: EventLog | None) -> None:
        """Send output to `event_log` from now on."""
        self._log = event_log

    def detach(self, event_log: EventLog) -> None:
        """Stop sending output to `event_log` (if it is the attached one)."""
        if self._log is event_log:
            self._log = None
            self._stray_left = _STRAY_CAP

    def drain(self) -> None:
        """Route everything already written to the pipes, without waiting for more."""
        for fd in list(self._fds):
            while fd in self._fds and self._on_readable(fd):
                pass

    def tail(self) -> str:
        """The last bytes of output, as text."""
        return self._tail.decode("utf-8", "replace").strip()

    def close(self) -> None:
        """Stop reading and close both pipe ends."""
        for fd in list(self._fds):
            self._forget(fd)

    def _forget(self, fd: int) -> None:
        self._fds.pop(fd, None)
        self._loop.remove_reader(fd)
        os.close(fd)

    def _on_readable(self, fd: int) -> bool:
        data = read_some(fd)
        if data is None:
            return False
        if not data:
            self._forget(fd)
            return False
        self._tail = (self._tail + data[-_TAIL:])[-_TAIL:]
        if self._log is not None and self._log.is_open:
            self._log.write(data)
        else:
            self._stray(fd, data)
        return True

    def _stray(self, fd: int, data: bytes) -> None:
        if self._stray_left <= 0:
            return
        text = data[: self._stray_left].decode("utf-8", "replace").rstrip()
        self._stray_left -= len(data)
        log.info("%s %s: %s", self._owner, self._fds.get(fd, "output"), text)
        if self._stray_left <= 0:
            log.info("%s: further output outside events dropped until the next event", self._owner)
