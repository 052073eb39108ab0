"""The daemon's event store: every state change is checked, journaled, then folded in memory.

Also owns compaction: periodic snapshots that let old segments go, and retention.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import itertools
import logging
import time
from pathlib import Path

import msgspec

from daemon.ids import BadId, new_request_id
from daemon.journal import JournalState, list_segments, list_snapshots, write_snapshot
from daemon.journal_writer import JournalWriter
from daemon.logfiles import event_log_path
from daemon.model import (
    NO_RAW,
    Delivered,
    ErrorInfo,
    Event,
    JournalRecord,
    Source,
    State,
    Transition,
    Usage,
    apply,
    check_transition,
)

log = logging.getLogger(__name__)

RETENTION_DEFAULT = 3 * 86400.0


def identity(source: Source) -> tuple[object, ...]:
    """What tells one incoming file from another across a crash."""
    return (source.path, source.device, source.inode, source.size, source.mtime_ns)


class Store:
    """The events the daemon knows, kept in step with the journal."""

    def __init__(self, writer: JournalWriter, state: JournalState, logs_dir: Path) -> None:
        self.writer = writer
        self.events: dict[str, Event] = state.events
        self.logs_dir = logs_dir
        self.damages = state.damages
        self._identities = {identity(e.source): e.id for e in self.events.values() if e.source}
        self.counts: collections.Counter[State] = collections.Counter(
            e.state for e in self.events.values()
        )
        self._compacting: asyncio.Task[None] | None = None
        self._last_snapshot_seq = state.snapshot_seq
        self._last_compaction = time.monotonic()

    def get(self, request_id: str) -> Event | None:
        """The event with that id, if retained."""
        return self.events.get(request_id)

    def already_journaled(self, source: Source) -> bool:
        """Whether an incoming file with this identity was already accepted (with no path: at
        any path, a slow look for the rare file found in the middle of its removal)."""
        if source.path is None:
            wanted = identity(source)[1:]
            return any(known[1:] == wanted for known in self._identities)
        return identity(source) in self._identities

    def enqueue(
        self,
        function: str,
        payload: msgspec.Raw,
        *,
        request_id: str | None = None,
        source: Source | None = None,
        retry_of: str | None = None,
        not_before: float | None = None,
    ) -> Event | None:
        """Journal a new Enqueued event (not yet durable); None when the id is taken."""
        rid = request_id or new_request_id()
        if rid in self.events:
            return None
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

    def note(self, rec: JournalRecord) -> JournalRecord:
        """Journal a record that changes no event (a hook run, a control request)."""
        return self.writer.append(rec)

    def mark_delivered(self, event: Event, destination: str, condition: str) -> None:
        """Journal that the event's destination record was delivered."""
        self.note(
            Delivered(at=time.time(), id=event.id, destination=destination, condition=condition)
        )
        event.delivered = True

    async def sync(self) -> None:
        """Wait until every change so far is durable."""
        await self.writer.sync()

    def compaction_due(self, every_records: int, every_seconds: float) -> bool:
        """Whether to snapshot: many records since the last one, or some and a long time."""
        since = self.writer.last_seq - self._last_snapshot_seq
        waited = time.monotonic() - self._last_compaction
        return since >= every_records or (since > 0 and waited >= every_seconds)

    async def compact(self, retention: float = RETENTION_DEFAULT) -> None:
        """Snapshot the retained events, drop expired ones, delete what older snapshots cover."""
        if self._compacting is not None:
            return await asyncio.shield(self._compacting)
        self._compacting = asyncio.get_running_loop().create_task(self._compact(retention))
        try:
            await asyncio.shield(self._compacting)
        finally:
            self._compacting = None

    async def _compact(self, retention: float) -> None:
        dropped = self._drop_expired(time.time() - retention)
        first_seq = await self.writer.rotate()
        seq = first_seq - 1
        # encoded one by one in a thread: each event is whole, and its `seq` says what it holds
        events = list(self.events.values())
        directory = self.writer.directory
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(None, write_snapshot, directory, seq, time.time(), events)
        previous = self._last_snapshot_seq
        self._last_snapshot_seq = seq
        self._last_compaction = time.monotonic()
        await loop.run_in_executor(None, _delete_covered, directory, previous, dropped)
        log.info(
            "snapshot at seq %d: %d events retained, %d dropped", seq, len(events), len(dropped)
        )

    def _drop_expired(self, cutoff: float) -> list[Path]:
        """Forget events that ended before `cutoff`; return their log files."""
        gone = [e for e in self.events.values() if e.ended_at is not None and e.ended_at < cutoff]
        logs = []
        for event in gone:
            # an id breaking the rule (a journal from before ids were checked) names no log here
            with contextlib.suppress(BadId):
                logs.append(event_log_path(self.logs_dir, event.function, event.id))
            del self.events[event.id]
            self.counts[event.state] -= 1
            if event.source is not None:
                self._identities.pop(identity(event.source), None)
        return logs


def _delete_covered(directory: Path, previous_seq: int, logs: list[Path]) -> None:
    """Delete the segments and snapshots the previous snapshot covers (the newest two stay)."""
    snapshots = list_snapshots(directory)
    for _seq, path in snapshots[:-2]:
        path.unlink(missing_ok=True)
    segments = list_segments(directory)
    for (first, path), (next_first, _) in itertools.pairwise(segments):
        if next_first - 1 <= previous_seq and first <= previous_seq:
            path.unlink(missing_ok=True)  # its `.broken` evidence, if any, stays
    for path in logs:
        path.unlink(missing_ok=True)
