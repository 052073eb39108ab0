"""A temporary spool, a real daemon process over it, and waiting on conditions with deadlines."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable, Iterable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
from ray_cluster import NO_RAY, Nodes, placement_table, ray_cluster_nodes

if TYPE_CHECKING:
    from daemon.cgroups import Cgroups
    from daemon.journal_writer import JournalWriter

REPO = Path(__file__).resolve().parent.parent
EXAMPLES = REPO / "spool" / "functions"


#: How long a test waits on a condition before it fails. Generous on purpose: a busy 2-CPU
#: machine makes a test slower, never red. Figures (how long something took) are printed, and
#: thresholds on them belong in benchmarks/.
PATIENCE = 30.0
_POLL = 0.01


class Deadline:
    """`timeout` seconds from now; `check()` fails the test once past, naming what it awaited."""

    def __init__(self, timeout: float, what: str) -> None:
        self.timeout = timeout
        self.what = what
        self.at = time.monotonic() + timeout

    def check(self) -> None:
        """Raise AssertionError once the deadline has passed."""
        if time.monotonic() > self.at:
            raise AssertionError(f"timed out after {self.timeout}s waiting for {self.what}")


def wait_for(
    predicate: Callable[[], Any],
    timeout: float = PATIENCE,
    what: str = "condition",
    every: float = _POLL,
) -> Any:
    """Poll `predicate` every `every` seconds until it returns something truthy (returned); fail
    after `timeout` seconds."""
    deadline = Deadline(timeout, what)
    while not (value := predicate()):
        deadline.check()
        time.sleep(every)
    return value


async def wait_for_async(
    predicate: Callable[[], Any],
    timeout: float = PATIENCE,
    what: str = "condition",
    every: float = _POLL,
    pause: Callable[[float], Awaitable[Any]] = asyncio.sleep,
) -> Any:
    """`wait_for` on an event loop: `pause` lets the loop run between polls (a Textual pilot's
    `pause` for an app under test)."""
    deadline = Deadline(timeout, what)
    while not (value := predicate()):
        deadline.check()
        await pause(every)
    return value


#: The spools of the daemons this session started. A daemon names its cgroup folder after its
#: spool's device and inode; while a spool is there (mounted), no other directory has them, so
#: the folder named after it is its daemon's, and the clean-up touches no other.
_OUR_SPOOLS: set[Path] = set()


def note_spool(spool: Path) -> None:
    """Remember a spool a daemon of this session runs on, for the cgroup clean-up."""
    _OUR_SPOOLS.add(spool)


def cgroup_name(spool: Path) -> str:
    """The cgroup folder a daemon on `spool` makes for its instances, as daemon/service.py names
    it (test_cgroups checks that the two agree)."""
    root = spool.stat()
    return f"fnspool-{root.st_dev:x}.{root.st_ino:x}"


def cgroup_names(spools: Iterable[Path]) -> list[str]:
    """`cgroup_name` of each spool still there."""
    names = []
    for spool in spools:
        with contextlib.suppress(OSError):
            names.append(cgroup_name(spool))
    return names


def sweep_left_running(spool: Path) -> None:
    """Kill what the daemons of `spool` left running, as the next daemon on it would."""
    from daemon.supervise.sweep import sweep_predecessors
    from daemon.supervise.tokens import Tokens, spool_mark

    sweep_predecessors(Tokens(spool_mark(spool)))


def remove_cgroups(names: Iterable[str]) -> None:
    """Once the daemons whose cgroup folders are `names` are stopped (names taken while their
    spools were there): kill what the folders still hold, as the next daemon on the spool would,
    and remove them."""
    from daemon.cgroups import Cgroups, own_cgroup

    own = own_cgroup()
    if own is None:
        return
    left = [Cgroups(own / name) for name in names if (own / name).is_dir()]
    for groups in left:
        groups.sweep()
    # a killed process leaves its group a moment later
    wait_for(
        lambda: not [g for g in left if not _removed(g)],
        what=f"the cgroups of this session's daemons to empty: {[str(g.base) for g in left]}",
    )


def _removed(groups: Cgroups) -> bool:
    """Remove the groups under a daemon's base, then the base; whether all are gone."""
    for group in groups.groups():
        groups.remove(group)
    groups.close()
    return not groups.base.exists()


