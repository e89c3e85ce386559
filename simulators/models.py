"""The six built-in device models: pure, deterministic for a seed, and blind to the bus.

Sensors turn a simulated time into a reading:

* ``LightSim.read(t)`` → ``{"lux"}``: 0 at night, a sine from sunrise (6:00) to sunset (18:00)
  peaking at ``peak_lux`` (10,000) at noon, times ``1 + noise·N(0, 1)``;
* ``TemperatureSim.read(t)`` → ``{"temperature", "humidity"}``: ``base_c`` ± ``amplitude_c``,
  coolest at 5:00 and warmest at 15:00, plus gaussian noise; humidity (``humidity`` true)
  moves against the temperature between 30 and 90 %;
* ``CameraSim.next_frame(t)`` → ``(BGR frame, has_person)``: scikit-image's bundled photos,
  ``astronaut`` for a person, ``rocket``, ``hubble_deep_field`` or ``brick`` (a wall) for an
  empty scene, cropped to fill ``width``x``height``, with light per-frame noise (gaussian,
  ``noise`` grey levels); ``scene`` ``person``, ``empty`` or ``cycle`` (``period_s`` seconds
  of each in turn, 5 by default). OpenCV's frontal-face Haar cascade finds exactly one face
  in the person frames and none in the empty ones from 320x240 to 1280x720; much larger
  frames (photos upscaled 3x and more) can fool it.

Controllers hold a state and obey commands: ``FanSim``, ``DisplaySim``, ``AcSim``;
``apply(command, params)`` returns the new state, or raises ``ValidationFailed`` (details:
one ``{"field", "reason"}`` per problem, the state unchanged) when the device type or the
simulator's own rules (each class's ``rules``, a built-in device type) refuse it.

Times are wall-clock fields of the datetime given (its own time zone);
``simulated_clock(time_scale, start)`` makes such datetimes run ``time_scale`` times faster
than real time.
"""

from __future__ import annotations

import importlib.util
import math
import time
from collections.abc import Callable, Mapping
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, ClassVar, Literal

import numpy as np
import numpy.typing as npt

from platform_sdk.device_documents import CommandSpec, DeviceType, ParamSpec
from platform_sdk.device_messages import ReadingValue
from platform_sdk.errors import Unavailable, ValidationFailed

Image = npt.NDArray[np.uint8]
Problems = list[dict[str, str]]

SUNRISE_H, SUNSET_H = 6.0, 18.0
COOLEST_H, WARMEST_H = 5.0, 15.0
HUMIDITY_RANGE = (30.0, 90.0)
PERSON_PHOTO = "astronaut"
# Photos without a person in which OpenCV's frontal-face Haar cascade finds no face (noise and JPEG
# included) from 320x240 to 1280x720; it does find "faces" in coffee, chelsea, motorcycle and coins.
EMPTY_PHOTOS = ("rocket", "hubble_deep_field", "brick")
SCENES = ("person", "empty", "cycle")
PHOTO_FILES = {  # in scikit-image's data folder
    PERSON_PHOTO: "astronaut.png",
    "rocket": "rocket.jpg",
    "hubble_deep_field": "hubble_deep_field.jpg",
    "brick": "brick.png",
}


# time --------------------------------------------------------------------------------------
def simulated_clock(
    time_scale: float = 1.0,
    start: datetime | None = None,
    *,
    monotonic: Callable[[], float] = time.monotonic,
) -> Callable[[], datetime]:
    """A clock that reads ``start`` (default: now, local time) + real elapsed time x ``time_scale``."""
    if not time_scale > 0:
        raise ValueError(f"time_scale must be above 0, not {time_scale}")
    origin = start if start is not None else datetime.now().astimezone()
    began = monotonic()

    def now() -> datetime:
        return origin + timedelta(seconds=(monotonic() - began) * time_scale)

    return now


def hour_of_day(t: datetime) -> float:
    """Hours since midnight in ``t``'s own time zone, e.g. 13.5 at 13:30."""
    return t.hour + t.minute / 60 + (t.second + t.microsecond / 1e6) / 3600


def _seconds(t: datetime | float) -> float:
    return t.timestamp() if isinstance(t, datetime) else float(t)


# parameters --------------------------------------------------------------------------------
def _refuse(what: str, problems: Problems) -> None:
    if problems:
        raise ValidationFailed(
            f"{what}: " + "; ".join(f"{p['field']}: {p['reason']}" for p in problems), details=problems
        )


