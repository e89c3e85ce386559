"""The Kafka bus on Apache Kafka and on the bundled Tansu: dispatch, commits, dead letters, request/reply,
broker restarts, topic classes.

Every test on the ``bus`` fixture runs on both brokers (the Tansu smoke set keeps the fallback working).
"""

from __future__ import annotations

import functools
import re
import signal
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import confluent_kafka
import pytest

from bootstrapper.broker import TansuBroker
from bootstrapper.kafka import KafkaBroker
from platform_sdk.bus import Bus, ConsumerLoop, Requester, topic_partitions
from platform_sdk.envelope import Envelope, Message
from platform_sdk.errors import BadRequest, NotFound, PlatformError, Timeout, Unavailable
from platform_sdk.settings import KafkaSettings, Settings, temporary_settings
from tests.conftest import missing_component
from tests.fixtures.components import kafka_updates
from tests.platform_driver import TEST_BROKER_JIT

pytestmark = pytest.mark.service("kafka")


class Ping(Message):
    message_type = "test.ping"
    n: int


class Pong(Message):
    message_type = "test.pong"
    n: int


class Other(Message):
    message_type = "test.other"
    text: str


def keep_n(bucket: list[int], message: Ping, _envelope: Envelope) -> None:
    bucket.append(message.n)


def wait_for(condition: Callable[[], bool], timeout: float = 20.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} not met within {timeout}s")
        time.sleep(0.02)


@pytest.fixture
def bus(either_broker_settings: Settings) -> Bus:
    return Bus(either_broker_settings, source="test")


@pytest.fixture
def started() -> Iterator[list[ConsumerLoop | Requester]]:
    """Loops a test starts; stopped even when the test fails."""
    parts: list[ConsumerLoop | Requester] = []
    yield parts
    for part in reversed(parts):
        part.stop()


def test_loop_dispatches_each_type_to_its_handler(bus: Bus, started: list[ConsumerLoop | Requester]) -> None:
    topic = bus.topics.commands("dispatch")
    pings: list[int] = []
    others: list[str] = []
    loop = ConsumerLoop(bus, [topic], group=f"{bus.topics.prefix}.dispatch")
    loop.add_handler(Ping, lambda message, _envelope: pings.append(message.n))
    loop.add_handler(Other, lambda message, _envelope: others.append(message.text))
    loop.start()
    started.append(loop)
    producer = bus.producer()
    for n in range(20):
        producer.send(topic, Ping(n=n), key="k")
    producer.send(topic, Other(text="hello"), key="k")
    assert producer.flush(10) == 0
    wait_for(lambda: len(pings) == 20 and others == ["hello"], what="all messages handled")
    assert pings == list(range(20))  # one key, one partition: order kept
    assert producer.delivered == 21


def test_handled_messages_are_committed_and_not_redelivered(bus: Bus) -> None:
    topic = bus.topics.commands("commit")
    group = f"{bus.topics.prefix}.commit"
    seen: list[int] = []
    producer = bus.producer()
    for n in range(5):
        producer.send(topic, Ping(n=n))
    producer.flush(10)
    first = ConsumerLoop(bus, [topic], group=group)
    first.add_handler(Ping, lambda message, _envelope: seen.append(message.n))
    first.start()
    try:
        wait_for(lambda: len(seen) == 5, what="first five handled")
    finally:
        first.stop()
    producer.send(topic, Ping(n=99))
    producer.flush(10)
    second = ConsumerLoop(bus, [topic], group=group)
    second.add_handler(Ping, lambda message, _envelope: seen.append(message.n))
    second.start()
    try:
        wait_for(lambda: 99 in seen, what="new message handled")
        time.sleep(0.3)
    finally:
        second.stop()
    assert sorted(seen) == [0, 1, 2, 3, 4, 99]  # the committed five were not handled twice


