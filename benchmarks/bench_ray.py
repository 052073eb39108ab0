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

- Raw Ray: calls to no-op actors (async, synchronous, threaded, threaded handing each call to
  an event loop of its own: the instances' kind) from a fresh driver, on the same cluster, each
  round (ray_baseline.py): what Ray itself costs here, so that fnspool-on-Ray / raw Ray is
  visible.
- CPU per event in a burst: the daemon's, and all of this bench's process tree's (the client,
  the cluster, the daemons, actors and functions), which the other engineers' load on the
  machine does not change as much as the rates.
- --against CHECKOUT: a second daemon, of another checkout (e.g. a worktree of main), over its
  own spool on the same cluster, measured in alternating rounds: ratios this / against of the
  burst rates and CPU per event, and the idle latency added per round, min / median / max.

Usage: python benchmarks/bench_ray.py [--events 2000] [--rounds 3] [--samples 50]
       [--against /path/to/checkout]
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
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

from harness import NOOP, REPO, Ends, drop, make_spool, stop_daemon, wait_ended

from daemon.journal import decode_record
from daemon.model import State, Transition

FUNCTIONS = ("noop", "noop_ray")
STORE = 80 << 20  # bytes of object store per node
TICK = os.sysconf("SC_CLK_TCK")


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
def daemon(spool: Path, address: str, checkout: Path = REPO) -> Iterator[subprocess.Popen[bytes]]:
    """The daemon of `checkout` over `spool`, pointed at the cluster (its actors run the same
    checkout's code: Ray puts the daemon's working directory first on their path)."""
    env = dict(os.environ, PYTHONPATH=str(checkout))
    proc = subprocess.Popen(
        [sys.executable, "-m", "daemon", "daemon", "--spool", str(spool),
         "--ray-address", address],
        cwd=checkout,
        env=env,
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


def cpu_seconds(daemon: int) -> tuple[float, float]:
    """CPU seconds used so far by the daemon, and by this bench and all its descendants (the
    client dropping files, the cluster, daemons, actors and functions; not the processes of
    other engineers on the machine)."""
    parents: dict[int, int] = {}
    used: dict[int, float] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                fields = (Path("/proc") / entry / "stat").read_text().rpartition(")")[2].split()
            except OSError:
                continue  # ended meanwhile
            parents[int(entry)] = int(fields[1])
            used[int(entry)] = (int(fields[11]) + int(fields[12])) / TICK
    bench, total = os.getpid(), 0.0
    for pid, seconds in used.items():
        ancestor = pid
        while ancestor > 1 and ancestor != bench:
            ancestor = parents.get(ancestor, 0)
        total += seconds if ancestor == bench else 0.0
    return used.get(daemon, 0.0), total


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


def raw_ray(address: str, calls: int) -> dict[str, float]:
    """Ray's own figures on the same cluster, from a fresh driver (ray_baseline.py)."""
    out = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / "ray_baseline.py"), address,
         "--calls", str(calls)],
        check=True, capture_output=True, cwd=REPO,
    )  # fmt: skip
    return dict(json.loads(out.stdout.splitlines()[-1]))


class Figures:
    """Every sample of one daemon (one checkout): burst rates and idle latencies per function."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.rates: dict[str, list[float]] = {f: [] for f in FUNCTIONS}
        self.latencies: dict[str, list[float]] = {f: [] for f in FUNCTIONS}
        self.cpu: dict[str, list[tuple[float, float]]] = {f: [] for f in FUNCTIONS}
        self.added: list[float] = []  # per round: ray - local median idle drop-to-start, ms

    def run_round(self, spool: Path, proc: subprocess.Popen[bytes], r: int, args: Any) -> str:
        """One round: a burst then idle samples, for each function; the round's line."""
        line = f"  {self.name:<7}"
        medians = []
        for function in FUNCTIONS:
            before = cpu_seconds(proc.pid)
            rate = burst(spool, proc, function, args.events, f"r{r}{function}")
            self.rates[function].append(rate)
            after = cpu_seconds(proc.pid)
            used = [(a - b) / args.events * 1000 for a, b in zip(after, before, strict=True)]
            self.cpu[function].append((used[0], used[1]))
            samples = [
                idle_latency(spool, proc, function, f"l{r}{function}{i}")
                for i in range(args.samples)
            ]
            self.latencies[function] += samples
            medians.append(statistics.median(samples))
            line += (
                f"   {function:<8} {rate:>6,.0f} events/s"
                f" (CPU ms/event {used[1]:.2f}, daemon {used[0]:.2f})"
                f", idle start {statistics.median(samples):.2f} ms"
            )
        self.added.append(medians[1] - medians[0])
        return line

    def added_ms(self) -> float:
        """The median idle drop-to-start on Ray minus local."""
        med = {f: statistics.median(v) for f, v in self.latencies.items()}
        return med["noop_ray"] - med["noop"]


