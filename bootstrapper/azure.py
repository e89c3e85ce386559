"""The azure provider: Linux VMs made through Azure Resource Manager with the real SDK.

``aiot bootstrap --provider azure --config azure.toml`` reads an ``AzureConfig``
(``load_azure_config``), has an ``AzureProvider`` make the hosts that are missing, and hands them
to the SSH bootstrap as an inventory (``ssh_platform``: the public IP for SSH as the admin user,
through sudo; the private IP between hosts). ``aiot destroy`` stops the platform on them, then
removes what the provider made. The provider makes, in
a resource group (its own unless the config names an existing one):

- a network security group (SSH and ``public_ports`` from ``admin_cidr``; the platform's ports
  between its hosts; anything else from the rest of the virtual network denied) and a virtual
  network with one subnet, ``hosts``, behind it;
- per host: a static public IP, a NIC, and a Linux VM from a documented image with the admin
  user's SSH key (password login disabled) and an OS disk of its own.

Everything carries the tags ``aiot-platform=<platform>`` (and a host's parts ``aiot-host=<host>``),
so ``list_hosts`` finds exactly what it made and ``destroy`` removes exactly that: VMs, then their
disks and NICs, then the public IPs, the virtual network, the security group, and last the
resource group when it made it and nothing else is left in it. A ``create_hosts`` that fails
removes what it had made before it raises, and names it.

Every long-running operation goes through the SDK's pollers (``Azure-AsyncOperation`` and
``Location`` polling), with a progress line per host and step; the waits come from the settings
(``azure.*``). The tests drive these very clients with their HTTP transport replaced by recorded
ARM responses (``tests/fixtures/arm/``); no live subscription was used to write this.
"""

from __future__ import annotations

import ipaddress
import os
import time
import tomllib
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from bootstrapper.providers import Host, Progress, SshAddress
from platform_sdk.errors import PlatformError, ValidationFailed
from platform_sdk.settings import AzureSettings, Settings, get_settings

if TYPE_CHECKING:
    from azure.core.credentials import TokenCredential
    from azure.core.polling import LROPoller
    from azure.identity import ClientSecretCredential, DefaultAzureCredential
    from azure.mgmt.compute import ComputeManagementClient
    from azure.mgmt.network import NetworkManagementClient
    from azure.mgmt.resource.resources import ResourceManagementClient

    from bootstrapper.ssh import SshProvider

TAG_PLATFORM = "aiot-platform"
TAG_HOST = "aiot-host"
TAG_MADE_BY = "aiot-made-by"
MADE_BY = "aiot bootstrap"
SUBNET = "hosts"
# Azure refuses these admin user names for Linux VMs (and "root" would defeat the key's user).
_RESERVED_USERS = frozenset(
    {"administrator", "admin", "user", "user1", "test", "user2", "test1", "user3", "admin1", "1", "123",
     "a", "actuser", "adm", "admin2", "aspnet", "backup", "console", "david", "guest", "john", "owner",
     "root", "server", "sql", "support", "support_388945a0", "sys", "test2", "test3", "user4", "user5"}
)  # fmt: skip
_QUOTA_CODES = frozenset(
    {"QuotaExceeded", "OperationNotAllowed", "ResourceQuotaExceeded", "SkuQuotaExceeded"}
)
_CAPACITY_CODES = frozenset({"AllocationFailed", "ZonalAllocationFailed", "OverconstrainedAllocationRequest"})


# --- the config file ------------------------------------------------------------------------------


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class AzureImage(_Strict):
    """The VM image (a marketplace image reference). Default: Canonical Ubuntu 22.04 LTS, gen2."""

    publisher: str = Field(default="Canonical", min_length=1)
    offer: str = Field(default="0001-com-ubuntu-server-jammy", min_length=1)
    sku: str = Field(default="22_04-lts-gen2", min_length=1)
    version: str = Field(default="latest", min_length=1)


class AzureNetwork(_Strict):
    """The platform's network: one virtual network, one subnet, one security group."""

    admin_cidr: ipaddress.IPv4Network = Field(
        description="Where SSH (and public_ports) may come from: your own address, e.g. 203.0.113.7/32"
    )
    vnet_cidr: ipaddress.IPv4Network = Field(default=ipaddress.IPv4Network("10.42.0.0/16"))
    subnet_cidr: ipaddress.IPv4Network = Field(default=ipaddress.IPv4Network("10.42.1.0/24"))
    platform_ports: list[str] = Field(
        default_factory=lambda: ["*"],
        min_length=1,
        description="TCP/UDP ports the hosts may reach on each other (agents pick free ports: all)",
    )
    public_ports: list[str] = Field(
        default_factory=list, description="Ports also opened to admin_cidr, e.g. the front door's"
    )

    @field_validator("platform_ports", "public_ports")
    @classmethod
    def _ports(cls, ports: list[str]) -> list[str]:
        if "*" in ports and len(ports) > 1:
            raise ValueError("* (every port) stands alone")
        for port in ports:
            if port == "*":
                continue
            first, _, last = port.partition("-")
            if not (first.isdigit() and (not last or last.isdigit())):
                raise ValueError(f"{port!r} is not a port, a range FIRST-LAST or *")
            low, high = int(first), int(last or first)
            if not 1 <= low <= high <= 65535:
                raise ValueError(f"{port!r} is not within 1-65535 (first ≤ last)")
        return ports

    @model_validator(mode="after")
    def _subnet_inside(self) -> AzureNetwork:
        if not self.subnet_cidr.subnet_of(self.vnet_cidr):
            raise ValueError(f"subnet_cidr {self.subnet_cidr} is not inside vnet_cidr {self.vnet_cidr}")
        return self


