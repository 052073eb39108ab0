"""`fnspool tui`: the app, its state (table, filter, daemon status), and the actions.

The journal is read by one thread worker (tui/tail.py) that hands over tables and record
batches; everything on screen is derived on the UI thread from those, in time proportional to
what changed. Actions write control requests, as the CLI does, and the daemon's answers arrive
through the same journal tail.
"""

from __future__ import annotations

from array import array
from bisect import bisect_left
from collections.abc import Iterable
from pathlib import Path
from typing import ClassVar

from msgspec.structs import replace
from textual import work
from textual.app import App, SystemCommand
from textual.binding import Binding
from textual.markup import escape
from textual.reactive import reactive
from textual.screen import Screen
from textual.worker import get_current_worker

from daemon.ids import BadId
from daemon.index import STATE_CODE, EventTable, Query, load_event, select
from daemon.logfiles import event_log_path
from daemon.model import TERMINAL_STATES, Event, Request, State, Transition
from daemon.refusals import reinvoke_refusal, stop_refusal
from daemon.spool import Spool
from tui.actions import Notice, Requests
from tui.detail import DetailScreen, LogScreen
from tui.event_list import EventList
from tui.events import EventsScreen
from tui.format import counts_markup
from tui.functions import FunctionsScreen
from tui.modals import (
    Confirm,
    ConfirmStop,
    HelpScreen,
    PickFunction,
    PickStates,
    PickTimeRange,
    StopChoice,
    TimeRange,
)
from tui.tail import DaemonStatus, JournalTail, RecordsArrived, StatusChanged, TableLoaded

_TERMINAL_CODES = frozenset(STATE_CODE[s] for s in TERMINAL_STATES)


