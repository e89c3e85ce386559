"""Load a model folder through its manifest, with the standard library only.

This is the platform's model contract (``platform_sdk.model``) without the platform:
``model.json``'s ``entrypoint`` is ``module:Class`` (created with no arguments, then
``load(folder)`` once; each endpoint calls the method it names, default ``predict``)
or ``module:function`` (one endpoint). BentoML's venv has no platform installed, so
this file imports nothing from the project; ``provide_sdk_model`` gives a model that
subclasses ``platform_sdk.model.Model`` that class from its source file alone.
"""

from __future__ import annotations

import importlib
import importlib.util
import json
import sys
import types
from collections.abc import Callable
from pathlib import Path
from typing import Any

PROJECT_ROOT = Path(__file__).resolve().parents[2]
Endpoint = Callable[..., dict[str, Any]]


def provide_sdk_model() -> None:
    """Make ``platform_sdk.model`` importable where the platform is not installed.

    ``platform_sdk/__init__.py`` imports the Kafka client; ``model.py`` imports only the
    standard library, so it is loaded by path under an empty ``platform_sdk`` package.
    """
    if "platform_sdk.model" in sys.modules or importlib.util.find_spec("platform_sdk") is not None:
        return
    package = types.ModuleType("platform_sdk")
    package.__path__ = []
    spec = importlib.util.spec_from_file_location(
        "platform_sdk.model", PROJECT_ROOT / "platform_sdk" / "model.py"
    )
    if spec is None or spec.loader is None:
        raise ImportError(f"cannot load {PROJECT_ROOT / 'platform_sdk' / 'model.py'}")
    module = importlib.util.module_from_spec(spec)
    sys.modules["platform_sdk"] = package
    sys.modules["platform_sdk.model"] = module
    spec.loader.exec_module(module)


def load_endpoint(model_dir: Path, endpoint: str) -> Endpoint:
    """The callable serving ``endpoint`` of the model in ``model_dir``: ``call(**inputs) -> dict``."""
    model_dir = model_dir.resolve()
    manifest = json.loads((model_dir / "model.json").read_text())
    spec = next((item for item in manifest["endpoints"] if item["name"] == endpoint), None)
    if spec is None:
        raise KeyError(f"{model_dir / 'model.json'} has no endpoint {endpoint!r}")
    module_name, attribute = manifest["entrypoint"].split(":", 1)
    if str(model_dir) not in sys.path:
        sys.path.insert(0, str(model_dir))
    target = getattr(importlib.import_module(module_name), attribute)
    if not isinstance(target, type):
        function: Endpoint = target
        return function
    instance = target()
    instance.load(model_dir)
    method: Endpoint = getattr(instance, spec.get("method") or "predict")
    return method
