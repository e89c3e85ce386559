"""``python -m bootstrapper.host``: what ``aiot bootstrap`` runs on a host over SSH, from its release.

Each subcommand works on this host's home (``AIOT_HOME``, settings in ``AIOT_CONFIG_FILE``) through
the local provider's machinery (``bootstrapper.local.LocalPlatform``), prints ``progress: ...``
lines as it goes and, last, one ``result: {json}`` line the bootstrapper reads:

- ``main --remote-nodes b,c``: the main host: broker, registry, the main node's agent with the node
  manager and the monitor, the roster's services; the other hosts' agents' bus principals. Already
  running: nothing is started (``changed`` false). The result carries each other node's secrets
  (its agent's principal and the shared ``platform`` one), for the bootstrapper to copy there.
- ``join --broker ADDR --web-url URL``: another host: its one agent (``agent.node_id``), joined
  to the main host's broker. Already running: nothing is started.
- ``add-node NAME``: (main host) bootstrap the spare host NAME over SSH and join it, as ``aiot
  bootstrap`` does another host: run by the node manager's scale-out (``bootstrapper.spares``).
- ``broker [--wait]``: this host's member of the bootstrap's Kafka cluster (``bootstrapper.cluster``),
  started unless it runs; ``--wait``: until the cluster answers here.
- ``down [--purge]``: stops what ``main``, ``join`` or ``broker`` started here (nothing else);
  ``--purge`` (``aiot destroy``) also removes the Kafka member's log dir (a systemd unit's stop
  keeps it: the member rejoins at the next boot).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from bootstrapper.cluster import start_member, stop_member
from bootstrapper.local import LocalPlatform
from bootstrapper.remote import Bootstrap, Release, read_spares
from bootstrapper.spares import spare, target_of
from platform_core.bus_access import BusAccess
from platform_sdk.bus import Bus
from platform_sdk.errors import PlatformError
from platform_sdk.principals import (
    SHARED_PLATFORM,
    BusSecrets,
    agent_principal,
    bus_secrets_document,
    read_bus_secrets,
    secrets_path,
    service_principal,
    write_bus_secrets,
)
from platform_sdk.runstate import read_run_state
from platform_sdk.settings import Settings, get_settings, temporary_settings

RESULT = "result: "
PROGRESS = "progress: "


def _progress(step: str) -> None:
    print(PROGRESS + step, flush=True)


def _node_secrets(settings: Settings, broker: str, nodes: list[str]) -> dict[str, dict[str, Any]]:
    """For each other node: a secrets file with its agent's principal and the shared one (for the
    platform processes it may run without their own, simulators), its agent's as the default."""
    found = read_bus_secrets(settings)
    if found is None or found.bootstrap != broker:
        return {}  # a bus without SASL: nothing to hand out
    prefix = settings.kafka.topic_prefix
    missing = [node for node in nodes if agent_principal(prefix, node) not in found.principals]
    if missing:  # a host added to the inventory after the main host started
        with temporary_settings({"kafka.bootstrap_servers": broker}) as current:
            access = BusAccess(Bus(current, source="aiot-bootstrap"))
            for node in missing:
                access.add_agent(found, node)
            write_bus_secrets(secrets_path(current), found)
            access.wait_usable(found, agent_principal(prefix, missing[-1]))
    shared = service_principal(prefix, SHARED_PLATFORM)
    result: dict[str, dict[str, Any]] = {}
    for node in nodes:
        agent = agent_principal(prefix, node)
        names = [agent] + ([shared] if shared in found.principals else [])
        subset = BusSecrets(
            bootstrap=found.bootstrap,
            admin=agent,
            mechanism=found.mechanism,
            security_protocol=found.security_protocol,
            principals={name: found.principals[name] for name in names},
        )
        result[node] = bus_secrets_document(subset)
    return result


def _main(settings: Settings, remote_nodes: list[str]) -> dict[str, Any]:
    platform = LocalPlatform(settings)
    generated = None
    changed = not platform.is_running()
    if changed:
        result = platform.up(
            _progress,
            nodes=1,
            runtime=settings.agent.runtime,
            timeout=settings.bootstrap.ready_timeout_s,
            remote_nodes=remote_nodes,
        )
        state, generated = result.state, result.generated_password
    else:
        found = read_run_state(settings)
        assert found is not None
        state = found
    assert state.broker is not None
    return {
        "changed": changed,
        "broker": state.broker,
        "web_url": state.web_url,
        "http_url": state.nodes[0].http_url,
        "generated_password": generated,
        "secrets": _node_secrets(settings, state.broker, remote_nodes),
    }


def _join(settings: Settings, broker: str, web_url: str) -> dict[str, Any]:
    platform = LocalPlatform(settings)
    changed = not platform.is_running()
    if changed:
        state = platform.join(broker, web_url, _progress)
    else:
        found = read_run_state(settings)
        assert found is not None
        state = found
    return {"changed": changed, "http_url": state.nodes[0].http_url}


def _add_node(settings: Settings, name: str) -> dict[str, Any]:
    spares = read_spares(settings)
    state = read_run_state(settings)
    if spares is None or state is None or not state.main or state.broker is None or state.web_url is None:
        raise PlatformError("add-node runs on a main host that `aiot bootstrap` handed spare hosts")
    entry = spare(spares, name)
    release = Release.installed(Path(spares.release), spares.python)
    _progress(f"{name}: its bus principal")
    secrets = _node_secrets(settings, state.broker, [name]).get(name)
    runner = Bootstrap(settings, _progress, host_settings=spares.settings)
    joined = runner.join(target_of(entry), release, state.broker, state.web_url, secrets)
    return {"changed": True, "node": joined.model_dump(mode="json")}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bootstrapper.host", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    main_command = commands.add_parser("main")
    main_command.add_argument("--remote-nodes", default="")
    join_command = commands.add_parser("join")
    join_command.add_argument("--broker", required=True)
    join_command.add_argument("--web-url", required=True)
    add_command = commands.add_parser("add-node")
    add_command.add_argument("name")
    broker_command = commands.add_parser("broker")
    broker_command.add_argument("--wait", action="store_true")
    down_command = commands.add_parser("down")
    down_command.add_argument("--purge", action="store_true", help="also remove the Kafka member's data")
    args = parser.parse_args(argv)
    settings = get_settings()
    try:
        if args.command == "main":
            result = _main(settings, [node for node in args.remote_nodes.split(",") if node])
        elif args.command == "join":
            result = _join(settings, args.broker, args.web_url)
        elif args.command == "add-node":
            result = _add_node(settings, args.name)
        elif args.command == "broker":
            result = {"changed": start_member(settings, _progress, wait=args.wait)}
        else:
            stopped = LocalPlatform(settings).down(_progress)
            result = {"stopped": stopped + stop_member(settings, _progress, purge=args.purge)}
    except PlatformError as exc:
        print(f"error: {exc}", flush=True)
        return 1
    print(RESULT + json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
