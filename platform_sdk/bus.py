"""The Kafka bus: producer wrapper, the one consumer loop, request/reply, topic creation.

Every platform process talks to Kafka through this module and nothing else
imports ``confluent_kafka`` directly, so client tuning, error translation and
the life of a message live in one place.

Life of a message::

    Producer.send(topic, message)           Envelope.wrap → to_kafka → produce; the
                                            delivery report is served on the next send/flush
    ConsumerLoop thread: poll ─▶ Envelope.from_kafka ─▶ handler registered for its type
        handler returns a Message and the envelope has reply_to  ─▶ reply sent
        handler raises                       ─▶ logged; error reply (request) or
                                                copy to the dead-letter topic (event)
        then the offset is stored; librdkafka commits stored offsets every second
        and on close, so a message is committed only after it was handled.

The loop survives broker restarts: librdkafka reconnects on its own, and a
topic that vanished (Tansu keeps topics in memory) is created again when the
loop sees it missing. Topics are created with their class's retention
(``Topics.config_of``), and consumers let the broker hold a fetch for
``Bus.fetch_wait_max_ms`` (Kafka answers a waiting fetch when a record
arrives, so a long wait costs no latency and an idle consumer no CPU).

``Requester.request()`` sends a message with a correlation id, the shared
replies topic and the one partition of it this requester reads (by manual
assignment, so no group join), and waits for the matching reply or raises
``Timeout``. Reply handlers on the
serving side are ordinary handlers that return a Message.
"""

from __future__ import annotations

import contextlib
import logging
import random
import re
import threading
import time
import uuid
from collections.abc import Callable, Iterable
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass, field
from typing import Any, TypeVar

import confluent_kafka
from confluent_kafka.admin import AdminClient, NewTopic  # type: ignore[attr-defined]

from platform_sdk.envelope import Envelope, Message
from platform_sdk.errors import BadRequest, PlatformError, Timeout, Unavailable, error_from_status
from platform_sdk.principals import KafkaCredential, kafka_credential
from platform_sdk.runstate import broker_kind, kafka_address
from platform_sdk.settings import KafkaSettings, Settings, get_settings
from platform_sdk.topics import Topics

log = logging.getLogger(__name__)
_FLUSH_SLICE_S = 0.05  # a flush on a shared client checks this often whether its own records are in

M = TypeVar("M", bound=Message)
R = TypeVar("R", bound=Message)
# A handler answers a request with a message, or with a future of one (a reply that takes long,
# made on a thread of the handler's own: the loop replies when it resolves and reads on meanwhile).
Reply = Message | Future[Any] | None
Handler = Callable[[Any, Envelope], Reply]
EnvelopeHandler = Callable[[Envelope], None]
TopicEnvelopeHandler = Callable[[str, Envelope], None]

POLL_INTERVAL_S = 0.25
_TOPIC_RETRY_S = 1.0


class ErrorReply(Message):
    """What a request gets back when its handler raised."""

    message_type = "error"
    status: int
    message: str
    details: Any = None


# A new topic reaches each broker of a cluster a moment after its creation was acknowledged
# (up to a second or so under load): until then a broker does not list it, and a partition's
# leader answers that it does not know it. These errors mean "not yet", and are waited out.
_NOT_YET_KNOWN = (
    confluent_kafka.KafkaError.UNKNOWN_TOPIC_OR_PART,
    confluent_kafka.KafkaError.LEADER_NOT_AVAILABLE,
    confluent_kafka.KafkaError.NOT_LEADER_FOR_PARTITION,
    confluent_kafka.KafkaError._UNKNOWN_TOPIC,  # the client's own metadata is as far behind
    confluent_kafka.KafkaError._UNKNOWN_PARTITION,
)
_METADATA_WAIT_S = 10.0
# What the broker answers a create of a topic the principal may not create (Kafka 4.4 answers
# TOPIC_AUTHORIZATION_FAILED, for a topic that exists but is not its to see as well).
_NOT_MINE_TO_CREATE = (
    confluent_kafka.KafkaError.TOPIC_AUTHORIZATION_FAILED,
    confluent_kafka.KafkaError.CLUSTER_AUTHORIZATION_FAILED,
)


def topic_partitions(
    client: confluent_kafka.Consumer | AdminClient, topic: str, timeout: float = _METADATA_WAIT_S
) -> list[int]:
    """The partition numbers of ``topic``, waiting while the broker asked does not list it yet."""
    deadline = time.monotonic() + timeout
    while True:
        found = client.list_topics(topic, timeout=timeout).topics.get(topic)
        if found is not None and found.error is None and found.partitions:
            return sorted(found.partitions)
        if time.monotonic() > deadline:
            raise Unavailable(f"topic {topic!r} is not in the cluster's metadata after {timeout:g}s")
        time.sleep(0.05)


