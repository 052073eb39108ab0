"""`fnspool tui`: the app, its state (filter, counts, daemon status), and the actions.

The events are read by one thread (tui/reader.py) that owns the index connection and the journal
tail; the app tells it the filter and what the list shows, and it answers with windows of rows and
the counts, live. Nothing here grows with the events retained. Actions write control requests, as
the CLI does, and the daemon's answers arrive through the same journal tail.
"""

from __future__ import annotations

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

from daemon.errors import Refused
from daemon.files.logfiles import event_log_path
from daemon.ids import BadId
from daemon.model import Event, Request, State
from daemon.query import Filter, zone
from daemon.reads import EventReads
from daemon.refusals import reinvoke_refusal, stop_in_progress, stop_refusal
from daemon.spool import Spool
from tui.actions import Notice, Requests
from tui.detail import DetailScreen, LogScreen
from tui.event_list import EventList
from tui.events import EventsScreen
from tui.format import STATES, by_state, counts_markup
from tui.functions import FunctionsScreen
from tui.listing import ended_ids
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
from tui.pausing import hold_of
from tui.ranked import RANKED, sortable, too_many_text
from tui.reader import Changed, Reader, SetFilter, Show, SortRefused, WindowRead
from tui.rejected import RejectedScreen
from tui.sorting import DEFAULT, SORTABLE, Order
from tui.tail import DaemonStatus, StatusChanged

