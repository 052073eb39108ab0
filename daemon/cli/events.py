"""`fnspool events list|get|logs|wait`: reading events, their views for people, their logs."""

from __future__ import annotations

import argparse
import json
import sys
import time
from datetime import datetime
from pathlib import Path
from typing import Any

from daemon.cli.shared import (
    POLL,
    filter_of,
    find,
    print_bytes,
    print_json,
    reads_of,
    spool_of,
    wait_for_end,
)
from daemon.errors import FnspoolError
from daemon.fcrecord import condition_of
from daemon.files.eventlog import LogReader
from daemon.model import Event, State
from daemon.query import detail, iso, log_path, shown, summary
from daemon.spool import Spool
from daemon.text import printable

LOG_LINES_SHOWN = 10  # of an event's log, by `events get`

LOG_TAIL_BYTES = 16 << 10

_ROW = "{:36}  {:16} {:10} {:>3}  {:29} {:>10}  {}"


def events_list(args: argparse.Namespace) -> int:
    """List events matching the filters, newest first unless --order asc; 50 unless --limit or
    --all, and a line on stderr when more match."""
    from daemon.cli.parser import LIST_LIMIT

    limit = None if args.all else (args.limit if args.limit is not None else LIST_LIMIT)
    if args.offset < 0:
        raise FnspoolError("--offset must be 0 or more", exit_code=2)
    wanted = None if limit is None else args.offset + limit + 1  # one more: do more match?
    chosen = reads_of(spool_of(args)).select(
        filter_of(args), limit=wanted, newest_first=args.order == "desc"
    )[args.offset :]
    if limit is not None and len(chosen) > limit:
        chosen = chosen[:limit]
        print(f"fnspool: {limit} shown, more match: --limit N or --all", file=sys.stderr)
    if args.json:
        print_json([summary(e) for e in chosen])
        return 0
    print(_ROW.format("ID", "FUNCTION", "STATE", "ATT", "ENQUEUED", "DURATION", "ERROR"))
    for e in chosen:
        duration = f"{e.duration_ms:.1f}ms" if e.duration_ms is not None else "-"
        error = printable(f"{e.error.type}: {e.error.message}")[:60] if e.error else ""
        print(
            _ROW.format(
                e.id, e.function, e.state.value, e.attempts, shown(e.enqueued_at), duration, error
            )
        )
    return 0


def events_get(args: argparse.Namespace) -> int:
    """Show one event: state, attempts, history, payload, result or error, destination."""
    spool = spool_of(args)
    event = find(reads_of(spool), args.id)
    view = full_view(event, spool)
    print_json(view) if args.json else print_event(event, view)
    return 0


def full_view(event: Event, spool: Spool) -> dict[str, Any]:
    """An event as `events get` shows it: the detail and its destination record's delivery."""
    return {**detail(event, spool.logs), "destination": _destination(event, spool)}


def _destination(event: Event, spool: Spool) -> dict[str, Any] | None:
    """Whether and where the event's destination record went; None when it owes none."""
    tries = _tries(event)
    if event.delivery is not None:
        d = event.delivery
        return {"delivered": True, "to": d.destination, "record": d.target,
                "condition": d.condition, "at": iso(d.at), **tries}  # fmt: skip
    if event.delivered:  # journaled before deliveries said where
        return {"delivered": True, "to": None, "record": None, "condition": None, "at": None}
    if not event.ended:
        return None
    if event.delivery_tries is not None and event.delivery_tries.given_up:
        return {"delivered": False, "to": event.delivery_tries.destination, "record": None,
                "condition": condition_of(event), "at": None, **tries}  # fmt: skip
    from daemon.functions import load_function, owed_destination

    try:  # as the daemon does: a function it cannot load has the default destinations
        definition = load_function(spool.functions / f"{event.function}.toml")
    except (ValueError, OSError):
        definition = None
    to = owed_destination(definition, event)
    if not to:
        return None
    return {"delivered": False, "to": to, "record": None, "condition": condition_of(event),
            "at": None, **tries}  # fmt: skip


def _tries(event: Event) -> dict[str, Any]:
    """The failed tries of a URL destination, as `events get --json` shows them (none: {})."""
    t = event.delivery_tries
    if t is None:
        return {}
    return {"failed_tries": t.tries, "last_error": t.error, "next_try_at": iso(t.next_at),
            "given_up": t.given_up}  # fmt: skip


