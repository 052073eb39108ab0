"""Journals written by hand in the daemon's format for the dashboard's tests: fixed ids, times."""

from __future__ import annotations

from pathlib import Path

from daemon.journal import SnapshotHeader, encode_record, segment_name, snapshot_name
from daemon.model import ErrorInfo, Event, State, Transition, Usage, apply, raw_json

T0 = 1_790_000_000.0  # 2026-09-21T14:13:20Z
FUNCTIONS = ("echo", "resize", "notify")


def event_id(i: int) -> str:
    """A UUIDv7-shaped id that sorts with `i`."""
    return f"0190a000-0000-7000-8000-{i:012x}"


def history(i: int, function: str, state: State, at: float) -> list[Transition]:
    """The transitions of event `i` that end in `state` (no sequence numbers yet)."""
    common = {"id": event_id(i), "function": function}
    recs = [
        Transition(**common, state=State.ENQUEUED, at=at, payload=raw_json({"n": i})),
    ]
    if state is State.ENQUEUED:
        return recs
    recs.append(Transition(**common, state=State.DEQUEUED, at=at + 0.01))
    recs.append(Transition(**common, state=State.RUNNING, at=at + 0.02, attempt=1, instance="i-1"))
    if state is State.RUNNING:
        return recs
    usage = Usage(duration_ms=30.0 + i, cpu_ms=2.0, max_memory_mb=20.5)
    if state is State.FAILED:
        error = ErrorInfo(type="ValueError", message=f"bad input {i}")
        recs.append(
            Transition(**common, state=state, at=at + 0.05, attempt=1, error=error, usage=usage)
        )
    else:
        result = raw_json({"ok": i})
        recs.append(
            Transition(**common, state=state, at=at + 0.05, attempt=1, result=result, usage=usage)
        )
    return recs


def plan(n: int) -> list[tuple[int, str, State]]:
    """n events: every 5th failed, the newest still running, the one before it enqueued."""
    out = []
    for i in range(n):
        state = State.FAILED if i % 5 == 3 else State.SUCCEEDED
        if i == n - 1:
            state = State.RUNNING
        elif i == n - 2:
            state = State.ENQUEUED
        out.append((i, FUNCTIONS[i % len(FUNCTIONS)], state))
    return out


def write_journal(spool: Path, n: int, snapshot_upto: int = 0) -> list[Transition]:
    """A journal of `n` events: the first `snapshot_upto` in a snapshot, the rest in a segment."""
    journal = spool / "journal"
    journal.mkdir(parents=True, exist_ok=True)
    for sub in ("control", "tmp", "run", "logs", "incoming"):
        (spool / sub).mkdir(exist_ok=True)
    records: list[Transition] = []
    for i, function, state in plan(n):
        records += history(i, function, state, T0 + i)
    numbered = [_with_seq(rec, seq) for seq, rec in enumerate(records, start=1)]
    early = [r for r in numbered if _index(r.id) < snapshot_upto]
    late = [r for r in numbered if _index(r.id) >= snapshot_upto]
    if snapshot_upto:
        events: dict[str, Event] = {}
        for rec in early:
            apply(events, rec)
        last = max(r.seq for r in early)
        header = SnapshotHeader(seq=last, at=T0 + n, count=len(events))
        with open(journal / snapshot_name(last), "wb") as f:
            f.write(encode_record(header))
            for event in events.values():
                f.write(encode_record(event))
    if late:
        with open(journal / segment_name(late[0].seq), "wb") as f:
            for rec in late:
                f.write(encode_record(rec))
    return numbered


def append_records(spool: Path, records: list[Transition]) -> None:
    """Append records to the newest segment (as the daemon's writer does)."""
    from daemon.journal import list_segments

    _first, path = list_segments(spool / "journal")[-1]
    with open(path, "ab") as f:
        for rec in records:
            f.write(encode_record(rec))


def _with_seq(rec: Transition, seq: int) -> Transition:
    import msgspec

    return msgspec.structs.replace(rec, seq=seq)


def _index(request_id: str) -> int:
    return int(request_id.rsplit("-", 1)[1], 16)


def index_journal(spool: Path) -> None:
    """Build the event index as the daemon's indexer does (from archives, snapshot, segments)."""
    from daemon.indexer import Indexer

    indexer = Indexer(spool / "journal")
    while indexer.step():
        pass
    indexer.db.close_cleanly()


