"""What the compose deployment's containers run (``docker-compose.yml``, docs/deploy-compose.md).

One host, four containers on the project's network; the ``kafka`` and ``main`` containers run
this module (the image built from ``deploy/compose/platform.Dockerfile``)::

    python -m bootstrapper.compose kafka
        Apache Kafka 4.4 in KRaft mode (``KafkaBroker``, as ``aiot up`` runs it): SASL/SCRAM on
        0.0.0.0:9092, advertised as ``kafka:9092``; the super user ``admin`` with the password of
        AIOT_COMPOSE_KAFKA_PASSWORD; its log dir on the volume at AIOT_HOME/kafka, formatted on
        the first start only. The process becomes the JVM (SIGTERM: a controlled shutdown).
    python -m bootstrapper.compose main
        the main node: writes the bus secrets file naming the kafka container's super user, then
        ``LocalPlatform.up(nodes=1)`` against the configured Kafka, PostgreSQL and bucket (one
        service agent running the node manager, the heartbeat monitor and the roster's
        services as processes in this container), with the first configurer's password from
        AIOT_COMPOSE_ADMIN_PASSWORD; marks itself ready (AIOT_HOME/run/compose-ready) and serves
        until SIGTERM or a dead agent, then ``down()``.
    python -m bootstrapper.compose health kafka|main
        the containers' healthchecks: the broker answers a metadata request as ``admin``; the
        main node marked itself ready and its front door answers ``/api/health``.

The passwords are taken out of this process's environment before anything starts, so no
platform process inherits them: each finds its own bus credential in the secrets file.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import threading
import urllib.error
import urllib.request
from pathlib import Path
from types import FrameType

KAFKA_PASSWORD_ENV = "AIOT_COMPOSE_KAFKA_PASSWORD"
ADMIN_PASSWORD_ENV = "AIOT_COMPOSE_ADMIN_PASSWORD"
KAFKA_PORT = 9092
KAFKA_CONTROLLER_PORT = 9093
KAFKA_HOST = "kafka"  # the kafka service's name on the project's network
READY_FILE = "compose-ready"
USAGE = "usage: python -m bootstrapper.compose kafka | main | health kafka|main"


class ComposeError(Exception):
    """A container cannot start: the message says what to set."""


def _take(variable: str) -> str:
    """The value of ``variable``, removed from this process's environment (children never see it)."""
    value = os.environ.pop(variable, "")
    if not value:
        raise ComposeError(f"{variable} is not set: give it in the compose env file (docs/deploy-compose.md)")
    return value


def _home() -> Path:
    return Path(os.environ.get("AIOT_HOME", "~/.aiot")).expanduser()


def ready_file(home: Path) -> Path:
    return home / "run" / READY_FILE


# kafka ------------------------------------------------------------------------------------------
def run_kafka() -> None:
    """Prepare the broker's config and log dir, then become the broker (never returns)."""
    from bootstrapper.kafka import KafkaBroker
    from platform_sdk.settings import get_settings

    settings = get_settings()
    broker = KafkaBroker(
        settings.home_dir / "kafka",
        settings.kafka,
        port=KAFKA_PORT,
        controller_port=KAFKA_CONTROLLER_PORT,
        listen_host="0.0.0.0",  # the project's network only: the port is not published
        advertised_host=KAFKA_HOST,
        admin_password=_take(KAFKA_PASSWORD_ENV),
    )
    broker.prepare(fresh=False)  # the volume's log dir survives restarts; formatted once
    command = broker.command()
    print(f"starting Apache Kafka {settings.kafka.kafka_version} on {KAFKA_HOST}:{KAFKA_PORT}", flush=True)
    os.execv(command[0], command)


def kafka_answers() -> bool:
    from confluent_kafka import KafkaException
    from confluent_kafka.admin import AdminClient

    admin = AdminClient(
        {
            "bootstrap.servers": f"127.0.0.1:{KAFKA_PORT}",
            "security.protocol": "SASL_PLAINTEXT",
            "sasl.mechanism": "SCRAM-SHA-256",
            "sasl.username": "admin",
            "sasl.password": os.environ.get(KAFKA_PASSWORD_ENV, ""),
        }
    )
    try:
        admin.list_topics(timeout=3.0)
    except KafkaException:
        return False
    return True


# main -------------------------------------------------------------------------------------------
def run_main() -> None:
    """The main node: up, ready, serve until SIGTERM (or a dead agent), down."""
    from pydantic import SecretStr

    from bootstrapper.kafka import ADMIN_USER, SCRAM_MECHANISM
    from bootstrapper.local import LocalPlatform
    from platform_sdk.principals import BusSecrets, secrets_path, write_bus_secrets
    from platform_sdk.settings import get_settings, temporary_settings

    kafka_password = _take(KAFKA_PASSWORD_ENV)
    admin_password = _take(ADMIN_PASSWORD_ENV)
    settings = get_settings()
    bootstrap = settings.kafka.bootstrap_servers
    if not bootstrap:
        raise ComposeError("AIOT_KAFKA__BOOTSTRAP_SERVERS is not set: the main node needs the kafka service")
    ready = ready_file(settings.home_dir)
    ready.unlink(missing_ok=True)
    # A fresh file naming only the super user: `up` adds every principal again with new passwords.
    write_bus_secrets(
        secrets_path(settings),
        BusSecrets(
            bootstrap=bootstrap,
            admin=ADMIN_USER,
            mechanism=SCRAM_MECHANISM,
            principals={ADMIN_USER: SecretStr(kafka_password)},
        ),
    )
    stop = threading.Event()

    def on_signal(_signum: int, _frame: FrameType | None) -> None:
        stop.set()

    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, on_signal)
    with temporary_settings({"auth.admin_password": admin_password}) as settings:
        platform = LocalPlatform(settings)
        result = platform.up(progress=lambda step: print(step, flush=True), nodes=1, runtime="process")
        if result.generated_password is not None:  # never: the password is given
            print("the first configurer's password was generated", flush=True)
        ready.write_text(json.dumps({"web_url": result.state.web_url}) + "\n")
        print(f"platform up: front door {result.state.web_url} (in the container)", flush=True)
        try:
            while not stop.wait(settings.cli.live_refresh_s):
                dead = [process.name for process in platform.status() if not process.running]
                if dead:
                    print(f"{', '.join(dead)} exited; stopping the platform", file=sys.stderr, flush=True)
                    break
        finally:
            ready.unlink(missing_ok=True)
            platform.down(progress=lambda step: print(step, flush=True))
            print("platform stopped", flush=True)


def main_ready() -> bool:
    """The main node marked itself ready and its front door answers."""
    try:
        web_url = json.loads(ready_file(_home()).read_text())["web_url"]
        with urllib.request.urlopen(f"{web_url}/api/health", timeout=3) as answer:
            return bool(answer.status == 200)
    except (OSError, ValueError, KeyError, urllib.error.URLError):
        return False


def main(argv: list[str]) -> int:
    try:
        match argv:
            case ["kafka"]:
                run_kafka()
            case ["main"]:
                run_main()
            case ["health", "kafka"]:
                return 0 if kafka_answers() else 1
            case ["health", "main"]:
                return 0 if main_ready() else 1
            case _:
                print(USAGE, file=sys.stderr)
                return 2
    except ComposeError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
