"""The daemon's link to a Ray cluster: where it is; the connection, made once, off the event
loop, when a function placed on Ray is defined (else at its first instance's start); and the
actors of instances: made with what their placement asks for and their code folder shipped,
killed, and those a predecessor left swept.

`ray` is imported here only once a function placed on Ray needs it: a daemon with only local
functions never loads it.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import os
import socket
import tempfile
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import msgspec

from daemon.functions import FunctionDef
from daemon.supervise.tokens import spool_mark

log = logging.getLogger(__name__)

#: where the cluster's address is read when --ray-address is not given, in this order
ADDRESS_VARS = ("FNSPOOL_RAY_ADDRESS", "RAY_ADDRESS")
MIB = 1 << 20
PROBE_TIMEOUT = 5.0  # seconds to reach the cluster's address before Ray's own, much longer, tries


class EngineError(Exception):
    """The cluster cannot be reached, or refused an actor; the message says which and why."""


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

    def __init__(self, address: str, namespace: str) -> None:
        self.address = address
        self.namespace = namespace
        self._connected = False
        self._lock = asyncio.Lock()
        self._actor_class: Any = None
        self._connecting: asyncio.Task[None] | None = None

    def connect_soon(self, functions: Iterable[FunctionDef]) -> None:
        """Connect in the background once a function placed on Ray is defined (so that a
        predecessor's actors are swept at start, and an unreachable cluster is logged early)."""
        placed = sorted(f.name for f in functions if f.placement.remote)
        if placed and not self._connected and self._connecting is None:
            self._connecting = asyncio.get_running_loop().create_task(self._connect_early(placed))

    async def _connect_early(self, placed: list[str]) -> None:
        try:
            await self._connect()
        except EngineError as exc:
            log.warning("%s (functions placed on Ray: %s): tried again at their next start",
                        exc, ", ".join(placed))  # fmt: skip
        finally:
            self._connecting = None

    async def actor(self, instance_id: str, function: FunctionDef) -> Any:
        """A new actor for the instance `instance_id` of `function` (placed by Ray once a node
        has room: its calls wait for it); EngineError if the cluster cannot be reached or
        refuses it."""
        await self._connect()
        return await asyncio.to_thread(self._make, instance_id, function)

    def kill(self, actor: Any) -> None:
        """End an actor and its process at once (its instance is stopped already)."""
        import ray

        try:
            ray.kill(actor, no_restart=True)
        except Exception as exc:  # gone already, or the cluster is: nothing left to end
            log.info("Ray actor not killed: %s", exc)

    async def close(self) -> None:
        """Disconnect (at the daemon's shutdown, once every instance is stopped)."""
        if self._connected:
            import ray

            await asyncio.to_thread(ray.shutdown)
            self._connected = False

    # -- connecting ---------------------------------------------------------------------------

    async def _connect(self) -> None:
        async with self._lock:
            if not self._connected:
                await asyncio.to_thread(self._init)
                self._connected = True

    def _init(self) -> None:
        try:
            import ray
        except ImportError:
            raise EngineError(
                "Ray is not installed where the daemon runs: pip install 'fnspool[ray]'"
            ) from None
        _probe(self.address)
        try:
            ray.init(
                address=self.address,
                namespace=self.namespace,
                log_to_driver=False,  # the function's output comes through its event log
                logging_level=logging.WARNING,
                ignore_reinit_error=True,
            )
        except Exception as exc:
            raise EngineError(f"cannot reach the Ray cluster at {self.address}: {exc}") from None
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
            # max_concurrency is left at Ray's default for an async actor (1,000 calls at once):
            # the daemon sends one attempt at a time to a python or exec instance and at most
            # `concurrency` to an http one (RayInstance._full), and the other calls (pull,
            # signal, hook, stop) must never queue behind a running attempt: the SIGTERM of a
            # graceful stop would wait for the very attempt it stops
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


def _probe(address: str) -> None:
    """EngineError at once when nothing answers at a `host:port` address (ray.init would try
    for minutes); `auto` and `ray://` addresses are Ray's to resolve."""
    host, sep, port = address.rpartition(":")
    if not sep or "://" in address or not port.isdigit():
        return
    try:
        socket.create_connection((host.strip("[]"), int(port)), PROBE_TIMEOUT).close()
    except OSError as exc:
        raise EngineError(f"cannot reach the Ray cluster at {address}: {exc}") from None


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
