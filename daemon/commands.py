"""What each `fnspool` command does (the CLI's parser lives in cli.py)."""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import msgspec

from daemon import heartbeat, lock
from daemon.atomic import write_durable
from daemon.errors import FnspoolError
from daemon.eventlog import LogReader
from daemon.fcrecord import condition_of
from daemon.heartbeat import Heartbeat
from daemon.model import Event, State
from daemon.query import (
    Filter,
    detail,
    iso,
    log_path,
    parse_states,
    parse_time,
    shown,
    summary,
)
from daemon.reads import EventReads
from daemon.spool import Spool
from daemon.text import printable

POLL = 0.05
VERDICT_WAIT = 60.0  # seconds a running daemon gets to accept or reject a dropped file
LOG_LINES_SHOWN = 10  # of an event's log, by `events get`
LOG_TAIL_BYTES = 16 << 10
EXIT_NOT_RUNNING = 3


def _spool(args: argparse.Namespace) -> Spool:
    return Spool.resolve(args.spool)


def _reads(spool: Spool) -> EventReads:
    return EventReads(spool.journal)


def _print_json(value: Any) -> None:
    sys.stdout.write(json.dumps(value, indent=2, ensure_ascii=False) + "\n")


def _find(reads: EventReads, request_id: str) -> Event:
    """The event with that id, or the only one whose id starts with it (as git and docker)."""
    event = reads.get(request_id)
    if event is not None:
        return event
    found = reads.ids_with_prefix(request_id, limit=2)
    if len(found) > 1:
        raise FnspoolError(
            f"{request_id!r} is the start of several ids ({found[0]}, {found[1]}, ...): "
            "give more of it",
            title="ambiguous",
            exit_code=2,
        )
    event = reads.get(found[0]) if found else None
    if event is None:
        raise FnspoolError(f"no event with id {request_id!r}", title="not found", exit_code=4)
    return event


# -- daemon and tui -----------------------------------------------------------------------


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
    )
    try:
        return uvloop.run(Daemon(_spool(args), settings).run())
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

    spool = _spool(args)
    if not spool.root.is_dir():
        raise FnspoolError(f"no spool at {spool.root} (use --spool DIR)", title="tui", exit_code=2)
    run(spool)
    return 0


# -- invoke -------------------------------------------------------------------------------


def _payload(args: argparse.Namespace) -> Any:
    if args.payload_file:
        try:
            if args.payload_file == "-":
                text = sys.stdin.read()
            else:
                with open(args.payload_file) as f:
                    text = f.read()
        except OSError as exc:
            raise FnspoolError(f"cannot read {args.payload_file}: {exc.strerror}") from None
    else:
        text = args.payload if args.payload is not None else "{}"
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise FnspoolError(
            f"the payload is not JSON: {exc}", title="bad payload", exit_code=2
        ) from None


def invoke(args: argparse.Namespace) -> int:
    """Drop an envelope into incoming/ the maildir way (write in tmp/, rename in), then wait for
    the daemon's verdict: accepted (its id) or rejected (the reason, exit 1)."""
    from daemon.ids import new_request_id

    spool = _spool(args)
    _check_function(spool, args.function)
    request_id = args.id or new_request_id()
    if args.id:
        _check_unused(spool, request_id)
    envelope: dict[str, Any] = {
        "function": args.function,
        "payload": _payload(args),
        "id": request_id,
    }
    if args.delay:
        envelope["delay"] = args.delay
    # a name of its own: an earlier event with the same id came from another file
    name = f"{request_id}.{os.getpid()}-{time.monotonic_ns()}.json"
    _drop(spool, name, msgspec.json.encode(envelope))
    if _verdict(spool, name, request_id) is None and lock.holder(spool.run) is None:
        print("fnspool: the daemon is not running; the event waits in incoming/", file=sys.stderr)
    if not args.wait:
        _print_json({"id": request_id}) if args.json else print(request_id)
        return 0
    event = _wait_for(spool, [request_id], timeout=None)[request_id]
    view = _full_view(event, spool)
    _print_json(view) if args.json else _print_event(event, view)
    return 0 if event.state is State.SUCCEEDED else 1


