"""Child processes of instances: spawn in their own session, watch for exit, kill the group.

The one place for process handling, shared by every runtime. `posix_spawn` (never fork with a
`preexec_fn`: the daemon has threads), exit noticed through a pidfd on the event loop, status and
resource usage reaped with `wait4`.

A process group is not a jail: a descendant that calls `setsid()` leaves it, and one whose parent
dies is reparented. So the daemon makes itself a child subreaper (orphans of its instances come to
it, not to init), marks every child's environment with a token of its own, and a kill stops and
kills the whole tree: the group, every descendant found through /proc/PID/task/*/children, and every
orphan carrying the token. At shutdown, whatever still carries one of the daemon's tokens is killed
before the daemon exits: a pid hopper caught between two reads of /proc would otherwise run on under
init. What still escapes is a process that both left the tree and cleared its environment; a
delegated cgroup (`cgroup.kill`) is the only complete answer to that. A child enters its group
before it runs anything of its own (cgroups.Cgroups.join_argv), so none of its forks is left out.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import errno
import fcntl
import itertools
import logging
import os
import shutil
import signal
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from pathlib import Path

import msgspec

from daemon.cgroups import Cgroups
from daemon.users import Account

log = logging.getLogger(__name__)

#: variables of the daemon's own service manager that must never reach an instance
STRIPPED_ENV = ("NOTIFY_SOCKET", "WATCHDOG_PID", "WATCHDOG_USEC", "LISTEN_FDS", "LISTEN_PID")

# signals the daemon may ignore or handle that a child must start with at their default action
_DEFAULT_SIGNALS = (
    signal.SIGPIPE,
    signal.SIGXFSZ,
    signal.SIGHUP,
    signal.SIGINT,
    signal.SIGQUIT,
    signal.SIGTERM,
    signal.SIGCHLD,
)

_SETPRIV = shutil.which("setpriv")  # util-linux: runs a child as another user
_POLL_INTERVAL = 0.05  # seconds, only where pidfd_open is missing

TOKEN_VAR = "FNSPOOL_SUPERVISOR_TOKEN"  # in every child's environment: finds orphaned descendants
_tokens = itertools.count(1)
_spawned: set[int] = set()  # pids spawned here and not yet reaped: never reaped as orphans
_live_tokens: set[str] = set()  # tokens of children not yet reaped: their orphans may live
_PR_SET_CHILD_SUBREAPER = 36
_subreaper = False
_REAP_INTERVAL = 0.25  # seconds between looks at orphans: kill those of ended instances, reap
_MAX_KILL_ROUNDS = 50  # rounds of "stop what is new" before the kill, against a forking tree
_NEWEST = 64  # pids last handed out, read first in a sweep of /proc: a pid hopper has one of them
_mark = "-"  # the spool's mark, the start of every token: finds a killed predecessor's leftovers
_cgroups: Cgroups | None = None  # a cgroup v2 group per child, where the daemon may make them
_emptied: set[Path] = set()  # groups killed, to be removed once their processes are gone


class ExitStatus(msgspec.Struct, frozen=True, kw_only=True):
    """How a child ended and what it cost over its whole life."""

    returncode: int  # as subprocess: negative for a signal
    cpu_ms: float
    max_memory_mb: float

    @property
    def exit_code(self) -> int | None:
        """The exit code, or None when a signal ended it."""
        return self.returncode if self.returncode >= 0 else None

    @property
    def signal(self) -> int | None:
        """The signal that ended it, or None on a normal exit."""
        return -self.returncode if self.returncode < 0 else None


class Child:
    """A spawned process leading its own session and process group."""

    def __init__(
        self,
        pid: int,
        *,
        kill_group_on_exit: bool,
        token: str = "",
        cgroup: Path | None = None,
    ) -> None:
        self.pid = pid
        self.token = token
        self.cgroup = cgroup
        self.status: ExitStatus | None = None
        self._kill_group_on_exit = kill_group_on_exit
        self._loop = asyncio.get_running_loop()
        self.exited: asyncio.Future[ExitStatus] = self._loop.create_future()
        self._pidfd: int | None = None
        try:
            self._pidfd = os.pidfd_open(pid)
        except (AttributeError, OSError):
            self._loop.call_later(_POLL_INTERVAL, self._poll)
        else:
            self._loop.add_reader(self._pidfd, self._reap)

    @property
    def returncode(self) -> int | None:
        """The exit status once reaped (negative for a signal), else None."""
        return self.status.returncode if self.status else None

    def kill_group(self, sig: int) -> bool:
        """Send `sig` to the child's process group; False if it is already gone."""
        if self.status is not None:
            # reaped: the group id may belong to someone else by now
            return False
        if sig == signal.SIGKILL:
            kill_tree(self.pid, self.token)
            if self.cgroup is not None:
                Cgroups.kill(self.cgroup)  # also what left the tree and cleared its environment
        try:
            os.killpg(self.pid, sig)
        except ProcessLookupError:
            return False
        except PermissionError:
            # the group leader is a zombie and every other member is gone
            return False
        return True

    async def wait(self) -> ExitStatus:
        """Wait until the child has exited and been reaped."""
        return await asyncio.shield(self.exited)

    def _poll(self) -> None:
        if not self._reap():
            self._loop.call_later(_POLL_INTERVAL, self._poll)

    def _reap(self) -> bool:
        """Reap the child if it has exited; True once it is."""
        if self.status is not None:
            return True
        if self._kill_group_on_exit:
            # before wait4: the zombie leader keeps the group id from being reused
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.pid, signal.SIGKILL)
        try:
            pid, status, usage = os.wait4(self.pid, os.WNOHANG)
            if pid != 0 and self._kill_group_on_exit:
                _live_tokens.discard(self.token)  # orphans in transit: the reaper's next tick
                kill_tree(None, self.token)  # its orphans, reparented to the daemon
                if self.cgroup is not None:
                    Cgroups.kill(self.cgroup)
                    _emptied.add(self.cgroup)
        except ChildProcessError:
            # reaped by someone else: the status is lost, the notification must not be
            log.warning("child %d was reaped elsewhere: exit status unknown", self.pid)
            pid, status, usage = self.pid, 255 << 8, None
        if pid == 0:
            return False
        _spawned.discard(self.pid)
        self.status = ExitStatus(
            returncode=os.waitstatus_to_exitcode(status),
            cpu_ms=round((usage.ru_utime + usage.ru_stime) * 1000, 3) if usage else 0.0,
            max_memory_mb=round(usage.ru_maxrss / 1024, 2) if usage else 0.0,
        )
        self._close_pidfd()
        if not self.exited.done():
            self.exited.set_result(self.status)
        return True

    def _close_pidfd(self) -> None:
        if self._pidfd is not None:
            self._loop.remove_reader(self._pidfd)
            os.close(self._pidfd)
            self._pidfd = None


