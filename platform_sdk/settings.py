"""Settings: one tree of pydantic-settings models for every platform process.

Every value comes, in order of precedence, from keyword overrides
(``temporary_settings``), ``AIOT_*`` environment variables (nested fields use
``__``: ``AIOT_KAFKA__BOOTSTRAP_SERVERS``), the TOML file named by
``AIOT_CONFIG_FILE`` (see ``configs/``), and finally the defaults, which give a
working single-machine platform under one data directory, ``AIOT_HOME``.

Nothing here reads ``os.environ`` outside pydantic-settings, and nothing is
cached in a module global: ``get_settings()`` builds the tree on demand, or
returns the one a ``temporary_settings()`` block installed for this context.
"""

from __future__ import annotations

import contextlib
import contextvars
import re
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, Field, SecretStr
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

from platform_sdk.artifacts import AppInstanceConfig
from platform_sdk.device_documents import SimulatedDevice


class TopicClass(BaseModel):
    """How long one class of topics keeps its records (Kafka topic configs, set at creation)."""

    retention_ms: int = Field(ge=60_000, description="Records older than this are deleted (retention.ms).")
    retention_bytes: int = Field(
        ge=-1, description="Most bytes kept per partition (retention.bytes); -1: no size bound."
    )
    segment_ms: int = Field(
        ge=10_000, description="A segment is closed (and can be deleted) after this long (segment.ms)."
    )
    segment_bytes: int = Field(
        default=16 * 1024 * 1024, ge=1024 * 1024, description="Largest segment (segment.bytes)."
    )

    def configs(self) -> dict[str, str]:
        return {
            "retention.ms": str(self.retention_ms),
            "retention.bytes": str(self.retention_bytes),
            "segment.ms": str(self.segment_ms),
            "segment.bytes": str(self.segment_bytes),
        }


_MINUTE_MS = 60_000
_HOUR_MS = 60 * _MINUTE_MS
_MB = 1024 * 1024


class TopicRetentionSettings(BaseModel):
    """Retention by topic class: everything the bus carries is bounded by time and by bytes."""

    heartbeats: TopicClass = Field(
        default=TopicClass(retention_ms=5 * _MINUTE_MS, retention_bytes=16 * _MB, segment_ms=_MINUTE_MS),
        description="Heartbeats: only the last minutes matter to the monitor.",
    )
    replies: TopicClass = Field(
        default=TopicClass(retention_ms=5 * _MINUTE_MS, retention_bytes=16 * _MB, segment_ms=_MINUTE_MS),
        description="Replies to requests: read within seconds.",
    )
    logs: TopicClass = Field(
        default=TopicClass(retention_ms=_HOUR_MS, retention_bytes=128 * _MB, segment_ms=10 * _MINUTE_MS),
        description="Log records: the logger persists them within seconds; an hour covers its restarts.",
    )
    commands: TopicClass = Field(
        default=TopicClass(retention_ms=10 * _MINUTE_MS, retention_bytes=16 * _MB, segment_ms=2 * _MINUTE_MS),
        description="Commands to services, agents and controllers: stale after minutes.",
    )
    events: TopicClass = Field(
        default=TopicClass(retention_ms=24 * _HOUR_MS, retention_bytes=64 * _MB, segment_ms=_HOUR_MS),
        description="Domain events (deployments, app instances, incidents).",
    )
    device_data: TopicClass = Field(
        default=TopicClass(
            retention_ms=10 * _MINUTE_MS,
            retention_bytes=64 * _MB,
            segment_ms=2 * _MINUTE_MS,
            segment_bytes=8 * _MB,
        ),
        description="Sensor readings and camera frames, per device: the last minutes, at most 64 MB.",
    )
    device_state: TopicClass = Field(
        default=TopicClass(retention_ms=7 * 24 * _HOUR_MS, retention_bytes=8 * _MB, segment_ms=_HOUR_MS),
        description="Controller states, per device: the latest is what counts.",
    )
    dead_letter: TopicClass = Field(
        default=TopicClass(retention_ms=7 * 24 * _HOUR_MS, retention_bytes=64 * _MB, segment_ms=_HOUR_MS),
        description="Records a handler failed on, kept for a week to look into.",
    )
    other: TopicClass = Field(
        default=TopicClass(retention_ms=24 * _HOUR_MS, retention_bytes=64 * _MB, segment_ms=_HOUR_MS),
        description="Any other topic under the platform's prefix.",
    )


