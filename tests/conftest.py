"""Test fixtures against real infrastructure.

A test that needs a real component says so with ``@pytest.mark.service(NAME)``
and takes that component's fixture. When the component cannot be had, the test
skips with a message naming it, unless ``AIOT_TEST_REQUIRE_SERVICES=1`` (CI
sets it): then the test fails. Each test gets its own topic prefix and
``AIOT_HOME``, and an autouse guard fails any test that leaves threads or
child processes behind.
"""

from __future__ import annotations

import os
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from platform_sdk.settings import Settings, temporary_settings

pytest_plugins = [
    "tests.fixtures.components",
    "tests.fixtures.azurite",
    "tests.fixtures.docker",
    "tests.fixtures.mqtt",
    "tests.fixtures.platforms",
    "tests.fixtures.sites",
    "tests.fixtures.smtp",
]

# Threads that libraries start once per process and keep (not ours to stop).
_FOREIGN_THREAD_PREFIXES = ("waitress-", "ThreadPoolExecutor", "pydevd", "asyncio_")


def require_services() -> bool:
    return os.environ.get("AIOT_TEST_REQUIRE_SERVICES", "") not in ("", "0", "false")


def missing_component(name: str, reason: str) -> None:
    """Skip (laptop) or fail (CI) a test whose component is absent."""
    message = f"{name} is not available: {reason}"
    if require_services():
        pytest.fail(f"{message} (AIOT_TEST_REQUIRE_SERVICES forbids skipping)", pytrace=False)
    pytest.skip(message)


@pytest.fixture(autouse=True)
def no_leftovers() -> Iterator[None]:
    """Fail a test that leaves our threads or child processes running."""
    threads_before = {t.ident for t in threading.enumerate()}
    children_before = {p.pid for p in psutil.Process().children(recursive=True)}
    yield
    deadline = time.monotonic() + 5
    while True:
        threads = [
            t.name
            for t in threading.enumerate()
            if t.ident not in threads_before
            and t.is_alive()
            and not t.name.startswith(_FOREIGN_THREAD_PREFIXES)
        ]
        children = [p for p in psutil.Process().children(recursive=True) if p.pid not in children_before]
        children = [p for p in children if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]
        if (not threads and not children) or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    assert not threads, f"test left threads running: {threads}"
    assert not children, f"test left processes running: {[p.cmdline() for p in children]}"


@pytest.fixture
def aiot_home(tmp_path: Path) -> Path:
    home = tmp_path / "aiot-home"
    home.mkdir()
    return home


@pytest.fixture
def settings(aiot_home: Path) -> Iterator[Settings]:
    """Settings of a fresh platform: own home, own topic prefix; no broker."""
    with temporary_settings(
        {"home": str(aiot_home), "kafka.topic_prefix": f"t{uuid.uuid4().hex[:10]}"}
    ) as current:
        yield current


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        for marker in item.iter_markers("service"):
            if not marker.args:
                raise pytest.UsageError(f"{item.nodeid}: @pytest.mark.service needs a name")
