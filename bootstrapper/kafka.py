"""Apache Kafka as the platform's broker: jars from Maven Central, KRaft, one node or a small cluster.

Where Java 17+ is present, ``aiot up`` runs Apache Kafka (KRaft mode: each process is
broker and controller) on 127.0.0.1 under ``AIOT_HOME/kafka``; the tests run one per
session through the same class, and the cluster test three.

Life of a broker::

    fetch_jars()   mvn dependency:copy-dependencies of bootstrapper/kafka_jars/pom.xml into the jar
                   cache (kafka.jars_dir, once per machine; a marker names the pom it came from)
    KafkaBroker.start()
        write server.properties (listeners on 127.0.0.1, quorum voters, retention defaults,
                   small thread pools and buffers: a quiet idle broker)
        format     kafka.tools.StorageTool format (a fresh log dir: Kafka is transport, durable
                   state lives in the database and the bucket, as with Tansu)
        run        java -Xmx<heap> -cp 'JARS/*' kafka.Kafka server.properties
        wait       until it answers a metadata request (``wait_for_broker``)
    KafkaBroker.stop()   SIGTERM (controlled shutdown), SIGKILL after a grace

Without Java 17+, ``choose_broker`` falls back to the bundled Tansu (``bootstrapper.broker``)
and says so in one line.
"""

from __future__ import annotations

import base64
import hashlib
import importlib.resources
import os
import re
import shutil
import subprocess
import tempfile
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from pydantic import SecretStr

from bootstrapper.broker import BrokerProcess, wait_for_broker
from platform_core.nodes import PROCESS_ENVIRONMENT
from platform_sdk.errors import Unavailable
from platform_sdk.net import free_port
from platform_sdk.principals import BusSecrets, KafkaCredential, new_secret
from platform_sdk.runstate import private_dir, private_file
from platform_sdk.settings import KafkaSettings

Progress = Callable[[str], None]
ADMIN_USER = "admin"  # the broker's super user (SCRAM, created when the log dir is formatted)
SCRAM_MECHANISM = "SCRAM-SHA-256"
STOP_GRACE_S = 20.0
GC_FLAGS = {  # kafka.gc → the JVM's collector
    "serial": "-XX:+UseSerialGC",
    "parallel": "-XX:+UseParallelGC",
    "g1": "-XX:+UseG1GC",
    "shenandoah": "-XX:+UseShenandoahGC",
}
_MARKER = ".aiot-complete"


def _resource(name: str) -> Path:
    found = importlib.resources.files("bootstrapper").joinpath("kafka_jars", name)
    return Path(str(found))


def pom_file() -> Path:
    return _resource("pom.xml")


def log_config_file() -> Path:
    return _resource("log4j2.properties")


