"""The bus's principals and ACLs on Apache Kafka: who may read and write which topics.

Every grant is under the platform's topic prefix (``<prefix>.``), so platforms sharing a
broker never see each other. Three kinds of principal (names: ``platform_sdk.principals``):

| principal | topics under ``<prefix>.`` | groups | cluster |
|---|---|---|---|
| ``svc.node-manager`` | all | ``<prefix>.*`` all | alter, describe (principals, ACLs) |
| ``svc.heartbeat`` | all | ``<prefix>.*`` all | — |
| any other ``svc.*`` | all, but **no write** to ``commands.agent.*`` | ``<prefix>.*`` all | — |
| ``agent.<node>`` | write, create, describe; **no write** to | ``<prefix>.*`` all | — |
|  | ``commands.agent.*``; read only ``commands.agent.<node>`` | | |
|  | and ``replies`` | | |
| ``inst.<service>`` | write its own ``inst.<service>.heartbeats``, | its own two | — |
|  | ``.logs``, ``.requests``; read its own ``.replies``; | (read, | |
|  | read its grants' ``read`` (its sensors' data, its | describe) | |
|  | controllers' state), write their ``write`` (its | | |
|  | controllers' commands); by literal name; nothing else | | |

A DENY beats an ALLOW in Kafka, so "all but" is an ALLOW on the prefix plus a DENY on the
agents' command topics. Only the node manager and the heartbeat monitor can write an agent's
command topic: nothing else on the bus can make an agent start anything. A model replica or
app instance (``inst.<service>``, made by the node manager at each placement with
``add_instance`` and removed with its topics by ``remove_instance``) cannot speak under another
service's id: whatever it says arrives on its own topics, which its readers file under its id.

This module and ``platform_sdk.bus`` are the only ones that talk to Kafka's admin API.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable
from concurrent.futures import Future
from typing import Any

import confluent_kafka
from confluent_kafka.admin import (  # type: ignore[attr-defined]
    AclBinding,
    AclBindingFilter,
    AclOperation,
    AclPermissionType,
    AdminClient,
    ResourcePatternType,
    ResourceType,
    ScramCredentialInfo,
    ScramMechanism,
    UserScramCredentialAlteration,
    UserScramCredentialDeletion,
    UserScramCredentialUpsertion,
)
from pydantic import SecretStr

from platform_core.nodes import BusGrants
from platform_sdk.bus import Bus, client_config
from platform_sdk.errors import BadRequest, Unavailable
from platform_sdk.principals import (
    SHARED_PLATFORM,
    BusSecrets,
    KafkaCredential,
    agent_principal,
    instance_principal,
    new_secret,
    service_principal,
)
from platform_sdk.topics import INSTANCE_TOPIC_KINDS, Topics

log = logging.getLogger(__name__)

# The services that may write an agent's command topic (start, stop, restart, probe).
AGENT_COMMANDERS = ("node-manager", "heartbeat")
# The service that creates principals and ACLs (instances at placement, agents that join).
PRINCIPAL_ADMINS = ("node-manager",)
SCRAM_ITERATIONS = 4096
_TIMEOUT_S = 15.0
_ATTEMPT_S = 5.0  # one admin request's wait before it is sent again (see _wait)


def _user(name: str) -> str:
    return f"User:{name}"


def _any_acl_of(principal: str) -> AclBindingFilter:
    """A filter that matches every ACL naming ``principal``."""
    anything: str = None  # type: ignore[assignment]  # the filter's wildcard
    return AclBindingFilter(
        ResourceType.ANY,
        anything,
        ResourcePatternType.ANY,
        _user(principal),
        anything,
        AclOperation.ANY,
        AclPermissionType.ANY,
    )


def _binding(
    principal: str,
    kind: ResourceType,
    name: str,
    operation: AclOperation,
    *,
    pattern: ResourcePatternType = ResourcePatternType.PREFIXED,
    permission: AclPermissionType = AclPermissionType.ALLOW,
) -> AclBinding:
    return AclBinding(kind, name, pattern, _user(principal), "*", operation, permission)


def service_acls(prefix: str, service_id: str) -> list[AclBinding]:
    """What the platform service ``service_id`` may do (see the module's table)."""
    return _platform_acls(prefix, service_principal(prefix, service_id), service_id)


def instance_acls(prefix: str, service_id: str, grants: BusGrants) -> list[AclBinding]:
    """What the model replica or app instance ``service_id`` may do (see the module's table), by
    literal names only. ``grants`` must name device topics of this platform (``BadRequest``)."""
    topics = Topics(prefix)
    allowed = {"read": ("device_data", "device_state"), "write": ("device_commands",)}
    for way, names in (("read", grants.read), ("write", grants.write)):
        odd = [name for name in names if topics.class_of(name) not in allowed[way]]
        if odd:
            raise BadRequest(f"{service_id} may not be granted to {way} {', '.join(odd)}")
    principal = instance_principal(prefix, service_id)
    reads = [topics.instance_topic(service_id, "replies"), *grants.read]
    writes = [
        *(topics.instance_topic(service_id, kind) for kind in INSTANCE_TOPIC_KINDS if kind != "replies"),
        *grants.write,
    ]
    literal = ResourcePatternType.LITERAL
    return [
        _binding(principal, kind, name, operation, pattern=literal)
        for kind, names, operation in (
            (ResourceType.TOPIC, reads, AclOperation.READ),
            (ResourceType.TOPIC, writes, AclOperation.WRITE),
            (ResourceType.TOPIC, [*reads, *writes], AclOperation.DESCRIBE),
            (ResourceType.GROUP, topics.instance_groups(service_id), AclOperation.READ),
            (ResourceType.GROUP, topics.instance_groups(service_id), AclOperation.DESCRIBE),
        )
        for name in dict.fromkeys(names)
    ]


def _no_agent_commands(prefix: str, principal: str) -> AclBinding:
    """The one rule that keeps ``principal`` from making any agent start anything: a DENY (which
    beats every ALLOW) on writing the agents' command topics."""
    return _binding(
        principal,
        ResourceType.TOPIC,
        f"{prefix}.commands.agent.",
        AclOperation.WRITE,
        permission=AclPermissionType.DENY,
    )


def _platform_acls(prefix: str, principal: str, service_id: str) -> list[AclBinding]:
    bindings = [
        _binding(principal, ResourceType.TOPIC, f"{prefix}.", AclOperation.ALL),
        _binding(principal, ResourceType.GROUP, f"{prefix}.", AclOperation.ALL),
    ]
    if service_id not in AGENT_COMMANDERS:
        bindings.append(_no_agent_commands(prefix, principal))
    if service_id in PRINCIPAL_ADMINS:
        for operation in (AclOperation.ALTER, AclOperation.DESCRIBE):
            bindings.append(
                _binding(
                    principal,
                    ResourceType.BROKER,
                    "kafka-cluster",
                    operation,
                    pattern=ResourcePatternType.LITERAL,
                )
            )
    return bindings


def agent_acls(prefix: str, node_id: str) -> list[AclBinding]:
    """What the agent of ``node_id`` may do: send its events, replies, heartbeats and logs; read
    its own command topic (and replies); write no agent's command topic."""
    principal = agent_principal(prefix, node_id)
    own = f"{prefix}.commands.agent.{node_id}"
    literal = ResourcePatternType.LITERAL
    return [
        *(
            _binding(principal, ResourceType.TOPIC, f"{prefix}.", operation)
            for operation in (AclOperation.WRITE, AclOperation.DESCRIBE, AclOperation.CREATE)
        ),
        _no_agent_commands(prefix, principal),
        _binding(principal, ResourceType.TOPIC, own, AclOperation.READ, pattern=literal),
        _binding(principal, ResourceType.TOPIC, f"{prefix}.replies", AclOperation.READ, pattern=literal),
        _binding(principal, ResourceType.GROUP, f"{prefix}.", AclOperation.ALL),
    ]


def _wait(request: Callable[[], dict[Any, Future[Any]]], what: str, *, gone_ok: bool = False) -> None:
    """Send an admin ``request`` and wait for each of its answers. One not answered within
    ``_ATTEMPT_S`` (sent to a broker of a cluster killed under it) is sent again, to the brokers
    still up, until ``_TIMEOUT_S``; the requests are idempotent. What the broker refuses (but,
    with ``gone_ok``, a deletion of what is already gone), or what no broker answers in time, is
    ``Unavailable`` naming it."""
    deadline = time.monotonic() + _TIMEOUT_S
    while True:
        try:
            for key, future in request().items():
                try:
                    future.result(timeout=max(0.1, min(_ATTEMPT_S, deadline - time.monotonic())))
                except confluent_kafka.KafkaException as exc:
                    if gone_ok and exc.args[0].code() == confluent_kafka.KafkaError.RESOURCE_NOT_FOUND:
                        continue
                    raise Unavailable(f"the broker refused to {what} ({key}): {exc.args[0].str()}") from exc
            return
        except TimeoutError:
            if time.monotonic() >= deadline:
                raise Unavailable(
                    f"no broker answered a request to {what} within {_TIMEOUT_S:g}s: is the broker up "
                    "(`aiot broker`)?"
                ) from None


class BusAccess:
    """Creates and removes principals and their ACLs, through an admin client of ``bus``.

    ``bus`` must speak as a principal allowed to (the super user, or the node manager's).
    """

    def __init__(self, bus: Bus) -> None:
        self.bus = bus
        self.prefix = bus.topics.prefix
        self._admin = AdminClient(bus.config())

    def upsert_principals(self, passwords: dict[str, SecretStr]) -> None:
        """Create (or give a new password to) each principal."""
        if not passwords:
            return
        info = ScramCredentialInfo(ScramMechanism.SCRAM_SHA_256, SCRAM_ITERATIONS)
        alterations: list[UserScramCredentialAlteration] = [
            UserScramCredentialUpsertion(name, info, password.get_secret_value().encode())
            for name, password in passwords.items()
        ]
        _wait(lambda: self._admin.alter_user_scram_credentials(alterations), "create principals")

    def delete_principals(self, names: Iterable[str]) -> None:
        """Remove each principal's credential (one already gone is fine) and every ACL naming it."""
        names = list(names)
        if not names:
            return
        deletions: list[UserScramCredentialAlteration] = [
            UserScramCredentialDeletion(name, ScramMechanism.SCRAM_SHA_256) for name in names
        ]
        _wait(lambda: self._admin.alter_user_scram_credentials(deletions), "delete principals", gone_ok=True)
        filters = [_any_acl_of(name) for name in names]
        _wait(lambda: self._admin.delete_acls(filters), "delete ACLs")

    def grant(self, bindings: list[AclBinding]) -> None:
        if bindings:
            _wait(lambda: self._admin.create_acls(bindings), "create ACLs")

    def acls_of(self, principal: str) -> list[AclBinding]:
        """The ACLs naming ``principal`` (for tests and `aiot status`)."""
        future = self._admin.describe_acls(_any_acl_of(principal))
        assert isinstance(future, Future)
        result: list[AclBinding] = future.result(timeout=_TIMEOUT_S)
        return result

    def principals(self) -> set[str]:
        """Every principal with a SCRAM credential on the broker."""
        future = self._admin.describe_user_scram_credentials()
        assert isinstance(future, Future)
        return set(future.result(timeout=_TIMEOUT_S))

    def add_platform(self, secrets: BusSecrets, services: Iterable[str], nodes: Iterable[str]) -> None:
        """Principals and ACLs for a platform's services (and ``platform``, for its other managed
        processes) and the agents of ``nodes``; their passwords are added to ``secrets``. Model
        replicas and app instances get theirs at placement (``add_instance``)."""
        self.add_principals(secrets, [*services, SHARED_PLATFORM], nodes)

    def add_principals(self, secrets: BusSecrets, services: Iterable[str], nodes: Iterable[str]) -> None:
        """Principals and ACLs for ``services`` and the agents of ``nodes``, added to ``secrets``."""
        created: dict[str, SecretStr] = {}
        bindings: list[AclBinding] = []
        for service_id in services:
            created[service_principal(self.prefix, service_id)] = SecretStr(new_secret())
            bindings += service_acls(self.prefix, service_id)
        for node_id in nodes:
            created[agent_principal(self.prefix, node_id)] = SecretStr(new_secret())
            bindings += agent_acls(self.prefix, node_id)
        self.upsert_principals(created)
        self.grant(bindings)
        secrets.principals.update(created)

    def add_agent(self, secrets: BusSecrets, node_id: str) -> None:
        """A principal and ACLs for the agent of a node that joins later (scale-out)."""
        self.add_principals(secrets, [], [node_id])

    def remove_agent(self, secrets: BusSecrets, node_id: str) -> None:
        """The principal and ACLs of a removed node's agent (scale-in), gone, and out of ``secrets``."""
        principal = agent_principal(self.prefix, node_id)
        self.delete_principals([principal])
        secrets.principals.pop(principal, None)

    def add_instance(self, service_id: str, grants: BusGrants, like: KafkaCredential) -> KafkaCredential:
        """The topics, principal (with a new password) and ACLs of the model replica or app
        instance ``service_id``; returns its credential (mechanism and protocol ``like``'s).

        Its topics are created first, by this bus (the instance may create none); a principal it
        had (an earlier placement) gets the new password, and ACLs it had are replaced.
        """
        bindings = instance_acls(self.prefix, service_id, grants)
        self.bus.ensure_topics(self.bus.topics.instance_topics(service_id))
        principal = instance_principal(self.prefix, service_id)
        password = SecretStr(new_secret())
        self.upsert_principals({principal: password})
        _wait(lambda: self._admin.delete_acls([_any_acl_of(principal)]), "delete ACLs")
        self.grant(bindings)
        credential = like.model_copy(update={"username": principal, "password": password})
        self._wait_login(credential, self.bus.bootstrap_servers)
        return credential

    def instances(self) -> set[str]:
        """The service ids that have an instance principal or instance topics on the broker."""
        head = instance_principal(self.prefix, "")
        found = {name.removeprefix(head) for name in self.principals() if name.startswith(head)}
        topics = self.bus.topics
        for topic in self._admin.list_topics(timeout=_TIMEOUT_S).topics:
            service_id = topics.instance_of(topic)
            if service_id is not None:
                found.add(service_id)
        return found

    def remove_instance(self, service_id: str) -> None:
        """The principal, ACLs and topics of the model replica or app instance ``service_id``, gone."""
        self.delete_principals([instance_principal(self.prefix, service_id)])
        self.bus.delete_topics(self.bus.topics.instance_topics(service_id))

    def wait_usable(self, secrets: BusSecrets, principal: str, timeout: float = _TIMEOUT_S) -> None:
        """Return once ``principal`` can log in (its credential reached the broker)."""
        self._wait_login(secrets.credential(principal), secrets.bootstrap, timeout)

    def _wait_login(self, credential: KafkaCredential, bootstrap: str, timeout: float = _TIMEOUT_S) -> None:
        principal = credential.username
        config = client_config(self.bus.settings.kafka, bootstrap, credential)
        admin = AdminClient(config)
        deadline = time.monotonic() + timeout
        while True:
            try:
                admin.list_topics(timeout=2.0)
                return
            except confluent_kafka.KafkaException as exc:
                if time.monotonic() > deadline:
                    raise Unavailable(f"principal {principal} cannot log in: {exc}") from exc
                time.sleep(0.05)
