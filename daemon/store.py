"""The daemon's event store: every state change is checked, journaled, then folded in memory.

Also owns compaction: archives of ended events and snapshots of the rest, which let old segments
go, retention, which drops whole archives, and forgets, which drop events before retention does.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import itertools
import logging
import time
from collections.abc import Callable
from pathlib import Path

import msgspec

from daemon.files.logfiles import LogWrite, event_log_path
from daemon.forgetting import Forgetting, drop_all
from daemon.ids import BadId, new_request_id
from daemon.journal import (
    ArchiveHeader,
    JournalState,
    archive_ids,
    list_archives,
    list_segments,
    list_snapshots,
    read_archive_header,
    write_archive,
    write_snapshot,
)
from daemon.journal_writer import JournalFailed, JournalWriter
from daemon.lookups import Lookups
from daemon.model import (
    NO_RAW,
    Delivered,
    DeliveryFailed,
    ErrorInfo,
    Event,
    Forgotten,
    ForgottenEvent,
    JournalRecord,
    Paused,
    PauseState,
    Source,
    State,
    Transition,
    Usage,
    apply,
    check_transition,
    mark_delivered,
)

log = logging.getLogger(__name__)

RETENTION_DEFAULT = 3 * 86400.0


def identity(source: Source) -> tuple[object, ...]:
    """What tells one incoming file from another across a crash. Not the device number: it
    may change when the spool's file system is mounted again after a power loss (a loop or
    device-mapper device numbered anew), and the spool is one file system."""
    return (source.path, source.inode, source.size, source.mtime_ns)


class Store:
    """The events in the daemon's care, kept in step with the journal.

    Memory holds the events not ended, and those ended since the last compaction; compaction
    sets ended events aside into an archive file and lets them go from memory once the index
    has them. Anything not in memory is found through the index.
    """

    def __init__(self, writer: JournalWriter, state: JournalState, logs_dir: Path) -> None:
        self.writer = writer
        self.events: dict[str, Event] = state.events
        self.logs_dir = logs_dir
        self.damages = state.damages
        self.index = Lookups(writer.directory)
        self._identities = {identity(e.source): e.id for e in self.events.values() if e.source}
        self.archived: dict[str, Event] = {}  # in an archive, not yet known to be indexed
        # the events in memory by state, and those of the archives on disk
        self.counts: collections.Counter[State] = collections.Counter(
            e.state for e in self.events.values()
        )
        # what forgets left to do; the archives on disk still count what they still hold
        self.forgetting = Forgetting.recovered(state.forgotten, self.events, state.snapshot_seq)
        self.archived_counts = _counter(state.archived or {}) - self.forgetting.pending_counts()
        for rec in state.forgotten:  # their logs, again: the last start may not have got to it
            self._remove_logs([g for g in rec.events if g.id not in self.events])
        self._log_removals: set[asyncio.Task[None]] = set()
        self._settling: dict[str, Event] = {}  # being archived by the compaction at...
        self._settling_seq = 0  # ...this seq
        self.needs_delivery: Callable[[Event], bool] = lambda _event: False
        self.starting = True  # files found at start may be from before the last compaction
        self._compacting: asyncio.Task[None] | None = None
        self.paused = state.paused  # whose dispatch is held, as the journal says
        self._last_snapshot_seq = state.snapshot_seq
        self._last_compaction = time.monotonic()

    def retained_counts(self) -> collections.Counter[State]:
        """Every retained event by state: those in memory and those archived."""
        return self.counts + self.archived_counts

    def get(self, request_id: str) -> Event | None:
        """The event with that id, if retained."""
        event = self._held(request_id)
        if event is not None or self.forgetting.is_hidden(request_id):
            return event
        return self.index.get(request_id)

    def _held(self, request_id: str) -> Event | None:
        """The event with that id in memory (in care, being archived, or archived lately)."""
        for events in (self.events, self._settling, self.archived):
            if (event := events.get(request_id)) is not None:
                return event
        return None

    def taken(self, ids: list[str]) -> set[str]:
        """Those of `ids` already used by a retained event (one index query for a batch)."""
        held = {i for i in ids if self._held(i) is not None}
        looked = [i for i in ids if i not in held and not self.forgetting.is_hidden(i)]
        return held | self.index.archived_ids(looked)

    def known(self, request_id: str) -> bool:
        """Whether an event with that id is retained."""
        if self._held(request_id) is not None:
            return True
        return not self.forgetting.is_hidden(request_id) and self.index.has(request_id)

    def already_journaled(self, source: Source) -> bool:
        """Whether an incoming file with this identity was already accepted (with no path: at
        any path, a slow look for the rare file found in the middle of its removal)."""
        if source.path is None:
            wanted = identity(source)[1:]
            if any(known[1:] == wanted for known in self._identities):
                return True
        elif identity(source) in self._identities:
            return True
        return (source.path is None or self.starting) and self.index.has_source(source)

    def enqueue(
        self,
        function: str,
        payload: msgspec.Raw,
        *,
        request_id: str | None = None,
        source: Source | None = None,
        retry_of: str | None = None,
        not_before: float | None = None,
        checked: bool = False,
    ) -> Event | None:
        """Journal a new Enqueued event (not yet durable); None when the id is taken (`checked`:
        the caller asked `taken` for it just now)."""
        if request_id is not None and (
            request_id in self.events if checked else self.known(request_id)
        ):
            return None
        rid = request_id or new_request_id()
        event = self._record(
            Transition(
                id=rid,
                function=function,
                state=State.ENQUEUED,
                payload=payload,
                source=source,
                retry_of=retry_of,
                not_before=not_before,
            )
        )
        if source is not None:
            self._identities[identity(source)] = rid
        self.forgetting.reused(rid)
        return event

    def transition(
        self,
        event: Event,
        state: State,
        *,
        attempt: int | None = None,
        instance: str | None = None,
        reason: str | None = None,
        result: msgspec.Raw = NO_RAW,
        error: ErrorInfo | None = None,
        usage: Usage | None = None,
        not_before: float | None = None,
    ) -> Event:
        """Journal `event -> state` (refusing an illegal one before it reaches the journal)."""
        return self._record(
            Transition(
                id=event.id,
                function=event.function,
                state=state,
                attempt=event.attempts if attempt is None else attempt,
                instance=instance,
                reason=reason,
                result=result,
                error=error,
                usage=usage,
                not_before=not_before,
            )
        )

    def _record(self, rec: Transition) -> Event:
        current = self.events.get(rec.id)
        old = current.state if current else None
        check_transition(rec.id, old, rec.state)
        event = apply(self.events, self.writer.append(rec))
        if old is not None:
            self.counts[old] -= 1
        self.counts[rec.state] += 1
        return event

    def set_paused(self, paused: PauseState) -> None:
        """Journal whose dispatch is held from now on (the whole state)."""
        self.note(Paused(at=time.time(), state=paused))
        self.paused = paused

    def forget(self, events: list[Event]) -> Forgotten:
        """Journal that these ended events are forgotten and let them go: gone from every read
        at once, their logs removed once the record is on disk, their archives' copies dropped
        at the next compaction."""
        gone = tuple(
            ForgottenEvent(id=e.id, function=e.function, state=e.state, archive=self._archive_of(e))
            for e in events
        )
        rec = self.writer.append(Forgotten(at=time.time(), events=gone))
        for event in events:
            self._let_go(event)
        self.forgetting.note(rec)
        task = asyncio.get_running_loop().create_task(self._remove_logs_when_durable(rec))
        self._log_removals.add(task)
        task.add_done_callback(self._log_removals.discard)
        return rec

    def _archive_of(self, event: Event) -> int | None:
        if event.id in self.events:
            return None  # never archived now
        if event.id in self._settling:
            return self._settling_seq
        return self.index.archive_of(event)

    def _let_go(self, event: Event) -> None:
        if self.events.pop(event.id, None) is not None:
            self.counts[event.state] -= 1
        elif self._settling.pop(event.id, None) is None:  # else counted when its archive is
            self.archived.pop(event.id, None)
            if self.archived_counts[event.state] > 0:  # a snapshot before counts counts none
                self.archived_counts[event.state] -= 1
        if event.source is not None:
            self._identities.pop(identity(event.source), None)

    async def _remove_logs_when_durable(self, rec: Forgotten) -> None:
        """Hand the logs' removal to the writer once the record is on disk: after every write
        handed before, so before any line of a new event with the same id."""
        with contextlib.suppress(JournalFailed):  # the record may not be on disk: logs stay
            await self.sync(rec.seq)
            self._remove_logs(list(rec.events))

    def _remove_logs(self, gone: list[ForgottenEvent]) -> None:
        for event in gone:
            with contextlib.suppress(BadId):  # a journal from before ids were checked
                path = event_log_path(self.logs_dir, event.function, event.id)
                self.writer.write_log(LogWrite(str(path), b"", remove=True))

    def note(self, rec: JournalRecord) -> JournalRecord:
        """Journal a record that changes no event (a hook run, a control request)."""
        return self.writer.append(rec)

    def mark_delivered(
        self, event: Event, destination: str, condition: str, target: str | None = None
    ) -> None:
        """Journal that the event's destination record was delivered (to `target`)."""
        rec = Delivered(
            at=time.time(), id=event.id, destination=destination, condition=condition, target=target
        )
        self.note(rec)
        mark_delivered(event, rec)

    def mark_delivery_failed(
        self, event: Event, destination: str, condition: str, tries: int, error: str,
        next_at: float | None,
    ) -> None:  # fmt: skip
        """Journal a failed try to deliver the event's record: the next at `next_at`, or none."""
        rec = DeliveryFailed(
            at=time.time(), id=event.id, destination=destination, condition=condition,
            tries=tries, error=error, next_at=next_at,
        )  # fmt: skip
        self.note(rec)
        mark_delivered(event, rec)

    async def sync(self, upto: int | None = None) -> None:
        """Wait until every change so far (or up to record `upto`) is durable."""
        await self.writer.sync(upto)

    def compaction_due(self, every_records: int, every_seconds: float) -> bool:
        """Whether to snapshot: many records since the last one, or some and a long time."""
        since = self.writer.last_seq - self._last_snapshot_seq
        waited = time.monotonic() - self._last_compaction
        return since >= every_records or (since > 0 and waited >= every_seconds)

    async def compact(self, retention: float = RETENTION_DEFAULT) -> None:
        """Archive the ended events, snapshot the rest, let go what retention and the index
        allow, and delete what the snapshots and the index cover."""
        if self._compacting is not None:
            return await asyncio.shield(self._compacting)
        self._compacting = asyncio.get_running_loop().create_task(self._compact(retention))
        try:
            await asyncio.shield(self._compacting)
        finally:
            self._compacting = None

    async def _compact(self, retention: float) -> None:
        loop = asyncio.get_running_loop()
        directory = self.writer.directory
        await self._drop_forgotten()  # first: the snapshot covers the records that forgot them
        cutoff = time.time() - retention
        kept_archives, expired = await loop.run_in_executor(None, sort_archives, directory, cutoff)
        seq = await self.writer.rotate() - 1
        settled = self._settle(seq)
        kept = list(self.events.values())  # each whole: its `seq` says what it holds
        archived = sum((_counter(h.counts) for h in kept_archives), _counter({}))
        archived.update(e.state for e in settled)
        now = time.time()
        if settled:
            await loop.run_in_executor(None, write_archive, directory, seq, now, settled)
        counts = {s.value: n for s, n in archived.items() if n}
        # the paused state now: a Paused record after `seq` holds the whole state too, so
        # replaying it over this one gives the same
        paused = self.paused
        await loop.run_in_executor(None, write_snapshot, directory, seq, now, kept, counts, paused)
        self.forgetting.archives_gone(header.seq for header, _path in expired)
        # the archives count what they hold; the forgotten events among that are not retained
        self.archived_counts = archived - self.forgetting.pending_counts()
        self.archived.update(self._settling)  # those not forgotten meanwhile
        self._settling = {}
        if settled:
            self.index.archived(seq, settled)
        self._forget_identities(settled)
        previous = self._last_snapshot_seq
        self._last_snapshot_seq = seq
        self._last_compaction = time.monotonic()
        indexed = self.index.indexed_seq()
        self.archived = {i: e for i, e in self.archived.items() if e.seq > indexed}
        self.forgetting.settle(indexed)
        covered = min(previous, indexed)
        await loop.run_in_executor(
            None, _delete_covered, directory, covered, expired, self.logs_dir
        )
        log.info(
            "snapshot at seq %d: %d events in care, %d archived, %d archives past retention",
            seq,
            len(kept),
            len(settled),
            len(expired),
        )

    async def _drop_forgotten(self) -> None:
        """Drop from their archives the events forgotten (once their records are on disk), and
        let the removal of their logs be handed over."""
        if self._log_removals:
            await asyncio.gather(*self._log_removals, return_exceptions=True)
        due = self.forgetting.due(self.writer.durable_seq)
        if due:
            await asyncio.get_running_loop().run_in_executor(
                None, drop_all, self.writer.directory, due
            )
            self.forgetting.dropped(due)

    def _settle(self, seq: int) -> list[Event]:
        """Take out of care the ended events up to `seq` that owe no record: the compaction at
        `seq` archives them (a forget meanwhile finds them in `_settling`)."""
        settled = [
            e
            for e in self.events.values()
            if e.ended and e.seq <= seq and not self.needs_delivery(e)
        ]
        for event in settled:
            del self.events[event.id]
            self.counts[event.state] -= 1
        self._settling, self._settling_seq = {e.id: e for e in settled}, seq
        return settled

    def _forget_identities(self, events: list[Event]) -> None:
        for event in events:
            if event.source is not None:
                self._identities.pop(identity(event.source), None)


