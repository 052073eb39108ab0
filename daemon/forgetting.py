"""What a forget leaves to do after its `Forgotten` record: the forgotten events' copies in
archives, which the next compaction drops, and the index's rows, which the indexer drops.

Until both are gone the daemon's look-ups must not find the events there: an id forgotten is free
again at once (as after retention), so a new event may take it.
"""

from __future__ import annotations

import collections
import logging
from collections.abc import Iterable, Mapping
from pathlib import Path

import msgspec

from daemon.journal import drop_from_archive
from daemon.model import Forgotten, State

log = logging.getLogger(__name__)


class Drop(msgspec.Struct, frozen=True):
    """An event to drop from an archive: the record that forgot it, and the state it had."""

    seq: int
    state: State


class Forgetting:
    """The forgotten events whose copies may remain in archives and in the index."""

    def __init__(self) -> None:
        self.hidden: dict[str, int] = {}  # id -> the Forgotten record's seq
        self.drops: dict[int, dict[str, Drop]] = {}  # archive seq -> the ids to drop from it

    @classmethod
    def recovered(
        cls, records: Iterable[Forgotten], held: Mapping[str, object], snapshot_seq: int
    ) -> Forgetting:
        """The work left by the records after the snapshot (`held`: the events in memory, which
        took an id again after its forget). An archive newer than the snapshot was removed at
        recovery: its events were read from the segments instead, and forgotten there."""
        forgetting = cls()
        for rec in records:
            forgetting.note(rec)
        for request_id in held:
            forgetting.reused(request_id)
        for archive in [a for a in forgetting.drops if a > snapshot_seq]:
            del forgetting.drops[archive]
        return forgetting

    def is_hidden(self, request_id: str) -> bool:
        """Whether the id names a forgotten event (whose copies may still be found)."""
        return request_id in self.hidden

    def note(self, rec: Forgotten) -> None:
        """Take in a Forgotten record."""
        for gone in rec.events:
            self.hidden[gone.id] = rec.seq
            if gone.archive is not None:
                self.drops.setdefault(gone.archive, {})[gone.id] = Drop(rec.seq, gone.state)

    def reused(self, request_id: str) -> None:
        """A new event took the id: look-ups find that one from now on."""
        self.hidden.pop(request_id, None)

    def due(self, durable_seq: int) -> dict[int, set[str]]:
        """By archive, the ids to drop whose Forgotten records are on disk."""
        due = {
            archive: {i for i, d in drops.items() if d.seq <= durable_seq}
            for archive, drops in self.drops.items()
        }
        return {archive: ids for archive, ids in due.items() if ids}

    def dropped(self, done: Mapping[int, Iterable[str]]) -> None:
        """These were dropped from their archives (or the archives are gone)."""
        for archive, ids in done.items():
            drops = self.drops.get(archive, {})
            for request_id in ids:
                drops.pop(request_id, None)
            if not drops:
                self.drops.pop(archive, None)

    def archives_gone(self, archives: Iterable[int]) -> None:
        """Retention removed these archives, with every copy in them."""
        for archive in archives:
            self.drops.pop(archive, None)

    def pending_counts(self) -> collections.Counter[State]:
        """By state, the forgotten events their archives still hold (and count)."""
        return collections.Counter(d.state for drops in self.drops.values() for d in drops.values())

    def settle(self, indexed_seq: int) -> None:
        """Stop hiding the ids the index has dropped (its cursor is past their records) and no
        archive holds any more."""
        waiting = {i for drops in self.drops.values() for i in drops}
        self.hidden = {i: s for i, s in self.hidden.items() if s > indexed_seq or i in waiting}


def drop_all(directory: Path, due: Mapping[int, set[str]]) -> None:
    """Drop the forgotten events from their archives (in a worker thread). A damaged archive
    keeps them: it is reported, and the index (built from archives) skips it whole anyway."""
    for archive, ids in due.items():
        try:
            drop_from_archive(directory, archive, ids)
        except (OSError, ValueError) as exc:
            log.error("archive %d: %d forgotten events not dropped: %s", archive, len(ids), exc)
