"""The MQTT gateway: real devices on an MQTT broker, seen by the platform exactly like simulated ones.

The device manager runs it when ``device.mqtt_url`` is set (``mqtt://HOST:PORT``, or
``mqtts://`` for TLS; ``user:password@`` in the URL when the broker wants them). Every
MQTT topic starts with ``device.mqtt_topic_prefix`` (``<prefix>``, default ``aiot``);
``<device>`` is the device's registered name. Payloads are UTF-8 JSON unless said otherwise.

Who may say what is the broker's business: with ``device.mqtt_password_file`` and
``device.mqtt_acl_file`` set, the device manager keeps Mosquitto's password and ACL files
(``device_manager.mqtt_auth``): each real device logs in as its name with the password issued
when it was registered, and may publish only on its own ``data`` and ``frame`` (a sensor) or
``state`` (a controller) and subscribe only to its own ``commands``; the gateway logs in with
the ``user:password`` of ``device.mqtt_url`` and may use all of ``<prefix>/#``. So the
``<device>`` of a topic is the device that published it: Mosquitto refuses anyone else
(``allow_anonymous false``). Without those files (a broker that lets anyone in) the topic is
only a claim.

Device → platform (published by the device, QoS 0 or 1, never retained):

``<prefix>/<device>/data``
    ``{"values": {"temperature": 21.5, "humidity": 40}}``: one reading of a sensor; every
    value is checked against the type's ``outputs`` (``image`` outputs go on ``frame``);
    a number that is not finite (``NaN``, ``Infinity``, or one that overflows a float, such
    as ``1e999``) or an integer beyond 64 bits is refused, here and in ``state``
    ──▶ a ``Reading`` on ``<kafka prefix>.devices.<device>.data``.
``<prefix>/<device>/frame``
    The raw JPEG or PNG bytes of one frame, from a sensor whose type has an ``image``
    output; content type and size come from the image header (JPEG SOF, PNG IHDR), which
    must stay within the output's ``max_width`` x ``max_height`` (default 4096x4096) and the
    frame within its ``max_bytes`` (default 4 MiB) ──▶ a ``Frame`` carrying the bytes, on the
    same Kafka topic.
``<prefix>/<device>/state``
    ``{"state": {"on": true, "speed": 3}, "command_id": "9f1c...", "accepted": true,
    "error": null}``: a controller's state, checked against the type's ``state`` fields.
    ``command_id`` is the command it answers (null or absent for a change of its own);
    ``accepted`` defaults to true; a rejection (``false``) gives ``error`` and may omit
    ``state`` ──▶ a ``DeviceState`` on ``<kafka prefix>.devices.<device>.state``.

Platform → device (published by the gateway, QoS 1):

``<prefix>/<device>/commands``
    ``{"command_id": "9f1c...", "command": "set_speed", "params": {"speed": 3}}``: a
    command that passed the type's checks, the type's parameter defaults filled in. The
    device answers on ``state`` with the same ``command_id`` within 5 s.

For each registered real controller the gateway serves
``<kafka prefix>.devices.<device>.commands`` like a simulator does (consumer group
``<kafka prefix>.gateway.<device>``, request/reply): the command is checked against the
type, published on ``commands``, and the device's ``state`` answer with that
``command_id`` is the reply, ``accepted``/``error`` as the device says (``DeviceClient``
raises ``ValidationFailed`` with the error); no answer within 5 s is a rejection ("the
device did not answer within 5 s"). Commands are not retried; an answer that comes late
is still published as the controller's state.

Only registered devices with ``"simulated": false`` are bridged, each on the topics of its
kind (sensors: ``data``/``frame``; controllers: ``state``, ``commands``). The gateway reads
the registry at start and every few seconds (``refresh_s``): a new real controller gets its
command consumer, a removed one loses it. A message from an unregistered or simulated
device, on the wrong kind's topic, retained, not JSON, not of the shape above, or with a
value that does not fit the type is dropped: a warning names the device, the MQTT topic
and the reason (at most one per topic and reason every 10 s), and ``gateway.rejected``
counts it (``MqttGateway.counts``; ``gateway.forwarded``, ``gateway.commands``,
``gateway.command_timeouts`` and ``gateway.failed`` count the rest).

Threads: paho's network thread (``loop_start``; it reconnects on its own, backing off up
to 30 s, and subscribes again on every connect) turns device messages into Kafka records
without blocking; one consumer loop per real controller waits for its device's answers;
one thread follows the registry. ``stop()`` ends all of them.
"""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import math
import threading
import time
import uuid
from collections import Counter
from concurrent.futures import Future, InvalidStateError
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from device_manager import registry
from device_manager.mqtt_auth import broker_address
from device_manager.states import read_latest
from platform_core.db import Database
from platform_core.service import PeriodicTask
from platform_sdk import json_numbers
from platform_sdk.bus import Bus, ConsumerLoop, Producer
from platform_sdk.device_documents import DeviceType, ParamSpec
from platform_sdk.device_messages import DeviceCommand, DeviceState
from platform_sdk.devices import SensorPublisher
from platform_sdk.envelope import Envelope
from platform_sdk.errors import BadRequest, PlatformError
from platform_sdk.settings import Settings