def _params(what: str, specs: Mapping[str, ParamSpec], given: Mapping[str, Any] | None) -> dict[str, Any]:
    """``given`` checked against ``specs`` (unknown names are ignored), with the specs' defaults."""
    given = dict(given or {})
    problems = [
        {"field": name, "reason": reason}
        for name, spec in specs.items()
        if name in given and (reason := spec.problem(given[name]))
    ]
    _refuse(f"{what} parameters", problems)
    return {name: spec.default for name, spec in specs.items()} | given


# sensors -----------------------------------------------------------------------------------
class LightSim:
    """Ambient light in lux on a clear day, with multiplicative noise."""

    OUTPUTS: ClassVar[tuple[str, ...]] = ("lux",)
    PARAMETERS: ClassVar[dict[str, ParamSpec]] = {
        "noise": ParamSpec(type="float", min=0, max=1, default=0.05),
        "peak_lux": ParamSpec(type="float", min=0, default=10_000.0),
    }

    def __init__(self, params: Mapping[str, Any] | None = None, seed: int = 0) -> None:
        values = _params("light", self.PARAMETERS, params)
        self.noise = float(values["noise"])
        self.peak_lux = float(values["peak_lux"])
        self.rng = np.random.default_rng(seed)

    def clear_sky(self, t: datetime) -> float:
        """Noise-free lux: 0 outside sunrise-sunset, ``peak_lux`` at noon."""
        hour = hour_of_day(t)
        if not SUNRISE_H < hour < SUNSET_H:
            return 0.0
        return self.peak_lux * math.sin(math.pi * (hour - SUNRISE_H) / (SUNSET_H - SUNRISE_H))

    def read(self, t: datetime) -> dict[str, ReadingValue]:
        factor = max(0.0, 1.0 + self.noise * float(self.rng.standard_normal()))
        return {"lux": round(self.clear_sky(t) * factor, 1)}


def daily_shape(hour: float) -> float:
    """-1 at 5:00, +1 at 15:00: a half cosine up over 10 hours, down over the other 14."""
    if COOLEST_H <= hour <= WARMEST_H:
        return -math.cos(math.pi * (hour - COOLEST_H) / (WARMEST_H - COOLEST_H))
    since_warmest = (hour - WARMEST_H) % 24
    return math.cos(math.pi * since_warmest / (24 - WARMEST_H + COOLEST_H))


class TemperatureSim:
    """Air temperature (°C) on a daily cycle and, optionally, relative humidity (%) against it."""

    OUTPUTS: ClassVar[tuple[str, ...]] = ("temperature", "humidity")
    PARAMETERS: ClassVar[dict[str, ParamSpec]] = {
        "base_c": ParamSpec(type="float", min=-40, max=60, default=22.0),
        "amplitude_c": ParamSpec(type="float", min=0, max=30, default=3.0),
        "humidity": ParamSpec(type="bool", default=True),
        "noise_c": ParamSpec(type="float", min=0, max=10, default=0.2),
    }
    HUMIDITY_NOISE = 1.0  # % standard deviation

    def __init__(self, params: Mapping[str, Any] | None = None, seed: int = 0) -> None:
        values = _params("temperature", self.PARAMETERS, params)
        self.base_c = float(values["base_c"])
        self.amplitude_c = float(values["amplitude_c"])
        self.humidity = bool(values["humidity"])
        self.noise_c = float(values["noise_c"])
        self.rng = np.random.default_rng(seed)

    def expected(self, t: datetime) -> float:
        """Noise-free temperature at ``t``."""
        return self.base_c + self.amplitude_c * daily_shape(hour_of_day(t))

    def read(self, t: datetime) -> dict[str, ReadingValue]:
        shape = daily_shape(hour_of_day(t))
        temperature = self.base_c + self.amplitude_c * shape + self.noise_c * self.rng.standard_normal()
        values: dict[str, ReadingValue] = {"temperature": round(float(temperature), 2)}
        if self.humidity:
            low, high = HUMIDITY_RANGE
            middle, half = (low + high) / 2, (high - low) / 2
            humidity = middle - half * shape + self.HUMIDITY_NOISE * self.rng.standard_normal()
            values["humidity"] = round(float(np.clip(humidity, low, high)), 1)
        return values


# Where each photo's subject is (fractions of its width and height): frames are cropped around it.
PHOTO_FOCUS: dict[str, tuple[float, float]] = {PERSON_PHOTO: (0.45, 0.25)}
# The astronaut's background shuttle model, softened: OpenCV's Haar cascade takes it for a second face.
_ASTRONAUT_SOFTEN = (280, 100, 430, 270)  # x0, y0, x1, y1 in the 512x512 photo


