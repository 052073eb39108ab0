"""One event in full: the transition timeline, attempts, payload, result or error, and its log.

The event is read in a worker (`EventReads.get`: the index and the journal after it), then kept
current with the records the reader hands the app; the log is followed in a worker while the event
runs.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import msgspec
from rich.syntax import Syntax
from textual import work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import VerticalScroll
from textual.markup import escape
from textual.message import Message
from textual.screen import Screen
from textual.widgets import Footer, Input, Log, Static
from textual.worker import get_current_worker

from daemon.files.eventlog import LogReader
from daemon.files.logfiles import event_log_path
from daemon.ids import BadId
from daemon.model import (
    Event,
    HistoryEntry,
    IllegalTransition,
    State,
    Transition,
    apply,
    has_raw,
)
from daemon.reads import EventReads
from tui import format as formatting
from tui.format import duration, stamp, state_markup

LOG_POLL = 0.2
LOG_TAIL_BYTES = 256 * 1024  # the detail shows the end of a long log; `o` opens all of it


def json_view(raw: msgspec.Raw) -> Syntax:
    """JSON, indented and highlighted in the terminal's own colours."""
    text = msgspec.json.format(bytes(raw), indent=2).decode() if has_raw(raw) else "null"
    return Syntax(text, "json", theme="ansi_dark", background_color="default", word_wrap=True)


def _usage(h: HistoryEntry) -> str:
    if h.usage is None:
        return ""
    u = h.usage
    parts = [f"wall {duration(u.duration_ms)}"]
    if u.cpu_ms is not None:
        parts.append(f"cpu {duration(u.cpu_ms)}")
    if u.max_memory_mb is not None:
        parts.append(f"peak {u.max_memory_mb:.1f} MB")
    if u.exit_code is not None:
        parts.append(f"exit {u.exit_code}")
    if u.signal is not None:
        parts.append(f"signal {u.signal}")
    return ", ".join(parts)


def timeline_markup(event: Event) -> str:
    """The history, one line per transition: time, state, attempt, instance, reason, error."""
    lines = []
    for h in event.history:
        line = f"{stamp(h.at)}  {state_markup(h.state, f'{h.state.value:<10}')}"
        line += f"  attempt {h.attempt}" if h.attempt else " " * 11
        for extra in (h.instance, h.reason):
            if extra:
                line += f"  [$text-muted]{escape(extra)}[/]"
        lines.append(line)
        if h.error is not None:
            lines.append(f"    [$error]{escape(h.error.type)}: {escape(h.error.message)}[/]")
        if h.usage is not None:
            lines.append(f"    [$text-muted]{_usage(h)}[/]")
    return "\n".join(lines)


def attempts_markup(event: Event) -> str:
    """One line per attempt: when it started, how it ended, what it cost."""
    starts = {h.attempt: h for h in event.history if h.state is State.RUNNING and h.attempt}
    ends = {h.attempt: h for h in event.history if h.usage is not None or h.error is not None}
    lines = []
    for n, start in sorted(starts.items()):
        end = ends.get(n)
        line = f"#{n}  {stamp(start.at)}"
        if start.instance:
            line += f"  on {escape(start.instance)}"
        if end is not None:
            line += f"  → {state_markup(end.state)}"
            if end.usage is not None:
                line += f"  [$text-muted]{_usage(end)}[/]"
            if end.error is not None:
                line += f"\n    [$error]{escape(end.error.type)}: {escape(end.error.message)}[/]"
        else:
            line += "  [$accent]running[/]"
        lines.append(line)
    return "\n".join(lines) or "[$text-muted]no attempt yet[/]"


def _duration_so_far(event: Event) -> str:
    if event.ended or event.started_at is None:
        return duration(event.duration_ms)
    return f"{duration((formatting.now() - event.started_at) * 1000)} so far"


def summary_markup(event: Event) -> str:
    """Who, what, when: the head of the detail view."""
    rows = [
        f"[b]{escape(event.id)}[/]  {escape(event.function)}  {state_markup(event.state)}",
        f"enqueued {stamp(event.enqueued_at)}   started {stamp(event.started_at)}"
        f"   ended {stamp(event.ended_at)}   duration {_duration_so_far(event)}"
        f"   attempts {event.attempts}",
    ]
    if event.retry_of:
        rows.append(f"re-invoke of {escape(event.retry_of)} ([b]p[/] opens it)")
    if event.source is not None and event.source.path:
        who = f" by uid {event.source.uid}" if event.source.uid is not None else ""
        rows.append(f"[$text-muted]from {escape(event.source.path)}{who} ({event.source.via})[/]")
    if (delivery := delivery_markup(event)) is not None:
        rows.append(delivery)
    return "\n".join(rows)


