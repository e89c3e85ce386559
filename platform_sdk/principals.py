"""Who speaks on the bus: principal names and how a process finds its own credential.

On the Apache Kafka broker `aiot up` starts, every client authenticates with SASL/SCRAM
and the broker's ACLs say what each principal may do (docs/security.md, The bus). The
names carry the topic prefix, so many platforms share one broker:

    admin                              the broker's super user (aiot up, the owner's tools)
    <prefix>.svc.<service>             a platform service (node-manager, heartbeat, logger, ...)
    <prefix>.svc.platform              any other platform process of this home (simulators)
    <prefix>.agent.<node>              a node's service agent
    <prefix>.inst.<service>            one model replica or app instance (made by the node manager
                                       at its placement, removed when it is unplaced)

A process finds its credential (``kafka_credential``), first match wins:

1. ``kafka.sasl_username`` / ``kafka.sasl_password`` in its settings (AIOT_KAFKA__SASL_USERNAME,
   ...): an external cluster's, or the one the node manager gives a model replica or app
   instance in its spec (its agent passes it on, and nothing else);
2. the home's secrets file (``kafka.secrets_file``, default ``AIOT_HOME/secrets/kafka.json``,
   0600, written by `aiot up`) when it is for the broker in use: the principal of the process's
   own identity (``AIOT_SERVICE_ID``), ``<prefix>.svc.platform`` for another managed process,
   the super user for a process without an identity (the platform owner's CLI and tools);
3. none: PLAINTEXT (Tansu, an external cluster without SASL: the bus is single-user).
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from secrets import token_urlsafe
from typing import Any, Literal

from pydantic import BaseModel, Field, SecretStr

from platform_sdk.runstate import private_dir
from platform_sdk.settings import Settings

SECRETS_FILE = "kafka.json"
AGENT_SERVICE_PREFIX = "agent-"  # an agent's service id is agent-<node>
SHARED_PLATFORM = "platform"  # <prefix>.svc.platform: managed platform processes without their own
UPLOADED_KINDS = ("model", "app")  # services that run uploaded code: given a credential, never the file

Protocol = Literal["PLAINTEXT", "SASL_PLAINTEXT", "SASL_SSL"]


def new_secret() -> str:
    """A password for a bus principal: 32 random URL-safe characters."""
    return token_urlsafe(24)


def service_principal(prefix: str, service_id: str) -> str:
    """A platform service's principal."""
    return f"{prefix}.svc.{service_id}"


def agent_principal(prefix: str, node_id: str) -> str:
    """A node agent's principal."""
    return f"{prefix}.agent.{node_id}"


def instance_principal(prefix: str, service_id: str) -> str:
    """The principal of one model replica or app instance."""
    return f"{prefix}.inst.{service_id}"


class KafkaCredential(BaseModel):
    """One principal's SASL credential and how to use it."""

    username: str
    password: SecretStr
    mechanism: str = "SCRAM-SHA-256"
    security_protocol: Protocol = "SASL_PLAINTEXT"

    def environment(self) -> dict[str, str]:
        """This credential as the AIOT_KAFKA__* variables a process reads it from."""
        return {
            "AIOT_KAFKA__SECURITY_PROTOCOL": self.security_protocol,
            "AIOT_KAFKA__SASL_MECHANISM": self.mechanism,
            "AIOT_KAFKA__SASL_USERNAME": self.username,
            "AIOT_KAFKA__SASL_PASSWORD": self.password.get_secret_value(),
        }

    def client_properties(self) -> dict[str, Any]:
        """The librdkafka properties that authenticate as this principal."""
        return {
            "security.protocol": self.security_protocol,
            "sasl.mechanism": self.mechanism,
            "sasl.username": self.username,
            "sasl.password": self.password.get_secret_value(),
        }


class BusSecrets(BaseModel):
    """The secrets file: a broker's principals and their passwords, for one home's platform."""

    bootstrap: str = Field(description="The broker these principals exist on.")
    admin: str = Field(description="The super user's name (a key of principals).")
    mechanism: str = "SCRAM-SHA-256"
    security_protocol: Protocol = "SASL_PLAINTEXT"
    principals: dict[str, SecretStr] = Field(default_factory=dict, description="name → password")

    def environment(self, username: str) -> dict[str, str]:
        """``username``'s credential as the AIOT_KAFKA__* variables a process reads it from."""
        return self.credential(username).environment()

    def credential(self, username: str) -> KafkaCredential:
        return KafkaCredential(
            username=username,
            password=self.principals[username],
            mechanism=self.mechanism,
            security_protocol=self.security_protocol,
        )

    def principal_of(self, settings: Settings) -> str:
        """The principal a process of this home with ``settings`` speaks as."""
        service_id = settings.service_id
        if not service_id:
            return self.admin
        prefix = settings.kafka.topic_prefix
        if service_id.startswith(AGENT_SERVICE_PREFIX):
            name = agent_principal(prefix, service_id.removeprefix(AGENT_SERVICE_PREFIX))
        else:
            name = service_principal(prefix, service_id)
        if name in self.principals:
            return name
        shared = service_principal(prefix, SHARED_PLATFORM)
        return shared if shared in self.principals else self.admin


def secrets_path(settings: Settings) -> Path:
    return (settings.kafka.secrets_file or settings.home_dir / "secrets" / SECRETS_FILE).expanduser()


def read_bus_secrets(settings: Settings) -> BusSecrets | None:
    try:
        return BusSecrets.model_validate_json(secrets_path(settings).read_bytes())
    except (FileNotFoundError, PermissionError):
        return None


def bus_secrets_document(secrets: BusSecrets) -> dict[str, Any]:
    """``secrets`` as its file's JSON document, the passwords in clear (for a 0600 file only)."""
    data = secrets.model_dump(mode="json")
    data["principals"] = {name: value.get_secret_value() for name, value in secrets.principals.items()}
    return data


def write_bus_secrets(path: Path, secrets: BusSecrets) -> None:
    """Write ``secrets`` to ``path`` atomically, 0600 in a 0700 folder (never to the logs)."""
    private_dir(path.parent)
    data = bus_secrets_document(secrets)
    with tempfile.NamedTemporaryFile("w", dir=path.parent, delete=False, suffix=".tmp") as tmp:
        os.chmod(tmp.name, 0o600)
        json.dump(data, tmp, indent=2)
    os.replace(tmp.name, path)


def kafka_credential(settings: Settings, bootstrap: str | None) -> KafkaCredential | None:
    """This process's bus credential for ``bootstrap`` (see the module's docstring), or None."""
    kafka = settings.kafka
    if kafka.sasl_username:
        return KafkaCredential(
            username=kafka.sasl_username,
            password=kafka.sasl_password or SecretStr(""),
            mechanism=kafka.sasl_mechanism,
            security_protocol=kafka.security_protocol or "SASL_PLAINTEXT",
        )
    if kafka.security_protocol == "PLAINTEXT":
        return None
    found = read_bus_secrets(settings)
    if found is None or not bootstrap or found.bootstrap != bootstrap:
        return None
    return found.credential(found.principal_of(settings))
