"""The file helper process: event log appends and removals of journaled incoming files, asked
for by the daemon (daemon/files/filehelper.py) over a pipe. Light on purpose: it imports neither
asyncio nor the supervisor.

Run as `python -m daemon.files.filework`: requests on stdin, answers on stdout, until stdin ends.
"""

from __future__ import annotations

import os
import sys

import msgspec

from daemon.files.logfiles import LogWrite, append_all
from daemon.logsetup import log_to_stderr
from daemon.spool import FileId, Key, remove_journaled

HEADER = 4  # bytes of big-endian frame length


class Append(msgspec.Struct, tag=True, array_like=True):
    """Append to event logs, in order."""

    writes: list[LogWrite]


class Remove(msgspec.Struct, tag=True, array_like=True):
    """Remove journaled files from incoming/ (spool.remove_journaled)."""

    incoming: str
    files: list[tuple[Key, FileId]]


class Done(msgspec.Struct, array_like=True):
    """The answer: the keys of the files that could not be removed."""

    failed: list[Key] = []


ENCODER = msgspec.msgpack.Encoder()
REQUESTS = msgspec.msgpack.Decoder(Append | Remove)
ANSWERS = msgspec.msgpack.Decoder(Done)


def write_frame(fd: int, body: bytes) -> None:
    """Write one length-prefixed frame, whole."""
    view = memoryview(len(body).to_bytes(HEADER, "big") + body)
    while view:
        view = view[os.write(fd, view) :]


def read_frame(fd: int) -> bytes:
    """Read one length-prefixed frame; EOFError when the pipe ends first."""
    size = int.from_bytes(_read_exactly(fd, HEADER), "big")
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
        append_all(request.writes)
        return Done()
    return Done(sorted(remove_journaled(request.incoming, request.files)))


def main() -> int:
    """Serve requests until the daemon closes the pipe (or dies)."""
    log_to_stderr()
    while True:
        try:
            request = REQUESTS.decode(read_frame(0))
            write_frame(1, ENCODER.encode(_serve(request)))
        except (EOFError, BrokenPipeError):  # the daemon is gone, or stopping
            return 0


if __name__ == "__main__":
    sys.exit(main())
