"""The sandbox's parts without a platform: the environment allow-list, owners' uids, failing closed.

The whole sandbox, on both runtimes, is ``tests/test_sandbox.py``.
"""

from __future__ import annotations

import json
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from platform_core.nodes import ServiceSpec
from platform_sdk.errors import Unavailable
from platform_sdk.settings import Settings, temporary_settings
from service_agent.sandbox import Sandboxes, UidTable, remove_root, sandbox_environment

SECRETS = {
    "database.url": "postgresql://aiot:db-secret@db/aiot",
    "blob.backend": "azure",
    "blob.azure_connection_string": "AccountKey=blob-secret",
    "mail.smtp_host": "smtp.example.com",
    "mail.smtp_password": "smtp-secret",
    "auth.admin_password": "admin-secret",
    "kafka.extra": {"sasl.password": "kafka-secret", "client.rack": "r1", "ssl.key.password": "k"},
    "kafka.session_timeout_ms": 7000,
}


def generated(settings: Settings) -> dict[str, str]:
    """What a supervisor generates for a model replica, and what an agent's environment would add."""
    return {
        "AIOT_HOME": str(settings.home_dir),
        "AIOT_SERVICE_ID": "m0123456789a-v1-r0",
        "AIOT_KAFKA__BOOTSTRAP_SERVERS": "127.0.0.1:9092",
        "AIOT_KAFKA__TOPIC_PREFIX": "aiot",
        "AIOT_KAFKA__SASL_USERNAME": "m0123456789a-v1-r0",
        "AIOT_KAFKA__SASL_PASSWORD": "the instance's own",
        "AIOT_NODE_ID": "node-1",
        "AIOT_SERVICE_HOST": "127.0.0.1",
        "AIOT_PORT_HTTP": "20001",
        "PYTHONUNBUFFERED": "1",
        "AIOT_MODEL__ID": "m0123456789a",
        # Never handed on, wherever they came from:
        "AIOT_DATABASE__URL": "postgresql://aiot:db-secret@db/aiot",
        "AIOT_MAIL__SMTP_PASSWORD": "smtp-secret",
        "AIOT_CONFIG_FILE": "/etc/aiot/production.toml",
        "AIOT_AGENT__NODE_ID": "node-1",
    }


