"""Modal screens: confirmations (enter confirms, esc cancels, as lazydocker), pickers and help."""

from __future__ import annotations

from dataclasses import dataclass

from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Vertical
from textual.screen import ModalScreen
from textual.widgets import Input, Label, OptionList, SelectionList, Static
from textual.widgets.option_list import Option
from textual.widgets.selection_list import Selection

from daemon.model import State
from daemon.query import parse_time
from tui.format import STATES, state_markup
from tui.ranked import BOUND


@dataclass
class StopChoice:
    """What the stop modal answered."""

    graceful: bool


#: states of an event that waits to run: a stop touches no instance
QUEUED = frozenset({State.ENQUEUED, State.DEQUEUED, State.RETRYING})


class ConfirmStop(ModalScreen[StopChoice | None]):
    """Stop an event: enter stops (forced), `g` switches to graceful (SIGTERM first). An event
    being stopped already can only be forced: its graceful stop escalated at once."""

    BINDINGS = [
        Binding("enter", "confirm", "Stop", priority=True),
        Binding("g", "toggle_graceful", "Forced/graceful"),
        Binding("escape", "cancel", "Cancel"),
    ]

    def __init__(self, event_id: str, state: State) -> None:
        super().__init__()
        self.event_id, self.state = event_id, state
        self.graceful = False
        self.escalate = state is State.STOPPING
        self.queued = state in QUEUED  # it never ran on an instance: nothing to kill

    def compose(self) -> ComposeResult:
        with Vertical(classes="dialog"):
            verb = "Force the stop of" if self.escalate else "Stop"
            yield Label(f"{verb} event {self.event_id}?", classes="title")
            yield Static(f"It is {state_markup(self.state)}.", id="stop-state")
            yield Static(id="stop-mode")
            keys = (
                "force now"
                if self.escalate
                else "stop"
                if self.queued
                else "stop   [b]g[/] forced ↔ graceful"
            )
            yield Static(f"[b]enter[/] {keys}   [b]esc[/] cancel", classes="keys")

    def on_mount(self) -> None:
        self._show_mode()

    def _show_mode(self) -> None:
        if self.queued:
            text = "it has not started: it goes Stopping, then Stopped, and never runs"
        elif self.escalate:
            text = "[b]forced[/] now: PreStop, then the instance is killed (no more grace)"
        elif self.graceful:
            text = (
                "[b]graceful[/]: SIGTERM to the handler; it may return, else forced after a"
                " grace period"
            )
        else:
            text = "[b]forced[/]: PreStop, then the instance is killed"
        self.query_one("#stop-mode", Static).update(text)

    def action_toggle_graceful(self) -> None:
        """Switch between a forced and a graceful stop."""
        self.graceful = not self.graceful and not self.escalate and not self.queued
        self._show_mode()

    def action_confirm(self) -> None:
        """Stop."""
        self.dismiss(StopChoice(graceful=self.graceful))

    def action_cancel(self) -> None:
        """Do nothing."""
        self.dismiss(None)


class Confirm(ModalScreen[bool]):
    """A yes/no question: enter confirms, esc cancels."""

    BINDINGS = [
        Binding("enter", "confirm", "Confirm", priority=True),
        Binding("escape", "cancel", "Cancel"),
    ]

    def __init__(self, title: str, body: str, verb: str = "confirm") -> None:
        super().__init__()
        self.title_text, self.body, self.verb = title, body, verb

    def compose(self) -> ComposeResult:
        with Vertical(classes="dialog"):
            yield Label(self.title_text, classes="title")
            yield Static(self.body)
            yield Static(f"[b]enter[/] {self.verb}   [b]esc[/] cancel", classes="keys")

    def action_confirm(self) -> None:
        """Yes."""
        self.dismiss(True)

    def action_cancel(self) -> None:
        """No."""
        self.dismiss(False)


class PickStates(ModalScreen[frozenset[State] | None]):
    """Choose the states to show: space toggles, enter applies, esc cancels."""

    BINDINGS = [
        Binding("enter", "apply", "Apply", priority=True),
        Binding("escape", "cancel", "Cancel"),
    ]

    def __init__(self, chosen: frozenset[State], counts: list[int]) -> None:
        super().__init__()
        self.chosen, self.counts = chosen, counts

    def compose(self) -> ComposeResult:
        with Vertical(classes="dialog"):
            yield Label("Show events in these states (none chosen: all)", classes="title")
            yield SelectionList[State](
                *(
                    Selection(f"{state_markup(s)}  {n:,}", s, s in self.chosen)
                    for s, n in zip(STATES, self.counts, strict=True)
                ),
                id="states",
            )
            yield Static(
                "[b]space[/] toggle   [b]enter[/] apply   [b]esc[/] cancel", classes="keys"
            )

    def action_apply(self) -> None:
        """Filter on the chosen states."""
        self.dismiss(frozenset(self.query_one(SelectionList).selected))

    def action_cancel(self) -> None:
        """Keep the filter as it was."""
        self.dismiss(None)


