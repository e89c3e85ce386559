"""The service agent as a platform service: its command topic and its node-internal HTTP.

    <prefix>.commands.agent.<node> ──▶ ConsumerLoop (manual assignment, no group join)
        StartService / StopService / RestartService / ListServices / ProbeService
            ──▶ Supervisor ──▶ reply
    every agent.announce_interval_s ──▶ NodeAnnouncement (with the psutil load sample) on
        <prefix>.events.nodes: the node manager places by it and counts a node silent without it
    GET /load      the same load sample, for `aiot status`
    GET /services  what runs here and its state
    every agent.bundle_check_interval_s: unpacked bundles that no service here runs in and
        whose zip left the bucket are removed (``service_agent.bundles``)

The HTTP server binds the node's own address (``agent.host``, 127.0.0.1 by
default) and serves public, node-internal routes only.
"""

from __future__ import annotations

import logging

import flask

from platform_core.auth import public
from platform_core.blobstore import blob_store_from_settings
from platform_core.http import HttpServer, create_internal_app
from platform_core.nodes import (
    ListServices,
    LoadSample,
    ProbeService,
    RestartService,
    ServiceProbe,
    ServiceStateReply,
    ServiceStates,
    StartService,
    StopService,
    agent_topic,
)
from platform_core.service import PeriodicTask, Service
from platform_sdk.bus import ConsumerLoop
from platform_sdk.envelope import Envelope
from service_agent.bundles import BundleCache
from service_agent.load import LoadMeter
from service_agent.runtime import ProcessRuntime, Runtime, VenvCache
from service_agent.sandbox import Sandboxes, sandbox_python
from service_agent.supervisor import Supervisor

log = logging.getLogger(__name__)


class ServiceAgent(Service):
    """Runs the services placed on this node."""

    name = "agent"

    def default_service_id(self) -> str:
        return f"agent-{self.settings.agent.node_id}"

    def make_runtime(self) -> Runtime:
        if self.settings.agent.runtime == "docker":
            from service_agent.docker_runtime import DockerRuntime  # needs the docker SDK and engine

            return DockerRuntime(self.settings)
        return self.process_runtime()

    def process_runtime(self) -> ProcessRuntime:
        home = self.settings.home_dir
        return ProcessRuntime(
            VenvCache(home / "venvs"),
            home / "work" / self.settings.agent.node_id,
            sandbox_venvs=VenvCache(
                self.sandboxes.venv_root, str(sandbox_python(self.settings)), shared=True
            ),
            setpriv=self.settings.sandbox.setpriv,
        )

    def on_start(self) -> None:
        agent = self.settings.agent
        bus = self.sdk.bus
        # Whether this node can confine models and apps is said once, loudly when it cannot.
        self.sandboxes = Sandboxes(self.settings, process_runtime=agent.runtime == "process")
        self.sandboxes.check()
        self.meter = LoadMeter(agent.load_scope)
        # Its routes answer from the supervisor: the server starts once that exists (the supervisor
        # asks for the server's URL only when it starts a service).
        self.server = HttpServer(self._http_app(), agent.host, agent.http_port, threads=4)
        bundles = BundleCache(
            self.settings.home_dir / "bundles" / agent.node_id, blob_store_from_settings(self.settings)
        )
        bundles.prune()  # nothing runs here yet: what is there is a previous run's
        self.supervisor = Supervisor(
            self.settings,
            bus,
            self.make_runtime(),
            lambda: self.server.url,
            host_runtime=self.process_runtime(),
            bundles=bundles,
            measure_load=self._load,
            sandboxes=self.sandboxes,
        )
        self.server.start()
        self.own(self.server)
        self.supervisor.start()
        self.own(self.supervisor)
        pruner = PeriodicTask("bundle-prune", agent.bundle_check_interval_s, bundles.prune)
        pruner.start()
        self.own(pruner)
        commands = ConsumerLoop(
            bus,
            [agent_topic(bus.topics, agent.node_id)],
            group=None,
            name=self.service_id,
            offset_reset="latest",
        )
        commands.add_handler(StartService, self._start)
        commands.add_handler(StopService, self._stop_service)
        commands.add_handler(RestartService, self._restart)
        commands.add_handler(ListServices, self._list)
        commands.add_handler(ProbeService, self._probe)
        commands.start()
        self.own(commands)  # stopped first: no new work while the services stop
        log.info("agent %s answers at %s", agent.node_id, self.server.url)

    def _start(self, command: StartService, _envelope: Envelope) -> ServiceStateReply:
        return ServiceStateReply(state=self.supervisor.start_service(command.spec))

    def _stop_service(self, command: StopService, _envelope: Envelope) -> ServiceStateReply:
        return ServiceStateReply(state=self.supervisor.stop_service(command.service_id))

    def _restart(self, command: RestartService, _envelope: Envelope) -> ServiceStateReply:
        return ServiceStateReply(
            state=self.supervisor.restart_service(command.service_id, force=command.force)
        )

    def _probe(self, command: ProbeService, _envelope: Envelope) -> ServiceProbe:
        return self.supervisor.probe(command.service_id)

    def _list(self, _command: ListServices, _envelope: Envelope) -> ServiceStates:
        return ServiceStates(node_id=self.settings.agent.node_id, services=self.supervisor.states())

    def _load(self) -> LoadSample:
        agent = self.settings.agent
        return self.meter.sample(
            agent.node_id, self.supervisor.pids(), agent.capacity, self.supervisor.running_count()
        )

    def _http_app(self) -> flask.Flask:
        blueprint = flask.Blueprint("agent", __name__)

        @blueprint.get("/load")
        @public
        def load() -> flask.Response:
            return flask.jsonify(self._load().model_dump())

        @blueprint.get("/services")
        @public
        def services() -> flask.Response:
            return flask.jsonify(
                services=[state.model_dump(mode="json") for state in self.supervisor.states()]
            )

        return create_internal_app(f"agent-{self.settings.agent.node_id}", [blueprint])
