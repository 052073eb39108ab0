"""The journal's on-disk format and its readers (shared by the daemon, the CLI and the TUI).

A segment is a file of lines, one record each: ``CRC32(8 hex) SPACE JSON NEWLINE``. A torn tail is
a last line without its newline; a damaged line fails its checksum and is skipped, so damage loses
that record only and the next newline resynchronises. A snapshot is a file in the same framing:
a header line, then one folded Event per line. A snapshot holds every record up to its header's
sequence number, and possibly later ones too: each event's `seq` says what it already holds.

Light on purpose: no asyncio, no uvloop, no textual.
"""

from __future__ import annotations

import logging
import os
import re
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import TypeVar

import msgspec

from daemon.atomic import fsync_dir
from daemon.model import (
    DELIVERY_RECORDS,
    Event,
    Forgotten,
    IllegalTransition,
    JournalRecord,
    Paused,
    PauseState,
    Transition,
    apply,
    forget,
    mark_delivered,
)

log = logging.getLogger(__name__)

SEGMENT_RE = re.compile(r"^segment-(\d{16})\.jsonl$")
SNAPSHOT_RE = re.compile(r"^snapshot-(\d{16})\.jsonl$")
ARCHIVE_RE = re.compile(r"^archive-(\d{16})\.jsonl$")
MAX_RECORD_BYTES = 16 * 1024 * 1024  # a longer line is damage, never buffered further
_READ_CHUNK = 1024 * 1024

_record_decoder = msgspec.json.Decoder(JournalRecord)
_event_decoder = msgspec.json.Decoder(Event)
_encoder = msgspec.json.Encoder()


class SnapshotHeader(msgspec.Struct, frozen=True, kw_only=True, tag="snapshot", tag_field="kind"):
    """The first line of a snapshot: the last sequence number it covers.

    A snapshot holds the events still in the daemon's care (not ended, or ended with a
    destination record to deliver); `archived` counts by state the events of the archives it
    stands on. A snapshot of an older version holds ended events too, and no `archived`.
    """

    seq: int
    at: float
    count: int
    archived: dict[str, int] | None = None
    paused: PauseState | None = None  # dispatch held at `seq` (None: nothing, or older version)


class ArchiveHeader(msgspec.Struct, frozen=True, kw_only=True, tag="archive", tag_field="kind"):
    """The first line of an archive: ended events set aside by the compaction at `seq`.

    Archives are immutable; each holds the events that left the daemon's care since the
    compaction before it. One goes as a whole once its newest event is past retention.
    """

    seq: int
    at: float
    count: int
    last_ended: float  # the latest end among its events: retention drops the archive after it
    counts: dict[str, int]  # its events by state


_header_decoder = msgspec.json.Decoder(SnapshotHeader)
_archive_decoder = msgspec.json.Decoder(ArchiveHeader)


class Damage(msgspec.Struct, frozen=True, kw_only=True):
    """A part of a journal file that could not be read as a record."""

    path: str
    offset: int
    length: int
    reason: str


def frame(body: bytes) -> bytes:
    """Frame one encoded record as a journal line."""
    return b"%08x %b\n" % (zlib.crc32(body), body)


def encode_record(rec: msgspec.Struct) -> bytes:
    """Encode and frame one record (or snapshot line)."""
    return frame(_encoder.encode(rec))


def unframe(line: bytes) -> bytes:
    """Return the body of a journal line (without its newline); ValueError when damaged."""
    if len(line) < 10 or line[8:9] != b" ":
        raise ValueError("no checksum prefix")
    body = line[9:]
    if b"%08x" % zlib.crc32(body) != line[:8]:  # exact bytes: int(x, 16) would accept 'A' for 'a'
        raise ValueError("checksum mismatch")
    return body


def decode_record(line: bytes) -> JournalRecord:
    """Decode one journal line; ValueError (with the reason) when damaged."""
    body = unframe(line)
    try:
        return _record_decoder.decode(body)
    except msgspec.DecodeError as exc:
        raise ValueError(f"not a journal record: {exc}") from None
    except RecursionError:  # a checksummed line nested past msgspec's limit: damage all the same
        raise ValueError("not a journal record: nested too deeply") from None


