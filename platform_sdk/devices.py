"""Devices from both sides of the wire: what a device runs, and what an app calls.

Device side (a simulator, or a real device that uses the SDK):

* ``SensorPublisher(bus, device_id).publish({...})`` / ``.publish_frame(jpeg, w, h)``
  puts ``Reading`` / ``Frame`` messages on ``topics.device_data(device_id)``;
* ``ControllerEndpoint(bus, device_id, handle, initial_state)`` answers every
  ``DeviceCommand`` on ``topics.device_commands(device_id)`` with the new ``DeviceState``
  (``handle`` raising a ``PlatformError`` is a rejection: ``accepted=False`` and the
  reason) and publishes every state on ``topics.device_state(device_id)``.

App side: ``DeviceClient(bindings, group=...)`` knows the app's devices by alias only
(``bindings``: alias → device id and its ``DeviceType``, from the app instance's binding
config), so app code never sees an instance id or a topic:

* ``get_sensor_data(alias)`` — the latest reading (or frame);
* ``sensor_stream(alias)`` — every reading from now on, as an iterator or to a callback;
  each ``DeviceClient`` reads all its streams with one consumer in its own consumer
  group (``<group>``), so two app instances bound to one camera both get every frame;
* ``send_controller(alias, command, **params)`` — validated against the controller's
  type before it is sent; returns the new state, or raises ``ValidationFailed`` when
  the type or the device rejects it;
* ``controller_state(alias)`` — the controller's latest published state.

``command_controller(requester, binding, command, params, alias=...)`` is ``send_controller``'s
check and request/reply for one device on a requester of the caller's (the front door's
``POST /api/devices/<name>/commands`` sends what an app sends).
"""

from __future__ import annotations

import itertools
import queue
import threading
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from platform_sdk.bus import Bus, ConsumerLoop, Producer, Requester
from platform_sdk.device_documents import Binding
from platform_sdk.device_messages import DeviceCommand, DeviceState, Frame, Reading, ReadingValue
from platform_sdk.envelope import Envelope
from platform_sdk.errors import BadRequest, NotFound, PlatformError, Timeout, ValidationFailed

CommandHandler = Callable[[str, dict[str, Any]], dict[str, Any]]
STREAM_START_TIMEOUT_S = 30.0


# device side ---------------------------------------------------------------------------------
class SensorPublisher:
    """Publishes one sensor's readings (keyed by its id, so they stay in order)."""

    def __init__(self, bus: Bus, device_id: str) -> None:
        self.bus = bus
        self.device_id = device_id
        self.topic = bus.topics.device_data(device_id)
        self._seq = itertools.count()
        self._producer: Producer | None = None

    def start(self) -> None:
        self.bus.ensure_topics([self.topic])
        # A client of its own: an idempotent producer has at most 5 requests in flight per
        # connection and one request per partition, so sensors sharing a client queue behind
        # each other (100 sensors at 2,000 msg/s on one client: p99 182 ms instead of 25).
        self._producer = self.bus.producer(own_client=True)

    def stop(self) -> None:
        if self._producer is not None:
            self._producer.flush(5)
            self._producer = None

    def _send(self, message: Reading | Frame, data: bytes | None = None) -> None:
        if self._producer is None:
            raise RuntimeError("start() the publisher first")
        self._producer.send(self.topic, message, key=self.device_id, data=data)
        self._producer.poll(0)

    def publish(self, values: Mapping[str, ReadingValue]) -> Reading:
        reading = Reading(device_id=self.device_id, seq=next(self._seq), values=dict(values))
        self._send(reading)
        return reading

    def publish_frame(self, image: bytes, width: int, height: int, content_type: str = "image/jpeg") -> Frame:
        frame = Frame(
            device_id=self.device_id,
            seq=next(self._seq),
            content_type=content_type,
            width=width,
            height=height,
        )
        self._send(frame, image)
        return frame


