"""Control requests from `control/`: read safely, decode, authorise, apply, answer in the journal.

Each request is answered by a `Request` record naming its file (with who asked: the uid owning
the file), one per event for a request naming several; the file is removed only once that
answer is durable. A request file that cannot be
read, decoded or authorised is set aside in `rejected/` with a reason, and answered as refused.
Requests written while the daemon was down are applied at start-up, oldest first.
"""

from __future__ import annotations

import asyncio
import contextlib
import grp
import logging
import os
import pwd
import time
from collections.abc import Callable

import msgspec
from inotify_simple import INotify
from inotify_simple import flags as F

from daemon import control
from daemon.control import (
    ControlRequest,
    ForgetRequest,
    PauseRequest,
    ReinvokeRequest,
    ResumeRequest,
    StopRequest,
)
from daemon.dispatcher import Dispatcher, NewEvent
from daemon.ids import BadId
from daemon.model import Event, Request, Source, has_raw
from daemon.payload import is_ignored
from daemon.refusals import Refused, forget_refusal, refuse_if, reinvoke_refusal
from daemon.spool import Rejection, Spool, reject, safe_read, unlink_if_same
from daemon.store import Store
from daemon.strictjson import duplicate_key, too_deep
from daemon.text import printable

log = logging.getLogger(__name__)

MAX_REQUEST_BYTES = 1 << 20
MAX_DEPTH = 64


class Answer(msgspec.Struct, frozen=True, kw_only=True):
    """What the daemon did with one request."""

    outcome: str  # control.APPLIED | control.REFUSED
    message: str
    new_id: str | None = None


ACCOUNT_FILES = ("/etc/group", "/etc/passwd")
#: seconds an answer is kept at most: accounts from LDAP or sssd change with no file to show it
MEMBERSHIP_MAX_AGE = 5.0


class Membership:
    """Who may submit, asked again as accounts change: answers are kept only while the account
    files stay the same and for MEMBERSHIP_MAX_AGE seconds at most, so that a member removed
    from the group is refused from then on (not at the daemon's next start)."""

    def __init__(self) -> None:
        self._stamp: tuple[object, ...] = ()
        self._answers: dict[tuple[int, int], bool] = {}

    def may_request(self, uid: int, spool_gid: int) -> bool:
        """Root, the daemon's own user and members of the spool's group may send requests."""
        if uid in (0, _OWN_UID):
            return True
        stamp = _accounts_stamp()
        if stamp != self._stamp:
            self._stamp, self._answers = stamp, {}
        answer = self._answers.get((uid, spool_gid))
        if answer is None:
            answer = self._answers[uid, spool_gid] = _is_member(uid, spool_gid)
        return answer


_OWN_UID = os.getuid()


