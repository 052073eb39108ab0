"""Request ids: UUIDv7, unique and in submission order within a daemon."""

from __future__ import annotations

import time
import uuid

from daemon.ids import new_request_id


def test_ids_are_uuid7_unique_and_sorted_even_within_one_millisecond():
    ids = [new_request_id() for _ in range(20_000)]  # thousands per millisecond
    assert ids == sorted(ids)
    assert len(set(ids)) == len(ids)
    for text in ids[:: len(ids) // 50]:
        u = uuid.UUID(text)
        assert u.version == 7 and u.variant == uuid.RFC_4122
        assert str(u) == text


def test_an_id_carries_its_creation_time_in_milliseconds():
    before = time.time_ns() // 1_000_000
    rid = new_request_id()
    after = time.time_ns() // 1_000_000
    assert before <= int(rid.replace("-", "")[:12], 16) <= after + 1