class AzureCredentialConfig(_Strict):
    """Which credential signs in. The secret itself is never in the file: it is read from
    ``client_secret_env``."""

    kind: Literal["default", "client_secret"] = Field(
        default="default",
        description="default: DefaultAzureCredential (environment, workload or managed identity, "
        "`az login`); client_secret: a service principal (tenant_id, client_id, secret from env)",
    )
    tenant_id: str | None = None
    client_id: str | None = None
    client_secret_env: str = Field(default="AZURE_CLIENT_SECRET", min_length=1)

    @model_validator(mode="after")
    def _principal_named(self) -> AzureCredentialConfig:
        if self.kind == "client_secret" and not (self.tenant_id and self.client_id):
            raise ValueError("kind client_secret needs tenant_id and client_id")
        return self


class AzureConfig(_Strict):
    """One platform's Azure hosts: the file ``aiot bootstrap --provider azure --config`` reads."""

    platform: str = Field(
        pattern=r"^[a-z][a-z0-9-]{0,30}[a-z0-9]$",
        description="the platform's name: its tag (aiot-platform) and the prefix of every name",
    )
    subscription_id: str = Field(pattern=r"^[0-9a-fA-F]{8}-([0-9a-fA-F]{4}-){3}[0-9a-fA-F]{12}$")
    location: str = Field(pattern=r"^[a-z0-9]+$", description="Azure region, e.g. westeurope")
    resource_group: str | None = Field(
        default=None,
        pattern=r"^[-\w.()]{1,89}[-\w()]$",
        description="empty: aiot-<platform>, made (and removed) by the provider",
    )
    hosts: int = Field(default=2, ge=1, le=50, description="how many VMs `aiot bootstrap` wants in all")
    vm_size: str = Field(default="Standard_B2s", min_length=1)
    os_disk_gb: int = Field(default=30, ge=30, le=4095)
    image: AzureImage = Field(default_factory=AzureImage)
    admin_user: str = Field(default="aiot", pattern=r"^[a-z_][a-z0-9_-]{0,31}$")
    ssh_public_key_file: Path
    ssh_private_key_file: Path
    network: AzureNetwork
    credential: AzureCredentialConfig = Field(default_factory=AzureCredentialConfig)
    python: str = Field(
        default="python3", min_length=1, description="the image's Python (this machine's minor version)"
    )
    settings: dict[str, Any] = Field(
        default_factory=dict,
        description="settings tree every host's platform gets (docs/settings.md); several hosts "
        'need a bucket they all reach: blob.backend = "azure" with a storage account',
    )

    @field_validator("admin_user")
    @classmethod
    def _allowed_user(cls, user: str) -> str:
        if user in _RESERVED_USERS:
            raise ValueError(f"Azure refuses {user!r} as a Linux admin user name")
        return user

    @property
    def group(self) -> str:
        """The resource group's name."""
        return self.resource_group or f"aiot-{self.platform}"

    def public_key(self) -> str:
        return self.ssh_public_key_file.read_text().strip()


def load_azure_config(path: Path) -> AzureConfig:
    """The config in TOML file ``path``; ``ValidationFailed`` names the file, field and reason.

    Key file paths are relative to the file's folder; both must exist and the public one must be
    an OpenSSH RSA or ed25519 public key.
    """
    try:
        document = tomllib.loads(path.read_text())
    except FileNotFoundError as exc:
        raise _config_failure(path, [(None, "does not exist")]) from exc
    except (OSError, UnicodeDecodeError) as exc:
        raise _config_failure(path, [(None, f"cannot be read ({exc})")]) from exc
    except tomllib.TOMLDecodeError as exc:
        raise _config_failure(path, [(None, f"is not valid TOML ({exc})")]) from exc
    try:
        config = AzureConfig.model_validate(document)
    except ValidationError as exc:
        problems: list[tuple[str | None, str]] = [
            (".".join(str(part) for part in error["loc"]) or None, error["msg"])
            for error in exc.errors(include_url=False, include_input=False)
        ]
        raise _config_failure(path, problems) from exc
    base = path.resolve().parent
    config = config.model_copy(
        update={
            "ssh_public_key_file": base / config.ssh_public_key_file.expanduser(),
            "ssh_private_key_file": base / config.ssh_private_key_file.expanduser(),
        }
    )
    problems = []
    for field in ("ssh_public_key_file", "ssh_private_key_file"):
        if not getattr(config, field).is_file():
            problems.append((field, f"{getattr(config, field)} does not exist"))
    if not problems and not config.public_key().startswith(("ssh-rsa ", "ssh-ed25519 ")):
        problems.append(("ssh_public_key_file", "is not an OpenSSH ssh-rsa or ssh-ed25519 public key"))
    if problems:
        raise _config_failure(path, problems)
    return config


