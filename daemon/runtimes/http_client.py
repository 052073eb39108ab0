"""Talking HTTP to a custom runtime's server: one aiohttp session per instance, answers read
with a size cap, FC's status semantics turned into errors, and free ports on the loopback."""

from __future__ import annotations

import asyncio
import importlib
import random
import socket
import sys
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, NamedTuple

from daemon.errors import ErrorType, error, spawn_failed, unreachable
from daemon.limits import MAX_VALUE_BYTES, result_too_large
from daemon.model import ErrorInfo
from daemon.runtimes.base import InstanceStartError
from daemon.runtimes.command import text_start

if TYPE_CHECKING:
    import aiohttp

HOST = "127.0.0.1"

SocketFactory = Callable[[Any], socket.socket]  # aiohttp's: an address info -> a socket

#: hook name -> the request FC's custom runtime contract makes for it
HOOK_REQUESTS = {
    "initializer": ("POST", "/initialize"),
    "pre_freeze": ("GET", "/pre-freeze"),
    "pre_stop": ("GET", "/pre-stop"),
}

_PROBE_FIRST, _PROBE_MAX = 0.001, 0.01  # seconds between connection attempts while it starts

_PORT_FLOOR = 10000  # ports below are left to well-known services
_ports_in_use: set[int] = set()  # handed to instances of this daemon that are still alive


class Response(NamedTuple):
    """What the server answered (the body cut at MAX_VALUE_BYTES)."""

    status: int
    reason: str
    fc_status: str | None  # FC's `x-fc-status` header: "404" reports a function error
    body: bytes
    size: int  # of the whole body


async def load_aiohttp() -> None:
    """Import aiohttp in a thread the first time: the daemon pays for it only once it runs an
    http function, and its event loop goes on meanwhile (the import takes about 0.1 s)."""
    if "aiohttp" not in sys.modules:
        await asyncio.to_thread(importlib.import_module, "aiohttp")


def new_session(port: int, socket_factory: SocketFactory | None = None) -> aiohttp.ClientSession:
    """A session for one server on the loopback; every call brings its own deadline.
    `socket_factory` makes its sockets (those of a server's own network namespace)."""
    import aiohttp  # loaded by load_aiohttp

    # one connection per request: a kept-alive connection may be closed by the server just as it
    # is reused (a thawed server expiring its idle connections), which would look like a crash;
    # and the close pushes out a small answer that Nagle would otherwise hold for a delayed ACK
    connector = aiohttp.TCPConnector(
        force_close=True, limit=0, use_dns_cache=False, socket_factory=socket_factory
    )
    return aiohttp.ClientSession(
        base_url=f"http://{HOST}:{port}",
        connector=connector,
        timeout=aiohttp.ClientTimeout(total=None),  # every call has its own deadline
        auto_decompress=False,
        skip_auto_headers=("User-Agent", "Content-Type"),
    )


async def request(
    session: aiohttp.ClientSession,
    method: str,
    path: str,
    headers: dict[str, str],
    body: bytes | None,
) -> Response | ErrorInfo:
    """Make one request: the answer, or why there was none (InstanceUnreachable)."""
    import aiohttp

    try:
        async with session.request(method, path, headers=headers, data=body) as response:
            data, size = await read_capped(response)
            fc_status = response.headers.get("x-fc-status")
            return Response(response.status, response.reason or "", fc_status, data, size)
    except (aiohttp.ClientError, OSError) as exc:
        message = f"{method} {path} failed: {exc or type(exc).__name__}"
        return unreachable(message)


async def read_capped(response: aiohttp.ClientResponse) -> tuple[bytes, int]:
    """The body up to MAX_VALUE_BYTES, and its whole size (the rest is read and dropped)."""
    chunks, size = [], 0
    async for chunk in response.content.iter_any():
        size += len(chunk)
        if size <= MAX_VALUE_BYTES:
            chunks.append(chunk)
    return b"".join(chunks), size


def invoke_error(response: Response, path: str = "/invoke") -> ErrorInfo | None:
    """Why an answer to POST `path` (an event) fails the attempt, or None when it succeeded."""
    if not 200 <= response.status < 300:
        return status_error(f"POST {path}", response)
    if response.fc_status not in (None, "200"):
        # FC's custom runtimes report a function error with a 2xx and `x-fc-status: 404`
        start = text_start(response.body)
        message = f"the function reported an error (x-fc-status {response.fc_status})"
        message += f": {start}" if start else ""
        return error(ErrorType.UNHANDLED_INVOCATION_ERROR, message)
    if response.size > MAX_VALUE_BYTES:
        return result_too_large("the server's answer", response.size)
    return None


def status_error(request: str, response: Response) -> ErrorInfo:
    """A non-2xx answer as an error carrying the status and the start of the body."""
    start = text_start(response.body)
    message = f"{request} answered {response.status} {response.reason}".rstrip()
    message += f": {start}" if start else ""
    return error(ErrorType.HTTP_ERROR, message, response.status)


def free_port() -> int:
    """A TCP port free now, not handed to another live instance of ours, and below the
    ephemeral range: the kernel never gives such a port to an outgoing connection (ours to
    other servers included) while the new server is still starting."""
    low = _ephemeral_low()
    for _ in range(200):
        port = random.randrange(_PORT_FLOOR, low) if low > _PORT_FLOOR + 1000 else 0
        if port in _ports_in_use:
            continue
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            try:
                s.bind(("0.0.0.0", port))  # free on every address: the server may bind any
            except OSError:
                continue
            port = int(s.getsockname()[1])
        if port not in _ports_in_use:
            _ports_in_use.add(port)
            return port
    raise InstanceStartError(spawn_failed("no free TCP port"))


def _ephemeral_low() -> int:
    try:
        with open("/proc/sys/net/ipv4/ip_local_port_range") as f:
            return int(f.read().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


def claim_host_port(port: int) -> None:
    """Take the fixed `port` on the host for one server (no network namespace to give it):
    InstanceStartError when another process of the machine, or another instance, holds it."""
    holder = "another instance of this daemon" if port in _ports_in_use else ""
    if not holder:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            # as servers do: a connection of an ended server in TIME_WAIT is no holder
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                s.bind(("0.0.0.0", port))
            except OSError as exc:
                holder = f"another process ({exc.strerror or exc})"
    if holder:
        message = f"port {port} is in use on this host by {holder}: the server cannot start"
        raise InstanceStartError(spawn_failed(message))
    _ports_in_use.add(port)


def release_port(port: int) -> None:
    """The instance given `port` is gone: the port may be handed out again."""
    _ports_in_use.discard(port)


async def wait_listening(
    port: int,
    exited: asyncio.Future[Any],
    timeout: float,
    make_socket: Callable[[], Awaitable[socket.socket]] | None = None,
) -> bool:
    """Wait until something accepts connections on `port`: True, or False when `exited` is done
    or `timeout` seconds passed first. `make_socket` makes the probes (in the server's network
    namespace); OSError when it cannot."""
    loop = asyncio.get_running_loop()
    deadline = time.monotonic() + timeout
    pause = _PROBE_FIRST
    while not exited.done():
        made = await make_socket() if make_socket is not None else None
        with made or socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
            probe.setblocking(False)
            try:
                await loop.sock_connect(probe, (HOST, port))
                return True
            except OSError:
                pass
        left = deadline - time.monotonic()
        if left <= 0:
            return False
        await asyncio.wait([exited], timeout=min(pause, left))
        pause = min(pause * 2, _PROBE_MAX)
    return False