def segment_name(first_seq: int) -> str:
    """The file name of the segment whose first record has `first_seq`."""
    return f"segment-{first_seq:016d}.jsonl"


def snapshot_name(seq: int) -> str:
    """The file name of the snapshot covering records up to `seq`."""
    return f"snapshot-{seq:016d}.jsonl"


def list_numbered(directory: Path, pattern: re.Pattern[str]) -> list[tuple[int, Path]]:
    """(number, path) of the files in `directory` matching `pattern`, in order."""
    try:
        names = os.listdir(directory)
    except FileNotFoundError:
        return []
    found = [(int(m.group(1)), directory / n) for n in names if (m := pattern.match(n))]
    return sorted(found)


def list_segments(directory: Path) -> list[tuple[int, Path]]:
    """(first sequence number, path) of every segment, in order."""
    return list_numbered(directory, SEGMENT_RE)


def list_snapshots(directory: Path) -> list[tuple[int, Path]]:
    """(covered sequence number, path) of every snapshot, oldest first."""
    return list_numbered(directory, SNAPSHOT_RE)


def archive_name(seq: int) -> str:
    """The file name of the archive written by the compaction at `seq`."""
    return f"archive-{seq:016d}.jsonl"


def list_archives(directory: Path) -> list[tuple[int, Path]]:
    """(compaction sequence number, path) of every archive, oldest first."""
    return list_numbered(directory, ARCHIVE_RE)


class SegmentReader:
    """Reads whole lines from one segment file as they are appended; keeps a torn tail pending."""

    def __init__(self, path: Path, first_seq: int, offset: int = 0) -> None:
        self.path = path
        self.first_seq = first_seq
        self._fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)  # kept open to follow the file
        self.offset = offset  # end of the last whole line consumed
        self._read_pos = offset
        self.damaged = 0  # lines that could not be read: each may have hidden one record
        self._pending = b""
        self._skipping = False  # inside a line longer than MAX_RECORD_BYTES
        self._skipped = 0  # bytes of that line dropped so far

    def close(self) -> None:
        """Close the file."""
        os.close(self._fd)

    def _read(self) -> bytes:
        chunk = os.pread(self._fd, _READ_CHUNK, self._read_pos)
        self._read_pos += len(chunk)
        return chunk

    def lines(self) -> Iterator[tuple[int, bytes | None, str]]:
        """Yield (offset, line, reason) per new whole line; line is None for an overlong one."""
        while True:
            if self._skipping:
                if not self._skip_overlong():
                    return  # still inside the overlong line: a torn tail unless a newline comes
                data = self._pending  # what followed the overlong line in the last chunk
            else:
                chunk = self._read()
                if not chunk:
                    return
                data = self._pending + chunk
            start = 0
            while (end := data.find(b"\n", start)) >= 0:
                yield self.offset, data[start:end], ""
                self.offset += end + 1 - start
                start = end + 1
            self._pending = data[start:]
            if len(self._pending) > MAX_RECORD_BYTES:
                yield self.offset, None, "record longer than the limit"
                self._skipped, self._pending, self._skipping = len(self._pending), b"", True

    def _skip_overlong(self) -> bool:
        """Drop bytes up to the next newline (resynchronise after an overlong line); False when
        the file ends first. The offset stays at the line's start until its newline is found, so
        an overlong line at the end is a torn tail that recovery cuts, not a prefix glued to the
        next record appended."""
        while chunk := self._read():
            end = chunk.find(b"\n")
            if end >= 0:
                self._pending = chunk[end + 1 :]
                self.offset += self._skipped + end + 1
                self._skipped, self._skipping = 0, False
                return True
            self._skipped += len(chunk)
        return False

    @property
    def torn_bytes(self) -> int:
        """Bytes after the last newline read so far (a torn tail, or a record being written)."""
        return len(self._pending) + self._skipped

    def records(self, damages: list[Damage]) -> Iterator[JournalRecord]:
        """Decode the new whole lines, adding what cannot be read to `damages`."""
        for offset, line, reason in self.lines():
            if line is None:
                self.damaged += 1
                damages.append(Damage(path=str(self.path), offset=offset, length=0, reason=reason))
                continue
            try:
                yield decode_record(line)
            except ValueError as exc:
                self.damaged += 1
                salvaged = salvage(line)
                reason = (
                    f"{exc}; {len(salvaged)} whole records inside kept" if salvaged else str(exc)
                )
                damages.append(
                    Damage(path=str(self.path), offset=offset, length=len(line) + 1, reason=reason)
                )
                yield from salvaged