def _config_failure(path: Path, problems: list[tuple[str | None, str]]) -> ValidationFailed:
    field, reason = problems[0]
    more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
    return ValidationFailed(
        f"{path}{f' field {field}' if field else ''}: {reason}{more}",
        details=[{"file": str(path), "field": field, "reason": reason} for field, reason in problems],
    )


# --- errors ---------------------------------------------------------------------------------------


class AzureProviderError(PlatformError):
    """What Azure refused or what timed out, said so that someone can act on it.

    ``removed``: what the failed call removed again; ``left``: what it could not remove.
    """

    status = 502

    def __init__(self, message: str, *, removed: list[str] | None = None, left: list[str] | None = None):
        super().__init__(message, details={"removed": removed or [], "left": left or []})
        self.removed = removed or []
        self.left = left or []


def credential_description(config: AzureCredentialConfig) -> str:
    if config.kind == "client_secret":
        return (
            f"ClientSecretCredential (tenant {config.tenant_id}, client {config.client_id}, "
            f"secret from ${config.client_secret_env})"
        )
    return (
        "DefaultAzureCredential (environment variables AZURE_CLIENT_ID/AZURE_TENANT_ID/"
        "AZURE_CLIENT_SECRET, workload identity, managed identity, Azure CLI `az login`, "
        "Azure PowerShell, Azure Developer CLI)"
    )


def make_credential(config: AzureCredentialConfig) -> DefaultAzureCredential | ClientSecretCredential:
    """The credential the config names (nothing is asked of Azure until a token is needed)."""
    if config.kind == "client_secret":
        from azure.identity import ClientSecretCredential

        secret = os.environ.get(config.client_secret_env)
        if not secret:
            raise AzureProviderError(
                f"credential kind client_secret: the environment variable {config.client_secret_env} "
                "holding the service principal's secret is not set"
            )
        return ClientSecretCredential(config.tenant_id or "", config.client_id or "", secret)
    from azure.identity import DefaultAzureCredential

    return DefaultAzureCredential(exclude_interactive_browser_credential=True)


def explain(exc: Exception, config: AzureConfig, credential: str) -> str:
    """One paragraph about an Azure failure: what happened, and what to do about it."""
    from azure.core.exceptions import ClientAuthenticationError, HttpResponseError

    if isinstance(exc, AzureProviderError):
        return exc.message
    if isinstance(exc, ClientAuthenticationError):
        return (
            # DefaultAzureCredential's message lists every credential it tried and why each failed.
            f"Azure did not accept the credential tried, {credential}: {str(exc).strip()}. "
            "Sign in with `az login`, or set the service principal's variables, or name one in the "
            "config's [credential] table"
        )
    if isinstance(exc, HttpResponseError):
        code = exc.error.code if exc.error is not None and exc.error.code else ""
        message = exc.error.message if exc.error is not None and exc.error.message else _first_line(exc)
        if code in _QUOTA_CODES or "quota" in message.lower():
            return (
                f"Azure quota exceeded ({code or exc.status_code}) for {config.vm_size} in "
                f"{config.location}: {message} — pick a smaller vm_size or fewer hosts, another "
                "location, or request more quota for that VM family (Azure portal: Subscriptions → "
                "Usage + quotas)"
            )
        if code == "SkuNotAvailable":
            return (
                f"Azure does not offer {config.vm_size} in {config.location} to this subscription "
                f"({code}): {message} — pick another vm_size or location "
                f"(`az vm list-skus --location {config.location} --output table`)"
            )
        if code in _CAPACITY_CODES:
            return (
                f"Azure has no capacity for {config.vm_size} in {config.location} now ({code}): "
                f"{message} — try again later, or another vm_size or location"
            )
        if exc.status_code == 403:
            return (
                f"the credential ({credential}) may not do this ({code or 403}): {message} — give it "
                f"the Contributor role on subscription {config.subscription_id} or resource group "
                f"{config.group}"
            )
        return f"Azure answered {exc.status_code} {code}: {message}".replace("  ", " ")
    return f"{type(exc).__name__}: {exc}"


def _first_line(exc: Exception) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


# --- the provider ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Made:
    """One resource a call made: its kind (see ``_KINDS``), its host (or None) and its name."""

    kind: str
    name: str
    host: str | None = None

    def __str__(self) -> str:
        return f"{_KINDS[self.kind]} {self.name}"


# Kinds in the order they are removed (what uses another goes first).
_KINDS = {
    "vm": "virtual machine",
    "disk": "disk",
    "nic": "network interface",
    "ip": "public IP",
    "vnet": "virtual network",
    "nsg": "network security group",
    "group": "resource group",
}


class _StepFailed(Exception):
    def __init__(self, host: str, step: str, error: Exception) -> None:
        super().__init__(f"{host}: {step}")
        self.host, self.step, self.error = host, step, error