class ControllerEndpoint:
    """Serves one controller's commands and publishes its state."""

    def __init__(
        self, bus: Bus, device_id: str, handle: CommandHandler, initial_state: dict[str, Any]
    ) -> None:
        self.bus = bus
        self.device_id = device_id
        self.handle = handle
        self.state = dict(initial_state)
        self._lock = threading.Lock()
        self._producer: Producer | None = None
        self._loop = ConsumerLoop(
            bus,
            [bus.topics.device_commands(device_id)],
            group=f"{bus.topics.prefix}.device.{device_id}",
            name=f"device-{device_id}",
            offset_reset="latest",
        )
        self._loop.add_handler(DeviceCommand, self._on_command)

    def start(self) -> None:
        self.bus.ensure_topics([self.bus.topics.device_state(self.device_id)])
        self._producer = self.bus.producer()
        self.publish_state()
        self._loop.start()
        self._loop.wait_assigned()  # commands sent once start() returned are all seen

    def stop(self) -> None:
        self._loop.stop()
        if self._producer is not None:
            self._producer.flush(5)
            self._producer = None

    def publish_state(self, answer: DeviceState | None = None) -> DeviceState:
        with self._lock:
            state = answer or DeviceState(device_id=self.device_id, state=dict(self.state))
        if self._producer is not None:
            self._producer.send(self.bus.topics.device_state(self.device_id), state, key=self.device_id)
            self._producer.poll(0)
        return state

    def _on_command(self, command: DeviceCommand, envelope: Envelope) -> DeviceState:
        try:
            with self._lock:
                self.state = dict(self.handle(command.command, dict(command.params)))
                state = dict(self.state)
        except PlatformError as exc:
            with self._lock:
                current = dict(self.state)
            rejected = DeviceState(
                device_id=self.device_id,
                state=current,
                command=command.command,
                accepted=False,
                error=exc.message + (f": {_details_text(exc.details)}" if exc.details else ""),
                by=envelope.source or None,
            )
            return self._publish_before_reply(rejected)
        return self._publish_before_reply(
            DeviceState(
                device_id=self.device_id, state=state, command=command.command, by=envelope.source or None
            )
        )

    def _publish_before_reply(self, state: DeviceState) -> DeviceState:
        """Publish ``state`` and wait for the broker's acknowledgement before the command is answered.

        Whoever got the reply then reads this state (or a newer one) from the state topic.
        """
        self.publish_state(state)
        if self._producer is not None:
            self._producer.flush(self.bus.settings.kafka.request_timeout_s)
        return state


def _details_text(details: Any) -> str:
    if isinstance(details, list):
        return "; ".join(
            f"{item.get('field')}: {item.get('reason')}" if isinstance(item, dict) else str(item)
            for item in details
        )
    return str(details)


def command_controller(
    requester: Requester, binding: Binding, command: str, params: dict[str, Any], *, alias: str
) -> DeviceState:
    """Check ``command(**params)`` against the controller's type, send it and return the accepted state.

    ``ValidationFailed`` (naming each field) when the type or the device rejects it; ``Timeout``
    when the device does not answer within ``device.command_timeout_s``. ``alias`` names the device in
    messages. ``DeviceClient.send_controller`` and the front door's device command route use it.
    """
    problems = binding.type.command_problems(command, params)
    if problems:
        raise ValidationFailed(
            f"{alias!r} ({binding.type.name}) cannot {command}: "
            + "; ".join(f"{problem['field']}: {problem['reason']}" for problem in problems),
            details=problems,
        )
    reply = requester.request(
        requester.bus.topics.device_commands(binding.device_id),
        DeviceCommand(device_id=binding.device_id, command=command, params=params),
        DeviceState,
        timeout=requester.bus.settings.device.command_timeout_s,
        key=binding.device_id,  # one partition: commands of every sender are applied in order
    )
    if not reply.accepted:
        raise ValidationFailed(f"{binding.device_id} rejected {command}: {reply.error}")
    return reply


# app side ------------------------------------------------------------------------------------
@dataclass(frozen=True)
class SensorData:
    """One reading or frame as an app receives it."""

    device_id: str
    seq: int
    values: dict[str, ReadingValue]
    image: bytes | None = None
    content_type: str | None = None

    def array(self, *, gray: bool = False) -> Any:
        """The frame decoded to a numpy array (BGR, or grayscale); needs OpenCV."""
        if self.image is None:
            raise BadRequest(f"{self.device_id} sent a reading, not a frame")
        from platform_sdk.codec import decode_image

        return decode_image(self.image, gray=gray)


def _sensor_data(envelope: Envelope) -> SensorData | None:
    if envelope.type == Reading.message_type:
        reading = envelope.open(Reading)
        return SensorData(reading.device_id, reading.seq, reading.values)
    if envelope.type == Frame.message_type:
        frame = envelope.open(Frame)
        return SensorData(
            frame.device_id,
            frame.seq,
            {"width": frame.width, "height": frame.height},
            image=envelope.data,
            content_type=frame.content_type,
        )
    if envelope.type == DeviceState.message_type:
        state = envelope.open(DeviceState)
        return SensorData(state.device_id, 0, state.state) if state.accepted else None
    return None