def _check_function(spool: Spool, function: str) -> None:
    """Refuse a function that is not defined, or whose definition has an error the daemon does
    not cover with the last good one."""
    from daemon.functions import load_catalog
    from daemon.ids import NAME_RE

    if not NAME_RE.match(function):
        raise FnspoolError(f"bad function name {function!r}", exit_code=2)
    catalog = load_catalog(spool.functions)
    error = catalog.errors.get(function)
    if error is not None:
        _pid, _last, beat = _heartbeats(spool)
        if beat is None or function not in beat.last_good_definitions:
            raise FnspoolError(
                f"function {function!r} has a definition error: {error.message}",
                title="definition error",
                exit_code=2,
            )
        print(
            f"fnspool: {function}: runs its last good definition: {error.message}", file=sys.stderr
        )
    elif function not in catalog.functions:
        raise FnspoolError(
            f"no function {function!r} in {spool.functions}", title="not found", exit_code=4
        )


def _check_unused(spool: Spool, request_id: str) -> None:
    """Refuse an explicit id that an event already has (it would be rejected as a duplicate)."""
    event = _reads(spool).get(request_id)
    if event is not None:
        raise FnspoolError(
            f"id {request_id} is already used by an event of {event.function} "
            f"({event.state.value}): nothing submitted",
            title="rejected",
        )


def _verdict(spool: Spool, name: str, request_id: str) -> Event | None:
    """The event the daemon made of incoming/`name`, once it did; FnspoolError if it rejected
    the file; None when no daemon runs to decide (the file waits in incoming/)."""
    reads, ours = _reads(spool), f"incoming/{name}"
    reason = spool.rejected / f"{name}.reason.json"
    deadline = time.monotonic() + VERDICT_WAIT
    while True:
        event = reads.get(request_id)
        if event is not None and event.source is not None and event.source.path == ours:
            return event
        if reason.exists():
            why = json.loads(reason.read_text()).get("message", "rejected")
            raise FnspoolError(f"{request_id} was rejected: {why} (see {reason})", title="rejected")
        if lock.holder(spool.run) is None:
            return None
        if time.monotonic() > deadline:
            print(
                f"fnspool: no verdict on {request_id} after {VERDICT_WAIT:.0f} s", file=sys.stderr
            )
            return None
        time.sleep(POLL)


def _drop(spool: Spool, name: str, data: bytes) -> None:
    spool.tmp.mkdir(parents=True, exist_ok=True)
    write_durable(spool.incoming / name, data, 0o666, staging=spool.tmp)  # 0o666: the umask


# -- events -------------------------------------------------------------------------------


def _filter(args: argparse.Namespace) -> Filter:
    try:
        return Filter(
            function=args.function,
            states=parse_states(args.status) if args.status else None,
            id_prefix=args.id_prefix,
            since=parse_time(args.since) if args.since else None,
            until=parse_time(args.until) if args.until else None,
            ended_since=parse_time(args.ended_since) if args.ended_since else None,
            ended_until=parse_time(args.ended_until) if args.ended_until else None,
        )
    except ValueError as exc:
        raise FnspoolError(str(exc), exit_code=2) from None


_ROW = "{:36}  {:16} {:10} {:>3}  {:29} {:>10}  {}"


def events_list(args: argparse.Namespace) -> int:
    """List events matching the filters, newest first unless --order asc; 50 unless --limit or
    --all, and a line on stderr when more match."""
    from daemon.cli import LIST_LIMIT

    limit = None if args.all else (args.limit if args.limit is not None else LIST_LIMIT)
    if args.offset < 0:
        raise FnspoolError("--offset must be 0 or more", exit_code=2)
    wanted = None if limit is None else args.offset + limit + 1  # one more: do more match?
    chosen = _reads(_spool(args)).select(
        _filter(args), limit=wanted, newest_first=args.order == "desc"
    )[args.offset :]
    if limit is not None and len(chosen) > limit:
        chosen = chosen[:limit]
        print(f"fnspool: {limit} shown, more match: --limit N or --all", file=sys.stderr)
    if args.json:
        _print_json([summary(e) for e in chosen])
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
    spool = _spool(args)
    event = _find(_reads(spool), args.id)
    view = _full_view(event, spool)
    _print_json(view) if args.json else _print_event(event, view)
    return 0


def _full_view(event: Event, spool: Spool) -> dict[str, Any]:
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


