"""Request ids: the one rule every door checks, ids derived from others, and new UUIDv7 ids.

The rule: 1 to 128 of letters, digits and `_ . : -`, starting with a letter, a digit or `_`.
It takes every Function Compute invocation id (letters, digits, `_` and `-`, up to 128, starting
with a letter or `_`), our UUIDv7 ids, ids made of a file name (`video-42.mp4`, which FC suggests)
or a key (`order:17`). An id becomes file names (`logs/FUNCTION/ID.log`, `incoming/ID.json`, a
destination's `ID.json`), log lines and command-line arguments, so it never holds `/`, a space or
a control character, never starts with `.` (so never `.` or `..`, nor a hidden file the ingestor
ignores) and never starts with `-` (never taken for an option).
"""

from __future__ import annotations

import os
import re
import time

from daemon.text import printable

MAX_ID_LENGTH = 128
ID_RE = re.compile(rf"[A-Za-z0-9_][A-Za-z0-9_.:-]{{0,{MAX_ID_LENGTH - 1}}}")  # use fullmatch
ALLOWED = "letters, digits and _ . : -"
_SHOWN = 80  # characters of a bad id quoted in an error


class BadId(ValueError):
    """A request id that breaks the rule; the message says why, the id shown safely."""


def check_id(text: str, what: str = "request id") -> str:
    """`text` when it is a valid request id; else BadId naming what is wrong with it."""
    why = id_problem(text)
    if why is None:
        return text
    shown = printable(text[:_SHOWN]) + ("…" if len(text) > _SHOWN else "")
    raise BadId(f'bad {what} "{shown}": {why}')


def id_problem(text: str) -> str | None:
    """Why `text` breaks the id rule, in words; None when it is a valid id."""
    if ID_RE.fullmatch(text):
        return None
    if not text:
        return "it is empty"
    if len(text) > MAX_ID_LENGTH:
        return f"it is {len(text)} characters long, over {MAX_ID_LENGTH}"
    if not ID_RE.fullmatch(text[0]):
        return f"it starts with {_char(text[0])} (start with a letter, a digit or _)"
    at, char = next((i, c) for i, c in enumerate(text) if not ID_RE.fullmatch(f"a{c}"))
    return f"{_char(char)} at position {at + 1} is not allowed ({ALLOWED} only)"


def _char(c: str) -> str:
    return "a space" if c == " " else f"'{printable(c)}'"


def derived_id(request_id: str, suffix: str) -> str:
    """`REQUEST_ID-SUFFIX` (a destination event's id), kept within the rule: a head too long to fit
    is cut and a hash of the whole added, so the id is still the same at every delivery."""
    whole = f"{request_id}-{suffix}"
    if len(whole) > MAX_ID_LENGTH:
        import hashlib  # here: its import is a tenth of the CLI's start, and rarely needed

        digest = hashlib.sha256(request_id.encode()).hexdigest()[:16]
        head = request_id[: MAX_ID_LENGTH - len(suffix) - len(digest) - 2]
        whole = f"{head}-{digest}-{suffix}"
    return check_id(whole, "derived id")


_last_ms = 0
_counter = 0
_RANDOM_BATCH = 9 * 512  # bytes: 512 ids per getrandom() system call
_random = bytearray()


def _random_bits() -> int:
    """72 bits from the system's random source, drawn in batches."""
    global _random
    if not _random:
        _random = bytearray(os.urandom(_RANDOM_BATCH))
    bits = int.from_bytes(_random[-9:], "big")
    del _random[-9:]
    return bits


def new_request_id() -> str:
    """A UUIDv7: time-ordered, so ids sort by submission time (monotonic within a process)."""
    global _last_ms, _counter
    ms = time.time_ns() // 1_000_000
    bits = _random_bits()
    rand_b = bits >> 10
    if ms <= _last_ms:
        ms, _counter = _last_ms, _counter + 1
    else:
        _counter = bits & 0x3FF
    _last_ms = ms
    value = (ms << 80) | (0x7 << 76) | ((_counter & 0xFFF) << 64) | (0b10 << 62) | rand_b
    h = f"{value:032x}"
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


#: a function's name: a file name in functions/ and a folder in incoming/ and logs/
#: (\Z: `$` would let "name\n" in)
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}\Z")
