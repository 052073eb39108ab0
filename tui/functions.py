"""The functions view: per function, events by state and definition errors; its instances, live."""

from __future__ import annotations

import sqlite3
import time

from textual import work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Vertical
from textual.css.query import NoMatches
from textual.markup import escape
from textual.screen import Screen
from textual.widgets import DataTable, Footer, Static
from textual.worker import get_current_worker

from daemon.eventdb import IndexDB
from daemon.instances import InstanceState
from daemon.model import State
from daemon.placement import short_node
from tui import format as formatting
from tui.format import STATE_COLOUR, STATES, age, by_state, rich_text
from tui.header import StatusLine
from tui.pictures import FunctionPictures
from tui.recent import Recent, read_recent
from tui.tail import DaemonStatus

REFRESH = 0.5
PICTURES_EVERY = 2.0  # seconds between two reads of the selected function's recent events
PICTURES_SHARE = 0.1  # of the time at most spent reading them (a busy function reads more)
_SHORT = {
    "Enqueued": "Enq",
    "Dequeued": "Deq",
    "Running": "Run",
    "Retrying": "Retry",
    "Stopping": "Stopg",
    "Succeeded": "Succ",
    "Failed": "Fail",
    "Expired": "Exp",
    "Invalid": "Inv",
    "Stopped": "Stop",
}
_INSTANCE_COLOUR: dict[str, str] = {  # by InstanceState, as shown
    InstanceState.STARTING: "$accent",
    InstanceState.BUSY: "$warning",
    InstanceState.IDLE: "$success",
    InstanceState.FROZEN: "$secondary",
    InstanceState.STOPPING: "$error",
}


