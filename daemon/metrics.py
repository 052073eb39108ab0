"""`run/metrics.prom`: the daemon's figures in Prometheus' text format (node_exporter's textfile
collector reads it). Counters start at zero with each daemon, as Prometheus expects."""

from __future__ import annotations

import collections
from collections.abc import Iterable, Mapping

import msgspec

from daemon.heartbeat import InstanceView
from daemon.model import State

#: upper bounds (seconds) of the attempt duration histogram's buckets
BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0)


class Histogram:
    """Attempt durations of one function, in Prometheus' cumulative buckets."""

    def __init__(self) -> None:
        self.counts = [0] * len(BUCKETS)  # observations at or under each bound (not cumulative)
        self.count = 0
        self.sum = 0.0

    def observe(self, seconds: float) -> None:
        """Count one duration."""
        self.count += 1
        self.sum += seconds
        for i, bound in enumerate(BUCKETS):
            if seconds <= bound:
                self.counts[i] += 1
                return

    def lines(self, name: str, function: str) -> Iterable[str]:
        """The bucket, sum and count lines."""
        below = 0
        for bound, n in zip(BUCKETS, self.counts, strict=True):
            below += n
            yield f'{name}_bucket{{function="{function}",le="{bound}"}} {below}'
        yield f'{name}_bucket{{function="{function}",le="+Inf"}} {self.count}'
        yield f'{name}_sum{{function="{function}"}} {self.sum:.6f}'
        yield f'{name}_count{{function="{function}"}} {self.count}'


class FileCounts(msgspec.Struct, kw_only=True):
    """Files taken from and refused at the spool's doors since the daemon started."""

    accepted: int = 0
    rejected: int = 0  # payload files and control requests set aside in rejected/


class Metrics:
    """Counters the dispatcher bumps as attempts end and instances start cold."""

    def __init__(self) -> None:
        self.attempts: collections.Counter[tuple[str, str]] = collections.Counter()
        self.durations: collections.defaultdict[str, Histogram] = collections.defaultdict(Histogram)
        self.cold_starts: collections.Counter[str] = collections.Counter()
        #: attempts that ran on a Ray node, by node and outcome
        self.on_nodes: collections.Counter[tuple[str, str]] = collections.Counter()

    def attempt_ended(
        self, function: str, outcome: State, duration_ms: float, node: str | None = None
    ) -> None:
        """One attempt of `function` ended as `outcome` after `duration_ms` (on the Ray `node`,
        if it ran on one)."""
        self.attempts[function, outcome.value] += 1
        self.durations[function].observe(duration_ms / 1000)
        if node is not None:
            self.on_nodes[node, outcome.value] += 1

    def cold_start(self, function: str) -> None:
        """An event of `function` waited for a new instance."""
        self.cold_starts[function] += 1

    def render(
        self,
        events: Mapping[State, int],
        instances: Mapping[str, Iterable[InstanceView]],
        queue_depth: int,
        files: FileCounts,
        paused: Mapping[str, bool] | None = None,
        held: Mapping[str, bool] | None = None,
    ) -> str:
        """The whole file's text."""
        out: list[str] = []
        _family(out, "fnspool_events", "gauge", "Retained events by state.")
        for state in State:
            out.append(f'fnspool_events{{state="{state.value}"}} {events.get(state, 0)}')
        _family(out, "fnspool_queue_depth", "gauge", "Events waiting for an instance.")
        out.append(f"fnspool_queue_depth {queue_depth}")
        _family(out, "fnspool_files_total", "counter", "Files taken and refused at the doors.")
        out.append(f'fnspool_files_total{{outcome="accepted"}} {files.accepted}')
        out.append(f'fnspool_files_total{{outcome="rejected"}} {files.rejected}')
        _family(out, "fnspool_attempts_total", "counter", "Attempts ended, by outcome.")
        for (function, outcome), n in sorted(self.attempts.items()):
            out.append(f'fnspool_attempts_total{{function="{function}",outcome="{outcome}"}} {n}')
        if self.on_nodes:
            _family(out, "fnspool_node_attempts_total", "counter", "Attempts ended on Ray nodes.")
        for (node, outcome), n in sorted(self.on_nodes.items()):
            out.append(f'fnspool_node_attempts_total{{node="{node}",outcome="{outcome}"}} {n}')
        name = "fnspool_attempt_duration_seconds"
        _family(out, name, "histogram", "Attempt wall time.")
        for function, histogram in sorted(self.durations.items()):
            out.extend(histogram.lines(name, function))
        _family(out, "fnspool_cold_starts_total", "counter", "Events that started an instance.")
        for function, n in sorted(self.cold_starts.items()):
            out.append(f'fnspool_cold_starts_total{{function="{function}"}} {n}')
        _family(out, "fnspool_instances", "gauge", "Instances by function and state.")
        for function, listed in sorted(instances.items()):
            states = collections.Counter(i.state for i in listed)
            for state_name, n in sorted(states.items()):
                out.append(f'fnspool_instances{{function="{function}",state="{state_name}"}} {n}')
        _family(out, "fnspool_paused", "gauge", "1 while a function's dispatch is held.")
        for function, holds in sorted((paused or {}).items()):
            out.append(f'fnspool_paused{{function="{function}"}} {int(holds)}')
        if held:
            why = "1 while a function's events wait for its place (its Ray cluster is down)."
            _family(out, "fnspool_held", "gauge", why)
        for function, waits in sorted((held or {}).items()):
            out.append(f'fnspool_held{{function="{function}"}} {int(waits)}')
        return "\n".join(out) + "\n"


def _family(out: list[str], name: str, kind: str, help_text: str) -> None:
    out.append(f"# HELP {name} {help_text}")
    out.append(f"# TYPE {name} {kind}")
