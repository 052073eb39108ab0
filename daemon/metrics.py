"""`run/metrics.prom`: the daemon's figures in Prometheus' text format (node_exporter's textfile
collector reads it). Counters start at zero with each daemon, as Prometheus expects."""

from __future__ import annotations

import collections
from collections.abc import Iterable, Mapping

from daemon.heartbeat import InstanceView
from daemon.model import State


class Metrics:
    """Counters the dispatcher bumps as attempts end and instances start cold."""

    def __init__(self) -> None:
        self.attempts: collections.Counter[tuple[str, str]] = collections.Counter()
        self.duration_sum: collections.defaultdict[str, float] = collections.defaultdict(float)
        self.cold_starts: collections.Counter[str] = collections.Counter()

    def attempt_ended(self, function: str, outcome: State, duration_ms: float) -> None:
        """One attempt of `function` ended as `outcome` after `duration_ms`."""
        self.attempts[function, outcome.value] += 1
        self.duration_sum[function] += duration_ms / 1000

    def cold_start(self, function: str) -> None:
        """An event of `function` waited for a new instance."""
        self.cold_starts[function] += 1

    def render(
        self,
        events: Mapping[State, int],
        instances: Mapping[str, Iterable[InstanceView]],
        queue_depth: int,
    ) -> str:
        """The whole file's text."""
        out: list[str] = []
        _family(out, "fnspool_events", "gauge", "Retained events by state.")
        for state in State:
            out.append(f'fnspool_events{{state="{state.value}"}} {events.get(state, 0)}')
        _family(out, "fnspool_queue_depth", "gauge", "Events waiting for an instance.")
        out.append(f"fnspool_queue_depth {queue_depth}")
        _family(out, "fnspool_attempts_total", "counter", "Attempts ended, by outcome.")
        for (function, outcome), n in sorted(self.attempts.items()):
            out.append(f'fnspool_attempts_total{{function="{function}",outcome="{outcome}"}} {n}')
        _family(out, "fnspool_attempt_duration_seconds", "summary", "Attempt wall time.")
        for function, total in sorted(self.duration_sum.items()):
            count = sum(n for (f, _), n in self.attempts.items() if f == function)
            out.append(f'fnspool_attempt_duration_seconds_sum{{function="{function}"}} {total:.6f}')
            out.append(f'fnspool_attempt_duration_seconds_count{{function="{function}"}} {count}')
        _family(out, "fnspool_cold_starts_total", "counter", "Events that started an instance.")
        for function, n in sorted(self.cold_starts.items()):
            out.append(f'fnspool_cold_starts_total{{function="{function}"}} {n}')
        _family(out, "fnspool_instances", "gauge", "Instances by function and state.")
        for function, listed in sorted(instances.items()):
            states = collections.Counter(i.state for i in listed)
            for name, n in sorted(states.items()):
                out.append(f'fnspool_instances{{function="{function}",state="{name}"}} {n}')
        return "\n".join(out) + "\n"


def _family(out: list[str], name: str, kind: str, help_text: str) -> None:
    out.append(f"# HELP {name} {help_text}")
    out.append(f"# TYPE {name} {kind}")
