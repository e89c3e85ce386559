"""The azure provider against the real Azure SDK, its HTTP transport replaced by recorded ARM answers.

No Azure subscription is reached: ``tests.fixtures.arm.ArmTransport`` answers each request the
SDK's clients send from ``tests/fixtures/arm/*.json`` (ARM's documented shapes, long-running
operations with ``Azure-AsyncOperation`` / ``Location`` to poll) and fails on any other. The
clients, their retry policy and their pollers are the SDK's own.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
from azure.core.credentials import AccessToken
from azure.core.exceptions import ClientAuthenticationError

from bootstrapper.azure import (
    AzureConfig,
    AzureCredentialConfig,
    AzureProvider,
    AzureProviderError,
    credential_description,
    load_azure_config,
    make_credential,
    ssh_platform,
)
from bootstrapper.providers import Host, SshAddress
from platform_sdk.errors import ValidationFailed
from platform_sdk.settings import AzureSettings, Settings
from tests.fixtures.arm import ArmTransport, FixedToken, SentRequest, UnexpectedRequest, load_exchanges

SUBSCRIPTION = "6b1c2d3e-4f50-4a6b-9c7d-8e9f0a1b2c3d"
PUBLIC_KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIBq1aiotTestKeyOnlyForRecordedArmResponses demo@aiot"
GROUP_PATH = f"/subscriptions/{SUBSCRIPTION}/resourceGroups/aiot-demo"
NETWORK = f"{GROUP_PATH}/providers/Microsoft.Network"
COMPUTE = f"{GROUP_PATH}/providers/Microsoft.Compute"
# Polls and retries in milliseconds; a progress line only for an operation slower than the test.
FAST = AzureSettings(
    poll_interval_s=0.01, retry_backoff_s=0.05, progress_every_s=5.0, operation_timeout_s=30.0
)

CONFIG = f"""
platform = "demo"
subscription_id = "{SUBSCRIPTION}"
location = "westeurope"
ssh_public_key_file = "keys/demo.pub"
ssh_private_key_file = "keys/demo"