class PickFunction(ModalScreen[str | None]):
    """Choose one function to show (or all): enter applies, esc cancels."""

    ALL = "*"
    BINDINGS = [
        Binding("enter", "apply", "Apply", priority=True),
        Binding("escape", "cancel", "Cancel"),
    ]

    def __init__(self, functions: list[tuple[str, int]], chosen: str | None) -> None:
        super().__init__()
        self.functions, self.chosen = functions, chosen

    def compose(self) -> ComposeResult:
        options = [Option("[b]all functions[/]", id=self.ALL)]
        options += [Option(f"{name}  [$text-muted]{n:,}[/]", id=name) for name, n in self.functions]
        with Vertical(classes="dialog"):
            yield Label("Show the events of one function", classes="title")
            yield OptionList(*options, id="functions")
            yield Static("[b]enter[/] apply   [b]esc[/] cancel", classes="keys")

    def on_mount(self) -> None:
        options = self.query_one(OptionList)
        if self.chosen is not None:
            try:
                options.highlighted = options.get_option_index(self.chosen)
            except LookupError:
                options.highlighted = 0
        else:
            options.highlighted = 0

    def action_apply(self) -> None:
        """Filter on the highlighted function."""
        options = self.query_one(OptionList)
        if options.highlighted is None:
            self.dismiss(None)
            return
        chosen = options.get_option_at_index(options.highlighted).id
        self.dismiss("" if chosen == self.ALL else chosen)

    def on_option_list_option_selected(self) -> None:
        self.action_apply()

    def action_cancel(self) -> None:
        """Keep the filter as it was."""
        self.dismiss(None)


@dataclass
class TimeRange:
    """A time range chosen in the modal (None: open on that side)."""

    since: float | None
    until: float | None
    since_text: str = ""
    until_text: str = ""

    @property
    def text(self) -> str:
        """The range as the filter line says it ("" when open on both sides)."""
        if not (self.since_text or self.until_text):
            return ""
        return f"{self.since_text or 'the start'} to {self.until_text or 'now'}"


class PickTimeRange(ModalScreen[TimeRange | None]):
    """Enqueued between two times: `15m`, `2h`, `3d` ago or ISO 8601; empty: open."""

    BINDINGS = [Binding("escape", "cancel", "Cancel")]

    def __init__(self, since: str, until: str) -> None:
        super().__init__()
        self.since, self.until = since, until

    def compose(self) -> ComposeResult:
        with Vertical(classes="dialog"):
            yield Label("Enqueued between (15m, 2h, 3d ago, or ISO 8601)", classes="title")
            yield Input(self.since, placeholder="since, e.g. 1h", id="since")
            yield Input(self.until, placeholder="until (empty: now)", id="until")
            yield Static(id="time-error", classes="error")
            yield Static("[b]enter[/] apply   [b]esc[/] cancel", classes="keys")

    def on_input_submitted(self) -> None:
        since = self.query_one("#since", Input).value.strip()
        until = self.query_one("#until", Input).value.strip()
        try:
            start = parse_time(since) if since else None
            end = parse_time(until) if until else None
        except ValueError as exc:
            self.query_one("#time-error", Static).update(str(exc))
            return
        self.dismiss(TimeRange(since=start, until=end, since_text=since, until_text=until))

    def action_cancel(self) -> None:
        """Keep the filter as it was."""
        self.dismiss(None)


HELP = f"""\
[b]Events[/]
  [b]j k ↑ ↓[/]  move         [b]g G[/]  newest / oldest   [b]PgUp PgDn[/] page
  [b]enter[/]    detail       [b]f[/]    follow the newest  [b]esc[/]  clear filters
  [b]/[/]        filter text: id prefix, function, error (enter; esc clears)
  [b]s[/]        states       [b]F[/]    function          [b]t[/]    time range
  [b]< > I[/]    sort by another column, the other way (or click its title)
           id, attempts, duration, error: a filter of up to {BOUND:,} events;
           no duration (not ended) or no error: last, either way
[b]Actions[/] (each asks first: enter confirms, esc cancels)
  [b]x[/]        stop (g in the dialog: graceful; x again forces it)
  [b]r[/]  re-invoke the event     [b]R[/]  every ended event the filter shows
  [b]c[/]  copy the payload (OSC 52)     [b]o[/]  open the full log
[b]Views[/]
  [b]1[/] events  [b]2[/] functions: [b]p[/] pause or resume one, [b]P[/] all
  [b]3[/] rejected files   [b]ctrl+p[/] commands   [b]q[/] quit
Requests go to control/ for the daemon; while it is down they wait there.\
"""


class HelpScreen(ModalScreen[None]):
    """The keys."""

    BINDINGS = [Binding("escape,q,question_mark", "close", "Close")]

    def compose(self) -> ComposeResult:
        with Vertical(classes="dialog help"):
            yield Label("fnspool dashboard: keys", classes="title")
            yield Static(HELP, id="help-keys")

    def action_close(self) -> None:
        """Back."""
        self.dismiss(None)