def child_env(base: Mapping[str, str], extra: Mapping[str, str]) -> dict[str, str]:
    """`base` updated with `extra`, without the daemon's service-manager variables."""
    env = {**base, **extra}
    for key in STRIPPED_ENV:
        env.pop(key, None)
    return env


def spawn(
    argv: Sequence[str],
    env: Mapping[str, str],
    fds: Mapping[int, int],
    *,
    cwd: str | None = None,
    kill_group_on_exit: bool = True,
    user: Account | None = None,
) -> Child:
    """Start `argv` in a new session with `fds` mapped (child fd -> our fd); stdin is /dev/null
    unless mapped; as `user` when given (its uid, gid and groups are set before anything of
    `argv` runs, the change of directory included). Call from the event loop; OSError if it
    cannot be executed."""
    token = f"{_mark}/{os.getpid()}-{next(_tokens)}"
    env = child_env(env, {TOKEN_VAR: token})
    argv = list(argv)
    if cwd is not None:
        # posix_spawn has no chdir action in Python 3.11: let a shell change directory, then exec
        argv = ["/bin/sh", "-c", 'cd -- "$0" && exec "$@"', cwd, *argv]
    if user is not None:
        argv = _as_user(user, argv)
    group = _cgroups.new_group(token.replace("/", "_")) if _cgroups is not None else None
    if group is not None:  # outermost: the move needs the daemon's ids, not the user's
        argv = Cgroups.join_argv(group, argv)
    actions, temporaries = _file_actions(fds)
    try:
        spawner = os.posix_spawn if os.path.isabs(argv[0]) else os.posix_spawnp
        pid = spawner(
            argv[0],
            argv,
            env,
            file_actions=actions,
            setsid=True,
            setsigmask=(),
            setsigdef=_DEFAULT_SIGNALS,
        )
    except OSError:
        if group is not None:
            Cgroups.remove(group)
        raise
    finally:
        for fd in temporaries:
            os.close(fd)
    _spawned.add(pid)
    _live_tokens.add(token)
    _batch_policy(pid)
    if group is not None:
        Cgroups.join(group, pid)  # in case its own move failed
    return Child(pid, kill_group_on_exit=kill_group_on_exit, token=token, cgroup=group)