def _accounts_stamp() -> tuple[object, ...]:
    stamp: list[object] = [int(time.monotonic() // MEMBERSHIP_MAX_AGE)]
    for path in ACCOUNT_FILES:
        try:
            st = os.stat(path)
            stamp.append((st.st_ino, st.st_mtime_ns, st.st_size))
        except OSError:
            stamp.append(None)
    return tuple(stamp)


def _is_member(uid: int, spool_gid: int) -> bool:
    try:
        user = pwd.getpwuid(uid)
    except KeyError:
        return False
    if user.pw_gid == spool_gid:
        return True
    try:
        return user.pw_name in grp.getgrgid(spool_gid).gr_mem
    except KeyError:
        return False


_membership = Membership()


def may_request(uid: int, spool_gid: int) -> bool:
    """Whether `uid` may drop payloads and requests now (see Membership)."""
    return _membership.may_request(uid, spool_gid)


class Submitters:
    """The uids that may drop payloads and requests: `may_request` as a container."""

    def __init__(self, spool_gid: int) -> None:
        self.spool_gid = spool_gid

    def __contains__(self, uid: object) -> bool:
        return isinstance(uid, int) and may_request(uid, self.spool_gid)


class RequestIntake:
    """Watches control/ and applies what is dropped there."""

    chunk = 64  # requests taken between two yields to the event loop

    def __init__(
        self,
        spool: Spool,
        store: Store,
        dispatcher: Dispatcher,
        grace: Callable[[str], float] = lambda function: 10.0,
    ) -> None:
        self.spool = spool
        self.store = store
        self.dispatcher = dispatcher
        self._grace = grace
        self._gid = os.stat(spool.root).st_gid
        self.set_aside = 0  # requests moved to rejected/ (metrics)
        self._inotify: INotify | None = None
        self._scanning: asyncio.Task[None] | None = None
        self._again = False

    async def start(self) -> None:
        """Apply the requests already waiting, then watch for new ones."""
        self._inotify = INotify(nonblocking=True)
        watch = F.MOVED_TO | F.CLOSE_WRITE | F.ONLYDIR | F.DONT_FOLLOW
        self._inotify.add_watch(self.spool.control, watch)
        asyncio.get_running_loop().add_reader(self._inotify.fileno(), self._on_readable)
        await self.scan()

    def stop(self) -> None:
        """Stop watching (a request dropped from now on waits for the next start)."""
        if self._inotify is not None:
            asyncio.get_running_loop().remove_reader(self._inotify.fileno())
            self._inotify.close()
            self._inotify = None

    def _on_readable(self) -> None:
        assert self._inotify is not None
        try:
            self._inotify.read(timeout=0)
        except BlockingIOError:
            return
        self.scan_soon()

    def scan_soon(self) -> None:
        """Look at control/ again (at once, or after the pass running now)."""
        if self._scanning is not None and not self._scanning.done():
            self._again = True
            return
        self._scanning = asyncio.get_running_loop().create_task(self.scan())

    async def scan(self) -> None:
        """Take every request in control/, oldest name first; return once they are answered."""
        while True:
            self._again = False
            try:
                names = sorted(n for n in self._list() if not is_ignored(n))
            except OSError as exc:
                log.error("cannot list %s: %s", self.spool.control, exc)
                return
            if names:
                await self._take_all(names)
            if not self._again:
                return

    def _list(self) -> list[str]:
        fd = _open_control(self.spool)
        try:
            return os.listdir(fd)
        finally:
            os.close(fd)

    async def _take_all(self, names: list[str]) -> None:
        # in chunks: a flood of requests must not hold the event loop (and ingestion) for long
        for start in range(0, len(names), self.chunk):
            await self._take_chunk(names[start : start + self.chunk])

    async def _take_chunk(self, names: list[str]) -> None:
        try:
            fd = _open_control(self.spool)
        except OSError as exc:
            log.error("cannot open %s: %s", self.spool.control, exc)
            return
        try:
            answered = [(name, st) for name in names if (st := self._take(fd, name))]
            await self.store.sync()  # answers are durable before the requests go
            for name, st in answered:
                # only the file answered: one renamed over it meanwhile is a new request
                with contextlib.suppress(FileNotFoundError):  # removed by hand meanwhile
                    if not unlink_if_same(fd, name, st):
                        self.scan_soon()
            os.fsync(fd)
        finally:
            os.close(fd)

    def _take(self, dir_fd: int, name: str) -> os.stat_result | None:
        """Read, apply and answer one request; the file's stat, or None when it was not there
        to take or was set aside."""
        uid: int | None = None
        try:
            data, st = safe_read(dir_fd, name, MAX_REQUEST_BYTES, None)
            uid = st.st_uid
            if not may_request(uid, self._gid):
                raise Rejection("owner", f"uid {uid} is not in the spool's group")
            request = self._decode(data)
        except FileNotFoundError:
            return None
        except (Rejection, OSError) as exc:
            why = exc if isinstance(exc, Rejection) else Rejection("unreadable", str(exc))
            self._set_aside(dir_fd, name, why, uid)
            return None
        for target, answer in self._apply(request, uid):
            self._answer(request, name, uid, target, answer)
        return st

    def _decode(self, data: bytes) -> ControlRequest:
        if too_deep(data, MAX_DEPTH):
            raise Rejection("too_deep", f"nested deeper than {MAX_DEPTH} levels")
        try:
            request = control.DECODER.decode(data)
        except (msgspec.DecodeError, RecursionError, UnicodeDecodeError) as exc:
            raise Rejection("bad_request", f"not a control request: {exc}") from None
        key = duplicate_key(data, msgspec.json.decode(data))  # small: decoding twice is cheap
        if key is not None:
            raise Rejection("duplicate_key", f"key {printable(key)!r} appears twice in one object")
        try:
            control.check_ids(request)
        except BadId as exc:
            raise Rejection("bad_id", str(exc)) from None
        if len(control.targets(request)) > control.MAX_IDS:
            raise Rejection("too_many_ids", f"more than {control.MAX_IDS} ids in one request")
        return request

    def _set_aside(self, dir_fd: int, name: str, why: Rejection, uid: int | None) -> None:
        try:
            reject(self.spool, dir_fd, name, why, f"control/{name}")
        except OSError as exc:
            log.error("cannot set aside control/%s: %s", printable(name), exc)
            return
        self.set_aside += 1
        outcome, message = control.REFUSED, why.message
        self.store.note(
            Request(
                at=time.time(),
                action="invalid",
                id="",
                uid=uid,
                name=name,
                outcome=outcome,
                message=message,
            )
        )

    # -- applying -------------------------------------------------------------------------

    def _apply(self, request: ControlRequest, uid: int | None) -> list[tuple[str, Answer]]:
        """The answer for each event (or function) the request names."""
        if isinstance(request, ForgetRequest):
            return self._forget(control.targets(request), uid)
        return [(t, self._apply_one(request, t, uid)) for t in control.targets(request)]

    def _apply_one(self, request: ControlRequest, target: str, uid: int | None) -> Answer:
        try:
            match request:
                case StopRequest(graceful=graceful):
                    grace = self._grace(self._function_of(target))
                    message = self.dispatcher.stop(target, graceful=graceful, grace=grace)
                    return Answer(outcome=control.APPLIED, message=message)
                case ReinvokeRequest():
                    return self._reinvoke(request, uid)
                case PauseRequest(function=function):
                    return Answer(outcome=control.APPLIED, message=self.dispatcher.pause(function))
                case ResumeRequest(function=function):
                    return Answer(outcome=control.APPLIED, message=self.dispatcher.resume(function))
        except Refused as exc:
            return _refused(exc)
        raise AssertionError(f"unhandled request {request!r}")

    def _forget(self, ids: tuple[str, ...], uid: int | None) -> list[tuple[str, Answer]]:
        """Forget the ended events among `ids` that `uid` may forget, with one record; refuse
        the others."""
        answers: dict[str, Answer] = {}
        chosen: dict[str, Event] = {}
        for rid in ids:
            event = chosen.get(rid) or self.store.get(rid)
            state = event.state if event is not None else None
            owes = event is not None and self.store.needs_delivery(event)
            try:
                submitter = event.source.uid if event is not None and event.source else None
                refuse_if(
                    forget_refusal(
                        rid,
                        state,
                        owes_record=owes,
                        asker=uid,
                        submitter=submitter,
                        administrator=_OWN_UID,
                    )
                )
            except Refused as exc:
                answers[rid] = _refused(exc)
                continue
            assert event is not None
            chosen[rid] = event
            answers[rid] = Answer(outcome=control.APPLIED, message="forgotten")
        if chosen:
            self.store.forget(list(chosen.values()))
            log.info("%d events forgotten", len(chosen))
        return [(rid, answers[rid]) for rid in dict.fromkeys(ids)]

    def _function_of(self, request_id: str) -> str:
        event = self.store.get(request_id)
        return event.function if event is not None else ""

    def _reinvoke(self, request: ReinvokeRequest, uid: int | None) -> Answer:
        old = self.store.get(request.id)
        refuse_if(reinvoke_refusal(request.id, old.state if old is not None else None))
        assert old is not None
        payload = request.payload if has_raw(request.payload) else old.payload
        source = Source(via="reinvoke", uid=uid)
        [event] = self.dispatcher.enqueue(
            [NewEvent(old.function, payload, request.new_id, source, retry_of=old.id)]
        )
        if event is None:
            raise Refused(f"id {request.new_id!r} is already used by another event")
        log.info("event %s re-invoked as %s", old.id, event.id)
        return Answer(outcome=control.APPLIED, message=f"re-invoked as {event.id}", new_id=event.id)

    def _answer(
        self, request: ControlRequest, name: str, uid: int | None, rid: str, a: Answer
    ) -> None:
        graceful = request.graceful if isinstance(request, StopRequest) else False
        action = _ACTIONS[type(request)]
        match request:
            case PauseRequest(function=function) | ResumeRequest(function=function):
                what = printable(function or "all")
            case _:
                function, what = None, rid
        self.store.note(
            Request(
                at=time.time(),
                action=action,
                id=rid,
                uid=uid,
                graceful=graceful,
                outcome=a.outcome,
                name=name,
                message=a.message,
                new_id=a.new_id,
                function=function,
            )
        )
        log.info("control/%s: %s %s by uid %s: %s", printable(name), action, what, uid, a.message)


_ACTIONS: dict[type, str] = {
    StopRequest: "stop",
    ReinvokeRequest: "reinvoke",
    ForgetRequest: "forget",
    PauseRequest: "pause",
    ResumeRequest: "resume",
}


def _refused(exc: Refused) -> Answer:
    return Answer(outcome=control.REFUSED, message=str(exc))


def _open_control(spool: Spool) -> int:
    """control/ itself: one swapped for a link is refused (ELOOP), never followed."""
    return os.open(spool.control, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