def _fill(image: Image, width: int, height: int, focus: tuple[float, float] = (0.5, 0.5)) -> Image:
    """``image`` scaled to cover ``width``x``height`` without distortion, cropped around ``focus``."""
    import cv2

    rows, cols = image.shape[:2]
    scale = max(width / cols, height / rows)
    size = (max(width, round(cols * scale)), max(height, round(rows * scale)))
    resized = cv2.resize(image, size, interpolation=cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR)
    left = min(max(round(focus[0] * size[0] - width / 2), 0), size[0] - width)
    top = min(max(round(focus[1] * size[1] - height / 2), 0), size[1] - height)
    filled: Image = np.ascontiguousarray(resized[top : top + height, left : left + width])
    return filled


def _soften(image: Image, box: tuple[int, int, int, int], sigma: float = 3.0) -> Image:
    """``image`` blurred inside ``box``, blending smoothly into the rest."""
    import cv2

    x0, y0, x1, y1 = box
    mask = np.zeros(image.shape[:2], np.float32)
    mask[y0:y1, x0:x1] = 1.0
    weight = cv2.GaussianBlur(mask, (0, 0), 8)[..., None]
    blurred = cv2.GaussianBlur(image, (0, 0), sigma)
    softened: Image = np.rint(image * (1 - weight) + blurred * weight).astype(np.uint8)
    return softened


def _load_photo(name: str) -> Image:
    """A scene photo bundled with scikit-image (no download), as BGR.

    Read from the package's folder with OpenCV, without importing ``skimage.data``: its loaders
    (imageio, Pillow) cost a camera simulator about 37 MB more, for the same pixels.
    """
    import cv2

    spec = importlib.util.find_spec("skimage")
    if spec is None or spec.origin is None:
        raise Unavailable("the camera simulator needs scikit-image's photos: pip install scikit-image")
    path = Path(spec.origin).parent / "data" / PHOTO_FILES[name]
    read = cv2.imread(str(path), cv2.IMREAD_COLOR)  # a grey photo comes as three equal channels
    if read is None:
        raise Unavailable(f"the camera simulator's photo {path} is missing or unreadable")
    bgr: Image = read.astype(np.uint8, copy=False)
    return _soften(bgr, _ASTRONAUT_SOFTEN) if name == PERSON_PHOTO else bgr


