"""Models end to end on a running platform, on both runtimes: pack → upload → deployed → ``model_call``.

The sample models from ``examples/models`` are packed and uploaded with the ``aiot``
command as an AI developer would; calls go through the SDK's ``ModelClient`` the way
an app's ``model_call`` does (resolve over Kafka, then the replica's REST endpoint).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from ai_manager.artifact import pack_model
from deployer.messages import Deployments, DeployModel, ListDeployments
from platform_sdk.bus import Bus, Requester
from platform_sdk.errors import NotFound, PlatformError
from platform_sdk.model_client import ModelClient
from platform_sdk.settings import temporary_settings
from tests.platform_driver import Platform, wait_until
from tests.sample_images import sample_png

pytestmark = [pytest.mark.slow, pytest.mark.service("kafka"), pytest.mark.timeout(900)]
EXAMPLES = Path(__file__).resolve().parents[1] / "examples" / "models"


@pytest.fixture(scope="module")
def platform(e2e_platform: Platform) -> Platform:
    """The shared platform of each runtime (``tests/fixtures/platforms.py``); every test runs on both."""
    return e2e_platform


@pytest.fixture
def client(platform: Platform) -> Iterator[ModelClient]:
    broker = platform.status()["broker"]
    with (
        temporary_settings(platform.bus_settings(broker)) as settings,
        ModelClient.from_settings(settings) as model_client,
    ):
        yield model_client


def upload(platform: Platform, folder: Path, tmp_path: Path) -> str:
    """Pack and upload ``folder``; the model id once the deploy finished."""
    zip_file = tmp_path / f"{folder.name}.zip"
    platform.run("model", "pack", str(folder), "-o", str(zip_file))
    began = time.monotonic()
    result = platform.run("model", "upload", str(zip_file), timeout=600)
    print(f"\n{folder.name}: uploaded and deployed in {time.monotonic() - began:.1f}s")
    model_id = result.stdout.strip().splitlines()[-1]
    assert model_id.startswith("m")
    return model_id


def variant(tmp_path: Path, version: str, replicas: int) -> Path:
    """The comfort example at another version and replica count."""
    folder = tmp_path / f"comfort-{version}"
    shutil.copytree(EXAMPLES / "comfort", folder)
    manifest = json.loads((folder / "model.json").read_text())
    manifest.update(version=version, replicas=replicas)
    (folder / "model.json").write_text(json.dumps(manifest))
    return folder


def redeliver_deploy(platform: Platform, model_id: str, sha256: str) -> Deployments:
    """The upload's DeployModel once more, as Kafka redelivers after a consumer restart; the model's
    deployments once the deployer has handled it.

    The deployer's command loop handles a partition's records one at a time, in order: the reply
    to a ListDeployments sent after the redelivered request, with the same key (so to the same
    partition), comes once that request was handled, and shows what handling it did to the rows.
    """
    manifest = pack_model(EXAMPLES / "face-detector").manifest
    request = DeployModel(
        model_id=model_id,
        version=manifest.version,
        artifact_key=f"models/{model_id}/{manifest.version}.zip",
        artifact_sha256=sha256,
        manifest=manifest,
    )
    broker = platform.status()["broker"]
    with temporary_settings(platform.bus_settings(broker)) as settings:
        bus = Bus(settings, source="test-redeliver")
        with Requester(bus) as requester:
            requester.send(bus.topics.deployer, request, key=model_id)
            return requester.request(
                bus.topics.deployer, ListDeployments(model_id=model_id), Deployments, timeout=30, key=model_id
            )


def bundle_folders(platform: Platform, model_id: str) -> list[Path]:
    """The unpacked bundles of ``model_id`` on the nodes (``AIOT_HOME/bundles/<node>/<sha256>``)."""
    return [
        folder
        for folder in (platform.home / "bundles").glob("*/*")
        if (folder / "aiot-deploy.json").is_file()
        and json.loads((folder / "aiot-deploy.json").read_text())["model_id"] == model_id
    ]


def replica_processes(service_id: str) -> list[psutil.Process]:
    found = []
    for process in psutil.process_iter():
        with contextlib.suppress(psutil.Error):
            if process.environ().get("AIOT_SERVICE_ID") == service_id:
                found.append(process)
    return found


def test_face_detector_finds_one_face_in_astronaut_and_none_in_coffee(
    platform: Platform, client: ModelClient, tmp_path: Path
) -> None:
    model_id = upload(platform, EXAMPLES / "face-detector", tmp_path)
    shown = platform.json("model", "show", model_id)
    assert isinstance(shown, dict)
    stages = [stage["stage"] for stage in shown["versions"][0]["deployment"]["stages"]]
    assert stages[-3:] == ["health", "smoke-test", "deployed"]

    # On docker the replica is two processes (the container's init and the server): compare sets.
    running = {process.pid for process in replica_processes(f"{model_id}-v1.0.0-r0")}
    assert running
    handled = redeliver_deploy(platform, model_id, shown["versions"][0]["sha256"])
    # Handled: it found its deployment deployed and started nothing (no stage, no new replica).
    assert [(info.status, len(info.stages)) for info in handled.deployments] == [("deployed", len(stages))]
    again = platform.json("model", "show", model_id)
    assert isinstance(again, dict)
    assert again["versions"][0]["deployment"]["stages"] == shown["versions"][0]["deployment"]["stages"]
    assert {process.pid for process in replica_processes(f"{model_id}-v1.0.0-r0")} == running

    astronaut = client.call(model_id, "detect", {"image": sample_png("astronaut")})
    coffee = client.call("face-detector", params={"image": sample_png("coffee")})
    assert astronaut["count"] == 1
    assert len(astronaut["boxes"]) == 1
    assert coffee == {"count": 0, "boxes": []}


def test_a_replica_killed_mid_traffic_does_not_fail_calls_and_versions_run_side_by_side(
    platform: Platform, client: ModelClient, tmp_path: Path
) -> None:
    upload(platform, variant(tmp_path, "1.0.0", replicas=1), tmp_path)
    model_id = upload(platform, variant(tmp_path, "1.1.0", replicas=2), tmp_path)
    listed = platform.json("model", "list")
    assert isinstance(listed, list)
    comfort = next(model for model in listed if model["model_id"] == model_id)
    assert {v["version"]: v["status"] for v in comfort["versions"]} == {
        "1.0.0": "deployed",
        "1.1.0": "deployed",
    }

    latest = client.resolver.resolve("comfort", None)
    assert latest.version == "1.1.0"
    assert len(latest.urls) == 2
    pinned = client.call("comfort", "predict", [30.0, 55.0], version="1.0.0")
    assert pinned == {"fan_speed": 4, "ac_on": True, "ac_setpoint": pytest.approx(22.9, abs=0.05)}

    calls, failures = 0, []
    stop = threading.Event()

    def traffic() -> None:
        nonlocal calls
        while not stop.is_set():
            try:
                assert client.call("comfort", "predict", {"temperature": 30.0, "humidity": 55.0})["ac_on"]
                calls += 1
            except (PlatformError, AssertionError) as exc:
                failures.append(repr(exc))
            time.sleep(0.002)

    caller = threading.Thread(target=traffic, name="test-traffic")
    caller.start()
    try:
        wait_until(lambda: calls >= 50 or bool(failures), 30, "calls flowing before the kill")
        victim = f"{model_id}-v1.1.0-r0"
        processes = replica_processes(victim)
        assert processes, f"no process of {victim}"
        before = calls
        for process in processes:
            with contextlib.suppress(ProcessLookupError):
                os.kill(process.pid, signal.SIGKILL)
        began = time.monotonic()
        wait_until(lambda: bool(replica_processes(victim)), 60, f"{victim} restarted")
        print(f"\nreplica {victim} killed; a new copy ran after {time.monotonic() - began:.1f}s")
        wait_until(lambda: calls > before + 50, 5, "calls going on while a replica was down and back")
    finally:
        stop.set()
        caller.join(30)
    assert failures == []
    print(f"{calls} calls, none failed, while a replica was killed and restarted")


def test_deleting_a_model_stops_its_replicas(platform: Platform, client: ModelClient, tmp_path: Path) -> None:
    folder = variant(tmp_path, "2.0.0", replicas=1)
    manifest = json.loads((folder / "model.json").read_text())
    manifest["name"] = "comfort-doomed"
    (folder / "model.json").write_text(json.dumps(manifest))
    model_id = upload(platform, folder, tmp_path)
    assert client.call("comfort-doomed", params=[20.0, 40.0])["ac_on"] is False
    replica = f"{model_id}-v2.0.0-r0"
    assert replica_processes(replica)
    unpacked = bundle_folders(platform, model_id)
    assert unpacked, "no unpacked bundle of the model on any node"
    bucket = platform.home / "bucket"
    zips = [bucket / "bundles" / f"{folder.name}.zip" for folder in unpacked]
    assert all(path.is_file() for path in zips)

    platform.run("model", "delete", model_id)
    wait_until(lambda: not replica_processes(replica), 30, "the replica stopped")
    with pytest.raises(NotFound):
        client.resolver.resolve("comfort-doomed", None)
    assert "comfort-doomed" not in platform.run("model", "list").stdout
    # Nothing of it is left: neither its bundle (in the bucket, unpacked on the node) nor its zip.
    wait_until(lambda: not bundle_folders(platform, model_id), 30, "the unpacked bundle removed")
    assert [path for path in zips if path.exists()] == []
    assert not (bucket / "models" / model_id).exists()


def test_deployed_models_come_back_after_the_platform_restarts(platform: Platform, tmp_path: Path) -> None:
    broker_before = platform.status()["broker"]
    platform.restart()
    status = platform.status()
    with (
        temporary_settings(platform.bus_settings(status["broker"])) as settings,
        ModelClient.from_settings(settings) as client,
    ):
        began = time.monotonic()
        wait_until(
            lambda: _answers(client, "face-detector"), 120, "face-detector answering after the restart"
        )
        print(
            f"\nplatform restarted (broker {broker_before} -> {status['broker']}); face-detector answered "
            f"{time.monotonic() - began:.1f}s after `aiot up` returned"
        )
        assert client.call("face-detector", params={"image": sample_png("astronaut")})["count"] == 1
        assert client.call("comfort", "predict", [30.0, 55.0], version="1.0.0")["fan_speed"] == 4


def _answers(client: ModelClient, model: str) -> bool:
    try:
        client.resolver.resolve(model, None)
    except PlatformError:
        return False
    return True
