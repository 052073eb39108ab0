"""The daemon's look-ups of events it no longer holds in memory: by id, and by the identity of
the file an event came from.

Those events are in archives, and so in the index, except the archives the indexer has not
read yet (it lags in a burst, or was stopped): their ids are held here until it has. A check
for a duplicate id is then one point query on a connection kept open, never a read of the
journal's tail.
"""

from __future__ import annotations

import bisect
import logging
import os
from array import array
from collections.abc import Iterable
from pathlib import Path

from daemon.eventdb import INDEX_NAME, IndexDB, source_key_of
from daemon.journal import archive_ids, archive_name, list_archives, read_archive
from daemon.model import Event, Source
from daemon.reads import EventReads

log = logging.getLogger(__name__)


class HeldIds:
    """The ids of archives the index lacks, 8 bytes each: per archive a sorted array of the ids'
    64-bit hashes (a set of the strings took 120 bytes per id: 1.2 GB for 10M events while a
    deleted index was rebuilt). A hash that matches is confirmed in the archive itself."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self._hashes: dict[int, array[int]] = {}  # archive seq -> sorted hashes of its ids

    def __len__(self) -> int:
        return sum(map(len, self._hashes.values()))

    def __contains__(self, seq: int) -> bool:
        return seq in self._hashes

    def hold(self, seq: int, ids: Iterable[str]) -> None:
        """Hold the ids of archive `seq`."""
        self._hashes[seq] = array("Q", sorted({_hash(i) for i in ids}))

    def release_upto(self, seq: int) -> None:
        """Let go of the archives up to `seq`: the index has them."""
        for archive in [s for s in self._hashes if s <= seq]:
            del self._hashes[archive]

    def found(self, ids: Iterable[str]) -> set[str]:
        """Those of `ids` held."""
        maybe: dict[int, set[str]] = {}
        for request_id in ids:
            for seq in self._candidates(request_id):
                maybe.setdefault(seq, set()).add(request_id)
        return {i for seq, candidates in maybe.items() for i in candidates & self._ids_of(seq)}

    def event(self, request_id: str) -> Event | None:
        """The held event with that id, read from the one archive that holds it."""
        for seq in self._candidates(request_id):
            try:
                _header, events = read_archive(self.directory / archive_name(seq))
            except (OSError, ValueError):  # removed by retention, or damaged: not to be had
                continue
            if request_id in events:
                return events[request_id]
        return None

    def _candidates(self, request_id: str) -> list[int]:
        key = _hash(request_id)
        found = []
        for seq, hashes in self._hashes.items():
            at = bisect.bisect_left(hashes, key)
            if at < len(hashes) and hashes[at] == key:
                found.append(seq)
        return found

    def _ids_of(self, seq: int) -> set[str]:
        try:
            return {i for i, _function in archive_ids(self.directory / archive_name(seq))}
        except FileNotFoundError:  # removed by retention meanwhile: nothing to refuse there
            return set()


def _hash(request_id: str) -> int:
    return hash(request_id) & 0xFFFF_FFFF_FFFF_FFFF  # the process's own string hash: never stored


class Lookups:
    """Events by id or source beyond the daemon's memory: the index, plus archives it lacks."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self._reads = EventReads(directory)
        self._index: IndexDB | None = None
        self._unindexed = HeldIds(directory)
        self._seen: int | None = -1  # the index file's inode last seen (None: no file)
        self._open()

    def get(self, request_id: str) -> Event | None:
        """The retained event with that id (the index, and the journal after it). Without an
        index, the archive that holds it: never a replay of the whole journal in the daemon
        (3.3 GB at 1M events)."""
        index = self._open()
        if index is None or index.cursor() is None:
            return self._unindexed.event(request_id)
        return self._reads.get(request_id)

    def has(self, request_id: str) -> bool:
        """Whether an event with that id was archived."""
        index = self._open()  # first: it may have to hold ids again
        if self._unindexed.found([request_id]):
            return True
        return index is not None and index.has_id(request_id)

    def archived_ids(self, ids: list[str]) -> set[str]:
        """Those of `ids` that belong to archived events (one query for a batch)."""
        index = self._open()  # first: it may have to hold ids again
        found = self._unindexed.found(ids)
        if index is not None:
            found |= index.known_ids(ids)
        return found

    def has_source(self, source: Source) -> bool:
        """Whether an indexed event came from the file with this identity."""
        key = source_key_of(source)
        index = self._open()
        return key is not None and index is not None and index.has_source(key)

    def archive_of(self, event: Event) -> int | None:
        """The archive that holds an event the daemon let go of: the index says; else the first
        archive at or after the event's last record that has its id (one, mostly)."""
        index = self._open()
        archive = index.archive_of(event.id) if index is not None else None
        if archive is not None:
            return archive
        for seq, path in list_archives(self.directory):
            try:
                if seq >= event.seq and any(i == event.id for i, _f in archive_ids(path)):
                    return seq
            except FileNotFoundError:
                continue  # removed by retention meanwhile
        return None

    def archived(self, seq: int, events: list[Event]) -> None:
        """Note the archive a compaction wrote, until the index has it."""
        self._unindexed.hold(seq, (e.id for e in events))

    def indexed_seq(self) -> int:
        """How far into the journal the index goes (0 when there is none); lets go of the ids of
        the archives it has."""
        index = self._open()
        cursor = index.cursor() if index is not None else None
        seq = cursor.seq if cursor is not None else 0
        self._unindexed.release_upto(seq)
        return seq

    def _open(self) -> IndexDB | None:
        """The index, opened once and again when the indexer built it anew (or it was deleted):
        then the ids of the archives it lacks are held again."""
        try:
            inode: int | None = os.stat(self.directory / INDEX_NAME).st_ino
        except FileNotFoundError:
            inode = None
        if inode != self._seen or (inode is not None and self._index is None):
            if self._index is not None:
                self._index.close()
            self._index = IndexDB.open_readonly(self.directory) if inode is not None else None
            if inode != self._seen:
                self._seen = inode
                self._hold_unindexed()
        return self._index

    def _hold_unindexed(self) -> None:
        """Hold the ids of every archive the index (as just opened, or none) lacks."""
        cursor = self._index.cursor() if self._index is not None else None
        indexed = cursor.seq if cursor is not None else 0
        before = len(self._unindexed)
        for seq, path in list_archives(self.directory):
            if seq > indexed and seq not in self._unindexed:
                self._unindexed.hold(seq, (i for i, _function in archive_ids(path)))
        if len(self._unindexed) > before:
            count = len(self._unindexed) - before
            log.info("%d archived events are not indexed: their ids are held", count)
