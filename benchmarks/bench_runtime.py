"""The python runtime's costs against the floor under them, measured in the same run.

(a) cold start: instance spawn -> ready, against spawning `python -c pass` and reaping it;
(b) warm invoke: a no-op event's round trip (log file included), against a bare framed pipe
    round trip to a minimal child process, both driven by the same uvloop event loop;
(c) the http runtime (a stdlib http.server): spawn -> listening, and an event's round trip against
    a bare aiohttp POST to the same server; the exec runtime (`cat`): an event against a bare
    spawn-and-reap of the same program.

Run: .venv/bin/python benchmarks/bench_runtime.py [--events 5000] [--starts 20]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import msgspec
import uvloop

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from daemon.functions import FunctionDef  # noqa: E402
from daemon.runtimes.exec import ExecInstance  # noqa: E402
from daemon.runtimes.http import HttpInstance  # noqa: E402
from daemon.runtimes.http_client import new_session  # noqa: E402
from daemon.runtimes.python import PythonInstance  # noqa: E402
from daemon.supervise.supervisor import Supervisor  # noqa: E402

SUPERVISOR = Supervisor()  # a tool's: no subreaper, no cgroups
NOOP = "def handler(event, context):\n    return None\n"

HTTP_NOOP = """
import os
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

class Noop(BaseHTTPRequestHandler):
    def do_POST(self):
        self.rfile.read(int(self.headers.get("content-length") or 0))
        self.send_response(200)
        self.send_header("content-length", "4")
        self.end_headers()
        self.wfile.write(b"null")

    def log_message(self, *args):
        pass

ThreadingHTTPServer(("127.0.0.1", int(os.environ["FC_SERVER_PORT"])), Noop).serve_forever()
"""

# the floor: read a framed message on fd 3, write it back on fd 4, nothing else
ECHO_CHILD = """
import os
buf = b""
while True:
    while len(buf) < 4 or len(buf) < 4 + int.from_bytes(buf[:4], "big"):
        chunk = os.read(3, 65536)
        if not chunk:
            raise SystemExit(0)
        buf += chunk
    end = 4 + int.from_bytes(buf[:4], "big")
    os.write(4, buf[:end])
    buf = buf[end:]