_FRAME_START = re.compile(rb"(?=[0-9a-f]{8} )")
_SALVAGE_MAX_LINE = 1 << 20  # bytes: longer damaged lines are not searched
_SALVAGE_MAX_STARTS = 32


def salvage(line: bytes) -> list[JournalRecord]:
    """The whole records inside a damaged line: a flipped newline joins two good records into
    one line that fails its checksum, and neither is damaged. A fragment counts only when its own
    checksum matches, so text inside a record that looks like a frame start cannot fool it."""
    if len(line) > _SALVAGE_MAX_LINE:
        return []
    starts = [m.start() for m in _FRAME_START.finditer(line)][:_SALVAGE_MAX_STARTS]
    found: list[JournalRecord] = []
    found_end = 0
    for i, start in enumerate(starts):
        if start < found_end:
            continue
        for end in [s - 1 for s in starts[i + 1 :] if s - 1 > start] + [len(line)]:
            try:
                found.append(decode_record(line[start:end]))
            except ValueError:
                continue
            found_end = end
            break
    return found


def write_snapshot(
    directory: Path,
    seq: int,
    at: float,
    events: list[Event],
    archived: dict[str, int] | None = None,
    paused: PauseState | None = None,
) -> Path:
    """Write a snapshot durably (temp file, fsync, rename, directory fsync); return its path."""
    held = paused if paused is not None and paused.any else None
    header = SnapshotHeader(seq=seq, at=at, count=len(events), archived=archived, paused=held)
    return write_events_file(directory / snapshot_name(seq), header, events)


def write_archive(directory: Path, seq: int, at: float, events: list[Event]) -> Path:
    """Write the archive of ended events set aside by the compaction at `seq` (durably)."""
    counts: dict[str, int] = {}
    for event in events:
        counts[event.state.value] = counts.get(event.state.value, 0) + 1
    last_ended = max((e.ended_at or 0.0 for e in events), default=0.0)
    header = ArchiveHeader(seq=seq, at=at, count=len(events), last_ended=last_ended, counts=counts)
    return write_events_file(directory / archive_name(seq), header, events)


def write_events_file(final: Path, header: msgspec.Struct, events: list[Event]) -> Path:
    """Write a header line and one event per line to `final` durably, all or nothing."""
    temp = final.with_name(f".{final.name}.tmp")
    try:
        with open(temp, "wb") as out:
            out.write(encode_record(header))
            buf = bytearray()
            for event in events:
                buf += encode_record(event)
                if len(buf) >= _READ_CHUNK:
                    out.write(buf)
                    buf.clear()
            out.write(buf)
            out.flush()
            os.fsync(out.fileno())
    except BaseException:
        temp.unlink(missing_ok=True)  # a full disk must not keep half a file around
        raise
    os.rename(temp, final)
    fsync_dir(final.parent)
    return final


def read_snapshot(path: Path) -> tuple[SnapshotHeader, dict[str, Event]]:
    """Read a snapshot; ValueError when it is damaged anywhere (a snapshot must be whole)."""
    return read_events_file(path, _header_decoder, "snapshot")


