"""The one error type shown to people: a title and a message, no traceback."""

from __future__ import annotations


class FnspoolError(Exception):
    """A user-facing error: the CLI prints it on stderr and exits non-zero."""

    def __init__(self, msg: str, *, title: str = "", exit_code: int = 1) -> None:
        super().__init__(msg)
        self.title = title
        self.msg = msg
        self.exit_code = exit_code
