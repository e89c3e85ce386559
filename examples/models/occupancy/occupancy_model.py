"""Smart Classroom lighting model: daylight, occupancy and time of day → lights on/off and dimming level.

Fitted by ``train.py`` (numpy only) and stored in ``occupancy.npz``: a logistic regression decides
whether the lights are on and a ridge regression gives their level, both on the same features
(light level, the hour as a few Fourier harmonics, their products, each also times "occupied",
and the log of the head count).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from platform_sdk.model import Model

Array = npt.NDArray[np.float64]
BoolArray = npt.NDArray[np.bool_]

MODEL_FILE = "occupancy.npz"
LIGHT_RANGE = (0.0, 1000.0)  # lux; inputs outside are clipped to it
MAX_PEOPLE = 40
HARMONICS = 3
MIN_LEVEL = 10  # % when on; 0 when off


def features(light_level: Array, people_count: Array, hour: Array) -> Array:
    """One row of features per sample."""
    low, high = LIGHT_RANGE
    light = 2 * (np.clip(np.asarray(light_level, np.float64), low, high) - low) / (high - low) - 1
    people = np.clip(np.asarray(people_count, np.float64), 0, MAX_PEOPLE)
    angle = 2 * np.pi * np.asarray(hour, np.float64) / 24
    harmonics = [f(k * angle) for k in range(1, HARMONICS + 1) for f in (np.sin, np.cos)]
    base = [np.ones_like(light), light, light**2, *harmonics, *(light * h for h in harmonics)]
    occupied = (people > 0).astype(np.float64)
    crowd = np.log1p(people) / np.log1p(MAX_PEOPLE)
    return np.stack([*base, *(occupied * b for b in base), crowd], axis=-1)


class OccupancyModel(Model):
    """Serves ``predict``: ``light_level`` (lux), ``people_count`` and ``hour`` (0-24) in, lighting out."""

    def __init__(self) -> None:
        self.classifier: Array = np.zeros(0)
        self.regression: Array = np.zeros(0)

    def load(self, model_dir: Path) -> None:
        self.load_file(model_dir / MODEL_FILE)

    def load_file(self, path: Path) -> None:
        with np.load(path) as weights:
            self.classifier = weights["classifier"]
            self.regression = weights["regression"]

    def predict_arrays(self, light_level: Array, people_count: Array, hour: Array) -> tuple[BoolArray, Array]:
        """Vectorised predictions: lights on (bool) and level (0 when off, else MIN_LEVEL-100)."""
        x = features(light_level, people_count, hour)
        lights_on: BoolArray = x @ self.classifier > 0
        level: Array = np.where(lights_on, np.clip(np.rint(x @ self.regression), MIN_LEVEL, 100), 0)
        return lights_on, level

    def predict(self, **inputs: Any) -> dict[str, Any]:
        lights_on, level = self.predict_arrays(
            np.array([inputs["light_level"]], np.float64),
            np.array([inputs["people_count"]], np.float64),
            np.array([inputs["hour"]], np.float64),
        )
        return {"lights_on": bool(lights_on[0]), "level": int(level[0])}
