"""The functions view's pictures of the selected function's last minutes: events enqueued per
second and the slowest duration per second (sparklines), and a histogram of durations with its
percentiles. The figures come from tui/recent.py; this only draws them."""

from __future__ import annotations

import math

from rich.text import Text
from textual.app import ComposeResult
from textual.containers import Horizontal, Vertical
from textual.markup import escape
from textual.reactive import reactive
from textual.widget import Widget
from textual.widgets import Label, Sparkline, Static

from tui.format import duration
from tui.recent import WINDOW, Recent, histogram, percentile


class FunctionPictures(Vertical):
    """Sparklines and a histogram of one function's recent events."""

    def compose(self) -> ComposeResult:
        yield Static(id="pictures-title")
        with Horizontal(classes="picture"):
            yield Label("enqueued/s")
            yield Sparkline([], id="rate", summary_function=max)
            yield Static(id="rate-figure", classes="figure")
        with Horizontal(classes="picture"):
            yield Label("slowest")
            yield Sparkline([], id="slowest", summary_function=max)
            yield Static(id="slowest-figure", classes="figure")
        with Horizontal(classes="picture histogram"):
            yield Label("durations")
            yield Histogram(id="histogram")
            yield Static(id="histogram-range", classes="figure")
        yield Static(id="percentiles")

    def show(self, recent: Recent) -> None:
        """Draw `recent`."""
        self.query_one("#pictures-title", Static).update(
            f"[b]{escape(recent.function)}[/]  the last {WINDOW // 60} minutes"
        )
        self.query_one("#rate", Sparkline).data = recent.per_second
        peak = max(recent.per_second, default=0)
        rate = f"{recent.rate:,.1f} now, peak {peak:,}"
        self.query_one("#rate-figure", Static).update(rate)
        # a log scale: one slow event would flatten every other second
        self.query_one("#slowest", Sparkline).data = [math.log1p(ms) for ms in recent.slowest]
        worst = max(recent.slowest, default=0.0)
        slowest = f"max {duration(worst)}, log" if worst else "none ended"
        self.query_one("#slowest-figure", Static).update(slowest)
        self.query_one(Histogram).values = recent.durations
        low, high = min(recent.durations, default=0), max(recent.durations, default=0)
        span = f"{duration(low)} … {duration(high)}, log" if recent.durations else "no ended event"
        self.query_one("#histogram-range", Static).update(span)
        self.query_one("#percentiles", Static).update(percentiles_markup(recent))

    def unavailable(self, function: str | None, why: str) -> None:
        """Say why there is nothing to draw."""
        title = f"[b]{escape(function)}[/]  " if function else ""
        self.query_one("#pictures-title", Static).update(f"{title}[$text-muted]{why}[/]")
        for spark in self.query(Sparkline):
            spark.data = []
        self.query_one(Histogram).values = []
        for figure in self.query(".figure, #percentiles"):
            if isinstance(figure, Static):
                figure.update("")


def percentiles_markup(recent: Recent) -> str:
    """The durations' count and percentiles, as the line under the histogram says them."""
    ordered = sorted(recent.durations)
    if not ordered:
        return "[$text-muted]no event of this function ended in the window[/]"
    of = f"the newest {len(ordered):,}" if recent.capped else f"{len(ordered):,} ended"
    figures = "  ".join(f"[b]p{q}[/] {duration(percentile(ordered, q))}" for q in (50, 95, 99))
    return f"{figures}  [$text-muted]of {of}[/]"


BARS = "▁▂▃▄▅▆▇█"
BIN_WIDTH = 2  # columns per bar


class Histogram(Widget):
    """Counts of durations in bins on a log scale, as bars from zero (a Sparkline scales from
    its smallest value: bins of 6 and 7 events would look empty and full)."""

    DEFAULT_CSS = """
    Histogram { height: 3; }
    Histogram > .histogram--bar { color: $primary; }
    """
    COMPONENT_CLASSES = {"histogram--bar"}

    values: reactive[list[float]] = reactive(list, always_update=True)

    def render(self) -> Text:
        width, height = self.size.width, max(1, self.size.height)
        counts, _, _ = histogram(self.values, max(1, width // BIN_WIDTH))
        top = max(counts, default=0)
        # in eighths of a line; a bin that has events shows at least a sliver
        levels = [max(1, round(n / top * height * 8)) if n else 0 for n in counts]
        lines = []
        for row in reversed(range(height)):
            parts = [min(8, max(0, level - row * 8)) for level in levels]
            lines.append("".join((BARS[p - 1] if p else " ") * BIN_WIDTH for p in parts))
        return Text("\n".join(lines), style=self.get_component_rich_style("histogram--bar"))
