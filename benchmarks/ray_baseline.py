"""Ray's own cost on this machine, to set fnspool's figures against: raw calls to no-op async
actors from a fresh driver (a process like the daemon), on the cluster bench_ray.py starts.

- `paired`: 2 actors, one call in flight on each, the next sent when the answer is in: the shape
  of a burst through 2 instances (python runs one event at a time); calls/s and the median round
  trip.
- `pipelined`: the same 2 actors, up to 64 calls in flight on each: Ray's throughput ceiling here.
- CPU per paired call, in the driver's process and in the actor's (all their threads).
- `idle one way`: from sending a call to an actor idle for 0.3 s to its start there: what Ray
  alone adds to an idle instance's drop-to-start latency.
- The actors are made with the options of an instance's (no task events recorded). The same
  figures for synchronous actors (`sync_...`), which Ray runs on its own thread without a hop to
  an event loop thread; for threaded ones (`threaded_...`: synchronous, max_concurrency 4),
  which Ray runs on a pool of threads; for threaded ones whose calls each hand a coroutine to a
  private event loop in a thread of the actor and wait for it (`handoff_...`: what an instance's
  actor would cost as a threaded actor, since its instance needs a running loop between calls).

Prints one JSON line. Usage: python benchmarks/ray_baseline.py ADDRESS [--calls 4000]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import statistics
import threading
import time
from collections.abc import Coroutine
from typing import Any, TypeVar

ACTORS = 2
PIPELINE = 64
IDLE_SAMPLES = 20
ANSWER = b"x" * 160  # about the size of an instance's answer to a no-op event
T = TypeVar("T")


class Echo:
    """A no-op async actor answering bytes, as an instance's actor does."""

    async def call(self, request: bytes) -> bytes:
        """The answer, at once."""
        return ANSWER

    async def started(self, request: bytes) -> float:
        """When this call began here (time.monotonic: the nodes share this machine's clock)."""
        return time.monotonic()

    async def cpu(self) -> float:
        """Seconds of CPU this actor's process used so far (all its threads)."""
        return time.process_time()


class SyncEcho:
    """The same, as a synchronous actor (its calls run on Ray's own thread)."""

    def call(self, request: bytes) -> bytes:
        """The answer, at once."""
        return ANSWER

    def started(self, request: bytes) -> float:
        """When this call began here."""
        return time.monotonic()

    def cpu(self) -> float:
        """Seconds of CPU this actor's process used so far."""
        return time.process_time()


class Handoff:
    """A threaded actor whose calls run as coroutines on its own event loop, in a thread."""

    def __init__(self) -> None:
        self._loop = asyncio.new_event_loop()
        threading.Thread(target=self._loop.run_forever, daemon=True).start()

    def _run(self, coro: Coroutine[Any, Any, T]) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result()

    def call(self, request: bytes) -> bytes:
        """The answer, from the loop."""
        return self._run(_answer())

    def started(self, request: bytes) -> float:
        """When this call began on the loop."""
        return self._run(_now())

    def cpu(self) -> float:
        """Seconds of CPU this actor's process used so far."""
        return time.process_time()


async def _answer() -> bytes:
    return ANSWER


async def _now() -> float:
    return time.monotonic()


#: each kind of actor measured: its class and the options beyond an instance's, by prefix
KINDS: dict[str, tuple[type, dict[str, Any]]] = {
    "": (Echo, {}),
    "sync_": (SyncEcho, {}),
    "threaded_": (SyncEcho, {"max_concurrency": 4}),
    "handoff_": (Handoff, {"max_concurrency": 4}),
}


async def paired(actors: list[Any], calls: int) -> tuple[float, float]:
    """Calls/s and the median round trip in ms, one call in flight per actor."""
    trips: list[float] = []

    async def one_actor(actor: Any, count: int) -> None:
        for _ in range(count):
            sent = time.perf_counter()
            await actor.call.remote(b"{}")
            trips.append(time.perf_counter() - sent)

    start = time.perf_counter()
    await asyncio.gather(*(one_actor(a, calls // len(actors)) for a in actors))
    elapsed = time.perf_counter() - start
    return len(trips) / elapsed, statistics.median(trips) * 1000


async def idle_one_way(actors: list[Any], samples: int) -> float:
    """The median ms from sending a call to an idle actor (0.3 s without a call, as an idle
    instance between events) to the call's start there."""
    trips = []
    for i in range(samples):
        await asyncio.sleep(0.3)
        sent = time.monotonic()
        trips.append(await actors[i % len(actors)].started.remote(b"{}") - sent)
    return statistics.median(trips) * 1000


async def pipelined(actors: list[Any], calls: int) -> float:
    """Calls/s with up to PIPELINE calls in flight per actor."""
    per_actor = calls // len(actors)

    async def one_actor(actor: Any) -> None:
        window = asyncio.Semaphore(PIPELINE)

        async def one() -> None:
            async with window:
                await actor.call.remote(b"{}")

        await asyncio.gather(*(one() for _ in range(per_actor)))

    start = time.perf_counter()
    await asyncio.gather(*(one_actor(a) for a in actors))
    return per_actor * len(actors) / (time.perf_counter() - start)


async def measure(calls: int) -> dict[str, float]:
    """Every figure, for each kind of actor (KINDS)."""
    figures: dict[str, float] = {}
    for prefix, (kind, options) in KINDS.items():
        own = await measure_actors(kind, options, calls, with_ceiling=not prefix)
        figures |= {f"{prefix}{name}": value for name, value in own.items()}
    return figures


async def measure_actors(
    kind: type, options: dict[str, Any], calls: int, *, with_ceiling: bool
) -> dict[str, float]:
    """The figures of two actors of `kind`, after a warm-up."""
    import ray

    cls: Any = ray.remote(kind)
    options = {"num_cpus": 0.5, "enable_task_events": False} | options
    actors = [cls.options(**options).remote() for _ in range(ACTORS)]
    await asyncio.gather(*(a.call.remote(b"{}") for a in actors))
    await paired(actors, 200)
    before, driver = await actors_cpu(actors), time.process_time()
    rate, trip = await paired(actors, calls)
    driver, after = time.process_time() - driver, await actors_cpu(actors)
    figures = {
        "paired_calls_s": rate,
        "round_trip_ms": trip,
        "idle_one_way_ms": await idle_one_way(actors, IDLE_SAMPLES),
        "driver_cpu_ms": driver / calls * 1000,
        "actor_cpu_ms": (after - before) / calls * 1000,
    }
    if with_ceiling:
        figures["pipelined_calls_s"] = await pipelined(actors, calls)
    for actor in actors:
        ray.kill(actor)
    return figures


async def actors_cpu(actors: list[Any]) -> float:
    """Seconds of CPU all the actors' processes used so far."""
    return sum(await asyncio.gather(*(a.cpu.remote() for a in actors)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("address")
    parser.add_argument("--calls", type=int, default=4000)
    args = parser.parse_args()
    import ray

    ray.init(address=args.address, log_to_driver=False, logging_level=logging.WARNING)
    try:
        print(json.dumps(asyncio.run(measure(args.calls))))
    finally:
        ray.shutdown()


if __name__ == "__main__":
    main()
