"""Who may read which service's logs: the rule ``GET /api/logs`` applies (``docs/security.md``).

* A platform configurer reads every service's logs.
* A model replica's (``<model_id>-v<version>-r<n>``) are for the model's owner.
* An app instance's (``app-<instance_id>``) are for whoever scheduled it and the app's owner.
* Anything else — the platform's services, node agents, simulators, scripts — and a replica or
  instance its domain does not know, is for platform configurers only.

Which service is what comes from the deployer's naming (``deployer.messages``); who owns it from
the owning domains, asked over the bus as the front door asks them for anything else (the logger
reads no other domain's tables):

    replica  ──FindModelOwners──▶ the AI manager (commands.ai-manager)  ──▶ the model's owner
    instance ──ListInstances(instance_ids)──▶ the deployer ──▶ who scheduled it, its app
             ──FindAppOwners──▶ the app manager (commands.app-manager)  ──▶ the app's owner

A caller's role says which owners are asked at all (``OWNS``: only AI developers and configurers
upload models; app developers and configurers apps; end users, app developers and configurers
schedule): an AI developer's read asks the AI manager only, an app developer's or end user's the
deployer and the app manager, a configurer's nobody. Each question asks about every service of a
listing at once. ``LogReaders`` keeps the answers (known or not) for ``ttl_s`` seconds
(``web.log_owners_ttl_s``), at most ``max_entries`` of each kind; the front door app holds one
(``logger.api``), so they live and die with it.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Collection, Iterable
from dataclasses import dataclass
from typing import Generic, Literal, Protocol, TypeVar

from ai_manager.messages import FindModelOwners, ModelOwners, ai_manager_topic
from app_manager.messages import AppOwners, FindAppOwners, app_manager_topic
from deployer.messages import Instances, ListInstances, instance_of_service, model_of_service
from logger.store import LogQuery, LogStore
from platform_core.auth import Principal, Role
from platform_core.http import ask, resources
from platform_sdk.errors import Forbidden
from platform_sdk.messages import LogRecord

OWNERS_MAX_ENTRIES = 4096  # answers kept per kind (models, apps, instances)
CONFIGURERS_ONLY = "its logs are for platform configurers only"
MODEL_READERS = "its logs are for the model's owner and platform configurers"
INSTANCE_READERS = "its logs are for whoever scheduled it, the app's developer and platform configurers"
Kind = Literal["model", "instance"]
# What a role can own or schedule at all (who uploads models and apps, who schedules: docs/api.md);
# its owners are asked about these kinds only.
OWNS: dict[Role, tuple[Kind, ...]] = {
    Role.AI_DEVELOPER: ("model",),
    Role.APP_DEVELOPER: ("instance",),
    Role.END_USER: ("instance",),
}
K = TypeVar("K")
V = TypeVar("V")


@dataclass(frozen=True)
class Owned:
    """A model or an app: its name and its owner."""

    name: str
    owner: str


@dataclass(frozen=True)
class Scheduled:
    """An app instance: who scheduled it, and its app."""

    owner: str
    app_id: str
    app: str


@dataclass(frozen=True)
class Readers:
    """Who, besides platform configurers, reads one service's logs, and what the service is."""

    users: frozenset[str]
    what: str  # the refusal's reason: "it is a platform service; its logs are for …"


class Owners(Protocol):
    """The owning domains' answers, keyed by the id asked about (unknown ids left out)."""

    def models(self, model_ids: list[str]) -> dict[str, Owned]: ...

    def instances(self, instance_ids: list[str]) -> dict[str, Scheduled]: ...

    def apps(self, app_ids: list[str]) -> dict[str, Owned]: ...


class OwnersOnTheBus:
    """Asks the AI manager, the deployer and the app manager (within a front door request)."""

    def models(self, model_ids: list[str]) -> dict[str, Owned]:
        topic = ai_manager_topic(resources().bus_requester().bus.topics)
        reply = ask("the AI manager", topic, FindModelOwners(model_ids=model_ids), ModelOwners)
        return {model.model_id: Owned(model.name, model.owner) for model in reply.models}

    def instances(self, instance_ids: list[str]) -> dict[str, Scheduled]:
        topic = resources().bus_requester().bus.topics.deployer
        reply = ask("the deployer", topic, ListInstances(instance_ids=instance_ids), Instances)
        return {info.instance_id: Scheduled(info.owner, info.app_id, info.app) for info in reply.instances}

    def apps(self, app_ids: list[str]) -> dict[str, Owned]:
        topic = app_manager_topic(resources().bus_requester().bus.topics)
        reply = ask("the app manager", topic, FindAppOwners(app_ids=app_ids), AppOwners)
        return {app.app_id: Owned(app.name, app.owner) for app in reply.apps}


class Answers(Generic[K, V]):
    """Answers kept ``ttl_s`` seconds, at most ``max_entries`` (the oldest go first); thread-safe."""

    def __init__(self, ttl_s: float, max_entries: int, clock: Callable[[], float]) -> None:
        self.ttl_s = ttl_s
        self.max_entries = max_entries
        self._clock = clock
        self._kept: OrderedDict[K, tuple[float, V | None]] = OrderedDict()
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._kept)

    def resolve(self, keys: Collection[K], ask: Callable[[list[K]], dict[K, V]]) -> dict[K, V | None]:
        """Each key's answer (None: unknown to its owner); ``ask`` is called once, for the keys not kept."""
        now = self._clock()
        found: dict[K, V | None] = {}
        with self._lock:
            for key in keys:
                kept = self._kept.get(key)
                if kept is not None and kept[0] > now:
                    found[key] = kept[1]
        missing = [key for key in keys if key not in found]
        if not missing:
            return found
        answered = ask(missing)
        with self._lock:
            for key in missing:
                found[key] = answered.get(key)
                self._kept.pop(key, None)
                self._kept[key] = (now + self.ttl_s, found[key])
            while len(self._kept) > self.max_entries:
                self._kept.popitem(last=False)
        return found


