"""The model interface: what an AI developer writes so the platform can serve a model.

The manifest's ``entrypoint`` names either a class or a function in the model's code.

* A class (``module:Class``) is created once with no arguments; its ``load(model_dir)``
  runs once before the first request (read weights, build the net); each endpoint calls
  one of its methods (the endpoint's ``method``, default ``predict``) with the validated
  input fields as keyword arguments, and the method returns a dict of output fields.
  ``predict_batch(items)`` (a list of input dicts → a list of output dicts) is optional.
* A function (``module:function``) serves a single endpoint: ``function(**inputs) -> dict``.

Subclassing ``Model`` is optional; it documents the contract and gives type hints.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any


class Model:
    """Base class of a served model: load once, predict per call."""

    def load(self, model_dir: Path) -> None:
        """Read the model's files from ``model_dir`` (the unpacked zip). Called once."""

    def predict(self, **inputs: Any) -> dict[str, Any]:
        """One prediction: input fields in, output fields out."""
        raise NotImplementedError(f"{type(self).__name__} does not implement predict()")

    def predict_batch(self, items: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """Several predictions; the default calls ``predict`` for each."""
        return [self.predict(**item) for item in items]
