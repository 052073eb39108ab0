"""The running event loop, looked up once per object: under uvloop each
`asyncio.get_running_loop()` is a getpid() system call, and the hot path asks per event."""

from __future__ import annotations

import asyncio


class LoopOnce:
    """Gives `loop`: the running loop, looked up at first use."""

    _loop: asyncio.AbstractEventLoop | None = None

    @property
    def loop(self) -> asyncio.AbstractEventLoop:
        """The running loop (looked up once)."""
        if self._loop is None:
            self._loop = asyncio.get_running_loop()
        return self._loop
