"""Writing a file whole, the one way fnspool writes a file a reader must never see half of:
into a temporary name, then renamed over the target. Two levels:

- `write_whole`: a reader sees the old file or the new one; a crash may lose the new one (the
  heartbeat, the pid file, systemd units);
- `write_durable`: once it returns, the new file survives a crash (fsync of the file, then of
  its folder): payloads and requests dropped by the CLI, destination records.

The journal's own files (segments, snapshots, archives) have their writer in journal_writer.py,
and files in the group's drop folders are written through directory descriptors in spool.py.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC


def write_whole(path: Path, data: bytes, mode: int = 0o640) -> None:
    """Replace `path` with `data` whole (readers never see half a file)."""
    _write_then_rename(path.with_name(f".{path.name}.{os.getpid()}.tmp"), path, data, mode)


def write_durable(path: Path, data: bytes, mode: int = 0o640, staging: Path | None = None) -> None:
    """Replace `path` with `data` whole and durably; the temporary file is written in `staging`
    (a maildir's tmp/, so that no reader of the target's folder meets it), else beside it."""
    temp = (staging or path.parent) / f".{path.name}.{os.getpid()}.tmp"
    _write_then_rename(temp, path, data, mode, durable=True)
    fsync_dir(path.parent)


def fsync_dir(directory: Path) -> None:
    """fsync a folder so the names created or removed in it are durable."""
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_then_rename(
    temp: Path, path: Path, data: bytes, mode: int, *, durable: bool = False
) -> None:
    try:
        fd = os.open(temp, _FLAGS, mode)
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
            if durable:
                os.fsync(fd)
        finally:
            os.close(fd)
        os.rename(temp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temp)  # a full disk must not leave half a file behind
        raise
