"""`fnspool events stop`, `events reinvoke`, `pause` and `resume`: write control requests, follow
their answers.

A request works while the daemon is down: it waits in control/ and is applied when the daemon
starts. The answer is the journal's `Request` record naming the request's file.
"""

from __future__ import annotations

import argparse
import sys
import time

import msgspec

from daemon import control, heartbeat, lock
from daemon.cli.shared import (
    filter_of,
    find,
    payload_of,
    print_json,
    reads_of,
    spool_of,
    wait_for_end,
)
from daemon.errors import FnspoolError
from daemon.ids import new_request_id
from daemon.journal import Damage, JournalTail, Outrun
from daemon.model import TERMINAL_STATES, Event, JournalRecord, Request, State
from daemon.query import Filter
from daemon.reads import EventReads
from daemon.refusals import reinvoke_refusal, stop_in_progress, stop_refusal
from daemon.spool import Spool

POLL = 0.02
ANSWER_WAIT = 10.0  # seconds to wait for a running daemon's answer without --wait
EXIT_REFUSED = 1


class Pending(msgspec.Struct, kw_only=True):
    """A request written, and what became of it."""

    name: str
    id: str
    answer: Request | None = None


def _submit_all(
    spool: Spool, requests: list[control.ControlRequest]
) -> tuple[JournalTail, list[Pending]]:
    """Write the requests; the tail, taken before them, sees every answer."""
    damages: list[Damage] = []
    follower = JournalTail.from_end(spool.journal, damages)
    pending = [
        Pending(name=control.submit(spool.root, request), id=_subject(request))
        for request in requests
    ]
    return follower, pending


def _subject(request: control.ControlRequest) -> str:
    """What a request acts on: an event's id, or a function's name ("" for all)."""
    match request:
        case control.PauseRequest(function=function) | control.ResumeRequest(function=function):
            return function or ""
        case control.StopRequest(id=rid) | control.ReinvokeRequest(id=rid):
            return rid


def _await_answers(
    spool: Spool, follower: JournalTail, pending: list[Pending], timeout: float | None
) -> bool:
    """Follow the journal until every request is answered; False when the daemon is down or
    the time is up (the requests then wait in control/)."""
    pending_by_name = {p.name: p for p in pending}
    deadline = None if timeout is None else time.monotonic() + timeout
    warned = False
    while any(p.answer is None for p in pending):
        for rec in _new_records(follower):
            if isinstance(rec, Request) and rec.name in pending_by_name:
                pending_by_name[rec.name].answer = rec
        if all(p.answer is not None for p in pending):
            break
        if lock.holder(spool.run) is None:
            if timeout is not None:
                return False
            if not warned:
                print("fnspool: the daemon is not running; waiting for it", file=sys.stderr)
                warned = True
        if deadline is not None and time.monotonic() > deadline:
            return False
        time.sleep(POLL)
    return True


def _new_records(follower: JournalTail) -> list[JournalRecord]:
    try:
        return list(follower.read())
    except Outrun:  # compacted between two looks: follow from the end again
        follower.cursor = JournalTail.from_end(follower.directory, follower.damages).cursor
        return []


def _say_queued(spool: Spool) -> None:
    print(
        f"fnspool: the daemon is not running; the request waits in {spool.control} "
        "and is applied when it starts",
        file=sys.stderr,
    )


def events_stop(args: argparse.Namespace) -> int:
    """Stop an event: at once if not running, else forced (PreStop, kill) or gracefully."""
    spool = spool_of(args)
    event = find(reads_of(spool), args.id)
    how = stop_in_progress(event)
    if refusal := stop_refusal(event.id, event.state, graceful=args.graceful, stopping=how):
        raise FnspoolError(refusal, title="cannot stop", exit_code=EXIT_REFUSED)
    stop = control.StopRequest(id=event.id, graceful=args.graceful)
    follower, [pending] = _submit_all(spool, [stop])
    answered = _await_answers(spool, follower, [pending], None if args.wait else ANSWER_WAIT)
    if not answered:
        _say_queued(spool)
        return 0
    assert pending.answer is not None
    _print_answer(pending.answer)
    if pending.answer.outcome != control.APPLIED:
        return EXIT_REFUSED
    if not args.wait:
        return 0
    ended = wait_for_end(spool, [event.id], timeout=None)[event.id]
    print(f"{event.id} {ended.state.value}")
    return 0 if ended.state is State.STOPPED else 1


def _print_answer(answer: Request) -> None:
    stream = sys.stdout if answer.outcome == control.APPLIED else sys.stderr
    prefix = "" if answer.outcome == control.APPLIED else "fnspool: refused: "
    subject = answer.id if answer.action not in ("pause", "resume") else answer.function
    said = f"{subject}: {answer.message}" if subject else str(answer.message)
    print(prefix + said, file=stream)


def pause(args: argparse.Namespace) -> int:
    """Hold dispatch of one function or all: queued events wait, running ones finish."""
    return _hold_or_release(args, control.PauseRequest(function=args.function))


def resume(args: argparse.Namespace) -> int:
    """Release dispatch of one function or all."""
    return _hold_or_release(args, control.ResumeRequest(function=args.function))


