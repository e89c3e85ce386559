"""The ssh provider's inventory: validated, with errors that name the file, the field and the reason."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bootstrapper.providers import Host, SshAddress
from bootstrapper.remote import Target, systemd_unit, unit_name
from bootstrapper.ssh import SshProvider, load_inventory
from platform_sdk.errors import ValidationFailed
from platform_sdk.settings import Settings

TOML = """
main = "b"
[[hosts]]
name = "a"
address = "10.0.0.11"
key_file = "keys/id"
[[hosts]]
name = "b"
address = "10.0.0.12"
port = 2222
user = "aiot"
key_file = "keys/id"
root = "/srv/aiot"
[settings]
blob = { backend = "azure" }
"""


THREE = [
    {"name": name, "address": f"10.0.0.{index}", "key_file": "keys/id"} for index, name in enumerate("abc")
]


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    (tmp_path / "keys").mkdir()
    (tmp_path / "keys" / "id").write_text("not read here")
    return tmp_path


def test_an_inventory_gives_hosts_with_ssh_addresses_and_the_main_one_first(
    folder: Path, settings: Settings
) -> None:
    path = folder / "hosts.toml"
    path.write_text(TOML)
    provider = SshProvider.from_file(path, settings)
    targets = provider.targets()
    assert [(target.host.name, target.main) for target in targets] == [("b", True), ("a", False)]
    main = targets[0]
    assert main.host.ssh.port == 2222
    assert main.host.ssh.user == "aiot"
    assert main.host.ssh.key_file == folder / "keys" / "id"  # relative to the inventory
    assert main.root == "/srv/aiot"
    assert targets[1].root == settings.bootstrap.install_root
    assert [host.name for host in provider.create_hosts(2, lambda _line: None)] == ["b", "a"]


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (
            {"hosts": [{"name": "a", "address": "x", "key_file": "keys/id", "port": 70000}]},
            "hosts.0.port: Input",
        ),
        ({"hosts": [{"name": "a", "key_file": "keys/id"}]}, "hosts.0.address: Field required"),
        (
            {"hosts": [{"name": "A b", "address": "x", "key_file": "keys/id"}]},
            "hosts.0.name: String should match",
        ),
        ({"hosts": [{"name": "a", "address": "x", "key_file": "keys/none"}]}, "hosts.0.key_file: "),
        (
            {"main": "z", "hosts": [{"name": "a", "address": "x", "key_file": "keys/id"}]},
            "not one of the hosts",
        ),
        (
            {"hosts": [{"name": "a", "address": "x", "key_file": "keys/id", "colour": 1}]},
            "hosts.0.colour: Extra",
        ),
        (
            {"hosts": [{"name": "a", "address": "x", "key_file": "keys/id"}] * 2},
            "host names must be unique: a more than once",
        ),
        ({"brokers": ["a", "z"], "hosts": THREE}, "brokers names z, not one of the hosts (a, b, c)"),
        ({"brokers": ["a", "b"], "hosts": THREE}, "a cluster needs three or more"),
        ({"brokers": ["a", "b", "b"], "hosts": THREE}, "brokers names a host more than once"),
        (
            {"brokers": ["a", "b", "c"], "hosts": [*THREE[:2], {**THREE[2], "spare": True}]},
            "brokers names the spare host c",
        ),
        (
            {
                "brokers": ["a", "b", "c"],
                "hosts": THREE,
                "settings": {"kafka": {"bootstrap_servers": "k:9092"}},
            },
            "exclude each other",
        ),
    ],
)
def test_a_wrong_inventory_names_file_field_and_reason(
    folder: Path, change: dict[str, object], message: str
) -> None:
    path = folder / "hosts.json"
    path.write_text(json.dumps(change))
    with pytest.raises(ValidationFailed, match=f"inventory {path}: ") as raised:
        load_inventory(path)
    assert message in str(raised.value)


def test_an_unreadable_inventory_says_so(folder: Path) -> None:
    with pytest.raises(ValidationFailed, match="cannot be read"):
        load_inventory(folder / "missing.toml")
    broken = folder / "broken.toml"
    broken.write_text("hosts = [")
    with pytest.raises(ValidationFailed, match=f"inventory {broken}: not valid toml"):
        load_inventory(broken)


def test_a_systemd_unit_starts_the_kafka_member_first_and_stops_the_platform(folder: Path) -> None:
    host = Host(
        name="b",
        ssh=SshAddress(host="10.0.0.12", key_file=folder / "keys" / "id"),
        address="10.0.0.12",
        provider="ssh",
    )
    unit = systemd_unit(
        Target(host=host, root="/srv/aiot"), "join --broker k:9092 --web-url http://a", member=True
    )
    python = "/srv/aiot/venv/bin/python -m bootstrapper.host"
    starts = [line for line in unit.splitlines() if line.startswith("ExecStart=")]
    assert starts == [
        f"ExecStart={python} broker --wait",
        f"ExecStart={python} join --broker k:9092 --web-url http://a",
    ]
    assert f"ExecStop={python} down" in unit.splitlines()  # not --purge: the member's data stays
    assert "Environment=AIOT_HOME=/srv/aiot/home AIOT_CONFIG_FILE=/srv/aiot/settings.toml" in unit
    assert "WantedBy=multi-user.target" in unit
    plain = systemd_unit(Target(host=host, root="/srv/aiot"), "main --remote-nodes b", member=False)
    assert "broker --wait" not in plain
    assert unit_name("/srv/aiot") != unit_name("/opt/aiot")  # one unit per install root