class CameraSim:
    """Frames of a scene with or without a person, from scikit-image's bundled photos."""

    OUTPUTS: ClassVar[tuple[str, ...]] = ()  # frames, not readings
    PARAMETERS: ClassVar[dict[str, ParamSpec]] = {
        "width": ParamSpec(type="int", min=16, max=3840, default=640),
        "height": ParamSpec(type="int", min=16, max=2160, default=480),
        "fps": ParamSpec(type="float", min=0.1, max=30, default=2.0),
        "scene": ParamSpec(type="string", choices=list(SCENES), default="cycle"),
        "period_s": ParamSpec(type="float", min=0.1, default=5.0),
        "noise": ParamSpec(type="float", min=0, max=50, default=2.0),
    }
    _NOISE_MARGIN = 32  # the noise field is this much larger; each frame takes a random window

    def __init__(self, params: Mapping[str, Any] | None = None, seed: int = 0) -> None:
        values = _params("camera", self.PARAMETERS, params)
        self.width, self.height = int(values["width"]), int(values["height"])
        self.fps = float(values["fps"])
        self.scene = str(values["scene"])
        self.period_s = float(values["period_s"])
        self.noise = float(values["noise"])
        self.rng = np.random.default_rng(seed)
        self._photos: dict[str, Image] = {}
        self._noise_field: npt.NDArray[np.int16] | None = None

    def photo(self, name: str) -> Image:
        """One of the scene photos, BGR, filling the camera's size (cached)."""
        if name not in self._photos:
            self._photos[name] = _fill(
                _load_photo(name), self.width, self.height, PHOTO_FOCUS.get(name, (0.5, 0.5))
            )
        return self._photos[name]

    def shot(self, t: datetime | float) -> tuple[str, bool]:
        """The photo shown at simulated time ``t`` (a datetime, or seconds) and whether it has a person."""
        period = math.floor(_seconds(t) / self.period_s)
        if self.scene == "person":
            return PERSON_PHOTO, True
        if self.scene == "empty":
            return EMPTY_PHOTOS[period % len(EMPTY_PHOTOS)], False
        if period % 2 == 0:
            return PERSON_PHOTO, True
        return EMPTY_PHOTOS[(period // 2) % len(EMPTY_PHOTOS)], False

    def _noisy(self, image: Image) -> Image:
        if self.noise <= 0:
            return image.copy()
        margin = self._NOISE_MARGIN
        if self._noise_field is None:
            shape = (self.height + margin, self.width + margin, 3)
            self._noise_field = np.rint(self.rng.normal(0.0, self.noise, shape)).astype(np.int16)
        top, left = (int(x) for x in self.rng.integers(0, margin, 2))
        window = self._noise_field[top : top + self.height, left : left + self.width]
        noisy = np.add(image, window, dtype=np.int16)
        return np.clip(noisy, 0, 255).astype(np.uint8)

    def next_frame(self, t: datetime | float) -> tuple[Image, bool]:
        """A ``height``x``width``x3 BGR frame at simulated time ``t``, and whether a person is in it."""
        name, has_person = self.shot(t)
        return self._noisy(self.photo(name)), has_person


# controllers -------------------------------------------------------------------------------
def _controller_type(
    name: Literal["fan", "display", "ac"], commands: dict[str, CommandSpec], state: dict[str, ParamSpec]
) -> DeviceType:
    return DeviceType(name=name, kind="controller", simulator=name, commands=commands, state=state)


def _with_defaults(spec: CommandSpec | None, params: Mapping[str, Any]) -> dict[str, Any]:
    defaults = {} if spec is None else {n: p.default for n, p in spec.params.items() if p.default is not None}
    return defaults | dict(params)


class ControllerSim:
    """A controller's state and the rules it obeys; subclasses say what each command does."""

    simulator: ClassVar[str]
    rules: ClassVar[DeviceType]  # what the simulator itself accepts, whatever the device type says

    def __init__(self, device_type: DeviceType | None = None) -> None:
        self.device_type = device_type
        self._state = self.initial_state()

    def initial_state(self) -> dict[str, Any]:
        raise NotImplementedError

    @property
    def state(self) -> dict[str, Any]:
        return dict(self._state)

    def problems(self, command: str, params: Mapping[str, Any]) -> Problems:
        """Everything wrong with ``command(**params)``: the device type's verdict, then the simulator's."""
        problems: Problems = []
        declared: set[str] = set()
        if self.device_type is not None:
            problems = self.device_type.command_problems(command, dict(params))
            spec = self.device_type.commands.get(command)
            declared = set(spec.params) if spec else set()
            params = _with_defaults(spec, params)
        flagged = {problem["field"] for problem in problems}
        own = self.rules.commands.get(command)
        if own is None:
            if "command" not in flagged:
                known = ", ".join(sorted(self.rules.commands))
                reason = f"the {self.simulator} simulator has no command {command!r} (it has: {known})"
                problems.append({"field": "command", "reason": reason})
            return problems
        for problem in self.rules.command_problems(command, dict(params)) + self.check(command, params):
            # a parameter the device type declares but the simulator does not use is ignored
            declared_only = problem["reason"].startswith("unknown parameter") and problem["field"] in declared
            if problem["field"] not in flagged and not declared_only:
                problems.append(problem)
                flagged.add(problem["field"])
        return problems

    def check(self, command: str, params: Mapping[str, Any]) -> Problems:
        """Rules beyond the types and ranges of ``rules``."""
        return []

    def apply(self, command: str, params: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """Obey ``command`` and return the new state; ``ValidationFailed`` (state unchanged) if refused."""
        params = dict(params or {})
        problems = self.problems(command, params)
        if problems:
            name = self.device_type.name if self.device_type is not None else self.simulator
            raise ValidationFailed(f"{name} cannot {command}", details=problems)
        if self.device_type is not None:
            params = _with_defaults(self.device_type.commands.get(command), params)
        params = _with_defaults(self.rules.commands[command], params)
        known = self.rules.commands[command].params
        self._state = self.execute(command, {name: value for name, value in params.items() if name in known})
        return self.state

    def execute(self, command: str, params: dict[str, Any]) -> dict[str, Any]:
        """The state after a valid ``command``."""
        raise NotImplementedError


MAX_FAN_SPEED = 5


class FanSim(ControllerSim):
    """``on`` (at the last speed, 1 the first time), ``off``, ``set_speed(0-5)``; 0 is off."""

    simulator = "fan"
    rules = _controller_type(
        "fan",
        {
            "on": CommandSpec(),
            "off": CommandSpec(),
            "set_speed": CommandSpec(params={"speed": ParamSpec(type="int", min=0, max=MAX_FAN_SPEED)}),
        },
        {"on": ParamSpec(type="bool"), "speed": ParamSpec(type="int", min=0, max=MAX_FAN_SPEED)},
    )

    def __init__(self, device_type: DeviceType | None = None) -> None:
        super().__init__(device_type)
        self.last_speed = 1

    def initial_state(self) -> dict[str, Any]:
        return {"on": False, "speed": 0}

    def execute(self, command: str, params: dict[str, Any]) -> dict[str, Any]:
        if command == "on":
            return {"on": True, "speed": self.last_speed}
        if command == "off":
            return {"on": False, "speed": 0}
        speed = int(params["speed"])
        if speed == 0:
            return {"on": False, "speed": 0}
        self.last_speed = speed
        return {"on": True, "speed": speed}


COLOURS = ("white", "red", "green", "blue", "yellow")
MAX_TEXT = 200


class DisplaySim(ControllerSim):
    """``show(text, colour="white")`` and ``clear``."""

    simulator = "display"
    rules = _controller_type(
        "display",
        {
            "show": CommandSpec(
                params={
                    "text": ParamSpec(type="string"),
                    "colour": ParamSpec(
                        type="string", choices=list(COLOURS), default="white", required=False
                    ),
                }
            ),
            "clear": CommandSpec(),
        },
        {"text": ParamSpec(type="string"), "colour": ParamSpec(type="string", choices=list(COLOURS))},
    )

    def initial_state(self) -> dict[str, Any]:
        return {"text": "", "colour": "white"}

    def check(self, command: str, params: Mapping[str, Any]) -> Problems:
        text = params.get("text")
        if command == "show" and isinstance(text, str) and len(text) > MAX_TEXT:
            return [
                {"field": "text", "reason": f"{len(text)} characters; the display shows at most {MAX_TEXT}"}
            ]
        return []

    def execute(self, command: str, params: dict[str, Any]) -> dict[str, Any]:
        if command == "clear":
            return self.initial_state()
        return {"text": str(params["text"]), "colour": str(params["colour"])}


AC_MODES = ("cool", "heat", "fan", "auto")
SETPOINT_RANGE = (16.0, 30.0)


class AcSim(ControllerSim):
    """``on``, ``off``, ``set(setpoint 16-30 °C, mode cool|heat|fan|auto)``: either or both."""

    simulator = "ac"
    rules = _controller_type(
        "ac",
        {
            "on": CommandSpec(),
            "off": CommandSpec(),
            "set": CommandSpec(
                params={
                    "setpoint": ParamSpec(
                        type="float", min=SETPOINT_RANGE[0], max=SETPOINT_RANGE[1], required=False
                    ),
                    "mode": ParamSpec(type="string", choices=list(AC_MODES), required=False),
                }
            ),
        },
        {
            "on": ParamSpec(type="bool"),
            "setpoint": ParamSpec(type="float", min=SETPOINT_RANGE[0], max=SETPOINT_RANGE[1]),
            "mode": ParamSpec(type="string", choices=list(AC_MODES)),
        },
    )

    def initial_state(self) -> dict[str, Any]:
        return {"on": False, "setpoint": 24.0, "mode": "auto"}

    def check(self, command: str, params: Mapping[str, Any]) -> Problems:
        if command == "set" and "setpoint" not in params and "mode" not in params:
            return [{"field": "setpoint", "reason": "set needs a setpoint, a mode or both"}]
        return []

    def execute(self, command: str, params: dict[str, Any]) -> dict[str, Any]:
        state = self.state
        if command in ("on", "off"):
            state["on"] = command == "on"
        if "setpoint" in params:
            state["setpoint"] = float(params["setpoint"])
        if "mode" in params:
            state["mode"] = str(params["mode"])
        return state


# by simulator name -------------------------------------------------------------------------
SENSOR_MODELS: dict[str, type[LightSim | TemperatureSim | CameraSim]] = {
    "camera": CameraSim,
    "light": LightSim,
    "temperature": TemperatureSim,
}
CONTROLLER_MODELS: dict[str, type[ControllerSim]] = {"fan": FanSim, "display": DisplaySim, "ac": AcSim}
