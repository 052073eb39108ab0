"""Text from outside (file names, ids, names): exact in JSON records, harmless on a terminal."""

from __future__ import annotations

import contextlib
import os


def file_text(name: str) -> str:
    """A file name or path as valid UTF-8 text (undecodable bytes as \\xNN escapes), otherwise
    exact: for JSON records, whose encoding escapes control characters itself."""
    return os.fsencode(name).decode("utf-8", "backslashreplace")


def printable(text: str) -> str:
    """`text` for a log line or a terminal: undecodable bytes as \\xNN and control characters
    (escape codes, newlines, bidi overrides) as backslash escapes, nothing a terminal acts on."""
    with contextlib.suppress(UnicodeEncodeError):  # a lone surrogate: escaped below
        text = file_text(text)
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else c.encode("unicode_escape").decode() for c in text)
