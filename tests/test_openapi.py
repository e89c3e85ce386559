"""The OpenAPI document (``GET /api/openapi.json``) and Schemathesis against it.

* The document is served to anyone and covers every route of the front door's url map with
  its method, path parameters, role rule (``security``, ``x-roles``), the pydantic models the
  route validates with (``body_as``, ``query_as``, ``@shapes``), uploads as zips or multipart,
  and errors in the platform's one shape. (``tests/test_front_door.py`` keeps docs/api.md's route
  table equal to it.)
* Schemathesis loads the served document from a real front door (``site``: waitress, Kafka, the
  device manager's answers, a stand-in deployer with nothing deployed (no replicas to call) and a
  stand-in node manager without nodes) and sends every operation bounded, derandomized examples
  as a platform configurer and anonymously: no answer is a 5xx and every answer fits the document
  (its status's schema, or the error shape).
"""

from __future__ import annotations

import re
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from schemathesis import Case, GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.core.result import Ok
from schemathesis.specs.openapi.checks import response_schema_conformance

from deployer.messages import Deployments, Instances, ListDeployments, ListInstances
from platform_core.auth import access_rule, is_page
from platform_core.nodes import ListNodes, NodesReport, node_manager_topic
from platform_core.openapi import OPENAPI_PATH
from platform_sdk.bus import ConsumerLoop
from platform_sdk.envelope import Envelope
from platform_sdk.errors import NotFound
from platform_sdk.model_client import ModelReplicas, ResolveModel
from platform_sdk.settings import Settings, temporary_settings
from tests.fixtures.sites import Site
from tests.test_front_door import USERS, FrontDoor, front_door, json_of, seed_registry
from web import identity

# Examples per operation and caller: bounded, so the whole run stays near a minute on 2 cores.
CONFIGURER_EXAMPLES = 12
ANONYMOUS_EXAMPLES = 3


@pytest.fixture(scope="module")
def registry_url(tmp_path_factory: pytest.TempPathFactory) -> str:
    url = f"sqlite:///{tmp_path_factory.mktemp('openapi') / 'registry.db'}"
    seed_registry(url, USERS)
    return url


@pytest.fixture
def door(settings: Settings, registry_url: str) -> Iterator[FrontDoor]:
    with front_door(registry_url) as built:
        yield built


def openapi_path(rule: str) -> str:
    """``/api/auth/tokens/<int:token_id>`` as the document writes it: ``/api/auth/tokens/{token_id}``."""
    return re.sub(r"<(?:\w+(?:\([^)]*\))?:)?(\w+)>", r"{\1}", rule)


def test_the_document_is_served_to_anyone_and_covers_every_route_with_its_role_rule(door: FrontDoor) -> None:
    document = json_of(door.client.get(OPENAPI_PATH))
    assert document["openapi"].startswith("3.1")
    paths = document["paths"]
    operations = 0
    for rule in door.app.url_map.iter_rules():
        if is_page(door.app.view_functions[rule.endpoint]):
            continue  # the portal's HTML pages are not the API
        roles = access_rule(door.app.view_functions[rule.endpoint])
        assert roles is not None
        for method in sorted((rule.methods or set()) - {"HEAD", "OPTIONS"}):
            operation = paths[openapi_path(rule.rule)][method.lower()]
            operations += 1
            assert operation["x-roles"] == sorted(role.value for role in roles), (method, rule.rule)
            assert operation["security"] == ([{"bearer": []}] if roles else []), (method, rule.rule)
            assert "default" in operation["responses"]
    assert operations == sum(len(methods) for methods in paths.values())
    assert document["components"]["securitySchemes"]["bearer"]["scheme"] == "bearer"


def test_the_document_holds_the_models_the_routes_validate_with(door: FrontDoor) -> None:
    document = json_of(door.client.get(OPENAPI_PATH))
    paths, schemas = document["paths"], document["components"]["schemas"]

    def body_ref(path: str, method: str) -> str:
        ref: str = paths[path][method]["requestBody"]["content"]["application/json"]["schema"]["$ref"]
        return ref.rpartition("/")[2]

    # body_as(Model), found in the route's code; a helper's model declared with @shapes.
    assert body_ref("/api/users", "post") == "NewUser"
    assert schemas["NewUser"]["required"] == ["username", "password", "role"]
    assert body_ref("/api/devices/bulk", "post") == "DeviceBundle"
    assert body_ref("/api/schedules", "post") == "ScheduleSpec"
    # query_as(Model): one parameter per field, bounds included.
    logs = {parameter["name"]: parameter for parameter in paths["/api/logs"]["get"]["parameters"]}
    assert set(logs) == {"service", "level", "since", "until", "grep", "limit"}
    limit = logs["limit"]["schema"]
    assert [limit[key] for key in ("type", "minimum", "maximum", "default")] == ["integer", 1, 10000, 1000]
    # path parameters from the url map; an <int:...> within 64 bits
    token = paths["/api/auth/tokens/{token_id}"]["delete"]["parameters"][0]
    assert token == {
        "name": "token_id",
        "in": "path",
        "required": True,
        "schema": {"type": "integer", "minimum": 0, "maximum": 2**63 - 1},
    }
    # uploads: a zip as the body or a multipart field
    upload = paths["/api/models"]["post"]
    assert set(upload["requestBody"]["content"]) == {"application/zip", "multipart/form-data"}
    assert "201" in upload["responses"]
    # declared answers; the error shape of every error
    answer = paths["/api/instances/{instance_id}"]["get"]["responses"]["200"]["content"]["application/json"]
    assert answer["schema"] == {"$ref": "#/components/schemas/InstanceInfo"}
    error = paths["/api/users"]["post"]["responses"]["422"]["content"]["application/json"]["schema"]
    assert error == {"$ref": "#/components/schemas/ErrorBody"}
    assert schemas["ErrorInfo"]["required"] == ["type", "status", "message"]
    # who may call it
    assert paths["/api/users"]["get"]["x-roles"] == ["platform_configurer"]
    assert paths["/api/auth/login"]["post"]["security"] == []


