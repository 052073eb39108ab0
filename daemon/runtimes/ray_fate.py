"""Why an instance's actor was lost: its node died (the attempt it ran was cut off, as by a
crash of the daemon: Interrupted, run again elsewhere without spending a retry), or the actor
alone (a lost instance, as a local instance whose process dies: the attempt fails).

Ray does not always say which: a call to an actor on a node whose raylet is killed fails with
ActorUnavailableError ("may or may not have been executed") before the cluster's control store
(GCS) has marked the node dead. So the verdict is read off the GCS's node table, waiting until
either the node is marked dead or the actor answers or is known dead with its node alive.
Blocking calls into Ray: run on a thread.
"""

from __future__ import annotations

import logging
import time
from typing import Any

log = logging.getLogger(__name__)

#: seconds to wait for the cluster to tell a lost node from a lost actor: Ray's health checks
#: mark a node whose raylet is gone dead in about 15 seconds, one unreachable in about 30
VERDICT_TIME = 60.0
PROBE_WAIT = 1.0  # seconds between two looks at the node table while the actor's fate is unknown


def node_death(node_id: str | None) -> str | None:
    """How the GCS says the node `node_id` died (its death reason); None while it is alive."""
    import ray

    if node_id is None:
        return None
    try:
        nodes = ray.nodes()
    except Exception as exc:  # disconnected: the engine says why
        log.info("the Ray node table cannot be read: %s", exc)
        return None
    for node in nodes:
        if node.get("NodeID") == node_id:
            if node.get("Alive", True):
                return None
            return str(node.get("DeathReasonMessage") or "") or "dead"
    return "gone from the cluster's node table"


def lost_node(actor: Any, node_id: str | None, died: bool) -> str | None:
    """How the node of a lost actor died, if that is why it was lost; None if the actor died
    (`died`: Ray said so) or is alive on a live node (its call failed for another reason), or
    if Ray cannot tell (disconnected from the cluster: the engine says why)."""
    try:
        return _lost_node(actor, node_id, died)
    except Exception as exc:
        log.info("cannot tell why a Ray actor was lost: %s", exc)
        return None


def _lost_node(actor: Any, node_id: str | None, died: bool) -> str | None:
    import ray
    from ray.exceptions import ActorUnavailableError, RayActorError

    probe = None if died or actor is None else actor.__ray_ready__.remote()
    deadline = time.monotonic() + VERDICT_TIME
    while True:
        death = node_death(node_id)
        if death is not None:
            return death
        if probe is None or time.monotonic() > deadline:
            return None
        ready, _ = ray.wait([probe], timeout=PROBE_WAIT)
        if ready:
            try:
                ray.get(probe)
            except ActorUnavailableError:  # not known yet: ask again
                time.sleep(PROBE_WAIT)
                probe = actor.__ray_ready__.remote()
                continue
            except RayActorError:  # dead
                probe = None
                continue
            return None  # it answers: its node is alive
