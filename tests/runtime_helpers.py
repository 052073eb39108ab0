"""What the runtime tests share: running async tests on uvloop, JSON in and out of Raw."""

from __future__ import annotations

import functools
from collections.abc import Callable, Coroutine

import msgspec
import uvloop

LINE_TIME = r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z"  # an event log line's time stamp


def on_uvloop(test: Callable[..., Coroutine[object, object, None]]) -> Callable[..., None]:
    """Run an async test on uvloop, as the daemon runs."""

    @functools.wraps(test)
    def run(*args: object, **kwargs: object) -> None:
        uvloop.run(test(*args, **kwargs))

    return run


def raw(value: object) -> msgspec.Raw:
    """`value` as JSON, the way payloads reach an instance."""
    return msgspec.Raw(msgspec.json.encode(value))


def value(raw_json: msgspec.Raw | None) -> object:
    """A result decoded."""
    assert raw_json is not None
    return msgspec.json.decode(raw_json)
