"""Models run sandboxed, on both runtimes: a probe model tries what uploaded code must not do.

Two AI developers each upload the probe model (``tests/sandbox_probe``) to the shared end-to-end
platform of each runtime (``tests/fixtures/platforms.py``; it runs as root, so its agents
sandbox). Each probe answers what happened when it read the registry database, the CLI's
sessions, the other owner's upload and bundle, the agent's environment and ``/etc/shadow``, and
when it wrote beside the platform's code, into its venv and into its bundle: every attempt
fails, and the model answers all the same. Its identity (an owner's uid, no capabilities, no
new privileges) and environment (no database, bucket, SMTP or admin settings) come in the answer.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sysconfig
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from pydantic import SecretStr

from aiot.client import PlatformClient
from platform_core.nodes import ServiceSpec, StartService, agent_topic
from platform_sdk.bus import client_config
from platform_sdk.envelope import Envelope
from platform_sdk.errors import PlatformError
from platform_sdk.messages import Heartbeat, LogRecord
from platform_sdk.model_client import ModelClient
from platform_sdk.principals import KafkaCredential
from platform_sdk.settings import KafkaSettings, temporary_settings
from platform_sdk.topics import Topics
from tests.bus_clients import produce, unauthorized
from tests.platform_driver import AIOT, Platform, wait_until

pytestmark = [pytest.mark.slow, pytest.mark.service("kafka"), pytest.mark.timeout(900)]
PROBE = Path(__file__).resolve().parent / "sandbox_probe"
OWNERS = ("sandbox-ada", "sandbox-bob")
PASSWORD = "sandbox-probe-password-1"
UID_BASE = 200_000  # sandbox.uid_base's default
NO_CAPABILITIES = "0000000000000000"
# What a model's environment must not carry: the registry, the bucket, mail, the first
# configurer, the settings file, the agent's own settings.
FORBIDDEN = ("DATABASE", "BLOB", "AZURE", "SMTP", "MAIL", "AUTH", "CONFIG_FILE", "AIOT_AGENT__", "PASSWORD")


@pytest.fixture(scope="module")
def platform(e2e_platform: Platform) -> Platform:
    return e2e_platform


@pytest.fixture(scope="module")
def probes(platform: Platform, tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """The probe model uploaded once by each of two AI developers: owner → model id."""
    url = platform.status()["web_url"]
    folder = tmp_path_factory.mktemp("probes")
    models = {}
    for owner in OWNERS:
        platform.run("user", "add", owner, "--role", "ai_developer", "--password", PASSWORD, check=False)
        token = PlatformClient(url).post("/api/auth/login", json={"username": owner, "password": PASSWORD})[
            "token"
        ]
        copy = folder / owner
        shutil.copytree(PROBE, copy)
        manifest = json.loads((copy / "model.json").read_text())
        manifest["name"] = f"probe-{owner}"
        (copy / "model.json").write_text(json.dumps(manifest))
        result = subprocess.run(
            [*AIOT, "model", "upload", str(copy)],
            env={**platform.env, "AIOT_TOKEN": token},
            capture_output=True,
            text=True,
            timeout=600,
            check=False,
        )
        assert result.returncode == 0, f"upload as {owner} failed:\n{result.stdout}\n{result.stderr}"
        models[owner] = result.stdout.strip().splitlines()[-1]
    return models


@pytest.fixture
def client(platform: Platform) -> Iterator[ModelClient]:
    with (
        temporary_settings(platform.bus_settings()) as settings,
        ModelClient.from_settings(settings) as model_client,
    ):
        yield model_client


def ask(client: ModelClient, owner: str, reads: dict[str, str], writes: dict[str, str]) -> dict[str, Any]:
    answer = client.call(f"probe-{owner}", "probe", {"reads": reads, "writes": writes})
    assert isinstance(answer, dict)
    return answer


def agent_pid(platform: Platform) -> int:
    return next(
        process.pid
        for process in platform.processes()
        if process.environ().get("AIOT_SERVICE_ID", "").startswith("agent-")
    )


def test_a_probe_model_can_reach_nothing_but_its_bundle_and_scratch_and_still_answers(
    platform: Platform, probes: dict[str, str], client: ModelClient
) -> None:
    ada, bob = OWNERS
    other = ask(client, bob, {}, {})
    home = platform.home
    reads = {
        "registry database": home / "registry.db",
        "CLI session": home / "credentials.json",
        "other owner's upload": home / "bucket" / "models" / probes[bob] / "1.0.0.zip",
        "other owner's bundle": Path(other["identity"]["bundle"]) / "model.json",
        "agent's environment": Path(f"/proc/{agent_pid(platform)}/environ"),
        "shadow": Path("/etc/shadow"),
    }
    for name, path in reads.items():
        assert path.exists(), f"{name}: {path} should exist on the host for the attempt to mean something"
    writes = {
        "platform's home": home / "sandbox-probe.txt",
        "platform's site-packages": Path(sysconfig.get_paths()["purelib"]) / "sandbox-probe.txt",
        "platform's source": Path(__file__).resolve().parents[1] / "platform_sdk" / "sandbox-probe.txt",
    }
    answer = ask(client, ada, {k: str(v) for k, v in reads.items()}, {k: str(v) for k, v in writes.items()})

    attempts = answer["attempts"]
    allowed = {"write scratch", "read own bundle"}
    assert {name: attempts[name] for name in allowed} == dict.fromkeys(allowed, "ok"), attempts
    succeeded = {name: result for name, result in attempts.items() if name not in allowed and result == "ok"}
    assert succeeded == {}, f"the sandbox let these through: {succeeded}"
    assert {f"read {name}" for name in reads} | {f"write {name}" for name in writes} <= set(attempts)
    assert not any(path.exists() for path in writes.values())

    identity = answer["identity"]
    assert identity["uid"] >= UID_BASE
    assert identity["gid"] == identity["uid"]
    assert set(identity["groups"]) <= {identity["gid"]}
    assert identity["uid"] != other["identity"]["uid"], "two owners share a uid"
    status = identity["status"]
    assert status["NoNewPrivs"] == "1"
    assert status["CapEff"] == status["CapPrm"] == status["CapBnd"] == status["CapInh"] == NO_CAPABILITIES
    assert identity["cwd"] == identity["bundle"]

    environment = answer["environment"]
    # Its one secret is its own bus credential: its own principal, not a platform one's.
    assert environment["AIOT_KAFKA__SASL_USERNAME"] == f"aiot.inst.{environment['AIOT_SERVICE_ID']}"
    assert environment["AIOT_KAFKA__OWN_TOPICS"] == "true"
    assert "AIOT_KAFKA__SECRETS_FILE" not in environment
    own = {"AIOT_KAFKA__SASL_PASSWORD"}
    leaked = [key for key in environment if key not in own and any(word in key.upper() for word in FORBIDDEN)]
    assert leaked == [], f"secrets' settings in a model's environment: {leaked}"
    assert environment["HOME"] == environment["TMPDIR"]
    assert not environment["HOME"].startswith(str(home))
    assert environment["AIOT_BUNDLE_DIR"] == identity["bundle"]
    assert environment["AIOT_KAFKA__BOOTSTRAP_SERVERS"] == platform.status()["broker"]
    assert environment["AIOT_SERVICE_ID"].endswith("-r0")
    for key in ("AIOT_KAFKA__TOPIC_PREFIX", "AIOT_HEARTBEAT__INTERVAL_S", "AIOT_PORT_HTTP", "AIOT_NODE_ID"):
        assert key in environment, key

    # With that credential, what issue 14's probe sent is refused by the broker: a start of a shell
    # command on its agent's command topic, a log record and a heartbeat under another service's id.
    credential = KafkaCredential(
        username=environment["AIOT_KAFKA__SASL_USERNAME"],
        password=SecretStr(environment["AIOT_KAFKA__SASL_PASSWORD"]),
        mechanism=environment["AIOT_KAFKA__SASL_MECHANISM"],
        security_protocol=environment["AIOT_KAFKA__SECURITY_PROTOCOL"],
    )
    config = client_config(KafkaSettings(), environment["AIOT_KAFKA__BOOTSTRAP_SERVERS"], credential)
    topics = Topics(environment["AIOT_KAFKA__TOPIC_PREFIX"])
    marker = home / "forged-start"
    forged = {
        agent_topic(topics, environment["AIOT_NODE_ID"]): StartService(
            spec=ServiceSpec(service_id="forged", command=["/bin/sh", "-c", f"id > {marker}"])
        ),
        topics.logs: LogRecord(
            service_id="web", time=datetime.now(UTC), level="ERROR", logger="web", message="forged"
        ),
        topics.heartbeats: Heartbeat(
            service_id="web", seq=0, instance="forged", pid=1, host="node-1", interval_s=1.0
        ),
    }
    for topic, message in forged.items():
        error = produce(config, topic, Envelope.wrap(message, source="web"))
        assert unauthorized(error), f"{topic}: {error}"
    assert not marker.exists()


def test_an_owner_keeps_one_uid_and_owners_differ(
    platform: Platform, probes: dict[str, str], client: ModelClient
) -> None:
    first = {owner: ask(client, owner, {}, {})["identity"]["uid"] for owner in OWNERS}
    platform.run("restart", f"{probes[OWNERS[0]]}-v1.0.0-r0")
    answers: list[int] = []

    def answered() -> bool:
        try:
            answers.append(ask(client, OWNERS[0], {}, {})["identity"]["uid"])
        except PlatformError:
            return False
        return True

    wait_until(answered, 60, "the restarted probe answers")
    assert answers == [first[OWNERS[0]]]
    assert len(set(first.values())) == len(OWNERS)
    table = json.loads((platform.home / "sandbox" / "uids.json").read_text())
    assert {owner: table[owner] for owner in OWNERS} == first
