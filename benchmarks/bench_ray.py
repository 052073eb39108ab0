"""Instances on Ray beside local ones, in the same run: a burst of no-op events and the idle
drop-to-start latency, for `engine = "local"` and `engine = "ray"`, rounds alternating.

- The cluster: `ray.cluster_utils.Cluster` on this machine, a head that takes no instance and two
  worker nodes (2 logical CPUs each, 80 MB of object store): two simulated nodes.
- The daemon: the normal (durable) one over a temporary spool with two python functions of the
  same no-op code on 2 instances each, `noop` local and `noop_ray` placed on Ray.
- Burst: N payload files dropped for one function, timed from the first written until the
  journal says all N ended (as bench_burst.py).
- Idle latency: one file at a time, the instances idle (frozen) in between; from the rename
  into incoming/ to the handler's first line (its time.monotonic(), the same clock: the nodes
  are on this machine). The median of the samples.

Targets (issue 12), on this 2-CPU machine: >= 1,000 events/s through Ray instances, and at most
2 ms added to the idle drop-to-start latency at the median.

Usage: python benchmarks/bench_ray.py [--events 2000] [--rounds 3] [--samples 50]
Ray is an optional dependency: .venv/bin/pip install -e '.[ray]'
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from harness import NOOP, REPO, Ends, drop, make_spool, stop_daemon, wait_ended

from daemon.journal import decode_record
from daemon.model import State, Transition

FUNCTIONS = ("noop", "noop_ray")
STORE = 80 << 20  # bytes of object store per node


@contextmanager
def cluster() -> Iterator[str]:
    """A head and two worker nodes on this machine; the address."""
    from ray.cluster_utils import Cluster

    nodes = Cluster()
    try:
        nodes.add_node(num_cpus=0, object_store_memory=STORE, include_dashboard=False)
        for name in ("node_a", "node_b"):
            nodes.add_node(num_cpus=2, resources={name: 100}, object_store_memory=STORE)
        yield nodes.address
    finally:
        nodes.shutdown()


def with_ray_function(spool: Path) -> None:
    """Add `noop_ray`: the same code as `noop`, placed on Ray."""
    (spool / "functions" / "noop_ray").mkdir()
    (spool / "functions" / "noop_ray" / "index.py").write_text(NOOP)
    (spool / "functions" / "noop_ray.toml").write_text(
        'handler = "index.handler"\nmax_instances = 2\nmemory_mb = 128\n'
        '[placement]\nengine = "ray"\nnum_cpus = 0.5\n'
    )


@contextmanager
def daemon(spool: Path, address: str) -> Iterator[subprocess.Popen[bytes]]:
    """The daemon over `spool`, pointed at the cluster."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "daemon", "daemon", "--spool", str(spool),
         "--ray-address", address],
        cwd=REPO,
        stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 60
        while not _ready(spool):
            if proc.poll() is not None or time.monotonic() > deadline:
                raise SystemExit("the daemon did not become ready")
            time.sleep(0.01)
        yield proc
    finally:
        stop_daemon(proc)


def _ready(spool: Path) -> bool:
    try:
        return bool(json.loads((spool / "run" / "status.json").read_text()).get("ready"))
    except (OSError, ValueError):
        return False


def burst(spool: Path, proc: subprocess.Popen[bytes], function: str, count: int, tag: str) -> float:
    """Events/s for `count` files of `function`, until all ended."""
    ends = Ends(spool / "journal")
    staging, target = spool / "tmp", spool / "incoming" / function
    start = time.perf_counter()
    for i in range(count):
        drop(staging, target, f"{tag}{i:06d}", b'{"n": %d}' % i)
    return count / wait_ended(ends, count, start, proc)


def idle_latency(spool: Path, proc: subprocess.Popen[bytes], function: str, tag: str) -> float:
    """Milliseconds from one file's rename to its handler's start, the instances idle."""
    time.sleep(0.3)  # idle: its instances frozen
    ends = Ends(spool / "journal")
    dropped = time.monotonic()
    drop(spool / "tmp", spool / "incoming" / function, tag, b"{}")
    wait_ended(ends, 1, time.perf_counter(), proc)
    started = _handler_time(spool, ends)
    return (started - dropped) * 1000


def _handler_time(spool: Path, ends: Ends) -> float:
    """The `t` the handler returned, from the newest Succeeded record."""
    newest = max(spool.glob("journal/segment-*.jsonl"))
    for line in reversed(newest.read_bytes().splitlines()):
        if b'"state":"Succeeded"' in line:
            rec = decode_record(line)
            assert isinstance(rec, Transition) and rec.state is State.SUCCEEDED
            return float(json.loads(bytes(rec.result))["t"])
    raise SystemExit("no Succeeded record found")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--samples", type=int, default=50, help="idle latency samples per round")
    args = parser.parse_args()
    print(f"machine        {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.2f} (shared)")
    rates: dict[str, list[float]] = {f: [] for f in FUNCTIONS}
    latencies: dict[str, list[float]] = {f: [] for f in FUNCTIONS}
    with tempfile.TemporaryDirectory(dir=REPO, prefix=".bench-") as tmp, cluster() as address:
        spool = make_spool(Path(tmp))
        with_ray_function(spool)
        with daemon(spool, address) as proc:
            for function in FUNCTIONS:
                burst(spool, proc, function, 50, f"w{function}")  # warm both instances
            for r in range(1, args.rounds + 1):
                line = f"round {r}"
                for function in FUNCTIONS:
                    rate = burst(spool, proc, function, args.events, f"r{r}{function}")
                    rates[function].append(rate)
                    samples = [
                        idle_latency(spool, proc, function, f"l{r}{function}{i}")
                        for i in range(args.samples)
                    ]
                    latencies[function] += samples
                    line += (
                        f"   {function:<8} {rate:>7,.0f} events/s"
                        f", idle start {statistics.median(samples):.2f} ms"
                    )
                print(line)
    for function in FUNCTIONS:
        print(
            f"{function:<14} burst median {statistics.median(rates[function]):>7,.0f} events/s"
            f"   idle drop-to-start median {statistics.median(latencies[function]):.2f} ms"
            f" ({len(latencies[function])} samples)"
        )
    added = statistics.median(latencies["noop_ray"]) - statistics.median(latencies["noop"])
    print(f"ray - local    idle drop-to-start median {added:+.2f} ms")


if __name__ == "__main__":
    main()
