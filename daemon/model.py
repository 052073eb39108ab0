"""The shared model: event states, legal transitions and journal records.

Light on purpose: the TUI and the CLI import it, so it needs only msgspec.
Records evolve only by adding fields with defaults.
"""

from __future__ import annotations

import enum
from typing import Any

import msgspec


class State(str, enum.Enum):
    """The state of an event (Function Compute's names)."""

    #: accepted and journaled, waiting for the dispatcher
    ENQUEUED = "Enqueued"
    #: taken by the dispatcher, checks before running
    DEQUEUED = "Dequeued"
    #: an attempt is executing in an instance
    RUNNING = "Running"
    #: an attempt failed; waiting for the backoff to end
    RETRYING = "Retrying"
    #: a stop was requested while running
    STOPPING = "Stopping"
    #: the handler returned
    SUCCEEDED = "Succeeded"
    #: the last attempt failed and no retries remain
    FAILED = "Failed"
    #: older than max_event_age when dequeued or retried
    EXPIRED = "Expired"
    #: function missing at dequeue, or its instance could not be created
    INVALID = "Invalid"
    #: stopped by request
    STOPPED = "Stopped"

    @property
    def terminal(self) -> bool:
        """Whether no transition leaves this state."""
        return not TRANSITIONS[self]

    @property
    def scf_view(self) -> str:
        """Tencent SCF's name for the state."""
        return _SCF_VIEW.get(self, "running")


TRANSITIONS: dict[State, frozenset[State]] = {
    # a stop goes through Stopping (FC's state machine, seed 001); straight to Stopped is what
    # journals written before that say of a queued event stopped
    State.ENQUEUED: frozenset({State.DEQUEUED, State.STOPPING, State.STOPPED}),
    State.DEQUEUED: frozenset(
        {State.RUNNING, State.EXPIRED, State.INVALID, State.STOPPING, State.STOPPED}
    ),
    State.RUNNING: frozenset({State.SUCCEEDED, State.FAILED, State.RETRYING, State.STOPPING}),
    State.RETRYING: frozenset({State.RUNNING, State.EXPIRED, State.STOPPING, State.STOPPED}),
    State.STOPPING: frozenset({State.STOPPED}),
    State.SUCCEEDED: frozenset(),
    State.FAILED: frozenset(),
    State.EXPIRED: frozenset(),
    State.INVALID: frozenset(),
    State.STOPPED: frozenset(),
}

_SCF_VIEW = {
    State.SUCCEEDED: "finished",
    State.FAILED: "failed",
    State.EXPIRED: "failed",
    State.INVALID: "failed",
    State.STOPPED: "terminated",
}

TERMINAL_STATES = frozenset(s for s in State if s.terminal)


class IllegalTransition(Exception):
    """A state change DESIGN.md does not allow: always a bug, never applied."""

    def __init__(self, request_id: str, old: State | None, new: State) -> None:
        super().__init__(f"illegal transition for {request_id}: {old and old.value} -> {new.value}")
        self.request_id = request_id
        self.old = old
        self.new = new


def check_transition(request_id: str, old: State | None, new: State) -> None:
    """Raise IllegalTransition unless `old -> new` is allowed (None -> Enqueued starts an event)."""
    if old is None:
        if new is not State.ENQUEUED:
            raise IllegalTransition(request_id, old, new)
        return
    if new not in TRANSITIONS[old]:
        raise IllegalTransition(request_id, old, new)


NO_RAW = msgspec.Raw(b"")  # an absent JSON value (msgspec cannot decode `Raw | None`)


def has_raw(value: msgspec.Raw) -> bool:
    """Whether a Raw field holds a value."""
    return len(value) > 0


