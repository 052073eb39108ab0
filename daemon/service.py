"""The daemon: ordered start-up, the periodic chores, signals, and a graceful shutdown."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import os
import signal
import time

import msgspec

from daemon import heartbeat, lock, trust, users
from daemon.destinations import Destinations
from daemon.dispatcher import Dispatcher, NewEvent
from daemon.files.filehelper import FileHelper
from daemon.files.logfiles import EventLogs
from daemon.functions import Catalog, Definitions, FunctionDef, keep_last_good, load_catalog
from daemon.indexing import Indexing
from daemon.ingest import Accepted, Ingestor
from daemon.journal_writer import JournalFailed, JournalWriter, recover
from daemon.metrics import FileCounts
from daemon.model import Source
from daemon.notify import Notifier, install_stuck_loop_knob
from daemon.pool import InstanceFactory
from daemon.requests import RequestIntake, Submitters
from daemon.runfiles import RunFiles
from daemon.runtimes.exec import ExecInstance
from daemon.runtimes.http import HttpInstance
from daemon.runtimes.python import PythonInstance
from daemon.runtimes.ray_engine import RayEngine, namespace_of, ray_address
from daemon.runtimes.ray_instance import RayInstance, by_placement
from daemon.spool import Spool
from daemon.store import Store
from daemon.supervise.supervisor import Supervisor
from daemon.supervise.tokens import spool_mark

log = logging.getLogger(__name__)


class Settings(msgspec.Struct, kw_only=True):
    """Daemon knobs (command-line options and environment)."""

    drain_timeout: float = 30.0
    max_payload_bytes: int = 1 << 20
    retention: float = 3 * 86400.0
    segment_bytes: int = 64 << 20
    snapshot_every: int = 200_000  # records between snapshots
    snapshot_interval: float = 3600.0  # and at least this often while anything happens
    heartbeat: float = 1.0
    scan_interval: float = 5.0
    settle: float = 2.0
    run_as: str = ""  # the user of every function that names none ("": the daemon's own)
    ray_address: str = ""  # the Ray cluster of functions placed on Ray ("": from the environment)


class Daemon:
    """One daemon serving one spool."""

    def __init__(self, spool: Spool, settings: Settings | None = None) -> None:
        self.spool = spool
        self.settings = settings or Settings()
        self.definitions = Definitions()
        self._definition_stamp: dict[str, tuple[int, int]] = {}
        self.implicit_root: list[str] = []  # functions run as root only because none says who
        self.user = users.name_of(os.geteuid())  # who the daemon runs as
        self._stop = asyncio.Event()
        self._fatal: BaseException | None = None
        self.started_at = time.time()
        self.ready = False
        # systemd (Type=notify): READY, STATUS, RELOADING, STOPPING and the watchdog
        self.notifier = Notifier()
        self.files = FileHelper()  # event logs and removals from incoming/, out of the process
        self.indexing = Indexing(spool.journal)  # the event index, out of the process
        self.run_files = RunFiles(spool.run)  # status.json and metrics.prom
        self.reloads = 0  # SIGHUP reloads done; `fnspool systemd reload` waits on it
        self._starting = True
        self._sighup_while_starting = False
        self._compaction: asyncio.Task[None] | None = None

    @property
    def catalog(self) -> Catalog:
        """The definitions in force, with the errors of the files that have some."""
        return self.definitions.catalog

    # -- the ingestor's sink --------------------------------------------------------------

    def function_exists(self, name: str) -> bool:
        """Whether a valid definition for `name` is loaded."""
        return name in self.catalog.functions

    def already_journaled(self, source: Source) -> bool:
        """Whether that incoming file was accepted before a crash."""
        return self.store.already_journaled(source)

    async def accept(self, batch: list[Accepted]) -> list[str | None]:
        """Journal a batch of incoming files as Enqueued; queue them once that is durable."""
        taken = self.store.taken([item.id for item in batch if item.id is not None])
        fresh = [item for item in batch if item.id not in taken]
        now = time.time()
        events = iter(
            self.dispatcher.enqueue(
                [
                    NewEvent(
                        item.function,
                        item.payload,
                        request_id=item.id,
                        source=item.source,
                        not_before=now + item.delay if item.delay else None,
                    )
                    for item in fresh
                ],
                checked=True,
            )
        )
        await self.store.sync()  # the files may be removed once their events are on disk
        accepted = [None if item.id in taken else next(events) for item in batch]
        return [e.id if e is not None else None for e in accepted]

    def _enqueue_destination(
        self, function: str, payload: msgspec.Raw, request_id: str, source: Source
    ) -> bool:
        """Enqueue a destination record as an event of `function` (once: the id is derived)."""
        [event] = self.dispatcher.enqueue([NewEvent(function, payload, request_id, source)])
        return event is not None

    def _stop_grace(self, function: str) -> float:
        definition = self.catalog.functions.get(function)
        return definition.stop_grace if definition is not None else 10.0

    # -- life cycle -----------------------------------------------------------------------

    async def run(self) -> int:
        """Serve until SIGTERM/SIGINT; return the exit status."""
        # first: a stop asked for while starting (`systemctl stop` during activation) is a clean
        # shutdown once started, not the default death by signal
        self._install_signals()
        # what the daemon writes (journal, logs, records, status) is for its user and group only,
        # whatever umask it was started with; its instances inherit this one
        os.umask(0o027)
        self.spool.create()
        self.spool.check_modes()
        lock_fd = lock.acquire(self.spool.run)
        try:
            await self._start()
            await self._stop.wait()
            await self._shutdown()
        finally:
            lock.release(self.spool.run, lock_fd)
        return 1 if self._fatal else 0

    async def _start(self) -> None:
        # the one supervisor: every child below (helpers, instances) is spawned through it
        self.supervisor = Supervisor.take_over(spool_mark(self.spool.root))
        root = os.stat(self.spool.root)
        state = recover(self.spool.journal)
        for damage in state.damages:
            log.error(
                "journal damage: %s at offset %d: %s", damage.path, damage.offset, damage.reason
            )
        self.files.start(self.supervisor)
        self.indexing.start(self.supervisor)
        writer = JournalWriter(
            self.spool.journal,
            state.last_seq + 1,
            segment_bytes=self.settings.segment_bytes,
            on_fatal=self._on_fatal,
            write_logs=self.files.append,
        )
        self.store = Store(writer, state, self.spool.logs)
        logs = EventLogs(writer.write_log)
        local: dict[str, InstanceFactory] = {
            "python": functools.partial(PythonInstance, logs=logs, supervisor=self.supervisor),
            "http": functools.partial(HttpInstance, logs=logs, supervisor=self.supervisor),
            "exec": functools.partial(ExecInstance, logs=logs, supervisor=self.supervisor),
        }
        # instances of functions placed on Ray: the cluster is reached at the first one's start
        self.ray = RayEngine(ray_address(self.settings.ray_address), namespace_of(self.spool.root))
        remote = functools.partial(RayInstance, engine=self.ray, logs=logs)
        factories = {name: by_placement(f, remote) for name, f in local.items()}
        self.destinations = Destinations(
            self.spool.root,
            self.definitions,
            self.store.sync,
            self._enqueue_destination,
            self.store.mark_delivered,
            self.store.mark_delivery_failed,
        )
        self.dispatcher = Dispatcher(
            self.store,
            self.definitions,
            factories,
            self.spool.logs,
            on_ended=self.destinations.ended,
            log_sink=logs,
            held=self._held,
        )
        self.ray.on_change = self._cluster_changed
        self.store.needs_delivery = self.destinations.owes
        self._reload_definitions()
        self.dispatcher.recover()
        self.destinations.recover(list(self.store.events.values()))
        with contextlib.suppress(JournalFailed):  # a full disk: the writer stops the daemon
            await self.store.sync()
        self.requests = RequestIntake(self.spool, self.store, self.dispatcher, self._stop_grace)
        await self.requests.start()
        self.ingestor = Ingestor(
            self.spool,
            self,
            max_bytes=self.settings.max_payload_bytes,
            settle=self.settings.settle,
            scan_interval=self.settings.scan_interval,
            allowed_uids=Submitters(root.st_gid),
            remove=self.files.remove,
        )
        await self.ingestor.start()
        self.store.starting = False  # files found from now on are new ones
        self._chores = asyncio.get_running_loop().create_task(self._run_chores())
        self._watchdog = asyncio.get_running_loop().create_task(self.notifier.run_watchdog())
        self._starting = False
        if self._fatal is not None or self._stop.is_set():
            return  # the journal failed while starting (a full disk), or asked to stop: not ready
        if self._sighup_while_starting:
            self._on_sighup()
        self.ready = True
        self.write_status()
        self.notifier.ready(self._status_line())
        log.info(
            "fnspool daemon ready on %s (pid %d): %d events retained, %d functions",
            self.spool.root,
            os.getpid(),
            len(self.store.events),
            len(self.catalog.functions),
        )

    def _install_signals(self) -> None:
        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGTERM, self.request_stop, "SIGTERM")
        loop.add_signal_handler(signal.SIGINT, self.request_stop, "SIGINT")
        loop.add_signal_handler(signal.SIGHUP, self._on_sighup)
        install_stuck_loop_knob(loop)

    def _on_sighup(self) -> None:
        """Reload the definitions, telling systemd that a reload runs (ExecReload waits on it)."""
        if self._starting:  # the definitions may be loaded already: again once started
            self._sighup_while_starting = True
            return
        self.notifier.reloading()
        log.info("SIGHUP: reloading definitions")
        self._reload_definitions()
        self.reloads += 1
        self.write_status()
        self.notifier.ready(self._status_line())

    def request_stop(self, why: str = "") -> None:
        """Begin a graceful shutdown."""
        if not self._stop.is_set():
            drain = 0.0 if self._fatal else self.settings.drain_timeout
            self.notifier.stopping(f"stopping ({why}): draining")
            log.info("%s: draining (up to %.0fs) and shutting down", why, drain)
        self._stop.set()

    def _on_fatal(self, exc: BaseException) -> None:
        self._fatal = exc
        dispatcher = getattr(self, "dispatcher", None)
        if dispatcher is not None:
            dispatcher.accepting = False  # start no attempt whose records could not be written
        self.request_stop("journal failure")

    async def _shutdown(self) -> None:
        self.ready = False
        self._chores.cancel()
        # readers see "stopping" at once, and a heartbeat while the drain lasts
        heartbeat = asyncio.get_running_loop().create_task(self._beat_while_stopping())
        await self.ingestor.stop()
        self.requests.stop()
        drain_until = time.monotonic() + self.settings.drain_timeout
        await self.dispatcher.drain(0 if self._fatal else self.settings.drain_timeout)
        await self.ray.close()
        if self._compaction is not None:
            await asyncio.gather(self._compaction, return_exceptions=True)
        if self._fatal is None:
            # records not delivered in time stay owed: the next start delivers them
            await self.destinations.flush(max(0.0, drain_until - time.monotonic()))
            await self.store.sync()
            await self.store.writer.close()
        await self.files.stop()
        await self.indexing.stop()
        await self.supervisor.release()
        heartbeat.cancel()
        self.write_status(stopped=True)
        self._watchdog.cancel()
        self.notifier.close()
        log.info("fnspool daemon stopped")

    async def _beat_while_stopping(self) -> None:
        while True:
            self.write_status()
            await asyncio.sleep(self.settings.heartbeat)

    # -- chores ---------------------------------------------------------------------------

    async def _run_chores(self) -> None:
        while True:
            await asyncio.sleep(self.settings.heartbeat)
            try:
                await self._chore_round()
            except Exception:
                log.exception("periodic chore failed")

    async def _chore_round(self) -> None:
        if self._definitions_changed():
            self._reload_definitions()
        await self.dispatcher.reap_idle()
        self.requests.scan_soon()  # inotify wakes it; this catches anything it missed
        due = self.store.compaction_due(
            self.settings.snapshot_every, self.settings.snapshot_interval
        )
        if due and (self._compaction is None or self._compaction.done()):
            # in the background: the heartbeat goes on while a snapshot is written
            self._compaction = asyncio.get_running_loop().create_task(self._compact())
        self.write_status()

    async def _compact(self) -> None:
        try:
            await self.store.compact(self.settings.retention)
        except Exception:
            log.exception("compaction failed (the journal keeps every segment meanwhile)")

    def _definitions_changed(self) -> bool:
        return self._stamp_definitions() != self._definition_stamp

    def _stamp_definitions(self) -> dict[str, tuple[int, int]]:
        stamp = {}
        for path in self.spool.functions.glob("*.toml"):
            try:
                st = path.stat()
            except OSError:
                continue
            stamp[path.name] = (st.st_mtime_ns, st.st_size)
        return stamp

    def _reload_definitions(self) -> None:
        """Load every definition again (at start, on change, on SIGHUP)."""
        self._definition_stamp = self._stamp_definitions()
        previous = self.catalog
        loaded = with_run_as(load_catalog(self.spool.functions), self.settings.run_as)
        for error in loaded.errors.values():
            log.error("function definition %s: %s", error.path, error.message)
        # a definition others may change is refused, and no last good one of it kept
        self.definitions.replace(keep_last_good(loaded, trust.screen(loaded, previous)))
        self._flag_implicit_root(previous)
        self._flag_one_at_a_time(previous)
        for name in self.catalog.functions:
            self.spool.make_drop_folder(name)
        self.dispatcher.reconcile()
        self.ray.connect_soon(self.catalog.functions.values())
        log.info(
            "definitions loaded: %s%s",
            ", ".join(sorted(self.catalog.functions)) or "none",
            f"; {len(self.catalog.errors)} with errors ({len(self.catalog.kept)} kept as they were)"
            if self.catalog.errors
            else "",
        )

    def _flag_implicit_root(self, previous: Catalog) -> None:
        """As root, name every function with no `user` (and no --run-as): it runs as root, as
        cron and pueue run root's own jobs, but never silently. One warning per function when
        its definition is loaded anew."""
        self.implicit_root = implicit_root(self.catalog)
        for name in self.implicit_root:
            if previous.functions.get(name) != self.catalog.functions[name]:
                log.warning(
                    "function %s runs as root: its definition sets no `user` and the daemon "
                    "has no --run-as",
                    name,
                )

    def _flag_one_at_a_time(self, previous: Catalog) -> None:
        """Say why a fixed-port function runs one instance at a time, once per new definition."""
        for name, d in self.catalog.functions.items():
            if d.one_at_a_time and previous.functions.get(name) != d:
                log.warning("function %s: %s", name, d.one_at_a_time)

    def write_status(self, stopped: bool = False) -> None:
        """Write run/status.json atomically: the heartbeat the CLI and the TUI read."""
        instances = {name: pool.snapshot() for name, pool in self.dispatcher.pools.items()}
        held = self._held_functions()
        beat = heartbeat.Heartbeat(
            pid=os.getpid(),
            started_at=self.started_at,
            updated_at=time.time(),
            ready=self.ready and not stopped,
            stopping=self._stop.is_set() and not stopped,
            stopped=stopped,
            queue_depth=self.dispatcher.queue_depth,
            running=self.dispatcher.running,
            events={s.value: n for s, n in self.store.retained_counts().items() if n},
            instances=instances,
            definition_errors={n: e.message for n, e in self.catalog.errors.items()},
            last_good_definitions=sorted(self.catalog.kept),
            user=self.user,
            run_as=self.settings.run_as,
            implicit_root=self.implicit_root,
            journal_damage=self.store.damages[-20:],
            reloads=self.reloads,
            paused=list(self.store.paused.functions),
            paused_all=self.store.paused.all,
            held=held,
            file_helper=heartbeat.HelperView(pid=self.files.pid, running=self.files.running),
            indexer=heartbeat.HelperView(pid=self.indexing.pid),
        )
        if stopped:  # never left saying ready: removed when it cannot be written
            self.run_files.write_or_remove(heartbeat.STATUS_NAME, heartbeat.encode(beat))
        else:
            self.run_files.write(heartbeat.STATUS_NAME, heartbeat.encode(beat))
        files = FileCounts(
            accepted=self.ingestor.stats.accepted,
            rejected=self.ingestor.stats.rejected + self.requests.set_aside,
        )
        metrics = self.dispatcher.metrics.render(
            self.store.retained_counts(),
            instances,
            self.dispatcher.queue_depth,
            files,
            paused=self._paused_functions(),
            held={
                name: name in held
                for name, d in sorted(self.catalog.functions.items())
                if d.placement.remote
            },
        )
        self.run_files.write("metrics.prom", metrics.encode())
        if not stopped:
            self.notifier.status(self._status_line())

    def _held(self, definition: FunctionDef) -> str | None:
        """Why the events of `definition` wait for now: its Ray cluster cannot be reached."""
        return self.ray.down if definition.placement.remote else None

    def _held_functions(self) -> dict[str, str]:
        """The defined functions whose events wait for now, with why."""
        return {
            name: why
            for name, d in sorted(self.catalog.functions.items())
            if (why := self._held(d)) is not None
        }

    def _cluster_changed(self) -> None:
        """The Ray cluster went or came back: show it now, and run what it held."""
        self.dispatcher.wake()
        self.write_status()

    def _paused_functions(self) -> dict[str, bool]:
        """Every defined or paused function, and whether its dispatch is held."""
        paused = self.store.paused
        names = set(self.catalog.functions) | set(paused.functions)
        return {name: paused.holds(name) for name in sorted(names)}

    def _status_line(self) -> str:
        """One line for `systemctl status`: queue depth, running events, instances."""
        instances = sum(len(p.instances) for p in self.dispatcher.pools.values())
        return (
            f"{'ready' if self.ready else 'starting'}: queue {self.dispatcher.queue_depth}, "
            f"running {self.dispatcher.running}, instances {instances}"
        )


def with_run_as(catalog: Catalog, run_as: str) -> Catalog:
    """`catalog` with `run_as` as the `user` of every function that names none."""
    if not run_as:
        return catalog
    functions = {
        name: d if d.user else msgspec.structs.replace(d, user=run_as)
        for name, d in catalog.functions.items()
    }
    return Catalog(functions=functions, errors=catalog.errors)


def implicit_root(catalog: Catalog) -> list[str]:
    """The functions that run as root only because the daemon does and none names a user."""
    if os.geteuid() != 0:
        return []
    return sorted(name for name, d in catalog.functions.items() if not d.user)
