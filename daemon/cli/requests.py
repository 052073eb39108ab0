"""`fnspool events stop`, `events reinvoke`, `events forget`, `pause` and `resume`: write control
requests, follow their answers.

A request works while the daemon is down: it waits in control/ and is applied when the daemon
starts. The answer is the journal's `Request` record naming the request's file (one per event,
for a stop or a forget of several events: up to control.MAX_IDS go in one request).
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import msgspec

from daemon import control, heartbeat, lock
from daemon.cli.bulk import Action, asked, chosen
from daemon.cli.shared import (
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
from daemon.refusals import forget_refusal, reinvoke_refusal, stop_in_progress, stop_refusal
from daemon.spool import Spool

POLL = 0.02
ANSWER_WAIT = 10.0  # seconds to wait for a running daemon's answer without --wait
EXIT_REFUSED = 1


class Pending(msgspec.Struct, kw_only=True):
    """A request written, and what became of it."""

    name: str
    ids: tuple[str, ...]  # the events it acts on ("": a function, or all)
    answers: dict[str, Request] = msgspec.field(default_factory=dict)

    @property
    def answered(self) -> bool:
        """Whether the daemon has answered for every event."""
        return all(i in self.answers for i in self.ids)

    @property
    def answer(self) -> Request | None:
        """The answer for its first event (the only one, but for a stop or a forget)."""
        return self.answers.get(self.ids[0])

    def take(self, rec: Request) -> None:
        """Note an answer: for one event, or, for a request set aside whole, for all."""
        if rec.action == "invalid":
            self.answers.update(dict.fromkeys(self.ids, rec))
        else:
            self.answers[rec.id] = rec


def _submit_all(
    spool: Spool, requests: list[control.ControlRequest]
) -> tuple[JournalTail, list[Pending]]:
    """Write the requests; the tail, taken before them, sees every answer."""
    damages: list[Damage] = []
    follower = JournalTail.from_end(spool.journal, damages)
    pending = [
        Pending(name=control.submit(spool.root, request), ids=control.targets(request))
        for request in requests
    ]
    return follower, pending


def _await_answers(
    spool: Spool, follower: JournalTail, pending: list[Pending], timeout: float | None
) -> bool:
    """Follow the journal until every request is answered; False when the daemon is down or
    no answer came for `timeout` seconds (the requests then wait in control/)."""
    pending_by_name = {p.name: p for p in pending}
    deadline = None if timeout is None else time.monotonic() + timeout
    warned = False
    while not all(p.answered for p in pending):
        for rec in _new_records(follower):
            if isinstance(rec, Request) and rec.name in pending_by_name:
                pending_by_name[rec.name].take(rec)
                if timeout is not None:  # answers are coming: a long list is not a dead daemon
                    deadline = time.monotonic() + timeout
        if all(p.answered for p in pending):
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


STOP = Action(
    verb="stop",
    done="stopped",
    states=frozenset(s for s in State if not s.terminal),
    which="event that can be stopped",
    unchosen="every event not ended would be stopped",
)
FORGET = Action(
    verb="forget",
    done="forgotten",
    states=TERMINAL_STATES,
    which="ended event",
    unchosen="every ended event would be forgotten",
)
REINVOKE = Action(
    verb="re-invoke",
    done="re-invoked",
    states=TERMINAL_STATES,
    which="ended event",
    unchosen="every ended event would run again, those that succeeded too",
)


def events_stop(args: argparse.Namespace) -> int:
    """Stop events (by id, or those not ended that the filters match, after a confirmation): at
    once if not running, else forced (PreStop, kill) or gracefully."""
    spool = spool_of(args)

    def refusal(event: Event) -> str | None:
        how = stop_in_progress(event)
        return stop_refusal(event.id, event.state, graceful=args.graceful, stopping=how)

    events = chosen(args, reads_of(spool), args.ids, STOP, refusal)
    if not asked(events, STOP, args, by_filter=not args.ids):
        return EXIT_REFUSED
    requests = [
        control.StopRequest(id=first, ids=tuple(more), graceful=args.graceful)
        for first, *more in _chunks([e.id for e in events])
    ]
    follower, pending = _submit_all(spool, list(requests))
    if not _await_answers(spool, follower, pending, None if args.wait else ANSWER_WAIT):
        _say_queued(spool)
        return 0
    applied = _print_answers(pending)
    everyone = len(applied) == len(events)
    if not args.wait or not applied:
        return 0 if everyone else EXIT_REFUSED
    ended = wait_for_end(spool, applied, timeout=None)
    for request_id in applied:
        print(f"{request_id} {ended[request_id].state.value}")
    stopped = all(ended[i].state is State.STOPPED for i in applied)
    return 0 if everyone and stopped else 1


def events_forget(args: argparse.Namespace) -> int:
    """Forget ended events (by id, or those the filters match, after a confirmation): gone from
    every read at once, their logs removed, their records dropped at the next compaction."""
    spool = spool_of(args)

    administrator = os.stat(spool.root).st_uid  # the daemon's user owns the spool

    def refusal(event: Event) -> str | None:
        submitter = event.source.uid if event.source is not None else None
        # a record still owed: only the daemon knows
        return forget_refusal(
            event.id,
            event.state,
            asker=os.getuid(),
            submitter=submitter,
            administrator=administrator,
        )

    events = chosen(args, reads_of(spool), args.ids, FORGET, refusal)
    if not asked(events, FORGET, args, by_filter=not args.ids):
        return EXIT_REFUSED
    requests = [
        control.ForgetRequest(id=first, ids=tuple(more))
        for first, *more in _chunks([e.id for e in events])
    ]
    follower, pending = _submit_all(spool, list(requests))
    if not _await_answers(spool, follower, pending, ANSWER_WAIT):
        _say_queued(spool)
        return 0
    applied = _print_answers(pending)
    return 0 if len(applied) == len(events) else EXIT_REFUSED


def _chunks(ids: list[str]) -> list[tuple[str, ...]]:
    """The ids, as many to a request as one may name."""
    size = control.MAX_IDS
    return [tuple(ids[start : start + size]) for start in range(0, len(ids), size)]


def _print_answers(pending: list[Pending]) -> list[str]:
    """Print every answer, each once; the ids of the events it was applied to."""
    applied = []
    for p in pending:
        for answer in dict.fromkeys(p.answers[i] for i in p.ids if i in p.answers):
            _print_answer(answer)
        applied += [i for i in p.ids if p.answers[i].outcome == control.APPLIED]
    return applied


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
    ids = [args.id] if args.id else []
    events = chosen(args, reads_of(spool), ids, REINVOKE, lambda e: reinvoke_refusal(e.id, e.state))
    payload = msgspec.Raw(msgspec.json.encode(payload_of(args))) if _has_payload(args) else None
    if not asked(events, REINVOKE, args, by_filter=not ids):
        return EXIT_REFUSED
    given = {"payload": payload} if payload is not None else {}  # else the old event's
    requests = [control.ReinvokeRequest(id=e.id, new_id=new_request_id(), **given) for e in events]
    follower, pending = _submit_all(spool, list(requests))
    if not _await_answers(spool, follower, pending, None if args.wait else ANSWER_WAIT):
        _say_queued(spool)
        for request in requests:
            print(request.new_id)
        return 0
    return _report_reinvoked(spool, pending, args)


def _has_payload(args: argparse.Namespace) -> bool:
    return args.payload is not None or args.payload_file is not None


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
    return next((p.ids[0] for p in pending if p.answer and p.answer.new_id == new_id), None)
