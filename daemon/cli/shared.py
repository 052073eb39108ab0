"""What the commands share: the spool and its reads from the arguments, finding an event by a
unique start of its id, waiting for events to end, JSON out, the daemon's heartbeat."""

from __future__ import annotations

import argparse
import json
import sys
import time
from typing import Any

from daemon import heartbeat, lock
from daemon.errors import FnspoolError
from daemon.heartbeat import Heartbeat
from daemon.model import Event
from daemon.query import Filter, parse_states, parse_time
from daemon.reads import EventReads
from daemon.spool import Spool

POLL = 0.05

EXIT_NOT_RUNNING = 3


def spool_of(args: argparse.Namespace) -> Spool:
    return Spool.resolve(args.spool)


def reads_of(spool: Spool) -> EventReads:
    return EventReads(spool.journal)


def print_json(value: Any) -> None:
    sys.stdout.write(json.dumps(value, indent=2, ensure_ascii=False) + "\n")


def find(reads: EventReads, request_id: str) -> Event:
    """The event with that id, or the only one whose id starts with it (as git and docker)."""
    event = reads.get(request_id)
    if event is not None:
        return event
    found = reads.ids_with_prefix(request_id, limit=2)
    if len(found) > 1:
        raise FnspoolError(
            f"{request_id!r} is the start of several ids ({found[0]}, {found[1]}, ...): "
            "give more of it",
            title="ambiguous",
            exit_code=2,
        )
    event = reads.get(found[0]) if found else None
    if event is None:
        raise FnspoolError(f"no event with id {request_id!r}", title="not found", exit_code=4)
    return event


def payload_of(args: argparse.Namespace) -> Any:
    if args.payload_file:
        try:
            if args.payload_file == "-":
                text = sys.stdin.read()
            else:
                with open(args.payload_file) as f:
                    text = f.read()
        except OSError as exc:
            raise FnspoolError(f"cannot read {args.payload_file}: {exc.strerror}") from None
    else:
        text = args.payload if args.payload is not None else "{}"
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise FnspoolError(
            f"the payload is not JSON: {exc}", title="bad payload", exit_code=2
        ) from None


def filter_of(args: argparse.Namespace) -> Filter:
    try:
        return Filter(
            function=args.function,
            states=parse_states(args.status) if args.status else None,
            id_prefix=args.id_prefix,
            since=parse_time(args.since) if args.since else None,
            until=parse_time(args.until) if args.until else None,
            ended_since=parse_time(args.ended_since) if args.ended_since else None,
            ended_until=parse_time(args.ended_until) if args.ended_until else None,
        )
    except ValueError as exc:
        raise FnspoolError(str(exc), exit_code=2) from None


def wait_for_end(spool: Spool, ids: list[str], timeout: float | None) -> dict[str, Event]:
    """Poll the events until every id has ended."""
    reads = reads_of(spool)
    deadline = None if timeout is None else time.monotonic() + timeout
    warned = False
    while True:
        events = reads.get_many(ids)
        if all(i in events and events[i].ended for i in ids):
            return {i: events[i] for i in ids}
        _check_rejected(spool, ids, events)
        if not warned and lock.holder(spool.run) is None:
            print("fnspool: the daemon is not running; waiting for it", file=sys.stderr)
            warned = True
        if deadline is not None and time.monotonic() > deadline:
            raise FnspoolError("timed out waiting for the events to end", exit_code=124)
        time.sleep(POLL)


def _check_rejected(spool: Spool, ids: list[str], events: dict[str, Event]) -> None:
    for request_id in ids:
        if request_id in events:
            continue
        for reason in spool.rejected.glob(f"{request_id}.json*.reason.json"):
            why = json.loads(reason.read_text()).get("message", "rejected")
            raise FnspoolError(f"{request_id} was rejected: {why} (see {reason})", title="rejected")


def heartbeats(spool: Spool) -> tuple[int | None, Heartbeat | None, Heartbeat | None]:
    """The pid holding the lock, the last heartbeat on file (perhaps of an earlier daemon), and
    that heartbeat if it is the running daemon's."""
    pid = lock.holder(spool.run)
    last = heartbeat.read(spool.run)
    ours = last if last is not None and pid is not None and last.pid == pid else None
    return pid, last, ours


def print_bytes(data: bytes) -> None:
    if data:
        sys.stdout.buffer.write(data)
        sys.stdout.flush()
