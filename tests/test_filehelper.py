"""The file helper process: event log appends and removals from incoming/ done out of the daemon,
in order, and done in the daemon when the helper is gone."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
from pathlib import Path

import pytest
from conftest import gone, wait_for_async
from runtime_helpers import on_uvloop

from daemon.files.filehelper import FileHelper
from daemon.files.logfiles import LogWrite
from daemon.spool import ASIDE_PREFIX, FileId
from daemon.supervise.supervisor import Supervisor


def drop(folder: Path, name: str, text: str = "{}") -> FileId:
    path = folder / name
    path.write_text(text)
    return FileId.of(path.stat())


@on_uvloop
async def test_appends_in_order_and_removes_only_the_journaled_version(tmp_path: Path) -> None:
    incoming = tmp_path / "incoming"
    (incoming / "echo").mkdir(parents=True)
    helper = FileHelper()
    helper.start(Supervisor())
    try:
        assert helper.pid is not None and helper.pid != os.getpid()
        logs = tmp_path / "logs" / "echo"  # made on the way
        a, b, c = (str(logs / name) for name in ("a.log", "b.log", "c.log"))
        writes = [
            LogWrite(a, b"one\n"),
            LogWrite(b, b"start\n", if_exists=True),  # no file: not written, none made
            LogWrite(b, b"x\n", prefix=b"start\n"),  # made: the prefix goes first
            LogWrite(a, b"two\n", prefix=b"not again\n"),  # it exists: no prefix
            LogWrite(b, b"end\n", if_exists=True),
            LogWrite(c, b"end\n", if_exists=True),
        ]
        await asyncio.to_thread(helper.append, writes)
        assert (logs / "a.log").read_bytes() == b"one\ntwo\n"
        assert (logs / "b.log").read_bytes() == b"start\nx\nend\n"
        assert not (logs / "c.log").exists()
        assert {oct(p.stat().st_mode & 0o777) for p in logs.iterdir()} == {"0o640"}

        taken = drop(incoming / "echo", "1.json")
        top = drop(incoming, "2.json")
        drop(incoming / "echo", "3.json")
        replaced = drop(incoming / "echo", "3.json", '{"a newer payload": 1}')  # same inode
        files = [(("echo", "1.json"), taken), (("", "2.json"), top), (("echo", "gone.json"), top)]
        stale = FileId(replaced.st_dev, replaced.st_ino, replaced.st_size - 1, 0)
        files.append((("echo", "3.json"), stale))
        failed = await asyncio.to_thread(helper.remove, incoming, files)
        assert failed == set()
        assert sorted(p.name for p in incoming.rglob("*") if p.is_file()) == ["3.json"]
        assert not list(incoming.rglob(f"{ASIDE_PREFIX}*"))
    finally:
        await helper.stop()
    assert helper.pid is not None and gone(helper.pid)


@on_uvloop
async def test_the_work_goes_on_in_the_daemon_when_the_helper_dies(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    helper = FileHelper()
    helper.start(Supervisor())
    assert helper.pid is not None
    os.kill(helper.pid, signal.SIGKILL)
    await wait_for_async(lambda: gone(helper.pid or 0))
    log = tmp_path / "logs" / "e.log"
    with caplog.at_level(logging.ERROR, logger="daemon.files.filehelper"):
        await asyncio.to_thread(helper.append, [LogWrite(str(log), b"still written\n")])
    assert log.read_bytes() == b"still written\n"
    assert "the file helper failed" in caplog.text
    incoming = tmp_path / "incoming"
    incoming.mkdir()
    taken = drop(incoming, "1.json")
    assert await asyncio.to_thread(helper.remove, incoming, [(("", "1.json"), taken)]) == set()
    assert not (incoming / "1.json").exists()
    await helper.stop()


@on_uvloop
async def test_exits_when_the_daemon_closes_its_pipes(tmp_path: Path) -> None:
    helper = FileHelper()
    helper.start(Supervisor())
    pid = helper.pid
    assert pid is not None
    await helper.stop()
    assert gone(pid)
    # and after that, calls still work (in the caller)
    await asyncio.to_thread(helper.append, [LogWrite(str(tmp_path / "late.log"), b"x")])
    assert (tmp_path / "late.log").read_bytes() == b"x"
