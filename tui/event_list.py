"""The event list: a Line-API scroll view that renders only the visible rows of a filtered index.

Rows come from an `EventTable` (one row per event, in enqueue order) through an optional array of
the row numbers that pass the filter; the newest is shown first. Nothing here is O(events) per
frame: a repaint renders the lines on screen, a live batch touches the rows it changed.
"""

from __future__ import annotations

from array import array
from bisect import bisect_left
from dataclasses import dataclass

from rich.segment import Segment
from rich.style import Style
from textual import events
from textual.binding import Binding
from textual.geometry import Size
from textual.message import Message
from textual.reactive import reactive
from textual.scroll_view import ScrollView
from textual.strip import Strip

from daemon.index import EventTable
from daemon.model import State
from tui.format import clock, duration, state_class

#: (title, width) of the fixed columns; the error takes what is left
COLUMNS = (
    ("ID", 36),
    ("FUNCTION", 14),
    ("STATE", 10),
    ("ATT", 3),
    ("ENQUEUED", 14),
    ("DURATION", 9),
)
_GAP = "  "
FIXED_WIDTH = sum(w + len("  ") for _, w in COLUMNS)
SHORT_ID = 20  # the id column in a narrow terminal: its first 19 characters and "…"
MIN_ERROR_WIDTH = 30


def _cell(text: str, width: int, right: bool = False) -> str:
    if len(text) > width:
        return text[: width - 1] + "…"
    return text.rjust(width) if right else text.ljust(width)