[network]
admin_cidr = "203.0.113.7/32"
"""


@pytest.fixture
def config_file(tmp_path: Path) -> Path:
    (tmp_path / "keys").mkdir()
    (tmp_path / "keys" / "demo.pub").write_text(PUBLIC_KEY + "\n")
    (tmp_path / "keys" / "demo").write_text("-----BEGIN OPENSSH PRIVATE KEY-----\n(not used)\n")
    path = tmp_path / "azure.toml"
    path.write_text(CONFIG)
    return path


@pytest.fixture
def config(config_file: Path) -> AzureConfig:
    return load_azure_config(config_file)


@contextmanager
def recorded(
    config: AzureConfig, *fixtures: str, credential: Any = None
) -> Iterator[tuple[AzureProvider, ArmTransport, list[str]]]:
    """A provider whose clients send to the recorded ``fixtures``; its progress lines."""
    transport = ArmTransport(load_exchanges(*fixtures))
    lines: list[str] = []
    with AzureProvider(
        config,
        settings=FAST,
        credential=credential or FixedToken(),
        client_options={"transport": transport},
    ) as provider:
        yield provider, transport, lines


def _path(request: SentRequest) -> str:
    return urlsplit(request.url).path


def _writes(transport: ArmTransport) -> list[tuple[str, str]]:
    return [(r.method, _path(r)) for r in transport.sent if r.method != "GET"]


def _body(transport: ArmTransport, method: str, path: str) -> dict[str, Any]:
    [body] = [r.body for r in transport.sent if r.method == method and _path(r) == path]
    assert isinstance(body, dict)
    return body


def test_create_makes_the_group_the_network_and_a_tagged_vm_with_the_ssh_key(config: AzureConfig) -> None:
    fixtures = ("no_group", "group_create", "network_create", "host1_ip_nic", "host1_vm")
    with recorded(config, *fixtures) as (provider, transport, lines):
        hosts = provider.create_hosts(1, lines.append)
    transport.check()  # every request recorded, every recorded answer asked for

    assert hosts == [
        Host(
            name="demo-1",
            ssh=SshAddress(host="20.61.14.7", user="aiot", key_file=config.ssh_private_key_file),
            address="10.42.1.4",
            provider="azure",
        )
    ]
    assert _writes(transport) == [
        ("PUT", f"/subscriptions/{SUBSCRIPTION}/resourcegroups/aiot-demo"),
        ("PUT", f"{NETWORK}/networkSecurityGroups/demo-nsg"),
        ("PUT", f"{NETWORK}/virtualNetworks/demo-vnet"),
        ("PUT", f"{NETWORK}/publicIPAddresses/demo-1-ip"),
        ("PUT", f"{NETWORK}/networkInterfaces/demo-1-nic"),
        ("PUT", f"{COMPUTE}/virtualMachines/demo-1"),
    ]
    # The SDK's pollers really polled: every operation URL until it said Succeeded.
    polls = [r for r in transport.sent if r.method == "GET" and "/operations/" in r.url]
    assert len(polls) == 10
    assert all(r.headers["Authorization"] == "Bearer fixed-test-token" for r in transport.sent)

    platform_tags = {"aiot-platform": "demo", "aiot-made-by": "aiot bootstrap"}
    for method, path in _writes(transport):
        body = _body(transport, method, path)
        host_tag = {"aiot-host": "demo-1"} if "demo-1" in path else {}
        assert body["tags"] == platform_tags | host_tag, path
        assert body["location"] == "westeurope"

    vm = _body(transport, "PUT", f"{COMPUTE}/virtualMachines/demo-1")["properties"]
    linux = vm["osProfile"]["linuxConfiguration"]
    assert linux["disablePasswordAuthentication"] is True
    assert linux["ssh"]["publicKeys"] == [{"path": "/home/aiot/.ssh/authorized_keys", "keyData": PUBLIC_KEY}]
    assert vm["osProfile"]["adminUsername"] == "aiot"
    assert "adminPassword" not in vm["osProfile"]
    assert vm["hardwareProfile"] == {"vmSize": "Standard_B2s"}
    assert vm["storageProfile"]["imageReference"] == {
        "publisher": "Canonical",
        "offer": "0001-com-ubuntu-server-jammy",
        "sku": "22_04-lts-gen2",
        "version": "latest",
    }
    assert vm["networkProfile"]["networkInterfaces"][0]["id"] == f"{NETWORK}/networkInterfaces/demo-1-nic"

    rules = {
        rule["name"]: rule["properties"]
        for rule in _body(transport, "PUT", f"{NETWORK}/networkSecurityGroups/demo-nsg")["properties"][
            "securityRules"
        ]
    }
    assert rules["aiot-ssh-from-admin"]["sourceAddressPrefix"] == "203.0.113.7/32"
    assert rules["aiot-ssh-from-admin"]["destinationPortRange"] == "22"
    assert rules["aiot-platform-between-hosts"]["sourceAddressPrefix"] == "10.42.1.0/24"
    assert rules["aiot-deny-rest-of-vnet"]["access"] == "Deny"
    subnet = _body(transport, "PUT", f"{NETWORK}/virtualNetworks/demo-vnet")["properties"]["subnets"][0]
    assert subnet["properties"]["networkSecurityGroup"]["id"] == f"{NETWORK}/networkSecurityGroups/demo-nsg"
    nic = _body(transport, "PUT", f"{NETWORK}/networkInterfaces/demo-1-nic")["properties"]
    assert (
        nic["ipConfigurations"][0]["properties"]["subnet"]["id"]
        == f"{NETWORK}/virtualNetworks/demo-vnet/subnets/hosts"
    )

    # A progress line per host and step.
    for step in ("public IP", "network interface", "virtual machine"):
        assert any(line.startswith(f"demo-1: {step}: started") for line in lines), (step, lines)
        assert any(line.startswith(f"demo-1: {step}: done in") for line in lines), (step, lines)
    assert "aiot-demo: resource group: created" in lines
    assert lines[-1] == "demo-1: ready: ssh aiot@20.61.14.7, platform address 10.42.1.4"


def test_list_finds_exactly_the_hosts_tagged_with_the_platform(config: AzureConfig) -> None:
    with recorded(config, "list_two_hosts") as (provider, transport, _):
        hosts = provider.list_hosts()
    transport.check()
    # lab-1 (platform lab) and the untagged jumpbox in the same group are not ours.
    assert [(h.name, h.ssh.host, h.address) for h in hosts] == [
        ("demo-1", "20.61.14.7", "10.42.1.4"),
        ("demo-2", "20.61.15.9", "10.42.1.5"),
    ]
    assert all(h.ssh.user == "aiot" and h.provider == "azure" for h in hosts)


def test_the_listed_hosts_are_bootstrapped_over_ssh_as_the_admin_user_on_their_public_ip(
    config: AzureConfig, config_file: Path, settings: Settings
) -> None:
    """What `aiot bootstrap --provider azure` hands the SSH bootstrap after the VMs exist."""
    with recorded(config, "list_two_hosts") as (provider, transport, _):
        hosts = provider.list_hosts()
    transport.check()
    config = config.model_copy(update={"settings": {"blob": {"backend": "azure"}}, "python": "python3.11"})
    platform = ssh_platform(config, config_file, list(reversed(hosts)), settings)
    targets = platform.targets()
    assert [(t.host.name, t.main, t.host.ssh.host, t.host.address) for t in targets] == [
        ("demo-1", True, "20.61.14.7", "10.42.1.4"),  # the first host is the main one
        ("demo-2", False, "20.61.15.9", "10.42.1.5"),
    ]
    assert {(t.host.ssh.user, t.host.ssh.key_file, t.python) for t in targets} == {
        ("aiot", config.ssh_private_key_file, "python3.11")  # through sudo: bootstrapper.remote
    }
    assert platform.inventory.settings == {"blob": {"backend": "azure"}}
    assert (platform.provider, platform.config) == ("azure", config_file.resolve())


def test_bootstrap_with_a_bad_azure_config_names_it_and_asks_azure_nothing(
    config_file: Path, settings: Settings
) -> None:
    config_file.write_text(
        config_file.read_text().replace('location = "westeurope"', 'location = "West Europe"')
    )
    result = subprocess.run(
        [sys.executable, "-m", "aiot", "bootstrap", "--provider", "azure", "--config", str(config_file)],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "AIOT_HOME": str(settings.home_dir)},
        check=False,
    )
    assert result.returncode != 0
    said = " ".join((result.stdout + result.stderr).split())
    assert "azure.toml" in said, said
    assert "location" in said, said


def test_ensure_hosts_makes_nothing_when_the_platform_has_its_hosts(config: AzureConfig) -> None:
    assert config.hosts == 2
    with recorded(config, "list_two_hosts") as (provider, transport, lines):
        hosts = provider.ensure_hosts(lines.append)
    transport.check()
    assert [h.name for h in hosts] == ["demo-1", "demo-2"]
    assert _writes(transport) == []
    assert lines == ["aiot-demo: 2 hosts of platform demo exist"]


def test_destroy_host_removes_that_host_and_what_only_it_used(config: AzureConfig) -> None:
    with recorded(config, "destroy_host2") as (provider, transport, lines):
        provider.destroy_host("demo-2", lines.append)
        with pytest.raises(AzureProviderError) as raised:
            provider.destroy_host("demo-9", lines.append)
    assert raised.value.message == "no host demo-9 of platform demo in resource group aiot-demo"
    transport.check()
    assert _writes(transport) == [
        ("DELETE", f"{COMPUTE}/virtualMachines/demo-2"),
        ("DELETE", f"{COMPUTE}/disks/demo-2-osdisk"),
        ("DELETE", f"{NETWORK}/networkInterfaces/demo-2-nic"),
        ("DELETE", f"{NETWORK}/publicIPAddresses/demo-2-ip"),
    ]


def test_list_before_anything_was_made_is_empty(config: AzureConfig) -> None:
    with recorded(config, "no_group") as (provider, transport, _):
        assert provider.list_hosts() == []
    transport.check()


def test_destroy_removes_everything_it_made_in_a_working_order(config: AzureConfig) -> None:
    with recorded(config, "destroy_two_hosts") as (provider, transport, lines):
        removed = provider.destroy(lines.append)
    transport.check()
    assert removed == [
        "virtual machine demo-1",
        "virtual machine demo-2",
        "disk demo-1-osdisk",
        "disk demo-2-osdisk",
        "network interface demo-1-nic",
        "network interface demo-2-nic",
        "public IP demo-1-ip",
        "public IP demo-2-ip",
        "virtual network demo-vnet",
        "network security group demo-nsg",
        "resource group aiot-demo",
    ]
    deletes = [_path(r) for r in transport.sent if r.method == "DELETE"]

    def last(fragment: str) -> int:
        return max(i for i, path in enumerate(deletes) if fragment in path)

    def first(fragment: str) -> int:
        return min(i for i, path in enumerate(deletes) if fragment in path)

    # What uses another goes first: VMs, then their disks and NICs, then the IPs the NICs held,
    # the virtual network, the security group its subnet used, and the group.
    assert last("/virtualMachines/") < first("/disks/")
    assert last("/virtualMachines/") < first("/networkInterfaces/")
    assert last("/networkInterfaces/") < first("/publicIPAddresses/")
    assert last("/publicIPAddresses/") < first("/virtualNetworks/")
    assert last("/virtualNetworks/") < first("/networkSecurityGroups/")
    assert deletes[-1] == f"/subscriptions/{SUBSCRIPTION}/resourcegroups/aiot-demo"
    # The group went only after ARM said nothing else was in it; its delete was polled by Location.
    paths = [(r.method, _path(r)) for r in transport.sent]
    group = f"/subscriptions/{SUBSCRIPTION}/resourcegroups/aiot-demo"
    assert paths.index(("GET", f"{group}/resources")) < paths.index(("DELETE", group))
    assert sum("/operationresults/" in r.url for r in transport.sent) == 2
    assert any(line.startswith("demo-1: removing virtual machine: done in") for line in lines), lines


def test_destroy_keeps_a_group_aiot_did_not_make_and_what_others_put_there(config: AzureConfig) -> None:
    with recorded(config, "destroy_in_a_group_aiot_did_not_make") as (provider, transport, lines):
        removed = provider.destroy(lines.append)
    transport.check()
    assert removed == [
        "virtual machine demo-1",
        "disk demo-1-osdisk",
        "network interface demo-1-nic",
        "public IP demo-1-ip",
        "virtual network demo-vnet",
        "network security group demo-nsg",
    ]
    assert not any("jumpbox" in r.url or r.url.split("?")[0].endswith("/aiot-demo") for r in transport.sent
                   if r.method == "DELETE")  # fmt: skip
    assert lines[-1] == "aiot-demo: resource group: kept (aiot did not make it)"


def _create_failing_at_the_vm(
    config: AzureConfig, vm_fixture: str
) -> tuple[AzureProviderError, ArmTransport]:
    """create_hosts(1) from nothing, the VM answered by ``vm_fixture``, the run's removal after it."""
    fixtures = ("no_group", "group_create", "network_create", "host1_ip_nic", vm_fixture, "roll_back_host1")
    with (
        recorded(config, *fixtures) as (provider, transport, lines),
        pytest.raises(AzureProviderError) as raised,
    ):
        provider.create_hosts(1, lines.append)
    transport.check()
    return raised.value, transport