def _as_user(user: Account, argv: list[str]) -> list[str]:
    """`argv` run as `user` through util-linux's setpriv (posix_spawn cannot change ids; a
    `preexec_fn` would fork a threaded daemon). The change clears the parent-death signal, so a
    runtime's own `setpriv --pdeathsig` comes after it in `argv`, never before."""
    if _SETPRIV is None:
        raise OSError(errno.ENOENT, f"setpriv (util-linux) is needed to run as user {user.name}")
    ids = [f"--reuid={user.uid}", f"--regid={user.gid}", "--init-groups"]
    return [_SETPRIV, *ids, "--", *argv]


def _batch_policy(pid: int) -> None:
    """Run `pid` (and what it starts) under SCHED_BATCH: the same share of the CPU, but when woken
    it does not preempt the daemon. Otherwise the worker woken by each event's frame takes the CPU
    from the event loop in the middle of its write, and a burst runs at the pace of the switches."""
    try:
        os.sched_setscheduler(pid, os.SCHED_BATCH, os.sched_param(0))
    except ProcessLookupError:
        pass  # it has already exited
    except OSError as exc:  # a seccomp filter or an odd kernel: it runs as usual
        log.debug("cannot set SCHED_BATCH for pid %d: %s", pid, exc)


async def release_cgroups(timeout: float = 2.0) -> None:
    """At shutdown, once every instance is retired: kill what still carries one of this daemon's
    tokens (`sweep_own`) and what the instances' groups still hold, wait (up to `timeout`) until
    it is gone, then remove the groups and the daemon's own."""
    killed = sweep_own()
    if _cgroups is not None:
        for group in _cgroups.groups():
            Cgroups.kill(group)
            _emptied.add(group)
    deadline = asyncio.get_running_loop().time() + timeout
    while asyncio.get_running_loop().time() < deadline:
        for group in list(_emptied):
            if Cgroups.remove(group):
                _emptied.discard(group)
        _reap_exited()
        killed = {pid for pid in killed if _alive(pid)}
        if not _emptied and not killed:
            break
        await asyncio.sleep(0.02)
    if _cgroups is not None:
        _cgroups.close()


def use_cgroups(groups: Cgroups | None) -> None:
    """Put every child spawned from now on into a cgroup of its own under `groups`."""
    global _cgroups
    _cgroups = groups


def adopt_orphans(loop: asyncio.AbstractEventLoop) -> None:
    """Make this process (the daemon, from its main thread) a child subreaper: orphaned
    descendants of instances come to it, to be killed with their instance and reaped here.
    Not done by default: a process that also runs other children (a test runner) would have
    their statuses taken."""
    global _subreaper
    if _subreaper:
        return
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.prctl(_PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) != 0:
            log.warning("cannot become a child subreaper: errno %d", ctypes.get_errno())
            return
    except (OSError, AttributeError) as exc:
        log.warning("cannot become a child subreaper: %s", exc)
        return
    _subreaper = True
    # uvloop keeps SIGCHLD for itself: orphans are looked at on a short timer instead

    def tick() -> None:
        reap_orphans()
        loop.call_later(_REAP_INTERVAL, tick)

    loop.call_later(_REAP_INTERVAL, tick)


def sweep_predecessors(spool_mark: str) -> int:
    """Mark this daemon's children with `spool_mark`, and SIGKILL what a predecessor on the same
    spool left running: a handler's own children outlive a `kill -9` of the daemon (only the
    instance itself has the parent-death signal). Call with the spool's lock held, before any
    spawn. How many were killed."""
    global _mark
    _mark = spool_mark
    mine = f"{spool_mark}/{os.getpid()}-"
    killed = _stop_then_kill(
        lambda: _carrying(
            lambda token: token.startswith(f"{spool_mark}/") and not token.startswith(mine)
        ),
        until_still=True,
    )
    if killed:
        log.warning("killed %d processes a previous daemon of this spool left running", len(killed))
    return len(killed)


def sweep_own() -> set[int]:
    """SIGKILL every process that carries one of this daemon's tokens, wherever it went: at
    shutdown, once every instance is retired, nothing of theirs may outlive the daemon under init
    (a pid hopper, which forks, calls setsid() and exits again and again, can slip between two
    reads of /proc while its instance is killed). What was killed."""
    mine = f"{_mark}/{os.getpid()}-"

    def find() -> Iterator[int]:
        _reap_exited()  # a hopper leaves a zombie at every hop: the lists stay short
        # the daemon's own children first, the newest first: orphans come to it (a subreaper)
        for pid in reversed(_children(os.getpid())):
            if (_token_of(pid) or "").startswith(mine):
                yield pid
        yield from _carrying(lambda token: token.startswith(mine))

    killed = _stop_then_kill(find, until_still=True)
    if killed:
        log.warning("killed %d processes carrying this daemon's tokens at shutdown", len(killed))
    return killed


