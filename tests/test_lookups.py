"""The daemon's duplicate-id check for events it no longer holds: through the index, and through
the ids it holds for archives the index lacks (deleted and being rebuilt, or lagging)."""

from __future__ import annotations

from pathlib import Path

from daemon.eventdb import INDEX_NAME
from daemon.indexer import Indexer
from daemon.journal import list_archives
from daemon.journal_writer import JournalWriter, recover
from daemon.lookups import Lookups
from daemon.model import State, raw_json
from daemon.store import Store


async def _archive_two(directory: Path) -> list[str]:
    """Two compactions, each archiving ended events with ids given; their ids."""
    writer = JournalWriter(directory, 1)
    store = Store(writer, recover(directory), directory / "logs")
    ids = []
    for batch in range(2):
        for n in range(50):
            event = store.enqueue("f", raw_json(n), request_id=f"order-{batch}-{n}")
            assert event is not None
            store.transition(event, State.STOPPED)
            ids.append(event.id)
        await store.compact()
    await writer.close()
    assert len(list_archives(directory)) == 2
    return ids


async def test_ids_of_archives_without_an_index_are_refused_and_others_are_not(tmp_path):
    ids = await _archive_two(tmp_path)
    lookups = Lookups(tmp_path)  # no index: every archive's ids are held
    assert all(lookups.has(i) for i in ids)
    fresh = [f"fresh-{n}" for n in range(1000)]
    assert lookups.archived_ids([*fresh, ids[0], ids[-1]]) == {ids[0], ids[-1]}
    assert not any(lookups.has(i) for i in fresh)


async def test_an_archive_removed_by_retention_refuses_its_ids_no_longer(tmp_path):
    ids = await _archive_two(tmp_path)
    lookups = Lookups(tmp_path)
    first = list_archives(tmp_path)[0][1]
    first.unlink()
    assert not lookups.has(ids[0])  # the archive that held it is gone
    assert lookups.has(ids[-1])


async def test_an_archived_event_is_read_from_its_archive_without_an_index(tmp_path):
    ids = await _archive_two(tmp_path)
    lookups = Lookups(tmp_path)
    event = lookups.get(ids[-1])
    assert event is not None and event.id == ids[-1] and event.state is State.STOPPED
    assert lookups.get("fresh") is None


async def test_an_index_deleted_under_the_daemon_has_its_ids_held_again(tmp_path):
    ids = await _archive_two(tmp_path)
    indexer = Indexer(tmp_path)
    while indexer.step():
        pass
    indexer.db.close_cleanly()
    lookups = Lookups(tmp_path)
    assert lookups.indexed_seq() > 0 and lookups.has(ids[0])  # through the index
    (tmp_path / INDEX_NAME).unlink()
    assert lookups.has(ids[0]) and lookups.archived_ids([ids[-1], "fresh"]) == {ids[-1]}
    assert lookups.get(ids[0]) is not None
