"""The CLI's arguments: every command, option and help text (the commands themselves are in
this package, one module each, imported only when their command runs)."""

from __future__ import annotations

import argparse
import importlib
import os
from collections.abc import Callable
from typing import Any

from daemon.ids import BadId, check_id
from daemon.limits import MAX_VALUE_BYTES
from daemon.spool import SYSTEM_SPOOL

RELOAD_TIMEOUT = 60.0  # seconds `fnspool systemd reload` waits for the daemon by default


def _command(target: str) -> Callable[[argparse.Namespace], int]:
    """The function `MODULE.NAME` of the daemon package, imported when the command runs."""
    module, name = target.split(".")

    def run(args: argparse.Namespace) -> int:
        function: Callable[[argparse.Namespace], int] = getattr(
            importlib.import_module(f"daemon.cli.{module}"), name
        )
        return function(args)

    return run


def _payload_limit(text: str) -> int:
    """--max-payload-bytes: a payload is journaled whole, so it is held to the record limit."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of bytes: {text!r}") from None
    if not 0 < value <= MAX_VALUE_BYTES:
        raise argparse.ArgumentTypeError(f"must be from 1 to {MAX_VALUE_BYTES} bytes, got {value}")
    return value


_UNIT = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}


def delay(text: str) -> float:
    """A delay: seconds, or a number with a unit (90s, 5m, 2h, 1d); finite, 0 or more."""
    number, unit = text.rstrip("smhd"), text[len(text.rstrip("smhd")) :]
    try:
        value = float(number) * _UNIT[unit]
    except (ValueError, KeyError):
        raise argparse.ArgumentTypeError(f"not a delay: {text!r} (30, 90s, 5m, 2h)") from None
    if not 0 <= value < float("inf"):
        raise argparse.ArgumentTypeError(f"must be 0 or more seconds, got {text}")
    return value


def request_id(text: str) -> str:
    """An argument that must be a request id: argparse's clear error (exit 2) when it is not."""
    try:
        return check_id(text)
    except BadId as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


class _Version(argparse.Action):
    """--version, looked up only when asked (the metadata import costs every other call)."""

    def __init__(self, option_strings: list[str], dest: str, **kwargs: Any) -> None:
        super().__init__(option_strings, dest, nargs=0, **kwargs)

    def __call__(self, parser: argparse.ArgumentParser, *_args: Any) -> None:
        from importlib.metadata import PackageNotFoundError, version

        try:
            print(f"fnspool {version('fnspool')}")
        except PackageNotFoundError:
            print("fnspool (not installed: run from a checkout)")
        parser.exit()


