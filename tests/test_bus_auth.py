"""The bus knows who speaks: SASL/SCRAM principals and ACLs on the session's Apache Kafka.

A platform's principals are made here as `aiot up` makes them (``BusAccess.add_platform``), with
their passwords in a secrets file of the test's home; a service agent runs in this process as
its node's principal. Then whoever is not the node manager or the heartbeat monitor tries to
make the agent start something: a client without the platform's credentials, one with a wrong
password, and a platform service's own principal. Each is refused by the broker, and the agent's
command topic, read to its end, holds nothing but what the node manager sent.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import confluent_kafka
import pytest
from pydantic import SecretStr

from bootstrapper.kafka import KafkaBroker
from node_manager import registry
from node_manager.service import NodeManagerService
from platform_core.bus_access import BusAccess, instance_acls
from platform_core.db import Database
from platform_core.nodes import (
    BusGrants,
    ListServices,
    ServiceSpec,
    ServiceState,
    ServiceStates,
    StartService,
    agent_topic,
)
from platform_sdk.bus import Bus, Requester, client_config
from platform_sdk.envelope import Envelope
from platform_sdk.errors import BadRequest, Forbidden
from platform_sdk.messages import Heartbeat, LogRecord
from platform_sdk.principals import (
    KafkaCredential,
    agent_principal,
    instance_principal,
    read_bus_secrets,
    service_principal,
    write_bus_secrets,
)
from platform_sdk.settings import KafkaSettings, Settings, temporary_settings
from platform_sdk.topics import Topics
from service_agent.agent import ServiceAgent
from service_agent.supervisor import Managed
from tests.bus_clients import produce, read_error, unauthorized
from tests.fixtures.components import broker_secrets_file
from tests.platform_driver import wait_until

pytestmark = pytest.mark.service("kafka")

NODE = "t-node"


@dataclass
class SecuredPlatform:
    settings: Settings  # the test's own (the broker's super user)
    secrets_file: Path
    access: BusAccess
    broker: KafkaBroker

    def as_service(self, service_id: str, **updates: Any) -> Any:
        """Settings of a platform process of this home with ``service_id`` (its own principal)."""
        return temporary_settings(
            {"service_id": service_id, "kafka.secrets_file": str(self.secrets_file), **updates}
        )

    def credential(self, principal: str) -> KafkaCredential:
        found = read_bus_secrets(self.settings.model_copy(update={"kafka": self._kafka()}))
        assert found is not None
        return found.credential(principal)

    def _kafka(self) -> KafkaSettings:
        return self.settings.kafka.model_copy(update={"secrets_file": self.secrets_file})


@pytest.fixture
def secured(kafka_settings: Settings, kafka_broker: KafkaBroker) -> Iterator[SecuredPlatform]:
    """The principals of a platform (node manager, monitor, logger, one agent) and their ACLs."""
    secrets_file = kafka_settings.home_dir / "secrets" / "kafka.json"
    secrets = read_bus_secrets(
        kafka_settings.model_copy(
            update={
                "kafka": kafka_settings.kafka.model_copy(
                    update={"secrets_file": broker_secrets_file(kafka_broker)}
                )
            }
        )
    )
    assert secrets is not None
    admin_bus = Bus(kafka_settings, source="test-admin")
    access = BusAccess(admin_bus)
    access.add_platform(secrets, ["node-manager", "heartbeat", "logger"], [NODE])
    write_bus_secrets(secrets_file, secrets)
    platform = SecuredPlatform(kafka_settings, secrets_file, access, kafka_broker)
    try:
        yield platform
    finally:
        access.delete_principals([name for name in secrets.principals if name != secrets.admin])
        admin_bus.close()


@pytest.fixture
def agent(secured: SecuredPlatform) -> Iterator[ServiceAgent]:
    """A service agent speaking as its node's principal, as `aiot up` starts one (commands refused)."""
    with secured.as_service(
        f"agent-{NODE}", **{"agent.node_id": NODE, "agent.port_range": "31300-31399"}
    ) as settings:
        service = ServiceAgent(settings)
        assert service.sdk.bus.credential is not None
        assert service.sdk.bus.credential.username == agent_principal(settings.kafka.topic_prefix, NODE)
        service.start()
        try:
            yield service
        finally:
            service.stop()


def forged_start(marker: Path) -> StartService:
    """What the probe of issue 14 sent: a shell command line that leaves a mark when it runs."""
    return StartService(
        spec=ServiceSpec(service_id="forged", command=["/bin/sh", "-c", f"id > {marker}; sleep 60"])
    )


def commands_sent(secured: SecuredPlatform, topic: str) -> list[str]:
    """The types of every record on ``topic``, read to its end as the super user."""
    bus = Bus(secured.settings, source="test-reader")
    try:
        return [envelope.type for envelope in bus.recent(topic, 1000)]
    finally:
        bus.close()