def read_archive(path: Path) -> tuple[ArchiveHeader, dict[str, Event]]:
    """Read an archive; ValueError when it is damaged anywhere."""
    return read_events_file(path, _archive_decoder, "archive")


def read_archive_header(path: Path) -> ArchiveHeader:
    """Only the first line of an archive; ValueError when it is damaged."""
    with open(path, "rb") as f:
        line = f.readline(_READ_CHUNK).rstrip(b"\n")
    try:
        return _archive_decoder.decode(unframe(line))
    except (ValueError, msgspec.DecodeError) as exc:
        raise ValueError(f"{path}: damaged archive header: {exc!s:.200}") from None


def drop_from_archive(directory: Path, seq: int, ids: set[str]) -> ArchiveHeader | None:
    """Write archive `seq` again without the events `ids` (forgotten), whole or not at all;
    remove it when none is left. Its header after, or None when it is gone (or was already:
    retention removed it)."""
    path = directory / archive_name(seq)
    try:
        header, events = read_archive(path)
    except FileNotFoundError:
        return None
    if not ids & events.keys():
        return header
    kept = [e for i, e in events.items() if i not in ids]
    if not kept:
        path.unlink()
        fsync_dir(directory)
        return None
    write_archive(directory, seq, header.at, kept)
    return read_archive_header(path)


class _EventName(msgspec.Struct):
    """An event line, read for its id and function only (the rest is skipped, never built)."""

    id: str
    function: str


_event_name_decoder = msgspec.json.Decoder(_EventName)


def archive_ids(path: Path) -> list[tuple[str, str]]:
    """(id, function) of every readable event in an archive, without decoding the rest."""
    found = []
    with open(path, "rb") as f:
        f.readline()  # the header
        for line in f:
            try:
                name = _event_name_decoder.decode(unframe(line.rstrip(b"\n")))
            except (ValueError, msgspec.DecodeError):
                continue  # damaged: its log stays
            found.append((name.id, name.function))
    return found


H = TypeVar("H", SnapshotHeader, ArchiveHeader)


def read_events_file(
    path: Path, header_decoder: msgspec.json.Decoder[H], kind: str
) -> tuple[H, dict[str, Event]]:
    """Read a header line and its events, all or nothing (ValueError when damaged)."""
    with open(path, "rb") as f:
        data = f.read()
    lines = data.split(b"\n")
    if lines[-1] != b"":
        raise ValueError(f"{path}: torn {kind}")
    try:
        header = header_decoder.decode(unframe(lines[0]))
        events = {}
        for line in lines[1:-1]:
            event = _event_decoder.decode(unframe(line))
            events[event.id] = event
    except (ValueError, msgspec.DecodeError, RecursionError) as exc:
        raise ValueError(f"{path}: damaged {kind}: {exc!s:.200}") from None
    if header.count != len(events):
        raise ValueError(f"{path}: {kind} holds {len(events)} events, header says {header.count}")
    return header, events


class JournalState(msgspec.Struct, kw_only=True):
    """What a replay found: folded events, the last sequence number, and the damage seen."""

    events: dict[str, Event] = msgspec.field(default_factory=dict)
    last_seq: int = 0
    snapshot_seq: int = 0
    damages: list[Damage] = msgspec.field(default_factory=list)
    illegal: list[str] = msgspec.field(default_factory=list)
    archived: dict[str, int] | None = None  # the snapshot's count of archived events by state
    paused: PauseState = PauseState()  # whose dispatch is held (the last Paused record)
    forgotten: list[Forgotten] = msgspec.field(default_factory=list)  # the records folded


def load_snapshot(directory: Path, state: JournalState) -> None:
    """Load the newest readable snapshot into `state`; report an unreadable one as damage."""
    for _seq, path in reversed(list_snapshots(directory)):
        try:
            header, events = read_snapshot(path)
        except FileNotFoundError:
            continue  # compacted away under us; an older or newer one stands
        except ValueError as exc:
            state.damages.append(Damage(path=str(path), offset=0, length=0, reason=str(exc)))
            continue
        state.events.update(events)
        state.last_seq = state.snapshot_seq = header.seq
        state.archived = dict(header.archived) if header.archived is not None else None
        state.paused = header.paused or PauseState()
        return


