"""Views of folded events for the CLI and the TUI: filters and the stable JSON shapes."""

from __future__ import annotations

import re
import time
from collections.abc import Iterable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import msgspec

from daemon.files.logfiles import event_log_path
from daemon.model import Event, State, has_raw

_RELATIVE = re.compile(r"^(\d+(?:\.\d+)?)([smhdw])$")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


def parse_time(text: str, now: float | None = None) -> float:
    """An ISO 8601 time or a relative one (`15m`, `2h`, `3d` ago) as epoch seconds."""
    text = text.strip()
    if m := _RELATIVE.match(text):
        return (now if now is not None else time.time()) - float(m.group(1)) * _UNITS[m.group(2)]
    try:
        parsed = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise ValueError(f"not a time: {text!r} (use ISO 8601 or 15m, 2h, 3d)") from None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=UTC)
    return parsed.timestamp()


#: SCF's four states of an async event (ListAsyncEvents) as fnspool's: State.scf_view turned
#: round (SCF's API says ABORTED for terminated)
SCF_STATES: dict[str, frozenset[State]] = {
    view: frozenset(s for s in State if s.scf_view == view)
    for view in ("running", "finished", "failed", "terminated")
}
SCF_STATES["aborted"] = SCF_STATES["terminated"]


def parse_states(text: str) -> set[State]:
    """A comma-separated list of state names as States: fnspool's in any case, or SCF's
    (finished, terminated in any case; RUNNING and FAILED in capitals, as SCF's API spells
    them, since `running` and `failed` are fnspool's Running and Failed)."""
    by_name = {s.value.lower(): {s} for s in State}
    states: set[State] = set()
    for part in filter(None, (p.strip() for p in text.split(","))):
        name = part.lower()
        scf = SCF_STATES.get(name) if part.isupper() or name not in by_name else None
        found = scf or by_name.get(name)
        if found is None:
            names = ", ".join(s.value for s in State)
            scf_names = "RUNNING, FINISHED, FAILED, TERMINATED"
            raise ValueError(f"unknown state {part!r}: use {names} (or SCF's {scf_names})")
        states |= found
    return states


def iso(ts: float | None) -> str | None:
    """Epoch seconds as ISO 8601 UTC with milliseconds, or None."""
    if ts is None:
        return None
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def shown(ts: float | None) -> str:
    """A time for people: local, with its offset from UTC (`--utc` makes local UTC)."""
    if ts is None:
        return "-"
    return datetime.fromtimestamp(ts).astimezone().isoformat(sep=" ", timespec="milliseconds")


def zone(ts: float | None = None) -> str:
    """The local time zone's offset from UTC, as `UTC+01:00`."""
    offset = (
        datetime.fromtimestamp(ts if ts is not None else time.time()).astimezone().strftime("%z")
    )
    return f"UTC{offset[:3]}:{offset[3:]}"


class Filter(msgspec.Struct, kw_only=True):
    """What `events list` and the TUI filter on."""

    function: str | None = None
    states: set[State] | None = None
    id_prefix: str | None = None
    since: float | None = None  # enqueued at or after
    until: float | None = None  # enqueued at or before
    ended_since: float | None = None  # ended at or after (SCF lists by end time too)
    ended_until: float | None = None  # ended at or before
    text: str | None = None  # free text: id prefix, function or error text

    def matches(self, e: Event) -> bool:
        """Whether the event passes every set criterion."""
        if self.function is not None and e.function != self.function:
            return False
        if self.states is not None and e.state not in self.states:
            return False
        if self.id_prefix is not None and not e.id.startswith(self.id_prefix):
            return False
        if self.since is not None and e.enqueued_at < self.since:
            return False
        if self.until is not None and e.enqueued_at > self.until:
            return False
        if not _within(e.ended_at, self.ended_since, self.ended_until):
            return False
        return self.text is None or _text_matches(self.text.lower(), e)


def _within(at: float | None, since: float | None, until: float | None) -> bool:
    """Whether `at` lies in [since, until]; an open bound passes anything, a set one no None."""
    if since is None and until is None:
        return True
    return at is not None and (since is None or at >= since) and (until is None or at <= until)


def _text_matches(text: str, e: Event) -> bool:
    if e.id.startswith(text) or text in e.function.lower():
        return True
    return e.error is not None and text in f"{e.error.type} {e.error.message}".lower()


def select(
    events: Iterable[Event], flt: Filter, *, limit: int | None = None, newest_first: bool = True
) -> list[Event]:
    """The events passing `flt`, ordered by id (time-ordered), at most `limit`."""
    chosen = sorted((e for e in events if flt.matches(e)), key=lambda e: e.id, reverse=newest_first)
    return chosen if limit is None else chosen[:limit]


def _error(e: Event) -> dict[str, Any] | None:
    if e.error is None:
        return None
    return {"type": e.error.type, "message": e.error.message, "code": e.error.code}


def summary(e: Event) -> dict[str, Any]:
    """An event as `events list --json` shows it (stable field names)."""
    return {
        "id": e.id,
        "function": e.function,
        "state": e.state.value,
        "attempts": e.attempts,
        "enqueued_at": iso(e.enqueued_at),
        "started_at": iso(e.started_at),
        "ended_at": iso(e.ended_at),
        "duration_ms": e.duration_ms,
        "error": _error(e),
        "retry_of": e.retry_of,
    }


def _raw_value(raw: msgspec.Raw) -> Any:
    return msgspec.json.decode(raw) if has_raw(raw) else None


def detail(e: Event, logs_dir: Path) -> dict[str, Any]:
    """An event as `events get --json` shows it: the summary plus payload, result and history."""
    view = summary(e)
    if e.error is not None and e.error.traceback:
        view["error"] = {**(view["error"] or {}), "traceback": e.error.traceback}
    view["payload"] = _raw_value(e.payload)
    view["result"] = _raw_value(e.result)
    view["history"] = [_history_entry(h) for h in e.history]
    view["log_path"] = str(log_path(logs_dir, e))
    if e.source is not None:
        view["source"] = msgspec.to_builtins(e.source)
    return view


def _history_entry(h: Any) -> dict[str, Any]:
    entry: dict[str, Any] = {"state": h.state.value, "at": iso(h.at), "attempt": h.attempt}
    for key in ("reason", "instance"):
        if getattr(h, key):
            entry[key] = getattr(h, key)
    if h.error is not None:
        entry["error"] = msgspec.to_builtins(h.error)
    if h.usage is not None:
        entry["usage"] = msgspec.to_builtins(h.usage)
    return entry


def log_path(logs_dir: Path, e: Event) -> Path:
    """Where the event's log lives: logs/FUNCTION/ID.log (BadId for an id that breaks the rule)."""
    return event_log_path(logs_dir, e.function, e.id)
