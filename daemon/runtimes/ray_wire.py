"""What the daemon asks an instance's Ray actor to run, what the actor answers, and the event-log
writes it relays.

Every answer is JSON decoded with one typed decoder (the node may run another fnspool release:
a mismatch is an error naming the field, never a wrong value). Each carries the log writes the
daemon has not acknowledged yet, numbered: the daemon writes those it has not written, in order,
whichever answer brings them first, so output reaches the log live (through `pull`, a long poll)
and always before the End line of its attempt (the attempt's own answer repeats it).
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import msgspec

from daemon.files.logfiles import LogSink
from daemon.model import NO_RAW, ErrorInfo, has_raw
from daemon.runtimes.base import HookOutcome, Outcome


class LogChunk(msgspec.Struct, frozen=True, kw_only=True, array_like=True):
    """One write to an event log, numbered in the order it was made on the node."""

    seq: int
    path: str
    data: bytes
    journaled: bool = False


class HostReply(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    """An actor's answer to any call: the instance's state, the unacknowledged log writes, and
    the call's own result."""

    state: str  # the instance's on its node: starting | idle | busy | stopping | dead
    node: str  # the Ray node id
    pid: int | None = None  # of the function's process, on its node
    events_served: int = 0
    chunks: list[LogChunk] = msgspec.field(default_factory=list)
    outcome: Outcome | None = None  # invoke (its result is in `result`)
    result: msgspec.Raw = NO_RAW  # the outcome's result (msgspec cannot decode `Raw | None`)
    hook: HookOutcome | None = None  # run_hook
    start_error: ErrorInfo | None = None  # start: why the instance could not be made ready


class InvokeCall(msgspec.Struct, frozen=True, kw_only=True, array_like=True):
    """One attempt for the actor to run, sent as one bytes argument: Ray serializes each
    argument of a call on its own (six cost the daemon and the actor about 0.1 ms an event)."""

    seq: int  # the daemon's number for this call to the actor (see InstanceHost.signal)
    request_id: str
    payload: msgspec.Raw
    attempt: int
    timeout: float
    log_path: str
    written: int = 0  # the daemon has the log writes up to this one


_ENCODER = msgspec.json.Encoder()
_DECODER = msgspec.json.Decoder(HostReply)
_CALL_DECODER = msgspec.json.Decoder(InvokeCall)


def encode_call(call: InvokeCall) -> bytes:
    """The attempt as the daemon sends it."""
    return _ENCODER.encode(call)


def decode_call(data: bytes) -> InvokeCall:
    """The attempt as the actor reads it; msgspec.ValidationError if it is not one."""
    return _CALL_DECODER.decode(data)


def encode_reply(reply: HostReply) -> bytes:
    """The answer as the actor sends it."""
    outcome = reply.outcome
    if outcome is not None and outcome.result is not None:
        bare = msgspec.structs.replace(outcome, result=None)
        reply = msgspec.structs.replace(reply, outcome=bare, result=outcome.result)
    return _ENCODER.encode(reply)


def decode_reply(data: bytes) -> HostReply:
    """The answer as the daemon reads it; msgspec.ValidationError if it is not one."""
    reply = _DECODER.decode(data)
    if reply.outcome is not None and has_raw(reply.result):
        whole = msgspec.structs.replace(reply.outcome, result=reply.result)
        reply = msgspec.structs.replace(reply, outcome=whole, result=NO_RAW)
    return reply


class RelaySink:
    """The node's side: a LogSink that keeps each write, numbered, until the daemon has it."""

    def __init__(self) -> None:
        self.last = 0  # the number of the newest write
        self.last_output = 0  # the number of the newest write of output (not a journaled line)
        self._kept: list[LogChunk] = []
        self.changed = asyncio.Event()  # a write or a change of state to tell the daemon

    def write_log(self, path: Path, data: bytes, *, journaled: bool = False) -> None:
        """Keep one write for the daemon."""
        self.last += 1
        self._kept.append(LogChunk(seq=self.last, path=str(path), data=data, journaled=journaled))
        if not journaled:  # Start and End lines ride with the attempt's answer: no round trip
            self.last_output = self.last
            self.changed.set()

    def acknowledge(self, upto: int) -> None:
        """The daemon has written everything up to `upto`: forget it."""
        if self._kept and self._kept[0].seq <= upto:
            self._kept = [c for c in self._kept if c.seq > upto]

    def unacknowledged(self) -> list[LogChunk]:
        """What the daemon may not have yet, oldest first."""
        return list(self._kept)


class LogRelay:
    """The daemon's side: writes each relayed chunk once, in order, to the daemon's sink."""

    def __init__(self, sink: LogSink) -> None:
        self.written = 0  # the number of the newest write made here
        self._sink = sink
        self._path_text, self._path = "", Path()

    def take(self, chunks: list[LogChunk]) -> None:
        """Write the chunks not written yet (a reply repeats what the daemon has not
        acknowledged, so it starts at or before the first one missing here)."""
        for chunk in chunks:
            if chunk.seq > self.written:
                if chunk.path != self._path_text:  # an attempt's writes share one path
                    self._path_text, self._path = chunk.path, Path(chunk.path)
                self._sink.write_log(self._path, chunk.data, journaled=chunk.journaled)
                self.written = chunk.seq
