"""Logs are scoped (``docs/security.md``, Logs): each caller reads exactly what the rule gives them.

A platform configurer reads every service's logs; an AI developer their models' replicas'; an
app developer the instances of their apps and the instances they scheduled; an end user the
instances they scheduled; nobody else the platform's services'. One service the caller may not
read is a 403 naming it and why; a query across services, and the list of services, leave out
what the caller may not read.

The front door (``FrontDoorService``, over real HTTP, answering for the AI and app managers on
its answers loop) and the deployer service run for real on the session's Kafka broker, on a
copy of the small site's registry (``tests.fixtures.sites``) with a second AI developer, a
second app developer, their model and app, and app instances in the deployer's table as its
runs leave them. The records go into the log store as the logger service writes them
(``LogStore.append``).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import requests

from ai_manager.models import ModelRow
from app_manager.models import AppRow
from deployer.messages import deployment_id_for, instance_service_id, replica_service_id
from deployer.models import AppInstanceRow
from deployer.service import DeployerService
from logger.scope import LogReaders, Owned, Scheduled
from logger.store import LogStore
from platform_core.auth import Principal, Role
from platform_core.blobstore import blob_store_from_settings
from platform_sdk.artifacts import app_id_for, model_id_for
from platform_sdk.errors import Forbidden
from platform_sdk.messages import LogRecord
from tests.fixtures.sites import Site, running
from tests.test_front_door import PASSWORD
from web import identity

pytestmark = pytest.mark.service("kafka")


NOW = datetime.now(UTC).replace(microsecond=0)
COMFORT = replica_service_id(deployment_id_for(model_id_for("comfort"), "1.0.0"), 0)  # ada's
OCCUPANCY = replica_service_id(deployment_id_for(model_id_for("occupancy"), "2.0.0"), 1)  # bob's
UNKNOWN_MODEL = replica_service_id(deployment_id_for(model_id_for("nobody-knows"), "1.0.0"), 0)
# smart-home is appdev's, classroom carol's: (scheduled by, app name) of each instance.
INSTANCES = {
    "s00000000001-20261206163000": ("enduser", "smart-home"),
    "s00000000002-20261206163000": ("eve", "classroom"),
    "s00000000003-20261206163000": ("carol", "smart-home"),
}
HOME_BY_ENDUSER, CLASSROOM_BY_EVE, HOME_BY_CAROL = (instance_service_id(i) for i in INSTANCES)
UNKNOWN_INSTANCE = instance_service_id("s00000000009-20261206163000")
PLATFORM = ("deployer", "node-manager", "agent-node-1", "web")
EVERY_SERVICE = {
    COMFORT,
    OCCUPANCY,
    UNKNOWN_MODEL,
    HOME_BY_ENDUSER,
    CLASSROOM_BY_EVE,
    HOME_BY_CAROL,
    UNKNOWN_INSTANCE,
    *PLATFORM,
}
# Who reads what: the rule, spelt out per user.
READS = {
    "admin": EVERY_SERVICE,  # platform_configurer
    "ada": {COMFORT},  # ai_developer
    "bob": {OCCUPANCY},  # ai_developer
    "appdev": {HOME_BY_ENDUSER, HOME_BY_CAROL},  # app_developer: smart-home's instances
    "carol": {CLASSROOM_BY_EVE, HOME_BY_CAROL},  # app_developer: classroom's, and the one she scheduled
    "enduser": {HOME_BY_ENDUSER},  # end_user
    "eve": {CLASSROOM_BY_EVE},  # end_user
}


def add_second_developers(site: Site) -> None:
    """bob (AI developer) with model occupancy, carol (app developer) with app classroom, as uploads
    leave their rows; the instances of ``INSTANCES`` as the deployer leaves stopped runs."""
    with site.database.session() as session:
        identity.create_user(session, "bob", PASSWORD, Role.AI_DEVELOPER)
        identity.create_user(session, "carol", PASSWORD, Role.APP_DEVELOPER)
        session.add(
            ModelRow(model_id=model_id_for("occupancy"), name="occupancy", owner="bob", description="")
        )
        session.add(AppRow(app_id=app_id_for("classroom"), name="classroom", owner="carol", description=""))
        for instance_id, (owner, app) in INSTANCES.items():
            session.add(
                AppInstanceRow(
                    instance_id=instance_id,
                    app_id=app_id_for(app),
                    app_name=app,
                    version="1.0.0",
                    location="lake-home",
                    schedule_id=instance_id.partition("-")[0],
                    owner=owner,
                    status="stopped",
                )
            )


def collect_every_service(site: Site) -> None:
    """Two records of each service, written as the logger service writes them."""
    LogStore(blob_store_from_settings(site.settings)).append(
        LogRecord(
            service_id=service,
            time=NOW - timedelta(seconds=60 - 20 * line - index),
            level="INFO",
            logger="test",
            message=f"{service} line {line}",
        )
        for line in (0, 1)
        for index, service in enumerate(sorted(EVERY_SERVICE))
    )


@pytest.fixture
def unanswered(site: Site) -> Site:
    """The site with both developers of each kind, their instances and every service's logs."""
    add_second_developers(site)
    collect_every_service(site)
    return site