def _print_event(event: Event, view: dict[str, Any]) -> None:
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
    """An attempt's cost in words: wall time, CPU time, peak memory, how the process ended."""
    parts = [f"wall {usage['duration_ms']:.1f}ms"]
    if usage.get("cpu_ms") is not None:
        parts.append(f"cpu {usage['cpu_ms']:.1f}ms")
    if usage.get("max_memory_mb") is not None:
        parts.append(f"peak memory {usage['max_memory_mb']:.1f}MB")
    if usage.get("signal") is not None:
        parts.append(f"killed by signal {usage['signal']}")
    elif usage.get("exit_code") is not None:
        parts.append(f"exit code {usage['exit_code']}")
    return ", ".join(parts)


def events_logs(args: argparse.Namespace) -> int:
    """Print an event's log; with --follow, keep printing until the event ends."""
    spool = _spool(args)
    reads = _reads(spool)
    event = _find(reads, args.id)
    reader = LogReader(log_path(spool.logs, event))
    while True:
        _print_bytes(reader.more(event))  # the event is read before the file, as it must be
        if not args.follow or event.ended:
            return 0
        time.sleep(POLL)
        event = reads.get(event.id) or event


def _print_bytes(data: bytes) -> None:
    if data:
        sys.stdout.buffer.write(data)
        sys.stdout.flush()


def events_wait(args: argparse.Namespace) -> int:
    """Block until every named event ends; exit 1 unless all succeeded."""
    spool = _spool(args)
    reads = _reads(spool)
    ids = [_find(reads, given).id for given in args.ids]
    ended = _wait_for(spool, ids, timeout=args.timeout)
    for request_id in ids:
        print(f"{request_id} {ended[request_id].state.value}")
    return 0 if all(e.state is State.SUCCEEDED for e in ended.values()) else 1


def _wait_for(spool: Spool, ids: list[str], timeout: float | None) -> dict[str, Event]:
    """Poll the events until every id has ended."""
    reads = _reads(spool)
    deadline = None if timeout is None else time.monotonic() + timeout
    warned = False
    while True:
        events = reads.get_many(ids)
        if all(i in events and events[i].ended for i in ids):
            return {i: events[i] for i in ids}
        _check_rejected(spool, ids, events)
        if not warned and lock.holder(spool.run) is None:
            print("fnspool: the daemon is not running; waiting for it", file=sys.stderr)
            warned = True
        if deadline is not None and time.monotonic() > deadline:
            raise FnspoolError("timed out waiting for the events to end", exit_code=124)
        time.sleep(POLL)


def _check_rejected(spool: Spool, ids: list[str], events: dict[str, Event]) -> None:
    for request_id in ids:
        if request_id in events:
            continue
        for reason in spool.rejected.glob(f"{request_id}.json*.reason.json"):
            why = json.loads(reason.read_text()).get("message", "rejected")
            raise FnspoolError(f"{request_id} was rejected: {why} (see {reason})", title="rejected")


# -- functions and status -----------------------------------------------------------------


def _heartbeats(spool: Spool) -> tuple[int | None, Heartbeat | None, Heartbeat | None]:
    """The pid holding the lock, the last heartbeat on file (perhaps of an earlier daemon), and
    that heartbeat if it is the running daemon's."""
    pid = lock.holder(spool.run)
    last = heartbeat.read(spool.run)
    ours = last if last is not None and pid is not None and last.pid == pid else None
    return pid, last, ours