def test_a_quota_error_says_what_to_do_and_removes_what_the_run_made(config: AzureConfig) -> None:
    failure, transport = _create_failing_at_the_vm(config, "host1_vm_quota")
    message = failure.message
    assert message.startswith(
        "demo-1: virtual machine: Azure quota exceeded (OperationNotAllowed) for Standard_B2s in westeurope: "
        "Operation could not be completed as it results in exceeding approved standardBSFamily Cores quota."
    )
    assert "pick a smaller vm_size or fewer hosts, another location, or request more quota" in message
    assert failure.removed == [
        "network interface demo-1-nic",
        "public IP demo-1-ip",
        "virtual network demo-vnet",
        "network security group demo-nsg",
        "resource group aiot-demo",
    ]
    assert failure.left == []
    assert message.endswith("removed: " + ", ".join(failure.removed))
    deletes = [_path(r) for r in transport.sent if r.method == "DELETE"]
    assert deletes[0] == f"{NETWORK}/networkInterfaces/demo-1-nic"
    assert deletes[-1] == f"/subscriptions/{SUBSCRIPTION}/resourcegroups/aiot-demo"
    assert not any("/virtualMachines/" in path or "/disks/" in path for path in deletes)  # never made


def test_a_vm_that_fails_after_azure_accepted_it_is_removed_with_the_rest(config: AzureConfig) -> None:
    failure, _ = _create_failing_at_the_vm(config, "host1_vm_allocation_failed")
    assert failure.message.startswith(
        "demo-1: virtual machine: Azure has no capacity for Standard_B2s in westeurope now "
        "(AllocationFailed): Allocation failed."
    )
    assert failure.removed[:2] == ["virtual machine demo-1", "disk demo-1-osdisk"]
    assert failure.removed[-1] == "resource group aiot-demo"
    assert failure.left == []


