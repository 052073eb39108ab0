"""The daemon's side of the journal: start-up recovery and the group-commit segment writer.

Records are appended to an in-memory buffer; one flusher writes and fdatasyncs whatever has
accumulated in a dedicated thread, so one fsync covers every record appended meanwhile. A failed
write or fsync is fatal: it is never retried and nothing after it is acknowledged (fsyncgate).
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import logging
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import msgspec

from daemon.atomic import fsync_dir
from daemon.errors import FnspoolError
from daemon.files.logfiles import LogWrite, append_all
from daemon.journal import (
    MAX_RECORD_BYTES,
    Damage,
    JournalState,
    SegmentReader,
    decode_record,
    encode_record,
    fold,
    list_archives,
    list_segments,
    load_snapshot,
    segment_name,
)
from daemon.model import Record

log = logging.getLogger(__name__)

R = TypeVar("R", bound=Record)

#: TEST ONLY: skip the journal's fdatasync, so the power-loss test can show that it then loses
#: acknowledged payloads (proof that the test can fail). Never set it anywhere else.
SKIP_FDATASYNC_TEST_ONLY = "FNSPOOL_TEST_ONLY_SKIP_JOURNAL_FDATASYNC"


class JournalFailed(Exception):
    """The journal could not be written durably; the daemon must stop taking work."""


def recover(directory: Path) -> JournalState:
    """Replay snapshot + segments; cut a torn tail (kept in `.broken`) and set damage aside."""
    state = JournalState()
    load_snapshot(directory, state)
    _remove_unfinished_archives(directory, state.snapshot_seq)
    _set_aside_misnamed(directory, state.damages)
    for first_seq, path in list_segments(directory):
        if first_seq <= state.snapshot_seq and _covered(directory, first_seq, state.snapshot_seq):
            continue
        reader = SegmentReader(path, first_seq)
        try:
            seen = len(state.damages)
            for rec in reader.records(state.damages):
                fold(state, rec)
            _set_aside_damage(path, state.damages[seen:])
            if reader.torn_bytes:
                try:
                    state.damages.append(_cut_torn_tail(path, reader.offset))
                except OSError as exc:  # never cut what cannot be kept
                    raise FnspoolError(
                        f"cannot cut the torn tail of {path} at offset {reader.offset}: keeping "
                        f"it in {path.name}.broken failed ({exc.strerror or exc}); free space on "
                        "the journal's file system and start again",
                        title="journal",
                    ) from None
        finally:
            reader.close()
    _set_aside_stray_empty(directory, state)
    return state


def _remove_unfinished_archives(directory: Path, snapshot_seq: int) -> None:
    """An archive newer than the snapshot is from a compaction a crash cut short: its events
    are still in the segments, and the next compaction archives them again."""
    for seq, path in list_archives(directory):
        if seq > snapshot_seq:
            log.warning("removing %s: its compaction did not finish", path.name)
            path.unlink(missing_ok=True)


def _set_aside_misnamed(directory: Path, damages: list[Damage]) -> None:
    """Rename a segment whose first record is not the one its name says (a stray file, not the
    daemon's): the writer would append to it, and readers would follow it."""
    for first_seq, path in list_segments(directory):
        seq = _first_record_seq(path)
        if seq is not None and seq != first_seq:
            _set_aside(path, f"its first record is {seq}, not {first_seq}", damages)


def _set_aside_stray_empty(directory: Path, state: JournalState) -> None:
    """An empty segment is the writer's only when it is the newest and continues the journal."""
    segments = list_segments(directory)
    for first_seq, path in segments:
        newest = path == segments[-1][1]
        if path.stat().st_size == 0 and not (newest and first_seq == state.last_seq + 1):
            _set_aside(path, "an empty segment out of place", state.damages)


def _first_record_seq(path: Path) -> int | None:
    with open(path, "rb") as f:
        line = f.readline(MAX_RECORD_BYTES).rstrip(b"\n")
    try:
        return decode_record(line).seq
    except ValueError:
        return None  # damage or a torn line: the replay reports it


def _set_aside(path: Path, why: str, damages: list[Damage]) -> None:
    aside = path.with_name(f"{path.name}.misplaced")
    log.error("journal: %s set aside as %s: %s", path.name, aside.name, why)
    os.rename(path, aside)
    damages.append(Damage(path=str(path), offset=0, length=0, reason=f"set aside: {why}"))


def _covered(directory: Path, first_seq: int, snapshot_seq: int) -> bool:
    """Whether the segment starting at `first_seq` ends at or before `snapshot_seq`."""
    later = [s for s, _ in list_segments(directory) if s > first_seq]
    return bool(later) and later[0] <= snapshot_seq + 1


def _set_aside_damage(path: Path, damages: list[Damage]) -> None:
    """Copy each damaged line into `SEGMENT.broken` for inspection (once: a restart finds the
    same damage again); the segment stays as it is, and reading goes on if the copy fails."""
    if not damages:
        return
    broken = Path(f"{path}.broken")
    try:
        small = broken.exists() and broken.stat().st_size <= 16 << 20  # else: kept twice
        kept = broken.read_bytes() if small else b""
        with open(path, "rb") as src, open(broken, "ab") as out:
            for damage in damages:
                log.error(
                    "journal damage in %s at offset %d: %s", path, damage.offset, damage.reason
                )
                header = b"# offset %d: %s\n" % (damage.offset, damage.reason.encode())
                if header in kept:
                    continue
                src.seek(damage.offset)
                out.write(header)
                out.write(src.read(min(damage.length, 1 << 20)))
    except OSError as exc:
        log.error("cannot keep the damaged journal lines of %s in %s: %s", path, broken, exc)


def _cut_torn_tail(path: Path, good_end: int) -> Damage:
    """Truncate a segment after its last whole record, keeping the cut bytes in `.broken`."""
    torn = 0
    with open(path, "r+b") as f:
        f.seek(good_end)
        with open(f"{path}.broken", "ab") as out:
            out.write(b"# torn tail cut at offset %d\n" % good_end)
            while chunk := f.read(1 << 20):  # in pieces: a tail may be any size (zeros, garbage)
                out.write(chunk)
                torn += len(chunk)
            out.write(b"\n")
            out.flush()
            os.fsync(out.fileno())
        f.truncate(good_end)
        f.flush()
        os.fsync(f.fileno())
    log.warning("journal %s: torn tail of %d bytes cut at offset %d", path, torn, good_end)
    return Damage(path=str(path), offset=good_end, length=torn, reason="torn tail cut")


class JournalWriter:
    """Appends records to the current segment with group-committed fdatasync."""

    def __init__(
        self,
        directory: Path,
        next_seq: int,
        *,
        segment_bytes: int = 64 << 20,
        on_fatal: Callable[[BaseException], None] | None = None,
        write_logs: Callable[[list[LogWrite]], None] = append_all,
    ) -> None:
        self.directory = directory
        self._write_logs = write_logs  # in the writer thread, before the records that follow
        self.segment_bytes = segment_bytes
        self._on_fatal = on_fatal
        self._next_seq = next_seq
        self._durable_seq = next_seq - 1
        self._written_seq = next_seq - 1  # touched only by the writer thread
        self._buffer = bytearray()
        self._logs: list[LogWrite] = []  # event log writes, before the next records
        self._waiters: collections.deque[tuple[int, asyncio.Future[None]]] = collections.deque()
        self._executor = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="journal")
        self._wake = asyncio.Event()
        self._failed: BaseException | None = None
        self._closing = False
        self._fd = -1
        self._size = 0
        self.segment_first_seq = 0
        self._switch_again_at = 0.0  # monotonic time to try a new segment again after a failure
        self._skip_fdatasync = os.environ.get(SKIP_FDATASYNC_TEST_ONLY) == "1"
        if self._skip_fdatasync:
            log.critical(
                "%s is set: the journal is NOT durable (tests only)", SKIP_FDATASYNC_TEST_ONLY
            )
        self._open_segment()
        self._loop = asyncio.get_running_loop()
        self._task = self._loop.create_task(self._flush_loop(), name="journal")

    @property
    def durable_seq(self) -> int:
        """The sequence number of the last record known to be on disk."""
        return self._durable_seq

    @property
    def last_seq(self) -> int:
        """The sequence number of the last record appended."""
        return self._next_seq - 1

    def append(self, rec: R) -> R:
        """Number and time-stamp `rec`, buffer it for the next flush, and return it."""
        if self._failed is not None:
            raise JournalFailed(str(self._failed))
        rec = msgspec.structs.replace(rec, seq=self._next_seq, at=rec.at or time.time())
        self._next_seq += 1
        self._buffer += encode_record(rec)
        self._wake.set()
        return rec

    def write_log(self, write: LogWrite) -> None:
        """Do an event log's write from the writer thread, before the records appended after
        this call: the log is on file before the record that makes it visible."""
        self._logs.append(write)
        self._wake.set()

    async def sync(self, upto: int | None = None) -> None:
        """Wait until every record appended so far (or up to `upto`) is on disk."""
        if self._failed is not None:
            raise JournalFailed(str(self._failed))
        target = self._next_seq - 1 if upto is None else upto
        if target <= self._durable_seq:
            return
        future: asyncio.Future[None] = self._loop.create_future()
        self._waiters.append((target, future))
        await future

    async def rotate(self) -> int:
        """Start a new segment after everything written so far; return its first sequence number.

        Records appended meanwhile may land in the new segment: its name says where it starts.
        """
        await self.sync()
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(self._executor, self._rotate_sync)
        return self.segment_first_seq

    async def close(self) -> None:
        """Flush what is buffered and close the segment."""
        self._closing = True
        self._wake.set()
        await self._task
        self._executor.submit(self._close_fd).result()
        self._executor.shutdown()

    def _open_segment(self) -> None:
        """Append to the newest segment when it has room, else start one at the next sequence."""
        segments = list_segments(self.directory)
        if segments:
            first_seq, path = segments[-1]
            size = path.stat().st_size
            if size < self.segment_bytes:
                self._fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CLOEXEC)
                self._size, self.segment_first_seq = size, first_seq
                return
        self._create_segment(self._next_seq)

    def _create_segment(self, first_seq: int) -> None:
        """Open a new segment; on failure (no space, no inode) nothing is left behind: readers
        that saw an empty later segment would stop following the current one."""
        path = self.directory / segment_name(first_seq)
        flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC
        fd = os.open(path, flags, 0o640)  # the spool's group reads it; nobody else
        try:
            fsync_dir(self.directory)
        except BaseException:
            os.close(fd)
            path.unlink(missing_ok=True)
            raise
        self._fd, self._size, self.segment_first_seq = fd, 0, first_seq

    def _switch_segment(self, first_seq: int) -> None:
        """Move to a new segment; when it cannot be created, keep appending to the current one
        (an OSError tells the caller). The old descriptor is closed only once replaced."""
        old = self._fd
        self._create_segment(first_seq)
        os.close(old)

    def _rotate_sync(self) -> None:
        if self._size == 0:
            return  # the current segment is empty: it already starts where a new one would
        self._sync_fd()  # an fsync error here is fatal like any other: raised to _fail below
        self._switch_segment(self._written_seq + 1)

    def _sync_fd(self) -> None:
        try:
            os.fsync(self._fd)
        except OSError as exc:
            self._loop.call_soon_threadsafe(self._fail, exc)
            raise

    def _close_fd(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    async def _flush_loop(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await self._wake.wait()
            self._wake.clear()
            if not self._buffer and not self._logs:
                if self._closing:
                    return
                continue
            data, upto, logs = bytes(self._buffer), self._next_seq - 1, self._logs
            self._buffer.clear()
            self._logs = []
            try:
                await loop.run_in_executor(self._executor, self._write_sync, data, upto, logs)
            except BaseException as exc:
                self._fail(exc)
                return
            self._durable_seq = upto
            while self._waiters and self._waiters[0][0] <= upto:
                _, future = self._waiters.popleft()
                if not future.done():
                    future.set_result(None)
            if self._closing and not self._buffer:
                return

    def _write_sync(self, data: bytes, upto: int, logs: list[LogWrite]) -> None:
        """Write and fdatasync one batch; on a short or failed write cut back to the last record."""
        self._write_logs(logs)  # an event log's failure is logged there: the journal goes on
        if not data:
            return
        start = self._size
        try:
            view = memoryview(data)
            while view:
                written = os.write(self._fd, view)
                view = view[written:]
        except OSError:
            os.ftruncate(self._fd, start)
            raise
        self._size += len(data)
        self._written_seq = upto
        if not self._skip_fdatasync:
            os.fdatasync(self._fd)
        if self._size >= self.segment_bytes and time.monotonic() >= self._switch_again_at:
            try:
                self._switch_segment(upto + 1)
            except OSError as exc:  # the batch is durable: go on in this segment, past its size
                self._switch_again_at = time.monotonic() + 10.0
                log.error("cannot start a new journal segment, appending to the current: %s", exc)

    def _fail(self, exc: BaseException) -> None:
        """Refuse everything from now on; wake every waiter with the failure."""
        first = self._failed is None
        if first:
            log.critical("journal write failed, refusing further work: %s", exc)
            self._failed = exc
        while self._waiters:
            _, future = self._waiters.popleft()
            if not future.done():
                future.set_exception(JournalFailed(str(exc)))
        if first and self._on_fatal is not None:
            self._on_fatal(exc)