def test_nobody_but_the_node_manager_and_the_monitor_makes_an_agent_start_anything(
    secured: SecuredPlatform, agent: ServiceAgent, tmp_path: Path
) -> None:
    prefix = secured.settings.kafka.topic_prefix
    topic = agent_topic(agent.sdk.bus.topics, NODE)
    marker = tmp_path / "forged-ran"
    forged = Envelope.wrap(forged_start(marker), source="node-manager")
    bootstrap = secured.broker.bootstrap_servers
    kafka = KafkaSettings()

    # Without the platform's credentials: the broker takes no unauthenticated connection.
    anonymous = produce(client_config(kafka, bootstrap), topic, forged)
    assert anonymous is not None
    guessed = KafkaCredential(username=service_principal(prefix, "node-manager"), password=SecretStr("guess"))
    wrong_password = produce(client_config(kafka, bootstrap, guessed), topic, forged)
    assert wrong_password is not None

    # A platform service's own principal may use the platform's topics, but no agent's commands.
    logger = secured.credential(service_principal(prefix, "logger"))
    refused = produce(client_config(kafka, bootstrap, logger), topic, forged)
    assert refused is not None
    assert refused.code() == confluent_kafka.KafkaError.TOPIC_AUTHORIZATION_FAILED

    # An agent writes no agent's command topic either, its own included.
    own = secured.credential(agent_principal(prefix, NODE))
    assert produce(client_config(kafka, bootstrap, own), topic, forged) is not None

    # The node manager and the monitor do: the agent answers them, and runs nothing of the above.
    for commander in ("node-manager", "heartbeat"):
        with secured.as_service(commander) as settings:
            bus = Bus(settings)
            assert bus.credential is not None
            assert bus.credential.username == service_principal(prefix, commander)
            with Requester(bus) as requester:
                listed = requester.request(topic, ListServices(), ServiceStates, timeout=15)
            bus.close()
        assert listed.services == []
    assert commands_sent(secured, topic) == [ListServices.message_type] * 2
    assert not marker.exists()


def test_an_agent_reads_only_its_own_command_topic(secured: SecuredPlatform) -> None:
    prefix = secured.settings.kafka.topic_prefix
    other = f"{prefix}.commands.agent.other-node"
    Bus(secured.settings, source="test-admin").ensure_topics([other])
    own = secured.credential(agent_principal(prefix, NODE))
    consumer = confluent_kafka.Consumer(
        client_config(
            KafkaSettings(),
            secured.broker.bootstrap_servers,
            own,
            **{"group.id": f"{prefix}.probe", "enable.auto.commit": False},
        )
    )
    try:
        consumer.assign([confluent_kafka.TopicPartition(other, 0, confluent_kafka.OFFSET_BEGINNING)])
        error: confluent_kafka.KafkaError | None = None
        for _ in range(40):
            message = consumer.poll(0.5)
            if message is not None and message.error() is not None:
                error = message.error()
                break
        assert error is not None, "reading another agent's commands was not refused"
        assert error.code() == confluent_kafka.KafkaError.TOPIC_AUTHORIZATION_FAILED
    finally:
        consumer.close()


def test_an_agent_starts_only_the_platforms_modules(
    secured: SecuredPlatform, agent: ServiceAgent, tmp_path: Path
) -> None:
    """Even the node manager cannot make an agent run a command line or a module of its choosing."""
    marker = tmp_path / "ran"
    topic = agent_topic(agent.sdk.bus.topics, NODE)
    refused = [
        forged_start(marker),
        StartService(spec=ServiceSpec(service_id="odd", module="http.server")),
        StartService(
            spec=ServiceSpec(service_id="sneaky", module="logger", env={"PYTHONSTARTUP": str(marker)})
        ),
    ]
    with secured.as_service("node-manager") as settings:
        bus = Bus(settings)
        with Requester(bus) as requester:
            for command in refused:
                with pytest.raises(Forbidden):
                    requester.request(topic, command, ServiceStates, timeout=15)
            listed = requester.request(topic, ListServices(), ServiceStates, timeout=15)
        bus.close()
    assert listed.services == []
    assert not marker.exists()


def test_a_removed_principal_can_no_longer_log_in(secured: SecuredPlatform) -> None:
    prefix = secured.settings.kafka.topic_prefix
    name = service_principal(prefix, "logger")
    credential = secured.credential(name)
    assert name in secured.access.principals()
    assert secured.access.acls_of(name)
    secured.access.delete_principals([name])
    assert name not in secured.access.principals()
    # The broker answers a listing from its copy of the cluster's metadata, which takes the
    # controller's deletion a moment later (seen on a busy machine): wait for it, not for a time.
    wait_until(lambda: secured.access.acls_of(name) == [], 10, "the principal's ACLs gone from the listing")
    admin = confluent_kafka.admin.AdminClient(
        client_config(KafkaSettings(), secured.broker.bootstrap_servers, credential)
    )
    with pytest.raises(confluent_kafka.KafkaException):
        admin.list_topics(timeout=5)


