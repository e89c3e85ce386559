"""Spare hosts of an SSH inventory: left alone by the bootstrap, handed to the main host's node
manager, whose hooks (``bootstrapper.spares``) add and free them. The whole flow over SSH (a spare
joining when every host is busy, removed when idle) is in ``tests/test_ssh_bootstrap.py``."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest

from bootstrapper.providers import Host, SshAddress
from bootstrapper.remote import SpareHost, SpareHosts, spares_path
from bootstrapper.spares import SpareScaleOut
from bootstrapper.ssh import SshProvider, load_inventory
from platform_sdk.errors import Conflict, ValidationFailed
from platform_sdk.settings import Settings
from tests.platform_driver import wait_until


def _inventory(folder: Path, **main: object) -> Path:
    key = folder / "id"
    key.write_text("not read here")
    path = folder / "hosts.json"
    hosts = [
        {"name": "a", "address": "10.0.0.11", "key_file": str(key), **main},
        {"name": "b", "address": "10.0.0.12", "key_file": str(key)},
        {"name": "c", "address": "10.0.0.13", "key_file": str(key), "spare": True},
    ]
    path.write_text(json.dumps({"hosts": hosts}))
    return path


def test_the_main_host_cannot_be_a_spare(tmp_path: Path) -> None:
    path = _inventory(tmp_path, spare=True)
    with pytest.raises(ValidationFailed, match=f"inventory {path}: .*the main host 'a' cannot be a spare"):
        load_inventory(path)


class _Recorder:
    """Stands in for ``Bootstrap``: what ``bootstrap_with`` hands it."""

    def __init__(self) -> None:
        self.started: list[str] = []
        self.spares: list[str] = []

    def run(
        self, targets: list[object], provider: str, config: str, spares: list[object], brokers: list[str]
    ) -> None:
        self.started = [target.host.name for target in targets]  # type: ignore[attr-defined]
        self.spares = [target.host.name for target in spares]  # type: ignore[attr-defined]


def test_the_bootstrap_starts_every_host_but_the_spares_and_destroy_covers_them(
    tmp_path: Path, settings: Settings
) -> None:
    provider = SshProvider.from_file(_inventory(tmp_path), settings)
    recorder = _Recorder()
    provider.bootstrap_with(recorder)  # type: ignore[arg-type]
    assert (recorder.started, recorder.spares) == (["a", "b"], ["c"])
    assert [target.host.name for target in provider.targets()] == ["a", "b", "c"]  # what destroy stops


def _handed(settings: Settings, key: Path, names: list[str]) -> SpareScaleOut:
    """This home made a main host with ``names`` handed over as spares."""
    key.write_text("not read here")
    hosts = [
        SpareHost(
            host=Host(
                name=name,
                ssh=SshAddress(host="10.0.0.13", key_file=key),
                address="10.0.0.13",
                provider="ssh",
            ),
            python="python3",
            root="/opt/aiot",
        )
        for name in names
    ]
    path = spares_path(settings)
    path.parent.mkdir(parents=True)
    path.write_text(SpareHosts(release="/nowhere", python="3.11", hosts=hosts).model_dump_json())
    hooks = SpareScaleOut.of(settings)
    assert hooks is not None
    return hooks


def test_a_failed_spare_bootstrap_frees_the_spare_and_logs_why(
    tmp_path: Path, settings: Settings, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    # The child bootstrap reads the same home: no platform runs from it, so it fails at once.
    monkeypatch.setenv("AIOT_HOME", str(settings.home_dir))
    hooks = _handed(settings, tmp_path / "key", ["c"])
    caplog.set_level(logging.WARNING, logger="bootstrapper.spares")
    assert hooks.add_node() == "c"
    assert hooks.add_node() is None  # the only spare is in use while it is being added
    wait_until(lambda: hooks.added_nodes() == [], 60, "the failed bootstrap of c reaped")
    said = caplog.text
    assert "scale-out: the bootstrap of spare host c failed (exit 1)" in said, said
    assert "add-node runs on a main host that `aiot bootstrap` handed spare hosts" in said, said
    output = (settings.home_dir / "logs" / "spare-c.out").read_text()
    assert "error: add-node runs on a main host" in output, output


def test_only_a_spare_that_was_added_can_be_removed(tmp_path: Path, settings: Settings) -> None:
    hooks = _handed(settings, tmp_path / "key", ["c"])
    with pytest.raises(Conflict, match="node 'b' is not a spare host scale-out added"):
        hooks.remove_node("b")
    assert SpareScaleOut.of(settings) is not None
    # Handed over before the bootstrap's hosts have joined, and a platform without spares: scale-out
    # over SSH (no agents added on the main host), nobody to add.
    for complete in (False, True):
        nobody = SpareHosts(release="/nowhere", python="3.11", hosts=[], complete=complete)
        spares_path(settings).write_text(nobody.model_dump_json())
        assert hooks.add_node() is None
    spares_path(settings).unlink()
    assert SpareScaleOut.of(settings) is None  # no hand-over: the local provider's hooks