def dead_letters(bus: Bus, count: int, timeout: float = 20.0) -> list[confluent_kafka.Message]:
    """The first ``count`` records of the dead-letter topic, read by assignment (no group join)."""
    consumer = confluent_kafka.Consumer(bus.config(**{"group.id": "inspect", "enable.auto.commit": False}))
    try:
        # The first dead letter creates the topic: wait until the broker lists its partitions.
        partitions = topic_partitions(consumer, bus.topics.dead_letter, timeout=timeout)
        consumer.assign(
            [
                confluent_kafka.TopicPartition(bus.topics.dead_letter, p, confluent_kafka.OFFSET_BEGINNING)
                for p in partitions
            ]
        )
        records: list[confluent_kafka.Message] = []
        deadline = time.monotonic() + timeout
        while len(records) < count and time.monotonic() < deadline:
            polled = consumer.poll(0.2)
            if polled is not None and polled.error() is None:
                records.append(polled)
        return records
    finally:
        consumer.close()


def test_failing_handler_is_dead_lettered_and_the_loop_goes_on(
    bus: Bus, started: list[ConsumerLoop | Requester]
) -> None:
    topic = bus.topics.commands("dlq")
    handled: list[int] = []

    def handler(message: Ping, _envelope: Envelope) -> None:
        if message.n == 13:
            raise RuntimeError("disk on fire")
        handled.append(message.n)

    loop = ConsumerLoop(bus, [topic], group=f"{bus.topics.prefix}.dlq-worker")
    loop.add_handler(Ping, handler)
    loop.start()
    started.append(loop)
    producer = bus.producer()
    for n in (12, 13, 14):
        producer.send(topic, Ping(n=n), key="k")
    producer.send_raw(topic, b"garbage that is no envelope", key="k")
    producer.flush(10)
    wait_for(lambda: handled == [12, 14] and loop.dead_lettered == 2, what="handled around the failures")

    records = sorted(dead_letters(bus, 2), key=lambda record: record.offset() or 0)
    assert len(records) == 2
    by_error = {dict(r.headers() or [])["aiot-dlq-error"]: r for r in records}
    failed = by_error[b"RuntimeError: disk on fire"]
    assert Envelope.from_kafka(failed.value(), failed.headers()).open(Ping).n == 13
    headers = dict(failed.headers() or [])
    assert headers["aiot-dlq-topic"] == topic.encode()
    assert headers["aiot-dlq-consumer"] == loop.name.encode()
    garbage = next(
        r for error, r in by_error.items() if isinstance(error, bytes) and error.startswith(b"BadRequest")
    )
    assert garbage.value() == b"garbage that is no envelope"


def serve(
    bus: Bus,
    started: list[ConsumerLoop | Requester],
    server: ConsumerLoop,
    answer: Callable[[Ping, Envelope], Any],
) -> Requester:
    """``server`` answering ``Ping`` with ``answer``, started; a started requester to ask it."""
    server.add_handler(Ping, answer)
    server.start()
    started.append(server)
    requester = Requester(bus)
    requester.start()
    started.append(requester)
    return requester


def test_request_reply_returns_the_answer_and_typed_errors(
    bus: Bus, started: list[ConsumerLoop | Requester]
) -> None:
    topic = bus.topics.commands("rr")
    calls: list[int] = []

    def answer(message: Ping, _envelope: Envelope) -> Pong:
        calls.append(message.n)
        if message.n < 0:
            raise NotFound(f"no item {message.n}")
        if message.n == 0:
            raise ZeroDivisionError("secret internals")
        return Pong(n=message.n * 2)

    server = ConsumerLoop(bus, [topic], group=f"{bus.topics.prefix}.rr-server")
    requester = serve(bus, started, server, answer)
    assert requester.request(topic, Ping(n=21), Pong, timeout=30).n == 42
    with pytest.raises(NotFound, match="no item -1"):
        requester.request(topic, Ping(n=-1), Pong, timeout=10)
    with pytest.raises(PlatformError) as hidden:
        requester.request(topic, Ping(n=0), Pong, timeout=10)
    assert "secret internals" not in str(hidden.value)
    with pytest.raises(BadRequest, match=r"expected a 'test.other' message"):
        requester.request(topic, Ping(n=1), Other, timeout=10)