log = logging.getLogger(__name__)

_MAX_WARN_KEYS = 1000

FORWARDED = "gateway.forwarded"
REJECTED = "gateway.rejected"
FAILED = "gateway.failed"
COMMANDS = "gateway.commands"
COMMAND_TIMEOUTS = "gateway.command_timeouts"

_STATE_KEYS = frozenset({"state", "command_id", "accepted", "error"})
_JPEG_SOF = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}
_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


# --- payloads -----------------------------------------------------------------------------------
class _Refused(Exception):
    """A device message that is not forwarded: ``category`` (for warnings) and the reason."""

    def __init__(self, category: str, reason: str) -> None:
        super().__init__(reason)
        self.category = category
        self.reason = reason


def _json_object(payload: bytes) -> dict[str, Any]:
    """The payload's JSON object, refused when it holds a number that does not fit (NaN, Infinity,
    a float that overflows, an integer beyond 64 bits): the first one is named with its value."""
    try:
        body = json_numbers.loads(payload.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as exc:
        raise _Refused("malformed", f"not UTF-8 JSON: {exc}") from exc
    if not isinstance(body, dict):
        raise _Refused("malformed", f"expected a JSON object, not {type(body).__name__}")
    if bad := json_numbers.bad_numbers(body):
        path, number = bad[0]
        literal = number.literal if len(number.literal) <= 24 else f"{number.literal[:24]}..."
        said = number.reason if number.reason.startswith(literal) else f"{literal} is {number.reason}"
        raise _Refused("non-finite", f"{'.'.join(map(str, path))}: {said}")
    return body


def _field_problems(specs: dict[str, ParamSpec], values: dict[str, Any], what: str) -> list[str]:
    known = ", ".join(sorted(specs)) or "none"
    problems = []
    for name, value in values.items():
        spec = specs.get(name)
        if spec is None:
            problems.append(f"{name}: unknown {what} field (it has: {known})")
            continue
        reason = spec.problem(value)
        if reason:
            problems.append(f"{name}: {reason}")
    return problems


def reading_values(device_type: DeviceType, payload: bytes) -> dict[str, Any]:
    """The values of a ``data`` message, checked against the type's outputs; ``_Refused`` otherwise."""
    body = _json_object(payload)
    extra = sorted(set(body) - {"values"})
    if extra:
        raise _Refused(
            "malformed", f'unknown field(s) {", ".join(extra)}; a reading is {{"values": {{...}}}}'
        )
    values = body.get("values")
    if not isinstance(values, dict) or not values:
        raise _Refused("malformed", 'a reading is {"values": {...}} with at least one value')
    images = sorted(
        name for name in values if name in device_type.outputs and device_type.outputs[name].type == "image"
    )
    if images:
        raise _Refused(
            "invalid", f"{', '.join(images)}: image outputs are sent as raw bytes on <device>/frame"
        )
    problems = _field_problems(device_type.outputs, values, "output")
    if problems:
        raise _Refused("invalid", f"values do not fit type {device_type.name!r}: " + "; ".join(problems))
    return values


def image_size(image: bytes) -> tuple[str, int, int]:
    """(content type, width, height) of a JPEG or PNG, from its header only; ``ValueError`` otherwise."""
    if image.startswith(_PNG_SIGNATURE):
        if len(image) < 24 or image[12:16] != b"IHDR":
            raise ValueError("a PNG without its IHDR header")
        return "image/png", int.from_bytes(image[16:20], "big"), int.from_bytes(image[20:24], "big")
    if not image.startswith(b"\xff\xd8"):
        raise ValueError(f"neither JPEG nor PNG (starts with {image[:8].hex() or 'nothing'})")
    index = 2
    while index + 4 <= len(image):
        if image[index] != 0xFF:
            raise ValueError(f"a JPEG with a broken segment at byte {index}")
        while index < len(image) and image[index] == 0xFF:  # fill bytes before a marker
            index += 1
        if index >= len(image):
            break
        marker = image[index]
        index += 1
        if marker == 0x01 or 0xD0 <= marker <= 0xD8:  # markers without a length
            continue
        if marker in (0xD9, 0xDA):  # end of image or scan data before any frame header
            break
        length = int.from_bytes(image[index : index + 2], "big")
        if length < 2:
            raise ValueError(f"a JPEG segment of length {length} at byte {index}")
        if marker in _JPEG_SOF:
            if index + 7 > len(image):
                break
            height = int.from_bytes(image[index + 3 : index + 5], "big")
            width = int.from_bytes(image[index + 5 : index + 7], "big")
            return "image/jpeg", width, height
        index += length
    raise ValueError("a JPEG without a frame header (SOF)")


def frame_size(spec: ParamSpec, image: bytes) -> tuple[str, int, int]:
    """(content type, width, height) of a frame within the limits of image output ``spec``
    (``ParamSpec.image_limits``); ``_Refused`` otherwise. Only the header is read."""
    max_width, max_height, max_bytes = spec.image_limits()
    if len(image) > max_bytes:
        raise _Refused("too large", f"a frame of {len(image)} bytes; the type accepts at most {max_bytes}")
    try:
        content_type, width, height = image_size(image)
    except ValueError as exc:
        raise _Refused("invalid", f"not a JPEG or PNG frame: {exc}") from exc
    if width <= 0 or height <= 0:
        raise _Refused("invalid", f"the image header says {width}x{height}")
    if width > max_width or height > max_height:
        raise _Refused(
            "too large",
            f"the image header says {width}x{height}; the type accepts at most {max_width}x{max_height}",
        )
    return content_type, width, height


@dataclass(frozen=True)
class StateMessage:
    """A checked ``state`` message."""

    state: dict[str, Any] | None
    command_id: str | None
    accepted: bool
    error: str | None


def state_message(device_type: DeviceType, payload: bytes) -> StateMessage:
    """A ``state`` message checked against the type's state fields; ``_Refused`` otherwise."""
    body = _json_object(payload)
    extra = sorted(set(body) - _STATE_KEYS)
    if extra:
        known = ", ".join(sorted(_STATE_KEYS))
        raise _Refused("malformed", f"unknown field(s) {', '.join(extra)} (a state message has: {known})")
    accepted = body.get("accepted", True)
    command_id = body.get("command_id")
    error = body.get("error")
    state = body.get("state")
    if not isinstance(accepted, bool):
        raise _Refused("malformed", f"accepted must be true or false, not {accepted!r}")
    if command_id is not None and not isinstance(command_id, str):
        raise _Refused("malformed", f"command_id must be a string, not {command_id!r}")
    if error is not None and not isinstance(error, str):
        raise _Refused("malformed", f"error must be a string or null, not {error!r}")
    if state is None and accepted:
        raise _Refused("malformed", 'a state message needs "state": {...} (only a rejection may omit it)')
    if state is not None and not isinstance(state, dict):
        raise _Refused("malformed", f"state must be a JSON object, not {type(state).__name__}")
    if state is not None and device_type.state:
        problems = _field_problems(device_type.state, state, "state")
        if problems:
            raise _Refused("invalid", f"state does not fit type {device_type.name!r}: " + "; ".join(problems))
    return StateMessage(state=state, command_id=command_id, accepted=accepted, error=error)


class _QuietAfterDisconnect(logging.Filter):
    """paho 2.2 logs an error for its last loop after ``disconnect()``; our callbacks say what matters."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith("Client is not connected")


_PAHO_LOG = log.getChild("paho")
_PAHO_LOG.addFilter(_QuietAfterDisconnect())


# --- the gateway --------------------------------------------------------------------------------
@dataclass(frozen=True)
class _Known:
    """A registered device as the gateway last read it."""

    simulated: bool
    type: DeviceType


@dataclass
class _Pending:
    """A command published to a device, waiting for its answer."""

    device: str
    command: str
    answer: Future[DeviceState]

    def settle(self, state: DeviceState) -> bool:
        """Answer with ``state``, unless answered already (paho's thread and ``stop()`` may race)."""
        try:
            self.answer.set_result(state)
        except InvalidStateError:
            return False
        return True


class _SharedPublisher(SensorPublisher):
    """A device's ``SensorPublisher`` (its own ``seq``) on the gateway's one Kafka producer."""

    def __init__(self, bus: Bus, device_id: str, producer: Producer) -> None:
        super().__init__(bus, device_id)
        self._shared = producer

    def start(self) -> None:  # the topic is created by the gateway, with the others
        self._producer = self._shared

    def stop(self) -> None:  # the gateway flushes the shared producer once
        self._producer = None


class MqttGateway:
    """Bridges the registered real devices on an MQTT broker to the bus. ``start()`` / ``stop()``."""

    def __init__(
        self,
        settings: Settings,
        bus: Bus,
        database: Database,
    ) -> None:
        if not settings.device.mqtt_url:
            raise BadRequest("the MQTT gateway needs device.mqtt_url (mqtt://HOST:PORT)")
        self.settings = settings
        self.bus = bus
        self.database = database
        self.url = settings.device.mqtt_url
        self.prefix = settings.device.mqtt_topic_prefix.strip("/")
        self.refresh_s = settings.device.gateway_refresh_s
        self.command_timeout_s = settings.device.gateway_command_timeout_s
        self.warn_interval_s = settings.device.gateway_warn_interval_s
        self.counts: Counter[str] = Counter()
        self._address = broker_address(self.url)
        self._lock = threading.Lock()  # the maps below, read by paho's thread and the command loops
        self._refresh_lock = threading.Lock()  # one refresh (or stop) at a time
        self._known: dict[str, _Known] = {}
        self._publishers: dict[str, _SharedPublisher] = {}
        self._states: dict[str, dict[str, Any]] = {}
        self._pending: dict[str, _Pending] = {}
        self._warned: dict[tuple[str, str], tuple[float, int]] = {}
        self._loops: dict[str, ConsumerLoop] = {}
        self._producer: Producer | None = None
        self._client: mqtt.Client | None = None
        self._refresher: PeriodicTask | None = None
        self._connected = threading.Event()
        self._subscribed = threading.Event()
        self._subscribe_mid: int | None = None
        self._stopping = False
        self._outage_logged = False

    # life cycle ---------------------------------------------------------------------------
    def start(self) -> None:
        """Read the registry, start the command consumers, connect (in the background) and follow."""
        self._stopping = False
        try:
            self._producer = self.bus.producer()
            self._client = self._new_client()
            self.refresh()
            host, port, _tls, _user, _password = self._address
            self._client.connect_async(host, port, keepalive=self.settings.device.mqtt_keepalive_s)
            self._client.loop_start()
            self._refresher = PeriodicTask("mqtt-gateway-refresh", self.refresh_s, self.refresh)
            self._refresher.start()
        except BaseException:
            self.stop()
            raise
        log.info("MQTT gateway started: %s, topics %s/<device>/...", self.url, self.prefix)

    def wait_ready(self, timeout: float = 10.0) -> bool:
        """Whether within ``timeout`` it is subscribed and each command consumer has its partitions."""
        deadline = time.monotonic() + timeout
        if not self._subscribed.wait(timeout):
            return False
        with self._refresh_lock:
            loops = list(self._loops.values())
        try:
            for loop in loops:
                loop.wait_assigned(max(deadline - time.monotonic(), 0.01))
        except PlatformError:
            return False
        return True

    def stop(self) -> None:
        """Answer waiting commands, stop the command consumers, disconnect, flush."""
        self._stopping = True
        if self._refresher is not None:
            self._refresher.stop()
            self._refresher = None
        with self._lock:
            pending, self._pending = self._pending, {}
        for waiter in pending.values():
            waiter.settle(self._rejection(waiter.device, waiter.command, "the gateway is stopping"))
        with self._refresh_lock:
            loops, self._loops = self._loops, {}
        for device, loop in loops.items():
            try:
                loop.stop()
            except Exception:
                log.exception("MQTT gateway: stopping the command consumer of %s failed", device)
        client, self._client = self._client, None
        if client is not None:
            client.disconnect()
            client.loop_stop()
        self._connected.clear()
        self._subscribed.clear()
        with self._lock:
            publishers, self._publishers = self._publishers, {}
        for publisher in publishers.values():
            publisher.stop()
        producer, self._producer = self._producer, None
        if producer is not None and producer.flush(5):
            log.warning("MQTT gateway: %d message(s) to Kafka were not delivered before stop", len(producer))

    # the registry -------------------------------------------------------------------------
    def refresh(self) -> None:
        """Read the registered devices; start and stop command consumers to match."""
        with self._refresh_lock:
            if self._stopping:
                return
            known, states = self._read_registry()
            self._follow(known, states)

    def _read_registry(self) -> tuple[dict[str, _Known], dict[str, dict[str, Any]]]:
        with self.database.session() as session:
            types = {row.name: registry.type_document(row) for row in registry.list_types(session)}
            known = {
                row.name: _Known(row.simulated, types[row.type])
                for row in registry.list_devices(session)
                if row.type in types
            }
            with self._lock:
                new_controllers = [
                    name
                    for name, device in known.items()
                    if _is_real(device, "controller") and name not in self._states
                ]
            states = {}
            for name in new_controllers:
                latest = registry.read_state(session, name)
                states[name] = dict(latest.values) if latest is not None and latest.kind == "state" else {}
        return known, states

    def _follow(self, known: dict[str, _Known], states: dict[str, dict[str, Any]]) -> None:
        assert self._producer is not None
        sensors = {name for name, device in known.items() if _is_real(device, "sensor")}
        controllers = {name for name, device in known.items() if _is_real(device, "controller")}
        with self._lock:
            publishers = {name: p for name, p in self._publishers.items() if name in sensors}
        new_sensors = sorted(sensors - publishers.keys())
        new_controllers = sorted(controllers - self._loops.keys())
        self.bus.ensure_topics(
            [self.bus.topics.device_data(name) for name in new_sensors]
            + [self.bus.topics.device_state(name) for name in new_controllers]
        )
        for name in new_controllers:  # its state topic is newer than the recorded row (if any)
            with contextlib.suppress(PlatformError):
                found = read_latest(self.bus, name, "controller", self.settings.device.state_read_timeout_s)
                if found is not None:
                    states[name] = dict(found.values)
        for name in new_sensors:
            publisher = _SharedPublisher(self.bus, name, self._producer)
            publisher.start()
            publishers[name] = publisher
        started = {}
        for name in new_controllers:
            try:
                started[name] = self._command_loop(name)
            except PlatformError as exc:  # tried again at the next refresh
                log.warning("MQTT gateway: cannot serve the commands of %s yet: %s", name, exc)
        with self._lock:
            self._known = known
            self._publishers = publishers
            self._states = {name: state for name, state in self._states.items() if name in controllers}
            for name in controllers - self._states.keys():
                self._states[name] = states.get(name, {})
        self._loops.update(started)
        for name in new_sensors + sorted(started):
            log.info("MQTT gateway: bridging %s (%s)", name, known[name].type.name)
        for name in sorted(self._loops.keys() - controllers):
            log.info(
                "MQTT gateway: %s is no longer a registered real controller; not serving its commands", name
            )
            self._loops.pop(name).stop()

    def _command_loop(self, device: str) -> ConsumerLoop:
        loop = ConsumerLoop(
            self.bus,
            [self.bus.topics.device_commands(device)],
            group=f"{self.bus.topics.prefix}.gateway.{device}",
            name=f"gateway-{device}",
            offset_reset="latest",
        )
        loop.add_handler(DeviceCommand, functools.partial(self._on_command, device))
        loop.start()
        return loop

    # platform → device --------------------------------------------------------------------
    def _rejection(self, device: str, command: str, error: str) -> DeviceState:
        with self._lock:
            state = dict(self._states.get(device, {}))
        return DeviceState(device_id=device, state=state, command=command, accepted=False, error=error)

    def _on_command(self, device: str, command: DeviceCommand, _envelope: Envelope) -> DeviceState:
        """Publish a checked command to the device and answer with its state (or a rejection)."""
        self._count(COMMANDS)
        with self._lock:
            known = self._known.get(device)
        if command.device_id != device:
            return self._rejection(
                device, command.command, f"a command for {command.device_id} on {device}'s topic"
            )
        if known is None or not _is_real(known, "controller"):
            return self._rejection(
                device, command.command, f"{device} is no longer a registered real controller"
            )
        problems = known.type.command_problems(command.command, command.params)
        if problems:
            reasons = "; ".join(f"{problem['field']}: {problem['reason']}" for problem in problems)
            return self._rejection(
                device, command.command, f"{known.type.name} cannot {command.command}: {reasons}"
            )
        client = self._client
        if client is None or not self._connected.is_set() or self._stopping:
            return self._rejection(
                device, command.command, f"the gateway is not connected to the MQTT broker {self.url}"
            )
        spec = known.type.commands[command.command]
        params = {
            name: param.default for name, param in spec.params.items() if param.default is not None
        } | command.params
        command_id = uuid.uuid4().hex
        waiter = _Pending(device, command.command, Future())
        with self._lock:
            self._pending[command_id] = waiter
        try:
            payload = json.dumps({"command_id": command_id, "command": command.command, "params": params})
            info = client.publish(f"{self.prefix}/{device}/commands", payload, qos=1)
            if info.rc != MQTTErrorCode.MQTT_ERR_SUCCESS:
                reason = mqtt.error_string(info.rc)
                return self._rejection(
                    device, command.command, f"the gateway cannot publish the command: {reason}"
                )
            try:
                return waiter.answer.result(self.command_timeout_s)
            except FutureTimeout:
                self._count(COMMAND_TIMEOUTS)
                log.warning(
                    "MQTT gateway: %s did not answer %s within %g s",
                    device,
                    command.command,
                    self.command_timeout_s,
                )
                return self._rejection(
                    device, command.command, f"the device did not answer within {self.command_timeout_s:g} s"
                )
        finally:
            with self._lock:
                self._pending.pop(command_id, None)

    # device → platform --------------------------------------------------------------------
    def _new_client(self) -> mqtt.Client:
        _host, _port, tls, username, password = self._address
        client = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=f"{self.prefix.replace('/', '-')}-gateway-{uuid.uuid4().hex[:12]}",
            clean_session=True,
        )
        client.enable_logger(_PAHO_LOG)
        client.reconnect_delay_set(1, self.settings.device.mqtt_reconnect_max_s)
        if tls:
            client.tls_set()
        if username is not None:
            client.username_pw_set(username, password)
        client.on_connect = self._on_connect
        client.on_connect_fail = self._on_connect_fail
        client.on_disconnect = self._on_disconnect
        client.on_subscribe = self._on_subscribe
        client.on_message = self._on_message
        return client

    def _on_connect(
        self,
        client: mqtt.Client,
        _userdata: Any,
        _flags: mqtt.ConnectFlags,
        reason_code: ReasonCode,
        _properties: Properties | None,
    ) -> None:
        if reason_code.is_failure:
            log.warning("MQTT gateway: %s refused the connection: %s", self.url, reason_code)
            return
        self._outage_logged = False
        self._connected.set()
        topics = [(f"{self.prefix}/+/{channel}", 1) for channel in ("data", "frame", "state")]
        _result, self._subscribe_mid = client.subscribe(topics)
        log.info("MQTT gateway: connected to %s", self.url)

    def _on_connect_fail(self, _client: mqtt.Client, _userdata: Any) -> None:
        if not self._outage_logged:
            self._outage_logged = True
            log.warning("MQTT gateway: cannot reach %s; retrying in the background", self.url)

    def _on_disconnect(
        self,
        _client: mqtt.Client,
        _userdata: Any,
        _flags: mqtt.DisconnectFlags,
        reason_code: ReasonCode,
        _properties: Properties | None,
    ) -> None:
        self._connected.clear()
        self._subscribed.clear()
        if not self._stopping:
            log.warning("MQTT gateway: lost %s (%s); reconnecting", self.url, reason_code)

    def _on_subscribe(
        self,
        _client: mqtt.Client,
        _userdata: Any,
        mid: int,
        reason_codes: list[ReasonCode],
        _properties: Properties | None,
    ) -> None:
        if mid != self._subscribe_mid:
            return
        refused = [str(code) for code in reason_codes if code.is_failure]
        if refused:
            log.error(
                "MQTT gateway: %s refused the subscriptions under %s/: %s", self.url, self.prefix, refused
            )
            return
        self._subscribed.set()

    def _on_message(self, _client: mqtt.Client, _userdata: Any, message: mqtt.MQTTMessage) -> None:
        # Runs on paho's network thread: an exception here would end it, so none gets out.
        topic = message.topic
        try:
            self._handle(topic, bytes(message.payload), retained=bool(message.retain))
        except _Refused as refused:
            self._refuse(topic, refused.category, refused.reason)
        except PlatformError as exc:
            self._count(FAILED)
            self._warn(topic, "kafka", "MQTT gateway: cannot forward %s to Kafka: %s", topic, exc)
        except Exception:
            self._count(FAILED)
            log.exception("MQTT gateway: handling a message on %s failed", topic)

    def _handle(self, topic: str, payload: bytes, *, retained: bool) -> None:
        device, channel = self._split(topic)
        with self._lock:
            known = self._known.get(device)
            publisher = self._publishers.get(device)
        if known is None:
            raise _Refused("unregistered", f"{device} is not a registered device")
        if known.simulated:
            raise _Refused("simulated", f"{device} is registered as simulated; its simulator speaks for it")
        kind = "controller" if channel == "state" else "sensor"
        if known.type.kind != kind:
            expected = "state" if known.type.kind == "controller" else "data or frame"
            raise _Refused(
                "wrong kind",
                f"{device} is a {known.type.kind} ({known.type.name}); it sends {expected}, not {channel}",
            )
        if retained:
            raise _Refused("retained", "a retained message is an old one; publish without the retain flag")
        if channel == "state":
            self._on_state(device, known.type, payload)
            return
        if publisher is None:  # registered a moment ago: its publisher comes with the next refresh
            raise _Refused("unregistered", f"{device} is not bridged yet")
        if channel == "data":
            publisher.publish(reading_values(known.type, payload))
        else:
            self._on_frame(publisher, known.type, payload)
        self._count(FORWARDED)

    def _split(self, topic: str) -> tuple[str, str]:
        head = f"{self.prefix}/"
        parts = topic[len(head) :].split("/") if topic.startswith(head) else []
        if len(parts) != 2 or parts[1] not in ("data", "frame", "state"):
            raise _Refused("topic", f"not a device topic ({head}<device>/data, frame or state)")
        return parts[0], parts[1]

    def _on_frame(self, publisher: SensorPublisher, device_type: DeviceType, image: bytes) -> None:
        spec = next((spec for spec in device_type.outputs.values() if spec.type == "image"), None)
        if spec is None:
            raise _Refused(
                "wrong kind", f"type {device_type.name!r} has no image output; send readings on data"
            )
        content_type, width, height = frame_size(spec, image)
        publisher.publish_frame(image, width, height, content_type)

    def _on_state(self, device: str, device_type: DeviceType, payload: bytes) -> None:
        try:
            message = state_message(device_type, payload)
        except _Refused as refused:
            self._answer_invalid(device, payload, refused)
            raise
        with self._lock:
            waiter = self._pending.get(message.command_id) if message.command_id else None
            if waiter is not None and waiter.device != device:
                waiter = None
            if message.accepted and message.state is not None:
                self._states[device] = dict(message.state)
            current = dict(self._states.get(device, {}))
        error = message.error
        if not message.accepted and not error:
            error = "the device rejected the command without a reason"
        state = DeviceState(
            device_id=device,
            state=message.state if message.state is not None else current,
            command=waiter.command if waiter is not None else None,
            accepted=message.accepted,
            error=error if not message.accepted else None,
        )
        answered = waiter is not None and waiter.settle(state)  # the reply; the state topic gets it too
        if message.command_id and not answered:
            log.info(
                "MQTT gateway: %s answered command %s, which no one waits for (late?)",
                device,
                message.command_id,
            )
        assert self._producer is not None
        self._producer.send(self.bus.topics.device_state(device), state, key=device)
        self._count(FORWARDED)

    def _answer_invalid(self, device: str, payload: bytes, refused: _Refused) -> None:
        """A command waiting for this (invalid) answer gets a rejection now, not a timeout."""
        try:
            command_id = json.loads(payload).get("command_id")
        except (ValueError, AttributeError):
            return
        with self._lock:
            waiter = self._pending.get(command_id) if isinstance(command_id, str) else None
        if waiter is not None and waiter.device == device:
            error = f"the device answered with an invalid state: {refused.reason}"
            waiter.settle(self._rejection(device, waiter.command, error))

    # counting and warning -----------------------------------------------------------------
    def _count(self, name: str) -> None:
        with self._lock:
            self.counts[name] += 1

    def _refuse(self, topic: str, category: str, reason: str) -> None:
        self._count(REJECTED)
        device = self._device_of(topic)
        self._warn(
            topic, category, "MQTT gateway: dropped a message from %s on %s: %s", device, topic, reason
        )

    def _device_of(self, topic: str) -> str:
        parts = topic.split("/")
        return parts[-2] if len(parts) >= 2 else topic

    def _warn(self, topic: str, category: str, text: str, *args: Any) -> None:
        """Log a warning at most once per topic and category every ``device.gateway_warn_interval_s``."""
        now = time.monotonic()
        key = (topic, category)
        with self._lock:
            if len(self._warned) > _MAX_WARN_KEYS:
                self._warned.clear()
            last, suppressed = self._warned.get(key, (-math.inf, 0))
            if now - last < self.warn_interval_s:
                self._warned[key] = (last, suppressed + 1)
                return
            self._warned[key] = (now, 0)
        if suppressed:
            text += f" (and {suppressed} more like it in the last {self.warn_interval_s:g} s)"
        log.warning(text, *args)

    def bridged(self) -> dict[str, str]:
        """The devices bridged now: name → kind (a controller only once its command consumer runs)."""
        with self._refresh_lock:
            serving = set(self._loops)
        with self._lock:
            return {
                name: device.type.kind
                for name, device in sorted(self._known.items())
                if (_is_real(device, "sensor") and name in self._publishers) or name in serving
            }

    def stats(self) -> dict[str, int]:
        with self._lock:
            return dict(self.counts)

    @property
    def rejected(self) -> int:
        with self._lock:
            return self.counts[REJECTED]


def _is_real(device: _Known, kind: str) -> bool:
    return not device.simulated and device.type.kind == kind