def _carrying(match: Callable[[str], bool]) -> Iterator[int]:
    """Every live process whose token `match`es, the newest first: the last pids handed out are
    read at once (a pid hopper has one of them, and is gone from a pid read too late), then the
    rest of /proc."""
    last = _last_pid() or 0
    top = _read_int("/proc/sys/kernel/pid_max") or 1 << 22  # pids are handed out in turn to it
    newest = [(last - i - 1) % top + 1 for i in range(_NEWEST)] if last else []
    yield from (pid for pid in newest if _carries(pid, match))
    listed = {int(entry) for entry in os.listdir("/proc") if entry.isdigit()} - set(newest)
    rest = sorted(listed, key=lambda pid: (last - pid) % top)
    yield from (pid for pid in rest if _carries(pid, match))


def _carries(pid: int, match: Callable[[str], bool]) -> bool:
    # a thread's id opens in /proc too (though not listed there): only its process counts
    token = _token_of(pid) if pid != os.getpid() else None
    return token is not None and match(token) and _leads(pid)


def _leads(pid: int) -> bool:
    """Whether `pid` is a process (the leader of its thread group), not one of its threads."""
    try:
        with open(f"/proc/{pid}/status", "rb") as f:
            for line in f:
                if line.startswith(b"Tgid:"):
                    return int(line.split()[1]) == pid
    except (OSError, ValueError, IndexError):
        pass
    return False


def _last_pid() -> int | None:
    """The pid last handed out (in this pid namespace), where the kernel tells."""
    return _read_int("/proc/sys/kernel/ns_last_pid")


def _read_int(path: str) -> int | None:
    try:
        with open(path, "rb") as f:
            return int(f.read())
    except (OSError, ValueError):
        return None


def _children(pid: int) -> list[int]:
    found: list[int] = []
    try:
        for task in os.listdir(f"/proc/{pid}/task"):
            with open(f"/proc/{pid}/task/{task}/children", "rb") as f:
                found.extend(int(child) for child in f.read().split())
    except (OSError, ValueError):
        pass  # it exited meanwhile
    return found


def descendants(pid: int) -> Iterator[int]:
    """Every live descendant of `pid` (whatever its session or group), found through /proc; each
    one before its children are read, so that it can be stopped first."""
    found: set[int] = set()
    todo = _children(pid)
    while todo:
        current = todo.pop()
        if current not in found:
            found.add(current)
            yield current
            todo.extend(_children(current))


def _orphans(token: str) -> Iterator[int]:
    """Processes reparented to the daemon that carry `token` (the newest first), and their
    descendants."""
    if not token:
        return
    for pid in reversed(_children(os.getpid())):
        if pid not in _spawned and _token_of(pid) == token:
            yield pid
            yield from descendants(pid)


def kill_tree(pid: int | None, token: str) -> int:
    """SIGKILL the group led by `pid`, all its descendants and the orphans marked `token`; first
    SIGSTOP them, round after round, so that nothing forks away meanwhile. How many were found."""
    if pid is not None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pid, signal.SIGSTOP)
    stopped = _stop_then_kill(
        lambda: itertools.chain(descendants(pid) if pid is not None else (), _orphans(token))
    )
    if stopped:
        log.info(
            "killed %d processes %s",
            len(stopped),
            f"descending from pid {pid}" if pid is not None else f"orphaned, marked {token}",
        )
    return len(stopped)


def _stop_then_kill(find: Callable[[], Iterable[int]], *, until_still: bool = False) -> set[int]:
    """SIGSTOP each process `find` yields as soon as it is found, round after round until a round
    finds none new (so that nothing forks away meanwhile), then SIGKILL all of it; what was found.
    `until_still`: and until no process at all was made during a round, for a search of all /proc:
    a pid hopper may have left a pid in the instant between the listing and its reading."""
    stopped: set[int] = set()
    for _ in range(_MAX_KILL_ROUNDS):
        last = _last_pid() if until_still else None
        new = False
        for each in find():
            if each not in stopped:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.kill(each, signal.SIGSTOP)
                stopped.add(each)
                new = True
        if not new and (last is None or _last_pid() == last):
            break
    for each in stopped:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(each, signal.SIGKILL)
    return stopped


