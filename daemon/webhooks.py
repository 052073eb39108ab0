"""URL destinations: an ended event's record POSTed as JSON (FC's HTTP destinations, OpenFaaS's
X-Callback-Url), tried again with backoff until the record is older than `destination_max_age`.

Every failed try is journaled (DeliveryFailed, with when the next is due), so a restart resumes
the retries where they were, and `events get` shows them. A POST that reached the server just
before a crash is sent again after it: a URL gets its record at least once, and the request id
(`X-Call-Id`, `requestContext.requestId`) lets the receiver drop a repeat.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from daemon.functions import AsyncConfig
from daemon.model import Event
from daemon.text import printable

if TYPE_CHECKING:
    import aiohttp

log = logging.getLogger(__name__)

TRY_TIMEOUT = 10.0  # seconds one POST may take (less when the record's age runs out sooner)
AT_ONCE = 16  # POSTs in flight at once, whatever the backlog
ERROR_CHARS = 300  # what a failed try's error keeps, for the journal

#: journals a delivery: (event, destination, condition, target)
MarkDelivered = Callable[[Event, str, str, str], None]
#: journals a failed try: (event, destination, condition, tries, error, next try or None)
MarkFailed = Callable[[Event, str, str, int, str, float | None], None]


def pause_after(config: AsyncConfig, tries: int) -> float:
    """The wait after failed try number `tries`: the function's backoff, doubling, capped,
    with jitter (as its retries)."""
    ceiling = min(config.backoff * 2 ** (tries - 1), config.backoff_max)
    return random.uniform(ceiling / 2, ceiling)


class UrlSender:
    """POSTs records to URLs, one task per event, each retrying on its own schedule."""

    def __init__(self, delivered: MarkDelivered, failed: MarkFailed) -> None:
        self._delivered = delivered
        self._failed = failed
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._posting: set[str] = set()  # events whose POST is in flight
        self._limit = asyncio.Semaphore(AT_ONCE)
        self._session: aiohttp.ClientSession | None = None

    def __len__(self) -> int:
        return len(self._tasks)

    def send(
        self, event: Event, url: str, condition: str, body: bytes, config: AsyncConfig
    ) -> None:
        """Deliver `body` to `url` from now on (resuming the tries the journal shows)."""
        if event.id in self._tasks:
            return
        task = asyncio.get_running_loop().create_task(
            self._run(event, url, condition, body, config), name=f"post-{event.id}"
        )
        self._tasks[event.id] = task
        task.add_done_callback(lambda _t: self._tasks.pop(event.id, None))

    async def close(self, timeout: float | None) -> None:
        """Stop: retries waiting are dropped now, POSTs in flight get up to `timeout` seconds;
        what is not delivered stays owed (the next start resumes it)."""
        for request_id, task in list(self._tasks.items()):
            if request_id not in self._posting:
                task.cancel()
        tasks = list(self._tasks.values())
        if tasks:
            _done, late = await asyncio.wait(tasks, timeout=timeout)
            for task in late:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def _run(
        self, event: Event, url: str, condition: str, body: bytes, config: AsyncConfig
    ) -> None:
        before = event.delivery_tries
        resumed = before is not None and before.destination == url
        tries = before.tries if before is not None and resumed else 0
        due = before.next_at if before is not None and resumed else None
        until = (event.ended_at or time.time()) + config.destination_max_age
        try:
            while True:
                if due is not None:
                    await asyncio.sleep(max(0.0, due - time.time()))
                left = until - time.time()
                if left <= 0:  # the daemon was down past the record's age
                    self._give_up(event, url, condition, tries, "older than destination_max_age")
                    return
                tries += 1
                error = await self._post(event, url, condition, body, min(TRY_TIMEOUT, left))
                if error is None:
                    self._delivered(event, url, condition, url)
                    log.info("event %s: %s record POSTed to %s", event.id, condition, url)
                    return
                due = time.time() + pause_after(config, tries)
                if due >= until:
                    self._give_up(event, url, condition, tries, error)
                    return
                self._failed(event, url, condition, tries, error, due)
                log.info("event %s: POST to %s failed (%s): try %d at %.0f",
                         event.id, url, error, tries + 1, due)  # fmt: skip
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # the journal failed: the next start resumes it
            log.error("event %s: delivery to %s stopped: %s", printable(event.id), url, exc)

    def _give_up(self, event: Event, url: str, condition: str, tries: int, error: str) -> None:
        self._failed(event, url, condition, tries, error, None)
        log.warning("event %s: record not delivered to %s after %d tries (%s): given up",
                    event.id, url, tries, error)  # fmt: skip

    async def _post(
        self, event: Event, url: str, condition: str, body: bytes, timeout: float
    ) -> str | None:
        """One POST: None when the server took it (2xx), else what went wrong."""
        from daemon.runtimes.http_client import load_aiohttp  # not for the CLI's import

        await load_aiohttp()
        import aiohttp

        headers = {
            "Content-Type": "application/json",
            "User-Agent": "fnspool",
            "X-Call-Id": event.id,  # OpenFaaS's name for it: the receiver's idempotency key
            "X-Function-Name": event.function,
            "X-Fnspool-Condition": condition,
        }
        async with self._limit:
            self._posting.add(event.id)
            try:
                session = self._session_now()
                async with session.post(
                    url,
                    data=body,
                    headers=headers,
                    timeout=aiohttp.ClientTimeout(total=timeout),
                    allow_redirects=False,  # a record goes where the administrator said only
                ) as response:
                    if 200 <= response.status < 300:
                        return None
                    return f"HTTP {response.status} {response.reason or ''}".strip()
            except TimeoutError:
                return f"no answer within {timeout:.1f} s"
            except (aiohttp.ClientError, OSError, ValueError) as exc:
                return f"{type(exc).__name__}: {exc}"[:ERROR_CHARS]
            finally:
                self._posting.discard(event.id)

    def _session_now(self) -> aiohttp.ClientSession:
        if self._session is None:
            import aiohttp  # loaded by load_aiohttp

            connector = aiohttp.TCPConnector(limit=AT_ONCE)
            self._session = aiohttp.ClientSession(connector=connector)
        return self._session
