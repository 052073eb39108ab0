"""The states of a function's instance: one enum for the runtimes (what the process can do), the
pool (its record of each instance) and status.json (what users see).

Light on purpose: the CLI and the dashboard read instance states through it.
"""

from __future__ import annotations

from enum import StrEnum


class InstanceState(StrEnum):
    """Where an instance is in its life."""

    #: its process starts, its Initializer runs (the runtimes)
    STARTING = "starting"
    #: ready and serving no event (the runtimes; the pool: its places are free)
    IDLE = "idle"
    #: serving events (the runtimes: a call in flight; the pool: events leased to it)
    BUSY = "busy"
    #: running PreFreeze on its way to frozen: not to be taken meanwhile (the pool)
    FREEZING = "freezing"
    #: its process group SIGSTOPped until its next event (the pool)
    FROZEN = "frozen"
    #: on its way out: PreStop, then the kill (the runtimes; the pool: retiring)
    STOPPING = "stopping"
    #: its process is gone (the runtimes)
    DEAD = "dead"

    @property
    def shown(self) -> InstanceState:
        """The state status.json and the dashboard show: PreFreeze runs the function's code, so
        a freezing instance is shown busy (as it always was)."""
        return InstanceState.BUSY if self is InstanceState.FREEZING else self


#: the runtime states in which an instance can take an event
SERVING = frozenset({InstanceState.IDLE, InstanceState.BUSY})

#: the moves of the pool's record of an instance; the record is made BUSY, with the instance's
#: first event, and dropped once the instance is destroyed
POOL_MOVES: dict[InstanceState, frozenset[InstanceState]] = {
    # the last event released; retired while serving (a forced stop, a shutdown)
    InstanceState.BUSY: frozenset({InstanceState.IDLE, InstanceState.STOPPING}),
    # leased again; idle with PreFreeze set, or frozen at once; retired (idle timeout, closed)
    InstanceState.IDLE: frozenset(
        {InstanceState.BUSY, InstanceState.FREEZING, InstanceState.FROZEN, InstanceState.STOPPING}
    ),
    # PreFreeze ended (frozen next unless an event waits, or freeze is off); retired meanwhile
    InstanceState.FREEZING: frozenset({InstanceState.IDLE, InstanceState.STOPPING}),
    # thawed for an event; thawed to be retired
    InstanceState.FROZEN: frozenset({InstanceState.BUSY, InstanceState.STOPPING}),
    InstanceState.STOPPING: frozenset(),
}


class IllegalMove(Exception):
    """A move of the pool's record that POOL_MOVES does not allow: always a bug, never applied."""

    def __init__(self, instance_id: str, old: InstanceState, new: InstanceState) -> None:
        super().__init__(f"instance {instance_id}: illegal move {old} -> {new}")
        self.instance_id, self.old, self.new = instance_id, old, new