class SensorStream:
    """Every reading of one sensor (or state of one controller) from the moment it starts.

    Iterate it, or pass a callback. ``topic`` is the device's data topic, or a controller's
    state topic (each accepted state is then one ``SensorData``).

    Built directly, a stream has a consumer of its own in ``group`` (``start()`` it); the
    streams of a ``DeviceClient`` share the client's one consumer instead.
    """

    _loop: ConsumerLoop | None  # its own consumer, or None when its client's feeds it
    _detach: Callable[[SensorStream], None] | None  # how it leaves its client's consumer

    def __init__(
        self,
        bus: Bus,
        topic: str,
        device_id: str,
        group: str,
        callback: Callable[[SensorData], None] | None = None,
    ) -> None:
        self._setup(topic, device_id, callback)
        loop = ConsumerLoop(bus, [topic], group=group, name=f"stream-{device_id}", offset_reset="latest")
        loop.on_any(self._on_envelope)
        self._loop = loop

    def _setup(self, topic: str, device_id: str, callback: Callable[[SensorData], None] | None) -> None:
        self.topic = topic
        self.device_id = device_id
        self._queue: queue.Queue[SensorData] = queue.Queue(maxsize=1000)
        self._callback = callback
        self._loop = None
        self._detach = None

    @classmethod
    def _shared(
        cls,
        topic: str,
        device_id: str,
        callback: Callable[[SensorData], None] | None,
        detach: Callable[[SensorStream], None],
    ) -> SensorStream:
        """A stream fed by its ``DeviceClient``'s consumer; ``stop()`` calls ``detach(stream)``."""
        stream = cls.__new__(cls)
        stream._setup(topic, device_id, callback)
        stream._detach = detach
        return stream

    def start(self) -> SensorStream:
        if self._loop is not None:
            self._loop.start()
            self._loop.wait_assigned()
        return self

    def stop(self) -> None:
        if self._loop is not None:
            self._loop.stop()
        detach, self._detach = self._detach, None
        if detach is not None:
            detach(self)

    def __enter__(self) -> SensorStream:
        return self

    def __exit__(self, *_: object) -> None:
        self.stop()

    def _on_envelope(self, envelope: Envelope) -> None:
        data = _sensor_data(envelope)
        if data is not None:
            self._deliver(data)

    def _deliver(self, data: SensorData) -> None:
        if self._callback is not None:
            self._callback(data)
            return
        try:
            self._queue.put_nowait(data)
        except queue.Full:  # a slow reader loses the oldest, not the newest
            self._queue.get_nowait()
            self._queue.put_nowait(data)

    def next(self, timeout: float | None = None) -> SensorData:
        try:
            return self._queue.get(timeout=timeout)
        except queue.Empty as exc:
            raise Timeout(f"no reading from {self.device_id} within {timeout:g}s") from exc

    def __iter__(self) -> Iterator[SensorData]:
        while True:
            yield self._queue.get()