def _counter(counts: dict[str, int]) -> collections.Counter[State]:
    return collections.Counter({State(k): n for k, n in counts.items()})


def sort_archives(
    directory: Path, cutoff: float
) -> tuple[list[ArchiveHeader], list[tuple[ArchiveHeader, Path]]]:
    """The archives to keep, and those whose every event ended before `cutoff`."""
    kept, expired = [], []
    for _seq, path in list_archives(directory):
        try:
            header = read_archive_header(path)
        except FileNotFoundError:
            continue
        except (OSError, ValueError) as exc:
            log.error("archive %s kept, not counted: %s", path.name, exc)
            continue
        if header.last_ended < cutoff:
            expired.append((header, path))
        else:
            kept.append(header)
    return kept, expired


def _delete_covered(
    directory: Path, covered_seq: int, expired: list[tuple[ArchiveHeader, Path]], logs: Path
) -> None:
    """Delete expired archives with their events' logs, the segments up to `covered_seq`, and
    the snapshots but the newest two (the older one stands if the newest is damaged)."""
    for _header, path in expired:
        for event_id, function in archive_ids(path):
            # an id breaking the rule (a journal from before ids were checked) names no log here
            with contextlib.suppress(BadId):
                event_log_path(logs, function, event_id).unlink(missing_ok=True)
        path.unlink(missing_ok=True)
    for _seq, path in list_snapshots(directory)[:-2]:
        path.unlink(missing_ok=True)
    segments = list_segments(directory)
    for (first, path), (next_first, _) in itertools.pairwise(segments):
        if next_first - 1 <= covered_seq and first <= covered_seq:
            path.unlink(missing_ok=True)  # its `.broken` evidence, if any, stays
