"""``SimulatorService``: the simulated devices of one location as one managed service (``sim-<location>``).

    AIOT_DEVICE__LOCATION, AIOT_DEVICE__SIMULATED ([{id, type, parameters}]), AIOT_DEVICE__TIME_SCALE
        ──▶ device_config() per device ──▶ its model
    sensor:     Ticker (type's rate_hz; camera: fps) ──▶ model.read(clock()) / next_frame
                    ──▶ SensorPublisher.publish / publish_frame(JPEG) ──▶ <prefix>.devices.<id>.data
    controller: <prefix>.devices.<id>.commands ──▶ ControllerEndpoint ──▶ model.apply
                    ──▶ the new DeviceState (reply, and on <prefix>.devices.<id>.state)

One process plays every simulated device of its location: a Python interpreter per device
cost about 60 MB each (a camera's 120), most of the demo's memory. A device whose settings
do not fit is logged and left out; the others play on. The bus is reached only through
``platform_sdk.devices``, as a real device using the SDK does.
"""

from __future__ import annotations

import logging
import threading
import time
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from platform_core.service import Service
from platform_sdk.device_documents import DeviceType, SimulatedDevice
from platform_sdk.devices import ControllerEndpoint, SensorPublisher
from platform_sdk.errors import BadRequest, PlatformError
from simulators.models import (
    CONTROLLER_MODELS,
    SENSOR_MODELS,
    CameraSim,
    ControllerSim,
    LightSim,
    TemperatureSim,
    simulated_clock,
)

log = logging.getLogger(__name__)
JPEG_QUALITY = 85
SensorModel = LightSim | TemperatureSim | CameraSim


@dataclass(frozen=True)
class DeviceConfig:
    """What a simulator plays: checked and with the type's parameter defaults filled in."""

    device_id: str
    type: DeviceType
    simulator: str
    parameters: dict[str, Any]
    time_scale: float


def device_config(device: SimulatedDevice, time_scale: float = 1.0) -> DeviceConfig:
    """The simulated device ``device`` describes; ``BadRequest`` naming what does not fit."""
    device_type = device.type
    simulator = device_type.simulator
    if simulator is None:
        raise BadRequest(
            f"device type {device_type.name!r} of {device.id} has no simulator: "
            "its devices are real (they join over MQTT)"
        )
    expected_kind = "sensor" if simulator in SENSOR_MODELS else "controller"
    if device_type.kind != expected_kind:
        raise BadRequest(
            f"device type {device_type.name!r} is a {device_type.kind}, "
            f"but the {simulator} simulator plays a {expected_kind}"
        )
    sensor_model = SENSOR_MODELS.get(simulator)
    outputs = sensor_model.OUTPUTS if sensor_model is not None else ()
    if outputs and not set(outputs) & set(device_type.outputs):
        raise BadRequest(
            f"device type {device_type.name!r} declares outputs {', '.join(sorted(device_type.outputs))}; "
            f"the {simulator} simulator produces {', '.join(outputs)}"
        )
    defaults = {
        name: spec.default for name, spec in device_type.parameters.items() if spec.default is not None
    }
    parameters = defaults | device.parameters
    problems = [
        {"field": f"parameters.{name}", "reason": reason}
        for name, spec in device_type.parameters.items()
        if name in parameters and (reason := spec.problem(parameters[name]))
    ]
    if problems:
        raise BadRequest(
            f"the parameters of {device.id} do not fit type {device_type.name!r}: "
            + "; ".join(f"{p['field']}: {p['reason']}" for p in problems),
            details=problems,
        )
    unknown = sorted(set(device.parameters) - set(device_type.parameters))
    if unknown:
        log.warning("%s: ignoring parameters its type does not declare: %s", device.id, ", ".join(unknown))
    return DeviceConfig(device.id, device_type, simulator, parameters, time_scale)


def build_model(config: DeviceConfig) -> SensorModel | ControllerSim:
    """The simulator's model for the device; sensors seeded by the device id, so a restart repeats."""
    if config.simulator in CONTROLLER_MODELS:
        return CONTROLLER_MODELS[config.simulator](config.type)
    return SENSOR_MODELS[config.simulator](config.parameters, zlib.crc32(config.device_id.encode()))


