"""Scale-out over SSH: the node manager of a bootstrapped main host adds and removes spare hosts.

An SSH inventory's hosts marked ``spare = true`` are not started by ``aiot bootstrap``; it hands them
to the main host instead (``AIOT_HOME/spares/hosts.json`` there, 0600: each spare's address, a copy
of its key, the release installed on the main host and the inventory's settings; the list stays
empty, incomplete, until the hosts the bootstrap starts have all joined, so that a main host busy
on its own for a moment adds no spare; an SSH platform without spares gets an empty list, so its
node manager adds no node rather than more agents on the main host). The main host's node
manager (``bootstrapper.local_node_manager``), which finds that file at its start, gets these hooks:

- ``add_node`` (scale-out): the first spare not in use is marked added and bootstrapped by a child
  process, ``python -m bootstrapper.host add-node NAME``: its bus principal, then over SSH the same
  install, settings and ``join`` as ``aiot bootstrap`` does for any other host (its progress in
  ``AIOT_HOME/logs/spare-NAME.out``, replaced at its next bootstrap). The node id is the host's
  name; the node manager places work there once its agent announces itself. A bootstrap that
  fails frees the spare again (the next scale-out tries it once more) and its output's last lines
  go to the node manager's log.
- ``added_nodes``: the spares added (``AIOT_HOME/spares/added.json``), the nodes scale-in may remove.
- ``remove_node`` (scale-in, after the node manager drained it): over SSH, ``python -m
  bootstrapper.host down`` there stops what the join started; its bus principal is removed; the
  spare is free again.

A lost spare (its network gone) cannot be reached to stop anything: it stays added (its services
were moved by the node manager) until scale-in removes it once it answers again, or ``aiot destroy``.
Nothing here runs a thread: the node manager's control loop calls the hooks, and a spare's
bootstrap is a child process the next call reaps.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

from pydantic import BaseModel, Field

from bootstrapper.remote import SPARES_DIR, Bootstrap, SpareHost, SpareHosts, Target, read_spares
from platform_core.bus_access import BusAccess
from platform_sdk.bus import Bus
from platform_sdk.errors import Conflict, NotFound
from platform_sdk.principals import read_bus_secrets, secrets_path, write_bus_secrets
from platform_sdk.runstate import PRIVATE_FILE_MODE, private_dir, read_run_state
from platform_sdk.settings import Settings

log = logging.getLogger(__name__)
ADDED_FILE = "added.json"
# The node manager's own identity stays in the child (its bus principal may add agents); the
# agent's per-process variables do not.
_PER_PROCESS = ("AIOT_AGENT_PID", "AIOT_NODE_ID", "AIOT_PORT_")
OUTPUT_TAIL = 20


class AddedSpare(BaseModel):
    since: datetime
    pid: int | None = Field(default=None, description="the bootstrap's child process while it runs")


class AddedSpares(BaseModel):
    nodes: dict[str, AddedSpare] = Field(default_factory=dict)


def spare(spares: SpareHosts, name: str) -> SpareHost:
    for entry in spares.hosts:
        if entry.host.name == name:
            return entry
    known = ", ".join(entry.host.name for entry in spares.hosts) or "none"
    raise NotFound(f"no spare host {name!r} was handed to this host (spares: {known})")


def target_of(entry: SpareHost) -> Target:
    return Target(host=entry.host, python=entry.python, root=entry.root)


class SpareScaleOut:
    """The node manager's provider hooks on a main host with spare hosts (see the module)."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._folder = settings.home_dir / SPARES_DIR
        self._children: dict[str, subprocess.Popen[bytes]] = {}

    @classmethod
    def of(cls, settings: Settings) -> SpareScaleOut | None:
        """The hooks where this home was handed spare hosts (their list may still be empty), else None."""
        return cls(settings) if read_spares(settings) is not None else None

    @property
    def spares(self) -> SpareHosts:
        """The spare hosts as handed over now (read at each use: the bootstrap completes the list
        once the hosts it starts have joined; a later bootstrap may change it)."""
        return read_spares(self.settings) or SpareHosts(release="", python="", hosts=[])

    # the record of added spares ---------------------------------------------------------------
    def _read(self) -> AddedSpares:
        try:
            return AddedSpares.model_validate_json((self._folder / ADDED_FILE).read_bytes())
        except FileNotFoundError:
            return AddedSpares()

    def _write(self, added: AddedSpares) -> None:
        private_dir(self._folder)
        path = self._folder / ADDED_FILE
        temporary = path.with_suffix(".tmp")
        temporary.write_text(added.model_dump_json(indent=1))
        temporary.chmod(PRIVATE_FILE_MODE)
        temporary.replace(path)

    def _log_file(self, name: str) -> Path:
        return self.settings.home_dir / "logs" / f"spare-{name}.out"

    def _reap(self) -> AddedSpares:
        """Ended bootstraps: a failed one frees its spare (and says why); the record after that."""
        added = self._read()
        for name, child in list(self._children.items()):
            code = child.poll()
            if code is None:
                continue
            del self._children[name]
            entry = added.nodes.get(name)
            if code == 0:
                if entry is not None:
                    entry.pid = None
                log.warning("scale-out: spare host %s bootstrapped and joined", name)
                continue
            added.nodes.pop(name, None)
            tail = self._tail(name)
            log.error("scale-out: the bootstrap of spare host %s failed (exit %s):\n%s", name, code, tail)
        self._write(added)
        return added

    def _tail(self, name: str) -> str:
        try:
            lines = self._log_file(name).read_text(errors="replace").splitlines()
        except OSError:
            return "(no output)"
        return "\n".join(lines[-OUTPUT_TAIL:]) or "(no output)"

    # the hooks ------------------------------------------------------------------------------------
    def add_node(self) -> str | None:
        """Start bootstrapping the first spare host not in use; its node id (the host's name)."""
        added = self._reap()
        spares = self.spares
        free = [entry.host.name for entry in spares.hosts if entry.host.name not in added.nodes]
        if not spares.complete:
            log.warning("scale-out: no spare host yet (the bootstrap hands them over once its hosts joined)")
            return None
        if not spares.hosts:
            log.warning(
                "scale-out: this platform has no spare host; add one to the inventory (spare = true) "
                "and run `aiot bootstrap` again"
            )
            return None
        if not free:
            log.warning("scale-out: every spare host is in use (%s)", ", ".join(sorted(added.nodes)))
            return None
        name = free[0]
        log_file = self._log_file(name)
        private_dir(log_file.parent)
        environment = {key: value for key, value in os.environ.items() if not key.startswith(_PER_PROCESS)}
        with open(log_file, "wb") as output:  # this bootstrap's lines only: one file per spare, bounded
            child = subprocess.Popen(
                [sys.executable, "-m", "bootstrapper.host", "add-node", name],
                stdin=subprocess.DEVNULL,
                stdout=output,
                stderr=subprocess.STDOUT,
                env=environment,
                start_new_session=True,  # it finishes the bootstrap if the node manager stops meanwhile
            )
        self._children[name] = child
        added.nodes[name] = AddedSpare(since=datetime.now(UTC), pid=child.pid)
        self._write(added)
        log.warning("scale-out: bootstrapping spare host %s over SSH (see %s)", name, log_file)
        return name

    def added_nodes(self) -> list[str]:
        return sorted(self._reap().nodes)

    def remove_node(self, node_id: str) -> None:
        """Stop what the platform runs on a drained spare, remove its bus principal, free it."""
        added = self._reap()
        if node_id not in added.nodes:
            raise Conflict(f"node {node_id!r} is not a spare host scale-out added: it cannot be removed")
        spares = self.spares
        entry = spare(spares, node_id)
        Bootstrap(self.settings, log.info, host_settings=spares.settings).destroy_hosts([target_of(entry)])
        state = read_run_state(self.settings)
        secrets = read_bus_secrets(self.settings)
        if state is not None and secrets is not None and secrets.bootstrap == state.broker:
            BusAccess(Bus(self.settings, source=self.settings.service_id or "aiot")).remove_agent(
                secrets, node_id
            )
            write_bus_secrets(secrets_path(self.settings), secrets)
        added.nodes.pop(node_id, None)
        self._write(added)
