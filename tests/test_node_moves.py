"""The node manager's placements and its recovery of a lost node, decided against scripted agents.

The node manager runs on its real registry (SQLite in the test's home); the agents' answers
to ``StartService`` are scripted (a start may be held until others arrive, or never be
answered), and the incidents it publishes are collected. What is checked is what a user of
the platform would notice: a lost node's services run elsewhere soon, concurrently, the
platform's own first, each move announced, nothing started twice, and a node that does not
answer is passed over.
"""

from __future__ import annotations

import contextlib
import http.server
import threading
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from datetime import timedelta
from types import SimpleNamespace
from typing import Any

import pytest

from node_manager import registry
from node_manager.models import NodeRow, PlacementRow
from node_manager.service import NodeManagerService
from platform_core.db import Database, utcnow
from platform_core.nodes import (
    ListNodes,
    LoadSample,
    NodeAnnouncement,
    Placement,
    ServiceIncident,
    ServiceKind,
    ServiceSpec,
    ServiceState,
    ServiceStateReply,
    StartService,
)
from platform_sdk.envelope import Envelope, Message
from platform_sdk.errors import Timeout, Unavailable
from platform_sdk.settings import Settings, temporary_settings
from tests.platform_driver import wait_until


class Agents:
    """Every node's agent: answers starts (or not), optionally holding each until ``hold`` are in."""

    def __init__(self) -> None:
        self.started: list[tuple[str, str]] = []  # (node, service) in the order answered
        self.silent: set[str] = set()
        self.hold = 0
        self.hold_s = 5.0
        self.released = False
        self.in_flight = 0
        self.most_at_once = 0
        self._lock = threading.Condition()

    def hold_until(self, count: int, seconds: float = 5.0) -> None:
        """From now on, answer no start until ``count`` are in flight (or ``seconds`` passed)."""
        self.hold, self.hold_s, self.released = count, seconds, False

    def request(self, topic: str, message: Message, _reply: type[Any], timeout: float) -> Message:
        node_id = topic.rsplit(".", 1)[-1]
        assert isinstance(message, StartService), message
        if node_id in self.silent:
            raise Timeout(f"{node_id} did not answer within {timeout}s")
        with self._lock:
            self.in_flight += 1
            self.most_at_once = max(self.most_at_once, self.in_flight)
            self.released = self.released or self.in_flight >= self.hold
            self._lock.notify_all()
            self._lock.wait_for(lambda: self.released, timeout=self.hold_s)
            self.started.append((node_id, message.spec.service_id))
        with self._lock:
            self.in_flight -= 1
        state = ServiceState(
            service_id=message.spec.service_id, node_id=node_id, state="running", runtime="process"
        )
        return ServiceStateReply(state=state)


class Producer:
    """Collects what would go to ``events.incidents``."""

    bus = SimpleNamespace(topics=SimpleNamespace(incidents="incidents"))

    def __init__(self) -> None:
        self.incidents: list[ServiceIncident] = []

    def send(self, _topic: str, envelope: Envelope | Message, **_kwargs: Any) -> None:
        message = envelope.open(ServiceIncident) if isinstance(envelope, Envelope) else envelope
        assert isinstance(message, ServiceIncident)
        self.incidents.append(message)

    def flush(self, _timeout: float = 0) -> int:
        return 0


@pytest.fixture
def agents() -> Agents:
    return Agents()


@pytest.fixture
def producer() -> Producer:
    return Producer()


@pytest.fixture
def scale_outs() -> list[str]:
    return []


@pytest.fixture
def manager(
    settings: Settings,
    agents: Agents,
    producer: Producer,
    scale_outs: list[str],
    monkeypatch: pytest.MonkeyPatch,
) -> Iterator[NodeManagerService]:
    """A node manager on its own registry with nodes 1 to 3 up (capacity 6 each), not started."""

    def add_node() -> str:
        scale_outs.append("node-4")
        return "node-4"

    with temporary_settings({"node_manager.move_parallelism": 8}):
        service = NodeManagerService(settings, scale_out=add_node, retire_node=lambda _node: None)
        service.database = Database.from_settings(settings)
        service.database.migrate()
        monkeypatch.setattr(service, "requester", agents, raising=False)
        monkeypatch.setattr(service, "producer", producer, raising=False)
        with service.database.session() as session:
            for n in (1, 2, 3):
                registry.upsert_node(session, node_announcement(f"node-{n}"))
        yield service
        service.database.stop()


LIST = Envelope.wrap(ListNodes(), source="test")


def spec(service_id: str, kind: ServiceKind = "platform") -> ServiceSpec:
    return ServiceSpec(service_id=service_id, kind=kind, module="logger")