class KafkaSettings(BaseModel):
    """How every process reaches the message bus, and the broker `aiot up` starts."""

    bootstrap_servers: str | None = Field(
        default=None,
        description=(
            "Kafka bootstrap servers (host:port,...). Empty: `aiot up` starts a broker on 127.0.0.1 "
            "(see kafka.broker) and records its address under AIOT_HOME."
        ),
    )
    broker: Literal["auto", "kafka", "tansu"] = Field(
        default="auto",
        description="Broker `aiot up` starts when no bootstrap servers are set: `kafka` (Apache Kafka, "
        "KRaft, needs Java 17+), `tansu` (bundled, in memory, short sessions only), `auto` (Kafka "
        "where Java 17+ is found, else Tansu). With bootstrap servers, `tansu` says they are a "
        "Tansu broker (clients then use a short fetch wait and no idempotence).",
    )
    host: str = Field(
        default="127.0.0.1",
        description="Address the broker `aiot up` starts listens on and announces (a main host's own "
        "address when `aiot bootstrap` installs it, so the other hosts reach it).",
    )
    kafka_version: str = Field(default="4.4.0", description="Apache Kafka release whose jars are fetched.")
    jars_dir: Path | None = Field(
        default=None,
        description="Where the broker's jars are cached (fetched once per machine with Maven). "
        "Empty: ~/.cache/aiot/kafka-VERSION.",
    )
    heap_mb: int = Field(
        default=512, ge=128, description="Heap cap (-Xmx) of the Kafka broker `aiot up` runs."
    )
    jit: Literal["quick", "full"] = Field(
        default="full",
        description="The broker's JIT: full is the JVM's tiered C1 and C2 (the device path's p99 at "
        "2,000 readings/s about halved on two cores against quick; docs/benchmarks.md), for about "
        "30 MB more memory and a few seconds more at start. quick compiles with C1 only: for "
        "short-lived brokers (the test suite's).",
    )
    gc: Literal["serial", "parallel", "g1", "shenandoah"] = Field(
        default="serial",
        description="The broker's garbage collector: serial (least memory and idle CPU; young "
        "collections stop it for 7-11 ms, several a second under load), parallel, g1, or "
        "shenandoah (concurrent: pauses under a millisecond, for a few percent more CPU).",
    )
    java: str = Field(default="java", description="Java 17+ command that runs the broker.")
    start_timeout_s: float = Field(default=60.0, gt=0, description="Time the broker has to answer at start.")
    lone_broker_session_ms: int = Field(
        default=30_000,
        ge=3000,
        description="A broker running alone (its own controller): how long its controller waits for "
        "its heartbeat before fencing it. A whole-process pause shorter than this (a long GC, a "
        "stalled VM, SIGSTOP) leaves every partition led; a fenced broker is unfenced within seconds, "
        "but every client then looks for the leaders again. A restart after a crash (not after a stop) "
        "on the same log dir waits this long for the old registration to expire. A broker of a "
        "cluster keeps Kafka's own 9 s: there it is how soon a lost broker's partitions move.",
    )
    topic_prefix: str = Field(
        default="aiot",
        description="Prefix of every platform topic, so platforms can share a cluster.",
    )
    partitions: int = Field(default=4, ge=1, description="Partitions of topics the platform creates.")
    reply_partitions: int = Field(
        default=8, ge=1, description="Partitions of the one shared replies topic (a requester reads one)."
    )
    replication_factor: int = Field(
        default=-1,
        ge=-1,
        description="Replicas of each topic the platform creates; -1: the broker's default.",
    )
    min_insync_replicas: int | None = Field(
        default=None, ge=1, description="min.insync.replicas of each topic; empty: the broker's default."
    )
    retention: TopicRetentionSettings = Field(default_factory=TopicRetentionSettings)
    session_timeout_ms: int = Field(
        default=6000,
        description="Consumer group session timeout; low values make group joins fast.",
    )
    heartbeat_interval_ms: int = Field(
        default=2000,
        description="Consumer group heartbeat interval, a third of the session timeout (a rebalance "
        "reaches members within it; each member costs the broker a request per interval).",
    )
    metadata_refresh_ms: int = Field(
        default=30_000,
        ge=1000,
        description="How often every client refreshes topic metadata (errors such as a lost leader "
        "refresh it at once).",
    )
    socket_timeout_ms: int = Field(
        default=10_000,
        ge=5000,
        description="How long a request may go unanswered before a client drops the connection and "
        "looks for the partition's leader again (librdkafka's socket.timeout.ms, 60 s by default): a "
        "broker cut off by the network answers nothing, and its partitions' new leaders are used "
        "only once the client gives up on it. Above the longest fetch wait (fetch_wait_max_ms).",
    )
    instance_topics_refresh_ms: int = Field(
        default=1000,
        ge=100,
        description="How often the readers of every model replica's and app instance's own topics "
        "(the heartbeat monitor, the logger, the deployer) look for new ones: their consumers' "
        "metadata refresh, a request for the whole topic list each time.",
    )
    own_topics: bool = Field(
        default=False,
        description="This process is a model replica or app instance that speaks on topics of its own "
        "(<prefix>.inst.<service id>.heartbeats|logs|replies|requests). Set by the node manager with "
        "the instance's own bus credential; never set it by hand.",
    )
    fetch_wait_max_ms: int | None = Field(
        default=None,
        description="Longest time the broker may hold a fetch. Empty: 2000 on Apache Kafka (it answers "
        "a waiting fetch as soon as a record arrives), 5 on Tansu (it does not).",
    )
    request_timeout_s: float = Field(
        default=10.0, gt=0, description="Default timeout of a request/reply call."
    )
    security_protocol: Literal["PLAINTEXT", "SASL_PLAINTEXT", "SASL_SSL"] | None = Field(
        default=None,
        description="How clients reach the brokers. Empty: SASL_PLAINTEXT with SCRAM when a bus "
        "credential is found (sasl_username, or this home's secrets file for this broker), else "
        "PLAINTEXT (Tansu, or an external cluster without SASL: unauthenticated, single-user).",
    )
    sasl_mechanism: Literal["SCRAM-SHA-256", "SCRAM-SHA-512", "PLAIN"] = Field(
        default="SCRAM-SHA-256", description="SASL mechanism of sasl_username (an external cluster's)."
    )
    sasl_username: str | None = Field(
        default=None,
        description="This process's bus principal. Empty: a platform process of this home takes "
        "its own from the secrets file (kafka.secrets_file); a model or app instance is given its own "
        "by its agent.",
    )
    sasl_password: SecretStr | None = Field(default=None, description="Password of sasl_username.")
    secrets_file: Path | None = Field(
        default=None,
        description="The bus's principals and passwords (JSON, 0600) for this home's platform "
        "processes, written by `aiot up`. Empty: AIOT_HOME/secrets/kafka.json.",
    )
    extra: dict[str, str] = Field(
        default_factory=dict,
        description="Extra librdkafka properties (ssl.ca.location, sasl.* for Event Hubs, ...).",
    )


