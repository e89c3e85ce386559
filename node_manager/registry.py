"""CRUD of the node manager's tables; every function takes the session it works in."""

from __future__ import annotations

import json
from typing import Any, cast

import sqlalchemy as sa
from sqlalchemy.orm import Session

from node_manager.models import NodeRow, PlacementRow
from node_manager.placement import NodeLoad
from platform_core.db import utcnow
from platform_core.nodes import (
    NodeAnnouncement,
    NodeReport,
    PlacedService,
    RunState,
    ServiceSpec,
    ServiceState,
)
from platform_sdk.errors import NotFound


def upsert_node(session: Session, announcement: NodeAnnouncement) -> NodeRow:
    """The node as its agent announced it: address, capacity, up now, and its load if it sent one."""
    node = session.get(NodeRow, announcement.node_id)
    if node is None:
        node = NodeRow(node_id=announcement.node_id, capacity=announcement.capacity)
        session.add(node)
    node.host = announcement.host
    node.http_url = announcement.http_url
    node.runtime = announcement.runtime
    node.main = announcement.main
    node.capacity = announcement.capacity
    if node.state != "draining":  # a node being drained for removal stays out of placement
        node.state = "up"
    node.last_seen = utcnow()
    load = announcement.load
    if load is not None:
        node.cpu_percent, node.memory_used_mb, node.memory_total_mb = (
            load.cpu_percent,
            load.memory_used_mb,
            load.memory_total_mb,
        )
        node.services = load.services
    return node


def delete_node(session: Session, node_id: str) -> None:
    """Forget a removed node (scale-in) and any placement still recorded on it."""
    session.execute(sa.delete(PlacementRow).where(PlacementRow.node_id == node_id))
    session.execute(sa.delete(NodeRow).where(NodeRow.node_id == node_id))


def restart_silence_clocks(session: Session) -> None:
    """A (re)started node manager has heard nobody yet: every node's silence counts from now.

    Without this a node recorded in an earlier life (a previous `aiot up`) looks silent for hours
    at the first poll and is declared down, and its provider retires the agent just started for it.
    """
    session.execute(sa.update(NodeRow).values(last_seen=utcnow()))


def list_nodes(session: Session) -> list[NodeRow]:
    return list(session.scalars(sa.select(NodeRow).order_by(NodeRow.node_id)))


def _load_of(node: NodeRow) -> dict[str, Any]:
    """What a node row says of its state and load (``NodeLoad`` and ``NodeReport`` share it)."""
    return {
        "node_id": node.node_id,
        "state": node.state,
        "main": node.main,
        "capacity": node.capacity,
        "cpu_percent": node.cpu_percent,
        "memory_used_mb": node.memory_used_mb,
        "memory_total_mb": node.memory_total_mb,
    }


def node_loads(session: Session) -> list[NodeLoad]:
    return [NodeLoad(**_load_of(node), services=node.services) for node in list_nodes(session)]


def nodes_report(session: Session) -> list[NodeReport]:
    """Every node with its recorded load and the services placed on it (``ListNodes``)."""
    placed: dict[str, list[PlacedService]] = {}
    for placement in list_placements(session):
        spec = ServiceSpec.model_validate_json(placement.spec)
        placed.setdefault(placement.node_id, []).append(
            PlacedService(
                service_id=placement.service_id,
                kind=spec.kind,
                state=cast(RunState, placement.state),
                restarts=placement.restarts,
                started_at=placement.started_at,
            )
        )
    return [
        NodeReport(
            **_load_of(node),
            host=node.host,
            runtime=node.runtime,
            last_seen=node.last_seen,
            services=placed.get(node.node_id, []),
        )
        for node in list_nodes(session)
    ]


def read_placement(session: Session, service_id: str) -> PlacementRow:
    placement = session.get(PlacementRow, service_id)
    if placement is None:
        raise NotFound(f"service {service_id!r} is not placed on any node")
    return placement


def list_placements(session: Session, node_id: str | None = None) -> list[PlacementRow]:
    query = sa.select(PlacementRow).order_by(PlacementRow.service_id)
    if node_id is not None:
        query = query.where(PlacementRow.node_id == node_id)
    return list(session.scalars(query))


def save_placement(session: Session, spec: ServiceSpec, state: ServiceState) -> PlacementRow:
    placement = session.get(PlacementRow, spec.service_id)
    if placement is None:
        placement = PlacementRow(service_id=spec.service_id)
        session.add(placement)
    placement.node_id = state.node_id
    placement.spec = spec.model_dump_json()
    apply_state(placement, state)
    placement.placed_at = utcnow()
    return placement


def apply_state(placement: PlacementRow, state: ServiceState) -> None:
    placement.state = state.state
    placement.ports = json.dumps(state.ports)
    placement.pid = state.pid
    placement.container_id = state.container_id
    placement.restarts = state.restarts
    placement.started_at = state.started_at


def recorded_state(placement: PlacementRow) -> ServiceState:
    """The service's state as last recorded (agents' announcements keep it fresh)."""
    return ServiceState(
        service_id=placement.service_id,
        node_id=placement.node_id,
        state=cast(RunState, placement.state),
        runtime="",
        pid=placement.pid,
        container_id=placement.container_id,
        started_at=placement.started_at,
        restarts=placement.restarts,
        ports=json.loads(placement.ports or "{}"),
    )


def set_node_state(session: Session, node_id: str, state: str) -> None:
    node = session.get(NodeRow, node_id)
    if node is not None:
        node.state = state