def placed_on(manager: NodeManagerService) -> dict[str, str]:
    with manager.database.session() as session:
        return {row.service_id: row.node_id for row in registry.list_placements(session)}


def lose(manager: NodeManagerService, node_id: str) -> None:
    with manager.database.session() as session:
        registry.set_node_state(session, node_id, "down")


def test_a_lost_nodes_services_are_started_elsewhere_at_the_same_time_and_announced(
    manager: NodeManagerService, agents: Agents, producer: Producer
) -> None:
    lost = [spec(f"app-{n}", "app") for n in range(4)]
    for service in lost:
        manager.place(service, avoid=["node-1", "node-3"])
    assert set(placed_on(manager).values()) == {"node-2"}
    lose(manager, "node-2")
    agents.hold_until(4)  # each start is answered only once all four have arrived: concurrent or stuck

    manager._rehome()

    assert agents.most_at_once == 4
    where = placed_on(manager)
    assert {where[s.service_id] for s in lost} <= {"node-1", "node-3"}
    assert sorted((i.service_id, i.kind) for i in producer.incidents) == [
        (s.service_id, "replaced") for s in lost
    ]
    assert all("moved off lost node node-2" in i.detail for i in producer.incidents)
    assert not manager._starting  # no start in flight is left counted, not even as zero


def test_without_room_for_everything_the_platform_moves_first_and_a_node_is_added(
    manager: NodeManagerService, agents: Agents, producer: Producer, scale_outs: list[str]
) -> None:
    # node-3 holds five apps; node-2 two platform services, two apps and a simulator.
    for n in range(5):
        manager.place(spec(f"filler-{n}", "app"), avoid=["node-1", "node-2"])
    lost = [
        spec("sim-home", "simulator"),
        spec("app-a", "app"),
        spec("app-b", "app"),
        spec("web"),
        spec("logger"),
    ]
    for service in lost:
        manager.place(service, avoid=["node-1", "node-3"])
    lose(manager, "node-2")
    lose(manager, "node-1")  # only node-3 is left, with room for one

    manager._rehome()
    manager._consider_scale_out()

    where = placed_on(manager)
    moved = {s for s, node in where.items() if node == "node-3"} - {f"filler-{n}" for n in range(5)}
    assert len(moved) == 1
    assert moved <= {"web", "logger"}  # the platform's own first
    assert where["sim-home"] == where["app-a"] == "node-2"  # still waiting for room
    assert scale_outs == ["node-4"]  # a node is asked for at once, not after scale_out_after_s
    assert [i.service_id for i in producer.incidents] == list(moved)