class DatabaseSettings(BaseModel):
    """The registry database."""

    url: str | None = Field(
        default=None,
        description="SQLAlchemy URL. Empty: a SQLite file (WAL) at AIOT_HOME/registry.db.",
    )
    echo: bool = Field(default=False, description="Log every SQL statement (debugging only).")


class BlobSettings(BaseModel):
    """The file bucket: uploads, bundles and collected logs."""

    backend: Literal["local", "azure"] = Field(
        default="local",
        description="`local` keeps blobs under a directory; `azure` uses Azure Blob.",
    )
    local_path: Path | None = Field(
        default=None, description="Directory of the local backend. Empty: AIOT_HOME/bucket."
    )
    azure_connection_string: SecretStr | None = Field(
        default=None, description="Azure Storage connection string (azure backend)."
    )
    azure_container: str = Field(default="aiot", description="Container that holds the platform's blobs.")


class WebSettings(BaseModel):
    """The platform's one HTTP front door."""

    host: str = Field(default="127.0.0.1", description="Address the front door binds.")
    port: int = Field(
        default=0, ge=0, le=65535, description="Port; 0 picks a free one, recorded in AIOT_HOME."
    )
    url: str | None = Field(
        default=None,
        description="Public base URL clients use. Empty: read from AIOT_HOME's run state.",
    )
    threads: int = Field(default=8, ge=1, description="Worker threads of the WSGI server.")
    max_upload_mb: int = Field(
        default=200,
        ge=1,
        description="Largest request body that is not JSON (a model or app upload), in MiB; a bigger "
        "one is refused with 413 before it is read.",
    )
    # Limits on input (docs/api.md, "Limits on input"): a request past one is refused with a 4xx.
    max_json_kb: int = Field(
        default=1024,
        ge=1,
        description="Largest JSON request body, in KiB; a bigger one is refused with 413 before it is "
        "read (Content-Length) or once that much has arrived (chunked).",
    )
    max_json_depth: int = Field(
        default=32,
        ge=2,
        le=200,
        description="Deepest nesting of arrays and objects in a JSON request body; deeper is refused "
        "with 400 before it is parsed.",
    )
    # How long a route waits on the bus for another domain before it answers 503 (or does without).
    ask_timeout_s: float = Field(
        default=5.0,
        gt=0,
        description="How long a route waits for another domain's answer on the bus (the device manager, "
        "the app manager, the AI manager, the deployer's instances for log scoping) before it answers 503.",
    )
    deployer_timeout_s: float = Field(
        default=30.0,
        gt=0,
        description="How long the model and schedule routes wait for the deployer's deployments and "
        "instances (a model listing then shows none; a schedule route answers 503).",
    )
    deployer_stop_timeout_s: float = Field(
        default=120.0,
        gt=0,
        description="How long a route that stops an app instance or deletes a model waits for the "
        "deployer to stop it on its node (503 after that).",
    )
    app_manager_timeout_s: float = Field(
        default=15.0,
        gt=0,
        description="How long deleting a model waits for the app manager to name the apps using it "
        "(503 unless forced).",
    )
    log_owners_ttl_s: float = Field(
        default=10.0,
        gt=0,
        description="How long the log routes trust an owner's answer (a model deleted and uploaded again "
        "by someone else changes who reads its logs within this).",
    )
    incidents_ttl_s: float = Field(
        default=5.0,
        ge=0,
        description="How long `GET /api/nodes` (and the portal's nodes page, polling it) reuses the "
        "newest incidents it read from the bus before reading them again (0: every request).",
    )
    device_list_budget_s: float = Field(
        default=5.0,
        gt=0,
        description="GET /api/devices reads the devices' latest readings and states for this long at "
        "most; devices not read by then show the last recorded value.",
    )


_TEN_YEARS_S = 10 * 365 * 24 * 3600.0


class AuthSettings(BaseModel):
    """Identity: the first platform configurer, login throttling and token lifetimes."""

    admin_username: str = Field(default="admin", description="Name of the first platform configurer.")
    admin_password: SecretStr | None = Field(
        default=None,
        description="Password of the first configurer. Empty: one is generated and printed once.",
    )
    # Accounts: login throttling and token lifetimes (web.identity).
    login_attempts: int = Field(
        default=5,
        ge=1,
        description="Failed logins for one username within login_window_s after which its logins are "
        "refused (429) for login_lockout_s; a successful login resets the count.",
    )
    login_address_attempts: int = Field(
        default=20,
        ge=1,
        description="The same for one client address, whatever usernames it tries.",
    )
    login_window_s: float = Field(
        default=300.0, gt=0, le=_TEN_YEARS_S, description="Window in which failed logins are counted."
    )
    login_lockout_s: float = Field(
        default=300.0,
        gt=0,
        le=_TEN_YEARS_S,
        description="How long a username or address is refused once locked out.",
    )
    login_tracked: int = Field(
        default=10_000,
        ge=100,
        description="Most usernames and addresses the front door tracks failed logins of (in memory; "
        "the least recently failing are forgotten first).",
    )
    token_lifetime_s: float = Field(
        default=30 * 24 * 3600.0,
        gt=0,
        le=_TEN_YEARS_S,
        description="Lifetime of a login token (a CLI session); then it answers 401 and its user "
        "logs in again.",
    )
    api_token_lifetime_s: float = Field(
        default=90 * 24 * 3600.0,
        gt=0,
        le=_TEN_YEARS_S,
        description="Lifetime of a named API token created without an expiry of its own.",
    )
    api_token_max_lifetime_s: float = Field(
        default=365 * 24 * 3600.0,
        gt=0,
        le=_TEN_YEARS_S,
        description="Longest lifetime a named API token may be created with.",
    )


