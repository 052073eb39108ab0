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

import msgspec

from daemon.model import Delivered, Event, IllegalTransition, JournalRecord, Transition, apply

log = logging.getLogger(__name__)

SEGMENT_RE = re.compile(r"^segment-(\d{16})\.jsonl$")
SNAPSHOT_RE = re.compile(r"^snapshot-(\d{16})\.jsonl$")
MAX_RECORD_BYTES = 16 * 1024 * 1024  # a longer line is damage, never buffered further
_READ_CHUNK = 1024 * 1024

_record_decoder = msgspec.json.Decoder(JournalRecord)
_event_decoder = msgspec.json.Decoder(Event)
_encoder = msgspec.json.Encoder()


class SnapshotHeader(msgspec.Struct, frozen=True, kw_only=True, tag="snapshot", tag_field="kind"):
    """The first line of a snapshot: the last sequence number it covers."""

    seq: int
    at: float
    count: int


_header_decoder = msgspec.json.Decoder(SnapshotHeader)


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


class SegmentReader:
    """Reads whole lines from one segment file as they are appended; keeps a torn tail pending."""

    def __init__(self, path: Path, first_seq: int) -> None:
        self.path = path
        self.first_seq = first_seq
        self._fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)  # kept open to follow the file
        self.offset = 0  # end of the last whole line consumed
        self._read_pos = 0
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
                damages.append(Damage(path=str(self.path), offset=offset, length=0, reason=reason))
                continue
            try:
                yield decode_record(line)
            except ValueError as exc:
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


def write_snapshot(directory: Path, seq: int, at: float, events: list[Event]) -> Path:
    """Write a snapshot durably (temp file, fsync, rename, directory fsync); return its path."""
    final = directory / snapshot_name(seq)
    temp = directory / f".{final.name}.tmp"
    header = SnapshotHeader(seq=seq, at=at, count=len(events))
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
        temp.unlink(missing_ok=True)  # a full disk must not keep half a snapshot around
        raise
    os.rename(temp, final)
    fsync_dir(directory)
    return final


def read_snapshot(path: Path) -> tuple[SnapshotHeader, dict[str, Event]]:
    """Read a snapshot; ValueError when it is damaged anywhere (a snapshot must be whole)."""
    with open(path, "rb") as f:
        data = f.read()
    lines = data.split(b"\n")
    if lines[-1] != b"":
        raise ValueError(f"{path}: torn snapshot")
    try:
        header = _header_decoder.decode(unframe(lines[0]))
        events = {}
        for line in lines[1:-1]:
            event = _event_decoder.decode(unframe(line))
            events[event.id] = event
    except (ValueError, msgspec.DecodeError, RecursionError) as exc:
        raise ValueError(f"{path}: damaged snapshot: {exc!s:.200}") from None
    if header.count != len(events):
        raise ValueError(f"{path}: snapshot holds {len(events)} events, header says {header.count}")
    return header, events


def fsync_dir(directory: Path) -> None:
    """fsync a directory so the names created or removed in it are durable."""
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class JournalState(msgspec.Struct, kw_only=True):
    """What a replay found: folded events, the last sequence number, and the damage seen."""

    events: dict[str, Event] = msgspec.field(default_factory=dict)
    last_seq: int = 0
    snapshot_seq: int = 0
    damages: list[Damage] = msgspec.field(default_factory=list)
    illegal: list[str] = msgspec.field(default_factory=list)


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
        state.events = events
        state.last_seq = state.snapshot_seq = header.seq
        return


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
    elif isinstance(rec, Delivered):
        delivered = state.events.get(rec.id)
        if delivered is not None:
            delivered.delivered = True
    return True


class JournalFollower:
    """Reads snapshot + segments, then follows new records across rotation and compaction."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.state = JournalState()
        self.reloads = 0  # bumped when compaction forced a re-read: consumers refresh everything
        self._reader: SegmentReader | None = None
        self._finished = 0  # first sequence number of the last segment read to its end

    def load(self) -> JournalState:
        """(Re)read everything from the newest snapshot on."""
        self.close()
        self.state = JournalState()
        self._finished = 0
        self.reloads += 1
        load_snapshot(self.directory, self.state)
        self.poll()
        return self.state

    def poll(self) -> list[JournalRecord]:
        """Read and fold the records appended since the last poll; return them."""
        new: list[JournalRecord] = []
        while self._reader is not None or self._open_next():
            assert self._reader is not None
            new += self._drain()
            if not self._writer_moved_on():
                break
            new += self._drain()  # what was appended before the switch
            self._finished = self._reader.first_seq
            self._reader.close()
            self._reader = None
        return new

    def _drain(self) -> list[JournalRecord]:
        assert self._reader is not None
        return [r for r in self._reader.records(self.state.damages) if fold(self.state, r)]

    def _open_next(self) -> bool:
        """Open the first segment holding records after the last one read."""
        segments = [(s, p) for s, p in list_segments(self.directory) if s > self._finished]
        if not segments:
            return False
        after = self.state.last_seq
        candidates = [(s, p) for s, p in segments if s <= after + 1]
        first_seq, path = candidates[-1] if candidates else segments[0]
        if first_seq > after + 1 and after > self.state.snapshot_seq:
            # the segments we needed were compacted between two polls: start over
            self.load()
            return False
        try:
            self._reader = SegmentReader(path, first_seq)
        except FileNotFoundError:
            return False
        return True

    def _writer_moved_on(self) -> bool:
        assert self._reader is not None
        return any(s > self._reader.first_seq for s, _ in list_segments(self.directory))

    def close(self) -> None:
        """Close the open segment."""
        if self._reader is not None:
            self._reader.close()
            self._reader = None
