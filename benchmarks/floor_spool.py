"""The floor of a durable file spool in Python on this machine: only the per-event work that no
such spool can skip, run by bench_floor.py beside fnspool and Huey.

Per event: the payload file is read, decoded and unlinked; three journal records are written
(accepted with its payload, the intent to run it, its outcome) in groups, one fdatasync per
group in a thread, and an event is sent to a worker only once its intent is on disk; one frame
goes to a warm worker process over a pipe and one comes back. Nothing else: no validation, no
ids worth the name, no logs, status, index, limits, supervision or stops.

With DEPTH above 1, each worker is sent up to DEPTH events before it answers the first (a
pipelined dispatch: the worker finds its next event waiting instead of being woken for it).

Usage (by bench_floor.py): python floor_spool.py ROOT WORKERS [DEPTH]
It prints `ready`, then the count of events ended whenever it grows.
"""

from __future__ import annotations

import asyncio
import os
import struct
import sys
from collections import deque
from pathlib import Path

import msgspec
import uvloop
from inotify_simple import INotify, flags

HEADER = struct.Struct(">I")
ENCODE = msgspec.json.Encoder().encode
DECODE = msgspec.json.Decoder().decode


def worker(inbox: int, outbox: int) -> None:
    """A warm worker: run the no-op handler for each frame read, answer with its result."""
    reader = os.fdopen(inbox, "rb", buffering=0)
    while header := reader.read(HEADER.size):
        (size,) = HEADER.unpack(header)
        request = DECODE(reader.read(size))
        body = ENCODE({"id": request["id"], "result": {"ok": True}})
        os.write(outbox, HEADER.pack(len(body)) + body)


class Worker:
    """The spool's side of one worker process: its pipes, and the frames read so far."""

    def __init__(self, floor: Floor) -> None:
        to_worker, self.inbox = os.pipe()
        self.outbox, from_worker = os.pipe()
        self.pid = os.fork()
        if self.pid == 0:
            os.close(self.inbox)
            os.close(self.outbox)
            worker(to_worker, from_worker)
            os._exit(0)
        os.close(to_worker)
        os.close(from_worker)
        os.set_blocking(self.outbox, False)
        self.buffer = b""
        self.floor = floor
        asyncio.get_running_loop().add_reader(self.outbox, self.readable)

    def send(self, event_id: int) -> None:
        body = ENCODE({"id": event_id, "payload": self.floor.payloads.pop(event_id)})
        os.write(self.inbox, HEADER.pack(len(body)) + body)

    def readable(self) -> None:
        self.buffer += os.read(self.outbox, 65536)
        while len(self.buffer) >= HEADER.size:
            (size,) = HEADER.unpack_from(self.buffer)
            if len(self.buffer) < HEADER.size + size:
                return
            frame = DECODE(self.buffer[HEADER.size : HEADER.size + size])
            self.buffer = self.buffer[HEADER.size + size :]
            self.floor.finished(self, frame)


class Floor:
    """Accept, journal, dispatch: the irreducible loop."""

    def __init__(self, root: Path, workers: int, depth: int) -> None:
        self.incoming = root / "incoming"
        self.journal = os.open(root / "journal.jsonl", os.O_WRONLY | os.O_CREAT | os.O_APPEND)
        self.inotify = INotify()
        self.inotify.add_watch(self.incoming, flags.MOVED_TO)
        self.records: list[bytes] = []
        self.intents: list[int] = []  # events whose intent is in `records`
        self.outcomes = 0  # outcome records in `records`
        self.ready: deque[int] = deque()  # events whose intent is on disk
        self.payloads: dict[int, object] = {}
        self.free: list[Worker] = []
        self.ended = self.reported = self.next_id = 0
        self.wake = asyncio.Event()
        self.workers = workers
        self.depth = depth

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        self.free = [Worker(self) for _ in range(self.workers)] * self.depth
        loop.add_reader(self.inotify.fileno(), self.arrived)
        print("ready", flush=True)
        while True:
            await self.wake.wait()
            self.wake.clear()
            batch, intents, outcomes = self.records, self.intents, self.outcomes
            self.records, self.intents, self.outcomes = [], [], 0
            os.write(self.journal, b"".join(batch))
            await asyncio.to_thread(os.fdatasync, self.journal)
            self.ended += outcomes
            self.ready.extend(intents)
            self.dispatch()
            self.report()

    def arrived(self) -> None:
        for event in self.inotify.read(timeout=0):
            path = self.incoming / event.name
            with open(path, "rb") as file:
                payload = DECODE(file.read())
            os.unlink(path)
            self.next_id += 1
            self.payloads[self.next_id] = payload
            accepted = {"id": self.next_id, "state": "Enqueued", "payload": payload}
            self.records.append(ENCODE(accepted) + b"\n")
            self.records.append(ENCODE({"id": self.next_id, "state": "Dequeued"}) + b"\n")
            self.intents.append(self.next_id)
        self.wake.set()

    def dispatch(self) -> None:
        while self.free and self.ready:
            self.free.pop().send(self.ready.popleft())

    def finished(self, worker: Worker, frame: dict[str, object]) -> None:
        self.records.append(ENCODE({"id": frame["id"], "state": "Succeeded", **frame}) + b"\n")
        self.outcomes += 1
        self.free.append(worker)
        self.dispatch()
        self.wake.set()

    def report(self) -> None:
        if self.ended != self.reported:
            self.reported = self.ended
            print(self.ended, flush=True)


if __name__ == "__main__":
    uvloop.install()
    depth = int(sys.argv[3]) if len(sys.argv) > 3 else 1
    asyncio.run(Floor(Path(sys.argv[1]), int(sys.argv[2]), depth).run())