def _destination_text(d: dict[str, Any] | None) -> str:
    if d is None:
        return "none"
    tried = ""
    if d.get("failed_tries"):
        tried = f"; {d['failed_tries']} tries failed, the last: {d['last_error']}"
    if d.get("given_up"):
        return f"given up: not delivered to {d['to']} ({d['condition']}){tried}"
    if not d["delivered"]:
        due = f"; next try at {d['next_try_at']}" if d.get("next_try_at") else ""
        return f"not delivered yet: to {d['to']} ({d['condition']}){tried}{due}"
    if d["to"] is None:
        return "delivered"
    at = datetime.fromisoformat(d["at"].replace("Z", "+00:00")).timestamp() if d["at"] else None
    return f"delivered to {d['record'] or d['to']} ({d['condition']}) at {shown(at)}{tried}"


_TIMES = ("enqueued_at", "started_at", "ended_at")  # shown local: `events get` for people


def print_event(event: Event, view: dict[str, Any]) -> None:
    for key in (
        "id",
        "function",
        "state",
        "attempts",
        "enqueued_at",
        "started_at",
        "ended_at",
        "duration_ms",
        "retry_of",
        "log_path",
    ):
        if view.get(key) is not None:
            value = shown(getattr(event, key)) if key in _TIMES else view[key]
            print(f"{key + ':':13} {value}")
    if not event.ended and event.started_at is not None:
        print(f"{'running for:':13} {time.time() - event.started_at:.1f} s so far")
    print(f"{'payload:':13} {json.dumps(view['payload'])}")
    if view["result"] is not None:
        print(f"{'result:':13} {json.dumps(view['result'])}")
    if view["error"]:
        print(f"{'error:':13} {_error_text(view['error'])}")
        for line in (view["error"].get("traceback") or "").splitlines():
            print(f"{'':13} {printable(line)}")
    if view["state"] in {s.value for s in State if s.terminal}:
        print(f"{'destination:':13} {_destination_text(view['destination'])}")
    print("history:")
    for h, entry in zip(view["history"], event.history, strict=True):
        extra = " ".join(f"{k}={h[k]}" for k in ("reason", "instance") if k in h)
        print(f"  {shown(entry.at)}  {h['state']:10} attempt {h['attempt']}  {extra}".rstrip())
        if "usage" in h:
            print(f"  {'':29}  {_usage_text(h['usage'])}")
        if "error" in h and h["state"] != view["state"]:
            print(f"  {'':29}  {_error_text(h['error'])}")
    _print_log_end(Path(view["log_path"]), event)


def _print_log_end(path: Path, event: Event) -> None:
    """The last lines of the event's log (`events logs` shows all of it)."""
    reader = LogReader(path)
    lines = reader.more(event, tail=LOG_TAIL_BYTES).decode("utf-8", "replace").splitlines()
    if reader.skipped:
        lines = lines[1:]  # the first may be cut
    if not lines:
        return
    shown = lines[-LOG_LINES_SHOWN:]
    cut = len(shown) < len(lines) or reader.skipped
    print(f"log (its end; `events logs {event.id}` shows all):" if cut else "log:")
    for line in shown:
        print(f"  {printable(line)}")


def _error_text(error: dict[str, Any]) -> str:
    """An error for a terminal: what a handler wrote can hold escape codes."""
    return printable(f"{error['type']}: {error['message']}")


def _usage_text(usage: dict[str, Any]) -> str:
    """An attempt's cost in words: wall time, CPU time, peak memory, how the process ended,
    the Ray node it ran on."""
    parts = [f"wall {usage['duration_ms']:.1f}ms"]
    if usage.get("cpu_ms") is not None:
        parts.append(f"cpu {usage['cpu_ms']:.1f}ms")
    if usage.get("max_memory_mb") is not None:
        parts.append(f"peak memory {usage['max_memory_mb']:.1f}MB")
    if usage.get("signal") is not None:
        parts.append(f"killed by signal {usage['signal']}")
    elif usage.get("exit_code") is not None:
        parts.append(f"exit code {usage['exit_code']}")
    if usage.get("node") is not None:
        parts.append(printable(f"on Ray node {usage['node']}"))
    return ", ".join(parts)


def events_logs(args: argparse.Namespace) -> int:
    """Print an event's log; with --follow, keep printing until the event ends."""
    spool = spool_of(args)
    reads = reads_of(spool)
    event = find(reads, args.id)
    reader = LogReader(log_path(spool.logs, event))
    while True:
        print_bytes(reader.more(event))  # the event is read before the file, as it must be
        if not args.follow or event.ended:
            return 0
        time.sleep(POLL)
        event = reads.get(event.id) or event


def events_wait(args: argparse.Namespace) -> int:
    """Block until every named event ends; exit 1 unless all succeeded."""
    spool = spool_of(args)
    reads = reads_of(spool)
    ids = [find(reads, given).id for given in args.ids]
    ended = wait_for_end(spool, ids, timeout=args.timeout)
    for request_id in ids:
        print(f"{request_id} {ended[request_id].state.value}")
    return 0 if all(e.state is State.SUCCEEDED for e in ended.values()) else 1
