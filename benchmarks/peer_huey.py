"""The peer: Huey with SqliteHuey storage in a temporary directory, a consumer with 2 worker
processes, and the same no-op task as fnspool's `noop` function.

SqliteHuey keeps its defaults (WAL, SQLite's synchronous=FULL: each commit is fsynced), as
fnspool's journal is. The consumer polls its queue; its idle back-off is capped at 50 ms
(`--max-delay 0.05`, default 10 s) so that a burst arriving at an idle consumer is not timed from
the end of a long nap."""

from __future__ import annotations

import importlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from types import ModuleType
from typing import Any

INSTALL_HINT = (
    "Huey is not installed; it is needed only for this benchmark: "
    ".venv/bin/pip install -e '.[bench]'"
)

TASKS_MODULE = "fnspool_bench_tasks"
TASKS = """
import os
import time

from huey import SqliteHuey

huey = SqliteHuey("fnspool-bench", filename=os.environ["FNSPOOL_BENCH_HUEY_DB"])


@huey.task()
def noop(n):
    return {"t": time.monotonic()}
"""


class Huey:
    """A running Huey consumer over a database in `root`, and the client side that enqueues."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.log = root / "huey-consumer.log"
        (root / f"{TASKS_MODULE}.py").write_text(TASKS)
        os.environ["FNSPOOL_BENCH_HUEY_DB"] = str(root / "huey.db")
        sys.path.insert(0, str(root))
        self.tasks: ModuleType = importlib.import_module(TASKS_MODULE)
        self.consumer: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        """Start the consumer, in a session of its own so that it can be stopped as a group."""
        command = [sys.executable, "-m", "huey.bin.huey_consumer", f"{TASKS_MODULE}.huey"]
        command += ["-k", "process", "-w", "2", "--delay", "0.01", "--max-delay", "0.05"]
        with self.log.open("wb") as log:
            self.consumer = subprocess.Popen(
                command, cwd=self.root, stdout=log, stderr=log, start_new_session=True
            )

    def stop(self) -> None:
        """SIGINT (Huey's graceful stop), then SIGKILL to the consumer's group after 10 s."""
        if self.consumer is None:
            return
        pgid = self.consumer.pid  # its own session: the group id is its pid
        if self.consumer.poll() is None:
            self.consumer.send_signal(signal.SIGINT)
            with suppress(subprocess.TimeoutExpired):
                self.consumer.wait(10)
        with suppress(ProcessLookupError):
            os.killpg(pgid, signal.SIGKILL)  # workers it left behind, if any
        self.consumer.wait()
        self.consumer = None

    def burst(self, count: int, deadline: float = 120.0) -> float:
        """Events/s for `count` tasks enqueued one after another, until all results are stored."""
        huey = self.tasks.huey
        start = time.perf_counter()
        results = [self.tasks.noop(i) for i in range(count)]
        while huey.storage.result_store_size() < count:
            if time.perf_counter() - start > deadline:
                stored = huey.storage.result_store_size()
                raise SystemExit(f"only {stored} of {count} Huey tasks ended in {deadline:.0f} s")
            self._check_alive()
            time.sleep(0.005)
        elapsed = time.perf_counter() - start
        self._collect(results)
        return count / elapsed

    def _check_alive(self) -> None:
        assert self.consumer is not None
        if self.consumer.poll() is not None:
            tail = self.log.read_text(errors="replace").splitlines()[-5:]
            raise SystemExit(
                f"the Huey consumer exited with code {self.consumer.returncode}:\n"
                + "\n".join(tail)
            )

    def _collect(self, results: list[Any]) -> None:
        """Take every result out of the store (so the next burst starts empty); exit on errors."""
        from huey.exceptions import TaskException

        failed = []
        for result in results:
            try:
                result.get()
            except TaskException as exc:
                failed.append(exc)
        if failed:
            raise SystemExit(
                f"{len(failed)} of {len(results)} Huey tasks failed; the first: {failed[0]}"
            )


@contextmanager
def running_huey(root: Path) -> Iterator[Huey]:
    """A Huey consumer over a database in `root` for the length of the block."""
    peer = Huey(root)
    peer.start()
    try:
        yield peer
    finally:
        peer.stop()
