"""`fnspool invoke`: drop an envelope the maildir way, then wait for the daemon's verdict."""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from typing import Any

import msgspec

from daemon import lock
from daemon.atomic import write_durable
from daemon.cli.events import full_view, print_event
from daemon.cli.shared import (
    POLL,
    heartbeats,
    payload_of,
    print_json,
    reads_of,
    spool_of,
    wait_for_end,
)
from daemon.errors import FnspoolError
from daemon.model import Event, State
from daemon.spool import Spool

VERDICT_WAIT = 60.0  # seconds a running daemon gets to accept or reject a dropped file


def invoke(args: argparse.Namespace) -> int:
    """Drop an envelope into incoming/ the maildir way (write in tmp/, rename in), then wait for
    the daemon's verdict: accepted (its id) or rejected (the reason, exit 1)."""
    from daemon.ids import new_request_id

    spool = spool_of(args)
    _check_function(spool, args.function)
    request_id = args.id or new_request_id()
    if args.id:
        _check_unused(spool, request_id)
    envelope: dict[str, Any] = {
        "function": args.function,
        "payload": payload_of(args),
        "id": request_id,
    }
    if args.delay:
        envelope["delay"] = args.delay
    # a name of its own: an earlier event with the same id came from another file
    name = f"{request_id}.{os.getpid()}-{time.monotonic_ns()}.json"
    _drop(spool, name, msgspec.json.encode(envelope))
    if _verdict(spool, name, request_id) is None and lock.holder(spool.run) is None:
        print("fnspool: the daemon is not running; the event waits in incoming/", file=sys.stderr)
    if not args.wait:
        print_json({"id": request_id}) if args.json else print(request_id)
        return 0
    event = wait_for_end(spool, [request_id], timeout=None)[request_id]
    view = full_view(event, spool)
    print_json(view) if args.json else print_event(event, view)
    return 0 if event.state is State.SUCCEEDED else 1


def _check_function(spool: Spool, function: str) -> None:
    """Refuse a function that is not defined, or whose definition has an error the daemon does
    not cover with the last good one."""
    from daemon.functions import load_catalog
    from daemon.ids import NAME_RE

    if not NAME_RE.match(function):
        raise FnspoolError(f"bad function name {function!r}", exit_code=2)
    catalog = load_catalog(spool.functions)
    error = catalog.errors.get(function)
    if error is not None:
        _pid, _last, beat = heartbeats(spool)
        if beat is None or function not in beat.last_good_definitions:
            raise FnspoolError(
                f"function {function!r} has a definition error: {error.message}",
                title="definition error",
                exit_code=2,
            )
        print(
            f"fnspool: {function}: runs its last good definition: {error.message}", file=sys.stderr
        )
    elif function not in catalog.functions:
        raise FnspoolError(
            f"no function {function!r} in {spool.functions}", title="not found", exit_code=4
        )


def _check_unused(spool: Spool, request_id: str) -> None:
    """Refuse an explicit id that an event already has (it would be rejected as a duplicate)."""
    event = reads_of(spool).get(request_id)
    if event is not None:
        raise FnspoolError(
            f"id {request_id} is already used by an event of {event.function} "
            f"({event.state.value}): nothing submitted",
            title="rejected",
        )


def _verdict(spool: Spool, name: str, request_id: str) -> Event | None:
    """The event the daemon made of incoming/`name`, once it did; FnspoolError if it rejected
    the file; None when no daemon runs to decide (the file waits in incoming/)."""
    reads, ours = reads_of(spool), f"incoming/{name}"
    reason = spool.rejected / f"{name}.reason.json"
    deadline = time.monotonic() + VERDICT_WAIT
    while True:
        event = reads.get(request_id)
        if event is not None and event.source is not None and event.source.path == ours:
            return event
        if reason.exists():
            why = json.loads(reason.read_text()).get("message", "rejected")
            raise FnspoolError(f"{request_id} was rejected: {why} (see {reason})", title="rejected")
        if lock.holder(spool.run) is None:
            return None
        if time.monotonic() > deadline:
            print(
                f"fnspool: no verdict on {request_id} after {VERDICT_WAIT:.0f} s", file=sys.stderr
            )
            return None
        time.sleep(POLL)


def _drop(spool: Spool, name: str, data: bytes) -> None:
    spool.tmp.mkdir(parents=True, exist_ok=True)
    write_durable(spool.incoming / name, data, 0o666, staging=spool.tmp)  # 0o666: the umask