def end_offset(
    consumer: confluent_kafka.Consumer,
    partition: confluent_kafka.TopicPartition,
    timeout: float = _METADATA_WAIT_S,
) -> int:
    """The offset the next record of ``partition`` will get, waiting while its leader does not know it yet."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            _low, high = consumer.get_watermark_offsets(partition, timeout=timeout)
            return int(high)
        except confluent_kafka.KafkaException as exc:
            if exc.args[0].code() not in _NOT_YET_KNOWN or time.monotonic() > deadline:
                raise
        time.sleep(0.05)


def client_config(
    kafka: KafkaSettings, bootstrap: str, credential: KafkaCredential | None = None, **overrides: Any
) -> dict[str, Any]:
    """librdkafka properties shared by producers, consumers and admin clients.

    ``credential`` (``principals.kafka_credential``) authenticates the client with SASL; without
    one it connects as PLAINTEXT (kafka.security_protocol may still ask for more, with
    kafka.extra's properties).
    """
    config: dict[str, Any] = {
        "bootstrap.servers": bootstrap,
        "socket.nagle.disable": True,
        # Loopback and in-cluster brokers come back within a second; retry at that pace.
        "reconnect.backoff.max.ms": 1000,
        "topic.metadata.refresh.interval.ms": kafka.metadata_refresh_ms,
        "socket.timeout.ms": kafka.socket_timeout_ms,
        # librdkafka's own diagnostics go through Python logging, not straight to stderr.
        "logger": logging.getLogger("librdkafka"),
        **kafka.extra,
    }
    if kafka.security_protocol is not None:
        config["security.protocol"] = kafka.security_protocol
    if credential is not None:
        config.update(credential.client_properties())
    config.update(overrides)
    return config


@dataclass
class Bus:
    """One process's view of the message bus: address, topic names, identity."""

    settings: Settings = field(default_factory=get_settings)
    source: str = ""
    _shared: confluent_kafka.Producer | None = field(default=None, init=False, repr=False, compare=False)
    _shared_lock: threading.Lock = field(
        default_factory=threading.Lock, init=False, repr=False, compare=False
    )
    _reader: confluent_kafka.Consumer | None = field(default=None, init=False, repr=False, compare=False)
    _reader_partitions: dict[str, list[int]] = field(
        default_factory=dict, init=False, repr=False, compare=False
    )
    _reader_lock: threading.Lock = field(
        default_factory=threading.Lock, init=False, repr=False, compare=False
    )

    def __post_init__(self) -> None:
        self.source = self.source or self.settings.service_id or "anonymous"
        self.topics = Topics.from_settings(self.settings)
        self._bootstrap = kafka_address(self.settings)
        self.broker_kind = broker_kind(self.settings, self._bootstrap)
        self.credential = kafka_credential(self.settings, self._bootstrap)

    @property
    def fetch_wait_max_ms(self) -> int:
        """How long the broker may hold a fetch: long on Kafka (it answers on arrival), short on Tansu."""
        configured = self.settings.kafka.fetch_wait_max_ms
        if configured is not None:
            return configured
        return 5 if self.broker_kind == "tansu" else 2000

    @property
    def bootstrap_servers(self) -> str:
        servers = self._bootstrap
        if not servers:
            raise Unavailable(
                "no Kafka address configured: set AIOT_KAFKA__BOOTSTRAP_SERVERS, "
                "or start the platform with `aiot up` so its broker address is recorded"
            )
        return servers

    def config(self, **overrides: Any) -> dict[str, Any]:
        return client_config(self.settings.kafka, self.bootstrap_servers, self.credential, **overrides)

    def admin(self) -> AdminClient:
        return AdminClient(self.config())

    def ensure_topics(
        self, names: Iterable[str], partitions: int | None = None, timeout: float = 10.0
    ) -> None:
        """Create each missing topic with an explicit partition count and its class's configs.

        The count is ``partitions`` (default ``kafka.partitions``), except where the topic's
        kind fixes it (``Topics.partitions_of``: one per device topic, ``kafka.reply_partitions``
        for the replies topic). Every topic gets its class's retention by time and bytes
        (``Topics.config_of``), so nothing the bus carries grows without bound. Existing
        topics are kept as they are. A subscription pattern (a name starting with ``^``) names
        no topic and is skipped. A topic this process may not create (a model replica's or app
        instance's principal creates none) is left to the platform: the broker's refusal is logged.
        """
        wanted = sorted({name for name in names if not name.startswith("^")})
        if not wanted:
            return
        admin = self.admin()
        try:
            existing = admin.list_topics(timeout=timeout).topics
        except confluent_kafka.KafkaException as exc:
            raise Unavailable(f"Kafka at {self.bootstrap_servers} does not answer: {exc}") from exc
        missing = [name for name in wanted if name not in existing]
        if not missing:
            return
        kafka = self.settings.kafka
        default = partitions or kafka.partitions
        futures = admin.create_topics(
            [
                NewTopic(
                    name,
                    num_partitions=self.topics.partitions_of(name, default, kafka.reply_partitions),
                    replication_factor=kafka.replication_factor,
                    config=self.topics.config_of(name, self.settings),
                )
                for name in missing
            ],
            operation_timeout=timeout,
        )
        for name, future in futures.items():
            try:
                future.result(timeout)
            except TimeoutError as exc:
                raise Unavailable(f"Kafka did not create topic {name!r} within {timeout:g}s") from exc
            except confluent_kafka.KafkaException as exc:
                code = exc.args[0].code()
                if code in _NOT_MINE_TO_CREATE:
                    log.info("topic %r is missing and not this process's to create: %s", name, exc)
                elif code != confluent_kafka.KafkaError.TOPIC_ALREADY_EXISTS:
                    raise Unavailable(f"cannot create topic {name!r}: {exc}") from exc

    def delete_topics(self, names: Iterable[str], timeout: float = 5.0) -> None:
        admin = self.admin()  # held until the answers are in: a dropped client may never send the request
        futures = admin.delete_topics(list(names), operation_timeout=timeout)
        for future in futures.values():
            try:
                future.result(timeout)
            except (TimeoutError, confluent_kafka.KafkaException) as exc:
                log.debug("topic deletion failed: %s", exc)

    def producer(self, *, own_client: bool = False, config: dict[str, Any] | None = None) -> Producer:
        """A producer: with ``config`` (client properties) or ``own_client``, on a client of its own;
        else on the bus's shared one.

        One librdkafka producer per process serves the heartbeat, the consumer loops' replies
        and dead letters and the requesters: each client costs a broker connection, threads
        and memory, and an idle platform had a few hundred. A sensor's publisher takes its
        own (its steady stream would queue behind, or hold up, everyone else's records).
        """
        if config or own_client:
            return Producer(self, **(config or {}))
        with self._shared_lock:
            if self._shared is None:
                self._shared = _new_producer(self)
            return Producer(self, client=self._shared)

    def latest(self, topic: str, timeout: float = 10.0) -> Envelope | None:
        """The newest envelope on ``topic`` (by time, over its partitions), or None when it is empty.

        No group and no loop: the bus's one reader (an assign-only consumer, made on first use)
        seeks every partition to its last record, reads, and lets go. The topic is created
        and its partitions looked up once per bus, so an app that reads its sensors every
        second costs the broker an offset lookup and a fetch, not a new client each time.
        With ``timeout`` > 0 and an empty topic it waits that long for a first record.
        """
        with self._reader_lock:
            partitions = self._reader_partitions.get(topic)
            reader = self._reader_client()
            positions = []
            try:
                if partitions is None:
                    self.ensure_topics([topic])
                    partitions = topic_partitions(reader, topic)
                    self._reader_partitions[topic] = partitions
                for partition in partitions:
                    position = confluent_kafka.TopicPartition(topic, partition)
                    position.offset = max(end_offset(reader, position) - 1, 0)
                    positions.append(position)
            except confluent_kafka.KafkaException as exc:
                self._reader_partitions.pop(topic, None)  # gone (a Tansu restart)? look it up again next time
                raise Unavailable(f"Kafka at {self.bootstrap_servers} does not answer: {exc}") from exc
            reader.assign(positions)
            found: list[Envelope] = []
            try:
                deadline = time.monotonic() + max(timeout, 0.5)
                while not found and time.monotonic() < deadline:
                    for record in reader.consume(num_messages=len(positions) or 1, timeout=POLL_INTERVAL_S):
                        if record.error() is None and record.topic() == topic:
                            try:
                                found.append(Envelope.from_kafka(record.value(), record.headers()))
                            except BadRequest:
                                continue
            finally:
                reader.unassign()
        return max(found, key=lambda envelope: envelope.time) if found else None

    def _reader_client(self) -> confluent_kafka.Consumer:
        """The bus's assign-only reader, made on first use (call with ``_reader_lock`` held)."""
        if self._reader is None:
            self._reader = confluent_kafka.Consumer(
                self.config(
                    **{
                        "group.id": self.topics.assigned_group("latest"),
                        "enable.auto.commit": False,
                        # Its last fetch outlives unassign() in the broker, which answers nothing else
                        # on the connection meanwhile: a long wait made every next read wait for it (2 s).
                        "fetch.wait.max.ms": min(self.fetch_wait_max_ms, 10),
                    }
                )
            )
        return self._reader

    def recent(self, topic: str, count: int, timeout: float = 5.0) -> list[Envelope]:
        """Up to ``count`` newest envelopes on an existing ``topic``, oldest first; waits for no new one."""
        with self._reader_lock:
            reader = self._reader_client()
            positions: list[confluent_kafka.TopicPartition] = []
            ends: dict[int, int] = {}
            try:
                for partition in topic_partitions(reader, topic, timeout=timeout):
                    position = confluent_kafka.TopicPartition(topic, partition)
                    low, high = reader.get_watermark_offsets(position, timeout=timeout)
                    if high > low:
                        position.offset = max(low, high - count)
                        positions.append(position)
                        ends[partition] = high
            except confluent_kafka.KafkaException as exc:
                raise Unavailable(f"Kafka at {self.bootstrap_servers} does not answer: {exc}") from exc
            found: list[Envelope] = []
            if not positions:
                return found
            reader.assign(positions)
            try:
                deadline = time.monotonic() + timeout
                while ends and time.monotonic() < deadline:
                    for record in reader.consume(num_messages=count, timeout=POLL_INTERVAL_S):
                        if record.error() is not None or record.topic() != topic:
                            continue
                        partition, offset = record.partition() or 0, record.offset() or 0
                        if offset + 1 >= ends.get(partition, 0):
                            ends.pop(partition, None)
                        with contextlib.suppress(BadRequest):
                            found.append(Envelope.from_kafka(record.value(), record.headers()))
            finally:
                reader.unassign()
        return sorted(found, key=lambda envelope: envelope.time)[-count:]

    def close(self) -> None:
        """Close the reader ``latest()`` or ``recent()`` made, if any (the shared producer needs none)."""
        with self._reader_lock:
            reader, self._reader = self._reader, None
            self._reader_partitions.clear()
        if reader is not None:
            reader.close()


class Producer:
    """A confluent-kafka producer that sends envelopes and counts delivery reports."""

    def __init__(self, bus: Bus, *, client: confluent_kafka.Producer | None = None, **overrides: Any) -> None:
        """On ``client`` (shared with other ``Producer``s) or on a new client with ``overrides``.

        Counts, ``flush()`` and ``len()`` are this producer's own records either way.
        """
        self.bus = bus
        self.delivered = 0
        self.failed = 0
        self.last_error: str | None = None
        self._outstanding = 0
        self._counts = threading.Lock()  # delivery reports run on whichever thread polls the client
        self._producer = client if client is not None else _new_producer(bus, **overrides)

    def send(
        self,
        topic: str,
        message: Message | Envelope,
        *,
        key: str | bytes | None = None,
        data: bytes | None = None,
        on_delivery: Callable[[bool], None] | None = None,
        partition: int | None = None,
    ) -> Envelope:
        """Queue one message; returns its envelope. Raises ``Unavailable`` when the local queue is full."""
        envelope = (
            message
            if isinstance(message, Envelope)
            else Envelope.wrap(message, source=self.bus.source, data=data)
        )
        value, headers = envelope.to_kafka()
        self.send_raw(
            topic, value, key=key, headers=list(headers), on_delivery=on_delivery, partition=partition
        )
        return envelope

    def send_raw(
        self,
        topic: str,
        value: bytes | None,
        *,
        key: str | bytes | None = None,
        headers: list[tuple[str, str | bytes | None]] | None = None,
        on_delivery: Callable[[bool], None] | None = None,
        partition: int | None = None,
    ) -> None:
        """Queue a record as it is (forwarding, dead-lettering); no envelope is added.

        ``partition`` pins the record to one partition (a reply to a requester's); else the
        key chooses.
        """

        def report(err: confluent_kafka.KafkaError | None, _record: Any) -> None:
            with self._counts:
                self._outstanding -= 1
                if err is None:
                    self.delivered += 1
                else:
                    self.failed += 1
                    self.last_error = str(err)
            if on_delivery is not None:
                on_delivery(err is None)

        pinned: dict[str, Any] = {} if partition is None else {"partition": partition}
        with self._counts:
            self._outstanding += 1
        try:
            self._producer.produce(topic, value=value, key=key, headers=headers, on_delivery=report, **pinned)
        except BufferError as exc:
            self._not_queued()
            self._producer.poll(0)
            raise Unavailable("the producer's local queue is full; the broker is not keeping up") from exc
        except confluent_kafka.KafkaException as exc:
            self._not_queued()
            raise Unavailable(f"cannot send to {topic!r}: {exc}") from exc
        self._producer.poll(0)

    def _not_queued(self) -> None:
        with self._counts:
            self._outstanding -= 1

    def poll(self, timeout: float = 0.0) -> None:
        """Serve pending delivery reports."""
        self._producer.poll(timeout)

    def flush(self, timeout: float = 10.0) -> int:
        """Wait until this producer's records are delivered (or failed); returns how many are not yet.

        On a shared client it serves delivery reports until its own are in, not everyone's.
        """
        deadline = time.monotonic() + timeout
        while len(self):
            left = deadline - time.monotonic()
            if left <= 0:
                break
            self._producer.flush(min(left, _FLUSH_SLICE_S))
        return len(self)

    def __len__(self) -> int:
        with self._counts:
            return self._outstanding


def _new_producer(bus: Bus, **overrides: Any) -> confluent_kafka.Producer:
    # Idempotent on Kafka: a retried send (a leader moved, a new topic not yet known to its
    # leader) is neither duplicated nor reordered before the records sent after it. Not on
    # Tansu: a restart there forgets every producer id, which would end the producer.
    idempotent = bus.broker_kind == "kafka"
    return confluent_kafka.Producer(
        bus.config(**{"linger.ms": 0, "acks": "all", "enable.idempotence": idempotent, **overrides})
    )


class ConsumerLoop:
    """The one consumer loop: poll, decode, dispatch by message type, reply or dead-letter, commit.

    With ``group`` the loop joins that consumer group on ``topics`` (each group
    gets every message), and ``add_topics()`` widens the subscription while it
    runs; ``topics`` may then hold patterns (``Topics.instance_pattern``: a name
    starting with ``^``), whose new topics the loop finds at its metadata refresh
    (``topic.metadata.refresh.interval.ms`` in ``overrides``). Without a group, it
    reads all partitions of ``topics`` by manual assignment, which needs no group
    join and suits private topics; patterns then are matched against the cluster's topic
    list every ``refresh_s`` (default ``kafka.instance_topics_refresh_ms``): a topic that
    appears is read from its beginning (it is newer than the loop), one that goes is dropped.
    Such a loop has no group coordinator to wait for after a broker pause, so it reads again
    as soon as the broker answers (a group rejoins first). Apache Kafka only: on Tansu a
    pattern needs a group (its metadata after a topic deletion crashes librdkafka's listing).

    A handler returns its reply, or a ``Future`` of it when answering takes long (made on a
    thread pool of the handler's owner): the loop replies when the future resolves, an
    exception as an error reply, and reads the next records meanwhile.

    Its thread keeps the process alive until ``stop()``: whoever starts a loop stops it.
    ``daemon=True`` is for a loop that an ``atexit`` handler stops (``model_call``'s
    client): atexit handlers run only after every non-daemon thread has ended.
    """

    def __init__(
        self,
        bus: Bus,
        topics: Iterable[str],
        *,
        group: str | None,
        name: str | None = None,
        offset_reset: str = "earliest",
        partitions: int | None = None,
        only_partitions: Iterable[int] | None = None,
        daemon: bool = False,
        refresh_s: float | None = None,
        **overrides: Any,
    ) -> None:
        self.bus = bus
        self.daemon = daemon
        self.only_partitions = None if only_partitions is None else set(only_partitions)
        self.topics = sorted(set(topics))
        self.group = group
        if group is None and bus.broker_kind == "tansu" and any(t.startswith("^") for t in self.topics):
            # Tansu's metadata after a topic is deleted crashes librdkafka's topic listing.
            raise ValueError("a subscription pattern needs a consumer group on Tansu")
        # Without a group, patterns are resolved by this loop (see the class docstring).
        self._patterns = (
            [re.compile(topic) for topic in self.topics if topic.startswith("^")] if group is None else []
        )
        self._pattern_topics: set[str] = set()
        self._refresh_s = (
            refresh_s if refresh_s is not None else bus.settings.kafka.instance_topics_refresh_ms / 1000
        )
        self._next_refresh = 0.0
        self.name = name or group or "assigned"
        self.partitions = partitions
        self.offset_reset = offset_reset
        self.handled = 0
        self.dead_lettered = 0
        self._handlers: dict[str, tuple[type[Message], Handler]] = {}
        self._fallback: EnvelopeHandler | None = None
        self._topic_fallback: TopicEnvelopeHandler | None = None
        self._stop = threading.Event()
        self._assigned = threading.Event()
        # Subscription changes (add_topics) are applied by the loop's thread between polls.
        self._subscription = threading.Condition()
        self._resubscribe = False
        self._assigned_topics: set[str] = set()
        # With "latest" in a group: where this loop is in each partition it pinned or read,
        # so a rebalance does not move a partition without a committed offset to its end.
        self._track_positions = group is not None and offset_reset == "latest"
        self._positions: dict[tuple[str, int], int] = {}
        self._thread: threading.Thread | None = None
        self._producer: Producer | None = None
        self._last_topic_check = 0.0
        settings = bus.settings.kafka
        self._config = bus.config(
            **{
                "group.id": group or bus.topics.assigned_group("assigned"),
                "enable.auto.commit": group is not None,
                "enable.auto.offset.store": False,
                "auto.offset.reset": offset_reset,
                "session.timeout.ms": settings.session_timeout_ms,
                "heartbeat.interval.ms": settings.heartbeat_interval_ms,
                "fetch.wait.max.ms": bus.fetch_wait_max_ms,
                "enable.partition.eof": False,
                **overrides,
            }
        )
        self._consumer: confluent_kafka.Consumer | None = None

    def on(
        self, message_cls: type[M]
    ) -> Callable[[Callable[[M, Envelope], Message | None]], Callable[[M, Envelope], Message | None]]:
        """Register ``handler(message, envelope)`` for ``message_cls``; use as a decorator."""

        def register(
            handler: Callable[[M, Envelope], Message | None],
        ) -> Callable[[M, Envelope], Message | None]:
            self.add_handler(message_cls, handler)
            return handler

        return register

    def add_handler(self, message_cls: type[M], handler: Callable[[M, Envelope], Reply]) -> None:
        if self._thread is not None:
            raise RuntimeError("register handlers before start()")
        self._handlers[message_cls.message_type] = (message_cls, handler)

    def on_any(self, handler: EnvelopeHandler) -> None:
        """Receive every envelope no typed handler claims (used by request/reply)."""
        self._fallback = handler

    def on_any_with_topic(self, handler: TopicEnvelopeHandler) -> None:
        """Like ``on_any``, with the record's topic: ``handler(topic, envelope)``, to route by topic."""
        self._topic_fallback = handler

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def start(self) -> None:
        if self._thread is not None:
            raise RuntimeError(f"consumer loop {self.name!r} already started")
        self.bus.ensure_topics(self.topics, self.partitions)
        self._producer = self.bus.producer()
        consumer = confluent_kafka.Consumer(self._config)
        if self.group is None:
            consumer.assign(self._initial_positions(consumer))
            self._assigned.set()
        else:
            with self._subscription:
                self._resubscribe = False
                topics = list(self.topics)
            consumer.subscribe(topics, on_assign=self._on_assign)
        self._consumer = consumer
        self._thread = threading.Thread(
            target=self._run, name=f"aiot-consumer-{self.name}", daemon=self.daemon
        )
        self._thread.start()

    def _initial_positions(self, consumer: confluent_kafka.Consumer) -> list[confluent_kafka.TopicPartition]:
        """Every partition of ``topics`` (or ``only_partitions``); with "latest", pinned to the end now.

        Resolving the end here, not at the first fetch, means a message sent after
        ``start()`` returned is never skipped: what follows start() is seen.
        """
        positions = []
        fixed = [topic for topic in self.topics if not topic.startswith("^")]
        listed: dict[str, list[int]] = {}
        if self._patterns:
            listed = self._matching_topics(consumer)  # with their partitions: no second ask per topic
            self._pattern_topics = set(listed)
            self._next_refresh = time.monotonic() + self._refresh_s
        for topic in fixed + sorted(listed):
            for partition in listed.get(topic) or topic_partitions(consumer, topic):
                if self.only_partitions is not None and partition not in self.only_partitions:
                    continue
                position = confluent_kafka.TopicPartition(topic, partition)
                if self.offset_reset == "latest":
                    position.offset = end_offset(consumer, position)
                else:
                    # An explicit start, so the consumer never asks a group coordinator for
                    # committed offsets it cannot have (on a fresh broker that ask can stall).
                    position.offset = confluent_kafka.OFFSET_BEGINNING
                positions.append(position)
        return positions

    @property
    def listed_topics(self) -> set[str]:
        """The topics a group-less loop reads for its patterns, as of its last look."""
        return set(self._pattern_topics)

    def _matching_topics(self, consumer: confluent_kafka.Consumer) -> dict[str, list[int]]:
        """The cluster's topics that one of this (group-less) loop's patterns matches, with
        their partitions (a topic still being created, listed without any, is left out)."""
        listed = consumer.list_topics(timeout=_METADATA_WAIT_S).topics
        return {
            name: sorted(topic.partitions)
            for name, topic in listed.items()
            if topic.error is None
            and topic.partitions
            and any(pattern.match(name) for pattern in self._patterns)
        }

    def _refresh_patterns(self, consumer: confluent_kafka.Consumer) -> None:
        """Read the pattern topics that appeared since the last look; drop those that went."""
        self._next_refresh = time.monotonic() + self._refresh_s
        try:
            now = self._matching_topics(consumer)
        except confluent_kafka.KafkaException as exc:
            log.debug("consumer %s: topic list unavailable: %s", self.name, exc)
            return
        gone = self._pattern_topics - set(now)
        added = [
            confluent_kafka.TopicPartition(topic, partition, confluent_kafka.OFFSET_BEGINNING)
            for topic in sorted(set(now) - self._pattern_topics)
            for partition in now[topic]
            if self.only_partitions is None or partition in self.only_partitions
        ]
        try:
            if gone:
                consumer.incremental_unassign(
                    [position for position in consumer.assignment() if position.topic in gone]
                )
            if added:
                consumer.incremental_assign(added)
        except confluent_kafka.KafkaException as exc:
            log.warning("consumer %s: cannot change what it reads: %s", self.name, exc)
            return
        self._pattern_topics = set(now)

    def _on_assign(
        self, consumer: confluent_kafka.Consumer, partitions: list[confluent_kafka.TopicPartition]
    ) -> None:
        """With "latest", a partition the group never committed starts at its end as of now.

        Left to ``auto.offset.reset``, the end is resolved at the first fetch, after
        ``wait_assigned()`` returned: a message sent in between would be skipped.
        """
        if self.offset_reset == "latest":
            try:
                committed = consumer.committed(partitions, timeout=10)
                for partition, stored in zip(partitions, committed, strict=True):
                    # A rebalance (add_topics) hands back partitions this loop already had: one it
                    # read or pinned resumes where the loop was, not at the end, and not before
                    # what it handled when the commit of the last records has not landed yet.
                    known = self._positions.get((partition.topic, partition.partition))
                    if stored.offset < 0:
                        high = end_offset(consumer, partition)
                        partition.offset = high if known is None else min(known, high)
                        self._positions[(partition.topic, partition.partition)] = partition.offset
                    elif known is not None and known > stored.offset:
                        partition.offset = known
                consumer.assign(partitions)
            except confluent_kafka.KafkaException as exc:
                log.warning("consumer %s: cannot pin new partitions to their end: %s", self.name, exc)
        with self._subscription:
            self._assigned_topics = {partition.topic for partition in partitions}
            self._subscription.notify_all()
        self._assigned.set()

    def wait_assigned(self, timeout: float = 30.0) -> None:
        """Block until the group has given this loop its partitions."""
        if not self._assigned.wait(timeout):
            raise Timeout(f"consumer {self.name!r} got no partitions of {self.topics} in {timeout:.0f}s")

    def add_topics(self, topics: Iterable[str], timeout: float = 30.0) -> None:
        """Add ``topics`` to a started group loop's subscription; returns once they are assigned.

        Calls from several threads at once become one subscription change (one rebalance).
        With "latest", what is sent to a new topic after this returned is seen, and the
        topics the loop already had lose nothing in the rebalance (``_on_assign``). A topic
        counts as assigned when this member got at least one of its partitions.
        """
        if self.group is None or self._thread is None:
            raise RuntimeError("add_topics() needs a started loop with a consumer group")
        wanted = set(topics)
        with self._subscription:
            new = wanted - set(self.topics)
        if new:
            self.bus.ensure_topics(new, self.partitions)
            with self._subscription:
                if not wanted <= set(self.topics):
                    self.topics = sorted(set(self.topics) | wanted)
                    self._resubscribe = True
        with self._subscription:
            if not self._subscription.wait_for(lambda: wanted <= self._assigned_topics, timeout):
                missing = sorted(wanted - self._assigned_topics)
                raise Timeout(f"consumer {self.name!r} got no partitions of {missing} in {timeout:.0f}s")

    def stop(self, timeout: float = 10.0) -> None:
        """Finish the message in hand, commit, leave the group and close."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)
        if self._consumer is not None:
            self._consumer.close()
            self._consumer = None
        if self._producer is not None:
            self._producer.flush(timeout)

    def _run(self) -> None:
        consumer = self._consumer
        assert consumer is not None
        while not self._stop.is_set():
            if self._resubscribe:
                with self._subscription:
                    self._resubscribe = False
                    topics = list(self.topics)
                try:
                    consumer.subscribe(topics, on_assign=self._on_assign)
                except confluent_kafka.KafkaException as exc:
                    log.warning("consumer %s: cannot subscribe to %s: %s", self.name, topics, exc)
            if self._patterns and time.monotonic() >= self._next_refresh:
                self._refresh_patterns(consumer)
            try:
                record = consumer.poll(POLL_INTERVAL_S)
            except confluent_kafka.KafkaException as exc:
                log.warning("consumer %s: poll failed: %s", self.name, exc)
                continue
            if record is None:
                continue
            error = record.error()
            if error is not None:
                self._on_consumer_error(error)
                continue
            self._handle(record)
            if self.group is not None:
                consumer.store_offsets(record)
                if self._track_positions:
                    self._positions[(record.topic() or "", record.partition() or 0)] = (
                        record.offset() or 0
                    ) + 1

    def _on_consumer_error(self, error: confluent_kafka.KafkaError) -> None:
        if error.code() == confluent_kafka.KafkaError.UNKNOWN_TOPIC_OR_PART and self._patterns:
            self._next_refresh = 0.0  # an instance's topic went: drop it at the next look
            return
        if error.code() == confluent_kafka.KafkaError.UNKNOWN_TOPIC_OR_PART:
            now = time.monotonic()
            if now - self._last_topic_check >= _TOPIC_RETRY_S:
                self._last_topic_check = now
                log.info("consumer %s: topic missing (broker restarted?); creating it", self.name)
                try:
                    self.bus.ensure_topics(self.topics, self.partitions, timeout=2.0)
                except Unavailable as exc:
                    log.warning("consumer %s: %s", self.name, exc)
            return
        log.warning("consumer %s: %s", self.name, error)

    def _handle(self, record: confluent_kafka.Message) -> None:
        try:
            envelope = Envelope.from_kafka(record.value(), record.headers())
        except BadRequest as exc:
            self._dead_letter(record, exc)
            return
        entry = self._handlers.get(envelope.type)
        try:
            if entry is None:
                if self._topic_fallback is not None:
                    self._topic_fallback(record.topic() or "", envelope)
                elif self._fallback is not None:
                    self._fallback(envelope)
                return
            message_cls, handler = entry
            reply = handler(envelope.open(message_cls), envelope)
            self.handled += 1
            if isinstance(reply, Future):
                reply.add_done_callback(lambda done: self._reply_when_done(record, envelope, done))
            elif reply is not None and envelope.reply_to:
                self._reply(envelope, reply)
        except Exception as exc:
            self._failed(record, envelope, exc)

    def _reply_when_done(
        self, record: confluent_kafka.Message, envelope: Envelope, done: Future[Any]
    ) -> None:
        """A deferred reply (a handler's future) resolved: answer with its message or its error."""
        try:
            reply = done.result()
        except Exception as exc:
            self._failed(record, envelope, exc)
            return
        if envelope.reply_to:
            self._reply(envelope, reply)

    def _failed(self, record: confluent_kafka.Message, envelope: Envelope, exc: Exception) -> None:
        if envelope.reply_to and isinstance(exc, PlatformError) and exc.status < 500:
            # A refused request (unknown id, bad input) is an answer, not a failure of this service.
            log.info("consumer %s: %r refused: %s", self.name, envelope.type, exc)
        else:
            log.error("consumer %s: handler for %r failed", self.name, envelope.type, exc_info=exc)
        if envelope.reply_to:
            self._reply(envelope, _error_reply(exc))
        else:
            self._dead_letter(record, exc)

    def _reply(self, request: Envelope, reply: Message) -> None:
        assert self._producer is not None
        assert request.reply_to is not None
        self._producer.send(
            request.reply_to,
            Envelope.wrap(reply, source=self.bus.source, correlation_id=request.correlation_id),
            partition=request.reply_partition,
        )

    def _dead_letter(self, record: confluent_kafka.Message, exc: BaseException) -> None:
        assert self._producer is not None
        self.dead_lettered += 1
        original = record.headers() or []
        headers: list[tuple[str, str | bytes | None]] = list(
            original.items() if isinstance(original, dict) else original
        )
        headers += [
            ("aiot-dlq-error", f"{type(exc).__name__}: {exc}".encode()),
            ("aiot-dlq-topic", (record.topic() or "").encode()),
            ("aiot-dlq-partition", str(record.partition()).encode()),
            ("aiot-dlq-offset", str(record.offset()).encode()),
            ("aiot-dlq-consumer", self.name.encode()),
        ]
        try:
            self._producer.send_raw(
                self.bus.topics.dead_letter, record.value(), key=record.key(), headers=headers
            )
        except Unavailable as send_error:
            log.error("consumer %s: cannot dead-letter a record: %s", self.name, send_error)


def _error_reply(exc: BaseException) -> ErrorReply:
    if isinstance(exc, PlatformError):
        body = exc.to_dict()
        return ErrorReply(status=exc.status, message=body["message"], details=body.get("details"))
    return ErrorReply(status=500, message="internal error; see the platform logs")


class Requester:
    """Request/reply over Kafka: one partition of the shared replies topic and a future per correlation id.

    Every requester reads one partition of ``topics.replies`` (chosen at random when it
    starts, pinned to its end, no group join) and keeps the replies whose correlation id
    it is waiting for; the replier sends to the partition the request names. The replies
    topic is shared and bounded by retention, so no process leaves a topic behind.
    ``daemon``: its consumer loop's thread (see ``ConsumerLoop``).
    """

    def __init__(self, bus: Bus, *, daemon: bool = False) -> None:
        self.bus = bus
        self.daemon = daemon
        self.reply_topic = bus.topics.replies
        self.reply_partition = 0
        self._pending: dict[str, Future[Envelope]] = {}
        self._lock = threading.Lock()
        self._loop: ConsumerLoop | None = None
        self._producer: Producer | None = None

    def start(self) -> None:
        self.bus.ensure_topics([self.reply_topic])
        try:
            count = len(topic_partitions(self.bus.admin(), self.reply_topic))
        except confluent_kafka.KafkaException as exc:
            raise Unavailable(f"Kafka at {self.bus.bootstrap_servers} does not answer: {exc}") from exc
        self.reply_partition = random.randrange(count)
        self._producer = self.bus.producer()
        self._loop = ConsumerLoop(
            self.bus,
            [self.reply_topic],
            group=None,
            name=f"replies-{self.bus.source}",
            offset_reset="latest",
            only_partitions=[self.reply_partition],
            daemon=self.daemon,
        )
        self._loop.on_any(self._resolve)
        self._loop.start()

    def stop(self) -> None:
        if self._loop is not None:
            self._loop.stop()
        if self._producer is not None:
            self._producer.flush(5)

    def __enter__(self) -> Requester:
        try:
            self.start()
        except BaseException:
            self.stop()  # a half-started requester still holds a consumer
            raise
        return self

    def __exit__(self, *_: object) -> None:
        self.stop()

    def _resolve(self, envelope: Envelope) -> None:
        with self._lock:
            future = self._pending.pop(envelope.correlation_id or "", None)
        if future is not None:
            future.set_result(envelope)

    def send(self, topic: str, message: Message, key: str | None = None, timeout: float = 10.0) -> None:
        """Send a command that needs no answer, and wait until the broker has it."""
        if self._producer is None:
            raise RuntimeError("start() the requester first")
        self._producer.send(topic, message, key=key)
        if self._producer.flush(timeout):
            raise Unavailable(f"the broker did not take {message.message_type} within {timeout:.0f}s")

    def request(
        self,
        topic: str,
        message: Message,
        reply_cls: type[R],
        timeout: float | None = None,
        *,
        key: str | None = None,
    ) -> R:
        """Send ``message`` to ``topic`` (keyed by ``key``) and wait for a ``reply_cls`` answer."""
        if self._producer is None:
            raise RuntimeError("start() the requester first")
        wait = timeout if timeout is not None else self.bus.settings.kafka.request_timeout_s
        correlation_id = uuid.uuid4().hex
        future: Future[Envelope] = Future()
        with self._lock:
            self._pending[correlation_id] = future
        self._producer.send(
            topic,
            Envelope.wrap(
                message,
                source=self.bus.source,
                correlation_id=correlation_id,
                reply_to=self.reply_topic,
                reply_partition=self.reply_partition,
            ),
            key=key,
        )
        try:
            reply = future.result(wait)
        except FutureTimeout as exc:
            raise Timeout(f"no reply to {message.message_type!r} on {topic!r} within {wait:g}s") from exc
        finally:
            with self._lock:
                self._pending.pop(correlation_id, None)
        if reply.type == ErrorReply.message_type:
            error: ErrorReply = reply.open(ErrorReply)
            raise error_from_status(error.status, error.message, error.details)
        return reply.open(reply_cls)
