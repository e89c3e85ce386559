"""A plain script that used the SDK's convenience calls exits once its work is done.

``model_call`` makes its client on first use, and that client starts a Kafka reply
consumer; the script never closes it. Each test runs such a script in a subprocess
against the session broker, with a stand-in deployer (a ``ConsumerLoop`` answering
``ResolveModel``) and a stand-in replica (a small HTTP server), and checks that the
process ends within a second of printing its last answer.
"""

from __future__ import annotations

import contextlib
import json
import os
import selectors
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from platform_sdk.bus import Bus, ConsumerLoop
from platform_sdk.envelope import Envelope
from platform_sdk.model_client import EndpointInfo, ModelReplicas, ResolveModel
from platform_sdk.settings import Settings

pytestmark = pytest.mark.service("kafka")

EXIT_WITHIN_S = 1.0  # from the last answer printed to the process gone
ANSWER_WITHIN_S = 60.0  # interpreter start, imports, the first resolve over Kafka
KILL_AFTER_S = 10.0  # a script still running this long after its answer hangs

# The main thread calls and returns: the script's end is the end of the main thread.
CALL_FROM_MAIN = """
from platform_sdk import model_call
print(model_call("tiny", "predict", {"x": 2.0})["y"], flush=True)
"""

# A thread of the script's own calls after the main thread returned: the client must stay
# usable until that thread ends, and the process end right after it.
CALL_FROM_A_THREAD = """
import threading
from platform_sdk import model_call

def work():
    for x in (2.0, 3.0):
        print(model_call("tiny", "predict", {"x": x})["y"], flush=True)

threading.Thread(target=work).start()
"""


class _Doubler(BaseHTTPRequestHandler):
    """A model replica: ``POST /predict/predict`` with ``{"x": n}`` answers ``{"y": 2n}``, kept alive."""

    protocol_version = "HTTP/1.1"

    def do_POST(self) -> None:
        fields = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        body = json.dumps({"y": fields["x"] * 2}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture
def replica() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Doubler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, name="test-replica")
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


@pytest.fixture
def deployer(kafka_settings: Settings, replica: str) -> Iterator[ConsumerLoop]:
    """Answers every ``ResolveModel`` with the one replica, as the deployer would."""
    bus = Bus(kafka_settings, source="deployer")

    def resolve(request: ResolveModel, _envelope: Envelope) -> ModelReplicas:
        return ModelReplicas(
            model_id=request.model,
            name=request.model,
            version="1.0.0",
            urls=[replica],
            endpoints=[EndpointInfo(name="predict", inputs=["x"])],
        )

    loop = ConsumerLoop(bus, [bus.topics.deployer], group=None, name="test-deployer")
    loop.add_handler(ResolveModel, resolve)
    loop.start()
    try:
        yield loop
    finally:
        loop.stop()


def run_script(
    settings: Settings, script: str, answers: int
) -> tuple[list[str], float, subprocess.Popen[str]]:
    """Start ``script`` with the platform's AIOT_* environment: first ``answers`` lines, when they were in."""
    env = {key: value for key, value in os.environ.items() if not key.startswith("AIOT_")}
    env |= {
        "AIOT_HOME": str(settings.home_dir),
        "AIOT_KAFKA__BOOTSTRAP_SERVERS": settings.kafka.bootstrap_servers or "",
        "AIOT_KAFKA__SECRETS_FILE": str(settings.kafka.secrets_file or ""),
        "AIOT_KAFKA__TOPIC_PREFIX": settings.kafka.topic_prefix,
    }
    process = subprocess.Popen(
        [sys.executable, "-c", script], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    assert process.stdout is not None
    # Read the pipe's bytes as they come (a buffered readline could hold a line select() no longer sees).
    received = b""
    deadline = time.monotonic() + ANSWER_WITHIN_S
    with selectors.DefaultSelector() as selector:
        selector.register(process.stdout, selectors.EVENT_READ)
        while received.count(b"\n") < answers and selector.select(max(deadline - time.monotonic(), 0)):
            chunk = os.read(process.stdout.fileno(), 4096)
            if not chunk:
                break  # the script ended
            received += chunk
    lines = received.decode().splitlines()
    return lines, time.monotonic(), process


@pytest.mark.parametrize(
    ("script", "expected"),
    [(CALL_FROM_MAIN, ["4.0"]), (CALL_FROM_A_THREAD, ["4.0", "6.0"])],
    ids=["main-thread", "own-thread"],
)
def test_a_script_exits_right_after_its_last_model_call(
    kafka_settings: Settings, deployer: ConsumerLoop, script: str, expected: list[str]
) -> None:
    lines, answered, process = run_script(kafka_settings, script, len(expected))
    try:
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(KILL_AFTER_S)
        ended = time.monotonic()
    finally:
        if process.poll() is None:
            process.kill()
        _out, err = process.communicate()
    assert lines == expected, f"the script answered {lines}; stderr:\n{err}"
    assert ended - answered < EXIT_WITHIN_S, (
        f"the script ran on {ended - answered:.1f}s after its last answer (the SDK kept it alive)"
    )
    assert process.returncode == 0, f"the script failed ({process.returncode}); stderr:\n{err}"
