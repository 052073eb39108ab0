"""Starting a child: its environment, its descriptors, its argv (folder, user) and `posix_spawn`.

Never fork with a `preexec_fn`: the daemon has threads. What must happen in the child before the
program runs (a change of folder, of user, of cgroup) is done by small programs `argv` is wrapped
in, each ending in an exec.
"""

from __future__ import annotations

import errno
import fcntl
import logging
import os
import shutil
import signal
from collections.abc import Mapping, Sequence

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


def child_env(base: Mapping[str, str], extra: Mapping[str, str]) -> dict[str, str]:
    """`base` updated with `extra`, without the daemon's service-manager variables."""
    env = {**base, **extra}
    for key in STRIPPED_ENV:
        env.pop(key, None)
    return env


def wrapped_argv(argv: Sequence[str], cwd: str | None, user: Account | None) -> list[str]:
    """`argv` run in `cwd` and as `user` (its uid, gid and groups set before anything of `argv`
    runs, the change of directory included), where given."""
    argv = list(argv)
    if cwd is not None:
        # posix_spawn has no chdir action in Python 3.11: let a shell change directory, then exec
        argv = ["/bin/sh", "-c", 'cd -- "$0" && exec "$@"', cwd, *argv]
    if user is not None:
        argv = _as_user(user, argv)
    return argv


def _as_user(user: Account, argv: list[str]) -> list[str]:
    """`argv` run as `user` through util-linux's setpriv (posix_spawn cannot change ids; a
    `preexec_fn` would fork a threaded daemon). The change clears the parent-death signal, so a
    runtime's own `setpriv --pdeathsig` comes after it in `argv`, never before."""
    if _SETPRIV is None:
        raise OSError(errno.ENOENT, f"setpriv (util-linux) is needed to run as user {user.name}")
    ids = [f"--reuid={user.uid}", f"--regid={user.gid}", "--init-groups"]
    return [_SETPRIV, *ids, "--", *argv]


def start_process(argv: list[str], env: Mapping[str, str], fds: Mapping[int, int]) -> int:
    """`posix_spawn` `argv` in a new session with `fds` mapped (child fd -> our fd), stdin
    /dev/null unless mapped, the signals reset; its pid. OSError if it cannot be executed."""
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
    finally:
        for fd in temporaries:
            os.close(fd)
    _batch_policy(pid)
    return pid


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
