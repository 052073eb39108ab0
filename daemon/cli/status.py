"""`fnspool functions list`, `status` and `metrics`: the definitions and the daemon's health."""

from __future__ import annotations

import argparse
import os
import sys
from collections import Counter

import msgspec

from daemon import heartbeat
from daemon.cli.shared import (
    EXIT_NOT_RUNNING,
    heartbeats,
    print_json,
    spool_of,
)
from daemon.errors import FnspoolError
from daemon.placement import short_node
from daemon.text import printable


def functions_list(args: argparse.Namespace) -> int:
    """Definitions with their errors and live instances."""
    from daemon.functions import load_catalog, needs_code_folder

    spool = spool_of(args)
    catalog = load_catalog(spool.functions)
    _pid, _last, beat = heartbeats(spool)
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
                "paused": beat.paused_all or name in beat.paused,
                "held": beat.held.get(name),
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
        print_json(rows)
        return 0
    for row in rows:
        if row["error"]:
            problem = printable(f"{row['path']}: {row['error']}")
            print(f"{row['name']:20} ERROR  {problem}")
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
            if row["paused"]:
                line += "  paused"
            print(line)
            if row["held"]:
                print(f"{'':20}        its events wait: {printable(row['held'])}")
            if row["one_at_a_time"]:
                print(f"{'':20}        {row['one_at_a_time']}")
            if nodes := on_nodes(row["instances"]):
                print(f"{'':20}        instances on Ray nodes {nodes}")
            if row["missing_code_folder"]:
                folder = row["missing_code_folder"]
                print(f"{'':20}        its code folder {folder} is missing: its events will fail")
    missing = any(row.get("missing_code_folder") for row in rows)
    return 1 if catalog.errors or missing else 0


def on_nodes(instances: list[dict]) -> str:
    """Where a function's instances on Ray run: each node, shortened, with how many ("" when
    none runs on Ray)."""
    counts = Counter(short_node(i["node"]) for i in instances if i.get("node"))
    return ", ".join(f"{node} ({n})" for node, n in sorted(counts.items()))


def status(args: argparse.Namespace) -> int:
    """Daemon health: exit 0 when running and ready, 3 when not (as systemctl)."""
    spool = spool_of(args)
    pid, last, ours = heartbeats(spool)
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
        "paused": live.paused if live else [],
        "paused_all": live.paused_all if live else False,
        "held": live.held if live else {},
    }
    if args.json:
        print_json(view)
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
            if view["paused_all"]:
                print("paused: all functions (fnspool resume)")
            elif view["paused"]:
                print("paused: " + ", ".join(view["paused"]))
            for name, why in view["held"].items():
                print(f"held: {name}: its events wait: {printable(why)}")
            helper = view["file_helper"]
            if helper is not None and not helper.get("running"):
                print("file helper: not running (the daemon writes logs and removes files itself)")
        if view["implicit_root"]:
            names = ", ".join(view["implicit_root"])
            print(f"running as root with no `user` set (set one, or --run-as): {names}")
        for name, message in view["definition_errors"].items():
            kept = name in view["last_good_definitions"]
            note = " (its last good definition stays in use)" if kept else ""
            print(f"definition error: {name}: {printable(message)}{note}")
        for damage in view["journal_damage"]:
            where = f"{damage['path']} at {damage['offset']}"
            print(printable(f"journal damage: {where}: {damage['reason']}"))
    return 0 if running else EXIT_NOT_RUNNING


def metrics(args: argparse.Namespace) -> int:
    """Print run/metrics.prom, the running daemon's figures (exit 3 when no daemon runs)."""
    spool = spool_of(args)
    _pid, _last, beat = heartbeats(spool)
    if beat is None:
        print("fnspool: the daemon is not running: no figures", file=sys.stderr)
        return EXIT_NOT_RUNNING
    try:
        sys.stdout.write((spool.run / "metrics.prom").read_text())
    except FileNotFoundError:
        raise FnspoolError("no run/metrics.prom yet", title="metrics") from None
    return 0
