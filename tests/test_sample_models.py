"""The sample models in examples/models, in process: manifests, predictions, examples, retraining."""

from __future__ import annotations

import importlib
import importlib.util
import math
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest

from platform_sdk.artifacts import MODEL_MANIFEST, ModelManifest
from platform_sdk.model import Model
from tests.sample_images import sample_image

MODELS = Path(__file__).resolve().parent.parent / "examples" / "models"
SAMPLES = ["face-detector", "comfort", "occupancy"]
TRAINED = {"comfort": "comfort.npz", "occupancy": "occupancy.npz"}


@dataclass
class Sample:
    folder: Path
    manifest: ModelManifest
    model: Model

    def call(self, endpoint: str, inputs: dict[str, Any]) -> dict[str, Any]:
        """One prediction as the platform makes it: built-in preprocessing, then the endpoint's method."""
        spec = self.manifest.endpoint(endpoint)
        assert spec is not None
        inputs = dict(inputs)
        for step in spec.preprocess:
            flags = {"decode_image": cv2.IMREAD_COLOR, "decode_image_gray": cv2.IMREAD_GRAYSCALE}[step]
            for name, field in spec.inputs.items():
                if field.type == "image":
                    inputs[name] = cv2.imdecode(np.frombuffer(inputs[name], np.uint8), flags)
        outputs: dict[str, Any] = getattr(self.model, spec.method or "predict")(**inputs)
        assert set(spec.outputs) <= set(outputs)
        return outputs

    def train_module(self) -> Any:
        """``train.py`` under a module name of its own (the folder's code is on sys.path)."""
        name = f"{self.folder.name.replace('-', '_')}_train"
        spec = importlib.util.spec_from_file_location(name, self.folder / "train.py")
        assert spec is not None
        assert spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return module


@pytest.fixture
def open_sample() -> Iterator[Callable[[str], Sample]]:
    """Loads a sample like the platform does; afterwards forgets its folder and its modules."""
    folders: list[Path] = []

    def open_(name: str) -> Sample:
        folder = MODELS / name
        manifest = ModelManifest.model_validate_json((folder / MODEL_MANIFEST).read_bytes())
        sys.path.insert(0, str(folder))
        folders.append(folder)
        entry = getattr(importlib.import_module(manifest.entry_module), manifest.entry_attribute)
        model = entry()
        assert isinstance(model, Model)
        model.load(folder)
        return Sample(folder, manifest, model)

    yield open_
    for folder in folders:
        sys.path.remove(str(folder))
        for name, module in list(sys.modules.items()):
            file = getattr(module, "__file__", None)
            if file is not None and Path(file).resolve().is_relative_to(folder):
                del sys.modules[name]


def png(image: np.ndarray[Any, Any]) -> bytes:
    ok, encoded = cv2.imencode(".png", image)
    assert ok
    return encoded.tobytes()


def matches(expected: Any, actual: Any, tolerance: float) -> bool:
    if isinstance(expected, bool) or isinstance(actual, bool):
        return expected is actual
    if isinstance(expected, int | float) and isinstance(actual, int | float):
        return math.isclose(expected, actual, rel_tol=tolerance)
    return bool(expected == actual)


@pytest.mark.parametrize("name", SAMPLES)
def test_manifest_example_holds(name: str, open_sample: Callable[[str], Sample]) -> None:
    sample = open_sample(name)
    assert sample.manifest.name == name
    example = sample.manifest.example
    assert example is not None
    spec = sample.manifest.endpoint(example.endpoint)
    assert spec is not None
    inputs = {
        field: (sample.folder / value).read_bytes() if spec.inputs[field].type == "image" else value
        for field, value in example.input.items()
    }
    outputs = sample.call(example.endpoint, inputs)
    for field, expected in example.output.items():
        assert matches(expected, outputs[field], example.tolerance), (field, expected, outputs[field])


