"""`fnspool daemon` and `fnspool tui`: the two long-running programs, started from the CLI."""

from __future__ import annotations

import argparse
import logging
import os
import time

from daemon import lock
from daemon.cli.shared import (
    spool_of,
)
from daemon.errors import FnspoolError
from daemon.query import parse_time


def daemon(args: argparse.Namespace) -> int:
    """Run the daemon in the foreground until SIGTERM."""
    import uvloop

    from daemon.logsetup import log_to_stderr
    from daemon.service import Daemon, Settings

    log_to_stderr(logging.DEBUG if args.verbose else logging.INFO)
    settings = Settings(
        drain_timeout=args.drain_timeout,
        max_payload_bytes=args.max_payload_bytes,
        retention=time.time() - parse_time(args.retention),
        snapshot_every=args.snapshot_every,
        segment_bytes=args.segment_bytes,
        run_as=_run_as(args.run_as),
        ray_address=args.ray_address,
    )
    try:
        return uvloop.run(Daemon(spool_of(args), settings).run())
    except lock.LockHeld as exc:
        raise FnspoolError(str(exc), title="spool busy") from None


def _run_as(name: str) -> str:
    """`--run-as` checked: a known user, and one this daemon may switch to."""
    from daemon import users

    if not name:
        return ""
    try:
        account = users.lookup(name)
    except ValueError as exc:
        raise FnspoolError(str(exc), title="bad --run-as", exit_code=2) from None
    if os.geteuid() != 0 and account.uid != os.geteuid():
        raise FnspoolError(
            f"only a daemon run as root can run instances as user {name} "
            f"(this one would run as {users.name_of(os.geteuid())})",
            title="bad --run-as",
            exit_code=2,
        )
    return name


def tui(args: argparse.Namespace) -> int:
    """Start the dashboard."""
    from tui.app import run  # textual is loaded only for the dashboard

    spool = spool_of(args)
    if not spool.root.is_dir():
        raise FnspoolError(f"no spool at {spool.root} (use --spool DIR)", title="tui", exit_code=2)
    run(spool)
    return 0