def test_a_deferred_reply_comes_when_its_future_resolves_and_the_loop_answers_others_meanwhile(
    bus: Bus, started: list[ConsumerLoop | Requester]
) -> None:
    """A handler whose answer takes long (the node manager waiting for a node to join) returns a
    future: the loop answers later requests meanwhile, then the held one with the future's
    result, or with its error."""
    topic = bus.topics.commands("deferred")
    held: dict[int, Future[Message]] = {}

    def answer(message: Ping, _envelope: Envelope) -> Pong | Future[Message]:
        if message.n >= 100:
            held[message.n] = Future()
            return held[message.n]
        return Pong(n=message.n * 2)

    requester = serve(bus, started, ConsumerLoop(bus, [topic], group=None, offset_reset="latest"), answer)
    with ThreadPoolExecutor(2) as asking:
        slow = asking.submit(requester.request, topic, Ping(n=100), Pong, 30)
        failing = asking.submit(requester.request, topic, Ping(n=101), Pong, 30)
        wait_for(lambda: len(held) == 2, what="both slow requests held")
        assert requester.request(topic, Ping(n=4), Pong, timeout=10).n == 8  # not behind the held
        assert not slow.done()
        held[100].set_result(Pong(n=7))
        held[101].set_exception(NotFound("no node joined"))
        assert slow.result(10).n == 7
        with pytest.raises(NotFound, match="no node joined"):
            failing.result(10)


def test_request_without_a_server_times_out(bus: Bus, started: list[ConsumerLoop | Requester]) -> None:
    requester = Requester(bus)
    requester.start()
    started.append(requester)
    began = time.monotonic()
    with pytest.raises(Timeout, match=r"no reply to 'test.ping'"):
        requester.request(bus.topics.commands("nobody-listens"), Ping(n=1), Pong, timeout=0.5)
    assert time.monotonic() - began < 5


def test_groups_each_get_every_message(bus: Bus, started: list[ConsumerLoop | Requester]) -> None:
    topic = bus.topics.events("fanout")
    received: dict[str, list[int]] = {"a": [], "b": []}
    for name, bucket in received.items():
        loop = ConsumerLoop(bus, [topic], group=f"{bus.topics.prefix}.fanout-{name}")
        loop.add_handler(Ping, functools.partial(keep_n, bucket))
        loop.start()
        started.append(loop)
    producer = bus.producer()
    for n in range(10):
        producer.send(topic, Ping(n=n))
    producer.flush(10)
    wait_for(lambda: all(sorted(v) == list(range(10)) for v in received.values()), what="both groups got all")


def test_a_pattern_without_a_group_finds_new_topics_and_drops_deleted_ones(
    kafka_settings: Settings, started: list[ConsumerLoop | Requester]
) -> None:
    """The heartbeat monitor's way of reading every instance's topic: no group to (re)join."""
    bus = Bus(kafka_settings, source="test")
    old, new = bus.topics.events("listed-old"), bus.topics.events("listed-new")
    bus.ensure_topics([old])
    producer = bus.producer()
    producer.send(old, Ping(n=0))  # before the loop started: "latest" does not read it
    assert producer.flush(10) == 0
    got: list[tuple[str, int]] = []
    loop = ConsumerLoop(
        bus,
        [f"^{re.escape(bus.topics.events('listed-'))}.*"],
        group=None,
        offset_reset="latest",
        refresh_s=0.2,
    )
    loop.on_any_with_topic(lambda topic, envelope: got.append((topic, envelope.open(Ping).n)))
    loop.start()
    started.append(loop)
    producer.send(old, Ping(n=1))
    bus.ensure_topics([new])
    producer.send(new, Ping(n=2))  # a topic newer than the loop is read from its beginning
    assert producer.flush(10) == 0
    wait_for(lambda: sorted(got) == sorted([(old, 1), (new, 2)]), what="both topics read")
    assert loop.listed_topics == {old, new}
    bus.delete_topics([old])
    wait_for(lambda: loop.listed_topics == {new}, what="the deleted topic dropped")
    producer.send(new, Ping(n=3))
    assert producer.flush(10) == 0
    wait_for(lambda: (new, 3) in got, what="the loop reading on")
    assert (old, 0) not in got


def _restart_tansu(broker: TansuBroker | KafkaBroker) -> None:
    assert isinstance(broker, TansuBroker)
    broker.stop()
    broker.start()  # same port; the in-memory broker lost every topic


def _restart_kafka(broker: TansuBroker | KafkaBroker) -> None:
    assert isinstance(broker, KafkaBroker)
    broker.kill(signal.SIGKILL)  # a crash, not a controlled shutdown
    broker.stop()
    broker.start(fresh=False)  # same ports, same log dir: topics and committed offsets are kept


