"""`events list` shows the newest events first by time, whatever their ids: ids given with an
event (idempotency keys) need not sort by time."""

from __future__ import annotations

from pathlib import Path

from conftest import events, fnspool

from daemon.eventdb import INDEX_NAME

IDS = ["c-first", "a-second", "b-third"]  # submitted in this order: their ids sort otherwise


def _listed(spool: Path, *args: str) -> list[str]:
    return [e["id"] for e in events(spool, *args)]


def _check_order(spool: Path) -> None:
    assert _listed(spool) == IDS[::-1]
    assert _listed(spool, "--order", "asc") == IDS
    assert _listed(spool, "--limit", "2") == ["b-third", "a-second"]


def test_events_list_is_newest_first_by_time_with_ids_given(spool: Path, daemon: object) -> None:
    d = daemon.start()  # type: ignore[attr-defined]
    for request_id in IDS:
        fnspool(spool, "invoke", "echo", "--id", request_id, "--wait")
    _check_order(spool)  # from the index and the records it has not taken in
    d.stop()
    _check_order(spool)  # from the index alone
    (spool / "journal" / INDEX_NAME).unlink()
    _check_order(spool)  # from a replay of the journal
