"""The files in run/ that tell readers how the daemon is: `status.json` (the heartbeat the CLI and
the dashboard read) and `metrics.prom`. Written whole or not at all; a write that fails (a full
disk) is logged once, never raised: the daemon's work does not depend on them."""

from __future__ import annotations

import contextlib
import logging
import os
from pathlib import Path

from daemon.atomic import write_whole

log = logging.getLogger(__name__)


class RunFiles:
    """Writes run/NAME atomically and remembers which names cannot be written just now."""

    def __init__(self, run_dir: Path) -> None:
        self.run_dir = run_dir
        self._failing: set[str] = set()

    def write(self, name: str, data: bytes) -> bool:
        """Replace run/`name` with `data`; False (logged once) when it cannot be written."""
        try:
            write_whole(self.run_dir / name, data)
        except OSError as exc:
            if name not in self._failing:
                log.error("cannot write run/%s: %s", name, exc)
                self._failing.add(name)
            return False
        if name in self._failing:
            log.info("run/%s is written again", name)
            self._failing.discard(name)
        return True

    def write_or_remove(self, name: str, data: bytes) -> None:
        """Write run/`name`, or remove it when that fails: better absent than out of date (an
        unlink needs no space)."""
        if not self.write(name, data):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.run_dir / name)
