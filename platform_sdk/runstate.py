"""What a running platform records under ``AIOT_HOME/run``: broker address, front door URL, processes.

``aiot up`` writes it; every process of that home reads it to find the bus and
the front door when the settings do not name them. Writes are atomic, so a
reader never sees half a file.

Everything under AIOT_HOME is its owner's alone: ``private_dir`` makes (or narrows) a folder
to 0700, ``private_file`` a file to 0600; ``PRIVATE_UMASK`` is the umask ``aiot up`` gives
the platform's processes, so what they create is private too. ``exclusive`` serialises
processes that change the same files (an exclusive ``flock`` on a lock file beside them).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import stat
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, Field

from platform_sdk.settings import PLATFORM_MODULES, Settings

STATE_FILE = "state.json"
PRIVATE_DIR_MODE = 0o700
PRIVATE_FILE_MODE = 0o600
PRIVATE_UMASK = 0o077


def private_dir(path: Path) -> Path:
    """``path`` as a folder only its owner may enter: made (with any missing parents) 0700, or
    narrowed to 0700 when it exists."""
    missing = [folder for folder in (path, *path.parents) if not folder.exists()]
    for folder in reversed(missing):
        folder.mkdir(mode=PRIVATE_DIR_MODE, exist_ok=True)
    _narrow(path, PRIVATE_DIR_MODE)  # an older folder may be open to others
    return path


def private_file(path: Path) -> Path:
    """``path`` as a file only its owner may read: created empty 0600, or narrowed to 0600."""
    os.close(os.open(path, os.O_WRONLY | os.O_CREAT, PRIVATE_FILE_MODE))
    _narrow(path, PRIVATE_FILE_MODE)
    return path


@contextlib.contextmanager
def exclusive(lock_file: Path) -> Iterator[None]:
    """Hold an exclusive ``flock`` on ``lock_file`` (made 0600, its folder 0700, if missing)."""
    lock_file.parent.mkdir(mode=PRIVATE_DIR_MODE, parents=True, exist_ok=True)
    with open(lock_file, "a") as lock:
        _narrow(lock_file, PRIVATE_FILE_MODE)
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def _narrow(path: Path, mode: int) -> None:
    """Give ``path`` ``mode`` when it is ours and has another (someone else's is left as it is)."""
    found = path.stat()
    if found.st_uid == os.getuid() and stat.S_IMODE(found.st_mode) != mode:
        os.chmod(path, mode)


class ProcessRecord(BaseModel):
    """One process ``aiot up`` started."""

    name: str
    pid: int
    create_time: float = Field(description="psutil's create time; guards against a reused pid.")
    command: list[str]
    log_file: str | None = None


class NodeRecord(BaseModel):
    """One node (service agent) the local provider started."""

    node_id: str
    http_url: str
    port_range: str
    added: bool = Field(
        default=False, description="Started by scale-out (the node manager may remove it when idle)."
    )


class RunState(BaseModel):
    """The running platform of one AIOT_HOME."""

    broker: str | None = Field(default=None, description="Kafka bootstrap servers in use.")
    broker_embedded: bool = Field(default=False, description="Whether `aiot up` started the broker itself.")
    broker_kind: Literal["kafka", "tansu"] = Field(
        default="kafka", description="Apache Kafka (or any Kafka cluster), or the bundled Tansu."
    )
    bus_authenticated: bool = Field(
        default=True,
        description="Whether clients authenticate to the broker (SASL with ACLs); False: Tansu or a "
        "Kafka without SASL, where the platform is single-user.",
    )
    web_url: str | None = None
    runtime: str = "process"
    nodes_started: int = Field(
        default=0,
        description="Nodes (agents) started for this platform so far: node ids are never reused, a "
        "removed node's (scale-in) included.",
    )
    agent_allow_commands: bool = Field(
        default=False,
        description="agent.allow_commands of the agents `aiot up` started, so those added later "
        "(scale-out, by the node manager, which has no agent settings of its own) run the same.",
    )
    agent_allowed_modules: list[str] = Field(
        default_factory=lambda: list(PLATFORM_MODULES),
        description="agent.allowed_modules of those agents, for the same reason.",
    )
    main: bool = Field(
        default=True,
        description="Whether this home runs the main node (its agent runs the node manager and the "
        "monitor); False: a host that joined another host's platform (`aiot bootstrap`).",
    )
    nodes: list[NodeRecord] = Field(default_factory=list)
    processes: list[ProcessRecord] = Field(default_factory=list)


def state_path(settings: Settings) -> Path:
    return settings.run_dir / STATE_FILE


def read_run_state(settings: Settings) -> RunState | None:
    """The recorded state, or None when this home has never been started or was stopped, or is not
    this process's to read (a sandboxed model or app: its settings come in its environment)."""
    path = state_path(settings)
    try:
        return RunState.model_validate_json(path.read_bytes())
    except (FileNotFoundError, PermissionError):
        return None


def write_run_state(settings: Settings, state: RunState) -> None:
    path = state_path(settings)
    private_dir(path.parent)
    with tempfile.NamedTemporaryFile("w", dir=path.parent, delete=False, suffix=".tmp") as tmp:
        json.dump(state.model_dump(mode="json"), tmp, indent=2)
    os.replace(tmp.name, path)


def clear_run_state(settings: Settings) -> None:
    state_path(settings).unlink(missing_ok=True)


def kafka_address(settings: Settings) -> str | None:
    """The configured Kafka address, else the one the running platform recorded."""
    if settings.kafka.bootstrap_servers:
        return settings.kafka.bootstrap_servers
    state = read_run_state(settings)
    return state.broker if state else None


def broker_kind(settings: Settings, bootstrap: str | None) -> Literal["kafka", "tansu"]:
    """Which broker answers at ``bootstrap``: what this home's platform recorded when it started that
    broker, else Tansu only where the settings say so (``kafka.broker = "tansu"``), else Kafka."""
    state = read_run_state(settings)
    if state is not None and bootstrap and state.broker == bootstrap:
        return state.broker_kind
    return "tansu" if settings.kafka.broker == "tansu" else "kafka"


def web_url(settings: Settings) -> str | None:
    """The configured front door URL, else the one the running platform recorded."""
    if settings.web.url:
        return settings.web.url.rstrip("/")
    state = read_run_state(settings)
    return state.web_url if state else None