class LogReaders:
    """Applies the rule for the front door; one per app, keeping the owners' answers briefly."""

    def __init__(
        self,
        owners: Owners | None = None,
        *,
        ttl_s: float,
        max_entries: int = OWNERS_MAX_ENTRIES,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.owners: Owners = owners or OwnersOnTheBus()
        self.models: Answers[str, Owned] = Answers(ttl_s, max_entries, clock)
        self.instances: Answers[str, Scheduled] = Answers(ttl_s, max_entries, clock)
        self.apps: Answers[str, Owned] = Answers(ttl_s, max_entries, clock)

    @staticmethod
    def sees_all(principal: Principal) -> bool:
        return principal.role is Role.PLATFORM_CONFIGURER

    def readers(
        self, service_ids: Iterable[str], kinds: Collection[Kind] = ("model", "instance")
    ) -> dict[str, Readers]:
        """Who reads each service's logs; one question per domain at most, for all of them.

        Only the owners of ``kinds`` are asked; the other replicas and instances get no readers.
        """
        wanted = set(service_ids)
        model_of = {service: model for service in wanted if (model := model_of_service(service))}
        instance_of = {service: inst for service in wanted if (inst := instance_of_service(service))}
        platform = Readers(frozenset(), f"it is a platform service; {CONFIGURERS_ONLY}")
        found = dict.fromkeys(wanted, platform)
        if "model" in kinds:
            found |= self._of_models(model_of)
        else:
            found |= _read_by_nobody(model_of, "it is a replica of model {}; " + MODEL_READERS)
        if "instance" in kinds:
            found |= self._of_instances(instance_of)
        else:
            found |= _read_by_nobody(instance_of, "it is app instance {!r}; " + INSTANCE_READERS)
        return found

    def _of_models(self, model_of: dict[str, str]) -> dict[str, Readers]:
        models = self.models.resolve(set(model_of.values()), self.owners.models)
        return {service: _model_readers(model_id, models[model_id]) for service, model_id in model_of.items()}

    def _of_instances(self, instance_of: dict[str, str]) -> dict[str, Readers]:
        instances = self.instances.resolve(set(instance_of.values()), self.owners.instances)
        app_ids = {found.app_id for found in instances.values() if found is not None}
        apps = self.apps.resolve(app_ids, self.owners.apps)
        found: dict[str, Readers] = {}
        for service, instance_id in instance_of.items():
            scheduled = instances[instance_id]
            app = apps[scheduled.app_id] if scheduled is not None else None
            found[service] = _instance_readers(instance_id, scheduled, app)
        return found

    def readable(self, principal: Principal, service_ids: Iterable[str]) -> set[str]:
        """The services among ``service_ids`` whose logs ``principal`` may read."""
        if self.sees_all(principal):
            return set(service_ids)
        found = self.readers(service_ids, OWNS.get(principal.role, ()))
        return {service for service, readers in found.items() if principal.username in readers.users}

    def check(self, principal: Principal, service_id: str) -> None:
        """``Forbidden`` naming the service and why, unless ``principal`` may read its logs."""
        if self.sees_all(principal):
            return
        readers = self.readers([service_id], OWNS.get(principal.role, ()))[service_id]
        if principal.username not in readers.users:
            raise Forbidden(
                f"you ({principal.username}, {principal.role}) may not read the logs of service "
                f"{service_id!r}: {readers.what}",
                details={"service": service_id},
            )

    def query(self, store: LogStore, query: LogQuery, principal: Principal) -> list[LogRecord]:
        """The records ``query`` asks for that ``principal`` may read: ``Forbidden`` for one service
        they may not; a query across services leaves out the services they may not read."""
        if self.sees_all(principal):
            return store.query(query)
        if query.service is not None:
            self.check(principal, query.service)
            services = {query.service}
        else:
            services = self.readable(principal, store.services())
        found = [
            record
            for service in sorted(services)
            for record in store.query(query.model_copy(update={"service": service}))
        ]
        # A folder may hold a record naming another service (its id has characters a folder
        # name cannot): that service's readers decide.
        allowed = self.readable(principal, {record.service_id for record in found})
        found = [record for record in found if record.service_id in allowed]
        found.sort(key=lambda record: record.time)
        return found[-query.limit :]

    def services(self, store: LogStore, principal: Principal) -> list[str]:
        """The services with collected logs that ``principal`` may read."""
        return sorted(self.readable(principal, store.services()))


def _read_by_nobody(subjects: dict[str, str], what: str) -> dict[str, Readers]:
    """Services whose owners were not asked (the caller's role owns none): ``what`` with each id."""
    return {service: Readers(frozenset(), what.format(subject)) for service, subject in subjects.items()}


def _model_readers(model_id: str, model: Owned | None) -> Readers:
    if model is None:
        reason = (
            f"it is a replica of model {model_id}, which the AI manager does not know; {CONFIGURERS_ONLY}"
        )
        return Readers(frozenset(), reason)
    return Readers(frozenset({model.owner}), f"it is a replica of model {model.name!r}; {MODEL_READERS}")


def _instance_readers(instance_id: str, scheduled: Scheduled | None, app: Owned | None) -> Readers:
    if scheduled is None:
        reason = f"it is app instance {instance_id!r}, which the deployer does not know; {CONFIGURERS_ONLY}"
        return Readers(frozenset(), reason)
    users = {scheduled.owner} | ({app.owner} if app is not None else set())
    reason = f"it is app instance {instance_id!r} of app {scheduled.app!r}; {INSTANCE_READERS}"
    return Readers(frozenset(users), reason)
