"""The SDK stays slim: a small public surface, nothing heavy imported, nothing started at import."""

from __future__ import annotations

import json
import subprocess
import sys

import platform_sdk

HEAVY = ("flask", "sqlalchemy", "alembic", "docker", "azure", "paramiko", "waitress", "apscheduler")


def test_public_surface_is_what_all_exports() -> None:
    exported = set(platform_sdk.__all__)
    assert exported == {name for name in dir(platform_sdk) if not name.startswith("_")} - {
        "bus",
        "codec",
        "device_documents",
        "device_messages",
        "devices",
        "envelope",
        "errors",
        "heartbeat",
        "json_numbers",
        "log",
        "artifacts",
        "messages",
        "model",
        "app",
        "model_client",
        "net",
        "principals",
        "roles",
        "runstate",
        "runtime",
        "settings",
        "status_page",
        "topics",
    }
    for name in exported:
        assert getattr(platform_sdk, name) is not None


def test_importing_the_sdk_pulls_in_no_server_libraries_and_starts_no_threads() -> None:
    probe = (
        "import sys, threading, json\n"
        "import platform_sdk, platform_sdk.runstate, platform_sdk.roles\n"
        "print(json.dumps({'modules': sorted(sys.modules), 'threads': threading.active_count()}))"
    )
    result = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=True, timeout=60
    )
    report = json.loads(result.stdout)
    loaded = {name.split(".")[0] for name in report["modules"]}
    assert not loaded & set(HEAVY), f"platform_sdk imports {sorted(loaded & set(HEAVY))}"
    assert report["threads"] == 1


def test_the_sdk_ships_type_information() -> None:
    from pathlib import Path

    assert (Path(platform_sdk.__file__).parent / "py.typed").exists()