def load_archives(directory: Path, state: JournalState) -> None:
    """Load every readable archive the newest snapshot stands on (a full replay: readers of a
    small journal, and rebuilds). Call before load_snapshot."""
    newest = max((seq for seq, _ in list_snapshots(directory)), default=0)
    for seq, path in list_archives(directory):
        if seq > newest:
            continue  # left by a compaction that did not finish: its events are in segments
        try:
            _header, events = read_archive(path)
        except FileNotFoundError:
            continue  # retention removed it under us
        except ValueError as exc:
            state.damages.append(Damage(path=str(path), offset=0, length=0, reason=str(exc)))
            continue
        state.events.update(events)


def fold(state: JournalState, rec: JournalRecord) -> bool:
    """Apply one record to `state` unless it is already covered; return whether it was new."""
    if rec.seq <= state.last_seq:
        return False
    state.last_seq = rec.seq
    if isinstance(rec, Transition):
        known = state.events.get(rec.id)
        if known is not None and rec.seq <= known.seq:
            return True  # a snapshot written while the daemon ran already holds it
        try:
            apply(state.events, rec)
        except IllegalTransition as exc:  # an impossible transition on disk: report, never apply
            state.illegal.append(str(exc))
            log.error("journal holds an %s", exc)
    elif isinstance(rec, DELIVERY_RECORDS):
        delivered = state.events.get(rec.id)
        if delivered is not None:
            mark_delivered(delivered, rec)
    elif isinstance(rec, Paused):
        state.paused = rec.state
    elif isinstance(rec, Forgotten):
        forget(state.events, rec)
        state.forgotten.append(rec)
    return True


class Cursor(msgspec.Struct, frozen=True, kw_only=True):
    """A reader's place in the journal: the last record taken, and where the next one starts."""

    seq: int = 0  # the last record taken (0: none)
    segment: int = 0  # the first sequence number of the segment read (0: find it from `seq`)
    offset: int = 0  # bytes of that segment consumed


class Outrun(Exception):
    """The segments after a cursor were compacted away: read from a snapshot again."""