class EventList(ScrollView, can_focus=True):
    """Events newest first; a cursor; follow mode keeps the newest in view."""

    BINDINGS = [
        Binding("j,down", "cursor(1)", "Down", show=False),
        Binding("k,up", "cursor(-1)", "Up", show=False),
        Binding("pagedown,ctrl+f", "page(1)", "Page down", show=False),
        Binding("pageup,ctrl+b", "page(-1)", "Page up", show=False),
        Binding("g,home", "top", "Top", show=False),
        Binding("G,end", "bottom", "Bottom", show=False),
        Binding("enter", "open", "Detail"),
    ]
    COMPONENT_CLASSES = {
        "event-list--header",
        "event-list--cursor",
        "event-list--muted",
        "event-list--error",
        *(f"event-list--{state_class(s)}" for s in State),
    }

    follow: reactive[bool] = reactive(True)

    @dataclass
    class Opened(Message):
        """Enter on an event."""

        event_id: str

    class Ready(Message):
        """The list is mounted: give it the rows."""

    @dataclass
    class FollowChanged(Message):
        """Follow mode went on or off."""

        follow: bool

    def __init__(self, *, id: str | None = None) -> None:
        super().__init__(id=id)
        self.table = EventTable()
        self.rows: array[int] | None = None  # ascending row numbers passing the filter; None: all
        self.cursor = 0  # position in display order (0 = newest)
        self.selected_id: str | None = None
        self.empty_text = ""  # what an empty list says
        self.id_width = 36

    # -- the data --------------------------------------------------------------------------

    @property
    def count(self) -> int:
        """Rows shown."""
        return len(self.table) if self.rows is None else len(self.rows)

    def row_at(self, index: int) -> int:
        """The table row shown at display position `index` (0 = newest)."""
        if self.rows is None:
            return len(self.table) - 1 - index
        return self.rows[len(self.rows) - 1 - index]

    def index_of(self, row: int) -> int | None:
        """The display position of table row `row`, or None when it is filtered out."""
        if self.rows is None:
            return len(self.table) - 1 - row if 0 <= row < len(self.table) else None
        pos = bisect_left(self.rows, row)
        if pos < len(self.rows) and self.rows[pos] == row:
            return len(self.rows) - 1 - pos
        return None

    def show(self, table: EventTable, rows: array[int] | None) -> None:
        """Show `rows` of `table` (after a load, a filter or a live batch), keeping the cursor."""
        if not table.complete:
            self.empty_text = "  reading the journal…"
        elif rows is not None:
            self.empty_text = "  no event matches the filter (esc clears it)"
        else:
            self.empty_text = (
                "  no events yet: drop a JSON file into incoming/NAME/, or run"
                " `fnspool invoke NAME --payload '{...}'`"
            )
        old_cursor = self.cursor
        self.table, self.rows = table, rows
        self._resize_virtual()
        if self.follow or self.count == 0:
            self._place(0, scroll=True)
        else:
            row = table.row_of.get(self.selected_id) if self.selected_id else None
            index = self.index_of(row) if row is not None else None
            if index is None:
                self._place(min(old_cursor, self.count - 1), scroll=True)
            else:
                # keep the selected event where it is on screen while newer rows arrive above it
                self.scroll_to(y=self.scroll_y + index - old_cursor, animate=False, immediate=True)
                self._place(index, scroll=True)
        self.refresh()

    def _resize_virtual(self) -> None:
        room = self.scrollable_content_region.width
        self.id_width = 36 if room >= FIXED_WIDTH + MIN_ERROR_WIDTH else SHORT_ID
        width = max(self._fixed() + MIN_ERROR_WIDTH, room)
        self.virtual_size = Size(width, self.count + 1)

    def on_mount(self) -> None:
        self.post_message(self.Ready())

    def on_resize(self) -> None:
        self._resize_virtual()

    def _place(self, index: int, scroll: bool) -> None:
        self.cursor = max(0, min(index, self.count - 1))
        self.selected_id = self.table.ids[self.row_at(self.cursor)] if self.count else None
        if scroll:
            self._scroll_cursor_into_view()

    def _scroll_cursor_into_view(self) -> None:
        height = max(1, self.scrollable_content_region.height - 1)  # the header line stays put
        top = self.scroll_y
        if self.cursor < top:
            self.scroll_to(y=self.cursor, animate=False, immediate=True)
        elif self.cursor >= top + height:
            self.scroll_to(y=self.cursor - height + 1, animate=False, immediate=True)

    def move_to(self, index: int) -> None:
        """Put the cursor on display position `index`; leaving the top ends follow mode."""
        self._place(index, scroll=True)
        self.follow = self.cursor == 0 and self.follow
        self.refresh()

    # -- actions ---------------------------------------------------------------------------

    def action_cursor(self, delta: int) -> None:
        """Move the cursor by `delta` rows."""
        self.move_to(self.cursor + delta)

    def action_page(self, direction: int) -> None:
        """Move the cursor by a screenful."""
        self.move_to(self.cursor + direction * max(1, self.scrollable_content_region.height - 2))

    def action_top(self) -> None:
        """The newest event."""
        self.move_to(0)

    def action_bottom(self) -> None:
        """The oldest event."""
        self.move_to(self.count - 1)

    def action_open(self) -> None:
        """Open the selected event."""
        if self.selected_id is not None:
            self.post_message(self.Opened(self.selected_id))

    def watch_follow(self, follow: bool) -> None:
        if follow:
            self._place(0, scroll=True)
            self.scroll_to(y=0, animate=False, immediate=True)
            self.refresh()
        self.post_message(self.FollowChanged(follow))

    def watch_scroll_y(self, old_value: float, new_value: float) -> None:
        super().watch_scroll_y(old_value, new_value)
        if new_value > 0 and self.follow:
            self.follow = False  # the user scrolled away from the newest, as toolong's tail

    def on_click(self, event: events.Click) -> None:
        if event.y >= 1:
            self.move_to(int(self.scroll_y) + event.y - 1)
        if event.chain == 2:
            self.action_open()

    # -- rendering -------------------------------------------------------------------------

    def render_line(self, y: int) -> Strip:
        width = self.scrollable_content_region.width
        scroll_x = int(self.scroll_x)
        base = self.rich_style
        if y == 0:
            strip = self._header()
        else:
            index = int(self.scroll_y) + y - 1
            if index >= self.count:
                if self.count == 0 and y == 2:
                    return Strip([Segment(self.empty_text, self._style("muted"))]).crop_extend(
                        0, width, base
                    )
                return Strip.blank(width, base)
            strip = self._line(self.row_at(index))
            if index == self.cursor:
                strip = strip.apply_style(self._style("cursor"))
        return strip.crop_extend(scroll_x, scroll_x + width, base)

    def _style(self, name: str) -> Style:
        return self.get_component_rich_style(f"event-list--{name}")

    def _fixed(self) -> int:
        return FIXED_WIDTH - 36 + self.id_width

    def _error_width(self) -> int:
        return max(MIN_ERROR_WIDTH, self.virtual_size.width - self._fixed())

    def _header(self) -> Strip:
        text = _GAP.join(
            _cell(t, self.id_width if t == "ID" else w, right=t in ("ATT", "DURATION"))
            for t, w in COLUMNS
        )
        return Strip([Segment(f"{text}{_GAP}ERROR", self._style("header"))])

    def _line(self, row: int) -> Strip:
        t = self.table
        state = t.state_of(row)
        muted = self._style("muted")
        error = t.errors.get(row, "") if state is not State.SUCCEEDED else ""
        return Strip(
            [
                Segment(_cell(t.ids[row], self.id_width) + _GAP),
                Segment(_cell(t.function(row), 14) + _GAP),
                Segment(_cell(state.value, 10), self._style(state_class(state))),
                Segment(_GAP + _cell(str(t.attempts[row]), 3, right=True) + _GAP),
                Segment(_cell(clock(t.enqueued[row]), 14) + _GAP, muted),
                Segment(_cell(duration(t.duration[row]), 9, right=True) + _GAP),
                Segment(_cell(error.replace("\n", " "), self._error_width()), self._style("error")),
            ]
        )
