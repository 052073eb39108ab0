"""The destination record of an ended event, field for field as Function Compute writes it.

Seed 004 shows FC's record (a dead letter in an MNS queue):

    {"timestamp": 1700000000000,
     "requestContext": {"requestId": "...", "functionArn": "...",
                        "condition": "UnhandledInvocationError", "approximateInvokeCount": 1},
     "requestPayload": "{\\"failure\\":true}",
     "responseContext": {"statusCode": 200, "functionError": "UnhandledInvocationError"},
     "responsePayload": "{\\"errorMessage\\":\\"Process exited unexpectedly ...\\"}"}

`timestamp` is epoch milliseconds, both payloads are JSON text inside a string, and the status is
200 even for a failure (the invocation was delivered; the function failed). fnspool's own detail
goes under the one added key `fnspool`; FC's fields never change meaning. Light: msgspec only.
"""

from __future__ import annotations

import socket
from typing import Any

import msgspec

from daemon.limits import MAX_VALUE_BYTES
from daemon.model import Event, HistoryEntry, State, has_raw
from daemon.query import iso

#: the key fnspool's own detail goes under
EXTRA = "fnspool"

#: a terminal state -> the record's `condition` (and a failure's `functionError`)
CONDITIONS = {
    #: the handler returned (on_success records)
    State.SUCCEEDED: "Success",
    #: the last attempt failed: an error, a timeout, a crash, memory (FC's name, seed 004)
    State.FAILED: "UnhandledInvocationError",
    #: older than max_event_age when dequeued or retried (seed 001's Expired)
    State.EXPIRED: "EventAgeExceeded",
    #: the function was missing or its instance could not be created (seed 001's Invalid)
    State.INVALID: "InvalidInvocation",
    #: stopped by request (seed 004: "手动终止", stopped by hand)
    State.STOPPED: "Stopped",
}

#: the states that end an attempt, as an attempt's history entry shows them
_ATTEMPT_ENDS = frozenset({State.RETRYING, State.SUCCEEDED, State.FAILED, State.STOPPED})
#: what stands for a payload left out of a record over the size limit: JSON text, as the field is
_LEFT_OUT = "null"

_node: list[str] = []


def condition_of(event: Event) -> str:
    """The record's `condition` for an ended event."""
    return CONDITIONS.get(event.state, event.state.value)


def node() -> str:
    """The name of the machine the daemon runs on (asked once)."""
    if not _node:
        _node.append(socket.gethostname())
    return _node[0]


def build_record(event: Event) -> dict[str, Any]:
    """The destination record of an ended event, in Function Compute's shape (seed 004)."""
    condition = condition_of(event)
    ok = event.state is State.SUCCEEDED
    response: dict[str, Any] = {"statusCode": 200}
    if not ok:
        response["functionError"] = condition
    return {
        "timestamp": round((event.ended_at or event.enqueued_at) * 1000),
        "requestContext": {
            "requestId": event.id,
            "functionArn": f"fnspool:function:{event.function}",
            "condition": condition,
            "approximateInvokeCount": event.attempts,
        },
        "requestPayload": bytes(event.payload).decode(),
        "responseContext": response,
        "responsePayload": _result_text(event) if ok else _error_text(event),
        EXTRA: _extra(event),
    }


def _result_text(event: Event) -> str:
    return bytes(event.result).decode() if has_raw(event.result) else "null"


def _error_text(event: Event) -> str:
    """FC's `{"errorMessage": ...}` as JSON text."""
    reason = event.history[-1].reason if event.history else None  # stopped before it ran
    message = event.error.message if event.error is not None else reason
    message = message or f"the event ended {event.state.value}"
    return msgspec.json.encode({"errorMessage": message}).decode()


def _extra(event: Event) -> dict[str, Any]:
    """What fnspool knows beyond FC's fields: error type, attempts, lineage, node."""
    extra: dict[str, Any] = {
        "state": event.state.value,
        "enqueued_at": iso(event.enqueued_at),
        "ended_at": iso(event.ended_at),
        "error": msgspec.to_builtins(event.error) if event.error is not None else None,
        "attempts": [_attempt(h) for h in event.history if _ends_attempt(h)],
        "retry_of": event.retry_of,
        "via": event.source.via if event.source is not None else None,
        "node": node(),
    }
    if event.state is State.STOPPED and has_raw(event.result):
        extra["result"] = _result_text(event)  # a graceful stop's return value, kept
    return extra


def _ends_attempt(h: HistoryEntry) -> bool:
    return h.attempt > 0 and h.state in _ATTEMPT_ENDS


def _attempt(h: HistoryEntry) -> dict[str, Any]:
    """One attempt's end, small: its error's type only (the event's last error is whole)."""
    entry: dict[str, Any] = {"attempt": h.attempt, "state": h.state.value, "at": iso(h.at)}
    if h.instance:
        entry["instance"] = h.instance
    if h.reason:
        entry["reason"] = h.reason
    if h.error is not None:
        entry["error_type"] = h.error.type
    if h.usage is not None:
        entry["usage"] = msgspec.to_builtins(h.usage)
    return entry


def encode_within(record: dict[str, Any], limit: int = MAX_VALUE_BYTES) -> bytes:
    """The record as JSON, at most `limit` bytes where it can be: over it, its payloads (the larger
    first) become the JSON text `null`, and `fnspool.truncated` gives their sizes in bytes (the
    event itself keeps them whole)."""
    data = msgspec.json.encode(record)
    if len(data) <= limit:
        return data
    sizes = {k: len(record[k].encode()) for k in ("requestPayload", "responsePayload")}
    truncated: dict[str, int] = {}
    record = {**record, EXTRA: {**record.get(EXTRA, {}), "truncated": truncated}}
    for key in sorted(sizes, key=sizes.__getitem__, reverse=True):
        record[key], truncated[key] = _LEFT_OUT, sizes[key]
        data = msgspec.json.encode(record)
        if len(data) <= limit:
            break
    return data
