"""What a network namespace of its own costs an http instance's start (a fixed `port`), against
a free port on the host: the stdlib server of tests/functions/http_runtime started, probed until
it listens, answered once and stopped, rounds alternating; plus one bare `unshare --user --net
--map-root-user true`, the probe `functions list` and the daemon make once.

Usage: python benchmarks/bench_netns.py [--rounds 20]
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import msgspec

from daemon.functions import FunctionDef
from daemon.runtimes.http import HttpInstance

CODE = Path(__file__).resolve().parent.parent / "tests" / "functions" / "http_runtime"


async def one(port: int, log: Path) -> tuple[float, float]:
    """Milliseconds to start (listening) and for the first answer."""
    fn = FunctionDef(name="b", runtime="http", command=[sys.executable, "-u", "server.py"],
                     code_dir=str(CODE), port=port)  # fmt: skip
    instance = HttpInstance(fn)
    began = time.perf_counter()
    await instance.start()
    started = time.perf_counter()
    outcome = await instance.invoke("r", msgspec.Raw(b"1"), 1, 30.0, log)
    answered = time.perf_counter()
    await instance.stop()
    assert outcome.ok, outcome.error
    return (started - began) * 1000, (answered - started) * 1000


async def main(rounds: int, log: Path) -> None:
    with socket.socket() as s:
        s.bind(("0.0.0.0", 0))
        fixed = s.getsockname()[1]
    runs: dict[str, list[tuple[float, float]]] = {"host (free port)": [], "namespace": []}
    for _ in range(rounds):
        runs["host (free port)"].append(await one(0, log))
        runs["namespace"].append(await one(fixed, log))
    for name, times in runs.items():
        start = statistics.median(t[0] for t in times)
        call = statistics.median(t[1] for t in times)
        print(f"{name:18} start {start:7.1f} ms   first call {call:6.1f} ms  (median of {rounds})")
    unshare = shutil.which("unshare") or "unshare"
    probes = []
    for _ in range(rounds):
        began = time.perf_counter()
        subprocess.run([unshare, "--user", "--net", "--map-root-user", "true"], check=True)
        probes.append((time.perf_counter() - began) * 1000)
    print(f"{'unshare probe':18} {statistics.median(probes):7.1f} ms")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=20)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as temp:
        asyncio.run(main(args.rounds, Path(temp) / "event.log"))