@pytest.fixture
def scoped(unanswered: Site) -> Iterator[Site]:
    """... and the deployer running (it answers which instance is whose)."""
    with running(DeployerService(unanswered.settings)):
        yield unanswered


def get(site: Site, username: str, path: str, **params: str) -> requests.Response:
    """``GET path`` on the front door over HTTP, as ``username``."""
    headers = {"Authorization": f"Bearer {site.token(username)}"}
    return requests.get(f"{site.url}{path}", params=params, headers=headers, timeout=30)


def body(response: requests.Response, status: int = 200) -> dict[str, Any]:
    assert response.status_code == status, response.text
    document = response.json()
    assert isinstance(document, dict)
    return document


def test_each_caller_reads_exactly_the_logs_the_rule_gives_them(scoped: Site) -> None:
    for username, readable in READS.items():
        records = body(get(scoped, username, "/api/logs"))["records"]
        assert {record["service_id"] for record in records} == readable, username
        assert len(records) == 2 * len(readable), username
        services = body(get(scoped, username, "/api/logs/services"))["services"]
        assert services == sorted(readable), username
        for service in readable:
            one = body(get(scoped, username, "/api/logs", service=service))["records"]
            assert [record["message"] for record in one] == [f"{service} line 0", f"{service} line 1"]
        # A search across services searches only what the caller may read.
        found = body(get(scoped, username, "/api/logs", grep="line 1", limit="3"))["records"]
        assert {record["service_id"] for record in found} <= readable, username
        assert len(found) == min(3, len(readable)), username


def test_a_service_the_caller_may_not_read_is_forbidden_naming_it_and_why(scoped: Site) -> None:
    for username, readable in READS.items():
        for service in sorted(EVERY_SERVICE - readable):
            error = body(get(scoped, username, "/api/logs", service=service), 403)["error"]
            assert error["type"] == "Forbidden"
            assert f"may not read the logs of service {service!r}" in error["message"], error
            assert error["details"] == {"service": service}

    def why(username: str, service: str) -> str:
        message = body(get(scoped, username, "/api/logs", service=service), 403)["error"]["message"]
        assert isinstance(message, str)
        return message.partition(": ")[2]

    assert why("ada", "deployer") == "it is a platform service; its logs are for platform configurers only"
    assert why("ada", OCCUPANCY) == (
        "it is a replica of model 'occupancy'; its logs are for the model's owner and platform configurers"
    )
    assert why("eve", HOME_BY_ENDUSER) == (
        "it is app instance 's00000000001-20261206163000' of app 'smart-home'; its logs are for "
        "whoever scheduled it, the app's developer and platform configurers"
    )
    assert "which the AI manager does not know" in why("bob", UNKNOWN_MODEL)
    assert "which the deployer does not know" in why("carol", UNKNOWN_INSTANCE)


def test_the_cli_shows_the_same(scoped: Site) -> None:
    listed = json.loads(scoped.aiot("carol", "logs", "--json").stdout)
    refused = scoped.aiot_unchecked("enduser", "logs", "node-manager")
    own_instance = scoped.aiot("appdev", "instance", "logs", "s00000000001-20261206163000").output

    assert {record["service_id"] for record in listed} == READS["carol"]
    assert isinstance(refused.exception, Forbidden)
    assert "may not read the logs of service 'node-manager'" in refused.exception.message
    # The instance is enduser's (GET /api/instances/<id> is theirs), its app appdev's: its logs read.
    assert f"{HOME_BY_ENDUSER} line 1" in own_instance