def fnspool(
    spool: Path,
    *args: str,
    check: bool = True,
    input: str | None = None,
    timeout: float = 60,
) -> subprocess.CompletedProcess:
    """Run the CLI against `spool` (`fnspool daemon` too, for one that must exit at once)."""
    if args[:1] == ("daemon",):
        note_spool(spool)
    proc = subprocess.run(
        [sys.executable, "-m", "daemon", *args, "--spool", str(spool)],
        capture_output=True,
        text=True,
        input=input,
        timeout=timeout,
        cwd=REPO,
    )
    if check and proc.returncode != 0:
        raise AssertionError(f"fnspool {' '.join(args)} exited {proc.returncode}: {proc.stderr}")
    return proc


def fnspool_json(spool: Path, *args: str) -> Any:
    """Run a CLI command with --json and decode its output."""
    return json.loads(fnspool(spool, *args, "--json").stdout)


class DaemonProcess:
    """`fnspool daemon` running for real over a temporary spool (optionally under a wrapper
    command such as strace, and with extra environment)."""

    def __init__(self, spool: Path) -> None:
        self.spool = spool
        self.proc: subprocess.Popen[bytes] | None = None
        self.log = spool.parent / "daemon.log"
        self.prefix: list[str] = []
        self.env: dict[str, str] | None = None

    def start(self, *extra: str, wait_ready: bool = True) -> DaemonProcess:
        self._logf = open(self.log, "ab")  # noqa: SIM115 - kept open while the daemon runs
        argv = [sys.executable, "-m", "daemon", "daemon", "--spool", str(self.spool), *extra]
        note_spool(self.spool)
        self.proc = subprocess.Popen(
            [*self.prefix, *argv],
            stdout=self._logf,
            stderr=subprocess.STDOUT,
            cwd=REPO,
            env={**os.environ, **(self.env or {})},
        )
        if wait_ready:
            wait_for(self.ready, 60, "the daemon to be ready")
        return self

    @property
    def pid(self) -> int:
        """The daemon's pid (the wrapper's child when there is a wrapper)."""
        assert self.proc is not None
        if not self.prefix:
            return self.proc.pid
        children = Path(f"/proc/{self.proc.pid}/task/{self.proc.pid}/children")
        with contextlib.suppress(OSError, ValueError, IndexError):
            return int(children.read_text().split()[0])
        return -1

    def ready(self) -> bool:
        assert self.proc is not None
        if self.proc.poll() is not None:
            raise AssertionError(f"daemon exited {self.proc.returncode}:\n{self.log_text()}")
        try:
            status = json.loads((self.spool / "run" / "status.json").read_text())
        except (OSError, ValueError):
            return False
        return status.get("pid") == self.pid and status.get("ready")

    def log_text(self) -> str:
        return self.log.read_text(errors="replace")

    def signal(self, sig: int) -> None:
        assert self.proc is not None
        self.proc.send_signal(sig)

    def stop(self, timeout: float = 30) -> int:
        if self.proc is None or self.proc.poll() is not None:
            return self.proc.returncode if self.proc else 0
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            raise

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    def close(self) -> None:
        self.kill()
        if hasattr(self, "_logf"):
            self._logf.close()


@pytest.fixture
def spool(tmp_path: Path) -> Path:
    """A fresh spool with the example functions and a few test ones."""
    root = tmp_path / "spool"
    shutil.copytree(EXAMPLES, root / "functions")
    shutil.copytree(Path(__file__).parent / "e2e_functions", root / "functions", dirs_exist_ok=True)
    return root


@pytest.fixture
def daemon(spool: Path) -> Iterator[DaemonProcess]:
    """A daemon factory over `spool`, killed at the end of the test."""
    started: list[DaemonProcess] = []

    class Factory:
        def start(self, *extra: str, wait_ready: bool = True) -> DaemonProcess:
            d = DaemonProcess(spool).start(*extra, wait_ready=wait_ready)
            started.append(d)
            return d

        def close(self) -> None:
            """Kill every daemon started so far (for a fixture whose teardown must come after
            theirs); the end of the test kills them again, harmlessly."""
            for d in started:
                d.close()

    yield Factory()  # type: ignore[misc]
    for d in started:
        d.close()
    if started and spool.is_dir():
        # a daemon killed with -9 leaves what its handlers started: kill it as the next daemon
        # on this spool would, so that no test leaves a process running
        sweep_left_running(spool)
        remove_cgroups(cgroup_names([spool]))


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """The tests on Ray run last, together: the session's cluster (a gigabyte of memory, a few
    percent of a core while idle) starts at the first of them and is up only while they run."""
    items.sort(key=_on_ray)  # stable: every other test keeps its place


def _on_ray(item: pytest.Item) -> bool:
    callspec = getattr(item, "callspec", None)
    if callspec is not None and callspec.params.get("placement") == "ray":
        return True
    return "ray_cluster" in getattr(item, "fixturenames", ())


