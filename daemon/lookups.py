"""The daemon's look-ups of events it no longer holds in memory: by id, and by the identity of
the file an event came from.

Those events are in archives, and so in the index, except the archives the indexer has not
read yet (it lags in a burst, or was stopped): their ids are held here until it has. A check
for a duplicate id is then one point query on a connection kept open, never a read of the
journal's tail.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

from daemon.eventdb import INDEX_NAME, IndexDB, source_key_of
from daemon.journal import archive_ids, list_archives
from daemon.model import Event, Source
from daemon.reads import EventReads

log = logging.getLogger(__name__)


class Lookups:
    """Events by id or source beyond the daemon's memory: the index, plus archives it lacks."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self._reads = EventReads(directory)
        self._index: IndexDB | None = None
        self._inode: int | None = None
        self._unindexed: dict[int, set[str]] = {}  # archive seq -> its ids, until indexed
        indexed = self.indexed_seq()
        for seq, path in list_archives(directory):
            if seq > indexed:
                self._unindexed[seq] = {i for i, _function in archive_ids(path)}
        if self._unindexed:
            count = sum(map(len, self._unindexed.values()))
            log.info("%d archived events are not indexed yet: their ids are held", count)

    def get(self, request_id: str) -> Event | None:
        """The retained event with that id (the index, and the journal after it)."""
        return self._reads.get(request_id)

    def has(self, request_id: str) -> bool:
        """Whether an event with that id was archived."""
        if any(request_id in ids for ids in self._unindexed.values()):
            return True
        index = self._open()
        return index is not None and index.has_id(request_id)

    def archived_ids(self, ids: list[str]) -> set[str]:
        """Those of `ids` that belong to archived events (one query for a batch)."""
        found = {i for i in ids if any(i in held for held in self._unindexed.values())}
        index = self._open()
        if index is not None:
            found |= index.known_ids(ids)
        return found

    def has_source(self, source: Source) -> bool:
        """Whether an indexed event came from the file with this identity."""
        key = source_key_of(source)
        index = self._open()
        return key is not None and index is not None and index.has_source(key)

    def archived(self, seq: int, events: list[Event]) -> None:
        """Note the archive a compaction wrote, until the index has it."""
        self._unindexed[seq] = {e.id for e in events}

    def indexed_seq(self) -> int:
        """How far into the journal the index goes (0 when there is none); lets go of the ids of
        the archives it has."""
        index = self._open()
        cursor = index.cursor() if index is not None else None
        seq = cursor.seq if cursor is not None else 0
        for archive in [s for s in self._unindexed if s <= seq]:
            del self._unindexed[archive]
        return seq

    def _open(self) -> IndexDB | None:
        """The index, opened once and again when the indexer built it anew."""
        try:
            inode = os.stat(self.directory / INDEX_NAME).st_ino
        except FileNotFoundError:
            inode = None
        if inode != self._inode or self._index is None:
            if self._index is not None:
                self._index.close()
            self._index = IndexDB.open_readonly(self.directory) if inode is not None else None
            self._inode = inode if self._index is not None else None
        return self._index