@dataclass
class _Clients:
    resources: ResourceManagementClient
    network: NetworkManagementClient
    compute: ComputeManagementClient

    def close(self) -> None:
        self.resources.close()
        self.network.close()
        self.compute.close()


class AzureProvider:
    """Linux VMs in Azure for one platform (see the module's docstring).

    ``credential``: a TokenCredential to use instead of the config's; ``client_options``: keyword
    arguments for the SDK's clients on top of the settings' (the tests pass ``transport``).
    Use it as a context manager, or call ``close()``, to close the clients' connections.
    """

    name = "azure"

    def __init__(
        self,
        config: AzureConfig,
        *,
        settings: AzureSettings | None = None,
        credential: TokenCredential | None = None,
        client_options: Mapping[str, Any] | None = None,
    ) -> None:
        self.config = config
        self._settings = settings or get_settings().azure
        self._credential = credential
        self._credential_name = (
            f"{type(credential).__name__} (given)"
            if credential is not None
            else credential_description(config.credential)
        )
        self._client_options = dict(client_options or {})
        self._made_clients: _Clients | None = None
        self._made_credential: DefaultAzureCredential | ClientSecretCredential | None = None

    def __enter__(self) -> AzureProvider:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        """Close the clients' connections (and the credential the provider made itself)."""
        if self._made_clients is not None:
            self._made_clients.close()
            self._made_clients = None
        if self._made_credential is not None:
            self._made_credential.close()
            self._made_credential = None

    def ensure_hosts(self, progress: Progress) -> list[Host]:
        """Every host of the platform, ``config.hosts`` of them: only the missing ones are made
        (a second run makes nothing)."""
        hosts = self.list_hosts()
        missing = self.config.hosts - len(hosts)
        if missing <= 0:
            progress(f"{self.config.group}: {len(hosts)} hosts of platform {self.config.platform} exist")
            return hosts
        return hosts + self.create_hosts(missing, progress)

    # -- the Provider protocol -----------------------------------------------------------------

    def create_hosts(self, count: int, progress: Progress) -> list[Host]:
        if count < 1:
            raise ValueError(f"count must be at least 1, not {count}")
        taken = {host.name for host in self.list_hosts()}
        names = self._next_names(taken, count)
        made: list[_Made] = []
        try:
            self._ensure_group(progress, made)
            subnet_id = self._ensure_network(progress, made)
            ips = self._step(
                names, "public IP", self._begin_ip, progress,
                made=made, made_of=lambda h: [_Made("ip", f"{h}-ip", h)],
            )  # fmt: skip
            nics = self._step(
                names, "network interface", lambda h: self._begin_nic(h, subnet_id, _id(ips[h])), progress,
                made=made, made_of=lambda h: [_Made("nic", f"{h}-nic", h)],
            )  # fmt: skip
            self._step(
                names, "virtual machine", lambda h: self._begin_vm(h, _id(nics[h])), progress,
                made=made, made_of=lambda h: [_Made("vm", h, h), _Made("disk", f"{h}-osdisk", h)],
            )  # fmt: skip
        except Exception as exc:
            failed = exc if isinstance(exc, _StepFailed) else None
            error = failed.error if failed else exc
            removed, left = self._roll_back(made, progress)
            if not _is_azure_error(error):
                error.add_note(_summary(removed, left).strip())
                raise error from None
            what = f"{failed.host}: {failed.step}: " if failed else ""
            message = f"{what}{explain(error, self.config, self._credential_name)}"
            raise AzureProviderError(
                message + _summary(removed, left), removed=[str(m) for m in removed], left=left
            ) from error
        hosts = [self._host(name, nics[name], ips[name]) for name in names]
        for host in hosts:
            progress(
                f"{host.name}: ready: ssh {host.ssh.user}@{host.ssh.host}, platform address {host.address}"
            )
        return hosts

    def list_hosts(self) -> list[Host]:
        from azure.core.exceptions import ResourceNotFoundError

        clients = self._clients()
        group = self.config.group
        with self._explained():
            try:
                vms = [vm for vm in clients.compute.virtual_machines.list(group) if self._ours(vm.tags)]
            except ResourceNotFoundError:
                return []
            if not vms:
                return []
            nics = {_key(nic.id): nic for nic in clients.network.network_interfaces.list(group)}
            ips = {_key(ip.id): ip for ip in clients.network.public_ip_addresses.list(group)}
        hosts = []
        for vm in vms:
            nic_refs = _nic_refs(vm)
            nic = nics.get(_key(nic_refs[0].id)) if nic_refs else None
            if nic is None:
                raise AzureProviderError(
                    f"host {vm.name}: its network interface is gone (resource group {group})"
                )
            ip = ips.get(_key(_public_ip_id(nic)))
            if ip is None:
                raise AzureProviderError(f"host {vm.name}: its public IP is gone (resource group {group})")
            hosts.append(self._host(str(vm.name), nic, ip))
        return sorted(hosts, key=lambda host: _index(host.name, self.config.platform))

    def destroy_host(self, name: str, progress: Progress) -> None:
        from azure.core.exceptions import ResourceNotFoundError

        clients = self._clients()
        with self._explained():
            try:
                vm = clients.compute.virtual_machines.get(self.config.group, name)
            except ResourceNotFoundError:
                vm = None
            if vm is None or not self._ours(vm.tags):
                raise AzureProviderError(
                    f"no host {name} of platform {self.config.platform} in resource group {self.config.group}"
                )
            nic_ids = [_key(ref.id) for ref in _nic_refs(vm)]
            nics = [nic for nic in clients.network.network_interfaces.list(self.config.group)
                    if _key(nic.id) in nic_ids]  # fmt: skip
            targets = [_Made("vm", name, name), _Made("disk", _os_disk(vm) or f"{name}-osdisk", name)]
            targets += [_Made("nic", str(nic.name), name) for nic in nics]
            targets += [_Made("ip", _name_of(_public_ip_id(nic)), name) for nic in nics if _public_ip_id(nic)]
            self._remove(targets, progress)

    def destroy(self, progress: Progress) -> list[str]:
        from azure.core.exceptions import ResourceNotFoundError

        clients = self._clients()
        group = self.config.group
        with self._explained():
            try:
                resource_group = clients.resources.resource_groups.get(group)
            except ResourceNotFoundError:
                progress(f"{group}: resource group: not found, nothing to remove")
                return []
            vms = [vm for vm in clients.compute.virtual_machines.list(group) if self._ours(vm.tags)]
            targets = [_Made("vm", str(vm.name), vm.name) for vm in vms]
            targets += [_Made("disk", _os_disk(vm) or f"{vm.name}-osdisk", vm.name) for vm in vms]
            network = clients.network
            nics = [r for r in network.network_interfaces.list(group) if self._ours(r.tags)]
            ips = [r for r in network.public_ip_addresses.list(group) if self._ours(r.tags)]
            targets += [_Made("nic", str(r.name), _host_tag(r.tags)) for r in nics]
            targets += [_Made("ip", str(r.name), _host_tag(r.tags)) for r in ips]
            targets += [
                _Made("vnet", str(r.name)) for r in network.virtual_networks.list(group) if self._ours(r.tags)
            ]
            targets += [_Made("nsg", str(r.name)) for r in network.network_security_groups.list(group)
                        if self._ours(r.tags)]  # fmt: skip
            removed = self._remove(targets, progress)
            if self._ours(resource_group.tags):
                # ARM's listing can still show what was just deleted for a while: not counted.
                gone = {made.name.lower() for made in removed}
                others = [
                    f"{r.type} {r.name}"
                    for r in clients.resources.resources.list_by_resource_group(group)
                    if str(r.name).lower() not in gone
                ]
                if others:
                    progress(
                        f"{group}: resource group: kept, it holds what aiot did not make: {', '.join(others)}"
                    )
                else:
                    removed += self._remove([_Made("group", group)], progress)
            else:
                progress(f"{group}: resource group: kept (aiot did not make it)")
        return [str(made) for made in removed]

    # -- steps ---------------------------------------------------------------------------------

    def _ensure_group(self, progress: Progress, made: list[_Made]) -> None:
        from azure.core.exceptions import ResourceNotFoundError

        resources = self._clients().resources
        group = self.config.group
        try:
            existing = resources.resource_groups.get(group)
        except ResourceNotFoundError:
            progress(f"{group}: resource group: creating in {self.config.location}")
            resources.resource_groups.create_or_update(
                group, {"location": self.config.location, "tags": self._tags()}
            )
            made.append(_Made("group", group))
            progress(f"{group}: resource group: created")
            return
        whose = "made by aiot" if self._ours(existing.tags) else "not made by aiot: kept by destroy"
        progress(f"{group}: resource group: exists ({whose})")

    def _ensure_network(self, progress: Progress, made: list[_Made]) -> str:
        """The subnet's id, the security group and virtual network made first where missing."""
        from azure.core.exceptions import ResourceNotFoundError
        from azure.mgmt.network import models as network_models

        network = self._clients().network
        group, prefix = self.config.group, self.config.platform
        nsg_name, vnet_name = f"{prefix}-nsg", f"{prefix}-vnet"
        try:
            nsg = network.network_security_groups.get(group, nsg_name)
            self._check_ours(nsg.tags, "network security group", nsg_name)
            progress(f"{nsg_name}: network security group: exists")
        except ResourceNotFoundError:
            nsg = self._step(
                [nsg_name], "network security group",
                lambda name: network.network_security_groups.begin_create_or_update(
                    group, name, network_models.NetworkSecurityGroup(self._nsg_body())
                ),
                progress, made=made, made_of=lambda name: [_Made("nsg", name)],
            )[nsg_name]  # fmt: skip
        try:
            vnet = network.virtual_networks.get(group, vnet_name)
            self._check_ours(vnet.tags, "virtual network", vnet_name)
            progress(f"{vnet_name}: virtual network: exists")
        except ResourceNotFoundError:
            body = network_models.VirtualNetwork(self._vnet_body(_id(nsg)))
            vnet = self._step(
                [vnet_name], "virtual network",
                lambda name: network.virtual_networks.begin_create_or_update(group, name, body),
                progress, made=made, made_of=lambda name: [_Made("vnet", name)],
            )[vnet_name]  # fmt: skip
        subnets = (vnet.properties.subnets or []) if vnet.properties else []
        for subnet in subnets:
            if subnet.name == SUBNET and subnet.id:
                return subnet.id
        raise AzureProviderError(
            f"virtual network {vnet_name} has no subnet {SUBNET!r}: remove it or add one"
        )

    def _begin_ip(self, host: str) -> LROPoller[Any]:
        from azure.mgmt.network import models as network_models

        body: dict[str, Any] = {
            "location": self.config.location,
            "tags": self._tags(host),
            "sku": {"name": "Standard", "tier": "Regional"},
            "properties": {"publicIPAllocationMethod": "Static", "publicIPAddressVersion": "IPv4"},
        }
        return self._clients().network.public_ip_addresses.begin_create_or_update(
            self.config.group, f"{host}-ip", network_models.PublicIPAddress(body)
        )

    def _begin_nic(self, host: str, subnet_id: str, ip_id: str) -> LROPoller[Any]:
        from azure.mgmt.network import models as network_models

        body: dict[str, Any] = {
            "location": self.config.location,
            "tags": self._tags(host),
            "properties": {
                "ipConfigurations": [
                    {
                        "name": "primary",
                        "properties": {
                            "primary": True,
                            "privateIPAllocationMethod": "Dynamic",
                            "subnet": {"id": subnet_id},
                            "publicIPAddress": {"id": ip_id},
                        },
                    }
                ]
            },
        }
        return self._clients().network.network_interfaces.begin_create_or_update(
            self.config.group, f"{host}-nic", network_models.NetworkInterface(body)
        )

    def _begin_vm(self, host: str, nic_id: str) -> LROPoller[Any]:
        from azure.mgmt.compute import models as compute_models

        config = self.config
        image = config.image
        body: dict[str, Any] = {
            "location": config.location,
            "tags": self._tags(host),
            "properties": {
                "hardwareProfile": {"vmSize": config.vm_size},
                "storageProfile": {
                    "imageReference": {
                        "publisher": image.publisher,
                        "offer": image.offer,
                        "sku": image.sku,
                        "version": image.version,
                    },
                    "osDisk": {
                        "name": f"{host}-osdisk",
                        "createOption": "FromImage",
                        "diskSizeGB": config.os_disk_gb,
                        "managedDisk": {"storageAccountType": "StandardSSD_LRS"},
                        "deleteOption": "Delete",
                    },
                },
                "osProfile": {
                    "computerName": host,
                    "adminUsername": config.admin_user,
                    "linuxConfiguration": {
                        "disablePasswordAuthentication": True,
                        "ssh": {
                            "publicKeys": [
                                {
                                    "path": f"/home/{config.admin_user}/.ssh/authorized_keys",
                                    "keyData": config.public_key(),
                                }
                            ]
                        },
                    },
                },
                "networkProfile": {"networkInterfaces": [{"id": nic_id, "properties": {"primary": True}}]},
            },
        }
        return self._clients().compute.virtual_machines.begin_create_or_update(
            config.group, host, compute_models.VirtualMachine(body)
        )

    def _nsg_body(self) -> dict[str, Any]:
        network = self.config.network
        rules: list[dict[str, Any]] = [
            _rule("aiot-ssh-from-admin", 100, "Allow", "Tcp", str(network.admin_cidr), "*", ["22"]),
        ]
        if network.public_ports:
            rules.append(
                _rule(
                    "aiot-public-from-admin",
                    110,
                    "Allow",
                    "Tcp",
                    str(network.admin_cidr),
                    "*",
                    network.public_ports,
                )
            )
        subnet = str(network.subnet_cidr)
        rules += [
            _rule("aiot-platform-between-hosts", 200, "Allow", "*", subnet, subnet, network.platform_ports),
            _rule("aiot-deny-rest-of-vnet", 4000, "Deny", "*", "VirtualNetwork", "*", ["*"]),
        ]
        return {
            "location": self.config.location,
            "tags": self._tags(),
            "properties": {"securityRules": rules},
        }

    def _vnet_body(self, nsg_id: str) -> dict[str, Any]:
        network = self.config.network
        return {
            "location": self.config.location,
            "tags": self._tags(),
            "properties": {
                "addressSpace": {"addressPrefixes": [str(network.vnet_cidr)]},
                "subnets": [
                    {
                        "name": SUBNET,
                        "properties": {
                            "addressPrefix": str(network.subnet_cidr),
                            "networkSecurityGroup": {"id": nsg_id},
                        },
                    }
                ],
            },
        }

    def _step(
        self,
        keys: list[str],
        step: str,
        begin: Callable[[str], LROPoller[Any]],
        progress: Progress,
        *,
        made: list[_Made] | None = None,
        made_of: Callable[[str], list[_Made]] | None = None,
    ) -> dict[str, Any]:
        """One step for every host (or resource) at once: start each operation, then wait for all.

        Whatever Azure accepted goes into ``made`` (``made_of`` says what it is; an operation that
        fails later can still leave a resource behind); the first failure is raised once every
        started operation has ended.
        """
        failure: _StepFailed | None = None
        pollers: dict[str, LROPoller[Any]] = {}
        for key in keys:
            what = made_of(key) if made_of is not None else []
            progress(f"{key}: {step}: started" + (f" ({', '.join(m.name for m in what)})" if what else ""))
            try:
                pollers[key] = begin(key)
            except Exception as exc:
                failure = _StepFailed(key, step, exc)
                break
            if made is not None:
                made.extend(what)
        results: dict[str, Any] = {}
        for key, poller in pollers.items():
            try:
                results[key] = self._wait(poller, key, step, progress)
            except Exception as exc:
                failure = failure or _StepFailed(key, step, exc)
        if failure is not None:
            raise failure
        return results

    def _wait(self, poller: LROPoller[Any], host: str, step: str, progress: Progress) -> Any:
        """The operation's result, with a progress line every ``progress_every_s``."""
        started = time.monotonic()
        deadline = started + self._settings.operation_timeout_s
        while True:
            poller.wait(max(0.0, min(self._settings.progress_every_s, deadline - time.monotonic())))
            elapsed = time.monotonic() - started
            if poller.done():
                result = poller.result()
                progress(f"{host}: {step}: done in {elapsed:.0f} s")
                return result
            if time.monotonic() >= deadline:
                raise AzureProviderError(
                    f"{host}: {step}: not finished after {elapsed:.0f} s (Azure says {poller.status()}; "
                    "azure.operation_timeout_s)"
                )
            progress(f"{host}: {step}: {poller.status()} ({elapsed:.0f} s)")

    def _remove(self, targets: Iterable[_Made], progress: Progress) -> list[_Made]:
        """Delete ``targets`` kind by kind in ``_KINDS`` order (each kind's at once); what was
        removed. A failure raises ``AzureProviderError`` naming what was removed and what is left."""
        targets = list(dict.fromkeys(targets))
        removed: list[_Made] = []
        for kind, label in _KINDS.items():
            batch = [made for made in targets if made.kind == kind]
            if not batch:
                continue
            try:
                self._step(
                    [m.name for m in batch],
                    f"removing {label}",
                    partial(self._begin_delete, kind),
                    progress,
                )
            except _StepFailed as failed:
                if not _is_azure_error(failed.error):
                    raise failed.error from None
                left = [str(m) for m in targets if m not in removed]
                raise AzureProviderError(
                    f"{failed.host}: {failed.step}: "
                    f"{explain(failed.error, self.config, self._credential_name)}" + _summary(removed, left),
                    removed=[str(m) for m in removed],
                    left=left,
                ) from failed.error
            removed += batch
        return removed

    def _begin_delete(self, kind: str, name: str) -> LROPoller[None]:
        clients, group = self._clients(), self.config.group
        if kind == "vm":
            return clients.compute.virtual_machines.begin_delete(group, name)
        if kind == "disk":
            return clients.compute.disks.begin_delete(group, name)
        if kind == "nic":
            return clients.network.network_interfaces.begin_delete(group, name)
        if kind == "ip":
            return clients.network.public_ip_addresses.begin_delete(group, name)
        if kind == "vnet":
            return clients.network.virtual_networks.begin_delete(group, name)
        if kind == "nsg":
            return clients.network.network_security_groups.begin_delete(group, name)
        return clients.resources.resource_groups.begin_delete(name)

    def _roll_back(self, made: list[_Made], progress: Progress) -> tuple[list[_Made], list[str]]:
        """Remove what a failed ``create_hosts`` made: (removed, left behind)."""
        if not made:
            return [], []
        progress(f"{self.config.group}: removing what this run made: {', '.join(str(m) for m in made)}")
        try:
            return self._remove(made, progress), []
        except AzureProviderError as exc:
            return [m for m in made if str(m) in exc.removed], exc.left

    # -- helpers -------------------------------------------------------------------------------

    def _clients(self) -> _Clients:
        if self._made_clients is None:
            from azure.mgmt.compute import ComputeManagementClient
            from azure.mgmt.network import NetworkManagementClient
            from azure.mgmt.resource.resources import ResourceManagementClient

            credential = self._credential
            if credential is None:
                credential = self._made_credential = make_credential(self.config.credential)
            settings = self._settings
            options: dict[str, Any] = {
                "polling_interval": settings.poll_interval_s,
                "retry_total": settings.retry_total,
                "retry_backoff_factor": settings.retry_backoff_s,
                "retry_backoff_max": settings.retry_backoff_max_s,
                "read_timeout": settings.read_timeout_s,
                **self._client_options,
            }
            subscription = self.config.subscription_id
            self._made_clients = _Clients(
                resources=ResourceManagementClient(credential, subscription, **options),
                network=NetworkManagementClient(credential, subscription, **options),
                compute=ComputeManagementClient(credential, subscription, **options),
            )
        return self._made_clients

    @contextmanager
    def _explained(self) -> Iterator[None]:
        try:
            yield
        except AzureProviderError:
            raise
        except Exception as exc:
            if not _is_azure_error(exc):
                raise
            raise AzureProviderError(explain(exc, self.config, self._credential_name)) from exc

    def _tags(self, host: str | None = None) -> dict[str, str]:
        tags = {TAG_PLATFORM: self.config.platform, TAG_MADE_BY: MADE_BY}
        if host is not None:
            tags[TAG_HOST] = host
        return tags

    def _ours(self, tags: Mapping[str, str] | None) -> bool:
        return tags is not None and tags.get(TAG_PLATFORM) == self.config.platform

    def _check_ours(self, tags: Mapping[str, str] | None, kind: str, name: str) -> None:
        if not self._ours(tags):
            raise AzureProviderError(
                f"a {kind} {name} not made by aiot for platform {self.config.platform} is in resource "
                f"group {self.config.group}: name another platform or resource group, or remove it"
            )

    def _next_names(self, taken: set[str], count: int) -> list[str]:
        prefix = self.config.platform
        start = max((_index(name, prefix) for name in taken), default=0) + 1
        return [f"{prefix}-{start + offset}" for offset in range(count)]

    def _host(self, name: str, nic: Any, ip: Any) -> Host:
        configs = (nic.properties.ip_configurations or []) if nic.properties else []
        private = configs[0].properties.private_ip_address if configs and configs[0].properties else None
        public = ip.properties.ip_address if ip.properties else None
        if not private or not public:
            raise AzureProviderError(
                f"host {name}: Azure gave it no {'private' if not private else 'public'} address"
            )
        ssh = SshAddress(host=public, user=self.config.admin_user, key_file=self.config.ssh_private_key_file)
        return Host(name=name, ssh=ssh, address=private, provider=self.name)