class FunctionsScreen(Screen[None]):
    """Functions with their counts and errors; instances with node, pid, state, age, events
    served."""

    BINDINGS = [
        Binding("escape,1", "app.pop_screen", "Events"),
        Binding("p", "pause", "Pause/resume"),
        Binding("P", "app.pause_all", "Pause/resume all"),
        Binding("j", "cursor(1)", "Down", show=False),
        Binding("k", "cursor(-1)", "Up", show=False),
    ]

    def __init__(self) -> None:
        super().__init__()
        self._shown: dict[str | None, list[tuple[str, ...]]] = {}
        self.pictured: str | None = None  # the function the pictures are of
        self._pictures_due = 0.0  # monotonic time of the next read

    def compose(self) -> ComposeResult:

        yield StatusLine(id="status")
        with Vertical(id="functions-body"):
            yield DataTable(id="functions", cursor_type="row", zebra_stripes=True)
            yield FunctionPictures(id="pictures")
            yield Static(id="definition-errors")
            yield Static(id="instances-title")
            yield DataTable(id="instances", cursor_type="row", zebra_stripes=True)
        yield Footer()

    def on_mount(self) -> None:
        functions = self.query_one("#functions", DataTable)
        functions.add_column("FUNCTION", key="name")
        functions.add_column("RUNTIME")
        functions.add_column("INSTANCES")
        for state in STATES:
            functions.add_column(_SHORT[state.value], key=state.value)
        functions.add_column("DEFINITION")
        instances = self.query_one("#instances", DataTable)
        for title in ("FUNCTION", "INSTANCE", "NODE", "PID", "STATE", "AGE", "SERVED"):
            instances.add_column(title)
        self.refresh_tables()
        self.set_interval(REFRESH, self.refresh_tables)
        self.set_interval(PICTURES_EVERY / 4, self._pictures_tick)

    def refresh_tables(self) -> None:
        """Show the counts and instances as they are now."""
        app = self.app
        counts: dict[tuple[str, State], int] = app.counts  # type: ignore[attr-defined]
        status: DaemonStatus = app.status  # type: ignore[attr-defined]
        self._fill_functions(counts, status)
        self._fill_instances(status)

    def _fill_functions(self, counts: dict[tuple[str, State], int], status: DaemonStatus) -> None:
        grid = self.query_one("#functions", DataTable)
        names = {f.name: f for f in status.functions}
        for name, _state in counts:
            names.setdefault(name, None)  # type: ignore[arg-type]
        rows = []
        for name in sorted(names):
            info = names[name]
            per_state = by_state(counts, name)
            instances = status.instances.get(name, [])
            if info is None:
                runtime, limit, definition = "", "", "[$warning]no definition file[/]"
            elif info.error:
                runtime, limit, definition = "", "", "[$error]error[/]"
            else:
                runtime, limit, definition = info.runtime, f"/{info.max_instances}", "ok"
            error = status.definition_errors.get(name)
            if error and info is not None and not info.error:
                definition = "[$error]error[/]"
            if status.is_paused(name):
                definition += "  [$warning]paused[/]"
            if name in status.held:
                definition += "  [$warning]held[/]"
            cells = [
                f"[$error]{n:,}[/]"
                if n and state.value in ("Failed", "Expired", "Invalid")
                else (f"[{STATE_COLOUR[state]}]{n:,}[/]" if n else "[$text-muted]·[/]")
                for state, n in zip(STATES, per_state, strict=True)
            ]
            rows.append((name, runtime, f"{len(instances)}{limit}", *cells, definition))
        self._replace(grid, rows)
        errors = {f.name: f.error for f in status.functions if f.error}
        errors.update({n: e for n, e in status.definition_errors.items() if n not in errors})
        box = self.query_one("#definition-errors", Static)
        box.display = bool(errors or status.held)
        box.update(
            "\n".join(
                [f"[$error]{escape(n)}: {escape(e)}[/]" for n, e in sorted(errors.items())]
                + [
                    f"[$warning]{escape(n)}: its events wait: {escape(why)}[/]"
                    for n, why in sorted(status.held.items())
                ]
            )
        )

    def _fill_instances(self, status: DaemonStatus) -> None:
        grid = self.query_one("#instances", DataTable)
        now = time.time()
        rows: list[tuple[str, ...]] = []
        engines = {f.name: f.engine for f in status.functions}
        for name, instances in sorted(status.instances.items()):
            for i in instances:
                state = str(i.get("state", "?"))
                colour = _INSTANCE_COLOUR.get(state, "$foreground")
                rows.append(
                    (
                        name,
                        str(i.get("id", "")),
                        _node(i.get("node"), engines.get(name, "local")),
                        str(i.get("pid") or "-"),  # exec: a process only while an event runs
                        f"[{colour}]{state}[/]",
                        age(i.get("started_at"), now),
                        str(i.get("events_served", 0)),
                    )
                )
        title = self.query_one("#instances-title", Static)
        if not status.running:
            title.update("[b]instances[/]  [$warning]none: the daemon is not running[/]")
        else:
            title.update(f"[b]instances[/]  {len(rows)} live")
        self._replace(grid, rows)

    def _replace(self, grid: DataTable, rows: list[tuple[str, ...]]) -> None:
        if self._shown.get(grid.id) == rows:
            return  # unchanged: keep the cursor and the scroll as they are
        self._shown[grid.id] = rows
        cursor = grid.cursor_row
        grid.clear()
        variables = self.app.theme_variables
        for row in rows:
            grid.add_row(*(rich_text(cell, variables) for cell in row))
        if rows:
            grid.move_cursor(row=min(cursor, len(rows) - 1))

    def on_data_table_row_selected(self, event: DataTable.RowSelected) -> None:
        """Enter on a function: its events."""
        if event.data_table.id != "functions":
            return
        name = str(event.data_table.get_row_at(event.cursor_row)[0])
        self.app.show_function(name)  # type: ignore[attr-defined]

    def on_data_table_row_highlighted(self, event: DataTable.RowHighlighted) -> None:
        """The pictures follow the selected function."""
        if event.data_table.id != "functions" or event.cursor_row < 0:
            return
        name = str(event.data_table.get_row_at(event.cursor_row)[0])
        if name != self.pictured:
            self.pictured = name
            self._pictures_due = 0.0
            self._pictures_tick()

    def _pictures_tick(self) -> None:
        if self.pictured is None or time.monotonic() < self._pictures_due:
            return
        self._pictures_due = float("inf")  # one read at a time: the read sets the next
        self._read_pictures(self.pictured)

    @work(thread=True, exclusive=True, group="pictures")
    def _read_pictures(self, function: str) -> None:
        """Read `function`'s recent events from the index, off the UI thread."""
        started = time.monotonic()
        spool = self.app.spool  # type: ignore[attr-defined]
        index = IndexDB.open_readonly(spool.journal)
        recent: Recent | str
        if index is None:
            recent = "no index yet: the pictures wait for the daemon's indexer"
        else:
            try:
                with index.transaction():
                    recent = read_recent(index, function, formatting.now())
            except sqlite3.Error as exc:
                recent = f"cannot read the index: {exc}"
            finally:
                index.close()
        took = time.monotonic() - started
        if not get_current_worker().is_cancelled:
            self.app.call_from_thread(self._show_pictures, function, recent, took)

    def _show_pictures(self, function: str, recent: Recent | str, took: float) -> None:
        self._pictures_due = time.monotonic() + max(PICTURES_EVERY, took / PICTURES_SHARE)
        if function != self.pictured:
            self._pictures_due = 0.0  # another was selected meanwhile
            return
        try:
            pictures = self.query_one(FunctionPictures)
        except NoMatches:  # the read ended while the screen was being taken down
            return
        if isinstance(recent, str):
            pictures.unavailable(function, recent)
        else:
            pictures.show(recent)

    def action_pause(self) -> None:
        """Pause the selected function's dispatch, or resume it when it is paused."""
        grid = self.query_one("#functions", DataTable)
        if grid.row_count == 0:
            self.notify("no function to pause", severity="warning")
            return
        name = str(grid.get_row_at(grid.cursor_row)[0])
        self.app.ask_hold(name)  # type: ignore[attr-defined]

    def action_cursor(self, delta: int) -> None:
        """Move in the focused table."""
        focused = self.focused
        if isinstance(focused, DataTable):
            focused.move_cursor(row=focused.cursor_row + delta)


def _node(node: object, engine: str) -> str:
    """The NODE cell: the short id of the Ray node an instance runs on; `ray` while a node is
    yet to take it; `local` on this machine (both muted)."""
    if isinstance(node, str) and node:
        return escape(short_node(node))
    return f"[$text-muted]{'ray' if engine == 'ray' else 'local'}[/]"
