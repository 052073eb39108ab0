"""Destinations: one record per ended event (daemon/fcrecord.py), delivered exactly once.

A record goes out only after the event's terminal state is durable. Delivery is idempotent (a
folder record is never rewritten, a `function:OTHER` event has an id derived from the event's),
and journaled as `Delivered`, so a crash between the two delivers again harmlessly at start-up.
A URL is POSTed the record by daemon/webhooks.py, retried until `destination_max_age`: there,
at least once (a receiver drops a repeat by its request id).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import msgspec

from daemon.atomic import write_durable
from daemon.fcrecord import build_record, condition_of, encode_within
from daemon.functions import (
    DAEMON_FOLDERS,
    FUNCTION_PREFIX,
    URL_PREFIXES,
    AsyncConfig,
    Definitions,
    owed_destination,
)
from daemon.ids import check_id, derived_id
from daemon.model import Event, Source
from daemon.text import printable
from daemon.webhooks import MarkFailed, UrlSender

log = logging.getLogger(__name__)

#: enqueues an event: (function, payload, request id, source) -> whether it was new
Enqueue = Callable[[str, msgspec.Raw, str, Source], bool]
#: journals a delivery: (event, destination, condition, target: the file or the new event's id)
MarkDelivered = Callable[[Event, str, str, str], None]


def folder_in_spool(root: Path, destination: str) -> Path:
    """The folder a destination names, which must lie inside the spool; ValueError if not."""
    folder = (root / destination).resolve()
    if not folder.is_relative_to(root.resolve()) or folder == root.resolve():
        raise ValueError(f"destination {destination!r} is not a folder inside the spool")
    top = folder.relative_to(root.resolve()).parts[0]
    if top in DAEMON_FOLDERS:  # a link that leads there: a record there would be read back
        raise ValueError(f"destination {destination!r} leads into the daemon's {top}/")
    return folder


def write_once(folder: Path, name: str, data: bytes) -> bool:
    """Write `folder/name` atomically and durably unless it exists; whether it was written."""
    folder.mkdir(parents=True, exist_ok=True)
    target = folder / name
    if target.exists():
        return False
    # the spool's group reads records, nobody else (docs/security.md), whatever the umask
    write_durable(target, data, 0o640)
    return True


class Destinations:
    """Delivers the records of ended events, after their terminal state is durable."""

    def __init__(
        self,
        root: Path,
        definitions: Definitions,
        sync: Callable[[], Any],
        enqueue: Enqueue,
        mark_delivered: MarkDelivered,
        mark_failed: MarkFailed,
    ) -> None:
        self.root = root
        self._definitions = definitions
        self._sync = sync
        self._enqueue = enqueue
        self._mark = mark_delivered
        self._urls = UrlSender(mark_delivered, mark_failed)
        self._pending: list[Event] = []
        self._task: asyncio.Task[None] | None = None

    def owes(self, event: Event) -> bool:
        """Whether an ended event still has a record to deliver (one given up owes nothing)."""
        tried = event.delivery_tries
        if event.delivered or (tried is not None and tried.given_up):
            return False
        return bool(self._destination(event))

    def ended(self, event: Event) -> None:
        """An event reached a terminal state (its record may not be durable yet)."""
        if self.owes(event):
            self._pending.append(event)
            if self._task is None or self._task.done():
                self._task = asyncio.get_running_loop().create_task(self._deliver_pending())

    def recover(self, events: list[Event]) -> None:
        """At start-up: deliver what a crash left undelivered."""
        for event in events:
            if event.ended:
                self.ended(event)

    async def flush(self, timeout: float | None = None) -> None:
        """Wait until every pending record is delivered, or `timeout` seconds have passed (the
        rest stay owed: an ended event without its Delivered record is delivered at start-up)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while self._task is not None and not self._task.done():
            left = None if deadline is None else deadline - time.monotonic()
            if left is not None and left <= 0:
                log.warning("%d destination records left for the next start", len(self._pending))
                self._task.cancel()
                return
            try:
                await asyncio.wait_for(asyncio.shield(self._task), left)
            except TimeoutError:
                continue
        # retries of URLs waiting for their time are left owed; POSTs under way get what is left
        left = None if deadline is None else max(0.0, deadline - time.monotonic())
        if len(self._urls):
            log.info("%d records owed to URLs are left for the next start", len(self._urls))
        await self._urls.close(left)

    def _destination(self, event: Event) -> str:
        return owed_destination(self._definitions.get(event.function), event)

    async def _deliver_pending(self) -> None:
        while self._pending:
            try:
                await (
                    self._sync()
                )  # the terminal states are durable before anything depends on them
            except Exception as exc:  # the journal failed: the next start delivers them
                log.error("destinations not delivered, the journal failed: %s", exc)
                return
            batch, self._pending = self._pending, []
            for event in batch:
                try:
                    await self._deliver(event)
                except Exception as exc:  # one bad destination never stops the others
                    log.error("event %s: destination delivery failed: %s", printable(event.id), exc)

    async def _deliver(self, event: Event) -> None:
        destination = self._destination(event)
        condition = condition_of(event)
        if destination.startswith(URL_PREFIXES):
            definition = self._definitions.get(event.function)
            config = definition.async_ if definition is not None else AsyncConfig()
            record = msgspec.json.encode(build_record(event))
            self._urls.send(event, destination, condition, record, config)
            return  # journaled by the sender, once the URL took it (or gave up)
        if destination.startswith(FUNCTION_PREFIX):
            # the record becomes an event's payload, journaled: held to the limit of a payload
            record = encode_within(build_record(event))
            function = destination.removeprefix(FUNCTION_PREFIX)
            target = derived_id(event.id, condition)
            self._enqueue(function, msgspec.Raw(record), target, Source(via="destination"))
        else:
            record = msgspec.json.encode(build_record(event))
            folder = folder_in_spool(self.root, destination)
            name = f"{check_id(event.id)}.json"
            await asyncio.to_thread(write_once, folder, name, record + b"\n")
            target = str((folder / name).relative_to(self.root.resolve()))
        self._mark(event, destination, condition, target)
        log.info("event %s: %s record delivered to %s", event.id, condition, target)