def test_a_throttled_request_is_retried_by_the_sdk_after_retry_after(config: AzureConfig) -> None:
    with recorded(config, "throttled_list") as (provider, transport, _):
        assert provider.list_hosts() == []
    transport.check()
    first, second, third = transport.sent
    # ARM's Retry-After: 1 first; none the second time: the retry policy's own backoff (the second
    # retry waits azure.retry_backoff_s·2).
    assert transport.sleeps == [1.0, pytest.approx(2 * FAST.retry_backoff_s)]
    assert second.at - first.at >= 1.0
    assert third.at - second.at < 0.5


class RefusingCredential:
    def get_token(self, *scopes: str, **kwargs: Any) -> AccessToken:
        raise ClientAuthenticationError("AADSTS7000215: Invalid client secret provided.")


def test_an_auth_failure_names_the_credential_that_was_tried(config: AzureConfig) -> None:
    with (
        recorded(config, credential=RefusingCredential()) as (provider, transport, _),
        pytest.raises(AzureProviderError) as raised,
    ):
        provider.list_hosts()
    assert transport.sent == []
    assert raised.value.message.startswith(
        "Azure did not accept the credential tried, RefusingCredential (given): "
        "AADSTS7000215: Invalid client secret provided."
    )
    assert "az login" in raised.value.message


