"""Destination delivery policy, directly: a shutdown never waits past its drain time for a
backlog of records, and what it leaves is delivered at the next start, once."""

from __future__ import annotations

import asyncio
from pathlib import Path

from daemon.destinations import Destinations
from daemon.functions import Definitions
from daemon.model import Event, Source, State, raw_json


def _failed(i: int) -> Event:
    event = Event(id=f"e{i:03d}", function="f", state=State.FAILED, enqueued_at=1.0)
    event.payload = raw_json({"i": i})
    return event


def _destinations(root: Path, sync, delivered: list[str]) -> Destinations:
    def mark(event: Event, destination: str, condition: str, target: str) -> None:
        event.delivered = True
        delivered.append(event.id)

    def enqueue(function: str, payload: object, request_id: str, source: Source) -> bool:
        return True

    def failed(*_args: object) -> None:
        raise AssertionError("no URL destination here")

    return Destinations(root, Definitions(), sync, enqueue, mark, failed)


async def test_a_shutdown_leaves_a_stuck_backlog_owed_and_the_next_start_delivers_it(tmp_path):
    stuck = asyncio.Event()  # the journal's sync never returns: nothing can be delivered
    delivered: list[str] = []
    first = _destinations(tmp_path, stuck.wait, delivered)
    events = [_failed(i) for i in range(50)]
    for event in events:
        first.ended(event)
    await asyncio.wait_for(first.flush(timeout=0.05), 10)  # returns: it does not wait for them
    assert delivered == [] and all(first.owes(e) for e in events)

    async def synced() -> None:
        return None

    second = _destinations(tmp_path, synced, delivered)
    second.recover(events)
    await second.flush()
    assert sorted(delivered) == [e.id for e in events]
    folder = tmp_path / "destinations" / "dead-letter"
    assert sorted(p.name for p in folder.iterdir()) == [f"{e.id}.json" for e in events]
    assert not any(second.owes(e) for e in events)
