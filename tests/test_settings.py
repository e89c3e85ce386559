"""Settings: environment, settings file, defaults under AIOT_HOME, temporary overrides."""

from __future__ import annotations

from pathlib import Path

import pytest

from platform_sdk.settings import Settings, get_settings, temporary_settings

REPO = Path(__file__).resolve().parents[1]


def test_defaults_keep_everything_under_home(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("AIOT_HOME", str(tmp_path))
    settings = Settings()
    assert settings.home_dir == tmp_path
    assert settings.database_url == f"sqlite:///{tmp_path / 'registry.db'}"
    assert settings.blob_path == tmp_path / "bucket"
    assert settings.run_dir == tmp_path / "run"
    assert settings.kafka.bootstrap_servers is None  # the embedded broker is used
    assert settings.web.host == "127.0.0.1"


def test_nested_environment_variables(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AIOT_KAFKA__BOOTSTRAP_SERVERS", "kafka-1:9092,kafka-2:9092")
    monkeypatch.setenv("AIOT_HEARTBEAT__INTERVAL_S", "0.25")
    monkeypatch.setenv("AIOT_BLOB__BACKEND", "azure")
    settings = Settings()
    assert settings.kafka.bootstrap_servers == "kafka-1:9092,kafka-2:9092"
    assert settings.heartbeat.interval_s == 0.25
    assert settings.blob.backend == "azure"


def test_settings_file_is_read_and_environment_wins(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    config = tmp_path / "aiot.toml"
    config.write_text('[kafka]\nbootstrap_servers = "file-kafka:9092"\n[database]\nurl = "sqlite:///x.db"\n')
    monkeypatch.setenv("AIOT_CONFIG_FILE", str(config))
    assert Settings().kafka.bootstrap_servers == "file-kafka:9092"
    monkeypatch.setenv("AIOT_KAFKA__BOOTSTRAP_SERVERS", "env-kafka:9092")
    settings = Settings()
    assert settings.kafka.bootstrap_servers == "env-kafka:9092"
    assert settings.database.url == "sqlite:///x.db"


def test_the_production_example_is_a_valid_settings_file(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AIOT_CONFIG_FILE", str(REPO / "configs" / "production.example.toml"))
    settings = Settings()
    assert settings.kafka.bootstrap_servers
    assert settings.database_url.startswith("postgresql")
    assert settings.blob.backend == "azure"


def test_invalid_values_are_rejected_with_the_field_named(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AIOT_HEARTBEAT__INTERVAL_S", "-1")
    with pytest.raises(ValueError, match="interval_s"):
        Settings()


def test_temporary_settings_nest_and_restore(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("AIOT_KAFKA__PARTITIONS", raising=False)
    before = get_settings().kafka.partitions
    with temporary_settings({"kafka.partitions": 7}) as outer:
        assert get_settings().kafka.partitions == 7
        with temporary_settings({"heartbeat.interval_s": 0.5}):
            inner = get_settings()
            assert (inner.kafka.partitions, inner.heartbeat.interval_s) == (7, 0.5)
        assert get_settings() is outer
    assert get_settings().kafka.partitions == before


def test_settings_reference_in_the_docs_is_current() -> None:
    from platform_sdk.settings import settings_reference

    page = (REPO / "docs" / "settings.md").read_text()
    assert page.endswith(settings_reference()), (
        "docs/settings.md is stale: regenerate it with `aiot settings --reference`"
    )