def test_two_placements_of_one_service_at_once_start_it_once(
    manager: NodeManagerService, agents: Agents
) -> None:
    agents.hold_until(2, 1.0)  # the first start waits for a second that must never come
    results: list[str] = []
    threads = [
        threading.Thread(target=lambda: results.append(manager.place(spec("web")).node_id)) for _ in range(2)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(15)
    assert [service for _node, service in agents.started] == ["web"]
    assert len(results) == 2
    assert results[0] == results[1]


def test_a_node_that_does_not_answer_a_move_is_passed_over(
    manager: NodeManagerService, agents: Agents
) -> None:
    manager.place(spec("deployer"), avoid=["node-1", "node-3"])
    lose(manager, "node-2")
    agents.silent = {"node-1"}  # the least-loaded (first by name) does not answer

    manager._rehome()

    assert placed_on(manager)["deployer"] == "node-3"
    with manager.database.session() as session:
        states = {node.node_id: node.state for node in registry.list_nodes(session)}
        assert session.get(PlacementRow, "deployer") is not None
    assert states["node-1"] == "suspect"


def node_announcement(node_id: str, load: LoadSample | None = None) -> NodeAnnouncement:
    """What ``node_id``'s agent announces (capacity 6; node-1 is the main node)."""
    n = int(node_id.rsplit("-", 1)[-1])
    return NodeAnnouncement(
        node_id=node_id,
        host="127.0.0.1",
        http_url=f"http://127.0.0.1:{9000 + n}",
        capacity=6,
        runtime="process",
        main=n == 1,
        services=[],
        load=load,
    )


def announce(manager: NodeManagerService, node_id: str, *, cpu: float, services: int = 0) -> None:
    """``node_id``'s agent announces itself with its load, as it does every announce_interval_s."""
    load = LoadSample(
        node_id=node_id,
        cpu_percent=cpu,
        memory_used_mb=1000.0,
        memory_total_mb=8000.0,
        services=services,
        processes=services,
        capacity=6,
    )
    announcement = node_announcement(node_id, load)
    manager.on_announcement(announcement, Envelope.wrap(announcement, source=f"agent-{node_id}"))


def test_nodes_are_placed_by_their_announced_load_and_a_node_that_stops_announcing_goes_down(
    manager: NodeManagerService, agents: Agents
) -> None:
    retired: list[str] = []
    manager._retire_node = retired.append
    announce(manager, "node-1", cpu=95.0)
    announce(manager, "node-2", cpu=5.0)
    announce(manager, "node-3", cpu=60.0)
    assert manager.place(spec("web")).node_id == "node-2"  # the least loaded, as announced

    def silent_for(node_id: str, seconds: float) -> None:
        with manager.database.session() as session:
            node = session.get(NodeRow, node_id)
            assert node is not None
            node.last_seen = utcnow() - timedelta(seconds=seconds)

    settings = manager.settings.node_manager
    silent_for("node-2", settings.suspect_after_s + 0.5)
    silent_for("node-3", settings.down_after_s + 0.5)
    manager._check_silence()

    with manager.database.session() as session:
        states = {node.node_id: node.state for node in registry.list_nodes(session)}
    assert states == {"node-1": "up", "node-2": "suspect", "node-3": "down"}
    assert retired == ["node-3"]  # the provider retires it; _rehome moves its services next
    assert manager.place(spec("logger")).node_id == "node-1"  # the only node still announcing

    announce(manager, "node-2", cpu=10.0)  # heard again: up, with its new load
    with manager.database.session() as session:
        node = session.get(NodeRow, "node-2")
        assert node is not None
        assert (node.state, node.cpu_percent) == ("up", 10.0)


def test_while_no_node_is_heard_the_bus_stalled_and_no_node_goes_down(
    manager: NodeManagerService, agents: Agents
) -> None:
    retired: list[str] = []
    manager._retire_node = retired.append
    for n in (1, 2, 3):
        announce(manager, f"node-{n}", cpu=10.0)
    settings = manager.settings.node_manager
    # The broker paused longer than down_after_s: no announcement from anyone reached us.
    stalled_for = settings.down_after_s + 5
    with manager.database.session() as session:
        for node in registry.list_nodes(session):
            node.last_seen = utcnow() - timedelta(seconds=stalled_for)
    manager._last_announcement -= stalled_for

    manager._check_silence()
    assert retired == []

    announce(manager, "node-1", cpu=10.0)  # the bus is back: the first announcement arrives
    manager._check_silence()  # node-2 and node-3 have not announced yet, but their clocks restarted
    with manager.database.session() as session:
        states = {node.node_id: node.state for node in registry.list_nodes(session)}
    assert states == {"node-1": "up", "node-2": "up", "node-3": "up"}
    assert retired == []


def test_a_silent_node_whose_agent_still_answers_is_kept_until_it_does_not(
    manager: NodeManagerService, agents: Agents
) -> None:
    """After a broker stall one node's announcements may come late (its partition not led yet, its
    producer recovering): its agent still answers over HTTP, so its services are not moved (they
    would run twice); once the agent answers no more, the node goes down."""
    retired: list[str] = []
    manager._retire_node = retired.append
    for n in (1, 2):
        announce(manager, f"node-{n}", cpu=10.0)

    class AgentRoutes(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            body = b'{"services": []}'
            self.send_response(200 if self.path == "/services" else 404)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *_args: object) -> None:
            pass

    agent = http.server.ThreadingHTTPServer(("127.0.0.1", 0), AgentRoutes)
    serving = threading.Thread(target=agent.serve_forever)
    serving.start()
    try:
        with manager.database.session() as session:
            node = session.get(NodeRow, "node-2")
            assert node is not None
            node.http_url = f"http://127.0.0.1:{agent.server_address[1]}"
            node.last_seen = utcnow() - timedelta(seconds=manager.settings.node_manager.down_after_s + 1)
        manager._check_silence()
        with manager.database.session() as session:
            states = {node.node_id: node.state for node in registry.list_nodes(session)}
        assert states["node-2"] == "suspect"
        assert retired == []
    finally:
        agent.shutdown()
        serving.join()
        agent.server_close()

    manager._check_silence()  # the agent is gone too: the node is down and retired
    with manager.database.session() as session:
        node = session.get(NodeRow, "node-2")
        assert node is not None
        assert node.state == "down"
    assert retired == ["node-2"]


def test_the_nodes_report_holds_each_nodes_load_and_its_placed_services(manager: NodeManagerService) -> None:
    """What ``GET /api/nodes`` answers: ``ListNodes`` → every node with its load and services."""
    manager.place(spec("logger"), avoid=["node-2", "node-3"])
    manager.place(spec("app-x", "app"), avoid=["node-1", "node-3"])
    lose(manager, "node-3")
    report = manager.on_list_nodes(ListNodes(), Envelope.wrap(ListNodes(), source="test"))
    by_id = {node.node_id: node for node in report.nodes}
    assert sorted(by_id) == ["node-1", "node-2", "node-3"]
    assert [(s.service_id, s.kind) for s in by_id["node-1"].services] == [("logger", "platform")]
    assert [(s.service_id, s.kind) for s in by_id["node-2"].services] == [("app-x", "app")]
    assert by_id["node-3"].state == "down"
    assert by_id["node-3"].services == []
    assert by_id["node-1"].capacity == 6


def fill(manager: NodeManagerService, node_id: str) -> None:
    """Six services (its capacity) on ``node_id``."""
    others = [f"node-{n}" for n in (1, 2, 3) if f"node-{n}" != node_id]
    for n in range(6):
        manager.place(spec(f"filler-{node_id}-{n}", "app"), avoid=others)


@contextlib.contextmanager
def placing_with_no_room(manager: NodeManagerService, service_id: str) -> Iterator[Future[Placement]]:
    """Only node-1 up, and full: ``service_id``'s placement request, once it is listed as waiting."""
    lose(manager, "node-2")
    lose(manager, "node-3")
    fill(manager, "node-1")
    with ThreadPoolExecutor(1) as asking:
        placing = asking.submit(manager.place, spec(service_id, "app"), wait_for_room=True)
        wait_until(
            lambda: [w.service_id for w in manager.on_list_nodes(ListNodes(), LIST).waiting] == [service_id],
            10,
            "the placement listed as waiting",
        )
        yield placing


def test_a_placement_no_node_has_room_for_waits_listed_until_the_added_node_takes_it(
    manager: NodeManagerService, agents: Agents, producer: Producer, scale_outs: list[str]
) -> None:
    """The seed's "downtime while a VM is created": the request waits, visibly, instead of failing."""
    with placing_with_no_room(manager, "app-late") as placing:
        (waiting,) = manager.on_list_nodes(ListNodes(), LIST).waiting
        assert waiting.kind == "app"
        assert "no node has room (node-1 up 6/6" in waiting.reason
        assert [(i.service_id, i.kind) for i in producer.incidents] == [("app-late", "waiting")]
        manager._consider_scale_out()  # the control loop's next round: a node at once
        assert scale_outs == ["node-4"]
        assert not placing.done()
        announce(manager, "node-4", cpu=5.0)  # the new node joins
        assert placing.result(10).node_id == "node-4"
    assert manager.on_list_nodes(ListNodes(), LIST).waiting == []


def test_a_placement_waiting_for_room_gives_up_when_the_node_manager_stops(
    manager: NodeManagerService,
) -> None:
    """A stopping node manager does not keep its process alive for room_wait_s."""
    with placing_with_no_room(manager, "app-late") as placing:
        manager._end_waits()
        with pytest.raises(Unavailable, match="the node manager is stopping: ask again"):
            placing.result(5)


def test_a_placement_with_no_room_fails_at_once_without_a_provider_and_after_room_wait_s_with_one(
    manager: NodeManagerService, monkeypatch: pytest.MonkeyPatch
) -> None:
    lose(manager, "node-2")
    lose(manager, "node-3")
    fill(manager, "node-1")
    monkeypatch.setattr(manager.settings.node_manager, "room_wait_s", 0.5)
    with pytest.raises(Unavailable, match=r"no node can take 'app-x'.*no node with room joined within 0.5s"):
        manager.place(spec("app-x", "app"), wait_for_room=True)
    monkeypatch.setattr(manager, "_scale_out", None)
    with pytest.raises(Unavailable, match=r"no node can take 'app-y'.*the platform's provider adds no nodes"):
        manager.place(spec("app-y", "app"), wait_for_room=True)
    assert manager.on_list_nodes(ListNodes(), LIST).waiting == []
    assert "app-x" not in placed_on(manager)


def test_a_placement_whose_only_room_is_on_a_node_it_avoids_is_refused_at_once(
    manager: NodeManagerService, producer: Producer, scale_outs: list[str]
) -> None:
    """A second replica avoiding the first one's node: the asker shares that node rather than
    wait for (and have the provider add) one of its own."""
    lose(manager, "node-2")
    lose(manager, "node-3")
    with pytest.raises(Unavailable, match=r"no node can take 'model-r1'.*excluded \(node-1\)$"):
        manager.place(spec("model-r1", "model"), avoid=["node-1"], wait_for_room=True)
    manager._consider_scale_out()
    assert (producer.incidents, scale_outs) == ([], [])
