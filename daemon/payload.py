"""Validation of incoming payload files: names, encoding, depth, envelope shape, settling."""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Callable, Hashable
from typing import Annotated, Any, Generic, TypeVar

import msgspec

from daemon.ids import NAME_RE, BadId, check_id
from daemon.model import Source
from daemon.spool import Rejection
from daemon.strictjson import duplicate_key, too_deep
from daemon.text import printable

MAX_NAME_BYTES = 255
#: reasons that may only mean "not completely written yet": wait for the file to settle
INCOMPLETE = frozenset({"not_json", "bad_encoding"})


class Envelope(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """An `incoming/*.json` file: which function to run, with what, and how."""

    function: str
    payload: Any
    id: str | None = None  # checked by daemon.ids.check_id, for a reason that says why
    delay: Annotated[float, msgspec.Meta(ge=0)] = 0.0


class Accepted(msgspec.Struct, frozen=True, kw_only=True):
    """A valid incoming file, ready to be journaled as Enqueued."""

    function: str
    payload: msgspec.Raw  # compact JSON, no newline
    id: str | None
    delay: float
    source: Source  # path relative to the spool; identity and owner from fstat


_any_decoder = msgspec.json.Decoder()
_encoder = msgspec.json.Encoder()


def is_ignored(name: str) -> bool:
    """Whether a name is a writer's temporary file, never looked at."""
    return name.startswith(".") or name.endswith(".tmp")


def check_name(name: str) -> None:
    """Raise Rejection `bad_name` unless `name` is a printable, UTF-8 `*.json` name."""
    raw = name.encode("utf-8", "surrogateescape")
    if len(raw) > MAX_NAME_BYTES:
        raise Rejection("bad_name", f"the name is {len(raw)} bytes long, over {MAX_NAME_BYTES}")
    try:
        raw.decode("utf-8")
    except UnicodeDecodeError:
        raise Rejection("bad_name", "the name is not valid UTF-8") from None
    if not name.isprintable():
        raise Rejection("bad_name", "the name holds control characters (newline, tab, ...)")
    if not name.endswith(".json"):
        raise Rejection("bad_name", "only *.json files are taken (write *.tmp or .name, rename)")


def check_function_name(name: str) -> None:
    """Raise Rejection `unknown_function` unless `name` could name a function."""
    if not NAME_RE.match(name):
        raise Rejection("unknown_function", f"{printable(name)!r} is not a valid function name")


def check_envelope_id(request_id: str) -> None:
    """Raise Rejection `bad_id` unless `request_id` passes the id rule."""
    try:
        check_id(request_id)
    except BadId as exc:
        raise Rejection("bad_id", str(exc)) from None


def decode(data: bytes, function: str | None, source: Source, max_depth: int) -> Accepted:
    """Validate a payload file; `function` is its directory's name, None for an envelope."""
    try:
        data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise Rejection("bad_encoding", f"not valid UTF-8 at byte {exc.start}") from None
    if too_deep(data, max_depth):
        raise Rejection("too_deep", f"JSON nested deeper than {max_depth} levels")
    if function is not None:
        payload = msgspec.Raw(_encoder.encode(_parse(data)))
        return Accepted(function=function, payload=payload, id=None, delay=0.0, source=source)
    env = _envelope(_parse(data))
    check_function_name(env.function)
    if env.id is not None:
        check_envelope_id(env.id)
    return Accepted(
        function=env.function,
        payload=msgspec.Raw(_encoder.encode(env.payload)),
        id=env.id,
        delay=float(env.delay),
        source=source,
    )


def _parse(data: bytes) -> Any:
    try:
        value = _any_decoder.decode(data)
    except msgspec.DecodeError as exc:
        raise Rejection("not_json", f"not valid JSON: {exc}") from None
    except RecursionError:
        raise Rejection("too_deep", "JSON nested too deeply to decode") from None
    key = duplicate_key(data, value)
    if key is not None:
        raise Rejection("duplicate_key", f"key {printable(key)!r} appears twice in one object")
    return value


def _envelope(value: Any) -> Envelope:
    try:
        return msgspec.convert(value, Envelope)
    except msgspec.ValidationError as exc:
        raise Rejection("bad_shape", f"not a valid envelope: {exc}") from None


class _Settle(msgspec.Struct):
    ident: tuple[int, int, int]
    since: float
    timer: asyncio.TimerHandle | None = None


K = TypeVar("K", bound=Hashable)


class Settling(Generic[K]):
    """Files written in place that do not parse yet: rejected once unchanged for `settle` s."""

    def __init__(self, settle: float) -> None:
        self.settle = settle
        self._files: dict[K, _Settle] = {}

    def settled(self, key: K, st: os.stat_result, recheck: Callable[[K], None]) -> bool:
        """Whether `key` has stayed as `st` for the settle time; if not, `recheck(key)` when due."""
        now = time.monotonic()
        ident = (st.st_ino, st.st_size, st.st_mtime_ns)
        entry = self._files.get(key)
        if entry is None or entry.ident != ident:
            self.forget(key)
            entry = self._files[key] = _Settle(ident, now)
        remaining = entry.since + self.settle - now
        if remaining <= 0:
            return True
        if entry.timer is None:
            # a little slack: the loop's clock may be coarser than time.monotonic()
            loop = asyncio.get_running_loop()
            entry.timer = loop.call_later(remaining + 0.005, self._due, key, recheck)
        return False

    def _due(self, key: K, recheck: Callable[[K], None]) -> None:
        entry = self._files.get(key)
        if entry is not None:
            entry.timer = None
            recheck(key)

    def forget(self, key: K) -> None:
        """Stop following `key` (accepted, rejected or gone)."""
        entry = self._files.pop(key, None)
        if entry is not None and entry.timer is not None:
            entry.timer.cancel()

    def clear(self) -> None:
        """Forget every file and cancel every timer."""
        for key in list(self._files):
            self.forget(key)