def _rule(
    name: str, priority: int, access: str, protocol: str, source: str, destination: str, ports: list[str]
) -> dict[str, Any]:
    properties: dict[str, Any] = {
        "priority": priority,
        "direction": "Inbound",
        "access": access,
        "protocol": protocol,
        "sourceAddressPrefix": source,
        "sourcePortRange": "*",
        "destinationAddressPrefix": destination,
    }
    if len(ports) == 1:
        properties["destinationPortRange"] = ports[0]
    else:
        properties["destinationPortRanges"] = ports
    return {"name": name, "properties": properties}


def _is_azure_error(exc: BaseException) -> bool:
    from azure.core.exceptions import AzureError

    return isinstance(exc, AzureError | AzureProviderError)


def _summary(removed: list[_Made], left: list[str]) -> str:
    text = ""
    if removed:
        text += f"\nremoved: {', '.join(str(m) for m in removed)}"
    if left:
        text += f"\nLEFT IN AZURE (remove with `aiot destroy` or the portal): {', '.join(left)}"
    return text


def _id(resource: Any) -> str:
    identifier = getattr(resource, "id", None)
    if not identifier:
        raise AzureProviderError(f"Azure answered a {type(resource).__name__} without an id")
    return str(identifier)


def _key(identifier: str | None) -> str:
    """ARM ids compare without case."""
    return (identifier or "").lower()


