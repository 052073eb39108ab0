"""The event list: a Line-API scroll view over a window of the filtered list.

The list may hold millions of events; the view holds only the window the reader sent
(tui/reader.py): the rows from `start` around what is on screen, and the total. Scrolling past the
window asks the reader for another (`Show`), and rows not there yet show as a placeholder. Live
changes come as new windows, moved by what arrived above the selection, so the selected event
stays where it is on screen.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

from rich.segment import Segment
from rich.style import Style
from textual import events
from textual.binding import Binding
from textual.geometry import Size
from textual.message import Message
from textual.reactive import reactive
from textual.scroll_view import ScrollView
from textual.strip import Strip

from daemon.eventdb import Key
from daemon.model import State
from tui import format as formatting
from tui.format import clock, duration, state_class, time_of_day
from tui.overlay import Row
from tui.reader import Show, WindowRead
from tui.sorting import DEFAULT, Order


class Widths(NamedTuple):
    """The fixed columns' widths (0: not shown); the error takes what is left."""

    id: int
    function: int
    attempts: int
    enqueued: int  # 14: `MM-DD HH:MM:SS`, 8: `HH:MM:SS`
    duration: int
    min_error: int

    @property
    def fixed(self) -> int:
        """The width before the error column, gaps included."""
        shown = [self.id, self.function, STATE_WIDTH, self.attempts, self.enqueued, self.duration]
        return sum(w + len(_GAP) for w in shown if w)


STATE_WIDTH = 10
_GAP = "  "
WIDE = Widths(id=36, function=14, attempts=3, enqueued=14, duration=9, min_error=30)
#: 80 columns: the id's first 17 characters, no attempts, the time of day, the error kept
NARROW = Widths(id=18, function=12, attempts=0, enqueued=8, duration=8, min_error=10)


