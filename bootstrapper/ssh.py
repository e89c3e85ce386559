"""The ``ssh`` provider: hosts that already exist, named in an inventory file.

An inventory is a JSON or TOML file (``aiot bootstrap --provider ssh --config FILE``)::

    main = "a"                          # the host that runs the broker, database, bucket and core
    brokers = ["a", "b", "c"]           # optional: a Kafka cluster, a broker on each (bootstrapper.cluster)
    [[hosts]]
    name = "a"
    address = "10.0.0.11"               # what the other hosts reach it on (SSH too, unless ssh_host)
    port = 22
    user = "root"
    key_file = "~/.ssh/aiot_ed25519"    # relative paths are relative to the inventory file
    spare = false                       # true: left for the node manager's scale-out (bootstrapper.spares)
    [settings]                          # settings every host's platform gets (docs/settings.md)
    blob = { backend = "azure", azure_connection_string = "..." }

It is validated with pydantic: a wrong inventory fails with one error naming the file, the
field (``hosts.1.port``) and the reason. "Creating" a host takes the next one of the
inventory; "destroying" it stops what the platform started there (``bootstrapper.remote``);
the machines themselves are not this provider's to remove.
"""

from __future__ import annotations

import json
import tomllib
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from bootstrapper.providers import Host, Progress, SshAddress
from bootstrapper.remote import Bootstrap, BootstrapRecord, Target
from platform_sdk.errors import NotFound, ValidationFailed
from platform_sdk.settings import Settings

PROVIDER = "ssh"


class InventoryHost(BaseModel):
    """One host of an inventory."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1, max_length=48, pattern=r"^[a-z0-9][a-z0-9-]*$", description="node id")
    address: str = Field(min_length=1, description="address the platform's other hosts reach it on")
    ssh_host: str | None = Field(default=None, description="address SSH reaches it on; default: address")
    port: int = Field(default=22, ge=1, le=65535, description="SSH port")
    user: str = Field(default="root", min_length=1)
    key_file: Path = Field(description="private key accepted by the host")
    python: str = Field(default="python3", min_length=1, description="the host's Python (same minor version)")
    root: str | None = Field(
        default=None, description="install root on the host; default bootstrap.install_root"
    )
    spare: bool = Field(
        default=False,
        description="not started by `aiot bootstrap`: the main host's node manager bootstraps it when "
        "it scales out, and stops it again when it scales in",
    )

    def host(self) -> Host:
        return Host(
            name=self.name,
            ssh=SshAddress(
                host=self.ssh_host or self.address, port=self.port, user=self.user, key_file=self.key_file
            ),
            address=self.address,
            provider=PROVIDER,
        )


class Inventory(BaseModel):
    """An SSH inventory: the hosts, which one is main, and settings for every host."""

    model_config = ConfigDict(extra="forbid")

    main: str | None = Field(default=None, description="name of the main host; default: the first")
    hosts: list[InventoryHost] = Field(min_length=1)
    settings: dict[str, Any] = Field(
        default_factory=dict, description="settings tree every host's platform gets (docs/settings.md)"
    )
    brokers: list[str] = Field(
        default_factory=list,
        description="hosts that each run one Kafka broker (and controller) of one KRaft cluster, every "
        "topic with three replicas: three or more, none a spare; empty: one broker on the main host",
    )

    @model_validator(mode="after")
    def _check(self) -> Inventory:
        names = [host.name for host in self.hosts]
        twice = sorted({name for name in names if names.count(name) > 1})
        if twice:
            raise ValueError(f"host names must be unique: {', '.join(twice)} more than once")
        if self.main is not None and self.main not in names:
            raise ValueError(f"main names {self.main!r}, which is not one of the hosts ({', '.join(names)})")
        if next(host for host in self.hosts if host.name == self.main_host).spare:
            raise ValueError(f"the main host {self.main_host!r} cannot be a spare")
        self._check_brokers(names)
        return self

    def _check_brokers(self, names: list[str]) -> None:
        if not self.brokers:
            return
        unknown = [name for name in self.brokers if name not in names]
        if unknown:
            raise ValueError(f"brokers names {', '.join(unknown)}, not one of the hosts ({', '.join(names)})")
        if len(set(self.brokers)) != len(self.brokers):
            raise ValueError("brokers names a host more than once")
        spares = [host.name for host in self.hosts if host.spare and host.name in self.brokers]
        if spares:
            named = ", ".join(spares)
            raise ValueError(f"brokers names the spare host {named}: a broker runs from the start")
        if len(self.brokers) < 3:
            raise ValueError(
                f"brokers names {len(self.brokers)} hosts: a cluster needs three or more (a majority of its "
                "controllers must run); leave it empty for one broker on the main host"
            )
        if self.settings.get("kafka", {}).get("bootstrap_servers"):
            raise ValueError("brokers and settings.kafka.bootstrap_servers exclude each other: one cluster")

    @property
    def main_host(self) -> str:
        return self.main or self.hosts[0].name


def _location(error: Any) -> str:
    return ".".join(str(part) for part in error["loc"]) or "(top level)"


def load_inventory(path: Path) -> Inventory:
    """Read and validate an inventory; key files are resolved against the file's folder."""
    try:
        text = path.read_text()
    except OSError as exc:
        raise ValidationFailed(f"inventory {path}: cannot be read ({exc.strerror or exc})") from exc
    try:
        data = json.loads(text) if path.suffix == ".json" else tomllib.loads(text)
    except (json.JSONDecodeError, tomllib.TOMLDecodeError) as exc:
        raise ValidationFailed(
            f"inventory {path}: not valid {path.suffix.lstrip('.') or 'TOML'}: {exc}"
        ) from exc
    try:
        inventory = Inventory.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        more = f" (and {exc.error_count() - 1} more)" if exc.error_count() > 1 else ""
        raise ValidationFailed(f"inventory {path}: {_location(first)}: {first['msg']}{more}") from exc
    for host in inventory.hosts:
        key = host.key_file.expanduser()
        host.key_file = key if key.is_absolute() else (path.parent / key).resolve()
        if not host.key_file.is_file():
            index = inventory.hosts.index(host)
            raise ValidationFailed(
                f"inventory {path}: hosts.{index}.key_file: {host.key_file} does not exist"
            )
    return inventory