def build_parser() -> argparse.ArgumentParser:
    spool_help = "the spool (default: $FNSPOOL_SPOOL or ./spool)"
    common = argparse.ArgumentParser(add_help=False)
    # before or after the command; SUPPRESS: an absent one here keeps the one given before
    common.add_argument("--spool", metavar="DIR", default=argparse.SUPPRESS, help=spool_help)
    common.add_argument("--utc", action="store_true", default=argparse.SUPPRESS, help=UTC_HELP)
    parser = argparse.ArgumentParser(
        prog="fnspool", description="Stateful asynchronous function invocation on one machine."
    )
    parser.add_argument("--version", action=_Version, help="print the version and exit")
    parser.add_argument("--spool", metavar="DIR", help=spool_help)
    parser.add_argument("--utc", action="store_true", help=UTC_HELP)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    daemon = sub.add_parser("daemon", parents=[common], help="run the daemon in the foreground")
    daemon.add_argument(
        "--drain-timeout",
        type=float,
        default=30.0,
        metavar="S",
        help="on SIGTERM, how long running events may finish (default 30)",
    )
    daemon.add_argument(
        "--max-payload-bytes",
        type=_payload_limit,
        default=1 << 20,
        metavar="N",
        help="larger payload files are rejected (default 1 MiB)",
    )
    daemon.add_argument(
        "--retention", default="3d", metavar="T", help="keep ended events this long"
    )
    daemon.add_argument(
        "--snapshot-every", type=int, default=200_000, metavar="N", help="records between snapshots"
    )
    daemon.add_argument(
        "--segment-bytes", type=int, default=64 << 20, metavar="N", help="journal segment size"
    )
    daemon.add_argument(
        "--run-as",
        default=os.environ.get("FNSPOOL_RUN_AS", ""),
        metavar="USER",
        help="run the instances of functions that set no `user` as USER "
        "(default: $FNSPOOL_RUN_AS, else the daemon's own user)",
    )
    daemon.add_argument(
        "--ray-address",
        default="",
        metavar="ADDR",
        help="the Ray cluster of functions placed on Ray (default: $FNSPOOL_RAY_ADDRESS, "
        "else $RAY_ADDRESS, else a cluster started on this machine)",
    )
    daemon.add_argument("-v", "--verbose", action="store_true", help="log debug lines too")
    daemon.set_defaults(run=_command("run.daemon"))

    tui = sub.add_parser("tui", parents=[common], help="the dashboard")
    tui.set_defaults(run=_command("run.tui"))

    invoke = sub.add_parser("invoke", parents=[common], help="submit an event")
    invoke.add_argument("function", metavar="NAME", help="the function to run")
    source = invoke.add_mutually_exclusive_group()
    source.add_argument("--payload", metavar="JSON", help="the payload (default: {})")
    source.add_argument("--payload-file", metavar="F", help="read the payload from F (- for stdin)")
    invoke.add_argument(
        "--id",
        type=request_id,
        help="an explicit request id (an idempotency key): 1 to 128 letters, digits, _ . : -",
    )
    invoke.add_argument(
        "--delay", type=delay, metavar="T", help="run no sooner than T from now: 30, 90s, 5m, 2h"
    )
    invoke.add_argument("--wait", action="store_true", help="wait until the event ends")
    invoke.add_argument("--json", action="store_true", help=JSON_HELP)
    invoke.set_defaults(run=_command("invoke.invoke"))

    _events_parser(sub, common)

    functions = sub.add_parser("functions", help="function definitions")
    fsub = functions.add_subparsers(dest="action", required=True, metavar="ACTION")
    flist = fsub.add_parser("list", parents=[common], help="definitions, errors and instances")
    flist.add_argument("--json", action="store_true", help=JSON_HELP)
    flist.set_defaults(run=_command("status.functions_list"))

    status = sub.add_parser("status", parents=[common], help="daemon health (exit 3 when down)")
    status.add_argument("--json", action="store_true", help=JSON_HELP)
    status.set_defaults(run=_command("status.status"))

    for action, verb in (("pause", "hold"), ("resume", "release")):
        p = sub.add_parser(
            action,
            parents=[common],
            help=f"{verb} dispatch of one function or all (journaled; running events finish)",
        )
        p.add_argument("function", nargs="?", metavar="NAME", help="the function (default: all)")
        p.set_defaults(run=_command(f"requests.{action}"))

    metrics = sub.add_parser(
        "metrics", parents=[common], help="the daemon's figures, as Prometheus scrapes them"
    )
    metrics.set_defaults(run=_command("status.metrics"))

    completion = sub.add_parser(
        "completion", parents=[common], help="the shell completion script (bash, zsh, fish)"
    )
    completion.add_argument("shell", choices=("bash", "zsh", "fish"), help="the shell it is for")
    completion.set_defaults(run=_command("completion.completion"))

    _systemd_parser(sub, common)
    return parser