@pytest.fixture(scope="session")
def ray_cluster() -> Iterator[Nodes]:
    """The session's Ray cluster (tests/ray_cluster.py), started by the first test that needs
    it; every Ray test shares it."""
    pytest.importorskip("ray", reason=NO_RAY)
    with ray_cluster_nodes() as nodes:
        yield nodes


class Placement:
    """Where a test's functions run: on this machine, or placed on the session's Ray cluster."""

    def __init__(self, spool: Path, daemon: Any, nodes: Nodes | None) -> None:
        self.spool = spool
        self.nodes = nodes
        self.engine = "local" if nodes is None else "ray"
        self._daemon = daemon

    def place(self, *functions: str) -> None:
        """Put the spool's definitions of `functions` on this placement (local: as they are)."""
        if self.nodes is None:
            return
        for name in functions:
            path = self.spool / "functions" / f"{name}.toml"
            path.write_text(path.read_text() + placement_table())

    def start(self, *functions: str) -> DaemonProcess:
        """Place `functions`, then start the daemon (for Ray, pointed at the cluster)."""
        self.place(*functions)
        extra = () if self.nodes is None else ("--ray-address", self.nodes.address)
        return self._daemon.start(*extra)  # type: ignore[no-any-return]

    def kind(self, runtime: str) -> str:
        """How the ids of a `runtime` function's instances begin on this placement."""
        return runtime if self.nodes is None else "ray"

    def nodes_of(self, event: dict[str, Any]) -> set[str | None]:
        """The nodes the ended attempts of `event` (from `events get --json`) ran on."""
        return {h["usage"].get("node") for h in event["history"] if "usage" in h}

    @property
    def where(self) -> set[str | None]:
        """The nodes an attempt may run on: none recorded on this machine, else a worker's."""
        return {None} if self.nodes is None else {self.nodes.a, self.nodes.b}


@pytest.fixture(params=["local", "ray"])
def placement(request: pytest.FixtureRequest, spool: Path, daemon: Any) -> Placement:
    """A test that takes it runs twice: its functions on this machine, then placed on the
    session's Ray cluster (skipped, saying why, where Ray cannot be imported)."""
    if request.param == "local":
        return Placement(spool, daemon, None)
    pytest.importorskip("ray", reason=NO_RAY)
    return Placement(spool, daemon, request.getfixturevalue("ray_cluster"))


def drop(spool: Path, function: str, name: str, payload: Any) -> Path:
    """Drop a payload for `function` the maildir way (write in tmp/, rename into incoming/NAME/)."""
    (spool / "tmp").mkdir(parents=True, exist_ok=True)
    temp = spool / "tmp" / f".{name}.tmp"
    temp.write_text(json.dumps(payload))
    target = spool / "incoming" / function / name
    target.parent.mkdir(parents=True, exist_ok=True)
    os.rename(temp, target)
    return target


def events(spool: Path, *args: str) -> list[dict[str, Any]]:
    """`fnspool events list --json` with extra filters (every match, unless --limit)."""
    every = () if "--limit" in args else ("--all",)
    return fnspool_json(spool, "events", "list", *args, *every)


def journal_records(spool: Path, kind: type | None = None) -> list[Any]:
    """Every record in the journal's segments (of one record class, if given), in order."""
    from daemon.journal import decode_record, list_segments

    found = []
    for _first, path in list_segments(spool / "journal"):
        for line in path.read_bytes().splitlines(keepends=True):
            try:
                rec = decode_record(line[:-1])
            except ValueError:
                continue
            if kind is None or isinstance(rec, kind):
                found.append(rec)
    return found


def process_state(pid: int) -> str | None:
    """The state letter of `pid` in /proc (R, S, T, Z...), or None once it is gone."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError, IndexError):  # reaped between open and read
        return None


def gone(pid: int) -> bool:
    """Whether `pid` no longer runs (a zombie waiting to be reaped counts as gone)."""
    return process_state(pid) in (None, "Z")


@pytest.fixture(autouse=True, scope="session")
def _no_leftover_cgroups() -> Iterator[None]:
    """Daemons killed by tests leave their instance cgroups behind: at the end of the session,
    those of this session's daemons on spools still there are removed, and no others."""
    yield
    remove_cgroups(cgroup_names(_OUR_SPOOLS))


async def commit(writer: JournalWriter, rec: Any) -> None:
    """Append `rec` and wait until it is on disk (as the daemon does before an event runs)."""
    writer.append(rec)
    await writer.sync()