class HeartbeatSettings(BaseModel):
    """The heartbeat every managed process sends."""

    interval_s: float = Field(default=1.0, gt=0, description="Seconds between two heartbeats.")


class LoggingSettings(BaseModel):
    """The SDK's log shipping and the logger service's batching."""

    level: str = Field(default="INFO", description="Level of records a managed process ships.")
    queue_size: int = Field(
        default=10_000, ge=1, description="Records a process buffers before it starts dropping."
    )
    flush_interval_s: float = Field(
        default=2.0, gt=0, description="Longest time the logger service holds records in memory."
    )
    batch_size: int = Field(default=1000, ge=1, description="Records that trigger an early flush.")


# What an agent runs (agent.allowed_modules): the platform's services and the runners of uploaded code.
PLATFORM_MODULES = (
    "bootstrapper.local_node_manager",
    "node_manager",
    "heartbeat",
    "logger",
    "web",
    "deployer",
    "device_manager",
    "scheduler",
    "simulators",
    "ai_manager.serving",
    "platform_sdk.run_app",
)


class AgentSettings(BaseModel):
    """One node's service agent."""

    node_id: str = Field(default="node-1", description="Name of this node.")
    main: bool = Field(default=False, description="Whether this is the main node (node manager, monitor).")
    host: str = Field(default="127.0.0.1", description="Address this node's services and HTTP bind.")
    http_port: int = Field(default=0, ge=0, le=65535, description="Port of /load and /services; 0 picks one.")
    capacity: int = Field(default=16, ge=1, description="Most services this node runs at once.")
    runtime: Literal["process", "docker"] = Field(default="process", description="How services are run.")
    port_range: str = Field(default="20000-29999", description="Ports handed to services, as FIRST-LAST.")
    load_scope: Literal["machine", "services"] = Field(
        default="machine",
        description="CPU and memory of the whole machine, or of this agent's services only "
        "(several agents on one machine, as `aiot up --nodes N` runs them).",
    )
    announce_interval_s: float = Field(
        default=1.0,
        gt=0,
        description="Seconds between announcements (address, load, services): the node manager places "
        "by them and counts a node silent without them (node_manager.suspect_after_s).",
    )
    stop_timeout_s: float = Field(default=5.0, gt=0, description="Grace before a stopping service is killed.")
    supervise_interval_s: float = Field(default=0.2, gt=0, description="How often exits are looked for.")
    restart_backoff_s: list[float] = Field(
        default_factory=lambda: [0.0, 1.0, 2.0, 5.0, 10.0, 30.0],
        description="Wait before the agent restarts a service of its own (restart=agent) after its 1st, "
        "2nd, ... quick exit in a row (the last repeats).",
    )
    stable_after_s: float = Field(
        default=10.0, gt=0, description="An exit after running this long is not quick: the row ends."
    )
    docker_base_image: str = Field(
        default="aiot-base:bookworm", description="Base image of generated Dockerfiles (docker runtime)."
    )
    bundle_check_interval_s: float = Field(
        default=60.0,
        gt=0,
        description="How often the unpacked bundles no service of this node runs in are checked against "
        "the bucket: those whose zip is gone (a deleted model or app) are removed.",
    )
    allowed_modules: list[str] = Field(
        default_factory=lambda: list(PLATFORM_MODULES),
        description="The modules a StartService may run (`python -m MODULE`): the platform's own services "
        "and runners (model replicas and app instances run their uploaded bundle through one). The "
        "roster's modules are allowed too. Anything else is refused.",
    )
    allow_commands: bool = Field(
        default=False,
        description="Run a StartService's command line instead of a module. For tests and benchmarks "
        "only: the agent then runs whatever anyone allowed to write its command topic asks.",
    )


class SandboxSettings(BaseModel):
    """How an agent confines uploaded code: model replicas and app instances (docs/security.md)."""

    enabled: bool = Field(
        default=True,
        description="Run every model replica and app instance as an unprivileged user of its owner's "
        "(no capabilities, no new privileges, its bundle read-only and a scratch folder; on docker a "
        "read-only container with only its bundle mounted). Needs an agent running as root.",
    )
    allow_unsandboxed: bool = Field(
        default=False,
        description="Where the agent cannot sandbox (not root, or sandbox.enabled false), run models "
        "and apps as the agent's own user anyway, for one team that trusts what it uploads; false: "
        "such an agent refuses to start them. `aiot up` run by a user other than root sets it true "
        "(saying so loudly) unless it is set.",
    )
    uid_base: int = Field(
        default=200_000,
        ge=1000,
        description="First uid (and gid) handed to an owner's sandboxes; no /etc/passwd entry is needed.",
    )
    uid_count: int = Field(
        default=100_000, ge=1, description="Size of the uid range: at most this many owners per node."
    )
    root: Path | None = Field(
        default=None,
        description="Where the sandboxes' bundles (a copy per owner), scratch folders and venvs live, "
        "outside AIOT_HOME (which they cannot enter); every folder above it must be enterable by "
        "others. Empty: /tmp/aiot-sandbox-<hash of AIOT_HOME>. Production: e.g. /var/lib/aiot-sandbox.",
    )
    python: Path | None = Field(
        default=None,
        description="Interpreter the process runtime's sandboxes run on (their venvs are made from it). "
        "Empty: the platform's own when others may run it, else /usr/bin/python3.X of the same version.",
    )
    setpriv: Path = Field(
        default=Path("/usr/bin/setpriv"),
        description="util-linux setpriv, which drops to the sandbox's uid on the process runtime.",
    )