def _systemd_parser(sub: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    """`fnspool systemd install|uninstall|reload` (daemon/cli/systemd.py does them)."""
    systemd = sub.add_parser("systemd", help="install the systemd units")
    ssub = systemd.add_subparsers(dest="action", required=True, metavar="ACTION")
    for name, text in (
        ("install", "write the units, create the user and the spool"),
        ("uninstall", "remove the units (the spool is kept)"),
    ):
        p = ssub.add_parser(name, help=text)
        p.add_argument(
            "--spool",
            metavar="DIR",
            default=argparse.SUPPRESS,
            help=f"the spool (default: {SYSTEM_SPOOL}, or ~/.local/share/fnspool with --user)",
        )
        p.add_argument("--user", action="store_true", help="for `systemctl --user`")
        p.add_argument("--unit-dir", metavar="DIR", help="write the units there instead")
        p.add_argument("--now", action="store_true", help="also run the systemctl commands")
        p.set_defaults(run=_command(f"systemd.{name}"))
    r = ssub.add_parser("reload", parents=[common], help="SIGHUP the daemon and wait (ExecReload)")
    r.add_argument("--pid", type=int, required=True, help="the daemon's pid ($MAINPID)")
    r.add_argument(
        "--timeout",
        type=float,
        default=RELOAD_TIMEOUT,
        metavar="S",
        help="wait this long for the reload to show in the heartbeat",
    )
    r.set_defaults(run=_command("systemd.reload"))


JSON_HELP = "print JSON (stable fields, for scripts; its times are always UTC)"

UTC_HELP = "show times in UTC (default: local time, with its offset from UTC)"

ID_HELP = "an event's id, or a unique start of it"

LIST_LIMIT = 50  # events `events list` shows unless --limit or --all says otherwise


def _filter_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--function", metavar="F", help="events of function F")
    parser.add_argument(
        "--status",
        metavar="S[,S..]",
        help="states, e.g. Failed,Expired; or SCF's RUNNING, FINISHED, FAILED, TERMINATED",
    )
    parser.add_argument("--id-prefix", metavar="P", help="events whose id starts with P")
    parser.add_argument("--since", metavar="T", help="ISO 8601 or relative: 15m, 2h, 3d")
    parser.add_argument("--until", metavar="T", help="enqueued at or before T")
    parser.add_argument("--ended-since", metavar="T", help="ended at or after T")
    parser.add_argument("--ended-until", metavar="T", help="ended at or before T")
    parser.add_argument("--limit", type=int, metavar="N", help="at most N events")


def _events_parser(sub: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    events = sub.add_parser("events", help="list, inspect and follow events")
    esub = events.add_subparsers(dest="action", required=True, metavar="ACTION")

    elist = esub.add_parser("list", parents=[common], help="events, newest first")
    _filter_arguments(elist)
    elist.add_argument(
        "--order", choices=("asc", "desc"), default="desc", help="by time: newest first (desc)"
    )
    elist.add_argument("--offset", type=int, default=0, metavar="N", help="skip the first N")
    elist.add_argument(
        "--all",
        action="store_true",
        help=f"every event that matches (default: --limit {LIST_LIMIT})",
    )
    elist.add_argument("--json", action="store_true", help=JSON_HELP)
    elist.set_defaults(run=_command("events.events_list"))

    eget = esub.add_parser("get", parents=[common], help="one event in full")
    eget.add_argument("id", type=request_id, help=ID_HELP)
    eget.add_argument("--json", action="store_true", help=JSON_HELP)
    eget.set_defaults(run=_command("events.events_get"))

    elogs = esub.add_parser("logs", parents=[common], help="an event's log")
    elogs.add_argument("id", type=request_id, help=ID_HELP)
    elogs.add_argument("--follow", "-f", action="store_true", help="follow until the event ends")
    elogs.set_defaults(run=_command("events.events_logs"))

    estop = esub.add_parser(
        "stop",
        parents=[common],
        help="stop events, or every event not ended the filters match (forced by default; "
        "forces a graceful stop in progress)",
    )
    estop.add_argument(
        "ids", nargs="*", metavar="ID", type=request_id, help="the events (or use the filters)"
    )
    _filter_arguments(estop)
    estop.add_argument(
        "--graceful", action="store_true", help="SIGTERM first; forced after the grace period"
    )
    estop.add_argument("--yes", "-y", action="store_true", help="no confirmation")
    estop.add_argument("--wait", action="store_true", help="wait until the events have stopped")
    estop.set_defaults(run=_command("requests.events_stop"))

    eforget = esub.add_parser(
        "forget",
        parents=[common],
        help="forget ended events, or every ended event the filters match, before retention "
        "does (journaled; their logs go too)",
    )
    eforget.add_argument(
        "ids", nargs="*", metavar="ID", type=request_id, help="the events (or use the filters)"
    )
    _filter_arguments(eforget)
    eforget.add_argument("--yes", "-y", action="store_true", help="no confirmation")
    eforget.set_defaults(run=_command("requests.events_forget"))

    ereinvoke = esub.add_parser(
        "reinvoke",
        parents=[common],
        help="run an ended event again, or every ended event the filters match",
    )
    ereinvoke.add_argument("id", nargs="?", type=request_id, help="the event (or use the filters)")
    _filter_arguments(ereinvoke)
    payload = ereinvoke.add_mutually_exclusive_group()
    payload.add_argument("--payload", metavar="JSON", help="a new payload (default: the old one)")
    payload.add_argument("--payload-file", metavar="F", help="read the new payload from F")
    ereinvoke.add_argument("--yes", "-y", action="store_true", help="no confirmation")
    ereinvoke.add_argument("--wait", action="store_true", help="wait until the new events end")
    ereinvoke.add_argument("--json", action="store_true", help=JSON_HELP)
    ereinvoke.set_defaults(run=_command("requests.events_reinvoke"))

    ewait = esub.add_parser("wait", parents=[common], help="block until events end")
    ewait.add_argument("ids", nargs="+", metavar="ID", type=request_id, help=ID_HELP)
    ewait.add_argument("--timeout", type=float, metavar="S", help="give up after S seconds")
    ewait.set_defaults(run=_command("events.events_wait"))
