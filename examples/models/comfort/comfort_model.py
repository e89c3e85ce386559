"""Smart Home comfort model: room temperature and humidity → fan speed, AC on/off and AC set-point.

Fitted by ``train.py`` (numpy only) and stored in ``comfort.npz``: a ridge regression for the fan
speed and the set-point and a logistic regression for the AC, all on degree-5 polynomial features of
the inputs scaled to [-1, 1] over the ranges the model was trained on.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from platform_sdk.model import Model

Array = npt.NDArray[np.float64]
BoolArray = npt.NDArray[np.bool_]

MODEL_FILE = "comfort.npz"
TEMPERATURE_RANGE = (10.0, 40.0)  # °C; inputs outside are clipped to it
HUMIDITY_RANGE = (10.0, 95.0)  # % relative humidity
MAX_FAN_SPEED = 5
SETPOINT_RANGE = (18.0, 28.0)  # °C
DEGREE = 5


def _scaled(values: Array, bounds: tuple[float, float]) -> Array:
    low, high = bounds
    clipped: Array = np.clip(values, low, high)
    return 2 * (clipped - low) / (high - low) - 1


def features(temperature: Array, humidity: Array) -> Array:
    """Polynomial features t^i·h^j (i + j ≤ DEGREE) of the scaled inputs, one row per sample."""
    t = _scaled(np.asarray(temperature, np.float64), TEMPERATURE_RANGE)
    h = _scaled(np.asarray(humidity, np.float64), HUMIDITY_RANGE)
    return np.stack([t**i * h**j for i in range(DEGREE + 1) for j in range(DEGREE + 1 - i)], axis=-1)


class ComfortModel(Model):
    """Serves ``predict``: ``temperature`` (°C) and ``humidity`` (%) in, comfort settings out."""

    def __init__(self) -> None:
        self.regression: Array = np.zeros((0, 2))
        self.classifier: Array = np.zeros(0)

    def load(self, model_dir: Path) -> None:
        self.load_file(model_dir / MODEL_FILE)

    def load_file(self, path: Path) -> None:
        with np.load(path) as weights:
            self.regression = weights["regression"]
            self.classifier = weights["classifier"]

    def predict_arrays(self, temperature: Array, humidity: Array) -> tuple[Array, BoolArray, Array]:
        """Vectorised predictions: fan speeds (0-5), AC on (bool) and set-points (°C, 0.1 steps)."""
        x = features(temperature, humidity)
        fan, setpoint = (x @ self.regression).T
        fan_speed: Array = np.clip(np.rint(fan), 0, MAX_FAN_SPEED)
        ac_on: BoolArray = x @ self.classifier > 0
        ac_setpoint: Array = np.round(np.clip(setpoint, *SETPOINT_RANGE), 1)
        return fan_speed, ac_on, ac_setpoint

    def predict(self, **inputs: Any) -> dict[str, Any]:
        fan_speed, ac_on, ac_setpoint = self.predict_arrays(
            np.array([inputs["temperature"]], np.float64), np.array([inputs["humidity"]], np.float64)
        )
        return {"fan_speed": int(fan_speed[0]), "ac_on": bool(ac_on[0]), "ac_setpoint": float(ac_setpoint[0])}
