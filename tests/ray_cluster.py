"""One real Ray cluster for the whole test session, on this machine: a head that takes no
instance, and two worker nodes, each with a custom resource of its own to pin a function to it.
Small on purpose (the machine is shared): 2 CPUs and 80 MB of object store per node. Started at
the first test that needs it (`ray_cluster` in conftest.py), shut down at the end of the session,
so that no two clusters run at once."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import NamedTuple

STORE = 80 << 20  # bytes of object store per node: the least Ray takes
NODE_CPUS = 2  # per worker node: 4 instances asking for 0.5 CPU each
#: what a function placed on Ray by a test asks for, unless the test says otherwise
NUM_CPUS = 0.5
#: why the ray half of a test is skipped where Ray cannot be imported
NO_RAY = "Ray is not installed: pip install 'fnspool[ray]' (scripts/bootstrap dev installs it)"


class Nodes(NamedTuple):
    """The cluster's address and the ids of its two worker nodes."""

    address: str
    a: str  # has the resource node_a
    b: str  # has the resource node_b


@contextmanager
def ray_cluster_nodes() -> Iterator[Nodes]:
    """A head and two worker nodes, shut down on the way out."""
    from ray.cluster_utils import Cluster

    cluster = Cluster()
    try:
        cluster.add_node(num_cpus=0, object_store_memory=STORE, include_dashboard=False)
        a = cluster.add_node(num_cpus=NODE_CPUS, resources={"node_a": 4}, object_store_memory=STORE)
        b = cluster.add_node(num_cpus=NODE_CPUS, resources={"node_b": 4}, object_store_memory=STORE)
        yield Nodes(cluster.address, a.node_id, b.node_id)
    finally:
        cluster.shutdown()


def placement_table(resource: str = "", num_cpus: float = NUM_CPUS) -> str:
    """A `[placement]` table putting a function on Ray (pinned to the node with `resource`)."""
    pin = f"resources = {{ {resource} = 1 }}\n" if resource else ""
    return f'\n[placement]\nengine = "ray"\nnum_cpus = {num_cpus:g}\n{pin}'
