"""The floor of the burst on this machine, beside fnspool and Huey, rounds alternating.

The floor (floor_spool.py) does only the per-event work no durable file spool can skip, in
Python with uvloop and msgspec as fnspool: read, decode and unlink the payload file; three
journal records synced in groups, an event sent only once its intent is on disk; one frame to a
warm worker process and one back. Its rate is what fnspool could reach with no work of its own
beyond that; floor/Huey is the most this design can show against Huey here.

Usage: python benchmarks/bench_floor.py [--events 2000] [--rounds 3]
Huey is a benchmark-only dependency: .venv/bin/pip install -e '.[bench]'
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from bench_burst import cpu_seconds, fnspool_burst, spread
from harness import REPO, drop, make_spool, running_daemon
from peer_huey import INSTALL_HINT, running_huey

WORKERS = 2  # as fnspool's noop function and Huey's consumer
PIPELINED = 2  # events in flight per worker in the pipelined floor
NAMES = ("fnspool", "floor", "pipelined", "Huey")


class Floor:
    """A running floor_spool.py over `root`, and the client side that drops files into it."""

    def __init__(self, root: Path, depth: int = 1) -> None:
        self.root = root
        (root / "incoming").mkdir(parents=True)
        (root / "tmp").mkdir()
        script = Path(__file__).with_name("floor_spool.py")
        self.proc = subprocess.Popen(
            [sys.executable, str(script), str(root), str(WORKERS), str(depth)],
            stdout=subprocess.PIPE,
        )
        assert self.proc.stdout is not None
        if self.proc.stdout.readline() != b"ready\n":
            raise SystemExit("the floor spool did not start")
        self.ended = 0

    def burst(self, count: int, tag: str) -> float:
        """Events/s for `count` payload files dropped, until the floor has journaled all ended."""
        assert self.proc.stdout is not None
        before = cpu_seconds(self.proc.pid)
        start = time.perf_counter()
        for i in range(count):
            drop(self.root / "tmp", self.root / "incoming", f"{tag}{i:06d}", b'{"n": %d}' % i)
        target = self.ended + count
        while self.ended < target:
            line = self.proc.stdout.readline()
            if not line:
                raise SystemExit(f"the floor spool exited with code {self.proc.wait()}")
            self.ended = int(line)
        rate = count / (time.perf_counter() - start)
        used = (cpu_seconds(self.proc.pid) - before) / count * 1e6
        print(f"  cpu/event     floor {used:.0f} us (its workers not counted)")
        return rate

    def stop(self) -> None:
        self.proc.kill()
        self.proc.wait()


@contextmanager
def running_floor(root: Path, depth: int = 1) -> Iterator[Floor]:
    """A floor spool in `root` for the length of the block."""
    floor = Floor(root, depth)
    try:
        yield floor
    finally:
        floor.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    if importlib.util.find_spec("huey") is None:
        raise SystemExit(INSTALL_HINT)
    print(f"machine        {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.2f} (shared)")
    with tempfile.TemporaryDirectory(dir=REPO, prefix=".bench-") as tmp:
        root = Path(tmp)
        spool = make_spool(root)
        with (
            running_daemon(spool) as proc,
            running_huey(root) as peer,
            running_floor(root / "floor") as floor,
            running_floor(root / "pipelined", PIPELINED) as pipelined,
        ):
            fnspool_burst(spool, proc, 50, "w")
            peer.burst(50)
            floor.burst(50, "w")
            pipelined.burst(50, "w")
            rates: dict[str, list[float]] = {name: [] for name in NAMES}
            for r in range(1, args.rounds + 1):
                rates["fnspool"].append(fnspool_burst(spool, proc, args.events, f"r{r}-"))
                rates["floor"].append(floor.burst(args.events, f"r{r}-"))
                rates["pipelined"].append(pipelined.burst(args.events, f"r{r}-"))
                rates["Huey"].append(peer.burst(args.events))
                print(
                    f"round {r}       "
                    + "".join(f"{n} {v[-1]:>7,.0f}   " for n, v in rates.items())
                )
            for name in ("fnspool", "floor", "pipelined"):
                ratios = [a / b for a, b in zip(rates[name], rates["Huey"], strict=True)]
                spread(f"{name}/Huey", ratios, "")
            ratios = [a / b for a, b in zip(rates["fnspool"], rates["floor"], strict=True)]
            spread("fnspool/floor", ratios, "(the share of the floor fnspool reaches)")


if __name__ == "__main__":
    main()