class NodeManagerSettings(BaseModel):
    """Placement and node health."""

    check_interval_s: float = Field(
        default=1.0,
        gt=0,
        description="Seconds between two rounds of the control loop: silent nodes, moves, the roster, "
        "scale-out.",
    )
    suspect_after_s: float = Field(
        default=3.0, gt=0, description="A node not announced this long is silent: suspect, no placements."
    )
    instance_sweep_s: float = Field(
        default=60.0,
        gt=0,
        description="How often principals and topics of model replicas and app instances that are no "
        "longer placed are looked for and removed (left by a crash between steps, or a topic a late "
        "reply created again).",
    )
    down_after_s: float = Field(
        default=6.0,
        gt=0,
        description="A node silent this long is down and re-placed, unless its agent still answers over "
        "HTTP (node_manager.down_probe_timeout_s): then only its announcements are late on the bus.",
    )
    down_probe_timeout_s: float = Field(
        default=2.0,
        gt=0,
        description="How long the agent of a node about to be declared down has to answer its HTTP "
        "`/services` (an answer keeps the node suspect instead).",
    )
    scale_out_load: float = Field(default=0.85, gt=0, le=1, description="Score above which a node is busy.")
    scale_out_after_s: float = Field(
        default=30.0, gt=0, description="All nodes busy this long: ask the provider for one more."
    )
    max_nodes: int = Field(default=4, ge=1, description="Scale-out stops at this many nodes.")
    scale_in_load: float = Field(
        default=0.3,
        gt=0,
        le=1,
        description="Score under which a node is idle. Every node idle for scale_in_after_s: one node "
        "the provider added (scale-out) is drained (its services moved) and removed.",
    )
    scale_in_after_s: float = Field(
        default=300.0, gt=0, description="How long every node must stay idle before one added node goes."
    )
    scale_cooldown_s: float = Field(
        default=120.0,
        ge=0,
        description="No scale-in this long after a node joined or was removed (and no second removal): "
        "a load that comes and goes does not add and remove nodes in turn; a node that takes long "
        "to join (a VM, a spare host's bootstrap) gets the whole cooldown once it has.",
    )
    first_service_port: int = Field(
        default=20000,
        ge=1,
        le=64535,
        description="Ports of the nodes `aiot up` and scale-out start on this machine: node-N hands its "
        "services 1000 ports from this one + (N-1)·1000. Platforms sharing a machine (parallel test "
        "workers) take different ones.",
    )
    scale_out_join_s: float = Field(
        default=60.0, gt=0, description="How long a node the provider started has to announce itself."
    )
    start_timeout_s: float = Field(
        default=120.0,
        gt=0,
        description="How long an agent has to answer a start (a first start may build a venv or an "
        "image); a node that does not answer is suspect and another is tried.",
    )
    move_timeout_s: float = Field(
        default=20.0,
        gt=0,
        description="The same for a service moved off a lost node: short, so a slow node does not hold "
        "up the recovery (it ran before, so its venv or image exists).",
    )
    move_parallelism: int = Field(
        default=8, ge=1, description="A lost node's services are placed again this many at a time."
    )
    place_workers: int = Field(
        default=8,
        ge=1,
        description="Placement requests answered at once, each on a thread of the node manager's own "
        "(a start, or a wait for a node, can take minutes; locating and listing go on meanwhile).",
    )
    room_wait_s: float = Field(
        default=150.0,
        ge=0,
        description="How long a placement that finds no node with room waits for one, where the "
        "provider can add nodes (it is asked for one at once): the placement is listed as waiting "
        "(`GET /api/nodes`, the portal's nodes page) and a 'waiting' incident says so. 0 refuses "
        "at once. Keep it plus start_timeout_s within place_wait_s (the asker's wait).",
    )
    place_wait_s: float = Field(
        default=300.0,
        gt=0,
        description="How long a service that asks for a placement (the deployer; the device manager for "
        "a location's simulator host, also when it asks where that runs) waits for the node manager's "
        "answer: a first start may build a venv or an image.",
    )
    locate_wait_s: float = Field(
        default=10.0, gt=0, description="How long a LocateService waits for the node manager's answer."
    )
    unplace_wait_s: float = Field(
        default=60.0, gt=0, description="How long an UnplaceService waits for the node manager's answer."
    )
    stop_wait_s: float = Field(
        default=30.0,
        gt=0,
        description="How long the node manager waits for an agent to stop a service it unplaces (one "
        "that does not answer: the placement is forgotten all the same, and logged).",
    )
    settle_s: float = Field(
        default=2.5,
        ge=0,
        description="After start, time to hear every agent's announcement before placing the roster "
        "(longer than agent.announce_interval_s), so the first placements see every node.",
    )
    roster_file: Path | None = Field(
        default=None, description="Service roster (TOML). Empty: configs/roster.toml of the platform."
    )