class ErrorInfo(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    """Why an attempt or an event failed."""

    type: str
    message: str
    code: int | None = None
    traceback: str | None = None


class Usage(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    """What an attempt cost and how its process ended."""

    duration_ms: float
    cpu_ms: float | None = None
    max_memory_mb: float | None = None
    exit_code: int | None = None
    signal: int | None = None
    node: str | None = None  # the Ray node it ran on (placement engine "ray")


class Source(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    """Where an event came from: the identity of its incoming file, and who submitted it."""

    path: str | None = None  # relative to the spool
    device: int | None = None
    inode: int | None = None
    size: int | None = None
    mtime_ns: int | None = None
    uid: int | None = None
    via: str = "file"  # file | reinvoke | destination


class Record(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True, tag_field="kind"):
    """Base of every journal record: a sequence number and the wall-clock time it was made."""

    seq: int = 0
    at: float = 0.0


class Transition(Record, tag="state", frozen=True):
    """An event moved to a new state."""

    id: str
    function: str
    state: State
    attempt: int = 0
    instance: str | None = None
    reason: str | None = None
    payload: msgspec.Raw = NO_RAW  # Enqueued: the payload, compact JSON
    source: Source | None = None  # Enqueued
    retry_of: str | None = None  # Enqueued by a re-invoke
    not_before: float | None = None  # Enqueued with a delay, Retrying: wall-clock time to wait for
    result: msgspec.Raw = NO_RAW  # Succeeded, Stopped gracefully
    error: ErrorInfo | None = None
    usage: Usage | None = None  # an ended attempt


class HookRun(Record, tag="hook", frozen=True):
    """A lifecycle hook (Initializer, PreFreeze, PreStop) ran on an instance."""

    instance: str
    function: str
    hook: str
    started: float
    duration_ms: float
    ok: bool
    error: ErrorInfo | None = None
    request_id: str | None = None  # the event it ran for, if any
    invocation_id: str | None = None  # the request id it was called with (x-fc-request-id)


class Request(Record, tag="request", frozen=True):
    """A control request (stop, re-invoke, pause, resume) was taken from control/, with who
    asked: the answer."""

    action: str
    id: str
    uid: int | None = None
    graceful: bool = False
    outcome: str = ""  # applied | refused
    name: str | None = None  # the request's file name in control/, which the client waits for
    message: str | None = None  # why it was refused, or what was done
    new_id: str | None = None  # reinvoke: the new event
    function: str | None = None  # pause, resume: the function (None: all)


class Delivered(Record, tag="delivered", frozen=True):
    """An ended event's record reached its destination (written once, even across a crash)."""

    id: str
    destination: str  # a folder relative to the spool, or function:NAME
    condition: str  # see CONDITIONS in daemon/destinations.py
    target: str | None = None  # the record's file (relative to the spool), or the event it became


class DeliveryFailed(Record, tag="delivery_failed", frozen=True):
    """A try to deliver an ended event's record failed (a URL destination): it is tried again at
    `next_at`, or, when `next_at` is None, given up (older than destination_max_age)."""

    id: str
    destination: str
    condition: str
    tries: int  # tries made so far
    error: str  # what the last one met: an HTTP status, a refused connection, a timeout
    next_at: float | None = None  # wall-clock time of the next try; None: given up


class PauseState(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    """Whose dispatch is held: the functions paused by name, and whether all are."""

    functions: tuple[str, ...] = ()
    all: bool = False

    def holds(self, function: str) -> bool:
        """Whether `function`'s queued events wait."""
        return self.all or function in self.functions

    @property
    def any(self) -> bool:
        """Whether anything is paused."""
        return self.all or bool(self.functions)


class Paused(Record, tag="paused", frozen=True):
    """Dispatch was paused or resumed: the whole paused state after the change."""

    state: PauseState


class ForgottenEvent(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    """One event a forget dropped, with where its copies are: its log, and its archive."""

    id: str
    function: str
    state: State
    archive: int | None = None  # the archive holding it (None: it was not archived yet)


class Forgotten(Record, tag="forgotten", frozen=True):
    """Ended events were forgotten on request: gone from every read from this record on; the
    next compaction drops them from their archives."""

    events: tuple[ForgottenEvent, ...]


JournalRecord = Transition | HookRun | Request | Delivered | DeliveryFailed | Paused | Forgotten
#: the records that change an event's delivery
DELIVERY_RECORDS = (Delivered, DeliveryFailed)


class HistoryEntry(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    """One step of an event's history."""

    state: State
    at: float
    attempt: int = 0
    reason: str | None = None
    instance: str | None = None
    error: ErrorInfo | None = None
    usage: Usage | None = None


class Delivery(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    """Where and when an ended event's destination record went (from its Delivered record)."""

    destination: str
    condition: str
    at: float
    target: str | None = None


class DeliveryTries(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    """The failed tries to deliver an event's record (from its DeliveryFailed records)."""

    destination: str
    tries: int
    error: str
    at: float  # when the last try failed
    next_at: float | None = None  # when the next is due; None: given up

    @property
    def given_up(self) -> bool:
        """Whether no try follows (the record is older than destination_max_age)."""
        return self.next_at is None


class Event(msgspec.Struct, kw_only=True, omit_defaults=True):
    """The folded state of one event: what snapshots hold and readers show."""

    id: str
    function: str
    state: State
    enqueued_at: float
    payload: msgspec.Raw = msgspec.Raw(b"null")
    attempts: int = 0
    started_at: float | None = None
    ended_at: float | None = None
    duration_ms: float | None = None
    result: msgspec.Raw = NO_RAW
    error: ErrorInfo | None = None
    retry_of: str | None = None
    not_before: float | None = None
    source: Source | None = None
    history: list[HistoryEntry] = msgspec.field(default_factory=list)
    seq: int = 0  # the last record applied
    delivered: bool = False  # its destination record is written (see Delivered)
    delivery: Delivery | None = None  # where it went (None in records older than this field)
    delivery_tries: DeliveryTries | None = None  # failed tries of a URL destination, if any

    @property
    def ended(self) -> bool:
        """Whether the event is in a terminal state."""
        return self.state in TERMINAL_STATES


def apply(events: dict[str, Event], rec: Transition) -> Event:
    """Fold one transition into `events`, checking it is legal; return the event."""
    event = events.get(rec.id)
    check_transition(rec.id, event.state if event else None, rec.state)
    if event is None:
        event = Event(
            id=rec.id,
            function=rec.function,
            state=rec.state,
            enqueued_at=rec.at,
            payload=rec.payload if has_raw(rec.payload) else msgspec.Raw(b"null"),
            retry_of=rec.retry_of,
            not_before=rec.not_before,
            source=rec.source,
        )
        events[rec.id] = event
    _fold(event, rec)
    return event


def forget(events: dict[str, Event], rec: Forgotten) -> list[Event]:
    """Fold a Forgotten record: drop its events from `events` (only ended ones: an id used again
    after the record is another event); return those dropped."""
    dropped = []
    for gone in rec.events:
        event = events.get(gone.id)
        if event is not None and event.ended and event.seq < rec.seq:
            dropped.append(events.pop(gone.id))
    return dropped


def mark_delivered(event: Event, rec: Delivered | DeliveryFailed) -> None:
    """Fold a Delivered (or DeliveryFailed) record into its event."""
    if isinstance(rec, DeliveryFailed):
        event.delivery_tries = DeliveryTries(
            destination=rec.destination, tries=rec.tries, error=rec.error, at=rec.at,
            next_at=rec.next_at,
        )  # fmt: skip
        return
    event.delivered = True
    event.delivery = Delivery(
        destination=rec.destination, condition=rec.condition, at=rec.at, target=rec.target
    )


def _fold(event: Event, rec: Transition) -> None:
    event.state = rec.state
    event.seq = rec.seq
    if rec.state is State.RUNNING:
        event.attempts = max(event.attempts, rec.attempt)
        if event.started_at is None:
            event.started_at = rec.at
    if rec.state is State.RETRYING:
        event.not_before = rec.not_before
    if rec.error is not None:
        event.error = rec.error
    if has_raw(rec.result):
        event.result = rec.result
    if rec.state in TERMINAL_STATES:
        event.ended_at = rec.at
        if event.started_at is not None:
            event.duration_ms = round((rec.at - event.started_at) * 1000, 3)
        if rec.state is State.SUCCEEDED:
            event.error = None
    event.history.append(
        HistoryEntry(
            state=rec.state,
            at=rec.at,
            attempt=rec.attempt,
            reason=rec.reason,
            instance=rec.instance,
            error=rec.error,
            usage=rec.usage,
        )
    )


def raw_json(value: Any) -> msgspec.Raw:
    """Encode a Python value as compact JSON for a record."""
    return msgspec.Raw(msgspec.json.encode(value))
