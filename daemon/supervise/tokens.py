"""The token in every child's environment: who spawned it, so that its orphans can be found.

A token reads `MARK/PID.NONCE-N`: the spool's mark (`-` outside a daemon), the spawning process,
a nonce of its supervisor (a test process holds many) and the child's number.
"""

from __future__ import annotations

import itertools
import os
import secrets
from pathlib import Path

TOKEN_VAR = "FNSPOOL_SUPERVISOR_TOKEN"  # in every child's environment: finds orphaned descendants
NO_MARK = "-"  # the mark of a supervisor that serves no spool (a tool, a test)


class Tokens:
    """The tokens of one supervisor's children, under one spool's mark."""

    def __init__(self, mark: str = NO_MARK) -> None:
        self.mark = mark
        #: the start of every token of this supervisor's, and of no one else's
        self.own_prefix = f"{mark}/{os.getpid()}.{secrets.token_hex(4)}-"
        self._numbers = itertools.count(1)

    def mint(self) -> str:
        """A token for the next child."""
        return f"{self.own_prefix}{next(self._numbers)}"

    def is_own(self, token: str) -> bool:
        """Whether `token` was minted here."""
        return token.startswith(self.own_prefix)

    def is_predecessors(self, token: str) -> bool:
        """Whether `token` is of another supervisor of the same spool (a killed daemon's)."""
        return token.startswith(f"{self.mark}/") and not self.is_own(token)


def spool_mark(root: Path) -> str:
    """The mark of the spool at `root`: its device and inode, the same under any path to it."""
    st = root.stat()
    return f"{st.st_dev:x}.{st.st_ino:x}"


def cgroup_key(token: str) -> str:
    """The name of the cgroup of the child carrying `token`."""
    return token.replace("/", "_")