def _name_of(identifier: str | None) -> str:
    return (identifier or "").rstrip("/").rpartition("/")[2]


def _nic_refs(vm: Any) -> list[Any]:
    profile = vm.properties.network_profile if vm.properties else None
    return [ref for ref in (profile.network_interfaces or []) if ref.id] if profile else []


def _public_ip_id(nic: Any) -> str | None:
    configs = (nic.properties.ip_configurations or []) if nic.properties else []
    for config in configs:
        public = config.properties.public_ip_address if config.properties else None
        if public is not None and public.id:
            return str(public.id)
    return None


def _os_disk(vm: Any) -> str | None:
    storage = vm.properties.storage_profile if vm.properties else None
    disk = storage.os_disk if storage else None
    return str(disk.name) if disk is not None and disk.name else None


def _host_tag(tags: Mapping[str, str] | None) -> str | None:
    return (tags or {}).get(TAG_HOST)


def _index(name: str, prefix: str) -> int:
    suffix = name.removeprefix(f"{prefix}-")
    return int(suffix) if suffix.isdigit() else 0


def ssh_platform(config: AzureConfig, path: Path, hosts: list[Host], settings: Settings) -> SshProvider:
    """The SSH bootstrap of ``hosts`` (the provider's, the first one main) as an inventory would
    give them: reached on their public IPs as the admin user, each other on their private ones."""
    from bootstrapper.ssh import Inventory, InventoryHost, SshProvider

    ordered = sorted(hosts, key=lambda host: host.name)
    inventory = Inventory(
        main=ordered[0].name if ordered else None,
        hosts=[
            InventoryHost(
                name=host.name,
                address=host.address,
                ssh_host=host.ssh.host,
                port=host.ssh.port,
                user=host.ssh.user,
                key_file=host.ssh.key_file,
                python=config.python,
            )
            for host in ordered
        ],
        settings=config.settings,
    )
    return SshProvider(inventory, settings, path.resolve(), provider="azure")
