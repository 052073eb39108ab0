"""Who an instance runs as: the function's `user` (the daemon's `--run-as` filled in for those
without one), resolved and checked when the instance starts, before any of its code runs.

Only what the instance itself opens is checked: its code folder, its interpreter or program and
the python worker's bootstrap. Its logs are not: the daemon writes them from the instance's pipes.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

from daemon.errors import spawn_failed
from daemon.functions import FunctionDef
from daemon.runtimes.base import InstanceStartError
from daemon.users import Account, R, X, denied, login_env, lookup, name_of


def instance_account(function: FunctionDef) -> Account | None:
    """The account `function`'s processes switch to, or None to stay the daemon's own;
    InstanceStartError when the user is gone or the daemon may not switch to it."""
    if not function.user:
        return None
    try:
        account = lookup(function.user)
    except ValueError as exc:
        raise start_error(f"`user`: {exc}") from None
    if account.uid == os.geteuid() and account.gid == os.getegid():
        return None  # already that user: nothing to change
    if os.geteuid() != 0:
        raise start_error(
            f"cannot run as user {account.name}: the daemon runs as {name_of(os.geteuid())}, "
            "and only a daemon run as root can start instances as another user"
        )
    return account


def check_usable(account: Account | None, uses: Mapping[str, tuple[str, int]]) -> None:
    """InstanceStartError naming the first path `account` cannot use as it must; `uses` maps
    what each path is (`the code folder`) to the path and the access it needs (R, X)."""
    if account is None:
        return
    for what, (path, want) in uses.items():
        found = denied(account, path, want)
        if found is None:
            continue
        in_the_way, why = found
        if in_the_way == os.path.realpath(path):
            raise start_error(f"{what} {why}")  # the path itself, named once
        raise start_error(f"{what} {path} cannot be used: {why}")


def needs(path: str) -> int:
    """The access running `path` needs: execute, and read too for a `#!` script (the kernel
    hands it to its interpreter, which opens it as the user)."""
    try:
        with open(path, "rb") as f:
            return R | X if f.read(2) == b"#!" else X
    except OSError:
        return X


def base_env(account: Account | None) -> dict[str, str]:
    """The daemon's environment, with the account's HOME, USER and LOGNAME when it switches
    (the function's own `environment` goes on top)."""
    return {**os.environ, **login_env(account)} if account is not None else dict(os.environ)


def start_error(message: str) -> InstanceStartError:
    """A start error of type SpawnError (the event becomes Invalid)."""
    return InstanceStartError(spawn_failed(message))
