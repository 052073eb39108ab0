"""The main screen: status, counts per state, the filter line, the event list, the filter input."""

from __future__ import annotations

from textual.app import ComposeResult
from textual.binding import Binding
from textual.events import Key
from textual.screen import Screen
from textual.timer import Timer
from textual.widgets import Footer, Input

from tui.event_list import EventList
from tui.header import CountsLine, FilterLine, StatusLine

TYPING_PAUSE = 0.25  # seconds without a key before the typed text filters the list


class FilterInput(Input):
    """The `/` filter: enter applies, esc clears."""

    BINDINGS = [Binding("escape", "clear", "Clear filter")]

    def action_clear(self) -> None:
        """Clear the text filter and go back to the list."""
        self.value = ""
        self.app.apply_text("")  # type: ignore[attr-defined]


class EventsScreen(Screen[None]):
    """Events newest first, live."""

    BINDINGS = [
        Binding("slash", "filter_text", "Filter"),
        Binding("s", "app.pick_states", "States"),
        Binding("F", "app.pick_function", "Function"),
        Binding("t", "app.pick_time", "Time"),
        Binding("f", "follow", "Follow"),
        Binding("x", "app.stop", "Stop"),
        Binding("r", "app.reinvoke", "Re-invoke"),
        Binding("R", "app.reinvoke_all", "Re-invoke shown", show=False),
        Binding("c", "app.copy", "Copy"),
        Binding("o", "app.open_log", "Log", show=False),
        Binding("2", "app.functions", "Functions"),
        Binding("3", "app.rejected", "Rejected"),
        Binding("escape", "app.clear_filters", "Clear filters", show=False),
        Binding("greater_than_sign", "app.sort_next(1)", "Sort"),
        Binding("less_than_sign", "app.sort_next(-1)", "Sort back", show=False),
        Binding("I", "app.sort_flip", "Invert sort", show=False),
    ]

    def __init__(self) -> None:
        super().__init__()
        self._typing: Timer | None = None  # the filter applied once typing pauses

    def compose(self) -> ComposeResult:
        yield StatusLine(id="status")
        yield CountsLine(id="counts")
        yield FilterLine(id="filter")
        yield EventList(id="events")
        yield FilterInput(placeholder="id prefix, function or error text", id="filter-input")
        yield Footer()

    def on_mount(self) -> None:
        self.query_one(EventList).focus()

    def action_filter_text(self) -> None:
        """Open the filter input."""
        box = self.query_one(FilterInput)
        box.value = self.app.query_text  # type: ignore[attr-defined]
        box.display = True
        box.focus()

    def on_input_changed(self, event: Input.Changed) -> None:
        """Filter as the text is typed, once typing pauses."""
        event.stop()
        if self._typing is not None:
            self._typing.stop()
        text = event.value
        self._typing = self.set_timer(
            TYPING_PAUSE,
            lambda: self.app.filter_text(text),  # type: ignore[attr-defined]
        )

    def on_input_submitted(self, event: Input.Submitted) -> None:
        event.stop()
        if self._typing is not None:
            self._typing.stop()
        self.app.apply_text(event.value)  # type: ignore[attr-defined]

    def close_filter(self) -> None:
        """Hide the filter input and give the list the keys again."""
        box = self.query_one(FilterInput)
        box.display = False
        self.query_one(EventList).focus()

    def action_follow(self) -> None:
        """Switch follow mode (keep the newest in view)."""
        events = self.query_one(EventList)
        events.follow = not events.follow

    def on_key(self, event: Key) -> None:
        if event.key == "question_mark" and not isinstance(self.focused, Input):
            event.stop()
            self.app.action_help()  # type: ignore[attr-defined]
