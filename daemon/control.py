"""Control requests (stop, re-invoke, forget, pause, resume): the files the CLI and the TUI drop
into `control/`.

Shared and light: only msgspec. A client writes a request under `tmp/` and renames it into
`control/` (so the daemon never sees half a file), then follows the journal for the `Request`
record whose `name` is the request's file name: that record is the daemon's answer (load the
journal before submitting, so that an answer given at once is not missed). A request naming
several events (a stop or a forget with `ids`) gets one such record per event. A request
written while the daemon is down waits in `control/` and is applied when it starts.
"""

from __future__ import annotations

from enum import StrEnum
from pathlib import Path

import msgspec

from daemon.atomic import write_durable
from daemon.ids import check_id, new_request_id
from daemon.model import NO_RAW


class StopRequest(
    msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True, tag="stop", tag_field="action"
):
    """Stop an event (and those of `ids`, the same way): at once if it is not running, else
    forced or gracefully (SIGTERM)."""

    id: str
    graceful: bool = False
    ids: tuple[str, ...] = ()  # more events, each answered on its own


class ForgetRequest(
    msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True, tag="forget", tag_field="action"
):
    """Forget an ended event (and those of `ids`): gone from every read, dropped from the
    journal's files at the next compaction, its log removed."""

    id: str
    ids: tuple[str, ...] = ()  # more events, each answered on its own


class ReinvokeRequest(
    msgspec.Struct,
    frozen=True,
    kw_only=True,
    omit_defaults=True,  # an absent payload must be left out: an empty Raw encodes as nothing
    tag="reinvoke",
    tag_field="action",
):
    """Run an ended event again as a new event `new_id`, with its payload or the one given."""

    id: str
    new_id: str
    payload: msgspec.Raw = NO_RAW


class PauseRequest(
    msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True, tag="pause", tag_field="action"
):
    """Hold dispatch of one function (None: all): queued events wait, running ones finish."""

    function: str | None = None


class ResumeRequest(
    msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True, tag="resume", tag_field="action"
):
    """Release dispatch of one function (None: all)."""

    function: str | None = None


ControlRequest = StopRequest | ReinvokeRequest | ForgetRequest | PauseRequest | ResumeRequest
#: the requests that hold or release dispatch, rather than act on one event
DISPATCH_REQUESTS = (PauseRequest, ResumeRequest)

DECODER = msgspec.json.Decoder(ControlRequest)


#: ids one stop or forget request may name at most (the CLI sends more as several requests)
MAX_IDS = 1000


def targets(request: ControlRequest) -> tuple[str, ...]:
    """The events a request acts on, each answered by its own record ("": a function, or all)."""
    match request:
        case StopRequest(id=rid, ids=more) | ForgetRequest(id=rid, ids=more):
            return (rid, *more)
        case ReinvokeRequest(id=rid):
            return (rid,)
    return ("",)


def check_ids(request: ControlRequest) -> None:
    """Raise BadId unless every id in `request` passes the id rule."""
    if isinstance(request, DISPATCH_REQUESTS):
        return
    for rid in targets(request):
        check_id(rid)
    if isinstance(request, ReinvokeRequest):
        check_id(request.new_id, "new_id")


class Outcome(StrEnum):
    """How a request was answered, as its `Request` record's `outcome` says it."""

    APPLIED = "applied"
    REFUSED = "refused"


APPLIED, REFUSED = Outcome.APPLIED, Outcome.REFUSED


def submit(spool_root: Path, request: ControlRequest) -> str:
    """Write `request` into `control/` the maildir way; return its file name."""
    name = f"{new_request_id()}.json"
    tmp_dir, control_dir = spool_root / "tmp", spool_root / "control"
    tmp_dir.mkdir(parents=True, exist_ok=True)
    write_durable(control_dir / name, msgspec.json.encode(request), 0o666, staging=tmp_dir)
    return name