def write_timed(spool: Path, runs: list[tuple[str, float, float | None]]) -> None:
    """A journal of events (function, enqueued_at, duration in ms: None for one still
    running), each started 20 ms after it was enqueued, numbered in the order given."""
    journal = spool / "journal"
    journal.mkdir(parents=True, exist_ok=True)
    for sub in ("control", "tmp", "run", "logs", "incoming"):
        (spool / sub).mkdir(exist_ok=True)
    records: list[Transition] = []
    for i, (function, at, ms) in enumerate(runs):
        recs = history(i, function, State.RUNNING if ms is None else State.SUCCEEDED, at)
        if ms is not None:
            started = recs[2].at
            recs[-1] = _at(recs[-1], started + ms / 1000)
        records += recs
    numbered = [_with_seq(rec, seq) for seq, rec in enumerate(records, start=1)]
    with open(journal / segment_name(1), "wb") as f:
        for rec in numbered:
            f.write(encode_record(rec))


def _at(rec: Transition, at: float) -> Transition:
    import msgspec

    return msgspec.structs.replace(rec, at=at)


#: the errors of write_varied: equal texts (ties), and texts equal but for case
VARIED_ERRORS = (
    ErrorInfo(type="ValueError", message="bad input"),
    ErrorInfo(type="KeyError", message="'size'"),
    ErrorInfo(type="valueError", message="Bad input"),
    ErrorInfo(type="TimeoutError", message="took too long"),
)


def varied_history(i: int, function: str, at: float) -> list[Transition]:
    """Event `i`'s transitions, one of six kinds by `i % 6`: succeeded, failed, succeeded at the
    second attempt, stopped before it ran (no duration), failed at the third attempt, expired
    (no duration); durations of a few values, so that many are equal."""
    common = {"id": event_id(i), "function": function}
    kind = i % 6
    error = VARIED_ERRORS[i // 4 % len(VARIED_ERRORS)]  # the same for events enqueued together
    recs = [Transition(**common, state=State.ENQUEUED, at=at, payload=raw_json({"n": i}))]
    if kind == 3:
        return [*recs, Transition(**common, state=State.STOPPED, at=at + 0.01)]
    recs.append(Transition(**common, state=State.DEQUEUED, at=at + 0.01))
    if kind == 5:
        return [*recs, Transition(**common, state=State.EXPIRED, at=at + 0.02)]
    attempts = {0: 1, 1: 1, 2: 2, 4: 3}[kind]
    t = at + 0.02
    for attempt in range(1, attempts):
        recs.append(Transition(**common, state=State.RUNNING, at=t, attempt=attempt))
        recs.append(Transition(**common, state=State.RETRYING, at=t + 0.01, error=error))
        t += 0.02
    recs.append(Transition(**common, state=State.RUNNING, at=t, attempt=attempts))
    end = t + (i * 7 % 5) * 0.25  # five durations, each shared by many
    if kind in (1, 4):
        recs.append(Transition(**common, state=State.FAILED, at=end, attempt=attempts, error=error))
    else:
        recs.append(Transition(**common, state=State.SUCCEEDED, at=end, attempt=attempts))
    return recs


def write_varied(spool: Path, n: int, live: int = 0) -> list[Transition]:
    """A journal of `n` varied events (see varied_history), four at each enqueue time; the
    last `live` of them not ended yet (two in three still queued, the third running)."""
    journal = spool / "journal"
    journal.mkdir(parents=True, exist_ok=True)
    for sub in ("control", "tmp", "run", "logs", "incoming"):
        (spool / sub).mkdir(exist_ok=True)
    records: list[Transition] = []
    for i in range(n):
        at = T0 + i // 4
        recs = varied_history(i, FUNCTIONS[i // 4 % len(FUNCTIONS)], at)
        if i >= n - live:  # still queued, or running its first attempt
            recs = recs[:1] if i % 3 else [*recs[:1], *_running(recs[0], at)]
        records += recs
    numbered = [_with_seq(rec, seq) for seq, rec in enumerate(records, start=1)]
    with open(journal / segment_name(1), "wb") as f:
        for rec in numbered:
            f.write(encode_record(rec))
    return numbered


def _running(first: Transition, at: float) -> list[Transition]:
    common = {"id": first.id, "function": first.function}
    return [
        Transition(**common, state=State.DEQUEUED, at=at + 0.01),
        Transition(**common, state=State.RUNNING, at=at + 0.02, attempt=1),
    ]
