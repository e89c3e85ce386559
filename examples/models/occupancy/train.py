"""Regenerate ``occupancy.npz``: ``python train.py [--output occupancy.npz]``.

The training data comes from a documented lighting rule with noise (fixed seed, so the file is
the same on every run):

* target illuminance = 300 lux + 200 lux during lessons, smoothly from 7:00 to 19:00:
  300 + 200·sigmoid(2·(hour - 7))·sigmoid(2·(19 - hour)), sigmoid the logistic function;
* the lights are on when someone is in the room and the daylight, as read by a noisy sensor
  (sd 30 lux), is below the target minus 50 lux;
* the level (when on) = 110 - 100·daylight / target (the true daylight) clipped to 10-100 %,
  plus noise (sd 3).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from occupancy_model import (
    LIGHT_RANGE,
    MAX_PEOPLE,
    MIN_LEVEL,
    MODEL_FILE,
    Array,
    BoolArray,
    OccupancyModel,
    features,
)

SEED = 20240612
SAMPLES = 6000
HELD_OUT = 0.2
EMPTY_SHARE = 0.3
RIDGE = 1e-5


def target_lux(hour: Array) -> Array:
    lessons = 1 / (1 + np.exp(-2 * (hour - 7))) / (1 + np.exp(-2 * (19 - hour)))
    result: Array = 300 + 200 * lessons
    return result


def rule(light_level: Array, people_count: Array, hour: Array) -> tuple[BoolArray, Array]:
    """The noise-free rule: lights on and level (0 when off)."""
    target = target_lux(hour)
    lights_on: BoolArray = (people_count > 0) & (light_level < target - 50)
    level: Array = np.where(lights_on, np.clip(110 - 100 * light_level / target, MIN_LEVEL, 100), 0.0)
    return lights_on, level


def generate(rng: np.random.Generator, samples: int) -> tuple[Array, Array, Array, Array, Array]:
    """Inputs (light level, people count, hour) and noisy labels (lights on, level)."""
    light_level = rng.uniform(*LIGHT_RANGE, samples)
    people_count = np.where(
        rng.random(samples) < EMPTY_SHARE, 0, rng.integers(1, MAX_PEOPLE + 1, samples)
    ).astype(np.float64)
    hour = rng.uniform(0, 24, samples)
    lights_on, _ = rule(light_level + rng.normal(0, 30, samples), people_count, hour)
    _, level = rule(light_level, np.ones(samples), hour)  # the level for the true daylight
    level = np.where(lights_on, np.clip(level + rng.normal(0, 3, samples), MIN_LEVEL, 100), 0.0)
    return light_level, people_count, hour, lights_on.astype(np.float64), level


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


def report(name: str, lights_on: BoolArray, level: Array, truth: tuple[Array, Array]) -> None:
    both_on = lights_on & (truth[0] > 0)
    print(
        f"  {name:<15} lights on {np.mean(lights_on == truth[0]):.1%}, level RMSE (both on) "
        f"{np.sqrt(np.mean((level[both_on] - truth[1][both_on]) ** 2)):.2f}"
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output", type=Path, default=Path(__file__).with_name(MODEL_FILE))
    args = parser.parse_args(argv)

    light_level, people_count, hour, lights_on, level = generate(np.random.default_rng(SEED), SAMPLES)
    train = np.arange(SAMPLES) >= SAMPLES * HELD_OUT
    x = features(light_level[train], people_count[train], hour[train])
    classifier = fit_logistic(x, lights_on[train], RIDGE)
    on = lights_on[train] > 0
    regression = fit_ridge(x[on], level[train][on], RIDGE)
    np.savez(args.output, classifier=classifier, regression=regression)

    model = OccupancyModel()
    model.load_file(args.output)
    test = ~train
    inputs = (light_level[test], people_count[test], hour[test])
    truth = (lights_on[test], level[test])
    print(f"wrote {args.output}; accuracy on {test.sum()} held-out noisy samples:")
    report("model", *model.predict_arrays(*inputs), truth)
    report("noise-free rule", *rule(*inputs), truth)


if __name__ == "__main__":
    main()
