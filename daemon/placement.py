"""The `[placement]` table of a definition: where a function's instances run (this machine, or a
Ray cluster) and what each asks of a Ray node. Light: read by the CLI too, never imports ray."""

from __future__ import annotations

import math

import msgspec

ENGINES = ("local", "ray")
#: characters of a Ray node id shown where space is short (the id is 56 hexadecimal digits)
SHORT_NODE = 8
#: Ray's own resource names: asked through num_cpus, num_gpus and memory_mb, never `resources`
RESERVED_RESOURCES = frozenset({"CPU", "GPU", "memory", "object_store_memory"})


class Placement(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """The `[placement]` table: the engine, and for Ray what one instance's actor asks for (its
    memory request is the function's `memory_mb`)."""

    engine: str = "local"  # local | ray
    num_cpus: float = 1.0
    num_gpus: float = 0.0
    #: Ray custom resources, to pin a function to a node or a class of hardware
    resources: dict[str, float] = msgspec.field(default_factory=dict)

    @property
    def remote(self) -> bool:
        """Whether the instances run on a Ray cluster."""
        return self.engine == "ray"


def short_node(node: str | None) -> str:
    """An instance's node as the dashboard and `functions list` show it: the start of its Ray
    node id (the id `ray list nodes` shows begins so), or `local` for this machine."""
    return node[:SHORT_NODE] if node else "local"


def check_resources_table(table: object) -> None:
    """Name the resource whose amount is not a number (msgspec's error would not): call on the
    undecoded `[placement]` table."""
    if not isinstance(table, dict) or not isinstance(table.get("resources"), dict):
        return  # no table, or not one: msgspec's error names the key
    for name, amount in table["resources"].items():
        if isinstance(amount, bool) or not isinstance(amount, int | float):
            raise ValueError(
                f"`placement.resources.{name}` must be a number (an amount of that resource), "
                f"got {amount!r}"
            )


def check_placement(p: Placement, *, port: int) -> None:
    """Range checks msgspec's types cannot express; ValueError naming the key."""
    if p.engine not in ENGINES:
        raise ValueError(f'`placement.engine` must be "local" or "ray", got {p.engine!r}')
    for key in ("num_cpus", "num_gpus"):
        _check_amount(f"placement.{key}", getattr(p, key))
    for name, amount in p.resources.items():
        if name in RESERVED_RESOURCES:
            raise ValueError(
                f"`placement.resources` must not name Ray's own {name!r}: use "
                "num_cpus, num_gpus or memory_mb"
            )
        if not name or any(c.isspace() or not c.isprintable() for c in name):
            raise ValueError(f"`placement.resources` has a bad resource name {name!r}")
        _check_amount(f"placement.resources.{name}", amount)
    if not p.remote:
        return
    if port:
        raise ValueError('`port` is for instances on this machine, not `placement.engine = "ray"`')


def _check_amount(key: str, amount: float) -> None:
    """Ray's rule for an amount: not negative, and a whole number above 1."""
    if not math.isfinite(amount):
        raise ValueError(f"`{key}` must be a finite number, got {amount!r}")
    if amount < 0:
        raise ValueError(f"`{key}` must not be negative, got {amount!r}")
    if amount > 1 and amount != int(amount):
        raise ValueError(f"`{key}` must be a whole number when over 1, got {amount!r}")