def test_a_read_whose_owner_does_not_answer_is_unavailable_and_shows_nothing(
    unanswered: Site, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """No deployer: whose an instance is cannot be told, so app developers' and end users' reads
    fail naming it; an AI developer's read asks only the AI manager, a configurer's nobody."""
    monkeypatch.setattr(unanswered.front_door.settings.web, "ask_timeout_s", 1.0)
    for username in ("appdev", "enduser"):
        assert body(get(unanswered, username, "/api/logs"), 503)["error"]["type"] == "Unavailable"
        body(get(unanswered, username, "/api/logs", service=HOME_BY_ENDUSER), 503)
    assert "GET /api/logs failed: the deployer does not answer" in caplog.text  # a 5xx message is only logged
    # A platform service needs nobody's answer: refused at once.
    body(get(unanswered, "enduser", "/api/logs", service="deployer"), 403)
    ada = body(get(unanswered, "ada", "/api/logs"))["records"]
    assert {record["service_id"] for record in ada} == READS["ada"]
    admin = body(get(unanswered, "admin", "/api/logs"))["records"]
    assert {record["service_id"] for record in admin} == EVERY_SERVICE


# --- the owners' answers are kept briefly, and a bounded number of them --------------------------


class CountingOwners:
    """Owners that count the questions and answer from dicts."""

    def __init__(self) -> None:
        self.asked: list[tuple[str, list[str]]] = []
        self.model_owners = {model_id_for("comfort"): Owned("comfort", "ada")}

    def models(self, model_ids: list[str]) -> dict[str, Owned]:
        self.asked.append(("models", sorted(model_ids)))
        return {key: value for key, value in self.model_owners.items() if key in model_ids}

    def instances(self, instance_ids: list[str]) -> dict[str, Scheduled]:
        self.asked.append(("instances", sorted(instance_ids)))
        return {key: Scheduled("enduser", app_id_for("smart-home"), "smart-home") for key in instance_ids}

    def apps(self, app_ids: list[str]) -> dict[str, Owned]:
        self.asked.append(("apps", sorted(app_ids)))
        return {key: Owned("smart-home", "appdev") for key in app_ids}


def principal(username: str, role: Role) -> Principal:
    return Principal(user_id=1, username=username, role=role, token_id=1)


def test_owners_answers_are_kept_for_their_time_and_bounded_in_number() -> None:
    owners = CountingOwners()
    clock = [1000.0]
    readers = LogReaders(owners, ttl_s=10, max_entries=2, clock=lambda: clock[0])
    ada = principal("ada", Role.AI_DEVELOPER)
    every = [COMFORT, HOME_BY_ENDUSER, HOME_BY_CAROL, "deployer"]

    assert readers.readable(ada, every) == {COMFORT}
    assert readers.readable(principal("appdev", Role.APP_DEVELOPER), every) == {
        HOME_BY_ENDUSER,
        HOME_BY_CAROL,
    }
    # One question per domain for a whole listing; the second caller's answers were kept.
    assert owners.asked == [
        ("models", [model_id_for("comfort")]),
        ("instances", ["s00000000001-20261206163000", "s00000000003-20261206163000"]),
        ("apps", [app_id_for("smart-home")]),
    ]
    assert readers.readable(principal("admin", Role.PLATFORM_CONFIGURER), every) == set(every)
    assert len(owners.asked) == 3  # a configurer's reading asks nobody

    # The model changes hands: the kept answer holds until its time is up.
    owners.model_owners[model_id_for("comfort")] = Owned("comfort", "bob")
    clock[0] += 9.9
    assert readers.readable(ada, [COMFORT]) == {COMFORT}
    clock[0] += 0.2
    assert readers.readable(ada, [COMFORT]) == set()
    assert owners.asked[-1] == ("models", [model_id_for("comfort")])

    # Never more than max_entries answers of a kind: the oldest go first.
    readers.readable(ada, [instance_service_id(f"s0000000000{n}-20261206163000") for n in range(5)])
    assert len(readers.instances) == 2
    assert len(readers.models) == len(readers.apps) == 1