def test_the_config_credential_is_named_and_its_secret_comes_from_the_environment(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    principal = AzureCredentialConfig(kind="client_secret", tenant_id="t-1", client_id="c-1")
    assert credential_description(principal) == (
        "ClientSecretCredential (tenant t-1, client c-1, secret from $AZURE_CLIENT_SECRET)"
    )
    assert credential_description(AzureCredentialConfig()).startswith("DefaultAzureCredential (")
    monkeypatch.delenv("AZURE_CLIENT_SECRET", raising=False)
    with pytest.raises(AzureProviderError, match=r"AZURE_CLIENT_SECRET .* is not set"):
        make_credential(principal)
    monkeypatch.setenv("AZURE_CLIENT_SECRET", "s3cret")
    assert type(make_credential(principal)).__name__ == "ClientSecretCredential"


def test_an_unrecorded_request_fails_with_its_method_and_url(config: AzureConfig) -> None:
    with recorded(config) as (provider, transport, _), pytest.raises(UnexpectedRequest) as raised:
        provider.list_hosts()
    expected = f"unexpected request: GET https://management.azure.com{COMPUTE}/virtualMachines?api-version="
    assert str(raised.value).startswith(expected)
    assert transport.unexpected == [str(raised.value)]


def test_the_config_file_is_read_with_key_paths_beside_it(config_file: Path) -> None:
    config = load_azure_config(config_file)
    assert config.group == "aiot-demo"
    assert config.ssh_private_key_file == config_file.parent / "keys" / "demo"
    assert config.public_key() == PUBLIC_KEY
    assert (config.image.offer, config.image.sku) == ("0001-com-ubuntu-server-jammy", "22_04-lts-gen2")
    assert str(config.network.subnet_cidr) == "10.42.1.0/24"


@pytest.mark.parametrize(
    ("old", "new", "expected"),
    [
        ("", "oops =\n", "is not valid TOML"),
        ('admin_cidr = "203.0.113.7/32"', "", "field network.admin_cidr: Field required"),
        ('"westeurope"', '"West Europe"', "field location: String should match"),
        (SUBSCRIPTION, "not-a-uuid", "field subscription_id: String should match"),
        ("", 'vm_size = "Standard_B1s"\n', "field network.vm_size: Extra inputs"),
        ('"keys/demo"', '"keys/gone"', "field ssh_private_key_file: /"),
        ("", 'subnet_cidr = "10.9.0.0/24"\n', "field network: Value error, subnet_cidr 10.9.0.0/24 is not"),
        ("platform = ", 'admin_user = "root"\nplatform = ', "field admin_user: Value error, Azure refuses"),
        ("", 'platform_ports = ["*", "22"]\n', "field network.platform_ports: Value error, * (every port)"),
    ],
)
def test_a_bad_config_names_the_file_the_field_and_the_reason(
    config_file: Path, old: str, new: str, expected: str
) -> None:
    text = config_file.read_text()
    config_file.write_text(text.replace(old, new) if old else text + new)
    with pytest.raises(ValidationFailed) as raised:
        load_azure_config(config_file)
    assert raised.value.message.startswith(f"{config_file}"), raised.value.message
    assert expected in raised.value.message, raised.value.message
    assert raised.value.details[0]["file"] == str(config_file)


def test_a_missing_config_file_is_named(tmp_path: Path) -> None:
    with pytest.raises(ValidationFailed, match=r"azure\.toml: does not exist$"):
        load_azure_config(tmp_path / "azure.toml")


def test_nothing_is_asked_of_azure_before_the_first_call(config: AzureConfig) -> None:
    transport, credential = ArmTransport([]), FixedToken()
    provider = AzureProvider(
        config, settings=FAST, credential=credential, client_options={"transport": transport}
    )
    provider.close()
    assert transport.sent == []
    assert credential.scopes == []