NO_FILTER_TEXT = (
    "  no events yet: drop a JSON file into incoming/NAME/, or run"
    " `fnspool invoke NAME --payload '{...}'`"
)
FILTERED_TEXT = "  no event matches the filter (esc clears it)"


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
        self.flt = Filter()
        self.order = DEFAULT
        self.served = DEFAULT  # the last order the index serves (tui/sorting.py), to fall back on
        self.refused: tuple[Filter, int] | None = None  # a filter too big to sort, its total
        self.generation = 0
        self.time_range = TimeRange(since=None, until=None)
        self.counts: dict[tuple[str, State], int] = {}
        self.total: int | None = None
        self.scanned: tuple[int, int] | None = None  # a count's progress (rows looked through)
        self.source = ""  # where the events come from: index | replay ("" until read)
        self.status = DaemonStatus()
        self.requests = Requests(spool)
        self.follow = True
        self.watched: dict[str, State] = {}  # events whose log is open: their state, live
        self.reader = Reader(spool, self.post_message, lambda: False)
        self._damage_told: set[tuple[str, int, str]] = set()

    @property
    def query_text(self) -> str:
        """The free-text filter as typed."""
        return self.flt.text or ""

    @property
    def filtered(self) -> bool:
        """Whether a filter is set."""
        return self.flt != Filter()

    def get_default_screen(self) -> Screen:
        return EventsScreen()

    def on_mount(self) -> None:
        self.read()

    @work(thread=True, exclusive=True, group="reader", exit_on_error=True)
    def read(self) -> None:
        """Read the events and follow the journal, off the UI thread."""
        worker = get_current_worker()
        self.reader.cancelled = lambda: worker.is_cancelled
        self.reader.run()

    # -- data from the reader --------------------------------------------------------------

    def on_changed(self, message: Changed) -> None:
        self.counts, self.total, self.source = message.counts, message.total, message.source
        self.scanned = message.scanned
        for request in message.requests:
            self._answered(request)
        for rec in message.transitions:
            if rec.id in self.watched:
                self.watched[rec.id] = rec.state
        for screen in self.screen_stack:
            if isinstance(screen, DetailScreen):
                screen.records(message.transitions)
        self._tell_damage((d.path, d.offset, d.reason) for d in message.damages)
        self._show()

    def _tell_damage(self, damages: Iterable[tuple[str, int, str]]) -> None:
        for path, offset, reason in damages:
            if (path, offset, reason) in self._damage_told or len(self._damage_told) > 100:
                continue
            self._damage_told.add((path, offset, reason))
            self.notify(f"{path} at {offset}: {reason}", title="journal damage", severity="warning")

    def on_window_read(self, message: WindowRead) -> None:
        for events in self._event_lists():
            events.took(message)
        self.total = message.total
        self._show_filter()

    def want(self, show: Show) -> None:
        """Ask the reader for a window of the list (from the UI thread; the queue is safe)."""
        self.reader.requests.put(show)

    def on_status_changed(self, message: StatusChanged) -> None:
        self.status = message.status
        self._show_status()
        self._tell_damage(
            (str(d.get("path")), int(d.get("offset", 0)), str(d.get("reason")))
            for d in message.status.journal_damage
        )

    def on_event_list_follow_changed(self, message: EventList.FollowChanged) -> None:
        self.follow = message.follow
        self._show_filter()

    def on_event_list_opened(self, message: EventList.Opened) -> None:
        row = message.row
        self.push_screen(DetailScreen(row.id, row.function, self.spool.logs, self.spool.journal))

    # -- what is shown ---------------------------------------------------------------------

    def refilter(self) -> None:
        """Show the events passing the filter, from the newest (the reader reads them)."""
        self.generation += 1
        self.total, self.scanned = None, None
        self.reader.requests.put(SetFilter(self.flt, self.generation, self.order))
        empty = FILTERED_TEXT if self.filtered else NO_FILTER_TEXT
        for events in self._event_lists():
            events.order = self.order
            events.reset(self.generation, empty)
        self._show()

    def _show(self) -> None:
        self.counts_markup = counts_markup(by_state(self.counts))
        self._show_filter()
        self._show_status()

    def _event_lists(self) -> list[EventList]:
        screens = [s for s in self.screen_stack if isinstance(s, EventsScreen)]
        return [e for s in screens for e in s.query(EventList)]

    def _show_filter(self) -> None:
        f = self.flt
        every = sum(self.counts.values())
        shown = "[b]counting…[/]" if self.total is None else f"[b]{self.total:,}[/]"
        if self.total is None and self.scanned is not None:
            done, of = self.scanned
            shown = f"[b]searching… {done:,} of {of:,} scanned[/]"
        parts = [f"{shown} of {every:,} events"]
        if self.source == "replay":
            parts.append("[$warning]no index yet: the whole journal was read[/]")
        if f.text:
            parts.append(f"text [b]{escape(f.text)}[/]")
        if f.states:
            parts.append("states " + ",".join(s.value for s in State if s in f.states))
        if f.function is not None:
            parts.append(f"function [b]{escape(f.function)}[/]")
        if self.time_range.text:
            parts.append(f"enqueued {escape(self.time_range.text)}")
        if self.order != DEFAULT:
            parts.append(f"[b]{self.order.text}[/]")
        parts.append("[$accent]FOLLOW[/]" if self.follow else "[$text-muted]follow off (f)[/]")
        self.filter_markup = "  ·  ".join(parts)

    def _show_status(self) -> None:
        s = self.status
        spool = escape(_shown_path(self.spool.root))
        where = f"[$text-muted]spool {spool}  times {zone()}[/]"
        if not s.running:
            state = "[$error]● daemon down[/]: read-only; requests wait in control/"
        elif s.stopping:
            state = f"[$warning]● daemon stopping[/] (pid {s.pid}): draining"
        elif not s.ready:
            state = f"[$warning]● daemon starting[/] (pid {s.pid})"
        else:
            state = (
                f"[$success]● daemon running[/] (pid {s.pid})  {self._in_care()}{_paused_markup(s)}"
            )
        errors = len([f for f in s.functions if f.error])
        extra = f"  [$error]{errors} bad definition(s): see 2[/]" if errors else ""
        self.status_markup = f"[b]fnspool[/]  {state}{extra}  {where}"

    def _in_care(self) -> str:
        """Queued and running from the journal's counts, the ones the counts line shows: the
        heartbeat's figures lag it by a beat, and its `running` counts the daemon's tasks."""
        per_state = dict(zip(STATES, by_state(self.counts), strict=True))
        queued = per_state[State.ENQUEUED] + per_state[State.DEQUEUED]
        return f"queued {queued:,}  running {per_state[State.RUNNING]:,}"

    # -- filters ---------------------------------------------------------------------------

    def filter_text(self, text: str) -> None:
        """Filter on free text as it is typed (the input stays open)."""
        wanted = text.strip() or None
        if wanted != self.flt.text:
            self.flt = replace(self.flt, text=wanted)
            self.refilter()

    def apply_text(self, text: str) -> None:
        """Filter on free text and close the input (enter, esc)."""
        self.filter_text(text)
        for screen in self.screen_stack:
            if isinstance(screen, EventsScreen):
                screen.close_filter()

    def action_pick_states(self) -> None:
        """Choose the states to show."""

        def chosen(states: frozenset[State] | None) -> None:
            if states is not None:
                self.flt = replace(self.flt, states=set(states) or None)
                self.refilter()

        chosen_now = frozenset(self.flt.states or ())
        self.push_screen(PickStates(chosen_now, by_state(self.counts)), chosen)

    def action_pick_function(self) -> None:
        """Choose the function to show."""

        def chosen(function: str | None) -> None:
            if function is not None:
                self.flt = replace(self.flt, function=function or None)
                self.refilter()

        names = sorted({f.name for f in self.status.functions} | {f for f, _ in self.counts})
        counts = [(n, sum(by_state(self.counts, n))) for n in names]
        self.push_screen(PickFunction(counts, self.flt.function), chosen)

    def action_pick_time(self) -> None:
        """Choose the time range."""

        def chosen(answer: TimeRange | None) -> None:
            if answer is not None:
                self.flt = replace(self.flt, since=answer.since, until=answer.until)
                self.time_range = answer
                self.refilter()

        current = self.time_range
        self.push_screen(PickTimeRange(current.since_text, current.until_text), chosen)

    def show_function(self, name: str) -> None:
        """The events of one function (enter in the functions view)."""
        self.flt = replace(self.flt, function=name)
        self.refilter()
        while not isinstance(self.screen, EventsScreen):
            self.pop_screen()

    def on_event_list_header_clicked(self, message: EventList.HeaderClicked) -> None:
        self.sort_by(message.column)

    def sort_by(self, column: str) -> None:
        """Sort by `column` (again: the other way)."""
        same = self.order.column == column
        self.set_order(self.order.flipped() if same else Order(column, SORTABLE[column]))

    def action_sort_next(self, step: int) -> None:
        """Sort by the next column (or the previous one), past those the filter matches too
        many events to sort by."""
        order = self.order.moved(step)
        while order.column in RANKED and self._too_many() is not None:
            order = order.moved(step)
        self.set_order(order)

    def action_sort_flip(self) -> None:
        """Sort the other way."""
        self.set_order(self.order.flipped())

    def set_order(self, order: Order) -> None:
        """Show the list in `order`, from its top (unless the filter matches too many events to
        sort by its column: then the list stays as it is, and says so)."""
        total = self._too_many()
        if order.column in RANKED and total is not None:
            self._refuse(order, total)
            return
        if order.column not in RANKED:
            self.served = order
        self.order = order
        self.refilter()

    def _too_many(self) -> int | None:
        """The events the filter matches when known to be more than can be sorted in memory."""
        if self.total is not None:
            return None if sortable(self.total) else self.total
        if self.refused is not None and self.refused[0] == self.flt:
            return self.refused[1]
        return None

    def _refuse(self, order: Order, total: int) -> None:
        self.notify(
            too_many_text(order.column, total), title="too many events to sort", severity="warning"
        )

    def on_sort_refused(self, message: SortRefused) -> None:
        """The reader counted more events than can be sorted: back to the order served before."""
        if message.generation != self.generation:
            return
        self.refused = (self.flt, message.total)
        self._refuse(message.order, message.total)
        self.order = self.served
        self.refilter()

    def action_clear_filters(self) -> None:
        """Show every event again."""
        if not self.filtered:
            return
        self.flt = Filter()
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
        screen = self.screen
        if isinstance(screen, DetailScreen) and screen.event is not None:
            return screen.event.state
        lists = screen.query(EventList)
        selected = lists.first().selected if lists else None
        return selected.state if selected is not None and selected.id == event_id else None

    def _stop_in_progress(self) -> str | None:
        screen = self.screen
        if isinstance(screen, DetailScreen) and screen.event is not None:
            return stop_in_progress(screen.event)
        return None

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
        how = self._stop_in_progress()
        # the list cannot tell how a Stopping event is being stopped: it offers to force it
        # and the daemon refuses if that stop is forced already
        if refusal := stop_refusal(event_id, state, stopping=how):
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
            what = "graceful stop" if choice.graceful else "stop"
            self._written(f"{'forced stop' if state is State.STOPPING else what} of {event_id}")
            self._tell(early)

        self.push_screen(ConfirmStop(event_id, state), confirmed)

    def ask_hold(self, function: str | None) -> None:
        """Pause dispatch of one function (None: all), or resume it, after a confirmation."""
        waiting = (State.ENQUEUED, State.DEQUEUED)
        queued = sum(
            n for (f, s), n in self.counts.items() if s in waiting and function in (None, f)
        )
        try:
            hold = hold_of(self.status, function, queued)
        except Refused as exc:
            self.notify(escape(str(exc)), title="cannot pause or resume", severity="error")
            return

        def confirmed(yes: bool | None) -> None:
            if not yes:
                return
            try:
                early = self.requests.hold(function, hold.pause)
            except OSError as exc:
                self.notify(f"cannot write the request: {exc}", severity="error")
                return
            self._written(f"{hold.verb} of {function or 'all functions'}")
            self._tell(early)

        self.push_screen(Confirm(hold.title, hold.body, hold.verb), confirmed)

    def action_pause_all(self) -> None:
        """Pause every function's dispatch, or resume it when all are paused."""
        self.ask_hold(None)

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
        self._collect_ended(self.flt, self.total)

    @work(thread=True, exclusive=True, group="collect")
    def _collect_ended(self, flt: Filter, shown: int | None) -> None:
        """Read the ids of the ended events passing the filter, off the UI thread."""
        ids = list(ended_ids(self.spool.journal, flt))
        self.call_from_thread(self._confirm_many, ids, shown)

    def _confirm_many(self, ids: list[str], shown: int | None) -> None:
        if not ids:
            self.notify(
                "the filter shows no ended event", title="cannot re-invoke", severity="error"
            )
            return

        def confirmed(yes: bool | None) -> None:
            if yes:
                self._reinvoke_many(ids)

        of = f" of the {shown:,} shown" if shown is not None else ""
        body = f"{len(ids):,} ended events{of} run again as new events."
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
        event = EventReads(self.spool.journal).get(event_id)
        if event is None:
            self.call_from_thread(self.notify, f"no event {event_id}", severity="error")
        else:
            self.call_from_thread(self._copy, event.id, bytes(event.payload))

    def _copy(self, event_id: str, payload: bytes) -> None:
        self.copy_to_clipboard(payload.decode())
        self.notify(f"payload of {event_id} copied ({len(payload):,} bytes)", timeout=3)

    def action_open_log(self) -> None:
        """Open the current event's whole log, followed while it runs."""
        screen = self.screen
        if isinstance(screen, DetailScreen) and screen.event is not None:
            event_id, function, state = screen.event_id, screen.event.function, screen.event.state
        else:
            lists = screen.query(EventList)
            row = lists.first().selected if lists else None
            if row is None:
                return
            event_id, function, state = row.id, row.function, row.state
        try:
            path = event_log_path(self.spool.logs, function, event_id)
        except BadId as exc:
            self.notify(escape(f"no log: {exc}"), severity="error")
            return
        self.watched[event_id] = state

        def event() -> Event | None:  # in the log's worker, each time before its file
            screen = self.screen_stack[-2] if len(self.screen_stack) > 1 else None
            if isinstance(screen, DetailScreen) and screen.event_id == event_id:
                return screen.event
            return EventReads(self.spool.journal).get(event_id)

        self.push_screen(LogScreen(path, lambda: not self.watched[event_id].terminal, event))

    def action_functions(self) -> None:
        """The functions and their instances."""
        if not isinstance(self.screen, FunctionsScreen):
            self.push_screen(FunctionsScreen())

    def action_rejected(self) -> None:
        """The files set aside in rejected/, with their reasons."""
        if not isinstance(self.screen, RejectedScreen):
            self.push_screen(RejectedScreen(self.spool))

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
            (
                "Pause or resume all",
                "Hold or release every function's dispatch",
                self.action_pause_all,
            ),
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


def _paused_markup(s: DaemonStatus) -> str:
    """What the header says of dispatch held (fnspool pause), nothing when none is."""
    if s.paused_all:
        return "  [$warning]paused[/]"
    if s.paused:
        return f"  [$warning]paused: {escape(', '.join(s.paused))}[/]"
    return ""