def spread(values: list[float], fmt: str = ",.0f") -> str:
    """min / median / max."""
    return " / ".join(format(v, fmt) for v in (min(values), statistics.median(values), max(values)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--samples", type=int, default=50, help="idle latency samples per round")
    parser.add_argument("--raw-calls", type=int, default=4000, help="raw Ray calls per round")
    parser.add_argument(
        "--against", type=Path, help="another checkout (e.g. a worktree of main) run alternately"
    )
    args = parser.parse_args()
    print(f"machine        {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.2f} (shared)")
    checkouts = {"this": REPO} | ({"against": args.against.resolve()} if args.against else {})
    figures = {name: Figures(name) for name in checkouts}
    raw: list[dict[str, float]] = []
    with (
        tempfile.TemporaryDirectory(dir=REPO, prefix=".bench-") as tmp,
        cluster() as address,
        ExitStack() as stack,
    ):
        running = {}
        for name, checkout in checkouts.items():
            spool = make_spool(Path(tmp), name)
            with_ray_function(spool)
            proc = stack.enter_context(daemon(spool, address, checkout))
            for function in FUNCTIONS:
                burst(spool, proc, function, 50, f"w{function}")  # warm both instances
            running[name] = (spool, proc)
        for r in range(1, args.rounds + 1):
            order = list(checkouts) if r % 2 else list(reversed(checkouts))
            print(f"round {r}")
            for name in order:
                print(figures[name].run_round(*running[name], r, args), flush=True)
            raw.append(raw_ray(address, args.raw_calls))
            print(
                f"  raw Ray  {raw[-1]['paired_calls_s']:>6,.0f} calls/s (1 in flight x 2 actors,"
                f" round trip {raw[-1]['round_trip_ms']:.2f} ms)"
                f", {raw[-1]['pipelined_calls_s']:,.0f} calls/s pipelined; CPU per call"
                f" {raw[-1]['driver_cpu_ms']:.2f} ms in the driver"
                f", {raw[-1]['actor_cpu_ms']:.2f} ms in the actor"
                f"; idle call one way {raw[-1]['idle_one_way_ms']:.2f} ms"
                + "".join(_raw_kind(raw[-1], prefix, name) for prefix, name in RAW_KINDS),
                flush=True,
            )
    report(figures, raw)


#: the other kinds of raw actors ray_baseline.py measures: their prefix and how they are named
RAW_KINDS = (
    ("sync_", "synchronous actors"),
    ("threaded_", "threaded actors (max_concurrency 4)"),
    ("handoff_", "threaded actors handing each call to their own event loop"),
)


def _raw_kind(raw: dict[str, float], prefix: str, name: str) -> str:
    """One line of raw figures for the actors of one kind."""
    return (
        f"\n  raw Ray, {name}: {raw[prefix + 'paired_calls_s']:,.0f} calls/s"
        f", CPU per call {raw[prefix + 'driver_cpu_ms']:.2f} ms in the driver"
        f", {raw[prefix + 'actor_cpu_ms']:.2f} ms in the actor"
        f"; idle call one way {raw[prefix + 'idle_one_way_ms']:.2f} ms"
    )


def report(figures: dict[str, Figures], raw: list[dict[str, float]]) -> None:
    """The summary: min / median / max per daemon, and the ratios that matter."""
    paired = [r["paired_calls_s"] for r in raw]
    one_way = statistics.median(r["idle_one_way_ms"] for r in raw)
    print(f"raw Ray        {spread(paired)} calls/s paired (min / median / max)"
          f", pipelined {spread([r['pipelined_calls_s'] for r in raw])}"
          f"; idle call one way median {one_way:.2f} ms")  # fmt: skip
    for fig in figures.values():
        for function in FUNCTIONS:
            cpu = fig.cpu[function]
            print(
                f"{fig.name:<7} {function:<8} burst {spread(fig.rates[function])} events/s"
                f"   CPU ms/event {spread([c[1] for c in cpu], '.2f')}"
                f" (daemon {spread([c[0] for c in cpu], '.2f')})"
                f"   idle drop-to-start median {statistics.median(fig.latencies[function]):.2f} ms"
                f" ({len(fig.latencies[function])} samples)"
            )
        on_ray = fig.rates["noop_ray"]
        ratios = [rate / p for rate, p in zip(on_ray, paired, strict=True)]
        print(f"{fig.name:<7} on Ray / raw Ray paired, per round: {spread(ratios, '.2f')}"
              f"; ray - local idle drop-to-start median {fig.added_ms():+.2f} ms")  # fmt: skip
    if "against" in figures:
        this, other = figures["this"], figures["against"]
        for function in FUNCTIONS:
            ratios = [
                a / b for a, b in zip(this.rates[function], other.rates[function], strict=True)
            ]
            cpu_ratios = [
                a[1] / b[1] for a, b in zip(this.cpu[function], other.cpu[function], strict=True)
            ]
            print(
                f"this / against {function:<8} burst, per round: {spread(ratios, '.2f')}"
                f"; CPU ms/event {spread(cpu_ratios, '.2f')}"
            )
        print(
            f"ray - local idle drop-to-start per round, ms: this {spread(this.added, '+.2f')}"
            f", against {spread(other.added, '+.2f')}"
        )


if __name__ == "__main__":
    main()