def test_face_detector_finds_the_astronaut_only(open_sample: Callable[[str], Sample]) -> None:
    sample = open_sample("face-detector")

    def faces(rgb: np.ndarray[Any, Any]) -> dict[str, Any]:
        bgr = cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR) if rgb.ndim == 3 else rgb
        return sample.call("detect", {"image": png(bgr)})

    astronaut = faces(sample_image("astronaut"))
    assert astronaut["count"] == 1
    [[x, y, w, h]] = astronaut["boxes"]
    assert all(type(value) is int for value in (x, y, w, h))
    assert 150 < x + w / 2 < 300  # the astronaut's face, top middle
    assert 50 < y + h / 2 < 200
    for name in ("coffee", "camera", "rocket"):
        assert faces(sample_image(name)) == {"count": 0, "boxes": []}, name


def test_comfort_cools_a_hot_humid_room(open_sample: Callable[[str], Sample]) -> None:
    sample = open_sample("comfort")
    hot = sample.call("predict", {"temperature": 34.0, "humidity": 70.0})
    mild = sample.call("predict", {"temperature": 20.0, "humidity": 40.0})
    assert hot["fan_speed"] > mild["fan_speed"]
    assert hot["ac_on"] is True
    assert mild["ac_on"] is False
    for outputs in (hot, mild):
        assert type(outputs["fan_speed"]) is int
        assert 0 <= outputs["fan_speed"] <= 5
        assert type(outputs["ac_setpoint"]) is float
        assert 18 <= outputs["ac_setpoint"] <= 28
    # Humid air feels warmer: the set-point goes down as the humidity goes up.
    assert hot["ac_setpoint"] < sample.call("predict", {"temperature": 34.0, "humidity": 30.0})["ac_setpoint"]


def test_occupancy_lights_occupied_dark_rooms_only(open_sample: Callable[[str], Sample]) -> None:
    sample = open_sample("occupancy")
    dark_full = sample.call("predict", {"light_level": 30.0, "people_count": 20, "hour": 9.0})
    dark_empty = sample.call("predict", {"light_level": 30.0, "people_count": 0, "hour": 9.0})
    bright_full = sample.call("predict", {"light_level": 900.0, "people_count": 20, "hour": 12.0})
    assert dark_full["lights_on"] is True
    assert type(dark_full["level"]) is int
    assert dark_full["level"] >= 80
    assert dark_empty == {"lights_on": False, "level": 0}
    assert bright_full == {"lights_on": False, "level": 0}


@pytest.mark.parametrize("name", sorted(TRAINED))
def test_train_reproduces_the_shipped_model(
    name: str, tmp_path: Path, open_sample: Callable[[str], Sample], capsys: pytest.CaptureFixture[str]
) -> None:
    sample = open_sample(name)
    retrained_file = tmp_path / TRAINED[name]
    sample.train_module().main(["--output", str(retrained_file)])
    assert "held-out" in capsys.readouterr().out

    with np.load(sample.folder / TRAINED[name]) as shipped, np.load(retrained_file) as retrained:
        assert sorted(shipped) == sorted(retrained)
        for key in shipped:
            np.testing.assert_allclose(retrained[key], shipped[key], rtol=1e-6, atol=1e-9)

    retrained_model: Any = type(sample.model)()
    retrained_model.load_file(retrained_file)
    shipped_model: Any = sample.model
    rng = np.random.default_rng(0)
    if name == "comfort":
        grid = [rng.uniform(5, 45, 2000), rng.uniform(0, 100, 2000)]
    else:
        grid = [rng.uniform(0, 1200, 2000), rng.integers(0, 50, 2000).astype(float), rng.uniform(0, 24, 2000)]
    for shipped_output, retrained_output in zip(
        shipped_model.predict_arrays(*grid), retrained_model.predict_arrays(*grid), strict=True
    ):
        np.testing.assert_array_equal(retrained_output, shipped_output)