def test_a_sandbox_gets_its_identity_the_bus_and_timings_and_no_secret(tmp_path: Path) -> None:
    with temporary_settings(SECRETS) as settings:
        spec = ServiceSpec(
            service_id="m0123456789a-v1-r0", kind="model", owner="ada", env={"AIOT_MODEL__ID": "m0123456789a"}
        )
        env = sandbox_environment(generated(settings), spec, settings, broker_kind="kafka", scratch=tmp_path)
    text = json.dumps(env)
    for secret in ("db-secret", "blob-secret", "smtp-secret", "admin-secret", "kafka-secret", "smtp.example"):
        assert secret not in text
    assert not [
        key for key in env if key.startswith(("AIOT_DATABASE", "AIOT_MAIL", "AIOT_BLOB", "AIOT_AUTH"))
    ]
    assert "AIOT_CONFIG_FILE" not in env
    assert "AIOT_AGENT__NODE_ID" not in env
    assert env["AIOT_KAFKA__SASL_PASSWORD"] == "the instance's own"  # what the supervisor set stays
    assert json.loads(env["AIOT_KAFKA__EXTRA"]) == {"client.rack": "r1"}
    assert env["AIOT_KAFKA__SESSION_TIMEOUT_MS"] == "7000"
    assert env["AIOT_KAFKA__BROKER"] == "kafka"
    assert env["HOME"] == env["TMPDIR"] == str(tmp_path)
    assert env["AIOT_MODEL__ID"] == "m0123456789a"
    assert {"AIOT_SERVICE_ID", "AIOT_PORT_HTTP", "AIOT_HEARTBEAT__INTERVAL_S", "PATH", "LANG"} <= set(env)
    # The SDK reads its settings back from exactly this environment (and nothing of AIOT_HOME).
    script = (
        "import json; from platform_sdk.settings import Settings; s = Settings(); "
        "print(json.dumps([s.kafka.session_timeout_ms, s.kafka.extra, s.database.url, s.service_id]))"
    )
    root = str(Path(__file__).resolve().parents[1])
    result = subprocess.run(
        [sys.executable, "-c", script],
        env={**env, "PYTHONPATH": root},
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    assert json.loads(result.stdout) == [7000, {"client.rack": "r1"}, None, "m0123456789a-v1-r0"]


def test_a_sandbox_never_gets_the_agents_own_bus_credential(tmp_path: Path) -> None:
    """On a bus where its agent speaks with a credential of its own (or finds the platform's in
    the secrets file), a model given no credential by the supervisor gets none of the agent's."""
    agents = {
        "kafka.security_protocol": "SASL_SSL",
        "kafka.sasl_username": "aiot.agent.node-1",
        "kafka.sasl_password": "agent-secret",
        "kafka.secrets_file": str(tmp_path / "kafka.json"),
    }
    with temporary_settings(agents) as settings:
        spec = ServiceSpec(service_id="m0123456789a-v1-r0", kind="model", owner="ada")
        bare = {key: value for key, value in generated(settings).items() if "SASL" not in key}
        env = sandbox_environment(bare, spec, settings, broker_kind="kafka", scratch=tmp_path)
    assert "agent-secret" not in json.dumps(env)
    assert not {
        "AIOT_KAFKA__SASL_USERNAME", "AIOT_KAFKA__SASL_PASSWORD", "AIOT_KAFKA__SECRETS_FILE",
        "AIOT_KAFKA__SECURITY_PROTOCOL", "AIOT_KAFKA__SASL_MECHANISM",
    } & set(env)  # fmt: skip


def test_an_owner_keeps_one_uid_and_owners_get_their_own(tmp_path: Path) -> None:
    path = tmp_path / "sandbox" / "uids.json"
    table = UidTable(path, base=200_000, count=1000)
    ada, bob = table.uid_of("ada"), table.uid_of("bob")
    assert ada != bob
    assert 200_000 <= min(ada, bob) <= max(ada, bob) < 201_000
    again = UidTable(path, base=200_000, count=1000)  # another agent of the home, or a restart
    assert (again.uid_of("bob"), again.uid_of("ada")) == (bob, ada)
    assert json.loads(path.read_text()) == {"ada": ada, "bob": bob}
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    full = UidTable(tmp_path / "full.json", base=300_000, count=1)
    full.uid_of("ada")
    with pytest.raises(Unavailable, match="no sandbox uid left"):
        full.uid_of("bob")


@pytest.mark.parametrize(
    ("updates", "refused"),
    [
        ({"sandbox.enabled": False}, True),
        ({"sandbox.enabled": False, "sandbox.allow_unsandboxed": True}, False),
        ({"sandbox.setpriv": "/nonexistent/setpriv"}, True),
    ],
)
def test_an_agent_that_cannot_sandbox_refuses_models_unless_allowed(
    settings: Settings, updates: dict[str, object], refused: bool
) -> None:
    spec = ServiceSpec(service_id="m0123456789a-v1-r0", kind="model", owner="ada", command=["true"])
    with temporary_settings(updates) as current:
        sandboxes = Sandboxes(current, process_runtime=True)
        sandboxes.check()
        try:
            if refused:
                with pytest.raises(Unavailable, match=r"sandbox\.allow_unsandboxed"):
                    sandboxes.prepare(spec, None)
            else:
                sandbox = sandboxes.prepare(spec, None)
                assert sandbox.uid is None  # the agent's own user, as allowed
                assert sandbox.scratch.is_dir()
                sandboxes.release(spec.service_id)
                assert not sandbox.scratch.exists()
        finally:
            sandboxes.close()
            remove_root(current)
