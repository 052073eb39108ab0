"""How large a value from outside may be when it enters a journal record: one limit, here.

A journal line longer than 16 MiB reads back as damage (daemon/journal.py), which would leave an
event Running for ever and run its handler again at every start. So whatever a function controls
(a result, an error's text) or makes (a destination record enqueued as a payload) is held below
that, with room for the record's other fields. Light: imports only the model
and the error catalogue.
"""

from __future__ import annotations

from daemon.errors import ErrorType, error
from daemon.model import ErrorInfo

#: bytes of a result (as JSON), of a payload, and of a destination record sent to a function
MAX_VALUE_BYTES = 8 << 20
#: characters kept of an error's message, and of its traceback (JSON may escape one in 6 bytes)
MAX_ERROR_CHARS = 64 << 10

_MAX_TYPE_CHARS = 200  # an error type is a class name


def result_too_large(what: str, size: int) -> ErrorInfo:
    """The error of an attempt whose result is over MAX_VALUE_BYTES; `what` names the result."""
    message = f"{what} is {size:,} bytes, over the {MAX_VALUE_BYTES:,}-byte limit for a result"
    return error(ErrorType.RESULT_TOO_LARGE, message)


def bounded_error(error: ErrorInfo) -> ErrorInfo:
    """`error` with its type, its message (the start kept) and its traceback (the start and the
    end kept) cut short."""
    kind, message, traceback = error.type, error.message, error.traceback
    if len(kind) <= _MAX_TYPE_CHARS and max(len(message), len(traceback or "")) <= MAX_ERROR_CHARS:
        return error
    if len(message) > MAX_ERROR_CHARS:
        cut = len(message) - MAX_ERROR_CHARS
        message = f"{message[:MAX_ERROR_CHARS]} [... {cut:,} more characters cut]"
    if traceback is not None and len(traceback) > MAX_ERROR_CHARS:
        half = MAX_ERROR_CHARS // 2
        cut = len(traceback) - 2 * half
        traceback = f"{traceback[:half]}\n[... {cut:,} characters cut ...]\n{traceback[-half:]}"
    return ErrorInfo(
        type=kind[:_MAX_TYPE_CHARS], message=message, code=error.code, traceback=traceback
    )