class FnspoolApp(App[None]):
    """The fnspool dashboard."""

    TITLE = "fnspool"
    CSS_PATH = "app.tcss"
    BINDINGS: ClassVar = [
        Binding("q", "quit", "Quit"),
        Binding("question_mark", "help", "Help"),
    ]

    status_markup: reactive[str] = reactive("reading the spool…")
    counts_markup: reactive[str] = reactive("")
    filter_markup: reactive[str] = reactive("")

    def __init__(self, spool: Spool) -> None:
        super().__init__()
        self.spool = spool
        self.table = EventTable()
        self.table.complete = False
        self.query_ = Query()
        self.time_range = TimeRange(since=None, until=None)
        self.rows: array[int] | None = None
        self.status = DaemonStatus()
        self.requests = Requests(spool)
        self.follow = True
        self.loads = 0  # tables received: a preview, then the full one, then reloads

    @property
    def query_text(self) -> str:
        """The free-text filter as typed."""
        return self.query_.text

    def get_default_screen(self) -> Screen:
        return EventsScreen()

    def on_mount(self) -> None:
        self.tail()

    @work(thread=True, exclusive=True, group="tail", exit_on_error=True)
    def tail(self) -> None:
        """Follow the journal and the daemon's status, off the UI thread."""
        worker = get_current_worker()
        JournalTail(self.spool, self.post_message, lambda: worker.is_cancelled).run()

    # -- data from the tail ----------------------------------------------------------------

    def on_table_loaded(self, message: TableLoaded) -> None:
        if self.table.complete and not message.table.complete:
            return  # a late preview never replaces the whole table
        self.loads += 1
        self.table = message.table
        self.refilter()
        if message.shown is not None:
            self.call_after_refresh(message.shown.set)
        for damage in message.damages[:5]:
            self.notify(
                f"{damage.path} at {damage.offset}: {damage.reason}",
                title="journal damage",
                severity="warning",
            )

    def on_records_arrived(self, message: RecordsArrived) -> None:
        changed: set[int] = set()
        transitions = []
        for rec in message.records:
            if isinstance(rec, Transition):
                transitions.append(rec)
                row = self.table.apply(rec)
                if row is not None:
                    changed.add(row)
            elif isinstance(rec, Request):
                self._answered(rec)
        if changed and self.rows is not None:
            self._update_rows(sorted(changed))
        self._show()
        for screen in self.screen_stack:
            if isinstance(screen, DetailScreen):
                screen.records(transitions)

    def _update_rows(self, rows: Iterable[int]) -> None:
        """Keep the filtered index right for rows that changed (insert or remove by bisection)."""
        assert self.rows is not None
        for row in rows:
            pos = bisect_left(self.rows, row)
            present = pos < len(self.rows) and self.rows[pos] == row
            if self.query_.matches(self.table, row):
                if not present:
                    self.rows.insert(pos, row)
            elif present:
                del self.rows[pos]

    def on_status_changed(self, message: StatusChanged) -> None:
        self.status = message.status
        self._show_status()

    def on_event_list_follow_changed(self, message: EventList.FollowChanged) -> None:
        self.follow = message.follow
        self._show_filter()

    def on_event_list_opened(self, message: EventList.Opened) -> None:
        row = self.table.row_of.get(message.event_id)
        if row is None:
            return
        screen = DetailScreen(
            message.event_id, self.table.function(row), self.spool.logs, self.spool.journal
        )
        self.push_screen(screen)

    # -- what is shown ---------------------------------------------------------------------

    def refilter(self) -> None:
        """Select the rows passing the filter again (a few C-speed passes over the columns)."""
        self.rows = select(self.table, self.query_)
        self._show()

    def _show(self) -> None:
        for events in self._event_lists():
            events.show(self.table, self.rows)
        self.counts_markup = counts_markup(self.table.counts)
        self._show_filter()

    def on_event_list_ready(self) -> None:
        self._show()

    def _event_lists(self) -> list[EventList]:
        screens = [s for s in self.screen_stack if isinstance(s, EventsScreen)]
        return [e for s in screens for e in s.query(EventList)]

    def _show_filter(self) -> None:
        q, total = self.query_, len(self.table)
        shown = total if self.rows is None else len(self.rows)
        parts = [f"[b]{shown:,}[/] of {total:,} events"]
        if not self.table.complete:
            parts.append("[$warning]reading the journal… (newest shown)[/]")
        if q.text:
            parts.append(f"text [b]{escape(q.text)}[/]")
        if q.states:
            parts.append("states " + ",".join(s.value for s in State if s in q.states))
        if q.function is not None:
            parts.append(f"function [b]{escape(q.function)}[/]")
        if self.time_range.text:
            parts.append(f"enqueued {escape(self.time_range.text)}")
        parts.append("[$accent]FOLLOW[/]" if self.follow else "[$text-muted]follow off (f)[/]")
        self.filter_markup = "  ·  ".join(parts)

    def _show_status(self) -> None:
        s = self.status
        where = f"[$text-muted]spool {escape(_shown_path(self.spool.root))}[/]"
        if not s.running:
            state = "[$error]● daemon down[/]: read-only; stop and re-invoke wait in control/"
        elif not s.ready:
            state = f"[$warning]● daemon starting[/] (pid {s.pid})"
        else:
            state = (
                f"[$success]● daemon running[/] (pid {s.pid})  queue {s.queue_depth or 0}"
                f"  running {s.running_events or 0}"
            )
        errors = len([f for f in s.functions if f.error])
        extra = f"  [$error]{errors} bad definition(s): see 2[/]" if errors else ""
        self.status_markup = f"[b]fnspool[/]  {state}{extra}  {where}"

    # -- filters ---------------------------------------------------------------------------

    def apply_text(self, text: str) -> None:
        """Filter on free text (called by the filter input)."""
        self.query_ = replace(self.query_, text=text.strip())
        self.refilter()
        for screen in self.screen_stack:
            if isinstance(screen, EventsScreen):
                screen.close_filter()

    def action_pick_states(self) -> None:
        """Choose the states to show."""

        def chosen(states: frozenset[State] | None) -> None:
            if states is not None:
                self.query_ = replace(self.query_, states=states)
                self.refilter()

        self.push_screen(PickStates(self.query_.states, self.table.counts), chosen)

    def action_pick_function(self) -> None:
        """Choose the function to show."""

        def chosen(function: str | None) -> None:
            if function is not None:
                self.query_ = replace(self.query_, function=function or None)
                self.refilter()

        names = sorted({f.name for f in self.status.functions} | set(self.table.functions))
        counts = [(n, sum(self.table.function_counts(n))) for n in names]
        self.push_screen(PickFunction(counts, self.query_.function), chosen)

    def action_pick_time(self) -> None:
        """Choose the time range."""

        def chosen(answer: TimeRange | None) -> None:
            if answer is not None:
                self.query_ = replace(self.query_, since=answer.since, until=answer.until)
                self.time_range = answer
                self.refilter()

        current = self.time_range
        self.push_screen(PickTimeRange(current.since_text, current.until_text), chosen)

    def show_function(self, name: str) -> None:
        """The events of one function (enter in the functions view)."""
        self.query_ = replace(self.query_, function=name)
        self.refilter()
        while not isinstance(self.screen, EventsScreen):
            self.pop_screen()

    def action_clear_filters(self) -> None:
        """Show every event again."""
        if self.query_.empty:
            return
        self.query_ = Query()
        self.time_range = TimeRange(since=None, until=None)
        self.refilter()
        self.notify("filters cleared", timeout=2)

    # -- actions ---------------------------------------------------------------------------

    def current_event(self) -> str | None:
        """The event the keys act on: the detail's, else the list's selection."""
        if isinstance(self.screen, DetailScreen):
            return self.screen.event_id
        lists = self.screen.query(EventList)
        return lists.first().selected_id if lists else None

    def _state(self, event_id: str) -> State | None:
        row = self.table.row_of.get(event_id)
        return None if row is None else self.table.state_of(row)

    def _written(self, what: str) -> None:
        if self.status.running:
            self.notify(f"{what}: request sent, waiting for the daemon", timeout=3)
        else:
            self.notify(
                f"{what}: daemon down: request queued in control/, applied when it starts",
                severity="warning",
            )

    def action_stop(self) -> None:
        """Stop the current event (after a confirmation: forced or graceful)."""
        event_id = self.current_event()
        if event_id is None:
            return
        state = self._state(event_id)
        if refusal := stop_refusal(event_id, state):
            self.notify(refusal, title="cannot stop", severity="error")
            return
        assert state is not None

        def confirmed(choice: StopChoice | None) -> None:
            if choice is None:
                return
            try:
                early = self.requests.stop(event_id, choice.graceful)
            except OSError as exc:
                self.notify(f"cannot write the request: {exc}", severity="error")
                return
            self._written(f"{'graceful stop' if choice.graceful else 'stop'} of {event_id}")
            self._tell(early)

        self.push_screen(ConfirmStop(event_id, state), confirmed)

    def action_reinvoke(self) -> None:
        """Run the current event again as a new event (after a confirmation)."""
        event_id = self.current_event()
        if event_id is None:
            return
        if refusal := reinvoke_refusal(event_id, self._state(event_id)):
            self.notify(refusal, title="cannot re-invoke", severity="error")
            return

        def confirmed(yes: bool | None) -> None:
            if not yes:
                return
            try:
                early = self.requests.reinvoke(event_id)
            except OSError as exc:
                self.notify(f"cannot write the request: {exc}", severity="error")
                return
            self._written(f"re-invoke of {event_id}")
            self._tell(early)

        body = "A new event runs with the same function and payload (retry_of links them)."
        self.push_screen(Confirm(f"Re-invoke {event_id}?", body, "re-invoke"), confirmed)

    def action_reinvoke_all(self) -> None:
        """Re-invoke every ended event the filter shows (after a confirmation)."""
        table = self.table
        rows = range(len(table)) if self.rows is None else self.rows
        ids = [table.ids[r] for r in rows if table.state[r] in _TERMINAL_CODES]
        if not ids:
            self.notify(
                "the filter shows no ended event", title="cannot re-invoke", severity="error"
            )
            return
        shown = len(rows)

        def confirmed(yes: bool | None) -> None:
            if yes:
                self._reinvoke_many(ids)

        body = f"{len(ids):,} ended events of the {shown:,} shown run again as new events."
        self.push_screen(Confirm(f"Re-invoke {len(ids):,} events?", body, "re-invoke"), confirmed)

    @work(thread=True, exclusive=True, group="bulk")
    def _reinvoke_many(self, ids: list[str]) -> None:
        """Write one request per event, off the UI thread (each is fsynced)."""
        worker = get_current_worker()
        group = self.requests.open_group(f"re-invoke of {len(ids):,} events", len(ids))
        written = 0
        try:
            for event_id in ids:
                if worker.is_cancelled:
                    break
                notice = self.requests.reinvoke(event_id, group=group)
                written += 1
                if notice is not None:  # the daemon answered the last one before we noted it
                    self.call_from_thread(self._tell, notice)
        except OSError as exc:
            self.call_from_thread(self.notify, f"cannot write a request: {exc}", severity="error")
        finally:
            notice = self.requests.close_group(group, written)
            self.call_from_thread(self._written, f"re-invoke of {written:,} events")
            if notice is not None:
                self.call_from_thread(self._tell, notice)

    def _answered(self, record: Request) -> None:
        self._tell(self.requests.answered(record))

    def _tell(self, notice: Notice | None) -> None:
        if notice is None:
            return
        if notice.error:
            self.notify(notice.message, title=notice.title, severity="error")
        else:
            self.notify(notice.message, title=notice.title)

    def action_copy(self) -> None:
        """Copy the current event's payload to the clipboard (OSC 52)."""
        event_id = self.current_event()
        if event_id is None:
            return
        screen = self.screen
        if isinstance(screen, DetailScreen) and screen.event is not None:
            self._copy(screen.event.id, bytes(screen.event.payload))
        else:
            self._load_and_copy(event_id)

    @work(thread=True, group="copy")
    def _load_and_copy(self, event_id: str) -> None:
        event = load_event(self.spool.journal, event_id)
        if event is None:
            self.call_from_thread(self.notify, f"no event {event_id}", severity="error")
        else:
            self.call_from_thread(self._copy, event.id, bytes(event.payload))

    def _copy(self, event_id: str, payload: bytes) -> None:
        self.copy_to_clipboard(payload.decode())
        self.notify(f"payload of {event_id} copied ({len(payload):,} bytes)", timeout=3)

    def action_open_log(self) -> None:
        """Open the current event's whole log, followed while it runs."""
        event_id = self.current_event()
        row = self.table.row_of.get(event_id) if event_id else None
        if event_id is None or row is None:
            return
        try:
            path = event_log_path(self.spool.logs, self.table.function(row), event_id)
        except BadId as exc:
            self.notify(escape(f"no log: {exc}"), severity="error")
            return

        def live() -> bool:
            current = self.table.row_of.get(event_id)
            return current is not None and self.table.state[current] not in _TERMINAL_CODES

        def event() -> Event | None:  # in the log's worker, each time before its file
            screen = self.screen_stack[-2] if len(self.screen_stack) > 1 else None
            if isinstance(screen, DetailScreen) and screen.event_id == event_id:
                return screen.event
            return load_event(self.spool.journal, event_id)

        self.push_screen(LogScreen(path, live, event))

    def action_functions(self) -> None:
        """The functions and their instances."""
        if not isinstance(self.screen, FunctionsScreen):
            self.push_screen(FunctionsScreen())

    def action_help(self) -> None:
        """The keys."""
        if not isinstance(self.screen, HelpScreen):
            self.push_screen(HelpScreen())

    def get_system_commands(self, screen: Screen) -> Iterable[SystemCommand]:
        yield from super().get_system_commands(screen)
        commands = [
            ("Filter by state", "Choose the states to show", self.action_pick_states),
            ("Filter by function", "Choose the function to show", self.action_pick_function),
            ("Filter by time", "Enqueued between two times", self.action_pick_time),
            ("Clear filters", "Show every event", self.action_clear_filters),
            ("Stop event", "Stop the selected event (forced or graceful)", self.action_stop),
            ("Re-invoke event", "Run the selected ended event again", self.action_reinvoke),
            (
                "Re-invoke shown",
                "Re-invoke every ended event the filter shows",
                self.action_reinvoke_all,
            ),
            ("Copy payload", "Copy the selected event's payload (OSC 52)", self.action_copy),
            ("Open log", "The selected event's whole log", self.action_open_log),
            ("Functions", "Functions, their counts and instances", self.action_functions),
            ("Help", "The keys", self.action_help),
        ]
        for title, help_text, callback in commands:
            yield SystemCommand(title, help_text, callback)


def _shown_path(path: Path) -> str:
    """A path relative to the working directory when it lies under it (shorter to read)."""
    try:
        return str(path.relative_to(Path.cwd()))
    except ValueError:
        return str(path)


def run(spool: Spool) -> None:
    """Run the dashboard in this terminal until `q`."""
    FnspoolApp(spool).run()