def functions_list(args: argparse.Namespace) -> int:
    """Definitions with their errors and live instances."""
    from daemon.functions import load_catalog, needs_code_folder

    spool = _spool(args)
    catalog = load_catalog(spool.functions)
    _pid, _last, beat = _heartbeats(spool)
    beat = beat or heartbeat.Heartbeat(pid=0)  # no daemon: nothing runs
    instances = {name: msgspec.to_builtins(views) for name, views in beat.instances.items()}
    kept = set(beat.last_good_definitions)
    # who runs a function that names no user: known while the daemon runs
    default_user = beat.run_as or beat.user
    implicit_root = set(beat.implicit_root)
    rows = []
    for name, d in sorted(catalog.functions.items()):
        rows.append(
            {
                "name": name,
                "runtime": d.runtime,
                "handler": d.handler if d.runtime == "python" else None,
                "command": d.command or None,
                "timeout": d.timeout,
                "max_instances": d.max_instances,
                "one_at_a_time": d.one_at_a_time or None,
                "user": d.user or default_user or None,
                "implicit_root": name in implicit_root,
                "error": None,
                "missing_code_folder": d.code_dir
                if needs_code_folder(d) and not os.path.isdir(d.code_dir)
                else None,
                "instances": instances.get(name, []),
            }
        )
    for name, err in sorted(catalog.errors.items()):
        rows.append(
            {
                "name": name,
                "error": err.message,
                "path": err.path,
                "last_good_in_use": name in kept,
                "instances": instances.get(name, []) if name in kept else [],
            }
        )
    if args.json:
        _print_json(rows)
        return 0
    for row in rows:
        if row["error"]:
            print(f"{row['name']:20} ERROR  {row['path']}: {row['error']}")
            if row["last_good_in_use"]:
                print(f"{'':20}        the daemon runs its last good definition until it is fixed")
        else:
            count = f"{len(row['instances'])}/{row['max_instances']}"
            runs = row["handler"] or " ".join(row["command"] or [])
            line = f"{row['name']:20} {row['runtime']:7} {runs[:32]:32} instances {count}"
            if row["implicit_root"]:
                line += "  as ROOT (no user set)"
            elif row["user"]:
                line += f"  as {row['user']}"
            print(line)
            if row["one_at_a_time"]:
                print(f"{'':20}        {row['one_at_a_time']}")
            if row["missing_code_folder"]:
                folder = row["missing_code_folder"]
                print(f"{'':20}        its code folder {folder} is missing: its events will fail")
    missing = any(row.get("missing_code_folder") for row in rows)
    return 1 if catalog.errors or missing else 0


def status(args: argparse.Namespace) -> int:
    """Daemon health: exit 0 when running and ready, 3 when not (as systemctl)."""
    spool = _spool(args)
    pid, last, ours = _heartbeats(spool)
    running = ours is not None and ours.ready
    stopping = ours is not None and ours.stopping
    live = ours if running else None
    said = last or heartbeat.Heartbeat(pid=0)  # the last word of a daemon, if any
    view = {
        "running": running,
        "stopping": stopping,
        "pid": pid,
        "spool": str(spool.root),
        "queue_depth": live.queue_depth if live else None,
        "running_events": live.running if live else None,
        "events": said.events,
        "definition_errors": said.definition_errors,
        "last_good_definitions": live.last_good_definitions if live else [],
        "implicit_root": live.implicit_root if live else [],
        "journal_damage": msgspec.to_builtins(said.journal_damage),
        "file_helper": msgspec.to_builtins(live.file_helper) if live else None,
        "indexer": msgspec.to_builtins(live.indexer) if live else None,
        "heartbeat_age_s": last.age if last else None,
    }
    if args.json:
        _print_json(view)
    else:
        state = (
            f"running (pid {pid})"
            if running
            else f"stopping (pid {pid}): draining"
            if stopping
            else ("starting" if pid is not None else "not running")
        )
        print(f"fnspool daemon: {state}; spool {spool.root}")
        if running:
            print(f"queue depth {view['queue_depth']}, running {view['running_events']}")
            print("events: " + ", ".join(f"{k} {v}" for k, v in sorted(view["events"].items())))
            helper = view["file_helper"]
            if helper is not None and not helper.get("running"):
                print("file helper: not running (the daemon writes logs and removes files itself)")
        if view["implicit_root"]:
            names = ", ".join(view["implicit_root"])
            print(f"running as root with no `user` set (set one, or --run-as): {names}")
        for name, message in view["definition_errors"].items():
            kept = name in view["last_good_definitions"]
            note = " (its last good definition stays in use)" if kept else ""
            print(f"definition error: {name}: {message}{note}")
        for damage in view["journal_damage"]:
            print(f"journal damage: {damage['path']} at {damage['offset']}: {damage['reason']}")
    return 0 if running else EXIT_NOT_RUNNING


def completion(args: argparse.Namespace) -> int:
    """Print the completion script for a shell (see the README for where it goes)."""
    from daemon.completion import script

    print(script(args.shell), end="")
    return 0


def metrics(args: argparse.Namespace) -> int:
    """Print run/metrics.prom, the running daemon's figures (exit 3 when no daemon runs)."""
    spool = _spool(args)
    _pid, _last, beat = _heartbeats(spool)
    if beat is None:
        print("fnspool: the daemon is not running: no figures", file=sys.stderr)
        return EXIT_NOT_RUNNING
    try:
        sys.stdout.write((spool.run / "metrics.prom").read_text())
    except FileNotFoundError:
        raise FnspoolError("no run/metrics.prom yet", title="metrics") from None
    return 0
