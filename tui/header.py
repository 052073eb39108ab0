"""The lines every screen shows on top: the daemon's status, counts per state, the filter."""

from __future__ import annotations

from textual.widgets import Static


class AppLine(Static):
    """A line that shows one of the app's reactive markup strings, kept current."""

    SOURCE = ""

    def on_mount(self) -> None:
        self.watch(self.app, self.SOURCE, self._show, init=True)

    def _show(self, markup: str) -> None:
        self.update(markup)


class StatusLine(AppLine):
    """Whether the daemon runs, its queue depth, the spool."""

    SOURCE = "status_markup"


class CountsLine(AppLine):
    """Events per state (all of them, whatever the filter)."""

    SOURCE = "counts_markup"


class FilterLine(AppLine):
    """What the filter shows, and follow mode."""

    SOURCE = "filter_markup"