class Ticker:
    """Calls ``work()`` at a fixed rate (no drift; the first call at once) on one thread until ``stop()``.

    A failure is logged once, then counted until ``work()`` succeeds again, so a broker that
    is away does not flood the log at the camera's frame rate.
    """

    def __init__(self, name: str, rate_hz: float, work: Callable[[], None]) -> None:
        self.name = name
        self.interval_s = 1.0 / rate_hz
        self.work = work
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name=f"aiot-{self.name}")
        self._thread.start()

    def _run(self) -> None:
        failures = 0
        due = time.monotonic()
        while not self._stop.is_set():
            try:
                self.work()
            except Exception:
                if failures == 0:
                    log.exception("%s failed; retrying every %.3gs", self.name, self.interval_s)
                failures += 1
            else:
                if failures:
                    log.info("%s works again after %d failures", self.name, failures)
                failures = 0
            due += self.interval_s
            now = time.monotonic()
            due = max(due, now)  # running late (slow work, a paused process): skip, do not burst
            self._stop.wait(due - now)

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None


class SimulatorService(Service):
    """Plays the simulated devices in ``settings.device.simulated`` (one location's) with their simulators."""

    name = "simulator"

    def default_service_id(self) -> str:
        location = self.settings.device.location
        return f"sim-{location}" if location else self.name

    def devices(self) -> list[tuple[DeviceConfig, SensorModel | ControllerSim]]:
        """Each device's config and model; one that does not fit is logged and left out.

        Raises the first device's error when none fits (and ``BadRequest`` when there are none).
        """
        settings = self.settings.device
        if not settings.simulated:
            raise BadRequest(
                f"{self.service_id} has no devices to play: set AIOT_DEVICE__SIMULATED to a JSON list "
                "of {id, type, parameters} (the device manager does)"
            )
        playable: list[tuple[DeviceConfig, SensorModel | ControllerSim]] = []
        errors: list[PlatformError] = []
        for device in settings.simulated:
            try:
                config = device_config(device, settings.time_scale)
                playable.append((config, build_model(config)))
            except PlatformError as exc:
                log.error("%s cannot play %s: %s", self.service_id, device.id, exc)  # to the platform's logs
                errors.append(exc)
        if not playable:
            raise errors[0]
        return playable

    def on_start(self) -> None:
        for config, model in self.devices():
            if isinstance(model, ControllerSim):
                self._start_controller(config, model)
            else:
                self._start_sensor(config, model)

    def _start_controller(self, config: DeviceConfig, model: ControllerSim) -> None:
        endpoint = ControllerEndpoint(self.sdk.bus, config.device_id, model.apply, model.state)
        endpoint.start()
        self.own(endpoint)
        log.info(
            "%s: %s simulator serving commands (state %s)", config.device_id, config.simulator, model.state
        )

    def _start_sensor(self, config: DeviceConfig, model: SensorModel) -> None:
        clock = simulated_clock(config.time_scale)
        publisher = SensorPublisher(self.sdk.bus, config.device_id)
        publisher.start()
        self.own(publisher)
        if isinstance(model, CameraSim):
            rate_hz = model.fps
            work = self._camera_work(model, publisher, clock)
        else:
            rate_hz = config.type.rate_hz
            wanted = set(config.type.outputs) & set(model.OUTPUTS)
            missing = sorted(set(config.type.outputs) - wanted)
            if missing:
                log.warning(
                    "%s: the %s simulator produces %s, never %s",
                    config.device_id,
                    config.simulator,
                    ", ".join(model.OUTPUTS),
                    ", ".join(missing),
                )

            def work() -> None:
                values = model.read(clock())
                publisher.publish({name: value for name, value in values.items() if name in wanted})

        ticker = Ticker(f"sim-{config.device_id}", rate_hz, work)
        ticker.start()
        self.own(ticker)
        log.info(
            "%s: %s simulator publishing at %.3g Hz, simulated time x%g (now %s)",
            config.device_id,
            config.simulator,
            rate_hz,
            config.time_scale,
            clock().isoformat(timespec="seconds"),
        )

    @staticmethod
    def _camera_work(
        model: CameraSim, publisher: SensorPublisher, clock: Callable[[], datetime]
    ) -> Callable[[], None]:
        from platform_sdk.codec import encode_image

        last_person: list[bool | None] = [None]

        def work() -> None:
            frame, has_person = model.next_frame(clock())
            if has_person != last_person[0]:
                log.info("%s: scene now %s", publisher.device_id, "with a person" if has_person else "empty")
                last_person[0] = has_person
            publisher.publish_frame(encode_image(frame, quality=JPEG_QUALITY), model.width, model.height)

        return work
