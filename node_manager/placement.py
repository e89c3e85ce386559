"""Least-loaded placement: the score of a node and the choice among candidates.

score = 0.5 x CPU busy fraction + 0.2 x memory used fraction + 0.3 x services / capacity

CPU dominates because it is what a busy node runs out of first; memory and the
service count break ties between idle nodes, so services spread out. A node is
a candidate when it is up, has room (services < capacity), is not to be
avoided, and is the main node when the service must run there. The lowest
score wins; ties go to the node name, so placement is deterministic.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

CPU_WEIGHT = 0.5
MEMORY_WEIGHT = 0.2
SERVICES_WEIGHT = 0.3


@dataclass(frozen=True)
class NodeLoad:
    node_id: str
    state: str
    main: bool
    capacity: int
    services: int
    cpu_percent: float
    memory_used_mb: float
    memory_total_mb: float

    @property
    def score(self) -> float:
        memory = self.memory_used_mb / self.memory_total_mb if self.memory_total_mb else 0.0
        return (
            CPU_WEIGHT * min(self.cpu_percent, 100.0) / 100.0
            + MEMORY_WEIGHT * memory
            + SERVICES_WEIGHT * min(self.services / self.capacity, 1.0)
        )


def choose_node(
    nodes: Iterable[NodeLoad], *, avoid: Iterable[str] = (), main_only: bool = False
) -> NodeLoad | None:
    """The least-loaded candidate, or None when no node can take the service."""
    excluded = set(avoid)
    candidates = [
        node
        for node in nodes
        if node.state == "up"
        and node.services < node.capacity
        and node.node_id not in excluded
        and (node.main or not main_only)
    ]
    if not candidates:
        return None
    return min(candidates, key=lambda node: (round(node.score, 3), node.node_id))
