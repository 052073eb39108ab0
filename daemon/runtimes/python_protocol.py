"""The python runtime's frames: a 4-byte big-endian length, then a JSON object.

The worker's side is daemon/worker/bootstrap.py, which must not import this module.
"""

from __future__ import annotations

import msgspec

from daemon.model import ErrorInfo


class Invoke(msgspec.Struct, frozen=True, kw_only=True, tag="invoke", tag_field="t"):
    """Daemon to worker: run the handler on one event."""

    id: str
    function: str
    attempt: int
    timeout_ms: int
    payload: msgspec.Raw


class Hook(msgspec.Struct, frozen=True, kw_only=True, tag="hook", tag_field="t"):
    """Daemon to worker: run a lifecycle hook."""

    hook: str
    name: str
    timeout_ms: int
    id: str  # the request id it runs with: its event's, or its own invocation id


class Ready(msgspec.Struct, frozen=True, kw_only=True, tag="ready", tag_field="t"):
    """Worker to daemon: the handler is imported (or could not be)."""

    error: ErrorInfo | None = None


class Result(msgspec.Struct, frozen=True, kw_only=True, tag="result", tag_field="t"):
    """Worker to daemon: how the handler ended."""

    id: str
    ok: bool
    result: msgspec.Raw = msgspec.Raw(b"null")
    error: ErrorInfo | None = None
    retry_delay: float | None = None
    cpu_ms: float | None = None
    max_memory_mb: float | None = None


class HookResult(msgspec.Struct, frozen=True, kw_only=True, tag="hook_result", tag_field="t"):
    """Worker to daemon: how a hook ended."""

    hook: str
    ok: bool
    error: ErrorInfo | None = None
    cpu_ms: float | None = None
    max_memory_mb: float | None = None


WorkerFrame = Ready | Result | HookResult


_ENCODER = msgspec.json.Encoder()
DECODER = msgspec.json.Decoder(WorkerFrame)


def encode_frame(message: Invoke | Hook) -> bytearray:
    """Encode a message to the worker as one frame, without copying the payload twice."""
    buf = bytearray(4)
    _ENCODER.encode_into(message, buf, 4)
    buf[:4] = (len(buf) - 4).to_bytes(4, "big")
    return buf
