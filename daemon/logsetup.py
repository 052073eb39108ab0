"""How the daemon's processes log: one line per record on stderr, whatever outside text (a file
name, a handler's error message) the message carries."""

from __future__ import annotations

import logging
import sys

from daemon.text import printable

FORMAT = "%(asctime)s %(levelname)-7s %(name)s: %(message)s"


class OneLineFormatter(logging.Formatter):
    """Escapes control characters in the message, so that no newline splits a line and no
    text forges one; a traceback after it keeps its lines."""

    def formatMessage(self, record: logging.LogRecord) -> str:
        record.message = printable(record.message)
        return super().formatMessage(record)


def log_to_stderr(level: int = logging.INFO) -> None:
    """Send this process's log records to stderr, one line each."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(OneLineFormatter(FORMAT))
    logging.basicConfig(level=level, handlers=[handler])
