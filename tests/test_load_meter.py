"""The agent's load sample: every service's whole process tree, read in one pass over the machine."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator

import psutil
import pytest

from service_agent.load import LoadMeter
from tests.platform_driver import wait_until

TREE = (
    "import subprocess, sys, time\n"
    "child = subprocess.Popen([sys.executable, '-c', "
    '\'import subprocess, sys, time; subprocess.Popen(["sleep", "60"]); time.sleep(60)\'])\n'
    "time.sleep(60)\n"
)


@pytest.fixture
def service() -> Iterator[subprocess.Popen[bytes]]:
    """A service whose process has a child, which has one of its own (three processes)."""
    process = subprocess.Popen([sys.executable, "-c", TREE])
    try:
        wait_until(
            lambda: len(psutil.Process(process.pid).children(recursive=True)) == 2, 20, "the tree started"
        )
        yield process
    finally:
        for child in psutil.Process(process.pid).children(recursive=True):
            child.kill()
        process.kill()
        process.wait()


@pytest.mark.parametrize("scope", ["machine", "services"])
def test_a_sample_counts_each_services_whole_tree_and_skips_a_gone_one(
    service: subprocess.Popen[bytes], scope: str
) -> None:
    meter = LoadMeter(scope)  # type: ignore[arg-type]
    gone = subprocess.Popen(["true"])
    gone.wait()
    sample = meter.sample("node-1", [service.pid, gone.pid], capacity=4, services=2)
    assert sample.processes == 3
    assert (sample.node_id, sample.services, sample.capacity) == ("node-1", 2, 4)
    if scope == "services":
        assert 0 < sample.memory_used_mb < sample.memory_total_mb  # the three processes' RSS
    assert meter.sample("node-1", [], capacity=4, services=0).processes == 0
