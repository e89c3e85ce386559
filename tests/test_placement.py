"""Least-loaded placement: which node a new service lands on."""

from __future__ import annotations

from node_manager.placement import NodeLoad, choose_node


def node(
    node_id: str,
    *,
    cpu: float = 0.0,
    services: int = 0,
    capacity: int = 10,
    state: str = "up",
    main: bool = False,
) -> NodeLoad:
    return NodeLoad(
        node_id=node_id,
        state=state,
        main=main,
        capacity=capacity,
        services=services,
        cpu_percent=cpu,
        memory_used_mb=100.0,
        memory_total_mb=1000.0,
    )


def test_the_least_loaded_node_wins() -> None:
    busy, idle = node("node-1", cpu=90.0), node("node-2", cpu=5.0)
    assert choose_node([busy, idle]) == idle


def test_service_count_breaks_ties_so_services_spread() -> None:
    chosen = choose_node([node("node-1", services=3), node("node-2", services=1)])
    assert chosen is not None
    assert chosen.node_id == "node-2"


def test_a_full_node_takes_nothing_even_when_idle() -> None:
    full = node("node-1", services=4, capacity=4)
    loaded = node("node-2", cpu=80.0, services=1)
    assert choose_node([full, loaded]) == loaded
    assert choose_node([full]) is None


def test_down_suspect_and_avoided_nodes_are_skipped() -> None:
    nodes = [
        node("node-1", state="down"),
        node("node-2", state="suspect"),
        node("node-3", cpu=70.0),
        node("node-4"),
    ]
    chosen = choose_node(nodes, avoid=["node-4"])
    assert chosen is not None
    assert chosen.node_id == "node-3"


def test_main_only_services_go_to_the_main_node() -> None:
    chosen = choose_node([node("node-1", cpu=60.0, main=True), node("node-2")], main_only=True)
    assert chosen is not None
    assert chosen.node_id == "node-1"


def test_equal_nodes_are_chosen_deterministically() -> None:
    chosen = choose_node([node("node-b"), node("node-a")])
    assert chosen is not None
    assert chosen.node_id == "node-a"