class SshProvider:
    """Hosts from an inventory file; the ``Provider`` of ``bootstrapper.providers``."""

    name = PROVIDER

    def __init__(
        self, inventory: Inventory, settings: Settings, config: Path, *, provider: str = PROVIDER
    ) -> None:
        # ``provider``: who made the hosts, recorded for `aiot destroy` (azure: bootstrapper.azure).
        self.provider = provider
        self.inventory = inventory
        self.settings = settings
        self.config = config
        self._taken: list[str] = []

    @classmethod
    def from_file(cls, path: Path, settings: Settings) -> SshProvider:
        return cls(load_inventory(path), settings, path.resolve())

    def entry(self, name: str) -> InventoryHost:
        for entry in self.inventory.hosts:
            if entry.name == name:
                return entry
        raise NotFound(f"no host {name!r} in the inventory {self.config}")

    def target(self, name: str) -> Target:
        entry = self.entry(name)
        return Target(
            host=entry.host(),
            python=entry.python,
            root=entry.root or self.settings.bootstrap.install_root,
            main=entry.name == self.inventory.main_host,
        )

    def targets(self) -> list[Target]:
        """Every host, the main one first."""
        return sorted((self.target(entry.name) for entry in self.inventory.hosts), key=lambda t: not t.main)

    def bootstrap(self, progress: Progress) -> BootstrapRecord:
        """Install and start the platform on every host of the inventory but the spares (handed to
        the main host's node manager for scale-out)."""
        return self.bootstrap_with(self.bootstrapper(progress))

    def bootstrap_with(self, runner: Bootstrap) -> BootstrapRecord:
        spares = {entry.name for entry in self.inventory.hosts if entry.spare}
        targets = self.targets()
        return runner.run(
            [target for target in targets if target.host.name not in spares],
            self.provider,
            str(self.config),
            spares=[target for target in targets if target.host.name in spares],
            brokers=self.inventory.brokers,
        )

    def bootstrapper(self, progress: Progress) -> Bootstrap:
        return self._bootstrap(progress)

    def _bootstrap(self, progress: Progress) -> Bootstrap:
        return Bootstrap(self.settings, progress, host_settings=self.inventory.settings)

    # Provider --------------------------------------------------------------------------------------
    def create_hosts(self, count: int, progress: Progress) -> list[Host]:
        """The next ``count`` hosts of the inventory not yet handed out (the main host first)."""
        free = [target.host for target in self.targets() if target.host.name not in self._taken]
        if count > len(free):
            raise NotFound(f"the inventory {self.config} has {len(free)} unused hosts, not {count}")
        chosen = free[:count]
        self._taken += [host.name for host in chosen]
        for host in chosen:
            progress(f"{host.name}: taken from the inventory")
        return chosen

    def list_hosts(self) -> list[Host]:
        return [target.host for target in self.targets()]

    def destroy_host(self, name: str, progress: Progress) -> None:
        """Stop what the platform runs on ``name`` (the machine stays: it is not ours to remove)."""
        self._bootstrap(progress).destroy_hosts([self.target(name)])

    def destroy(self, progress: Progress) -> list[str]:
        """Stop what the platform runs on every host, spares included (the main host first)."""
        return self._bootstrap(progress).destroy_hosts(self.targets())