"""


def percentile(samples: list[float], q: float) -> float:
    """The q-th percentile (0..100) of `samples`, nearest rank."""
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(len(ordered) * q / 100))]


async def bare_start() -> float:
    """Seconds to spawn `python -c pass` and reap it."""
    began = time.perf_counter()
    child = SUPERVISOR.spawn([sys.executable, "-c", "pass"], os.environ, {})
    await child.wait()
    return time.perf_counter() - began


async def instance_start(definition: FunctionDef) -> float:
    """Seconds from spawning an instance to its ready frame."""
    instance = PythonInstance(definition, supervisor=SUPERVISOR)
    began = time.perf_counter()
    await instance.start()
    elapsed = time.perf_counter() - began
    await instance.stop()
    return elapsed


async def cold_start(definition: FunctionDef, runs: int) -> None:
    """Print the median spawn->ready against the median `python -c pass`."""
    bare, ready = [], []
    for _ in range(runs):  # interleaved, so drift in machine load hits both alike
        bare.append(await bare_start())
        ready.append(await instance_start(definition))
    b, r = statistics.median(bare), statistics.median(ready)
    print(f"cold start over {runs}: python -c pass {b * 1000:.1f} ms (median), ", end="")
    print(f"instance spawn->ready {r * 1000:.1f} ms (median); ratio {r / b:.2f}x")


async def warm_invoke(definition: FunctionDef, events: int, logs: Path | None) -> list[float]:
    """Round trips of no-op events; each with a new log file in `logs`, or /dev/null if None."""
    instance = PythonInstance(definition, supervisor=SUPERVISOR)
    await instance.start()
    payload = msgspec.Raw(b'{"n":1}')
    samples = []
    try:
        for n in range(events):
            began = time.perf_counter()
            path = logs / f"r{n}.log" if logs is not None else Path(os.devnull)
            outcome = await instance.invoke(f"r{n}", payload, 1, 60.0, path)
            samples.append(time.perf_counter() - began)
            assert outcome.ok, outcome.error
    finally:
        await instance.stop()
    return samples


async def bare_round_trips(events: int) -> list[float]:
    """Round trips of a small frame to a child that only echoes it."""
    loop = asyncio.get_running_loop()
    to_r, to_w = os.pipe2(os.O_CLOEXEC)
    from_r, from_w = os.pipe2(os.O_CLOEXEC)
    child = SUPERVISOR.spawn([sys.executable, "-c", ECHO_CHILD], os.environ, {3: to_r, 4: from_w})
    os.close(to_r)
    os.close(from_w)
    os.set_blocking(from_r, False)
    frame = (7).to_bytes(4, "big") + b'{"n":1}'
    waiter: list[asyncio.Future[bytes]] = []

    def readable() -> None:
        data = os.read(from_r, 65536)
        if waiter and not waiter[0].done():
            waiter[0].set_result(data)

    loop.add_reader(from_r, readable)
    samples = []
    for _ in range(events):
        waiter[:] = [loop.create_future()]
        began = time.perf_counter()
        os.write(to_w, frame)
        await waiter[0]
        samples.append(time.perf_counter() - began)
    loop.remove_reader(from_r)
    os.close(to_w)
    os.close(from_r)
    await child.wait()
    return samples


def report(name: str, samples: list[float]) -> float:
    """Print the median and p99 of `samples`; return the median."""
    median = statistics.median(samples)
    p99 = percentile(samples, 99)
    print(f"  {name:<28} median {median * 1e6:7.1f} us   p99 {p99 * 1e6:7.1f} us")
    return median


async def main(events: int, starts: int) -> None:
    """Run both measurements in one process."""
    with tempfile.TemporaryDirectory(prefix="fnspool-bench-") as tmp:
        code = Path(tmp) / "code"
        code.mkdir()
        (code / "index.py").write_text(NOOP)
        definition = FunctionDef(
            name="noop", handler="index.handler", code_dir=str(code), interpreter=sys.executable
        )
        loop = type(asyncio.get_running_loop()).__module__
        print(f"interpreter {sys.executable} ({sys.version.split()[0]}), loop {loop}")
        await cold_start(definition, starts)
        logs = Path(tmp) / "logs"
        logs.mkdir()
        bare = await bare_round_trips(events)
        quiet = await warm_invoke(definition, events, None)
        warm = await warm_invoke(definition, events, logs)
        print(f"warm invoke over {events} no-op events:")
        b = report("bare pipe round trip", bare)
        for name, samples in (
            ("invoke, log to /dev/null", quiet),
            ("invoke, new log file each", warm),
        ):
            w = report(name, samples)
            print(f"    ratio {w / b:.2f}x (overhead {(w - b) * 1e6:.1f} us per event)")
        await http_and_exec(Path(tmp), min(events, 2000), starts)


async def http_and_exec(tmp: Path, events: int, starts: int) -> None:
    """The http and exec runtimes, each beside the floor under it."""
    code = tmp / "web"
    code.mkdir()
    (code / "server.py").write_text(HTTP_NOOP)
    web = FunctionDef(name="web", runtime="http", command=[sys.executable, "server.py"],
                      code_dir=str(code))  # fmt: skip
    bare, imports, ready = [], [], []
    for _ in range(starts):
        bare.append(await bare_start())
        began = time.perf_counter()
        await SUPERVISOR.spawn([sys.executable, "-c", "import http.server"], os.environ, {}).wait()
        imports.append(time.perf_counter() - began)
        instance = HttpInstance(web, supervisor=SUPERVISOR)
        began = time.perf_counter()
        await instance.start()
        ready.append(time.perf_counter() - began)
        await instance.stop()
    b, i, r = (statistics.median(x) * 1000 for x in (bare, imports, ready))
    print(f"http cold start over {starts} (medians): python -c pass {b:.1f} ms, ", end="")
    print(f"python -c 'import http.server' {i:.1f} ms, spawn->listening {r:.1f} ms; ", end="")
    print(f"ratio {r / i:.2f}x the import")
    instance = HttpInstance(web, supervisor=SUPERVISOR)
    await instance.start()
    session = new_session(instance.port)
    payload = msgspec.Raw(b'{"n":1}')
    posts, invokes = [], []
    try:
        for n in range(events):
            began = time.perf_counter()
            async with session.post("/invoke", data=bytes(payload)) as answer:
                await answer.read()
            posts.append(time.perf_counter() - began)
            began = time.perf_counter()
            outcome = await instance.invoke(f"r{n}", payload, 1, 60.0, Path(os.devnull))
            invokes.append(time.perf_counter() - began)
            assert outcome.ok, outcome.error
    finally:
        await session.close()
        await instance.stop()
    print(f"http warm invoke over {events} no-op events:")
    p = report("bare aiohttp POST", posts)
    w = report("invoke, log to /dev/null", invokes)
    print(f"    ratio {w / p:.2f}x (overhead {(w - p) * 1e6:.1f} us per event)")
    await exec_events(tmp, min(events, 500))


async def exec_events(tmp: Path, events: int) -> None:
    """An exec event (`cat`) against spawning and reaping `cat` with nothing around it, in the
    same folder (spawn changes folder through a shell, as posix_spawn cannot) and in ours."""
    cat = FunctionDef(name="cat", runtime="exec", command=["cat"], code_dir=str(tmp))
    instance = ExecInstance(cat, supervisor=SUPERVISOR)
    await instance.start()
    payload = msgspec.Raw(b'{"n":1}')
    here, there, invokes = [], [], []
    for n in range(events):
        began = time.perf_counter()
        await SUPERVISOR.spawn(["cat"], os.environ, {}).wait()
        here.append(time.perf_counter() - began)
        began = time.perf_counter()
        await SUPERVISOR.spawn(["cat"], os.environ, {}, cwd=str(tmp)).wait()
        there.append(time.perf_counter() - began)
        began = time.perf_counter()
        outcome = await instance.invoke(f"r{n}", payload, 1, 60.0, Path(os.devnull))
        invokes.append(time.perf_counter() - began)
        assert outcome.ok, outcome.error
    print(f"exec events over {events} (`cat`):")
    report("spawn + reap of cat", here)
    s = report("the same in the code folder", there)
    w = report("invoke, log to /dev/null", invokes)
    print(f"    ratio {w / s:.2f}x (overhead {(w - s) * 1e6:.1f} us per event, most of it the")
    print("    exec of setpriv that makes the process die with the daemon)")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=5000)
    parser.add_argument("--starts", type=int, default=20)
    args = parser.parse_args()
    uvloop.run(main(args.events, args.starts))