class JournalTail:
    """The records after a cursor, following the writer from segment to segment.

    The next segment is followed only where it continues the records read so far (allowing one
    missing record per damaged line), so a stray file with a high number in journal/ can neither
    lead a reader away from the segment the daemon writes nor loop it.
    """

    def __init__(self, directory: Path, cursor: Cursor, damages: list[Damage]) -> None:
        self.directory = directory
        self.cursor = cursor
        self.damages = damages
        self._reader: SegmentReader | None = None
        self._finished = True  # the last read went to the end

    @classmethod
    def from_end(cls, directory: Path, damages: list[Damage]) -> JournalTail:
        """A tail that yields only the records appended from now on."""
        segments = list_segments(directory)
        if not segments:
            return cls(directory, Cursor(), damages)
        first, path = segments[-1]
        with open(path, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            start = max(0, size - MAX_RECORD_BYTES)
            f.seek(start)
            data = f.read(size - start)
        end = data.rfind(b"\n")
        if end < 0:  # no whole record in the newest segment yet
            return cls(directory, Cursor(seq=first - 1, segment=first), damages)
        last = data.rfind(b"\n", 0, end) + 1
        try:
            seq = decode_record(data[last:end]).seq
        except ValueError:  # damaged: read the segment from its start instead
            return cls(directory, Cursor(seq=first - 1, segment=first), damages)
        return cls(directory, Cursor(seq=seq, segment=first, offset=start + end + 1), damages)

    def read(self) -> Iterator[JournalRecord]:
        """Yield every whole record after the cursor available now; raise Outrun when the
        segment holding the next record is gone. A caller may stop early: the next read starts
        after the last record yielded."""
        if not self._finished:
            self.close()  # the last read was left early: its reader had read ahead
        self._finished = False
        while self._reader is not None or self._open():
            reader = self._reader
            assert reader is not None
            yield from self._drain(reader)
            following = self._following(reader)
            if following is None:
                self._finished = True
                return
            yield from self._drain(reader)  # what was appended before the writer moved on
            reader.close()
            self._reader = None
            self.cursor = Cursor(seq=self.cursor.seq, segment=following)
        self._finished = True

    def _drain(self, reader: SegmentReader) -> Iterator[JournalRecord]:
        for rec in reader.records(self.damages):
            if rec.seq > self.cursor.seq:
                self.cursor = Cursor(seq=rec.seq, segment=reader.first_seq, offset=reader.offset)
                yield rec
        self.cursor = Cursor(seq=self.cursor.seq, segment=reader.first_seq, offset=reader.offset)

    def _open(self) -> bool:
        segment = self.cursor.segment or self._segment_holding(self.cursor.seq + 1)
        if segment is None:
            return False
        try:
            self._reader = SegmentReader(
                self.directory / segment_name(segment), segment, self.cursor.offset
            )
        except FileNotFoundError:
            raise Outrun(f"segment {segment} is gone") from None
        return True

    def _segment_holding(self, seq: int) -> int | None:
        """The segment where record `seq` is or will be; Outrun when it was compacted away."""
        segments = [first for first, _ in list_segments(self.directory)]
        earlier = [first for first in segments if first <= seq]
        if earlier:
            return earlier[-1]
        if segments and self.cursor.seq == 0:
            return segments[0]  # a journal whose start was compacted: from its first segment
        if segments:
            raise Outrun(f"records {seq}..{segments[0] - 1} were compacted away")
        return None

    def _following(self, reader: SegmentReader) -> int | None:
        """The segment after the one read, once the writer has moved on to it."""
        reach = self.cursor.seq + 1 + reader.damaged
        later = [s for s, _ in list_segments(self.directory) if reader.first_seq < s <= reach]
        if later:
            return later[0]
        if not reader.path.exists():  # compacted away while we read it: we fell behind
            raise Outrun(f"segment {reader.first_seq} is gone")
        return None

    def close(self) -> None:
        """Close the open segment."""
        if self._reader is not None:
            self._reader.close()
            self._reader = None


class JournalFollower:
    """Reads archives, snapshot and segments, then follows new records across rotation and
    compaction: every retained event, folded (for small journals, tests and rebuilds)."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.state = JournalState()
        self.reloads = 0  # bumped when compaction forced a re-read: consumers refresh everything
        self._tail: JournalTail | None = None

    def load(self) -> JournalState:
        """(Re)read everything from the archives and the newest snapshot on."""
        self.close()
        self.state = JournalState()
        self.reloads += 1
        load_archives(self.directory, self.state)
        load_snapshot(self.directory, self.state)
        self._tail = JournalTail(
            self.directory, Cursor(seq=self.state.last_seq), self.state.damages
        )
        try:
            self._fold_tail()
        except Outrun as exc:  # segments missing right after the snapshot: damage, read on
            self.state.damages.append(
                Damage(path=str(self.directory), offset=0, length=0, reason=str(exc))
            )
            self._tail = JournalTail(self.directory, Cursor(), self.state.damages)
            self._fold_tail()
        return self.state

    def poll(self) -> list[JournalRecord]:
        """Read and fold the records appended since the last poll; return them."""
        try:
            return self._fold_tail()
        except Outrun:  # compacted between two polls: start over
            self.load()
            return []

    def _fold_tail(self) -> list[JournalRecord]:
        if self._tail is None:  # polled without a load: from what the state holds on
            cursor = Cursor(seq=self.state.last_seq)
            self._tail = JournalTail(self.directory, cursor, self.state.damages)
        return [r for r in self._tail.read() if fold(self.state, r)]

    def close(self) -> None:
        """Close the open segment."""
        if self._tail is not None:
            self._tail.close()
