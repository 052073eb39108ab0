"""The daemon's link to a Ray cluster: where it is; the connection, made off the event loop
when a function placed on Ray is defined (else at its first instance's start), watched, and
made again when the cluster returns; and the actors of instances: made with what their
placement asks for and their code folder shipped, killed, and those a predecessor left swept.

A cluster that cannot be reached is `down`, with the reason: the daemon holds the events of the
functions placed on it (they wait as a paused function's do) and tries again with a backoff.
While connected, the cluster's control store (GCS) is watched: Ray ends a driver whose GCS is
gone for gcs_rpc_server_reconnect_timeout_s (60 s), and the driver is the daemon, so the daemon
disconnects (ray.shutdown) as soon as the GCS stops answering, and connects anew once it does.

`ray` is imported here only once a function placed on Ray needs it: a daemon with only local
functions never loads it.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import os
import signal
import socket
import tempfile
import threading
import weakref
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import msgspec

from daemon.functions import FunctionDef
from daemon.supervise.tokens import spool_mark

log = logging.getLogger(__name__)

#: where the cluster's address is read when --ray-address is not given, in this order
ADDRESS_VARS = ("FNSPOOL_RAY_ADDRESS", "RAY_ADDRESS")
MIB = 1 << 20
#: threads of an instance's actor beyond those of its attempts: a pull, a signal, a cancel and a
#: stop may all be running while an attempt runs
CONTROL_THREADS = 4
PROBE_TIMEOUT = 5.0  # seconds to reach the cluster's address before Ray's own, much longer, tries
WATCH_EVERY = 2.0  # seconds between two looks at the GCS of the cluster connected to
WATCH_MISSES = 3  # looks in a row that find no GCS before the cluster is taken for gone
RECONNECT_FIRST = 1.0  # seconds before the first new try to connect; doubled at each failure
RECONNECT_MAX = 30.0  # the longest wait between two tries
DISCONNECT_TIME = 30.0  # seconds ray.shutdown may take when the cluster is gone (5 s here)
#: Ray's setting of how long a driver lives on without its GCS, raised (unless set already) so
#: that the watch above always disconnects first
RECONNECT_VAR = "RAY_gcs_rpc_server_reconnect_timeout_s"
GCS_PATIENCE = 600


class EngineError(Exception):
    """The cluster cannot be reached, or refused an actor; the message says which and why."""


class ClusterDown(EngineError):
    """The cluster cannot be reached now; the engine tries again on its own."""


def ray_address(option: str = "") -> str:
    """The cluster's address: the option, else the environment, else `auto` (a cluster started
    on this machine with `ray start`)."""
    for value in (option, *(os.environ.get(name, "") for name in ADDRESS_VARS)):
        if value:
            return value
    return "auto"


def namespace_of(spool_root: Path) -> str:
    """The Ray namespace of a spool's actors: one per spool and machine, so that a restarted
    daemon finds what its predecessor left, and no other daemon's."""
    return f"fnspool-{socket.gethostname()}-{spool_mark(spool_root)}"