def delivery_markup(event: Event) -> str | None:
    """Where its destination record went, or why it has not yet (None: nothing known)."""
    tried = event.delivery_tries
    fails = f"; {tried.tries} tries failed, the last: {escape(tried.error)}" if tried else ""
    if event.delivery is not None:
        d = event.delivery
        to = escape(d.target or d.destination)
        return f"destination: delivered to {to} ({d.condition}) {stamp(d.at)}{fails}"
    if tried is None:
        return None
    if tried.given_up:
        return f"[$error]destination: given up on {escape(tried.destination)}{fails}[/]"
    due = f"; next try {stamp(tried.next_at)}" if tried.next_at is not None else ""
    return f"[$warning]destination: not delivered yet to {escape(tried.destination)}{fails}{due}[/]"


@dataclass
class LogText(Message):
    """Text appended to the followed log."""

    text: str


class LogView(Log):
    """An event's log (daemon/files/eventlog.py: its file, or the lines its records imply), followed
    in a worker while `live()` says the event runs; `event()` gives the event as last read."""

    def __init__(
        self,
        path: Path | None,
        live: Callable[[], bool],
        limit: int | None,
        event: Callable[[], Event | None],
        *,
        id: str,
    ) -> None:
        super().__init__(highlight=False, id=id)
        self.path, self.live, self.limit, self.event = path, live, limit, event
        self.border_title = "log"

    def on_mount(self) -> None:
        self.follow_log()

    @work(thread=True, exclusive=True)
    def follow_log(self) -> None:
        """Read what is there, then what is appended while the event runs, then the rest."""
        worker = get_current_worker()
        if self.path is None:  # an id from before ids were checked names no file
            self.post_message(LogText("(no log: the event's id is not a valid request id)\n"))
            return
        reader = LogReader(self.path)
        while (event := self.event()) is None and not worker.is_cancelled:
            time.sleep(LOG_POLL)  # the event is still being read
        if event is None:
            return
        text = reader.more(event, self.limit).decode("utf-8", errors="replace")
        if reader.skipped:
            text = f"[… the start of the log is left out: `o` opens all of it]\n{text}"
        self.post_message(LogText(text or "(no log yet)\n"))
        while not worker.is_cancelled:
            running = self.live()
            time.sleep(LOG_POLL)
            event = self.event() or event  # read before the file, as LogReader needs
            text = reader.more(event).decode("utf-8", errors="replace")
            if text:
                self.post_message(LogText(text))
            if not running:
                return

    def on_log_text(self, message: LogText) -> None:
        message.stop()
        self.write(message.text)