class MonitorSettings(BaseModel):
    """The heartbeat monitor."""

    missed_beats: int = Field(
        default=3, ge=1, description="Missed intervals after which a service is silent."
    )
    start_grace_s: float = Field(default=10.0, gt=0, description="Time a (re)started service has to beat.")
    crash_loop_uptime_s: float = Field(default=5.0, gt=0, description="An exit sooner than this is a crash.")
    crash_loop_limit: int = Field(default=3, ge=1, description="Crashes in a row after which it gives up.")
    check_interval_s: float = Field(default=0.25, gt=0, description="How often silences are looked for.")
    move_wait_s: float = Field(
        default=150.0,
        gt=0,
        description="How long the monitor waits for the node manager to place a service elsewhere when "
        "its node's agent cannot restart it (its next decisions wait meanwhile).",
    )
    beats_batch_ms: int = Field(
        default=250,
        ge=0,
        le=1000,
        description="The monitor reads heartbeats in batches: the broker holds its fetch this long "
        "(unless 64 KB wait) instead of answering each beat alone. Every beat arrives at most this "
        "much later; the broker answers one fetch where it answered one per beat. 0: one per beat.",
    )
    probe_interval_s: float = Field(
        default=2.0, gt=0, description="A silent service's process is looked at again after this long."
    )
    hang_timeout_s: float = Field(
        default=10.0,
        gt=0,
        description="A silent process alive without progress (no CPU time, no I/O wait) this long is "
        "hung: restarted. One stopped (SIGSTOP), a zombie or gone is restarted at once.",
    )
    slow_grace_s: float = Field(
        default=30.0, gt=0, description="A silent service making progress is left running this long."
    )
    blind_fraction: float = Field(
        default=0.5,
        gt=0,
        le=1,
        description="At least this share of the watched services silent at once (and blind_min_silent): "
        "the monitor's view, not the services, is at fault; it restarts nothing.",
    )
    blind_min_silent: int = Field(default=3, ge=2, description="Fewest silent services that can blind.")
    agent_timeout_s: float = Field(
        default=15.0,
        gt=0,
        description="Time an agent has to answer a probe or a restart (a stop and a start).",
    )
    locate_timeouts_s: list[float] = Field(
        default_factory=lambda: [5.0, 10.0],
        description="Tries at asking the node manager where a service runs.",
    )
    restart_backoff_s: list[float] = Field(
        default_factory=lambda: [0.0, 1.0, 2.0, 5.0, 10.0, 30.0],
        description="Wait before a service's 1st, 2nd, ... restart in a row by the monitor (the last "
        "repeats); the row ends when it has run stable_after_s.",
    )
    stable_after_s: float = Field(
        default=10.0, gt=0, description="Beating this long after a restart ends the monitor's restart row."
    )
    node_restart_budget: int = Field(
        default=10, ge=1, description="At most this many restarts on one node a minute; the rest wait."
    )
    incidents_kept: int = Field(
        default=10_000, ge=100, description="Newest incidents kept in the monitor's table (older are pruned)."
    )


class ModelSettings(BaseModel):
    """Models: the REST wrapper of one replica (set by the deployer) and the SDK's calls."""

    dir: Path | None = Field(default=None, description="A replica's unpacked model (holds model.json).")
    id: str = Field(default="", description="A replica's model id.")
    version: str = Field(default="", description="A replica's model version.")
    call_timeout_s: float = Field(default=30.0, gt=0, description="Timeout of one model_call.")
    resolve_ttl_s: float = Field(
        default=30.0, gt=0, description="How long model_call trusts a resolved replica list."
    )


class DeployerSettings(BaseModel):
    """The deployer."""

    health_timeout_s: float = Field(
        default=180.0, gt=0, description="Time a new replica has to answer /health (venv or image build)."
    )
    smoke_timeout_s: float = Field(default=60.0, gt=0, description="Time the manifest's example may take.")


class DeviceSettings(BaseModel):
    """Simulated devices (a location's simulator host is configured by the device manager) and MQTT."""

    location: str = Field(default="", description="A simulator host's location (service sim-LOCATION).")
    simulated: list[SimulatedDevice] = Field(
        default_factory=list,
        description="The devices a simulator host plays, as JSON: a list of {id, type, parameters}.",
    )
    time_scale: float = Field(
        default=1.0, gt=0, description="Simulated seconds per real second (day curves of light, temperature)."
    )
    mqtt_url: str | None = Field(
        default=None, description="MQTT broker of real devices, mqtt://HOST:PORT; empty: no gateway."
    )
    mqtt_topic_prefix: str = Field(default="aiot", description="First level of the gateway's MQTT topics.")
    # MQTT device credentials (device_manager.mqtt_auth; docs/security.md, "MQTT devices").
    mqtt_password_file: Path | None = Field(
        default=None,
        description="Mosquitto's password_file, written by the device manager from the registry: each real "
        "device's username and PBKDF2-SHA512 hash, and the gateway's (the user:password of mqtt_url); "
        "empty: not written. Set it together with mqtt_acl_file.",
    )
    mqtt_acl_file: Path | None = Field(
        default=None,
        description="Mosquitto's acl_file, written by the device manager: each real device may use only "
        "its own topics, the gateway all of <prefix>/#; empty: not written.",
    )
    mqtt_pid_file: Path | None = Field(
        default=None,
        description="Mosquitto's pid_file: sent SIGHUP after the files change, so it reloads them (and "
        "drops clients whose credentials are gone); empty: see mqtt_reload_command.",
    )
    mqtt_reload_command: list[str] = Field(
        default_factory=list,
        description='Run after the files change instead of the SIGHUP, as JSON, e.g. ["systemctl", '
        '"reload", "mosquitto"]; neither set: Mosquitto reads the files when it next starts.',
    )
    mqtt_reload_timeout_s: float = Field(
        default=10.0, gt=0, description="Time mqtt_reload_command has to finish before it counts as failed."
    )
    mqtt_keepalive_s: int = Field(
        default=30, ge=5, description="MQTT keep-alive of the gateway's connection to the broker."
    )
    mqtt_reconnect_max_s: int = Field(
        default=30,
        ge=1,
        description="Longest wait between the gateway's reconnection attempts (from 1 s, doubling).",
    )
    command_timeout_s: float = Field(
        default=10.0,
        gt=0,
        description="How long a controller command waits for the device's answer (an app's command "
        "through the SDK, the front door's POST /api/devices/<name>/commands).",
    )
    gateway_command_timeout_s: float = Field(
        default=5.0,
        gt=0,
        description="How long the MQTT gateway waits for a real controller's state after forwarding it "
        "a command, before it answers that the device did not take it.",
    )
    gateway_refresh_s: float = Field(
        default=3.0,
        gt=0,
        description="How often the MQTT gateway rereads which real devices are registered.",
    )
    gateway_warn_interval_s: float = Field(
        default=10.0,
        gt=0,
        description="The gateway logs a dropped message at most once per topic and reason this often "
        "(then with the count of the others).",
    )
    state_read_timeout_s: float = Field(
        default=2.0,
        gt=0,
        description="Reading one device's latest reading or state from its topic (metadata, offsets and "
        "the fetch of its last record).",
    )
    state_record_interval_s: float = Field(
        default=30.0,
        gt=0,
        description="How often the device manager records every device's newest reading or state in "
        "the registry (at most a quarter of the device data topics' retention).",
    )