def duration_shown(row: Row) -> str:
    """An ended event's duration; a running one's time so far, marked with `…`."""
    so_far = row.running_for(formatting.now())
    return duration(row.duration_ms) if so_far is None else duration(so_far) + "…"


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

        row: Row

    @dataclass
    class FollowChanged(Message):
        """Follow mode went on or off."""

        follow: bool

    @dataclass
    class HeaderClicked(Message):
        """A click on a column's title: sort by it."""

        column: str

    def __init__(self, *, id: str | None = None) -> None:
        super().__init__(id=id)
        self.generation = 0  # of the filter shown
        self.request = 0  # the last window asked for
        self.start = 0  # the window: rows from position `start`
        self.rows: list[Row] = []
        self.total: int | None = None  # None while the filter is being counted
        self.loaded = False  # a window of this filter arrived
        self.cursor = 0  # position of the selection (0 = newest)
        self.selected: Row | None = None
        self.empty_text = ""  # what an empty list says
        self.widths = WIDE
        self.order: Order = DEFAULT  # the sort the header marks
        self._asked: tuple[object, ...] | None = None
        self._waiting = False  # the last window asked for has not come yet

    # -- the data --------------------------------------------------------------------------

    @property
    def count(self) -> int:
        """Rows in the list (those known so far while it is being counted)."""
        if self.total is not None:
            return self.total
        return self.start + len(self.rows) + (1 if self.rows else 0)

    @property
    def selected_id(self) -> str | None:
        """The selected event's id."""
        return self.selected.id if self.selected is not None else None

    def row_at(self, index: int) -> Row | None:
        """The row at position `index` (0 = newest), when it is in the window."""
        offset = index - self.start
        return self.rows[offset] if 0 <= offset < len(self.rows) else None

    def reset(self, generation: int, empty_text: str) -> None:
        """A new filter: nothing known until the reader's first window."""
        self.generation, self.empty_text = generation, empty_text
        self.start, self.rows, self.total, self.loaded = 0, [], None, False
        self.selected, self.cursor = None, 0
        self.follow = True
        self._place(0, scroll=True)
        self.scroll_to(y=0, animate=False, immediate=True)
        self.ask(force=True)

    def took(self, window: WindowRead) -> None:
        """A window from the reader (an answer, or the list moved by live changes). Every
        window of this filter is taken, in order: its rows are the list as it is now."""
        if window.generation != self.generation:
            return
        latest = window.request >= self.request  # else the view moved since it asked
        self.start, self.rows, self.total = window.start, window.rows, window.total
        self.loaded = True
        self._waiting = self._waiting and not latest
        self._resize_virtual()
        if self.follow:
            self._place(0, scroll=True)
        else:
            if window.shift:
                self.scroll_to(y=self.scroll_y + window.shift, animate=False, immediate=True)
            at = window.cursor if latest and window.cursor is not None else None
            at = self.cursor + window.shift if at is None else at
            self._place(min(at, max(0, self.count - 1)), scroll=True)
        self.refresh()

    def ask(self, force: bool = False, bottom: bool = False) -> None:
        """Ask for the window around what is on screen, unless it is held already."""
        height = max(1, self.scrollable_content_region.height - 1)
        top = int(self.scroll_y)
        key: Key | None = self.selected.key if self.selected is not None else None
        wanted = (top, height, key, self.follow, bottom)
        covered = self.start <= top and top + height <= self.start + len(self.rows)
        ends = self.total is not None and self.start + len(self.rows) >= self.total
        if not force and wanted == self._asked and (self._waiting or covered or ends):
            return  # held already, or asked for and on its way
        self._asked, self._waiting = wanted, True
        self.request += 1
        show = Show(
            generation=self.generation,
            request=self.request,
            start=max(0, top - height),
            count=3 * height,
            cursor=key,
            follow=self.follow,
            bottom=bottom,
        )
        self.app.want(show)  # type: ignore[attr-defined]  # straight to the reader: thread-safe

    def _resize_virtual(self) -> None:
        room = self.scrollable_content_region.width
        self.widths = WIDE if room >= WIDE.fixed + WIDE.min_error else NARROW
        width = max(self.widths.fixed + self.widths.min_error, room)
        self.virtual_size = Size(width, self.count + 1)

    def on_mount(self) -> None:
        self.ask(force=True)
        self.set_interval(1.0, self.refresh)  # Running rows show how long they have run

    def on_resize(self) -> None:
        self._resize_virtual()
        self.ask()

    def _place(self, index: int, scroll: bool) -> None:
        self.cursor = max(0, min(index, self.count - 1))
        self.selected = self.row_at(self.cursor)
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
        """Put the cursor on position `index`; leaving the top ends follow mode."""
        self._place(index, scroll=True)
        self.follow = self.cursor == 0 and self.follow
        self.ask()
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
        """The oldest event (once the list is counted)."""
        self.follow = False
        if self.total is not None:
            self.move_to(self.total - 1)
        self.ask(force=True, bottom=self.total is None)

    def action_open(self) -> None:
        """Open the selected event."""
        if self.selected is not None:
            self.post_message(self.Opened(self.selected))

    def watch_follow(self, follow: bool) -> None:
        if follow:
            self._place(0, scroll=True)
            self.scroll_to(y=0, animate=False, immediate=True)
            self.ask()
            self.refresh()
        self.post_message(self.FollowChanged(follow))

    def watch_scroll_y(self, old_value: float, new_value: float) -> None:
        super().watch_scroll_y(old_value, new_value)
        if new_value > 0 and self.follow:
            self.follow = False  # the user scrolled away from the newest, as toolong's tail
        self.ask()

    def on_click(self, event: events.Click) -> None:
        if event.y == 0:
            column = self._column_at(int(self.scroll_x) + event.x)
            if column is not None:
                self.post_message(self.HeaderClicked(column))
            return
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
                    text = self.empty_text if self.loaded else "  reading the journal…"
                    return Strip([Segment(text, self._style("muted"))]).crop_extend(0, width, base)
                return Strip.blank(width, base)
            row = self.row_at(index)
            if row is None:
                self.ask()
                return Strip([Segment("  …", self._style("muted"))]).crop_extend(0, width, base)
            strip = self._line(row)
            if index == self.cursor:
                strip = strip.apply_style(self._style("cursor"))
        return strip.crop_extend(scroll_x, scroll_x + width, base)

    def _style(self, name: str) -> Style:
        return self.get_component_rich_style(f"event-list--{name}")

    def _error_width(self) -> int:
        return max(self.widths.min_error, self.virtual_size.width - self.widths.fixed)

    def _titles(self) -> list[tuple[str, str, int, bool]]:
        """The fixed columns shown: (column, title, width, right-aligned)."""
        w = self.widths
        titles = [
            ("id", "ID", w.id, False),
            ("function", "FUNCTION", w.function, False),
            ("state", "STATE", STATE_WIDTH, False),
            ("attempts", "ATT", w.attempts, True),
            ("enqueued", "ENQUEUED", w.enqueued, False),
            ("duration", "DURATION", w.duration, True),
        ]
        return [t for t in titles if t[2]]

    def _column_at(self, x: int) -> str | None:
        """The column whose title is at `x` (a gap after a title counts as its own)."""
        left = 0
        for column, _title, width, _right in self._titles():
            left += width + len(_GAP)
            if x < left:
                return column
        return "error" if x >= 0 else None

    def _header(self) -> Strip:
        parts = []
        for column, title, width, right in self._titles():
            marked = f"{title} {self.order.arrow}"
            if column != self.order.column:
                parts.append(_cell(title, width, right) + _GAP)
            elif len(marked) <= width:
                parts.append(_cell(marked, width, right) + _GAP)
            else:  # no room beside the title: the mark in the gap
                parts.append(_cell(title, width, right) + self.order.arrow + _GAP[1:])
        error = f"ERROR {self.order.arrow}" if self.order.column == "error" else "ERROR"
        return Strip([Segment(f"{''.join(parts)}{error}", self._style("header"))])

    def _line(self, row: Row) -> Strip:
        muted = self._style("muted")
        error = ""
        if row.error is not None and row.state is not State.SUCCEEDED:
            error = f"{row.error.type}: {row.error.message}"
        w = self.widths
        enqueued = clock(row.enqueued_at) if w.enqueued >= 14 else time_of_day(row.enqueued_at)
        segments = [
            Segment(_cell(row.id, w.id) + _GAP),
            Segment(_cell(row.function, w.function) + _GAP),
            Segment(_cell(row.state.value, STATE_WIDTH), self._style(state_class(row.state))),
            Segment(_GAP),
        ]
        if w.attempts:
            segments.append(Segment(_cell(str(row.attempts), w.attempts, right=True) + _GAP))
        segments += [
            Segment(_cell(enqueued, w.enqueued) + _GAP, muted),
            Segment(_cell(duration_shown(row), w.duration, right=True) + _GAP),
            Segment(_cell(error.replace("\n", " "), self._error_width()), self._style("error")),
        ]
        return Strip(segments)