class DeviceClient:
    """An app's devices, by alias. ``close()`` (or ``with``) stops what it started.

    All its sensor streams share one consumer (a ``ConsumerLoop`` in the consumer group
    ``group``, started with the first stream, subscribed to each stream's topic as it is
    added, stopped when the last stream stops), which hands each record to the streams of
    its topic. Callbacks therefore run on that one consumer thread, one after the other.
    """

    def __init__(self, bus: Bus, bindings: Mapping[str, Binding], group: str) -> None:
        self.bus = bus
        self.bindings = dict(bindings)
        self.group = group
        self._requester: Requester | None = None
        # topic → its streams; replaced, never changed in place, so the consumer reads it unlocked
        self._routes: dict[str, tuple[SensorStream, ...]] = {}
        self._loop: ConsumerLoop | None = None
        self._loop_thread: int | None = None  # the consumer's thread, which cannot join itself
        self._lock = threading.Lock()
        self._loop_lock = threading.Lock()  # starting and stopping the consumer

    def _binding(self, alias: str, kind: str) -> Binding:
        binding = self.bindings.get(alias)
        if binding is None:
            known = ", ".join(sorted(self.bindings)) or "none"
            raise NotFound(f"no device bound to alias {alias!r} (bound: {known})")
        if binding.type.kind != kind:
            raise BadRequest(f"{alias!r} is a {binding.type.kind} ({binding.type.name}), not a {kind}")
        return binding

    def get_sensor_data(self, alias: str, timeout: float = 10.0) -> SensorData:
        """The sensor's latest reading (waiting up to ``timeout`` for a first one)."""
        binding = self._binding(alias, "sensor")
        envelope = self.bus.latest(self.bus.topics.device_data(binding.device_id), timeout)
        data = _sensor_data(envelope) if envelope is not None else None
        if data is None:
            raise Timeout(f"{alias!r} ({binding.device_id}) has sent nothing within {timeout:g}s")
        return data

    def sensor_stream(self, alias: str, callback: Callable[[SensorData], None] | None = None) -> SensorStream:
        """Every reading from now on, read by this client's one consumer in its own group."""
        return self.sensor_streams([alias], callback)[alias]

    def sensor_streams(
        self, aliases: Iterable[str], callback: Callable[[SensorData], None] | None = None
    ) -> dict[str, SensorStream]:
        """``sensor_stream`` for each alias, all started at once: a consumer group rebalance takes
        seconds (about 3 s on the embedded broker), and streams added together share one."""
        streams = {}
        for alias in dict.fromkeys(aliases):
            binding = self._binding(alias, "sensor")
            topic = self.bus.topics.device_data(binding.device_id)
            streams[alias] = SensorStream._shared(topic, binding.device_id, callback, self._detach)
        try:
            self._attach(list(streams.values()))
        except BaseException:
            for stream in streams.values():
                stream.stop()
            raise
        return streams

    def _attach(self, streams: list[SensorStream]) -> None:
        """Route each stream's topic to it, then have the consumer read those topics from now on."""
        topics = sorted({stream.topic for stream in streams})
        with self._loop_lock:
            with self._lock:
                for stream in streams:
                    self._routes[stream.topic] = (*self._routes.get(stream.topic, ()), stream)
            loop = self._loop
            if loop is None:
                loop = ConsumerLoop(
                    self.bus, topics, group=self.group, name=f"devices-{self.group}", offset_reset="latest"
                )
                loop.on_any_with_topic(self._dispatch)
                self._loop = loop
                loop.start()
                loop.wait_assigned(STREAM_START_TIMEOUT_S)
                return
        # Outside the lock: streams added at once from several threads share one rebalance.
        loop.add_topics(topics, STREAM_START_TIMEOUT_S)

    def _detach(self, stream: SensorStream) -> None:
        """Stop routing to ``stream``; the last stream to go stops the consumer."""
        with self._loop_lock:
            with self._lock:
                rest = tuple(other for other in self._routes.get(stream.topic, ()) if other is not stream)
                if rest:
                    self._routes[stream.topic] = rest
                else:
                    self._routes.pop(stream.topic, None)
                loop = None if self._routes else self._loop
            if loop is not None:
                self._loop = None
                if threading.get_ident() == self._loop_thread:  # a callback stopped the last stream
                    threading.Thread(target=loop.stop, name=f"aiot-stop-{loop.name}").start()
                else:
                    loop.stop()

    def _dispatch(self, topic: str, envelope: Envelope) -> None:
        """The consumer's handler: each record to every stream of its topic."""
        self._loop_thread = threading.get_ident()
        streams = self._routes.get(topic)
        if not streams:
            return
        data = _sensor_data(envelope)
        if data is None:
            return
        failure: Exception | None = None
        for stream in streams:
            try:
                stream._deliver(data)
            except Exception as exc:  # the other streams still get it; the loop dead-letters it
                failure = failure or exc
        if failure is not None:
            raise failure

    def send_controller(self, alias: str, command: str, **params: Any) -> dict[str, Any]:
        """Send ``command`` and return the controller's new state; ``ValidationFailed`` if rejected."""
        binding = self._binding(alias, "controller")
        return command_controller(self._requester_started(), binding, command, params, alias=alias).state

    def controller_state(self, alias: str, timeout: float = 10.0) -> dict[str, Any]:
        binding = self._binding(alias, "controller")
        envelope = self.bus.latest(self.bus.topics.device_state(binding.device_id), timeout)
        if envelope is None:
            raise Timeout(f"{alias!r} ({binding.device_id}) has published no state within {timeout:g}s")
        return envelope.open(DeviceState).state

    def _requester_started(self) -> Requester:
        with self._lock:
            if self._requester is None:
                requester = Requester(self.bus)
                requester.start()
                self._requester = requester
            return self._requester

    def close(self) -> None:
        with self._loop_lock:
            with self._lock:
                streams = [stream for group in self._routes.values() for stream in group]
                self._routes = {}
                requester, self._requester = self._requester, None
            loop, self._loop = self._loop, None
        for stream in streams:
            stream._detach = None  # stopped with the client: nothing left to detach from
        if loop is not None:
            loop.stop()
        if requester is not None:
            requester.stop()

    def __enter__(self) -> DeviceClient:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()
