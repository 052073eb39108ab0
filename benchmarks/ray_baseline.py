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
  figures for synchronous actors (`sync_...`), which Ray runs without a hop to an event loop
  thread: what the instances' async actors cost beyond them.

Prints one JSON line. Usage: python benchmarks/ray_baseline.py ADDRESS [--calls 4000]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import statistics
import time
from typing import Any

ACTORS = 2
PIPELINE = 64
IDLE_SAMPLES = 20
ANSWER = b"x" * 160  # about the size of an instance's answer to a no-op event


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
    """Every figure, for async then synchronous actors."""
    figures = await measure_actors(Echo, calls, with_ceiling=True)
    sync = await measure_actors(SyncEcho, calls, with_ceiling=False)
    return figures | {f"sync_{name}": value for name, value in sync.items()}


async def measure_actors(kind: type, calls: int, *, with_ceiling: bool) -> dict[str, float]:
    """The figures of two actors of `kind`, after a warm-up."""
    import ray

    cls: Any = ray.remote(kind)
    actors = [cls.options(num_cpus=0.5, enable_task_events=False).remote() for _ in range(ACTORS)]
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