def java_version(java: str = "java") -> int | None:
    """The major version of ``java``, or None when there is none."""
    path = shutil.which(java)
    if path is None:
        return None
    try:
        result = subprocess.run([path, "-version"], capture_output=True, text=True, timeout=30, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return None
    match = re.search(r'version "(\d+)(?:\.(\d+))?', result.stderr + result.stdout)
    if match is None:
        return None
    major = int(match.group(1))
    return int(match.group(2) or 0) if major == 1 else major


def java_ok(kafka: KafkaSettings) -> bool:
    return (java_version(kafka.java) or 0) >= 17


def jars_dir(kafka: KafkaSettings) -> Path:
    """The jar cache for ``kafka.kafka_version`` (per machine, shared by every AIOT_HOME)."""
    if kafka.jars_dir is not None:
        return kafka.jars_dir.expanduser()
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return cache / "aiot" / f"kafka-{kafka.kafka_version}"


def _pom_digest() -> str:
    return hashlib.sha256(pom_file().read_bytes()).hexdigest()[:16]


def jars_ready(kafka: KafkaSettings) -> bool:
    marker = jars_dir(kafka) / _MARKER
    return marker.is_file() and marker.read_text().strip() == _pom_digest()


def fetch_jars(kafka: KafkaSettings, progress: Progress = lambda _step: None) -> Path:
    """Copy the broker's jars from Maven Central into the cache, once; returns the cache folder.

    Maven resolves ``kafka_jars/pom.xml`` (with Maven's own cache, ~/.m2) into a temporary
    folder beside the cache, which then replaces it in one rename: a fetch cut short leaves
    no half cache.
    """
    target = jars_dir(kafka)
    if jars_ready(kafka):
        return target
    mvn = shutil.which("mvn")
    if mvn is None:
        raise Unavailable(
            "Maven (mvn) is not installed, so the Apache Kafka jars cannot be fetched: install Maven "
            "(apt-get install maven), or start with `aiot up --broker tansu`"
        )
    progress(f"fetching Apache Kafka {kafka.kafka_version} from Maven Central (once per machine, ~45 MB)")
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=target.parent))
    try:
        result = subprocess.run(
            [
                mvn, "-q", "-B", "-f", str(pom_file()),
                f"-Dkafka.version={kafka.kafka_version}",
                "dependency:copy-dependencies",
                f"-DoutputDirectory={staging}",
                "-DincludeScope=runtime",
            ],
            capture_output=True, text=True, timeout=900, check=False,
        )  # fmt: skip
        if result.returncode != 0 or not any(staging.glob("kafka_2.13-*.jar")):
            output = (result.stdout + result.stderr).strip().splitlines()[-15:]
            raise Unavailable(
                f"Maven could not fetch Apache Kafka {kafka.kafka_version} (exit {result.returncode}); "
                "check that Maven Central is reachable:\n" + "\n".join(output)
            )
        (staging / _MARKER).write_text(_pom_digest() + "\n")
        if target.exists():
            shutil.rmtree(target)
        staging.rename(target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target


def new_cluster_id() -> str:
    """A KRaft cluster id: 16 random bytes, URL-safe base64 without padding."""
    return base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")


def _jaas(module: str, username: str, password: str, **extra: str) -> str:
    options = {"username": username, "password": password, **extra}
    return f"{module} required " + " ".join(f'{key}="{value}"' for key, value in options.items()) + ";"


@dataclass(frozen=True)
class Voter:
    """A member of a cluster's controller quorum; ``host`` empty: ``kafka.host`` (one machine's cluster)."""

    node_id: int
    port: int
    controller_port: int
    host: str = ""


@dataclass
class KafkaBroker(BrokerProcess):
    """One Apache Kafka process (broker and controller) on ``kafka.host`` (127.0.0.1 by default), its
    log dir under ``directory``.

    Alone by default; ``voters`` (with a shared ``cluster_id``) make it one member of a cluster.
    ``listen_host`` and ``advertised_host`` put its client listener elsewhere (the compose
    deployment's broker: ``0.0.0.0``, advertised as ``kafka``); its controller stays on ``kafka.host``.
    """

    directory: Path
    kafka: KafkaSettings = field(default_factory=KafkaSettings)
    node_id: int = 1
    port: int = 0
    controller_port: int = 0
    voters: list[Voter] = field(default_factory=list)
    cluster_id: str = ""
    log_file: Path | None = None
    stop_grace_s: float = STOP_GRACE_S
    listen_host: str | None = None  # None: kafka.host
    advertised_host: str | None = None  # None: kafka.host
    # The super user's password (SCRAM on the client listener, PLAIN on the controller's): random
    # per broker (a cluster's members share one); the config that holds it is 0600.
    admin_password: str = field(default_factory=new_secret, repr=False)

    def __post_init__(self) -> None:
        self.port = self.port or free_port(self.kafka.host)
        self.controller_port = self.controller_port or free_port(self.kafka.host)
        self.cluster_id = self.cluster_id or new_cluster_id()
        if not self.voters:
            self.voters = [Voter(self.node_id, self.port, self.controller_port)]

    @property
    def bootstrap_servers(self) -> str:
        return f"{self.kafka.host}:{self.port}"

    @property
    def admin_credential(self) -> KafkaCredential:
        """The super user's credential (what sets up principals and ACLs)."""
        return KafkaCredential(
            username=ADMIN_USER, password=SecretStr(self.admin_password), mechanism=SCRAM_MECHANISM
        )

    def bus_secrets(self) -> BusSecrets:
        """A secrets file naming this broker and its super user, for the platform to add its principals to."""
        return BusSecrets(
            bootstrap=self.bootstrap_servers,
            admin=ADMIN_USER,
            mechanism=SCRAM_MECHANISM,
            principals={ADMIN_USER: SecretStr(self.admin_password)},
        )

    @property
    def config_file(self) -> Path:
        return self.directory / "server.properties"

    @property
    def data_dir(self) -> Path:
        return self.directory / "data"

    def properties(self) -> dict[str, str]:
        """server.properties: KRaft on loopback; bounded defaults; a light footprint."""
        size = len(self.voters)
        replicas = str(min(size, 3))
        return {
            "process.roles": "broker,controller",
            "node.id": str(self.node_id),
            "controller.quorum.voters": ",".join(
                f"{voter.node_id}@{voter.host or self.kafka.host}:{voter.controller_port}"
                for voter in self.voters
            ),
            # Clients and brokers speak SASL/SCRAM on the one client listener (inter-broker traffic
            # too, as the super user); the controllers' listener takes SASL/PLAIN with the super
            # user's password from this file (SCRAM credentials live in the metadata log, which a
            # controller needs before it can read them). Nothing on either port is anonymous.
            "listeners": (
                f"SASL_PLAINTEXT://{self.listen_host or self.kafka.host}:{self.port},"
                f"CONTROLLER://{self.kafka.host}:{self.controller_port}"
            ),
            "advertised.listeners": f"SASL_PLAINTEXT://{self.advertised_host or self.kafka.host}:{self.port}",
            "controller.listener.names": "CONTROLLER",
            "inter.broker.listener.name": "SASL_PLAINTEXT",
            "listener.security.protocol.map": "SASL_PLAINTEXT:SASL_PLAINTEXT,CONTROLLER:SASL_PLAINTEXT",
            "sasl.enabled.mechanisms": SCRAM_MECHANISM,
            "sasl.mechanism.inter.broker.protocol": SCRAM_MECHANISM,
            "listener.name.sasl_plaintext.scram-sha-256.sasl.jaas.config": _jaas(
                "org.apache.kafka.common.security.scram.ScramLoginModule", ADMIN_USER, self.admin_password
            ),
            "listener.name.controller.sasl.enabled.mechanisms": "PLAIN",
            "sasl.mechanism.controller.protocol": "PLAIN",
            "listener.name.controller.plain.sasl.jaas.config": _jaas(
                "org.apache.kafka.common.security.plain.PlainLoginModule",
                ADMIN_USER,
                self.admin_password,
                **{f"user_{ADMIN_USER}": self.admin_password},
            ),
            "authorizer.class.name": "org.apache.kafka.metadata.authorizer.StandardAuthorizer",
            "allow.everyone.if.no.acl.found": "false",
            "super.users": f"User:{ADMIN_USER}",
            "log.dirs": str(self.data_dir),
            # Topics the platform creates carry their own class's configs (Topics.config_of);
            # these bound any other (auto-created or internal) topic.
            "num.partitions": "1",
            "default.replication.factor": replicas,
            "min.insync.replicas": "2" if size >= 3 else "1",
            "log.retention.hours": "24",
            "log.retention.bytes": str(256 * 1024 * 1024),
            "log.segment.bytes": str(64 * 1024 * 1024),
            "log.retention.check.interval.ms": "30000",
            "offsets.topic.replication.factor": replicas,
            "offsets.topic.num.partitions": "10",
            "offsets.retention.minutes": "1440",
            "transaction.state.log.replication.factor": replicas,
            "transaction.state.log.min.isr": "1",
            "transaction.state.log.num.partitions": "4",
            "share.coordinator.state.topic.replication.factor": replicas,
            "share.coordinator.state.topic.min.isr": "1",
            "group.initial.rebalance.delay.ms": "0",
            "message.max.bytes": str(8 * 1024 * 1024),
            # A small machine: few threads, a small log-cleaner buffer (its default takes 128 MB).
            "num.network.threads": "2",
            "num.io.threads": "2",
            "background.threads": "2",
            "num.replica.fetchers": "1",
            "num.recovery.threads.per.data.dir": "1",
            "log.cleaner.threads": "1",
            "log.cleaner.dedupe.buffer.size": str(8 * 1024 * 1024),
            # The controller appends a no-op record to the metadata log when idle, every 500 ms by
            # default: 0.02 of a core on its own. Every 5 s is plenty for one machine's brokers.
            "metadata.max.idle.interval.ms": "5000",
            # Alone, the controller fencing its own broker after the process was paused only
            # takes every partition's leader away for a while (see kafka.lone_broker_session_ms).
            **({"broker.session.timeout.ms": str(self.kafka.lone_broker_session_ms)} if size == 1 else {}),
            "auto.create.topics.enable": "true",
            "delete.topic.enable": "true",
        }

    def java_command(self, main: str, *args: str) -> list[str]:
        jars = jars_dir(self.kafka)
        heap = self.kafka.heap_mb
        return [
            shutil.which(self.kafka.java) or self.kafka.java,
            f"-Xmx{heap}m", f"-Xms{min(heap, 64)}m",
            GC_FLAGS[self.kafka.gc], "-XX:+ExitOnOutOfMemoryError",
            # Give heap back after a collection: an idle broker keeps a small heap, not its peak.
            "-XX:MinHeapFreeRatio=10", "-XX:MaxHeapFreeRatio=30",
            *(["-XX:TieredStopAtLevel=1"] if self.kafka.jit == "quick" else []),
            # Hand the compilers' freed scratch memory back to the system (JDK 17.0.9+; an older
            # JVM skips the flag): without it the C2 compiler's peaks stay resident.
            "-XX:+IgnoreUnrecognizedVMOptions", "-XX:TrimNativeHeapInterval=5000",
            "-Djava.awt.headless=true",
            f"-Dlog4j2.configurationFile={log_config_file()}",
            "-cp", f"{jars}/*",
            main, *args,
        ]  # fmt: skip

    def command(self) -> list[str]:
        return self.java_command("kafka.Kafka", str(self.config_file))

    def launch(self, *, detach: bool = False, env: dict[str, str] | None = None) -> None:
        """Start the JVM with at most two malloc arenas (``PROCESS_ENVIRONMENT``), as every Python
        process of the platform: its many threads' native buffers otherwise stay resident in up to
        eight arenas per core."""
        base = dict(os.environ) if env is None else env
        super().launch(detach=detach, env={**base, **PROCESS_ENVIRONMENT})

    def prepare(self, *, fresh: bool = True) -> None:
        """Write the config and format the log dir (a fresh one unless ``fresh`` is False)."""
        if not java_ok(self.kafka):
            raise Unavailable(
                f"Apache Kafka needs Java 17+ ('{self.kafka.java}' is missing or older): install a JDK "
                "(apt-get install openjdk-17-jre-headless), or start with `aiot up --broker tansu`"
            )
        if not jars_ready(self.kafka):
            raise Unavailable(
                f"the Apache Kafka jars are not in {jars_dir(self.kafka)}: run `aiot broker fetch` "
                "(`make up` and `make test` do)"
            )
        if fresh and self.data_dir.exists():
            shutil.rmtree(self.data_dir)
        private_dir(self.directory)
        # The config holds the super user's password: the owner's alone.
        private_file(self.config_file).write_text(
            "".join(f"{key}={value}\n" for key, value in self.properties().items())
        )
        if (self.data_dir / "meta.properties").exists():
            return
        result = subprocess.run(
            self.java_command(
                "kafka.tools.StorageTool", "format",
                f"--cluster-id={self.cluster_id}", "-c", str(self.config_file),
                "--add-scram", f"{SCRAM_MECHANISM}=[name={ADMIN_USER},password={self.admin_password}]",
            ),
            capture_output=True, text=True, timeout=120, check=False,
        )  # fmt: skip
        if result.returncode != 0:
            output = (result.stdout + result.stderr)[-2000:]
            raise Unavailable(f"formatting the Kafka log dir {self.data_dir} failed:\n{output}")

    def start(self, *, detach: bool = False, timeout: float | None = None, fresh: bool = True) -> None:
        """Prepare, launch and return once the broker answers; on failure nothing is left running."""
        self.prepare(fresh=fresh)
        self.launch(detach=detach)
        try:
            self.wait(timeout)
        except Unavailable:
            self.stop()
            raise

    def wait(self, timeout: float | None = None) -> None:
        wait = timeout or self.kafka.start_timeout_s
        try:
            wait_for_broker(
                self.bootstrap_servers, wait, alive=self.running, credential=self.admin_credential
            )
        except Unavailable as exc:
            raise Unavailable(f"{exc}\n{self._tail()}") from exc

    def _tail(self, lines: int = 15) -> str:
        if self.log_file is None or not self.log_file.exists():
            return ""
        text = self.log_file.read_text(errors="replace").splitlines()[-lines:]
        return "last broker output:\n" + "\n".join(text)


@dataclass
class KafkaCluster:
    """``size`` Kafka processes on loopback forming one KRaft cluster (each broker and controller)."""

    directory: Path
    size: int = 3
    kafka: KafkaSettings = field(default_factory=KafkaSettings)
    brokers: list[KafkaBroker] = field(default_factory=list, init=False)

    def __post_init__(self) -> None:
        voters = [Voter(node_id, free_port(), free_port()) for node_id in range(1, self.size + 1)]
        cluster_id = new_cluster_id()
        admin_password = new_secret()
        self.brokers = [
            KafkaBroker(
                self.directory / f"broker-{voter.node_id}",
                self.kafka,
                node_id=voter.node_id,
                port=voter.port,
                controller_port=voter.controller_port,
                voters=voters,
                cluster_id=cluster_id,
                admin_password=admin_password,
                log_file=self.directory / f"broker-{voter.node_id}.log",
            )
            for voter in voters
        ]

    @property
    def bootstrap_servers(self) -> str:
        return ",".join(broker.bootstrap_servers for broker in self.brokers)

    @property
    def admin_credential(self) -> KafkaCredential:
        return self.brokers[0].admin_credential

    def bus_secrets(self) -> BusSecrets:
        return self.brokers[0].bus_secrets().model_copy(update={"bootstrap": self.bootstrap_servers})

    def start(self, timeout: float | None = None) -> None:
        """Start every member at once (the quorum needs a majority) and wait for each."""
        try:
            for broker in self.brokers:
                broker.prepare()
            for broker in self.brokers:
                broker.launch()
            for broker in self.brokers:
                broker.wait(timeout)
        except BaseException:
            self.stop()
            raise

    def restart(self, broker: KafkaBroker, timeout: float | None = None) -> None:
        """Start a stopped or killed member again on its log dir (it rejoins and catches up)."""
        broker.stop(timeout=1)
        broker.prepare(fresh=False)
        broker.launch()
        broker.wait(timeout)

    def stop(self) -> None:
        for broker in self.brokers:
            broker.stop()

    @contextmanager
    def running(self) -> Iterator[KafkaCluster]:
        self.start()
        try:
            yield self
        finally:
            self.stop()