@pytest.mark.parametrize("kind", ["kafka", "tansu"])
def test_loop_recovers_after_the_broker_restarts(settings: Settings, tmp_path: Path, kind: str) -> None:
    broker: TansuBroker | KafkaBroker
    if kind == "tansu":
        broker, restart = TansuBroker(log_file=tmp_path / "broker.log"), _restart_tansu
    else:
        # After a crash the restarted broker waits out its old registration's session: a short one.
        quick = KafkaSettings(lone_broker_session_ms=5000, jit=TEST_BROKER_JIT)
        broker = KafkaBroker(tmp_path / "kafka", quick, log_file=tmp_path / "broker.log")
        restart = _restart_kafka
    try:
        broker.start()
    except Unavailable as exc:
        missing_component(kind, str(exc))
    try:
        with temporary_settings(
            {
                "kafka.bootstrap_servers": broker.bootstrap_servers,
                "kafka.broker": kind,
                **(kafka_updates(broker) if isinstance(broker, KafkaBroker) else {}),
            }
        ) as current:
            bus = Bus(current, source="restart-test")
            topic = bus.topics.commands("restart")
            got: list[int] = []
            lock = threading.Lock()

            def handler(message: Ping, _envelope: Envelope) -> None:
                with lock:
                    got.append(message.n)

            loop = ConsumerLoop(bus, [topic], group=f"{bus.topics.prefix}.restart")
            loop.add_handler(Ping, handler)
            loop.start()
            try:
                producer = bus.producer()
                producer.send(topic, Ping(n=1))
                producer.flush(10)
                wait_for(lambda: 1 in got, what="message before the restart")
                restart(broker)
                deadline = time.monotonic() + 60
                n = 100
                while not any(value >= 100 for value in got):
                    assert time.monotonic() < deadline, "the loop did not recover within 60s"
                    producer.send(topic, Ping(n=n))
                    producer.flush(2)
                    n += 1
                    time.sleep(0.5)
                assert loop.running
            finally:
                loop.stop()
    finally:
        broker.stop()


def test_latest_and_recent_read_the_newest_records_without_a_group(bus: Bus) -> None:
    topic = bus.topics.events("recent")
    bus.ensure_topics([topic], partitions=2)
    assert bus.recent(topic, 3) == []
    producer = bus.producer()
    for n in range(6):
        producer.send(topic, Ping(n=n), key=f"k{n}")  # keys spread them over both partitions
        producer.flush(10)
    newest = bus.recent(topic, 3)
    assert [envelope.open(Ping).n for envelope in newest] == [3, 4, 5]
    latest = bus.latest(topic)
    assert latest is not None
    assert latest.open(Ping).n == 5
    assert [envelope.open(Ping).n for envelope in bus.recent(topic, 10)] == list(range(6))
    bus.close()


def test_latest_on_a_paused_broker_raises_unavailable_and_works_once_it_continues(
    settings: Settings, tmp_path: Path
) -> None:
    """An app reading its sensors while the broker is paused gets a PlatformError it can handle."""
    broker = KafkaBroker(
        tmp_path / "kafka", KafkaSettings(jit=TEST_BROKER_JIT), log_file=tmp_path / "broker.log"
    )
    try:
        broker.start()
    except Unavailable as exc:
        missing_component("kafka", str(exc))
    try:
        with temporary_settings(kafka_updates(broker)) as current:
            bus = Bus(current, source="paused-test")
            topic = bus.topics.device_data("paused-sensor")
            producer = bus.producer()
            producer.send(topic, Ping(n=1))
            producer.flush(10)
            found = bus.latest(topic, timeout=5)
            assert found is not None
            broker.kill(signal.SIGSTOP)
            try:
                with pytest.raises(Unavailable, match="does not answer"):
                    bus.latest(topic, timeout=1)
            finally:
                broker.kill(signal.SIGCONT)
            wait_for(lambda: _answers(bus, topic), what="latest() answering again after the broker continued")
            bus.close()
    finally:
        broker.stop()


def _answers(bus: Bus, topic: str) -> bool:
    try:
        return bus.latest(topic, timeout=1) is not None
    except Unavailable:
        return False
