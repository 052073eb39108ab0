"""What the http and exec runtimes share: the function's `command`, its environment, the CPU
time of a live process, and how a program's output becomes an event's result."""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

import msgspec

from daemon.errors import spawn_failed
from daemon.functions import FunctionDef, needs_code_folder, run_folder
from daemon.runtimes.account import base_env, check_usable, instance_account, needs
from daemon.runtimes.base import InstanceStartError
from daemon.users import Account, R, X

_CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
_RESULT_CHECK = msgspec.json.Decoder()
_SETPRIV = shutil.which("setpriv")  # util-linux: sets the parent-death signal, then execs


def command_argv(function: FunctionDef) -> list[str]:
    """The function's `command`, checked: a path with a `/` in it is taken from the code folder
    (and must be there), a bare name is looked up in PATH (the function's own, if it sets one).
    InstanceStartError when it cannot run."""
    code_dir = Path(function.code_dir)
    if needs_code_folder(function) and not code_dir.is_dir():
        raise _start_error(f"the code folder {code_dir} does not exist")
    program, *args = function.command
    if "/" not in program:
        search = function.environment.get("PATH", os.environ.get("PATH", os.defpath))
        found = shutil.which(program, path=search)
        if found is None:
            raise _start_error(f"the command {program!r} is not found in PATH ({search})")
        return [found, *args]
    path = code_dir / program  # an absolute `program` stays as it is
    if not path.is_file():
        raise _start_error(f"the command {program!r} is not a file in {code_dir}")
    if not os.access(path, os.X_OK):
        raise _start_error(f"the command {str(path)!r} is not executable (chmod +x it)")
    return [str(path), *args]


def command_account(function: FunctionDef, argv: list[str]) -> Account | None:
    """The account `argv` (from `command_argv`) runs as, None for the daemon's own;
    InstanceStartError, naming the path, when that user cannot run it in the code folder."""
    account = instance_account(function)
    uses = {
        "the code folder": (run_folder(function), R | X),
        "the command": (argv[0], needs(argv[0])),
    }
    check_usable(account, uses)
    return account


def bound_to_daemon(argv: list[str]) -> list[str]:
    """`argv` run so that the kernel kills it if the daemon dies (PR_SET_PDEATHSIG, through
    util-linux's setpriv), even while it is frozen or when the daemon is killed with -9: a program
    cannot set it for itself as the python worker does. Unchanged where setpriv is missing."""
    if _SETPRIV is None:
        return argv
    return [_SETPRIV, "--pdeathsig", "KILL", "--", *argv]


def command_env(
    function: FunctionDef, instance_id: str, extra: dict[str, str], account: Account | None = None
) -> dict[str, str]:
    """The variables an instance's program gets on top of the function's `environment`
    (spawn takes away the daemon's service-manager ones); the account's HOME, USER and LOGNAME
    when it runs as another user."""
    return {
        **base_env(account),
        **function.environment,
        "FC_FUNCTION_NAME": function.name,
        "FC_FUNCTION_MEMORY_SIZE": str(function.memory_mb),
        "FC_INSTANCE_ID": instance_id,
        **extra,
    }


def process_cpu_ms(pid: int) -> float | None:
    """User + system CPU time of a live process, in milliseconds: all its threads (those that
    ended too) to the nanosecond from its CPU clock, plus its reaped children in clock ticks
    from /proc; None when it cannot be read."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
        # the command name may hold spaces and parentheses: the fields start after the last `)`
        fields = stat[stat.rindex(b")") + 2 :].split()
        ticks = [int(field) for field in fields[11:15]]  # utime stime cutime cstime
    except (OSError, ValueError, IndexError):
        return None
    children = (ticks[2] + ticks[3]) * 1000 / _CLOCK_TICKS
    try:
        own = time.clock_gettime_ns(_cpu_clock(pid)) / 1e6
    except OSError:  # gone meanwhile, or no per-process CPU clocks: ticks will do
        own = (ticks[0] + ticks[1]) * 1000 / _CLOCK_TICKS
    return round(own + children, 3)


def _cpu_clock(pid: int) -> int:
    """The clock id of a process's CPU time (Linux's MAKE_PROCESS_CPUCLOCK(pid, CPUCLOCK_SCHED):
    what clock_getcpuclockid returns, which Python does not offer)."""
    return ((~pid) << 3) | 2


def as_result(data: bytes) -> msgspec.Raw:
    """A program's answer as the event's result: itself when it is JSON, else a JSON string of
    its text (trailing newlines cut); nothing at all is null."""
    if not data.strip():
        return msgspec.Raw(b"null")
    try:
        _RESULT_CHECK.decode(data)
    except msgspec.DecodeError:
        text = data.decode("utf-8", "replace").rstrip("\r\n")
        return msgspec.Raw(msgspec.json.encode(text))
    return msgspec.Raw(data.strip())


def text_start(data: bytes, limit: int = 500) -> str:
    """The start of some output as one readable line, for an error message."""
    text = data[: limit * 4].decode("utf-8", "replace").strip()
    text = " ".join(text.split())
    return text if len(text) <= limit else text[:limit] + "…"


def _start_error(message: str) -> InstanceStartError:
    return InstanceStartError(spawn_failed(message))
