"""Regenerate ``comfort.npz``: ``python train.py [--output comfort.npz]``.

The training data comes from a documented comfort rule with noise (fixed seed, so the file is
the same on every run):

* apparent temperature AT = T + 0.33·e - 4.0 (Steadman, no wind), with the water vapour pressure
  e = RH/100 · 6.105 · exp(17.27·T / (237.7 + T)) hPa;
* fan speed = round((AT - 21) / 3) clipped to 0-5 and the AC on when AT ≥ 27 °C, both as judged by
  occupants whose felt temperature is AT plus noise (sd 1 °C);
* set-point = the room temperature at which AT is 24 °C at the current humidity, clipped to
  18-28 °C, plus noise (sd 0.3 °C).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from comfort_model import (
    HUMIDITY_RANGE,
    MAX_FAN_SPEED,
    MODEL_FILE,
    SETPOINT_RANGE,
    TEMPERATURE_RANGE,
    Array,
    BoolArray,
    ComfortModel,
    features,
)

SEED = 20240611
SAMPLES = 6000
HELD_OUT = 0.2
RIDGE = 1e-5
COMFORT_AT = 24.0


def apparent_temperature(temperature: Array, humidity: Array) -> Array:
    vapour_pressure = humidity / 100 * 6.105 * np.exp(17.27 * temperature / (237.7 + temperature))
    result: Array = temperature + 0.33 * vapour_pressure - 4.0
    return result


def comfortable_setpoint(humidity: Array) -> Array:
    """The temperature whose apparent temperature is COMFORT_AT, by bisection (AT grows with T)."""
    low, high = np.full_like(humidity, 0.0), np.full_like(humidity, 50.0)
    for _ in range(50):
        middle = (low + high) / 2
        too_warm = apparent_temperature(middle, humidity) > COMFORT_AT
        high = np.where(too_warm, middle, high)
        low = np.where(too_warm, low, middle)
    result: Array = np.clip((low + high) / 2, *SETPOINT_RANGE)
    return result


def generate(rng: np.random.Generator, samples: int) -> tuple[Array, Array, Array, Array, Array]:
    """Inputs (temperature, humidity) and noisy labels (fan speed, AC on, set-point)."""
    temperature = rng.uniform(*TEMPERATURE_RANGE, samples)
    humidity = rng.uniform(*HUMIDITY_RANGE, samples)
    felt = apparent_temperature(temperature, humidity) + rng.normal(0, 1.0, samples)
    fan = np.clip(np.rint((felt - 21) / 3), 0, MAX_FAN_SPEED)
    ac_on = (felt >= 27).astype(np.float64)
    setpoint = comfortable_setpoint(humidity) + rng.normal(0, 0.3, samples)
    return temperature, humidity, fan, ac_on, setpoint


def fit_ridge(x: Array, y: Array, penalty: float) -> Array:
    return np.asarray(np.linalg.solve(x.T @ x + penalty * len(x) * np.eye(x.shape[1]), x.T @ y), np.float64)


def fit_logistic(x: Array, y: Array, penalty: float, iterations: int = 50) -> Array:
    """L2-regularised logistic regression by Newton's method."""
    weights = np.zeros(x.shape[1])
    regulariser = penalty * len(x) * np.eye(x.shape[1])
    for _ in range(iterations):
        probability = 0.5 * (1 + np.tanh(x @ weights / 2))
        gradient = x.T @ (probability - y) + regulariser @ weights
        hessian = (x.T * (probability * (1 - probability))) @ x + regulariser
        weights -= np.linalg.solve(hessian, gradient)
    return weights


def report(
    name: str, fan: Array, ac_on: BoolArray, setpoint: Array, truth: tuple[Array, Array, Array]
) -> None:
    fan_exact, fan_mae = np.mean(fan == truth[0]), np.mean(abs(fan - truth[0]))
    setpoint_rmse = np.sqrt(np.mean((setpoint - truth[2]) ** 2))
    print(
        f"  {name:<15} fan speed exact {fan_exact:.1%} (MAE {fan_mae:.3f}), "
        f"AC on {np.mean(ac_on == truth[1]):.1%}, set-point RMSE {setpoint_rmse:.3f} °C"
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output", type=Path, default=Path(__file__).with_name(MODEL_FILE))
    args = parser.parse_args(argv)

    temperature, humidity, fan, ac_on, setpoint = generate(np.random.default_rng(SEED), SAMPLES)
    train = np.arange(SAMPLES) >= SAMPLES * HELD_OUT
    x = features(temperature[train], humidity[train])
    regression = fit_ridge(x, np.stack([fan[train], setpoint[train]], axis=1), RIDGE)
    classifier = fit_logistic(x, ac_on[train], RIDGE)
    np.savez(args.output, regression=regression, classifier=classifier)

    model = ComfortModel()
    model.load_file(args.output)
    test = ~train
    felt = apparent_temperature(temperature[test], humidity[test])
    truth = (fan[test], ac_on[test], setpoint[test])
    print(f"wrote {args.output}; accuracy on {test.sum()} held-out noisy samples:")
    report("model", *model.predict_arrays(temperature[test], humidity[test]), truth)
    rule_fan = np.clip(np.rint((felt - 21) / 3), 0, MAX_FAN_SPEED)
    report("noise-free rule", rule_fan, felt >= 27, comfortable_setpoint(humidity[test]), truth)


if __name__ == "__main__":
    main()