def reap_orphans() -> None:
    """Kill the orphans whose instance has ended (one whose parent was exiting during the kill
    was in neither's list of children then), and reap the ones that exited."""
    if not _subreaper:
        return
    for group in list(_emptied):
        if Cgroups.remove(group):
            _emptied.discard(group)
    for pid in _children(os.getpid()):
        if pid in _spawned:
            continue
        token = _token_of(pid)
        if token and token not in _live_tokens:
            kill_tree(None, token)
    _reap_exited()


def _reap_exited() -> None:
    """Reap the orphans that exited (as a subreaper only: else a child is someone else's)."""
    if not _subreaper:
        return
    for pid in _children(os.getpid()):
        if pid not in _spawned:
            with contextlib.suppress(ChildProcessError):
                os.waitpid(pid, os.WNOHANG)


def _alive(pid: int) -> bool:
    """Whether `pid` runs (a zombie does not)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            return f.read().rsplit(b")", 1)[1].split()[0] != b"Z"
    except (OSError, IndexError):
        return False


def _token_of(pid: int) -> str | None:
    prefix = f"{TOKEN_VAR}=".encode()
    try:
        with open(f"/proc/{pid}/environ", "rb") as f:
            for entry in f.read().split(b"\0"):
                if entry.startswith(prefix):
                    return entry[len(prefix) :].decode(errors="replace")
    except OSError:
        pass
    return None


def _file_actions(fds: Mapping[int, int]) -> tuple[list[tuple[int, int, int]], list[int]]:
    """dup2 actions for `fds`, from temporary copies numbered above every target so that no
    dup2 clobbers a source another action still needs."""
    fds = dict(fds)
    temporaries: list[int] = []
    if 0 not in fds:
        fds[0] = devnull = os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC)
        temporaries.append(devnull)
    floor = max(fds) + 1
    actions = []
    try:
        for target, source in fds.items():
            copy = fcntl.fcntl(source, fcntl.F_DUPFD_CLOEXEC, floor)
            temporaries.append(copy)
            actions.append((os.POSIX_SPAWN_DUP2, copy, target))
    except BaseException:
        for fd in temporaries:
            os.close(fd)
        raise
    return actions, temporaries


def peak_memory_mb(pid: int) -> float | None:
    """Peak resident memory (VmHWM) of a live process in MB, or None if unknown."""
    try:
        with open(f"/proc/{pid}/status", "rb") as f:
            for line in f:
                if line.startswith(b"VmHWM:"):
                    return round(int(line.split()[1]) / 1024, 2)
    except (OSError, ValueError, IndexError):
        return None
    return None


_PAGE_MB = os.sysconf("SC_PAGE_SIZE") / (1 << 20)


def tree_rss_mb(pid: int) -> float:
    """Resident memory of `pid` and all its descendants, in MB (0 for what is gone)."""
    total, todo, seen = 0.0, [pid], set()
    while todo:
        current = todo.pop()
        if current in seen:
            continue
        seen.add(current)
        try:
            with open(f"/proc/{current}/statm", "rb") as f:
                total += int(f.read().split()[1]) * _PAGE_MB
            for task in os.listdir(f"/proc/{current}/task"):
                with open(f"/proc/{current}/task/{task}/children", "rb") as f:
                    todo.extend(int(child) for child in f.read().split())
        except (OSError, ValueError, IndexError):
            continue  # it exited meanwhile
    return total


class MemoryWatch:
    """Polls a process tree's resident memory while it works; calls `on_exceed(used_mb)` once
    when it passes `limit_mb` (the caller kills it: MemoryLimitExceeded)."""

    interval = 0.05  # seconds

    def __init__(self, pid: int, limit_mb: float, on_exceed: Callable[[float], None]) -> None:
        self.pid = pid
        self.limit_mb = limit_mb
        self.on_exceed = on_exceed
        self.peak_mb = 0.0
        self._loop = asyncio.get_running_loop()
        # the first look after one interval: most events end sooner and cost nothing here
        self._timer: asyncio.TimerHandle | None = self._loop.call_later(self.interval, self._check)

    def _check(self) -> None:
        used = tree_rss_mb(self.pid)
        self.peak_mb = max(self.peak_mb, used)
        if used > self.limit_mb:
            self._timer = None
            self.on_exceed(used)
            return
        self._timer = self._loop.call_later(self.interval, self._check)

    def stop(self) -> None:
        """Stop watching."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
