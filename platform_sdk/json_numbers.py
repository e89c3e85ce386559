"""JSON from outside, with only numbers the platform can hold: finite 64-bit floats and
integers within 64 bits.

Two doors read JSON that nobody on the platform wrote: the front door (HTTP bodies,
``platform_core.http.parse_json``) and the MQTT gateway (device payloads,
``device_manager.gateway``). Both parse with ``loads``, which puts a ``BadNumber`` (why, and
the literal) wherever a number does not fit (``NaN``, ``Infinity``, ``1e400``, an integer of
more than 64 bits), and ask ``bad_numbers`` where each stands. Each says so in its own words:
the front door names the path and never echoes the literal (it might be a password); the
gateway logs the device's value.
"""

from __future__ import annotations

import json
import math
from typing import Any

MAX_INT = 2**63 - 1  # integers of readings, commands, parameters and ids fit in 64 bits
_MAX_INT_DIGITS = len(str(MAX_INT))  # longer is too large, and int() of 4301 digits raises

Path = tuple[str | int, ...]


class BadNumber:
    """A number no field can hold: ``reason`` (which never repeats the literal, except NaN or
    Infinity by name) and the ``literal`` as it stood in the text."""

    __slots__ = ("literal", "reason")

    def __init__(self, reason: str, literal: str) -> None:
        self.reason = reason
        self.literal = literal


def _int(literal: str) -> int | BadNumber:
    if len(literal.lstrip("-")) <= _MAX_INT_DIGITS:
        value = int(literal)
        if abs(value) <= MAX_INT:
            return value
    return BadNumber(f"an integer beyond the 64-bit range (±{MAX_INT})", literal)


def _float(literal: str) -> float | BadNumber:
    value = float(literal)
    return value if math.isfinite(value) else BadNumber("a number too large for a 64-bit float", literal)


def _constant(name: str) -> BadNumber:
    return BadNumber(f"{name} is not a number: JSON has no NaN or Infinity", name)


def loads(text: str) -> Any:
    """``text`` parsed, each number that does not fit a ``BadNumber``; ``ValueError`` when it is not JSON."""
    return json.loads(text, parse_int=_int, parse_float=_float, parse_constant=_constant)


def bad_numbers(document: Any) -> list[tuple[Path, BadNumber]]:
    """Where ``document`` holds a ``BadNumber``, in document order (no recursion: any depth)."""
    found: list[tuple[Path, BadNumber]] = []
    stack: list[tuple[Path, Any]] = [((), document)]
    while stack:
        path, value = stack.pop()
        if isinstance(value, BadNumber):
            found.append((path, value))
        elif isinstance(value, dict):
            stack.extend(((*path, key), item) for key, item in reversed(value.items()))
        elif isinstance(value, list):
            stack.extend(((*path, index), item) for index, item in reversed(list(enumerate(value))))
    return found
