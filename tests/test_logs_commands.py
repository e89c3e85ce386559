"""``aiot model logs NAME [--version V]`` and ``aiot instance logs ID``: logs without service ids.

A model's logs are its replicas' (every version's, or one version's), merged in time order,
each line labelled ``<version>/r<n>``; an instance's are its service's, which the deployer names
(``InstanceInfo.service_id``). Both read through the code of ``aiot logs`` (``aiot.log_reading``),
whose output stays as it was.

The front door, the deployer service (it answers which replicas a model has and which service
an instance is) and the ``aiot`` command run for real (the ``site`` of ``tests.fixtures.sites``). The
model's deployments are written to the deployer's table as its deploys leave them (placing
replicas needs nodes), and the records to the log store as the logger service writes them.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import pytest
from typer.testing import Result

from ai_manager import registry as model_registry
from ai_manager.models import ModelRow, ModelVersionRow
from deployer.messages import Replica, deployment_id_for, replica_service_id
from deployer.models import DeploymentRow
from deployer.service import DeployerService
from logger.store import LogStore
from platform_core.blobstore import blob_store_from_settings
from platform_sdk.artifacts import ModelManifest, model_id_for
from platform_sdk.errors import NotFound
from platform_sdk.messages import LogRecord
from tests.fixtures.sites import Site, running
from tests.test_local_times import stopped_instance

pytestmark = pytest.mark.service("kafka")

COMFORT = model_id_for("comfort")
INSTANCE = "s0123456789a-20261206163000"
NOW = datetime.now(UTC).replace(microsecond=0)


def replica(version: str, index: int) -> str:
    """The service id the deployer gives replica ``index`` of a comfort version."""
    return replica_service_id(deployment_id_for(COMFORT, version), index)


def deploy_comfort(site: Site) -> None:
    """Comfort 1.0.0 (seeded) deployed with two replicas, and a version 2.0.0 with one."""
    with site.database.session() as session:
        model = session.get(ModelRow, COMFORT)
        assert model is not None
        first = session.get(ModelVersionRow, (COMFORT, "1.0.0"))
        assert first is not None
        manifest = ModelManifest.model_validate_json(first.manifest).model_copy(update={"version": "2.0.0"})
        model_registry.create_version(
            session,
            model,
            ModelVersionRow(
                model_id=COMFORT,
                version="2.0.0",
                manifest=manifest.model_dump_json(),
                artifact_key=f"models/{COMFORT}/2.0.0.zip",
                sha256="0" * 64,
                size=1,
                uploaded_by="ada",
            ),
        )
        for version, count in (("1.0.0", 2), ("2.0.0", 1)):
            replicas = [
                Replica(
                    service_id=replica(version, index),
                    node_id="node-1",
                    url=f"http://127.0.0.1:{9100 + index}",
                )
                for index in range(count)
            ]
            session.add(
                DeploymentRow(
                    deployment_id=deployment_id_for(COMFORT, version),
                    model_id=COMFORT,
                    name="comfort",
                    version=version,
                    status="deployed",
                    replicas=json.dumps([item.model_dump() for item in replicas]),
                    endpoints=json.dumps(["predict"]),
                )
            )


def collect(site: Site, *records: tuple[str, int, str, str]) -> None:
    """(service id, seconds before now, level, message) records, written as the logger writes them."""
    LogStore(blob_store_from_settings(site.settings)).append(
        LogRecord(
            service_id=service_id,
            time=NOW - timedelta(seconds=ago),
            level=level,
            logger="test",
            message=message,
        )
        for service_id, ago, level, message in records
    )


def messages(output: str) -> list[str]:
    return [line.rpartition(": ")[2] for line in output.splitlines() if ": " in line]


def line_of(output: str, message: str) -> str:
    [line] = [line for line in output.splitlines() if line.endswith(f": {message}")]
    return line


def json_of(result: Result) -> list[dict[str, object]]:
    document = json.loads(result.stdout)
    assert isinstance(document, list)
    return document


def test_model_logs_merges_every_replica_in_time_order_each_line_labelled(site: Site) -> None:
    deploy_comfort(site)
    collect(
        site,
        (replica("1.0.0", 0), 50, "INFO", "r0 of 1.0.0 serves"),
        (replica("1.0.0", 1), 40, "INFO", "r1 of 1.0.0 serves"),
        ("web", 35, "INFO", "not the model's"),
        (replica("2.0.0", 0), 30, "INFO", "r0 of 2.0.0 serves"),
        (replica("1.0.0", 0), 20, "INFO", "r0 of 1.0.0 predicts"),
        (replica("1.0.0", 1), 10, "WARNING", "r1 of 1.0.0 is slow"),
    )
    with running(DeployerService(site.settings)):
        every = site.aiot("ada", "model", "logs", "comfort").output
        one_version = site.aiot("ada", "model", "logs", "comfort", "--version", "1.0.0").output
        as_json = json_of(site.aiot("ada", "model", "logs", "comfort", "--json"))
        warnings = site.aiot("ada", "model", "logs", COMFORT, "--level", "WARNING").output
        last_two = site.aiot("ada", "model", "logs", "comfort", "--limit", "2").output
        unknown = site.aiot_unchecked("ada", "model", "logs", "comfort", "--version", "9.9.9")

    assert messages(every) == [
        "r0 of 1.0.0 serves",
        "r1 of 1.0.0 serves",
        "r0 of 2.0.0 serves",
        "r0 of 1.0.0 predicts",
        "r1 of 1.0.0 is slow",
    ]
    assert " 1.0.0/r0 " in line_of(every, "r0 of 1.0.0 serves")
    assert " 1.0.0/r1 " in line_of(every, "r1 of 1.0.0 serves")
    assert " 2.0.0/r0 " in line_of(every, "r0 of 2.0.0 serves")
    assert messages(one_version) == [
        "r0 of 1.0.0 serves",
        "r1 of 1.0.0 serves",
        "r0 of 1.0.0 predicts",
        "r1 of 1.0.0 is slow",
    ]
    assert [(record["label"], record["service_id"], record["message"]) for record in as_json] == [
        ("1.0.0/r0", replica("1.0.0", 0), "r0 of 1.0.0 serves"),
        ("1.0.0/r1", replica("1.0.0", 1), "r1 of 1.0.0 serves"),
        ("2.0.0/r0", replica("2.0.0", 0), "r0 of 2.0.0 serves"),
        ("1.0.0/r0", replica("1.0.0", 0), "r0 of 1.0.0 predicts"),
        ("1.0.0/r1", replica("1.0.0", 1), "r1 of 1.0.0 is slow"),
    ]
    assert messages(warnings) == ["r1 of 1.0.0 is slow"]
    assert messages(last_two) == ["r0 of 1.0.0 predicts", "r1 of 1.0.0 is slow"]
    assert isinstance(unknown.exception, NotFound)
    assert "no version '9.9.9' (versions: 1.0.0, 2.0.0)" in unknown.exception.message


def test_model_logs_of_a_model_never_deployed_says_so(site: Site) -> None:
    with running(DeployerService(site.settings)):
        result = site.aiot_unchecked("ada", "model", "logs", "comfort")

    assert isinstance(result.exception, NotFound)
    assert "no version has replicas" in result.exception.message


def test_instance_logs_reads_the_service_the_deployer_names(site: Site) -> None:
    collect(
        site,
        (f"app-{INSTANCE}", 30, "INFO", "smart home sees 23 °C"),
        (f"app-{INSTANCE}", 20, "ERROR", "the AC does not answer"),
        ("app-s0123456789a-20261206170000", 25, "INFO", "another instance"),
    )
    with running(DeployerService(site.settings)):
        stopped_instance(
            site, INSTANCE, "appdev", "America/New_York", datetime(2026, 12, 6, 17, 30, tzinfo=UTC)
        )
        [listed] = json.loads(site.aiot("appdev", "instance", "list", "--json").stdout)
        output = site.aiot("appdev", "instance", "logs", INSTANCE).output
        errors = json_of(site.aiot("appdev", "instance", "logs", INSTANCE, "--level", "ERROR", "--json"))
        unknown = site.aiot_unchecked("appdev", "instance", "logs", "s0123456789a-20990101000000")

    assert listed["service_id"] == f"app-{INSTANCE}"
    assert messages(output) == ["smart home sees 23 °C", "the AC does not answer"]
    assert f" app-{INSTANCE} " in line_of(output, "the AC does not answer")
    assert [record["message"] for record in errors] == ["the AC does not answer"]
    assert isinstance(unknown.exception, NotFound)


def test_aiot_logs_reads_as_before(site: Site) -> None:
    collect(
        site,
        ("logger", 30, "INFO", "logger's line"),
        ("web", 20, "WARNING", "web's line"),
    )
    one = site.aiot("admin", "logs", "web").output
    every = json_of(site.aiot("admin", "logs", "--json"))

    assert messages(one) == ["web's line"]
    assert " web " in line_of(one, "web's line")
    mine = [record for record in every if record["message"] in ("logger's line", "web's line")]
    assert [(record["service_id"], record["message"]) for record in mine] == [
        ("logger", "logger's line"),
        ("web", "web's line"),
    ]
    assert all("label" not in record for record in every)
