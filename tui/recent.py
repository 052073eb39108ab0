"""A function's recent events as figures for the functions view's pictures: events enqueued per
second, durations per second, a histogram of durations and its percentiles.

Only the recent window is read (daemon/eventdb.py `arrivals`, `recent_durations`): the cost
follows the events of the last minutes, never the history retained; the durations are those of
the newest SAMPLE ended events at most.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from daemon import eventdb
from daemon.eventdb import IndexDB

WINDOW = 600  # seconds: the last ten minutes
SAMPLE = 20_000  # ended events at most whose durations are read


@dataclass(frozen=True)
class Recent:
    """One function's last WINDOW seconds, oldest second first."""

    function: str
    per_second: list[int]  # events enqueued in each second
    slowest: list[float]  # each second: the longest duration of its ended events (0: none)
    durations: list[float] = field(default_factory=list)  # ms, of the ended events read
    capped: bool = False  # more ended events than SAMPLE: the newest were read

    @property
    def rate(self) -> float:
        """Events enqueued per second over the last ten seconds."""
        return sum(self.per_second[-10:]) / 10


def read_recent(index: IndexDB, function: str, now: float) -> Recent:
    """`function`'s events of the window ending `now`, from the index."""
    first = int(now) - WINDOW + 1  # the window's seconds: first .. int(now)
    per_second = [0] * WINDOW
    for second, n in eventdb.arrivals(index, function, first):
        if 0 <= second - first < WINDOW:
            per_second[second - first] = n
    rows = eventdb.recent_durations(index, function, first, SAMPLE)
    slowest = [0.0] * WINDOW
    for at, ms in rows:
        slot = int(at) - first
        if 0 <= slot < WINDOW:
            slowest[slot] = max(slowest[slot], ms)
    durations = [ms for _, ms in rows]
    return Recent(function, per_second, slowest, durations, capped=len(rows) >= SAMPLE)


def percentile(ordered: list[float], q: float) -> float:
    """The nearest-rank `q`th percentile of ascending values: a value that was measured, the
    smallest with at least q% of the values at or below it."""
    if not ordered:
        raise ValueError("no values")
    rank = max(1, math.ceil(q / 100 * len(ordered)))
    return ordered[rank - 1]


def histogram(values: list[float], bins: int) -> tuple[list[int], float, float]:
    """Counts of `values` in `bins` bins of equal width on a log scale (durations span ms to
    minutes), and the range they cover."""
    if not values:
        return [], 0.0, 0.0
    low, high = min(values), max(values)
    floor = max(low, 0.001)  # a log scale starts above zero (a microsecond)
    if high <= floor:
        return [len(values)], low, high
    span = math.log(high) - math.log(floor)
    counts = [0] * bins
    for v in values:
        at = (math.log(max(v, floor)) - math.log(floor)) / span
        counts[min(bins - 1, int(at * bins))] += 1
    return counts, low, high
