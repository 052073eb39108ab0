"""JSON as fnspool takes it from outside: nesting bounded before decoding, and no key twice in
one object (msgspec, like most decoders, keeps the last silently; a payload or request whose
meaning depends on which one a reader keeps is refused instead)."""

from __future__ import annotations

import json
import re
from typing import Any

_STRING = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*(?:"|\\?\Z)', re.DOTALL)
_DEPTH_STEP = bytes.maketrans(b"[{]}", b"\x02\x02\x00\x00")  # depth change + 1
_NOT_BRACKETS = bytes(c for c in range(256) if c not in b"[{]}")


def without_strings(data: bytes) -> bytes:
    """`data` with every JSON string cut out (an unterminated one runs to the end)."""
    return _STRING.sub(b"", data) if b'"' in data else data


def too_deep(data: bytes, max_depth: int) -> bool:
    """Whether JSON brackets nest deeper than `max_depth`, judged without decoding."""
    data = without_strings(data)  # strings cannot hold structure
    opens = data.count(b"[") + data.count(b"{")
    if opens <= max_depth:
        return False
    depth = deepest = 0
    for step in data.translate(_DEPTH_STEP, _NOT_BRACKETS):
        depth += step - 1
        if depth > deepest:
            deepest = depth
            if deepest > max_depth:
                return True
    return False


def duplicate_key(data: bytes, value: Any) -> str | None:
    """A key that appears twice in one object of `data` (decoded as `value`), or None.

    Outside strings a colon only ever separates a key from its value, so `data` holds as many
    members as colons; when the decoded objects hold fewer keys, some key came twice."""
    members = without_strings(data).count(b":")
    if members == _keys_in(value):
        return None
    return _first_duplicate(data)


def _keys_in(value: Any) -> int:
    count, stack = 0, [value]
    while stack:
        item = stack.pop()
        if isinstance(item, dict):
            count += len(item)
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
    return count


class _Found(Exception):
    def __init__(self, key: str) -> None:
        self.key = key


def _first_duplicate(data: bytes) -> str | None:
    def pairs(items: list[tuple[str, Any]]) -> None:
        seen: set[str] = set()
        for key, _ in items:
            if key in seen:
                raise _Found(key)
            seen.add(key)

    try:
        json.loads(data, object_pairs_hook=pairs)
    except _Found as found:
        return found.key
    return None
