"""An event's log as readers show it (`events logs`, `events get`, the dashboard).

The `[PLATFORM] FC Invoke Start/End` lines of an attempt are facts the journal already holds (its
Running record and the record that ends it), so the daemon writes no file for an event whose
handler prints nothing: readers render those lines from the records. The file
`logs/FUNCTION/ID.log` is made at the event's first other line (output, the Signal line, a hook),
and is made holding first the lines rendered from the records so far: from then on the file
alone is the log, every line in order. A reader reads the event first, then the file, so a file
it finds is never older than the records it read. See docs/logs.md for why (the measurements).

Light on purpose (the CLI and the dashboard import it): the model only.
"""

from __future__ import annotations

import time
from pathlib import Path

from daemon.model import Event, State

#: the two lines of each attempt that readers render from the journal's records
START = "FC Invoke Start RequestId: "
END = "FC Invoke End RequestId: "
JOURNALED = (START, END)
INTERRUPTED = "Interrupted"  # the reason of a Retrying or Failed that a crash or shutdown caused

_second: list[tuple[int, str]] = [(-1, "")]  # strftime is slow: format each second once


def stamp(at: float) -> str:
    """A wall-clock time as the log shows it: ISO 8601 UTC with milliseconds."""
    whole = int(at)
    second, text = _second[0]
    if whole != second:
        text = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(whole))
        _second[0] = (whole, text)
    return f"{text}.{int((at - whole) * 1000):03d}Z"


def platform_line(at: float, text: str) -> bytes:
    """One `[PLATFORM]` line."""
    return f"{stamp(at)} [PLATFORM] {text}\n".encode()


def journal_lines(event: Event) -> bytes:
    """The Start and End lines of the event's attempts, rendered from its history: an attempt
    starts at a Running on an instance and ends at the next record that is not Stopping (no
    End for one a crash cut off, as the instance wrote none)."""
    lines = []
    running = False
    for h in event.history:
        if h.state is State.RUNNING:
            running = h.instance is not None  # none: its instance never started, nothing ran
            if running:
                lines.append(platform_line(h.at, f"{START}{event.id}"))
        elif running and h.state is not State.STOPPING:
            running = False
            if h.reason != INTERRUPTED:
                lines.append(platform_line(h.at, f"{END}{event.id}"))
    return b"".join(lines)


def read_from(path: Path, offset: int, tail: int | None = None) -> tuple[bytes, int] | None:
    """The file's bytes from `offset` (or its last `tail` bytes, if further on) and the offset
    they start at; None when there is no file."""
    try:
        with open(path, "rb") as f:
            size = f.seek(0, 2)
            if tail is not None and size - tail > offset:
                offset = size - tail
            f.seek(offset)
            return f.read(), offset
    except FileNotFoundError:
        return None


class LogReader:
    """Follows one event's log: each call gives what was added since the last one."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.shown = 0  # bytes of the log given so far
        self.skipped = False  # a first read with `tail` left the start out

    def more(self, event: Event, tail: int | None = None) -> bytes:
        """What the log holds past what was given; `event` must be read before this call."""
        found = read_from(self.path, self.shown, tail if self.shown == 0 else None)
        if found is None:
            rendered = journal_lines(event)
            data, start = rendered[self.shown :], self.shown
        else:
            data, start = found
        self.skipped = self.skipped or start > self.shown
        self.shown = start + len(data)
        return data


def read_log(path: Path, event: Event) -> bytes:
    """The whole log of an event read just before."""
    return LogReader(path).more(event)