# --- Schemathesis on a real front door ------------------------------------------------------------


def nothing_deployed(query: ListInstances | ListDeployments, _envelope: Envelope) -> Instances | Deployments:
    """The deployer's answers on a platform where nothing runs."""
    if isinstance(query, ListInstances):
        return Instances(instances=[])
    return Deployments(deployments=[])


def no_replicas(query: ResolveModel, _envelope: Envelope) -> ModelReplicas:
    """The deployer's answer about a model when nothing is deployed."""
    raise NotFound(f"model {query.model!r} is not deployed")


def no_nodes(_query: ListNodes, _envelope: Envelope) -> NodesReport:
    """The node manager's answer on a platform without nodes."""
    return NodesReport(nodes=[])


@contextmanager
def stand_in_deployer(site: Site) -> Iterator[None]:
    """A deployer with nothing deployed, and a node manager without nodes."""
    loop = ConsumerLoop(site.bus, [site.bus.topics.deployer], group=None, name="stand-in-deployer")
    loop.add_handler(ListInstances, nothing_deployed)
    loop.add_handler(ListDeployments, nothing_deployed)
    loop.add_handler(ResolveModel, no_replicas)
    nodes = ConsumerLoop(
        site.bus, [node_manager_topic(site.bus.topics)], group=None, name="stand-in-node-manager"
    )
    nodes.add_handler(ListNodes, no_nodes)
    loop.start()
    nodes.start()
    try:
        yield
    finally:
        nodes.stop()
        loop.stop()


@pytest.fixture
def quick_state_reads(kafka_settings: Settings) -> Iterator[Settings]:
    """The seeded devices' topics do not exist: waiting for each one's metadata would spend the
    fuzz's time on ``GET /api/devices``; their recorded rows answer at once instead."""
    with temporary_settings({"device.state_read_timeout_s": 0.1, "web.device_list_budget_s": 0.2}) as quick:
        yield quick


def fresh_token(site: Site, username: str) -> str:
    """A new token each call: a fuzzed logout or token deletion revokes only its own."""
    with site.database.session() as session:
        return identity.issue_token(session, identity.read_user(session, username), "fuzz").secret


def fuzz(
    operation: schemathesis.APIOperation[Any, Any, Any, Any],
    examples: int,
    headers: Callable[[], dict[str, str]],
    statuses: Counter[int],
) -> None:
    """``examples`` derandomized cases of ``operation`` (valid and invalid input), each checked."""
    strategy = st.one_of(
        operation.as_strategy(GenerationMode.POSITIVE), operation.as_strategy(GenerationMode.NEGATIVE)
    )

    @settings(
        max_examples=examples,
        derandomize=True,
        database=None,
        deadline=None,
        phases=[Phase.generate],
        suppress_health_check=list(HealthCheck),
    )
    @given(case=strategy)
    def run(case: Case[Any]) -> None:
        response = case.call_and_validate(
            headers=headers(), checks=[not_a_server_error, response_schema_conformance], timeout=30
        )
        statuses[response.status_code] += 1

    run()


@pytest.mark.service("kafka")
@pytest.mark.timeout(300)  # about a minute on 2 idle cores; more when they are shared
def test_schemathesis_finds_no_server_error_and_no_answer_outside_the_document(
    quick_state_reads: Settings, site: Site
) -> None:
    """Every operation of the served document, as a configurer (a fresh token per request) and
    anonymously: valid and invalid input, each answer checked; what failed is listed at the end."""
    started = time.monotonic()
    schema = schemathesis.openapi.from_url(f"{site.url}{OPENAPI_PATH}", config=schemathesis.Config())
    callers: dict[str, tuple[int, Callable[[], dict[str, str]]]] = {
        "a platform configurer": (
            CONFIGURER_EXAMPLES,
            lambda: {"Authorization": f"Bearer {fresh_token(site, 'admin')}"},
        ),
        "an anonymous caller": (ANONYMOUS_EXAMPLES, dict),
    }
    failures: list[str] = []
    operations = 0
    statuses: Counter[int] = Counter()
    with stand_in_deployer(site):
        for result in schema.get_all_operations():
            assert isinstance(result, Ok), f"schemathesis cannot read an operation: {result.err()}"
            operation = result.ok()
            operations += 1
            for caller, (examples, headers) in callers.items():
                try:
                    fuzz(operation, examples, headers, statuses)
                except Exception as exc:
                    failures.append(f"{operation.label} as {caller}: {exc}")
    assert failures == [], "\n\n".join(failures)
    assert operations >= 45
    # Answers of every kind were checked against the document: successes, refusals, unknown ids, bad input.
    assert {200, 201, 401, 404, 422} <= set(statuses), statuses
    print(f"schemathesis: {operations} operations in {time.monotonic() - started:.1f} s: {statuses}")