class AppSettings(BaseModel):
    """A running app instance (its process is configured by the deployer)."""

    instance: AppInstanceConfig | None = Field(
        default=None,
        description="An app instance's generated config, as JSON: its id, location, the devices "
        "bound to its aliases and the models behind them.",
    )


class SchedulerSettings(BaseModel):
    """The scheduler: starting scheduled runs, and mailing their users."""

    app_manager_timeout_s: float = Field(
        default=30.0, gt=0, description="How long a run's start waits for the app manager's answer."
    )
    start_retry_s: list[float] = Field(
        default_factory=lambda: [5.0, 15.0, 30.0, 60.0, 120.0],
        min_length=1,
        description="A run whose start failed for a passing reason (the app manager or Kafka did not "
        "answer) is started again after these waits, one after the other (the last repeats) until it "
        "starts or its window ends.",
    )
    mail_retry_interval_s: float = Field(
        default=30.0, gt=0, description="How often mails the SMTP server did not take are sent again."
    )


class CliSettings(BaseModel):
    """The `aiot` command's own waits."""

    live_refresh_s: float = Field(
        default=2.0, gt=0, description="How often `aiot up` in the foreground checks its processes."
    )
    schedule_wait_s: float = Field(
        default=300.0,
        gt=0,
        description="How long `aiot schedule create --now --wait` waits for the first instance to run.",
    )
    follow_poll_s: float = Field(
        default=1.0, gt=0, description="How often `aiot logs --follow` asks for new records."
    )


class BootstrapSettings(BaseModel):
    """`aiot bootstrap`: installing the platform on hosts over SSH (bootstrapper.remote)."""

    connect_timeout_s: float = Field(
        default=10.0, gt=0, description="How long an SSH connection (and its login) may take."
    )
    command_timeout_s: float = Field(
        default=600.0, gt=0, description="How long one remote step (an install, a start) may take."
    )
    ready_timeout_s: float = Field(
        default=180.0,
        gt=0,
        description="How long a host's platform may take to answer once started (the main host's "
        "broker, services and front door; another host's agent announcing itself).",
    )
    install_root: str = Field(
        default="/opt/aiot",
        description="Where a host's platform lives when its inventory entry names no root: the "
        "release's venv, the wheelhouse, settings and AIOT_HOME.",
    )
    kafka_port: int = Field(
        default=9092, ge=1, le=65535, description="The client port of a Kafka cluster's member on its host."
    )
    kafka_controller_port: int = Field(
        default=9093,
        ge=1,
        le=65535,
        description="The controller (quorum) port of a Kafka cluster's member on its host.",
    )


class AzureSettings(BaseModel):
    """The azure provider's waits (`aiot bootstrap --provider azure`); its subscription, region and
    sizes are in its own config file (docs/deploy-azure.md)."""

    poll_interval_s: float = Field(
        default=5.0,
        gt=0,
        description="How often a long-running Azure operation (a VM, a network) is asked for its state "
        "when Azure names no Retry-After.",
    )
    retry_total: int = Field(
        default=6,
        ge=0,
        description="Retries of one Azure request that failed for a passing reason "
        "(429 throttled, 5xx, a dropped connection).",
    )
    retry_backoff_s: float = Field(
        default=1.0,
        ge=0,
        description="Backoff of those retries: the first is at once, the n-th waits this·2^(n-1) s (at "
        "most retry_backoff_max_s); a Retry-After from Azure wins.",
    )
    retry_backoff_max_s: float = Field(default=60.0, gt=0, description="Longest wait between two retries.")
    read_timeout_s: float = Field(
        default=120.0, gt=0, description="How long one Azure request may wait for its answer."
    )
    operation_timeout_s: float = Field(
        default=1800.0,
        gt=0,
        description="How long one long-running operation (creating a VM, deleting a network) may take "
        "before `aiot bootstrap` or `aiot destroy` gives up on it, naming the host and step.",
    )
    progress_every_s: float = Field(
        default=30.0,
        gt=0,
        description="While an operation runs, a progress line every this long (host, step, state, time).",
    )


class MailSettings(BaseModel):
    """Mail to end users: SMTP when a host is set, else the outbox in the database."""

    smtp_host: str | None = Field(default=None, description="SMTP server; empty: mails stay in the outbox.")
    smtp_port: int = Field(default=25, ge=1, le=65535, description="SMTP port (587 with STARTTLS).")
    smtp_username: str | None = Field(default=None, description="SMTP login, if the server wants one.")
    smtp_password: SecretStr | None = Field(default=None, description="SMTP password.")
    smtp_starttls: bool = Field(default=False, description="Upgrade the connection with STARTTLS.")
    sender: str = Field(default="aiot@localhost", description="From address of the platform's mails.")
    timeout_s: float = Field(default=10.0, gt=0, description="Timeout of one SMTP conversation.")