class RayEngine:
    """One daemon's connection to one Ray cluster, in one namespace."""

    def __init__(
        self, address: str, namespace: str, on_change: Callable[[], None] | None = None
    ) -> None:
        self.address = address
        self.namespace = namespace
        #: why the cluster cannot be reached now; None while it can (or was not tried yet)
        self.down: str | None = None
        self.on_change = on_change  # called when `down` changes
        #: counts the connections made: an actor of an earlier one is gone with its cluster
        self.generation = 0
        self._placed: weakref.WeakSet[Any] = weakref.WeakSet()  # instances with an actor
        self._connected = False
        self._lock = asyncio.Lock()
        self._actor_class: Any = None
        self._connecting: asyncio.Task[None] | None = None
        self._watching: asyncio.Task[None] | None = None
        self._retrying: asyncio.Task[None] | None = None
        self._closed = False
        self._gone = asyncio.Event()  # set when the daemon lets go of the cluster

    def connect_soon(self, functions: Iterable[FunctionDef]) -> None:
        """Connect in the background once a function placed on Ray is defined (so that a
        predecessor's actors are swept at start, and an unreachable cluster is logged early)."""
        placed = sorted(f.name for f in functions if f.placement.remote)
        if placed and not self._connected and self._connecting is None:
            self._connecting = asyncio.get_running_loop().create_task(self._connect_early(placed))

    async def _connect_early(self, placed: list[str]) -> None:
        try:
            await self._connect()
        except ClusterDown:
            pass  # said, and tried again
        except EngineError as exc:
            log.warning("%s (functions placed on Ray: %s)", exc, ", ".join(placed))
        finally:
            self._connecting = None

    async def actor(self, instance_id: str, function: FunctionDef) -> Any:
        """A new actor for the instance `instance_id` of `function` (placed by Ray once a node
        has room: its calls wait for it); ClusterDown if the cluster cannot be reached (tried
        again in the background, not here), EngineError if it refuses the actor."""
        if self.down is not None:
            raise ClusterDown(self.down)
        await self._connect()
        gone = asyncio.ensure_future(self._gone.wait())
        making = asyncio.ensure_future(asyncio.to_thread(self._make, instance_id, function))
        try:
            # Ray blocks the making of an actor while the cluster's GCS does not answer: the
            # start is cut when the daemon lets go of the cluster (its thread ends when it can)
            await asyncio.wait({making, gone}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            gone.cancel()
        if not making.done():
            making.add_done_callback(_forget)
            raise ClusterDown(self.down or "the Ray cluster went while an actor was made")
        return making.result()

    def track(self, instance: Any) -> None:
        """Tell `instance` (its `cluster_gone()`) when the daemon disconnects from the cluster."""
        self._placed.add(instance)

    def kill(self, actor: Any) -> None:
        """End an actor and its process at once (its instance is stopped already)."""
        import ray

        try:
            ray.kill(actor, no_restart=True)
        except Exception as exc:  # gone already, or the cluster is: nothing left to end
            log.info("Ray actor not killed: %s", exc)

    async def close(self) -> None:
        """Disconnect (at the daemon's shutdown, once every instance is stopped)."""
        self._closed = True
        for task in (self._watching, self._connecting, self._retrying):
            if task is not None:
                task.cancel()
        if self._connected:
            await self._disconnect("the daemon is shutting down")

    # -- connecting ---------------------------------------------------------------------------

    async def _connect(self) -> None:
        async with self._lock:
            if self._connected:
                return
            try:
                await asyncio.to_thread(self._init)
            except ClusterDown as exc:
                self._went_down(str(exc))
                raise
            finally:
                _own_signals()
            self._connected = True
            self._gone = asyncio.Event()
            self.generation += 1
            self._watching = asyncio.get_running_loop().create_task(self._watch())

    def _went_down(self, why: str) -> None:
        """Hold the functions placed on Ray, and try to connect again in the background."""
        first = self.down is None
        self.down = why
        if first:
            log.warning("Ray cluster unreachable, events of functions placed on it wait: %s", why)
            self._notify()
        if self._retrying is None and not self._closed:
            self._retrying = asyncio.get_running_loop().create_task(self._reconnect())

    async def _reconnect(self) -> None:
        """Try to connect again, waiting longer after each failure, until it works."""
        wait = RECONNECT_FIRST
        try:
            while True:
                await asyncio.sleep(wait)
                try:
                    await self._connect()
                except ClusterDown:
                    wait = min(wait * 2, RECONNECT_MAX)
                    continue
                except EngineError as exc:  # reached, but Ray failed otherwise: keep trying
                    self.down = str(exc)
                    wait = min(wait * 2, RECONNECT_MAX)
                    continue
                self.down = None
                log.warning("Ray cluster at %s reachable again: held events run", self.address)
                self._notify()
                return
        finally:
            self._retrying = None

    async def _watch(self) -> None:
        """Disconnect as soon as the cluster's GCS stops answering (before Ray would end the
        daemon for it), and start connecting again."""
        import ray

        gcs = ray.get_runtime_context().gcs_address
        misses = 0
        while misses < WATCH_MISSES:
            await asyncio.sleep(WATCH_EVERY)
            misses = 0 if await _answers(gcs) else misses + 1
        self._watching = None
        why = f"the Ray cluster's control store at {gcs} stopped answering"
        async with self._lock:
            self._went_down(why)  # its new tries wait for the lock
            await self._disconnect(why)

    async def _disconnect(self, why: str) -> None:
        """ray.shutdown; the instances of this connection are lost (`why`)."""
        import ray

        self._connected = False
        self._gone.set()
        self.generation += 1  # the actors made so far are gone
        for instance in list(self._placed):
            instance.cluster_gone(why)
        self._placed.clear()
        try:
            await asyncio.wait_for(asyncio.to_thread(ray.shutdown), DISCONNECT_TIME)
        except TimeoutError:
            log.error("ray.shutdown did not end in %.0fs", DISCONNECT_TIME)
        _own_signals()

    def _notify(self) -> None:
        if self.on_change is not None:
            self.on_change()

    def _init(self) -> None:
        try:
            import ray
        except ImportError:
            raise EngineError(
                "Ray is not installed where the daemon runs: pip install 'fnspool[ray]'"
            ) from None
        _probe(self.address)
        os.environ.setdefault(RECONNECT_VAR, str(GCS_PATIENCE))
        try:
            ray.init(
                address=self.address,
                namespace=self.namespace,
                log_to_driver=False,  # the function's output comes through its event log
                logging_level=logging.WARNING,
                ignore_reinit_error=True,
            )
        except Exception as exc:
            raise ClusterDown(f"cannot reach the Ray cluster at {self.address}: {exc}") from None
        log.info("connected to the Ray cluster at %s (namespace %s)", self.address, self.namespace)
        self._sweep()

    def _sweep(self) -> None:
        """Kill the actors a predecessor left in this spool's namespace (a daemon killed with -9
        before Ray noticed that it was gone)."""
        import ray

        names = ray.util.list_named_actors(all_namespaces=False)
        for name in names:
            try:
                ray.kill(ray.get_actor(name, namespace=self.namespace), no_restart=True)
            except ValueError:  # it died meanwhile
                continue
            log.warning("killed Ray actor %s, left by a previous daemon of this spool", name)

    # -- making actors ------------------------------------------------------------------------

    def _make(self, instance_id: str, function: FunctionDef) -> Any:
        import ray

        if self._actor_class is None:
            from daemon.runtimes.ray_host import InstanceHost

            self._actor_class = ray.remote(InstanceHost)
        placement = function.placement
        shipped = os.path.isdir(function.code_dir)
        options: dict[str, Any] = {
            "name": instance_id,
            "namespace": self.namespace,
            "num_cpus": placement.num_cpus,
            "num_gpus": placement.num_gpus,
            "memory": function.memory_mb * MIB,
            "max_restarts": 0,  # a dead instance is a lost instance: the pool starts another
            # no record of each call in Ray's task table (its dashboard and `ray list tasks`):
            # the journal has each attempt, and the records cost the daemon, the actor and
            # Ray's control store CPU at every event
            "enable_task_events": False,
            # a threaded actor (a synchronous call costs Ray less than an async one): one thread
            # per attempt it may run, one attempt at a time for python and exec, `concurrency`
            # for http (the daemon's to keep, RayInstance._full), and threads for the other calls
            # (pull, signal, cancel, hook, stop), which must never queue behind a running
            # attempt: the SIGTERM of a graceful stop would wait for the very attempt it stops
            "max_concurrency": _attempts(function) + CONTROL_THREADS,
        }
        if placement.resources:
            options["resources"] = dict(placement.resources)
        if shipped:
            options["runtime_env"] = _shipped(function.code_dir)
        definition = msgspec.json.encode(function)
        try:
            return self._actor_class.options(**options).remote(
                definition, instance_id, shipped=shipped
            )
        except Exception as exc:
            raise EngineError(f"Ray refused the actor of {instance_id}: {exc}") from None


def _attempts(function: FunctionDef) -> int:
    """How many attempts an instance of `function` runs at once."""
    return max(1, function.concurrency) if function.runtime == "http" else 1


def _forget(future: asyncio.Future[Any]) -> None:
    """Retrieve the outcome of work given up on (an actor made for a cluster gone meanwhile)."""
    if not future.cancelled() and future.exception() is not None:
        log.info("Ray actor not made: %s", future.exception())


def _own_signals() -> None:
    """Put the daemon's own SIGTERM handler back in the kernel: each ray.init installs Ray's
    failure handler over it, and after a ray.shutdown and a new ray.init that one ends the
    daemon on SIGTERM instead of letting it drain."""
    if threading.current_thread() is not threading.main_thread():
        return
    handler = signal.getsignal(signal.SIGTERM)
    if handler is not None:
        signal.signal(signal.SIGTERM, handler)


def _probe(address: str) -> None:
    """EngineError at once when nothing answers at a `host:port` address (ray.init would try
    for minutes); `auto` and `ray://` addresses are Ray's to resolve."""
    host, sep, port = address.rpartition(":")
    if not sep or "://" in address or not port.isdigit():
        return
    try:
        socket.create_connection((host.strip("[]"), int(port)), PROBE_TIMEOUT).close()
    except OSError as exc:
        raise ClusterDown(f"cannot reach the Ray cluster at {address}: {exc}") from None


async def _answers(address: str) -> bool:
    """Whether something accepts a connection at `host:port` within PROBE_TIMEOUT."""
    host, _, port = address.rpartition(":")
    try:
        _, writer = await asyncio.wait_for(
            asyncio.open_connection(host.strip("[]"), int(port)), PROBE_TIMEOUT
        )
    except (OSError, TimeoutError, ValueError):
        return False
    writer.close()
    return True


def _shipped(code_dir: str) -> dict[str, Any]:
    """The runtime_env that brings the code folder to the node: uploaded to the cluster once
    per content (Ray names the package by its hash), unpacked there as the actor's working
    directory."""
    from ray._private.runtime_env.working_dir import upload_working_dir_if_needed

    # an actor's runtime_env takes only a URI: upload as ray.init does for a job's folder
    kwargs: dict[str, Any] = {"logger": log}
    if "include_gitignore" in inspect.signature(upload_working_dir_if_needed).parameters:
        kwargs["include_gitignore"] = True
    with tempfile.TemporaryDirectory(prefix="fnspool-ray-") as scratch:
        try:
            return upload_working_dir_if_needed(
                {"working_dir": code_dir}, scratch_dir=scratch, **kwargs
            )
        except Exception as exc:
            raise EngineError(f"cannot ship the code folder {code_dir} to Ray: {exc}") from None
