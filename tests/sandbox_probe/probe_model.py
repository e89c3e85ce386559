"""The sandbox probe: reads and writes what it is told to, and says what happened to each attempt.

Besides the paths it is given, it tries to write beside the platform's own code (the package
``platform_sdk``) and into the interpreter's site-packages (its venv), wherever they are on this
runtime, and into its own bundle; and it writes to its scratch folder (``HOME``), which it may.
"""

from __future__ import annotations

import os
import sysconfig
from pathlib import Path
from typing import Any

import platform_sdk


def _read(path: str) -> str:
    try:
        with open(path, "rb") as handle:
            handle.read(64)
    except OSError as exc:
        return f"{type(exc).__name__}: {exc.strerror}"
    return "ok"


def _write(path: str) -> str:
    try:
        with open(path, "w") as handle:
            handle.write("written by the sandbox probe\n")
    except OSError as exc:
        return f"{type(exc).__name__}: {exc.strerror}"
    os.unlink(path)
    return "ok"


def _status() -> dict[str, str]:
    lines = Path("/proc/self/status").read_text().splitlines()
    fields = dict(line.split(":", 1) for line in lines if ":" in line)
    wanted = ("Uid", "Gid", "Groups", "NoNewPrivs", "CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb")
    return {name: " ".join(fields.get(name, "").split()) for name in wanted}


def probe(reads: dict[str, Any], writes: dict[str, Any]) -> dict[str, Any]:
    attempts = {f"read {name}": _read(str(path)) for name, path in reads.items()}
    bundle = os.environ.get("AIOT_BUNDLE_DIR", "")
    own_writes = {
        "platform code": str(Path(platform_sdk.__file__).parent / "sandbox-probe.txt"),
        "venv": str(Path(sysconfig.get_paths()["purelib"]) / "sandbox-probe.txt"),
        "bundle": str(Path(bundle) / "sandbox-probe.txt"),
        **{str(name): str(path) for name, path in writes.items()},
    }
    attempts.update({f"write {name}": _write(path) for name, path in own_writes.items()})
    attempts["write scratch"] = _write(str(Path(os.environ.get("HOME", "/nonexistent")) / "probe.txt"))
    attempts["read own bundle"] = _read(str(Path(bundle) / "model.json"))
    identity = {
        "uid": os.getuid(),
        "gid": os.getgid(),
        "groups": os.getgroups(),
        "status": _status(),
        "bundle": bundle,
        "cwd": os.getcwd(),
        "platform": str(Path(platform_sdk.__file__).parent),
    }
    return {"attempts": attempts, "identity": identity, "environment": dict(os.environ)}
