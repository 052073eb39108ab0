"""The indexer: a child process of the daemon that keeps the event index (eventdb.py) in step
with the journal, reading the segments as any reader does.

Run as `python -m daemon.indexer JOURNAL_DIR`. It holds only the events not yet ended; each
batch of records becomes one SQLite transaction with the cursor that says how far it went, so a
crash at any point resumes where the last commit ended. It builds the index anew from archives,
snapshot and segments when there is none, it is of another version, or the segments it needs are
gone. It leaves when its parent does, or on SIGTERM once it has read what was written.

Work in the daemon's event loop costs the loop, and indexing is not urgent: readers fold the
records the index has not taken in yet (reads.py). So it runs in a process of its own.
"""

from __future__ import annotations

import logging
import os
import signal
import sqlite3
import sys
import time
from pathlib import Path

from daemon.eventdb import INDEX_NAME, VERSION, IndexDB, Placed
from daemon.journal import (
    Cursor,
    Damage,
    JournalTail,
    Outrun,
    list_archives,
    list_snapshots,
    read_archive,
    read_snapshot,
)
from daemon.logsetup import log_to_stderr
from daemon.model import (
    DELIVERY_RECORDS,
    Delivered,
    DeliveryFailed,
    Event,
    Forgotten,
    IllegalTransition,
    JournalRecord,
    Transition,
    apply,
    mark_delivered,
)

log = logging.getLogger("daemon.indexer")

POLL = 0.05  # seconds between looks at the journal when nothing came
BATCH = 20_000  # records per transaction at most