class DetailScreen(Screen[None]):
    """The detail of one event; esc goes back."""

    BINDINGS = [
        Binding("escape", "app.pop_screen", "Back"),
        Binding("x", "app.stop", "Stop"),
        Binding("r", "app.reinvoke", "Re-invoke"),
        Binding("c", "app.copy", "Copy payload"),
        Binding("o", "app.open_log", "Full log"),
        Binding("p", "original", "Re-invoked event"),
        Binding("j", "scroll(1)", "Down", show=False),
        Binding("k", "scroll(-1)", "Up", show=False),
    ]

    def __init__(self, event_id: str, function: str, logs_dir: Path, journal_dir: Path) -> None:
        super().__init__()
        self.event_id = event_id
        try:
            self.log_path: Path | None = event_log_path(logs_dir, function, event_id)
        except BadId:
            self.log_path = None
        self.journal_dir = journal_dir
        self.logs_dir = logs_dir
        self.event: Event | None = None
        self._early: list[Transition] = []  # records that came while the event was being read

    def compose(self) -> ComposeResult:
        with VerticalScroll(id="detail-info"):
            yield Static("reading the event…", id="detail-summary")
            yield Static(id="detail-result", classes="section")
            yield Static(id="detail-attempts", classes="section")
            yield Static(id="detail-payload", classes="section")
            yield Static(id="detail-timeline", classes="section")
        yield LogView(
            self.log_path, self.running, LOG_TAIL_BYTES, lambda: self.event, id="detail-log"
        )
        yield Footer()

    def on_mount(self) -> None:
        for name, title in (
            ("result", "result"),
            ("attempts", "attempts"),
            ("timeline", "timeline"),
            ("payload", "payload"),
        ):
            self.query_one(f"#detail-{name}").border_title = title
        self.load()
        self.set_interval(1.0, self._tick)

    def _tick(self) -> None:
        """A running event's duration so far moves on."""
        if self.event is not None and not self.event.ended:
            self.query_one("#detail-summary", Static).update(summary_markup(self.event))

    def running(self) -> bool:
        """Whether the event may still write to its log (thread-safe enough: one bool read)."""
        return self.event is None or not self.event.ended

    @work(thread=True, exclusive=True, group="detail-load")
    def load(self) -> None:
        """Read the event off the UI thread."""
        event = EventReads(self.journal_dir).get(self.event_id)
        self.app.call_from_thread(self._loaded, event)

    def _loaded(self, event: Event | None) -> None:
        if event is None:
            self.query_one("#detail-summary", Static).update(
                f"[$error]no event {escape(self.event_id)} in the journal[/]"
            )
            return
        self.event = event
        self.records(self._early)
        self._early.clear()
        self.render_event()

    def records(self, records: list[Transition]) -> None:
        """Fold the journal's new records for this event into the view."""
        mine = [r for r in records if r.id == self.event_id]
        if not mine:
            return
        if self.event is None:
            self._early += mine
            return
        events = {self.event_id: self.event}
        for rec in mine:
            if rec.seq > self.event.seq:
                try:
                    apply(events, rec)
                except IllegalTransition:
                    continue
        self.render_event()

    def render_event(self) -> None:
        """Show the event as it is now."""
        event = self.event
        if event is None:
            return
        self.query_one("#detail-summary", Static).update(summary_markup(event))
        result = self.query_one("#detail-result", Static)
        if event.error is not None:
            text = f"[$error]{escape(event.error.type)}: {escape(event.error.message)}[/]"
            if event.error.code is not None:
                text += f"  [$text-muted](code {event.error.code})[/]"
            if event.error.traceback:
                text += f"\n[$text-muted]{escape(event.error.traceback.rstrip())}[/]"
            result.border_title = "error"
            result.update(text)
        elif has_raw(event.result):
            result.border_title = "result"
            result.update(json_view(event.result))
        else:
            result.border_title = "result"
            result.update("[$text-muted]none yet[/]" if not event.ended else "none")
        self.query_one("#detail-attempts", Static).update(attempts_markup(event))
        self.query_one("#detail-timeline", Static).update(timeline_markup(event))
        self.query_one("#detail-payload", Static).update(json_view(event.payload))

    def action_original(self) -> None:
        """Open the event this one re-invokes (esc comes back here)."""
        if self.event is None or not self.event.retry_of:
            self.notify("this event re-invokes none", severity="warning")
            return
        original = DetailScreen(
            self.event.retry_of, self.event.function, self.logs_dir, self.journal_dir
        )
        self.app.push_screen(original)

    def action_scroll(self, delta: int) -> None:
        """Scroll the event's information."""
        self.query_one("#detail-info", VerticalScroll).scroll_relative(y=delta, animate=False)


class LogScreen(Screen[None]):
    """An event's whole log, followed while it runs: `/` searches it, `n`/`N` go to the next and
    previous line that matches; esc goes back."""

    BINDINGS = [
        Binding("escape", "back", "Back"),
        Binding("slash", "search", "Search"),
        Binding("n", "match(1)", "Next match"),
        Binding("N", "match(-1)", "Previous match"),
    ]

    def __init__(
        self, path: Path, live: Callable[[], bool], event: Callable[[], Event | None]
    ) -> None:
        super().__init__()
        self.path, self.live, self.event = path, live, event
        self.pattern = ""
        self.at = -1  # the line of the match shown

    def compose(self) -> ComposeResult:
        yield Static(f"[b]log[/] {escape(str(self.path))}", id="log-title")
        yield LogView(self.path, self.live, None, self.event, id="full-log")
        yield Input(placeholder="search the log (case ignored)", id="log-search")
        yield Footer()

    def on_mount(self) -> None:
        self.query_one("#log-search", Input).display = False

    def action_back(self) -> None:
        """Close the search box, else go back."""
        box = self.query_one("#log-search", Input)
        if box.display:
            box.display = False
            self.query_one("#full-log").focus()
        else:
            self.app.pop_screen()

    def action_search(self) -> None:
        """Ask what to look for."""
        box = self.query_one("#log-search", Input)
        box.display = True
        box.focus()

    def on_input_submitted(self, event: Input.Submitted) -> None:
        event.stop()
        event.input.display = False
        self.query_one("#full-log").focus()
        self.pattern, self.at = event.value.lower(), -1
        self.action_match(1)

    def action_match(self, step: int) -> None:
        """Show the next (1) or previous (-1) line that matches, wrapping around."""
        log = self.query_one("#full-log", LogView)
        found = [i for i, line in enumerate(log.lines) if self.pattern in line.lower()]
        if not self.pattern or not found:
            self.notify(f"no line holds {self.pattern!r}" if self.pattern else "nothing to find")
            return
        later = [i for i in found if (i - self.at) * step > 0]
        self.at = (later[0] if step > 0 else later[-1]) if later else found[0 if step > 0 else -1]
        log.auto_scroll = False  # stay on the match while the log grows
        log.scroll_to(y=self.at, animate=False)
        self.notify(f"match {found.index(self.at) + 1} of {len(found)}: line {self.at + 1}")
