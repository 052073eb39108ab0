"""The ingestor: watch incoming/ (inotify wake-ups, full scans), validate, journal, unlink.

Invariant I1, per batch: the sink journals every accepted file durably, then the files are
unlinked, then each affected directory is fsynced once. A crash anywhere leaves a file that is
either not journaled (taken again) or journaled with the same identity (removed on restart).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import stat
import time
from collections.abc import Callable, Container
from pathlib import Path
from typing import Protocol

import msgspec
from inotify_simple import INotify
from inotify_simple import flags as F

from daemon.model import Source
from daemon.payload import (
    INCOMPLETE,
    Accepted,
    Settling,
    check_function_name,
    check_name,
    decode,
    is_ignored,
)
from daemon.spool import (
    ASIDE_PREFIX,
    DirFds,
    FileId,
    Key,
    Rejection,
    Spool,
    incoming_name,
    reject,
    remove_journaled,
    safe_read,
    same_file,
)
from daemon.text import printable

__all__ = ["Accepted", "IngestSink", "IngestStats", "Ingestor"]

#: unlinks journaled files still there, fsyncs their folders; the keys it could not remove
Remover = Callable[[Path, list[tuple[Key, FileId]]], set[Key]]

log = logging.getLogger(__name__)


_WATCH_ROOT = F.MOVED_TO | F.CLOSE_WRITE | F.CREATE | F.ONLYDIR | F.DONT_FOLLOW
_WATCH_SUB = _WATCH_ROOT | F.MOVE_SELF

# how much an event said about a file: it may still be written, its writer closed it, or it was
# renamed in whole; a file written in place is only taken once closed or quiet (see _examine)
_SEEN, _CLOSED, _RENAMED = 0, 1, 2


class IngestSink(Protocol):
    """What the ingestor needs from the daemon."""

    def function_exists(self, name: str) -> bool:
        """Whether a function of that name is defined."""
        ...

    def already_journaled(self, source: Source) -> bool:
        """Whether a file of that path and identity was journaled (a crash before its unlink)."""
        ...

    async def accept(self, batch: list[Accepted]) -> list[str | None]:
        """Journal the batch durably; per item its request id, or None when its id is taken."""
        ...


class IngestStats(msgspec.Struct, kw_only=True):
    """Counters for status and metrics."""

    accepted: int = 0
    rejected: int = 0
    recovered: int = 0  # already journaled before a crash: unlinked, not enqueued again
    batches: int = 0


class _Batch:
    """One batch: its directory descriptors, the files to accept and the files to unlink."""

    def __init__(self, incoming: os.PathLike[str]) -> None:
        self.dirs = DirFds(incoming)
        self.found: list[tuple[Key, os.stat_result, Accepted]] = []
        self.done: list[tuple[Key, os.stat_result]] = []
        self.in_place: set[Key] = set()  # found, and written in place (not renamed in)

    def still_there(self, key: Key, st: os.stat_result) -> bool:
        try:
            return same_file(self.dirs.get(key[0]), key[1], st)
        except OSError:
            return False


class Ingestor:
    """Takes payload files from incoming/ into the journal through an IngestSink."""

    max_batch = 1024  # files per accept() call: bounds how long one batch holds the loop

    def __init__(
        self,
        spool: Spool,
        sink: IngestSink,
        *,
        max_bytes: int = 1 << 20,
        max_depth: int = 64,
        settle: float = 2.0,
        scan_interval: float = 5.0,
        allowed_uids: Container[int] | None = None,
        on_fatal: Callable[[BaseException], None] | None = None,
        remove: Remover = remove_journaled,
    ) -> None:
        self.spool = spool
        self.sink = sink
        self.max_bytes = max_bytes
        self.max_depth = max_depth
        self.settle = settle
        self.scan_interval = scan_interval
        self.allowed_uids = allowed_uids
        self.on_fatal = on_fatal
        self._remove = remove  # in a worker thread: unlinks journaled files, fsyncs folders
        self.stats = IngestStats()
        self.failed: BaseException | None = None
        self._pending: dict[Key, int] = {}  # -> _SEEN, _CLOSED or _RENAMED
        self._inflight: set[Key] = set()
        self._settling: Settling[Key] = Settling(settle)
        self._wds: dict[int, str] = {}
        self._watched: dict[str, int] = {}
        self._inotify: INotify | None = None
        self._drainer: asyncio.Task[None] | None = None
        self._syncer: asyncio.Task[None] | None = None
        self._removing: list[tuple[Key, FileId]] = []  # journaled, not yet unlinked
        # a file whose identity is journaled is one already taken only if it was there at
        # start-up (a crash's leftover) or its removal failed in this run; any other is a new
        # file reusing a freed inode with the same size and mtime (`cp -p`, tar, rsync -t)
        self._starting = True
        self._unremoved: set[tuple[object, ...]] = set()
        # files written in place, journaled: (device, inode, request id) until they are gone; one
        # still there changed after it was read (appended to): set aside, never a second event
        self._taken: dict[Key, tuple[int, int, str]] = {}
        self._scan_timer: asyncio.TimerHandle | None = None
        self._stopping = False

    # -- life cycle -----------------------------------------------------------------------

    async def start(self) -> None:
        """Watch incoming/ and take every file already there; returns after that first scan."""
        self._recover_removals()
        self._inotify = INotify(nonblocking=True)
        asyncio.get_running_loop().add_reader(self._inotify.fileno(), self._on_readable)
        await self.scan()
        self._starting = False
        self._schedule_scan()

    def _recover_removals(self) -> None:
        """A crash between moving a journaled file aside and deleting it (spool.unlink_if_same)
        leaves it hidden: delete it when it is journaled, else it is a payload renamed over the
        journaled one in that instant, brought back under a visible name to be taken."""
        try:
            dirs = DirFds(self.spool.incoming)
        except OSError:
            return
        try:
            for dirname in ["", *(n for n in os.listdir(dirs.root) if not is_ignored(n))]:
                with contextlib.suppress(OSError):  # a file, not a directory; or gone
                    for name in os.listdir(dirs.get(dirname)):
                        if name.startswith(ASIDE_PREFIX):
                            self._recover_one(dirs.get(dirname), dirname, name)
        finally:
            dirs.close()

    def _recover_one(self, dir_fd: int, dirname: str, name: str) -> None:
        st = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
        source = Source(device=st.st_dev, inode=st.st_ino, size=st.st_size, mtime_ns=st.st_mtime_ns)
        if self.sink.already_journaled(source):
            os.unlink(name, dir_fd=dir_fd)
            log.info(
                "removed incoming/%s, journaled before a crash",
                printable(incoming_name(dirname, name)),
            )
            return
        visible = f"recovered-{st.st_ino}-{time.time_ns()}.json"
        os.rename(name, visible, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
        self._add((dirname, visible), complete=True)  # it was renamed in whole
        log.warning(
            "incoming/%s was being set aside at a crash and is not journaled: taken as %s",
            printable(incoming_name(dirname, name)),
            visible,
        )

    async def stop(self) -> None:
        """Stop taking files; wait for the batch in flight to be journaled and unlinked."""
        self._stopping = True
        if self._scan_timer is not None:
            self._scan_timer.cancel()
        self._settling.clear()
        if self._inotify is not None:
            asyncio.get_running_loop().remove_reader(self._inotify.fileno())
            self._inotify.close()
            self._inotify = None
        if self._drainer is not None:
            await asyncio.shield(self._drainer)
        await self._synced()

    async def scan(self) -> None:
        """One full pass over incoming/; returns when every file found has been handled."""
        self._collect_all()
        self._kick()
        while self._drainer is not None and not self._drainer.done():
            await asyncio.shield(self._drainer)
        await self._synced()

    # -- finding files: inotify says where to look, scans are the truth -------------------

    def _schedule_scan(self) -> None:
        if not self._stopping:
            loop = asyncio.get_running_loop()
            self._scan_timer = loop.call_later(self.scan_interval, self._periodic_scan)

    def _periodic_scan(self) -> None:
        self._collect_all()
        self._kick()
        self._schedule_scan()

    def _collect_all(self, *, closed: bool = False) -> None:
        if self._stopping:
            return
        self._watch("")  # again if incoming/ was replaced
        self._collect_dir("", closed=closed or self._starting)

    def _collect_dir(self, dirname: str, *, closed: bool = False) -> None:
        """Queue every file in incoming/`dirname`; `closed`: take each at once if it parses
        (at start-up, most likely written while no daemon ran; after an overflow, when the
        events that said so are lost), else once unchanged for the settle time."""
        try:
            dirs = DirFds(self.spool.incoming)
            try:
                with os.scandir(dirs.get(dirname)) as it:
                    entries = [(e.name, e.is_dir(follow_symlinks=False)) for e in it]
            finally:
                dirs.close()
        except OSError as exc:
            log.error("cannot list incoming/%s: %s", printable(dirname), exc)
            return
        for name, is_dir in entries:
            if is_ignored(name):
                continue
            if not dirname and is_dir:
                self._watch(name)  # watch first, then list: nothing falls in between
                self._collect_dir(name, closed=closed)
            else:
                self._add((dirname, name), complete=False, closed=closed)

    def _watch(self, dirname: str) -> None:
        if self._inotify is None or dirname in self._watched:
            return
        path = self.spool.incoming / dirname if dirname else self.spool.incoming
        try:
            wd = self._inotify.add_watch(path, _WATCH_SUB if dirname else _WATCH_ROOT)
        except OSError as exc:  # e.g. out of watches: the periodic scan still finds files
            log.warning("cannot watch %s: %s", printable(str(path)), exc)
            return
        self._wds[wd] = dirname
        self._watched[dirname] = wd

    def _on_readable(self) -> None:
        if self._inotify is None:
            return
        try:
            events = self._inotify.read(timeout=0)
        except BlockingIOError:
            return
        for event in events:
            self._on_event(event.wd, event.mask, event.name)
        self._kick()

    def _on_event(self, wd: int, mask: int, name: str) -> None:
        if mask & F.Q_OVERFLOW:
            log.warning("inotify queue overflowed: rescanning incoming/")
            self._collect_all(closed=True)
            return
        dirname = self._wds.get(wd)
        if dirname is None:
            return
        if mask & (F.IGNORED | F.MOVE_SELF):  # removed, or moved away: its events lie now
            self._forget_watch(wd, rm=bool(mask & F.MOVE_SELF))
        elif not name or is_ignored(name):
            pass
        elif not dirname and mask & F.ISDIR:
            self._watch(name)
            self._collect_dir(name)
        else:
            self._add(
                (dirname, name),
                complete=bool(mask & F.MOVED_TO),
                closed=bool(mask & F.CLOSE_WRITE),
            )

    def _forget_watch(self, wd: int, *, rm: bool) -> None:
        if rm and self._inotify is not None:
            with contextlib.suppress(OSError):  # already gone
                self._inotify.rm_watch(wd)
        dirname = self._wds.pop(wd, None)
        if dirname is not None and self._watched.get(dirname) == wd:
            del self._watched[dirname]

    def _add(self, key: Key, *, complete: bool, closed: bool = False) -> None:
        if not self._stopping:
            level = _RENAMED if complete else _CLOSED if closed else _SEEN
            self._pending[key] = max(self._pending.get(key, _SEEN), level)

    # -- batches --------------------------------------------------------------------------

    def _kick(self) -> None:
        if self._pending and not self._stopping and (self._drainer is None or self._drainer.done()):
            self._drainer = asyncio.get_running_loop().create_task(self._drain())

    async def _drain(self) -> None:
        # the only drainer, and a batch is taken whole: no file is ever read twice at once
        while self._pending and not self._stopping:
            batch = self._take_batch()
            if not batch:
                return  # all of it is being unlinked: taken again once that is done
            self._inflight.update(batch)
            removing: set[Key] = set()
            try:
                removing = await self._process(batch)
            except Exception:
                log.exception("unexpected error in an ingestion batch")
            finally:  # files waiting to be unlinked stay in flight until they are gone
                self._inflight.difference_update(batch.keys() - removing)

    def _take_batch(self) -> dict[Key, int]:
        batch: dict[Key, int] = {}
        for key, level in self._pending.items():
            if key not in self._inflight:
                batch[key] = level
                if len(batch) >= self.max_batch:
                    break
        for key in batch:
            del self._pending[key]
        return batch

    async def _process(self, keys: dict[Key, int]) -> set[Key]:
        """Examine and journal one batch; return the keys handed over for unlinking."""
        try:
            batch = _Batch(self.spool.incoming)
        except OSError as exc:
            log.error("cannot open %s: %s", self.spool.incoming, exc)
            return set()
        try:
            for key, level in keys.items():
                self._examine_one(batch, key, level)
            if batch.found and not await self._accept(batch):
                return set()  # the journal failed: unlink nothing, take nothing more
            self._removing += [(key, FileId.of(st)) for key, st in batch.done]
            self._remove_soon()
            self.stats.batches += 1
            return {key for key, _ in batch.done}
        finally:
            batch.dirs.close()

    def _remove_soon(self) -> None:
        # off the loop: the next batch is read and journaled while these are unlinked
        if self._removing and (self._syncer is None or self._syncer.done()):
            self._syncer = asyncio.get_running_loop().create_task(self._remove_journaled())

    async def _remove_journaled(self) -> None:
        while self._removing:
            files, self._removing = self._removing, []
            try:
                try:
                    failed = await asyncio.to_thread(self._remove, self.spool.incoming, files)
                except Exception:
                    log.exception("removing journaled files from incoming/ failed")
                    failed = {key for key, _ in files}
                await self._forget_removed([key for key, _ in files])
                for key, st in files:
                    if key in failed:
                        self._unremoved.add(_identity(key, st))
                    elif self._unremoved:
                        self._unremoved.discard(_identity(key, st))
            finally:
                self._inflight.difference_update(key for key, _ in files)
                self._kick()

    async def _forget_removed(self, keys: list[Key]) -> None:
        """Stop following the files written in place that their removal took away."""
        taken = [(key, self._taken[key]) for key in keys if key in self._taken]
        if taken:
            kept = await asyncio.to_thread(_still_there, self.spool.incoming, taken)
            for key, _ in taken:
                if key not in kept:
                    self._taken.pop(key, None)

    def _taken_before(self, key: Key, st: os.stat_result) -> bool:
        """Whether a file with a journaled identity is the one taken (see _starting)."""
        return self._starting or _identity(key, st) in self._unremoved

    async def _synced(self) -> None:
        """Wait until every unlink so far is fsynced."""
        while self._syncer is not None and not self._syncer.done():
            await asyncio.shield(self._syncer)

    async def _accept(self, batch: _Batch) -> bool:
        """Journal the batch; False (and stop) when the journal failed."""
        try:
            ids = await self.sink.accept([item for _, _, item in batch.found])
            if len(ids) != len(batch.found):
                raise RuntimeError(f"accept() gave {len(ids)} ids for {len(batch.found)} files")
        except Exception as exc:
            self._fail(exc)
            return False
        for (key, st, item), request_id in zip(batch.found, ids, strict=True):
            if request_id is not None:
                batch.done.append((key, st))
                if key in batch.in_place:
                    self._taken[key] = (st.st_dev, st.st_ino, request_id)
                self.stats.accepted += 1
                log.debug("accepted %s as %s", item.source.path, request_id)
            elif batch.still_there(key, st):
                why = Rejection("duplicate_id", f"id {item.id!r} was already used by another event")
                self._reject(batch, key, why)
        return True

    def _fail(self, exc: BaseException) -> None:
        log.critical("ingestion stopped: the journal failed: %r", exc)
        self.failed = exc
        self._stopping = True
        if self.on_fatal is not None:
            self.on_fatal(exc)

    # -- one file -------------------------------------------------------------------------

    def _examine_one(self, batch: _Batch, key: Key, level: int) -> None:
        try:
            outcome = self._examine(batch.dirs, key, level)
        except (FileNotFoundError, NotADirectoryError):
            self._settling.forget(key)  # gone, or its directory is: nothing to do
            return
        except Rejection as why:
            if why.code == "not_regular" and not key[0] and self._is_dir(batch, key[1]):
                self._watch(key[1])  # a directory now: a function's drop folder, never rejected
                self._collect_dir(key[1])
            else:
                self._reject(batch, key, why)
            return
        except Exception:
            log.exception("unexpected error on incoming/%s", printable(incoming_name(*key)))
            self._reject(batch, key, Rejection("internal", "an internal error; see the daemon log"))
            return
        if outcome is None:
            return
        self._settling.forget(key)
        st, item = outcome
        if item is None:
            self.stats.recovered += 1
            batch.done.append((key, st))
        else:
            batch.found.append((key, st, item))
            if level < _RENAMED:
                batch.in_place.add(key)

    def _examine(
        self, dirs: DirFds, key: Key, level: int
    ) -> tuple[os.stat_result, Accepted | None] | None:
        """Validate one file: (stat, Accepted), (stat, None) if already journaled, None to wait."""
        dirname, name = key
        # the file's type first: a nested directory is `not_regular` whatever its name
        data, st = safe_read(dirs.get(dirname), name, self.max_bytes, self.allowed_uids)
        self._check_not_taken(key, st)
        check_name(name)
        if dirname:
            self._check_function(dirname)
        source = _source(key, st)
        if self.sink.already_journaled(source) and self._taken_before(key, st):
            return st, None
        try:
            item = decode(data, dirname or None, source, self.max_depth)
        except Rejection as why:
            if why.code in INCOMPLETE and level < _RENAMED and not self._settled(key, st):
                return None
            raise
        # a prefix of a payload may parse ("12" of "1234"): one still being written waits
        if level == _SEEN and not self._settled(key, st):
            return None
        if not dirname:
            self._check_function(item.function)
        return st, item

    def _settled(self, key: Key, st: os.stat_result) -> bool:
        """Whether a file written in place has not changed for the settle time (a file last
        modified that long ago counts at once: one left from before a restart)."""
        if time.time_ns() - st.st_mtime_ns >= self.settle * 1e9:
            return True
        return self._settling.settled(key, st, self._recheck)

    def _check_not_taken(self, key: Key, st: os.stat_result) -> None:
        """Raise Rejection `changed_after_taken` when `key` is a file written in place that is
        journaled already and was written to after it was read."""
        taken = self._taken.get(key)
        if taken is None:
            return
        device, inode, request_id = taken
        if (st.st_dev, st.st_ino) != (device, inode):
            del self._taken[key]  # another file now: the taken one is gone
            return
        if self.sink.already_journaled(_source(key, st)):
            return  # unchanged: the journaled file, not removed yet
        del self._taken[key]
        raise Rejection(
            "changed_after_taken",
            f"written to after it was taken as event {request_id}: the file as it is now is"
            " not a second event (write in tmp/ or a .tmp name, then rename it in)",
        )

    def _recheck(self, key: Key) -> None:
        self._add(key, complete=False)
        self._kick()

    @staticmethod
    def _is_dir(batch: _Batch, name: str) -> bool:
        try:
            return stat.S_ISDIR(
                os.stat(name, dir_fd=batch.dirs.root, follow_symlinks=False).st_mode
            )
        except OSError:
            return False

    def _check_function(self, name: str) -> None:
        check_function_name(name)
        if not self.sink.function_exists(name):
            raise Rejection("unknown_function", f"no function named {name!r} is defined")

    def _reject(self, batch: _Batch, key: Key, why: Rejection) -> None:
        self._settling.forget(key)
        relpath = f"incoming/{incoming_name(*key)}"
        try:
            reject(self.spool, batch.dirs.get(key[0]), key[1], why, relpath)
            self.stats.rejected += 1
        except FileNotFoundError:
            pass
        except OSError as exc:
            log.error("cannot reject %s (%s): %s", printable(relpath), why.code, exc)


def _still_there(incoming: Path, files: list[tuple[Key, tuple[int, int, str]]]) -> set[Key]:
    """The keys whose file is still the inode given (kept by their removal: changed since)."""
    kept: set[Key] = set()
    try:
        dirs = DirFds(incoming)
    except OSError:
        return {key for key, _ in files}
    try:
        for key, (device, inode, _) in files:
            with contextlib.suppress(OSError):
                st = os.stat(key[1], dir_fd=dirs.get(key[0]), follow_symlinks=False)
                if (st.st_dev, st.st_ino) == (device, inode):
                    kept.add(key)
    finally:
        dirs.close()
    return kept


def _source(key: Key, st: os.stat_result) -> Source:
    """The Source the sink journals for the file at `key` as `st` describes it."""
    return Source(
        path=f"incoming/{incoming_name(*key)}",
        device=st.st_dev,
        inode=st.st_ino,
        size=st.st_size,
        mtime_ns=st.st_mtime_ns,
        uid=st.st_uid,
    )


def _identity(key: Key, st: os.stat_result | FileId) -> tuple[object, ...]:
    """The identity the store keeps for the file at `key` (see Store.already_journaled)."""
    path = f"incoming/{incoming_name(*key)}"
    return (path, st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)
