"""The model served by BentoML 1.4 with its defaults (run in BentoML's own venv, from this folder).

    AIOT_BENCH_MODEL_DIR=<folder with model.json> bentoml serve bento_service:ComfortService \
        --host 127.0.0.1 --port P

``POST /predict`` with a JSON object ``{"temperature": ..., "humidity": ...}``; BentoML
validates the typed parameters and answers the model's output dict as JSON. The model is
loaded through its manifest by ``loader.py`` beside this file (loaded by path: this
folder is not a package in BentoML's venv).
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path
from types import ModuleType
from typing import Any

import bentoml  # type: ignore[import-not-found,unused-ignore]


def _sibling(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(
        f"_aiot_bench_{name}", Path(__file__).with_name(f"{name}.py")
    )
    if spec is None or spec.loader is None:
        raise ImportError(f"cannot load {name}.py beside {__file__}")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


loader = _sibling("loader")
loader.provide_sdk_model()


@bentoml.service
class ComfortService:
    def __init__(self) -> None:
        self._predict = loader.load_endpoint(
            Path(os.environ["AIOT_BENCH_MODEL_DIR"]), os.environ.get("AIOT_BENCH_ENDPOINT", "predict")
        )

    @bentoml.api  # type: ignore[untyped-decorator,unused-ignore]
    def predict(self, temperature: float, humidity: float) -> dict[str, Any]:
        result: dict[str, Any] = self._predict(temperature=temperature, humidity=humidity)
        return result