class Indexer:
    """Follows one journal directory into its index."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.damages: list[Damage] = []
        self.db = self._open()
        self.live: dict[str, Event] = {}  # events seen and not ended: no row read per record
        cursor = self.db.cursor()
        if cursor is None:
            cursor = self._rebuild()
        self.tail = JournalTail(directory, cursor, self.damages)

    def _open(self) -> IndexDB:
        path = self.directory / INDEX_NAME
        if path.exists():
            probe = IndexDB.open_readonly(self.directory)
            if probe is None:  # another version, or not an index at all: built anew
                log.warning("%s is not an index of version %d: building it anew", path, VERSION)
                _remove_db(path)
            else:
                probe.close()
        previous = os.umask(0o027)  # the spool's group reads it; nobody else
        try:
            return IndexDB(path, writable=True)
        finally:
            os.umask(previous)

    def _rebuild(self) -> Cursor:
        """Fill an empty index from the archives and the newest snapshot."""
        started = time.monotonic()
        snapshots = list_snapshots(self.directory)
        newest = snapshots[-1][0] if snapshots else 0
        count = 0
        for seq, path in list_archives(self.directory):
            if seq > newest:
                continue  # an unfinished compaction's: its events are in segments
            try:
                _header, events = read_archive(path)
            except (OSError, ValueError) as exc:
                log.error("index: archive %s skipped: %s", path.name, exc)
                continue
            with self.db.transaction():
                self.db.put(events.values(), archive=seq)
                self.db.mark_archive(seq, ())
            count += len(events)
        cursor = Cursor()
        for _seq, path in reversed(snapshots):
            try:
                header, events = read_snapshot(path)
            except (OSError, ValueError) as exc:
                log.error("index: snapshot %s skipped: %s", path.name, exc)
                continue
            with self.db.transaction():
                self.db.put(events.values())
                cursor = Cursor(seq=header.seq)
                self.db.set_cursor(cursor)
            count += len(events)
            self.live = {e.id: e for e in events.values() if not e.ended}
            break
        else:
            with self.db.transaction():
                self.db.set_cursor(cursor)
        log.info("index built: %d events in %.1fs", count, time.monotonic() - started)
        return cursor

    def step(self) -> int:
        """Take in what the journal gained; return the number of records read."""
        self._follow_archives()
        records = []
        for rec in self.tail.read():
            records.append(rec)
            if len(records) >= BATCH:
                break
        if records or self.tail.cursor != self.db.cursor():
            self._apply(records)
        return len(records)

    def _apply(self, records: list[JournalRecord]) -> None:
        changed, placed, gone = self._fold(records)
        with self.db.transaction():
            if gone:
                self._drop(gone)
                placed = {i: p for i, p in placed.items() if i not in gone}  # rows deleted
            self.db.put(changed.values(), placed=placed)
            self.db.set_cursor(self.tail.cursor)
        for event in changed.values():
            if event.ended:
                self.live.pop(event.id, None)

    def _drop(self, gone: dict[str, int | None]) -> None:
        """Delete the rows of forgotten events; note those whose archive is not marked yet, so
        that marking it leaves them out."""
        self.db.drop(gone)
        marked = self.db.archives()
        unmarked = [(a, i) for i, a in gone.items() if a is not None and a not in marked]
        self.db.hold_forgotten(unmarked)

    def _fold(
        self, records: list[JournalRecord]
    ) -> tuple[dict[str, Event], Placed, dict[str, int | None]]:
        """The events these records change, what their rows held before (live events are
        written as they are: their rows hold their present state), and the events forgotten
        (id: archive), whose rows go (an id taken again after is among the changed)."""
        wanted = {r.id for r in records if isinstance(r, Transition | Delivered | DeliveryFailed)}
        missing = [i for i in wanted if i not in self.live]
        known = {**self.db.events(missing), **self.live} if missing else dict(self.live)
        placed = {i: (known[i].function, known[i].state.value) for i in wanted if i in known}
        changed: dict[str, Event] = {}
        gone: dict[str, int | None] = {}
        for rec in records:
            if isinstance(rec, Forgotten):
                for forgotten in rec.events:
                    known.pop(forgotten.id, None)
                    changed.pop(forgotten.id, None)
                    self.live.pop(forgotten.id, None)
                    gone[forgotten.id] = forgotten.archive
            elif isinstance(rec, Transition):
                event = known.get(rec.id)
                if event is not None and rec.seq <= event.seq:
                    continue  # the row already holds it
                try:
                    event = apply(known, rec)
                except IllegalTransition as exc:
                    log.error("index: the journal holds an %s", exc)
                    continue
                changed[event.id] = self.live[event.id] = event
            elif isinstance(rec, DELIVERY_RECORDS) and (event := known.get(rec.id)) is not None:
                mark_delivered(event, rec)
                changed[event.id] = event
        return changed, placed, gone

    def _follow_archives(self) -> None:
        """Mark the events of new archives; forget those of archives retention removed."""
        on_disk = {seq: path for seq, path in list_archives(self.directory)}
        marked = self.db.archives()
        newest = max((seq for seq, _ in list_snapshots(self.directory)), default=0)
        for seq in sorted(set(on_disk) - marked):
            if seq > newest or seq > self.tail.cursor.seq:
                continue  # its compaction is not finished, or its records not yet read
            try:
                _header, events = read_archive(on_disk[seq])
            except (OSError, ValueError) as exc:
                log.error("index: archive %s not read: %s", on_disk[seq].name, exc)
                continue
            with self.db.transaction():
                left_out = self.db.forgotten_in(seq)  # forgotten before this look
                kept = [e for i, e in events.items() if i not in left_out]
                self.db.put(kept, archive=seq)
                self.db.mark_archive(seq, (e.id for e in kept))
        for seq in marked - set(on_disk):
            with self.db.transaction():
                gone = self.db.drop_archive(seq)
            log.info("index: %d events of archive %d dropped by retention", gone, seq)


def _remove_db(path: Path) -> None:
    for suffix in ("", "-wal", "-shm", "-journal"):
        Path(f"{path}{suffix}").unlink(missing_ok=True)


def run(directory: Path, parent: int) -> int:
    """Index until the parent is gone or SIGTERM comes; then catch up and close cleanly."""
    stopping = False

    def stop(_signum: int, _frame: object) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGTERM, stop)
    indexer = Indexer(directory)
    while not stopping and os.getppid() == parent:
        try:
            read = indexer.step()
        except Outrun as exc:
            log.warning("index: %s; building it anew", exc)
            indexer.db.close()
            _remove_db(directory / INDEX_NAME)
            indexer = Indexer(directory)
            continue
        if not read:
            time.sleep(POLL)
    while indexer.step():
        pass
    indexer.db.close_cleanly()
    return 0


def main() -> int:
    """Entry point: `python -m daemon.indexer JOURNAL_DIR [DAEMON_PID]`."""
    log_to_stderr()
    os.nice(10)  # indexing may lag in a burst; the daemon and the instances may not
    # the daemon's pid comes from it: a daemon killed before this line would leave getppid() at
    # 1 here, and an indexer that took 1 for its parent would never see it go
    parent = int(sys.argv[2]) if len(sys.argv) > 2 else os.getppid()
    try:
        return run(Path(sys.argv[1]), parent)
    except (sqlite3.Error, OSError) as exc:  # a full disk, most likely: the daemon retries
        log.error("the index cannot be kept (readers replay the journal meanwhile): %s", exc)
        return 1


if __name__ == "__main__":
    sys.exit(main())