FORGER = """
import sys
from platform_core.nodes import ServiceSpec, StartService, agent_topic
from platform_sdk.bus import Bus

bus = Bus()
producer = bus.producer()
forged = ServiceSpec(service_id="forged", command=["/bin/sh", "-c", "id > " + sys.argv[2]])
producer.send(agent_topic(bus.topics, sys.argv[1]), StartService(spec=forged))
producer.flush(15)
print(bus.credential.username if bus.credential else "-", producer.failed, producer.last_error)
"""


@pytest.fixture
def instance(secured: SecuredPlatform) -> Iterator[tuple[str, KafkaCredential]]:
    """A model replica's principal and topics, as the node manager makes them at its placement."""
    service_id = "m-v1.0.0-r0"
    like = secured.credential(service_principal(secured.settings.kafka.topic_prefix, "logger"))
    credential = secured.access.add_instance(service_id, BusGrants(), like)
    try:
        yield service_id, credential
    finally:
        secured.access.remove_instance(service_id)


@pytest.mark.parametrize("kind", ["model", "app"])
def test_uploaded_code_gets_its_own_credential_from_its_spec_and_cannot_forge_a_start(
    secured: SecuredPlatform,
    agent: ServiceAgent,
    instance: tuple[str, KafkaCredential],
    tmp_path: Path,
    kind: str,
) -> None:
    """A model replica's or app instance's environment, as the agent builds it: its own principal,
    from its spec (never the secrets file), which may not write an agent's commands."""
    service_id, credential = instance
    module = "ai_manager.serving" if kind == "model" else "platform_sdk.run_app"
    spec_env = {**credential.environment(), "AIOT_KAFKA__OWN_TOPICS": "true"}
    entry = Managed(spec=ServiceSpec(service_id=service_id, kind=kind, module=module, env=spec_env), ports={})
    env = agent.supervisor.environment(entry)
    assert env["AIOT_KAFKA__SASL_USERNAME"] == instance_principal(
        secured.settings.kafka.topic_prefix, service_id
    )
    assert (env["AIOT_KAFKA__SECURITY_PROTOCOL"], env["AIOT_KAFKA__SASL_MECHANISM"]) == (
        "SASL_PLAINTEXT",
        "SCRAM-SHA-256",
    )
    assert "AIOT_KAFKA__SECRETS_FILE" not in env
    marker = tmp_path / "forged-ran"
    result = subprocess.run(
        [sys.executable, "-c", FORGER, NODE, str(marker)],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    username, failed, error = result.stdout.split(maxsplit=2)
    assert (username, failed) == (credential.username, "1")
    assert "authoriz" in error.lower()
    assert commands_sent(secured, agent_topic(agent.sdk.bus.topics, NODE)) == []
    assert not marker.exists()

    # Without a credential in its spec it gets none: PLAINTEXT, which this broker refuses.
    bare = Managed(spec=ServiceSpec(service_id=service_id, kind=kind, module=module), ports={})
    bare_env = agent.supervisor.environment(bare)
    assert bare_env["AIOT_KAFKA__SECURITY_PROTOCOL"] == "PLAINTEXT"
    assert not any(key.startswith("AIOT_KAFKA__SASL_") for key in bare_env)


def test_an_instance_writes_only_its_own_topics_and_reads_only_its_devices(
    secured: SecuredPlatform, instance: tuple[str, KafkaCredential]
) -> None:
    """Issue 14: a model or app may write only its own heartbeats, logs and requests, read its
    replies and its bound sensors, and command its bound controllers."""
    service_id, credential = instance
    topics = Topics(secured.settings.kafka.topic_prefix)
    bound, unbound = "cam-1", "cam-2"
    admin_bus = Bus(secured.settings, source="test-admin")
    device_topics = [topics.device_data(d) for d in (bound, unbound)]
    device_topics += [topics.device_commands(d) for d in (bound, unbound)]
    admin_bus.ensure_topics([topics.heartbeats, topics.logs, *device_topics])
    grants = BusGrants(read=[topics.device_data(bound)], write=[topics.device_commands(bound)])
    credential = secured.access.add_instance(service_id, grants, credential)
    config = client_config(KafkaSettings(), secured.broker.bootstrap_servers, credential)
    beat = Envelope.wrap(
        Heartbeat(service_id="logger", seq=0, instance="x", pid=1, host="h", interval_s=1.0), source="logger"
    )
    record = Envelope.wrap(
        LogRecord(service_id="logger", time=beat.time, level="ERROR", logger="x", message="forged"),
        source="logger",
    )
    group = topics.instance_groups(service_id)[0]

    # Under another service's id on the shared topics: refused by the broker.
    for topic, forged in ((topics.heartbeats, beat), (topics.logs, record)):
        assert unauthorized(produce(config, topic, forged)), topic
    # On its own topics, and its bound controller's commands: taken.
    for topic in [
        topics.instance_topic(service_id, "heartbeats"),
        topics.instance_topic(service_id, "logs"),
        topics.instance_topic(service_id, "requests"),
        topics.device_commands(bound),
    ]:
        assert produce(config, topic, beat) is None, topic
    # Not an unbound controller's commands, nor its own replies (the platform answers there).
    for topic in (topics.device_commands(unbound), topics.instance_topic(service_id, "replies")):
        assert unauthorized(produce(config, topic, beat)), topic
    platform_producer = admin_bus.producer()
    for topic in (topics.device_data(bound), topics.instance_topic(service_id, "replies")):
        platform_producer.send(topic, beat)
    assert platform_producer.flush(15) == 0
    assert read_error(config, topics.device_data(bound), group) is None
    assert read_error(config, topics.instance_topic(service_id, "replies"), group) is None
    for topic in (topics.device_data(unbound), topics.heartbeats, topics.instance_topic(service_id, "logs")):
        assert unauthorized(read_error(config, topic, group)), topic
    admin_bus.close()


def test_an_unplaced_instance_leaves_no_principal_acl_or_topic(secured: SecuredPlatform) -> None:
    topics = Topics(secured.settings.kafka.topic_prefix)
    like = secured.credential(service_principal(topics.prefix, "logger"))
    admin = Bus(secured.settings, source="test-admin").admin()
    principal = instance_principal(topics.prefix, "a-1")
    for _ in range(2):  # placed twice (moved): one principal with a new password, no second set of ACLs
        secured.access.add_instance("a-1", BusGrants(read=[topics.device_data("d")]), like)
    assert principal in secured.access.principals()
    assert len(secured.access.acls_of(principal)) == len(
        instance_acls(topics.prefix, "a-1", BusGrants(read=[topics.device_data("d")]))
    )
    assert set(topics.instance_topics("a-1")) <= set(admin.list_topics(timeout=10).topics)
    secured.access.remove_instance("a-1")
    assert principal not in secured.access.principals()
    assert secured.access.acls_of(principal) == []
    wait_until(
        lambda: not set(topics.instance_topics("a-1")) & set(admin.list_topics(timeout=10).topics),
        30,
        "the instance's topics deleted",
    )


def test_an_instance_is_granted_device_topics_only(secured: SecuredPlatform) -> None:
    topics = Topics(secured.settings.kafka.topic_prefix)
    with pytest.raises(BadRequest):
        instance_acls(topics.prefix, "a-1", BusGrants(read=[topics.heartbeats]))
    with pytest.raises(BadRequest):
        instance_acls(topics.prefix, "a-1", BusGrants(write=[topics.device_data("d")]))


def test_the_node_manager_sweeps_what_no_placement_owns(secured: SecuredPlatform) -> None:
    """A principal and topics left behind (a node manager stopped between two steps, a late reply
    auto-creating a topic again) are removed by the node manager's sweep; a placed instance's stay."""
    topics = Topics(secured.settings.kafka.topic_prefix)
    like = secured.credential(service_principal(topics.prefix, "logger"))
    for service_id in ("a-placed", "a-orphan"):
        secured.access.add_instance(service_id, BusGrants(), like)
    with secured.as_service("node-manager") as settings:
        manager = NodeManagerService(settings)
        manager.database = Database.from_settings(settings)
        manager.database.migrate()
        manager.bus_access = BusAccess(manager.sdk.bus)
        spec = ServiceSpec(service_id="a-placed", kind="model", module="ai_manager.serving")
        state = ServiceState(service_id="a-placed", node_id=NODE, state="running", runtime="process")
        with manager.database.session() as session:
            registry.save_placement(session, spec, state)
        try:
            assert manager.sweep_instances() == ["a-orphan"]
        finally:
            manager.database.stop()
            manager.sdk.bus.close()
    principals = secured.access.principals()
    assert instance_principal(topics.prefix, "a-placed") in principals
    assert instance_principal(topics.prefix, "a-orphan") not in principals
    admin = Bus(secured.settings, source="test-admin").admin()
    wait_until(
        lambda: not set(topics.instance_topics("a-orphan")) & set(admin.list_topics(timeout=10).topics),
        30,
        "the orphan's topics deleted",
    )
    assert set(topics.instance_topics("a-placed")) <= set(admin.list_topics(timeout=10).topics)
    secured.access.remove_instance("a-placed")