class Settings(BaseSettings):
    """The whole settings tree. Read it with ``get_settings()``."""

    model_config = SettingsConfigDict(
        env_prefix="AIOT_",
        env_nested_delimiter="__",
        extra="ignore",
        validate_default=True,
    )

    home: Path = Field(
        default=Path("~/.aiot"),
        description="Data directory of one platform: database, bucket, run state, logs.",
    )
    config_file: Path | None = Field(
        default=None, description="TOML settings file (see configs/); environment wins over it."
    )
    service_id: str = Field(
        default="", description="Identity of this managed process; set by whoever starts it."
    )
    agent_pid: int | None = Field(
        default=None,
        description="Pid of the agent that started this process; when it is gone, so is this node: "
        "the process stops instead of running on unsupervised.",
    )
    service_host: str = Field(
        default="127.0.0.1", description="Address a managed process's servers bind (its node's)."
    )
    bundle_dir: Path | None = Field(
        default=None, description="A managed process's unpacked deploy bundle (set by its agent)."
    )
    port_http: int | None = Field(
        default=None, ge=0, le=65535, description="Port its agent allocated for a managed process's HTTP."
    )
    kafka: KafkaSettings = Field(default_factory=KafkaSettings)
    database: DatabaseSettings = Field(default_factory=DatabaseSettings)
    blob: BlobSettings = Field(default_factory=BlobSettings)
    web: WebSettings = Field(default_factory=WebSettings)
    auth: AuthSettings = Field(default_factory=AuthSettings)
    heartbeat: HeartbeatSettings = Field(default_factory=HeartbeatSettings)
    logging: LoggingSettings = Field(default_factory=LoggingSettings)
    agent: AgentSettings = Field(default_factory=AgentSettings)
    sandbox: SandboxSettings = Field(default_factory=SandboxSettings)
    node_manager: NodeManagerSettings = Field(default_factory=NodeManagerSettings)
    monitor: MonitorSettings = Field(default_factory=MonitorSettings)
    model: ModelSettings = Field(default_factory=ModelSettings)
    deployer: DeployerSettings = Field(default_factory=DeployerSettings)
    device: DeviceSettings = Field(default_factory=DeviceSettings)
    app: AppSettings = Field(default_factory=AppSettings)
    scheduler: SchedulerSettings = Field(default_factory=SchedulerSettings)
    mail: MailSettings = Field(default_factory=MailSettings)
    cli: CliSettings = Field(default_factory=CliSettings)
    bootstrap: BootstrapSettings = Field(default_factory=BootstrapSettings)
    azure: AzureSettings = Field(default_factory=AzureSettings)

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        config_file = env_settings().get("config_file") or init_settings().get("config_file")
        sources: list[PydanticBaseSettingsSource] = [init_settings, env_settings]
        if config_file:
            sources.append(TomlConfigSettingsSource(settings_cls, toml_file=Path(config_file)))
        return tuple(sources)

    @property
    def home_dir(self) -> Path:
        """AIOT_HOME with ``~`` expanded, absolute."""
        return self.home.expanduser().resolve()

    @property
    def run_dir(self) -> Path:
        """Where a running platform records its processes and chosen ports."""
        return self.home_dir / "run"

    @property
    def database_url(self) -> str:
        return self.database.url or f"sqlite:///{self.home_dir / 'registry.db'}"

    @property
    def blob_path(self) -> Path:
        return (self.blob.local_path or self.home_dir / "bucket").expanduser().resolve()


_override: contextvars.ContextVar[Settings | None] = contextvars.ContextVar(
    "aiot_settings_override", default=None
)


def get_settings() -> Settings:
    """The settings in force: a ``temporary_settings`` block's, else read afresh."""
    return _override.get() or Settings()


def _nest(dotted: Mapping[str, Any]) -> dict[str, Any]:
    tree: dict[str, Any] = {}
    for key, value in dotted.items():
        *parents, leaf = key.split(".")
        node = tree
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value
    return tree


@contextlib.contextmanager
def temporary_settings(updates: Mapping[str, Any]) -> Iterator[Settings]:
    """Install settings with ``updates`` (dotted paths, e.g. ``"kafka.partitions"``) applied."""
    base = get_settings().model_dump()
    for key, value in _nest(updates).items():
        if isinstance(value, dict) and isinstance(base.get(key), dict):
            base[key] = {**base[key], **value}
        else:
            base[key] = value
    settings = Settings.model_validate(base)
    token = _override.set(settings)
    try:
        yield settings
    finally:
        _override.reset(token)


def _type_name(annotation: object) -> str:
    if isinstance(annotation, type):
        return annotation.__name__
    return re.sub(r"\b[a-z_]+\.(?:[a-z_]+\.)*", "", str(annotation))


def settings_reference() -> str:
    """The Markdown table of every setting, as docs/settings.md shows it."""
    lines = ["| variable | type | default | description |", "|---|---|---|---|"]
    for row in describe_settings():
        cells = [
            f"`{row['variable']}`",
            row["type"],
            f"`{row['default']}`" if row["default"] else "",
            row["description"],
        ]
        lines.append("| " + " | ".join(cell.replace("|", "\\|") for cell in cells) + " |")
    return "\n".join(lines) + "\n"


def describe_settings(
    model: type[BaseModel] = Settings, env_prefix: str = "AIOT_", defaults: BaseModel | None = None
) -> list[dict[str, str]]:
    """Every leaf setting: its environment variable, type, default and description (for docs and the CLI).

    ``defaults`` is the default value of ``model`` where its parent field has one (a topic class's
    retention): its values are the defaults shown, not those of the model's own fields.
    """
    rows: list[dict[str, str]] = []
    for name, field in model.model_fields.items():
        annotation = field.annotation
        variable = f"{env_prefix}{name.upper()}"
        default = (
            getattr(defaults, name) if defaults is not None else field.get_default(call_default_factory=True)
        )
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            nested = default if isinstance(default, BaseModel) else None
            rows.extend(describe_settings(annotation, f"{variable}__", nested))
            continue
        rows.append(
            {
                "variable": variable,
                "type": _type_name(annotation),
                "default": "" if default is None else str(default),
                "description": field.description or "",
            }
        )
    return rows