def _hold_or_release(
    args: argparse.Namespace, request: control.PauseRequest | control.ResumeRequest
) -> int:
    spool = spool_of(args)
    if request.function is not None and not _known_function(spool, request):
        action = "pause" if isinstance(request, control.PauseRequest) else "resume"
        raise FnspoolError(
            f"no function named {request.function!r}", title=f"cannot {action}", exit_code=1
        )
    follower, [pending] = _submit_all(spool, [request])
    if not _await_answers(spool, follower, [pending], ANSWER_WAIT):
        _say_queued(spool)
        return 0
    assert pending.answer is not None
    _print_answer(pending.answer)
    return 0 if pending.answer.outcome == control.APPLIED else EXIT_REFUSED


def _known_function(spool: Spool, request: control.PauseRequest | control.ResumeRequest) -> bool:
    """Whether the function is defined (with errors too), or, to resume it, paused."""
    from daemon.functions import load_catalog

    catalog = load_catalog(spool.functions)
    name = request.function
    if name in catalog.functions or name in catalog.errors:
        return True
    beat = heartbeat.read(spool.run)
    return isinstance(request, control.ResumeRequest) and beat is not None and name in beat.paused


def events_reinvoke(args: argparse.Namespace) -> int:
    """Re-invoke one ended event, or every ended event the filters match (after a confirmation)."""
    spool = spool_of(args)
    chosen = _chosen(args, reads_of(spool))
    payload = msgspec.Raw(msgspec.json.encode(payload_of(args))) if _has_payload(args) else None
    if len(chosen) > 1 or not args.id:
        if not chosen:
            raise FnspoolError("no ended event matches the filters", title="nothing to re-invoke")
        if not args.yes and not _confirm(chosen):
            print("fnspool: nothing re-invoked", file=sys.stderr)
            return 1
    given = {"payload": payload} if payload is not None else {}  # else the old event's
    requests = [control.ReinvokeRequest(id=e.id, new_id=new_request_id(), **given) for e in chosen]
    follower, pending = _submit_all(spool, list(requests))
    if not _await_answers(spool, follower, pending, None if args.wait else ANSWER_WAIT):
        _say_queued(spool)
        for request in requests:
            print(request.new_id)
        return 0
    return _report_reinvoked(spool, pending, args)


def _chosen(args: argparse.Namespace, reads: EventReads) -> list[Event]:
    if args.id:
        event = find(reads, args.id)
        if refusal := reinvoke_refusal(event.id, event.state):
            raise FnspoolError(refusal, title="cannot re-invoke", exit_code=EXIT_REFUSED)
        return [event]
    flt = filter_of(args)
    if flt == Filter():
        raise FnspoolError(
            "give an id or a filter (--status, --function, --id-prefix, --since, --until): "
            "without one every ended event would run again, those that succeeded too",
            title="nothing chosen",
            exit_code=2,
        )
    flt.states = (flt.states or set(TERMINAL_STATES)) & TERMINAL_STATES
    return reads.select(flt, limit=args.limit, newest_first=False) if flt.states else []


def _has_payload(args: argparse.Namespace) -> bool:
    return args.payload is not None or args.payload_file is not None


SHOWN = 10  # events listed before a bulk re-invoke asks


def _confirm(chosen: list[Event]) -> bool:
    count = len(chosen)
    if not sys.stdin.isatty():
        raise FnspoolError(
            f"{count} events match: add --yes to re-invoke them without a terminal to confirm",
            title="confirmation needed",
            exit_code=2,
        )
    for event in chosen[:SHOWN]:
        print(f"  {event.id}  {event.function}  {event.state.value}")
    if count > SHOWN:
        print(f"  ... and {count - SHOWN} more")
    reply = input(f"Re-invoke {count} events? [y/N] ")
    return reply.strip().lower() in ("y", "yes")


def _report_reinvoked(spool: Spool, pending: list[Pending], args: argparse.Namespace) -> int:
    answers = [p.answer for p in pending if p.answer is not None]
    new_ids = [a.new_id for a in answers if a.outcome == control.APPLIED and a.new_id]
    refused = [a for a in answers if a.outcome != control.APPLIED]
    for answer in refused:
        _print_answer(answer)
    if args.wait and new_ids:
        ended = wait_for_end(spool, new_ids, timeout=None)
        results = {i: ended[i].state.value for i in new_ids}
        if args.json:
            print_json(
                [
                    {"id": i, "retry_of": _retry_of(pending, i), "state": s}
                    for i, s in results.items()
                ]
            )
        else:
            for new_id, state in results.items():
                print(f"{new_id} {state}")
        failed = any(s != State.SUCCEEDED.value for s in results.values())
        return 1 if refused or failed else 0
    if args.json:
        print_json([{"id": i, "retry_of": _retry_of(pending, i)} for i in new_ids])
    else:
        for new_id in new_ids:
            print(new_id)
    return 1 if refused else 0


def _retry_of(pending: list[Pending], new_id: str) -> str | None:
    return next((p.id for p in pending if p.answer and p.answer.new_id == new_id), None)
