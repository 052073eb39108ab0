"""Request ids: UUIDv7, time-ordered, so ids sort by submission time."""

from __future__ import annotations

import secrets
import time

_last_ms = 0
_counter = 0


def new_request_id() -> str:
    """A UUIDv7: time-ordered, so ids sort by submission time (monotonic within a process)."""
    global _last_ms, _counter
    ms = time.time_ns() // 1_000_000
    bits = secrets.randbits(72)  # one call: each is a getrandom() system call
    rand_b = bits >> 10
    if ms <= _last_ms:
        ms, _counter = _last_ms, _counter + 1
    else:
        _counter = bits & 0x3FF
    _last_ms = ms
    value = (ms << 80) | (0x7 << 76) | ((_counter & 0xFFF) << 64) | (0b10 << 62) | rand_b
    h = f"{value:032x}"
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"
