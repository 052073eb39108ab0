"""The daemon's end of an isolated server's socket maker (daemon/worker/netns.py): sockets made
inside the server's network namespace, connected from the event loop."""

from __future__ import annotations

import asyncio
import collections
import socket
from typing import Any


class SocketMaker:
    """Asks the socket maker in one instance's namespace for sockets, one request at a time."""

    def __init__(self, channel: socket.socket) -> None:
        self._channel = channel
        channel.setblocking(False)
        self._lock = asyncio.Lock()
        self._ready: collections.deque[socket.socket] = collections.deque()

    @classmethod
    def pair(cls) -> tuple[SocketMaker, int]:
        """A maker, and the fd of the other end for the child (the caller closes it once the
        child has it)."""
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        fd = theirs.detach()
        return cls(ours), fd

    async def make(self) -> socket.socket:
        """A new unconnected TCP socket of the namespace; OSError when the maker is gone."""
        loop = asyncio.get_running_loop()
        async with self._lock:
            await loop.sock_sendall(self._channel, b"4")
            while True:
                try:
                    _msg, fds, _flags, _addr = socket.recv_fds(self._channel, 1, 1)
                except BlockingIOError:
                    await _readable(loop, self._channel)
                    continue
                if not fds:
                    raise ConnectionError("the namespace's socket maker is gone")
                return socket.socket(fileno=fds[0])

    async def prepare(self) -> None:
        """Make a socket for the next connection the session opens (`take`)."""
        self._ready.append(await self.make())

    def take(self, _addr_info: Any) -> socket.socket:
        """aiohttp's socket factory: a socket `prepare` made."""
        if not self._ready:
            raise OSError("no socket was made in the server's network namespace")
        return self._ready.popleft()

    def close(self) -> None:
        """Close the channel (the maker exits) and the sockets not used."""
        while self._ready:
            self._ready.popleft().close()
        self._channel.close()


async def _readable(loop: asyncio.AbstractEventLoop, sock: socket.socket) -> None:
    ready: asyncio.Future[None] = loop.create_future()

    def wake() -> None:
        if not ready.done():
            ready.set_result(None)

    loop.add_reader(sock.fileno(), wake)
    try:
        await ready
    finally:
        loop.remove_reader(sock.fileno())
