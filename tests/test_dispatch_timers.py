"""The dispatcher's backoff timers on uvloop, as the daemon runs them (store and journal real)."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

from conftest import wait_for_async
from runtime_helpers import on_uvloop

from daemon.dispatcher import Dispatcher
from daemon.functions import Definitions
from daemon.journal_writer import JournalWriter, recover
from daemon.model import State, raw_json
from daemon.store import Store


@on_uvloop
async def test_retries_due_within_half_a_millisecond_leave_no_later_retry_stuck(tmp_path: Path):
    # Under load a backoff has mostly passed while its Retrying record was being synced; a wait
    # left under half a millisecond got a plain Handle from uvloop, and the next timer to fire
    # failed on it, so every later retry of the daemon stayed Retrying for ever.
    journal = tmp_path / "journal"
    journal.mkdir()
    writer = JournalWriter(journal, 1)
    store = Store(writer, recover(journal), tmp_path / "logs")
    dispatcher = Dispatcher(store, Definitions(), {}, tmp_path / "logs")  # no function: Invalid
    soon = [store.enqueue("nothing", raw_json(i)) for i in range(20)]
    later = store.enqueue("nothing", raw_json("later"))
    await store.sync()
    for event in soon:
        assert event is not None
        event.not_before = time.time() + 0.0004
        dispatcher.submit(event)
    assert later is not None
    later.not_before = time.time() + 0.05
    dispatcher.submit(later)
    events = [*soon, later]
    await wait_for_async(
        lambda: all(e.state is State.INVALID for e in events),
        what="every event due again taken and ended Invalid (function not defined)",
        pause=asyncio.sleep,
    )
    assert not dispatcher._timers  # each timer forgot itself when it fired
    await dispatcher.drain(1)
    await writer.close()
