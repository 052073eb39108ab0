"""The rejected files: what the daemon set aside in `rejected/` and why, newest first; enter
submits a file again (once it is fixed where it was first dropped, or as it is)."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

from textual.app import ComposeResult
from textual.binding import Binding
from textual.screen import Screen
from textual.widgets import DataTable, Footer, Static

from daemon.spool import Spool, rename_noreplace
from daemon.text import printable
from tui.format import stamp

SHOWN = 500  # reasons listed at most, the newest
RESUBMITTABLE = ("incoming/", "control/")  # where a set-aside file may go again


@dataclass(frozen=True)
class Rejected:
    """One file set aside, with the reason the daemon wrote beside it."""

    file: str  # where it was dropped, relative to the spool
    kept_as: str  # its name in rejected/
    reason: str
    message: str
    at: float


def read_rejected(spool: Spool, limit: int = SHOWN) -> list[Rejected]:
    """The newest reasons in rejected/ (unreadable ones are skipped)."""
    found = []
    try:
        paths = list(spool.rejected.glob("*.reason.json"))
    except OSError:
        return []
    paths.sort(key=_mtime, reverse=True)
    for path in paths[:limit]:
        try:
            why = json.loads(path.read_text())
            found.append(
                Rejected(
                    file=str(why["file"]),
                    kept_as=str(why["rejected_as"]),
                    reason=str(why["reason"]),
                    message=str(why.get("message", "")),
                    at=_mtime(path),
                )
            )
        except (OSError, ValueError, KeyError):
            continue
    return found


def resubmit(spool: Spool, item: Rejected) -> str:
    """Drop the set-aside file again where it came from (a copy, written in tmp/ and renamed
    in); where it went. ValueError when it cannot go back."""
    if not item.file.startswith(RESUBMITTABLE) or ".." in Path(item.file).parts:
        raise ValueError(f"{item.file} is not a place files are dropped")
    data = (spool.rejected / item.kept_as).read_bytes()
    spool.tmp.mkdir(parents=True, exist_ok=True)
    temp = spool.tmp / f".resubmit-{os.getpid()}-{Path(item.file).name}"
    temp.write_bytes(data)
    target = spool.root / item.file
    # renamed in whole (a hard link would be refused as one), never over a file dropped since
    tmp_fd = os.open(spool.tmp, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    dst_fd = os.open(target.parent, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        if not rename_noreplace(tmp_fd, temp.name, dst_fd, target.name):
            os.unlink(temp)
            raise ValueError(f"{item.file} exists again: not replaced")
    finally:
        os.close(tmp_fd)
        os.close(dst_fd)
    return item.file


def _mtime(path: Path) -> float:
    try:
        return path.stat().st_mtime
    except OSError:
        return 0.0


class RejectedScreen(Screen[None]):
    """Files set aside, newest first: where each came from, the reason, the message."""

    BINDINGS = [
        Binding("escape,1", "app.pop_screen", "Events"),
        Binding("enter", "resubmit", "Submit again", priority=True),
        Binding("g", "reload", "Reload"),
    ]

    def __init__(self, spool: Spool) -> None:
        super().__init__()
        self.spool = spool
        self.items: list[Rejected] = []

    def compose(self) -> ComposeResult:
        yield Static(id="rejected-title")
        yield DataTable(id="rejected", cursor_type="row", zebra_stripes=True)
        yield Footer()

    def on_mount(self) -> None:
        table = self.query_one(DataTable)
        table.add_columns("SET ASIDE", "FILE", "REASON", "MESSAGE")
        self.action_reload()
        table.focus()

    def action_reload(self) -> None:
        """Read rejected/ again."""
        self.items = read_rejected(self.spool)
        table = self.query_one(DataTable)
        table.clear()
        for item in self.items:
            table.add_row(
                stamp(item.at), printable(item.file), item.reason, printable(item.message)[:80]
            )
        count = len(self.items)
        self.query_one("#rejected-title", Static).update(
            f"[b]rejected[/]  {count} file{'s' * (count != 1)} set aside"
            "  ·  [b]enter[/] submits the selected file again, as it is now"
        )

    def action_resubmit(self) -> None:
        """Drop the selected file again where it came from."""
        table = self.query_one(DataTable)
        if not self.items or table.cursor_row >= len(self.items):
            return
        try:
            where = resubmit(self.spool, self.items[table.cursor_row])
        except (OSError, ValueError) as exc:
            self.notify(f"not submitted: {exc}", severity="error")
            return
        self.notify(f"submitted again as {printable(where)}")
