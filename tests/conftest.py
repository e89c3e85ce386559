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
from collections.abc import Generator, Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest

from platform_sdk.settings import Settings, temporary_settings
from tests import platform_driver

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
        children = [p for p in children if _still_running(p) and not _started_by(p, children_before)]
        if (not threads and not children) or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    assert not threads, f"test left threads running: {threads}"
    assert not children, f"test left processes running: {[_command_of(p) for p in children]}"


def _started_by(process: psutil.Process, earlier: set[int]) -> bool:
    """Whether ``process`` descends from a process that ran before the test began.

    Such a process is that one's work, not the test's: an SSH session a node manager opens on a
    test host's sshd (a module fixture's) while the test ends. The fixture that started the earlier
    process answers for what it leaves when it stops it.
    """
    try:
        return any(parent.pid in earlier for parent in process.parents())
    except psutil.Error:
        return False


def _still_running(process: psutil.Process) -> bool:
    """Whether ``process`` runs (not a zombie); one that ends while it is asked does not."""
    try:
        return process.is_running() and process.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def _command_of(process: psutil.Process) -> list[str] | str:
    try:
        return process.cmdline()
    except psutil.Error:
        return f"pid {process.pid} (ended)"


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


# The groups `make test` (pytest -n 2 --dist loadfile) hands its two workers first, longest first
# (minutes of a whole run): the rest follow in collection order, each to the worker free first.
LONGEST_FIRST = (
    "e2e-platform",
    "test_cli_platform",
    "test_compose",  # its images' first build on a fresh machine takes minutes
    "test_kafka_cluster",
    "test_ssh_bootstrap",
    "test_ssh_cluster",
    "test_devices_e2e",
    "test_node_layer",
    "test_docker_runtime",
)
# Modules that load the whole machine on purpose (CPU burners on twice the cores): they run last,
# alone, once every other worker is done; next to another worker's platform their faults are not
# the ones under test.
ALONE = ("test_chaos",)


def module_group(path: str | Path) -> str:
    """The group of a test module: its name, or one group for the modules sharing the end-to-end platform."""
    from tests.fixtures.platforms import SHARING_MODULES

    stem = Path(path).stem
    return "e2e-platform" if stem in SHARING_MODULES else stem


@pytest.hookimpl(tryfirst=True, optionalhook=True)
def pytest_xdist_make_scheduler(config: pytest.Config, log: Any) -> Any:
    """``--dist loadfile`` with the modules that share the end-to-end platform as one unit, ALONE last.

    Each group runs on one worker, in its order: module fixtures are made once, a module's tests
    never run at the same time, and the shared platform is started once per runtime. A group of
    ALONE is handed out only when no other worker has more than the one test a worker keeps until
    it hears what follows; the others are then told to finish.
    """
    if config.getvalue("dist") != "loadfile":
        return None
    from xdist.scheduler import LoadFileScheduling

    class ModuleScheduling(LoadFileScheduling):  # type: ignore[misc]  # xdist is untyped
        def _split_scope(self, nodeid: str) -> str:
            return module_group(nodeid.split("::", 1)[0])

        def _reschedule(self, node: Any) -> None:
            if node.shutting_down or not self.workqueue or self._pending_of(self.assigned_work[node]) > 2:
                super()._reschedule(node)
                return
            if next(iter(self.workqueue)) not in ALONE:
                super()._reschedule(node)
                return
            others = [other for other in self.assigned_work if other is not node]
            if any(self._pending_of(self.assigned_work[other]) > 1 for other in others):
                return  # asked again when its next test completes, or another worker's does
            self._assign_work_unit(node)
            if not self.workqueue:
                for other in others:
                    if not other.shutting_down:
                        other.shutdown()

    return ModuleScheduling(config, log)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    """Keep on the item whether its test failed, for fixtures that say more about a failure."""
    report = yield
    if report.when == "call" and report.failed:
        item.stash[platform_driver.FAILED] = True
    return report


@pytest.hookimpl(wrapper=True)
def pytest_collection_modifyitems(items: list[pytest.Item]) -> Iterator[None]:
    """Check the service markers; in a worker of a parallel run, put the longest groups first, ALONE last."""
    for item in items:
        for marker in item.iter_markers("service"):
            if not marker.args:
                raise pytest.UsageError(f"{item.nodeid}: @pytest.mark.service needs a name")
    yield  # every other hook orders the items (the shared platform's tests last)
    if os.environ.get("PYTEST_XDIST_WORKER"):

        def rank(item: pytest.Item) -> int:
            group = module_group(item.path)
            if group in ALONE:
                return len(LONGEST_FIRST) + 1
            return LONGEST_FIRST.index(group) if group in LONGEST_FIRST else len(LONGEST_FIRST)

        items.sort(key=rank)  # stable: each group keeps its order
