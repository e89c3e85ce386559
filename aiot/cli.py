"""The ``aiot`` command line.

Every command has ``--help``; every listing takes ``--json`` and then prints
one JSON document on stdout. Errors print one red line with what to do next
and exit non-zero; ``aiot --debug ...`` adds the traceback.

Several users share one AIOT_HOME: ``aiot login NAME`` saves a session per
user, ``aiot --as NAME ...`` (or ``AIOT_PROFILE``) picks one, a token in
``AIOT_TOKEN`` overrides them; see ``aiot.client`` for where sessions live.
"""

from __future__ import annotations

import os
import secrets
import signal
import socket
import sys
import threading
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING, Annotated, Any

import click
import requests
import typer
from rich.console import Console, Group
from rich.live import Live
from rich.table import Table
from rich.text import Text

from aiot.app_commands import app_app, run_sample_apps
from aiot.client import (
    DEFAULT_PROFILE,
    PROFILE_ENV,
    PROFILE_NAME,
    TOKEN_ENV,
    Credentials,
    PlatformClient,
    choose_profile,
    current_caller,
    forget_credentials,
    front_door_url,
    load_credentials,
    login_profile,
    save_credentials,
    saved_sessions,
)
from aiot.device_commands import device_app, location_app, register_sample_devices
from aiot.log_reading import (
    FollowOption,
    GrepOption,
    LevelOption,
    LimitOption,
    SinceOption,
    UntilOption,
    print_logs,
)
from aiot.model_commands import deploy_examples, model_app
from aiot.output import JsonOption, out, print_json
from aiot.schedule_commands import instance_app, mail_app, schedule_app
from platform_sdk.errors import BadRequest, NotFound, PlatformError, Unauthorized, Unavailable
from platform_sdk.principals import kafka_credential
from platform_sdk.roles import Role
from platform_sdk.runstate import RunState, kafka_address, read_run_state
from platform_sdk.settings import Settings, get_settings, settings_reference

if TYPE_CHECKING:
    from bootstrapper.local import LocalPlatform


app = typer.Typer(
    help="AIoT platform: run it, and manage users, models, devices and apps.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
user_app = typer.Typer(help="Manage users (platform configurers only).", no_args_is_help=True)
app.add_typer(user_app, name="user")
app.add_typer(model_app, name="model")
app.add_typer(device_app, name="device")
app.add_typer(location_app, name="location")
app.add_typer(app_app, name="app")
app.add_typer(schedule_app, name="schedule")
app.add_typer(instance_app, name="instance")
app.add_typer(mail_app, name="mail")


@dataclass
class CliState:
    debug: bool = False


@app.callback()
def root(
    ctx: typer.Context,
    debug: Annotated[bool, typer.Option("--debug", help="Show tracebacks on errors.")] = False,
    as_profile: Annotated[
        str | None,
        typer.Option(
            "--as",
            metavar="NAME",
            help="Act as this saved session: a profile (`aiot login NAME` saves one per user), or the "
            "user of the default session. AIOT_PROFILE does the same; AIOT_TOKEN gives a token instead "
            "(--as wins over both).",
            show_default=False,
        ),
    ] = None,
) -> None:
    """AIoT platform command line. AIOT_HOME selects the platform (default ~/.aiot)."""
    ctx.ensure_object(CliState).debug = debug
    choose_profile(as_profile)


def _settings() -> Settings:
    return get_settings()


def _local_platform(settings: Settings) -> LocalPlatform:
    # Imported on use: the bootstrapper pulls in SQLAlchemy and Alembic, which would
    # add a second to every command that only talks to the front door.
    from bootstrapper.local import LocalPlatform

    return LocalPlatform(settings)


@app.command("version")
def show_version() -> None:
    """Print the platform's version."""
    try:
        found = version("aiot-platform")
    except PackageNotFoundError:
        found = "unknown (not installed)"
    out().print(f"aiot-platform {found}")


@app.command("settings")
def show_settings(
    reference: Annotated[
        bool, typer.Option("--reference", help="Print every setting's documentation.")
    ] = False,
) -> None:
    """Print the settings in force as JSON (secrets masked), or the reference of all settings."""
    if reference:
        sys.stdout.write(settings_reference())
        return
    sys.stdout.write(_settings().model_dump_json(indent=2) + "\n")


class BrokerName(StrEnum):
    kafka = "kafka"
    tansu = "tansu"


def _broker_label(state: RunState) -> str:
    if not state.broker_embedded:
        return ""
    return " (Apache Kafka, started here)" if state.broker_kind == "kafka" else " (bundled Tansu, in memory)"


class RuntimeName(StrEnum):
    process = "process"
    docker = "docker"


@app.command()
def up(
    detach: Annotated[bool, typer.Option("--detach", "-d", help="Return once everything answers.")] = False,
    nodes: Annotated[int, typer.Option(min=1, max=16, help="Service agents (nodes) to start.")] = 2,
    runtime: Annotated[RuntimeName, typer.Option(help="How agents run services.")] = RuntimeName.process,
    timeout: Annotated[float, typer.Option(help="Seconds to wait for every service to answer.")] = 90.0,
    broker: Annotated[
        BrokerName | None,
        typer.Option(
            help="Broker to start when no Kafka address is configured: kafka (Apache Kafka, needs Java "
            "17+), tansu (bundled, in memory, short sessions only); default: the setting kafka.broker "
            "(auto: kafka where Java 17+ is found)."
        ),
    ] = None,
    demo: Annotated[
        bool,
        typer.Option(
            help="Also deploy the sample models, register the sample locations and devices, "
            "and run the sample apps there."
        ),
    ] = False,
) -> None:
    """Start the platform here: broker (if none configured), N agents, and every service on them."""
    # Every process of the platform inherits this environment: a user's token stays out of it.
    for variable in (TOKEN_ENV, PROFILE_ENV):
        os.environ.pop(variable, None)
    settings = _settings()
    console = out()
    platform = _local_platform(settings)
    with console.status("starting the platform") as status:
        result = platform.up(
            progress=status.update,
            nodes=nodes,
            runtime=runtime.value,
            timeout=timeout,
            broker=broker.value if broker else None,
        )
    state = result.state
    console.print(f"[green]platform up[/] from {settings.home_dir}")
    console.print(f"  portal      {state.web_url}/  (sign in with a platform user in a browser)")
    console.print(f"  API         {state.web_url}/api  (document: {state.web_url}/api/openapi.json)")
    console.print(f"  kafka       {state.broker}{_broker_label(state)}")
    if state.broker_embedded and state.broker_kind == "tansu":
        from bootstrapper.broker import TANSU_NOTE

        console.print(f"[yellow]{TANSU_NOTE}[/]")
    if not state.bus_authenticated:
        console.print(f"[yellow]{UNAUTHENTICATED_BUS}[/]")
    _log_in_first_configurer(settings, state.web_url or "", result.generated_password, console)
    if demo:
        console.print("demo: sample models")
        deploy_examples(PlatformClient.from_settings(settings), console)
        console.print("demo: sample locations and devices")
        register_sample_devices(PlatformClient.from_settings(settings), console)
        console.print("demo: sample apps, each run now at a location that has its devices")
        run_sample_apps(PlatformClient.from_settings(settings), console)
    if detach:
        console.print("stop it with `aiot down`")
        return
    console.print("press Ctrl-C to stop")
    _wait_until_interrupted_or_dead(platform, settings, console)
    with console.status("stopping the platform") as status:
        platform.down(progress=status.update)
    console.print("platform stopped")


def _log_in_first_configurer(settings: Settings, url: str, generated: str | None, console: Console) -> None:
    auth = settings.auth
    password = generated or (auth.admin_password.get_secret_value() if auth.admin_password else None)
    if generated:
        name = auth.admin_username
        console.print(f"[bold yellow]first platform configurer '{name}' created; password, shown once:[/]")
        console.print(f"    {generated}")
    if password and load_credentials(settings) is None:
        reply = PlatformClient(url).post(
            "/api/auth/login",
            json={"username": auth.admin_username, "password": password, "token_name": "aiot-up"},
        )
        save_credentials(settings, Credentials(url=url, username=auth.admin_username, token=reply["token"]))
        console.print(f"this CLI is logged in as '{auth.admin_username}'")


def _wait_until_interrupted_or_dead(platform: LocalPlatform, settings: Settings, console: Console) -> None:
    """A live status view (on a terminal) until Ctrl-C, SIGTERM, or a node's agent dies."""
    interrupted = threading.Event()

    def on_signal(_signum: int, _frame: FrameType | None) -> None:
        interrupted.set()

    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        with Live(console=console, refresh_per_second=1, transient=True) as live:
            while not interrupted.wait(settings.cli.live_refresh_s):
                dead = [process.name for process in platform.status() if not process.running]
                if dead:
                    console.print(f"[red]{', '.join(dead)} exited; stopping the platform[/]")
                    return
                if console.is_terminal:
                    live.update(_status_view(status_document(settings)))
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


@app.command()
def down() -> None:
    """Stop everything this AIOT_HOME started."""
    console = out()
    platform = _local_platform(_settings())
    with console.status("stopping the platform") as status:
        stopped = platform.down(progress=status.update)
    console.print(f"stopped: {', '.join(stopped)}" if stopped else "nothing was running")


class ProviderName(StrEnum):
    ssh = "ssh"
    azure = "azure"


@app.command()
def bootstrap(
    provider: Annotated[ProviderName, typer.Option(help="Where the hosts come from.")],
    config: Annotated[
        Path,
        typer.Option(
            help="The provider's config: for ssh an inventory file, for azure its TOML (docs/deploy.md)."
        ),
    ],
) -> None:
    """Install the platform on a provider's hosts over SSH and start it there (again: changes nothing).

    With azure the VMs that are missing are made first (docs/deploy-azure.md).
    """
    from bootstrapper.ssh import SshProvider  # lazy: see _local_platform

    settings = _settings()
    console = out()
    if provider is ProviderName.azure:
        from bootstrapper.azure import AzureProvider, load_azure_config, ssh_platform

        azure_config = load_azure_config(config)
        with AzureProvider(azure_config, settings=settings.azure) as azure:
            hosts = azure.ensure_hosts(console.print)
        platform = ssh_platform(azure_config, config, hosts, settings)
    else:
        platform = SshProvider.from_file(config, settings)
    runner = platform.bootstrapper(console.print)
    record = platform.bootstrap_with(runner)
    console.print(f"[green]platform up[/] on {', '.join(node.name for node in record.nodes)}")
    console.print(f"  portal      {record.web_url}/")
    console.print(f"  kafka       {record.broker}")
    _log_in_first_configurer(settings, record.web_url or "", runner.generated_password, console)


def nodes_document(settings: Settings) -> list[dict[str, Any]]:
    """The bootstrapped hosts' nodes, each asked for its load and services (`aiot nodes --json`)."""
    from bootstrapper.remote import read_record

    record = read_record(settings)
    if record is None:
        raise NotFound("no platform was bootstrapped from this AIOT_HOME; see `aiot bootstrap --help`")
    views = []
    for node in record.nodes:
        view = _node_view(node.name, node.http_url)
        views.append(
            {
                **view["node"],
                "address": node.address,
                "main": node.main,
                "added": False,
                "services": view["services"],
            }
        )
    return views + _added_nodes(settings, {node.name for node in record.nodes})


def _added_nodes(settings: Settings, bootstrapped: set[str]) -> list[dict[str, Any]]:
    """The nodes scale-out added (spare hosts), as the main host's node manager last heard of them
    (`GET /api/nodes` with the CLI's session); none when the front door cannot be asked."""
    try:
        listed = PlatformClient.from_settings(settings).get("/api/nodes")["nodes"]
    except (PlatformError, requests.RequestException, KeyError, TypeError):
        return []
    return [
        {
            "node_id": node["node_id"],
            "http_url": None,
            "reachable": node["state"] == "up",
            "load": {"cpu_percent": node["cpu_percent"], "memory_used_mb": node["memory_used_mb"]},
            "address": node["host"],
            "main": False,
            "added": True,
            "services": [{"service_id": x["service_id"], "state": x["state"]} for x in node["services"]],
        }
        for node in listed
        if node["node_id"] not in bootstrapped
    ]


@app.command()
def nodes(as_json: JsonOption = False) -> None:
    """The nodes of the platform `aiot bootstrap` installed: up or unreachable, load, services."""
    document = nodes_document(_settings())
    if as_json:
        print_json(document)
        return
    table = Table("node", "address", "state", "cpu %", "memory MB", "services", title="nodes")
    for node in document:
        load = node.get("load") or {}
        table.add_row(
            node["node_id"] + (" (main)" if node["main"] else " (added)" if node["added"] else ""),
            node["address"],
            "[green]up[/]" if node["reachable"] else "[red]unreachable[/]",
            str(load.get("cpu_percent", "")),
            str(load.get("memory_used_mb", "")),
            ", ".join(service["service_id"] for service in node["services"]),
        )
    out().print(table)


@app.command()
def destroy(
    config: Annotated[
        Path | None,
        typer.Option(help="The inventory or azure config; default: the one `aiot bootstrap` used."),
    ] = None,
    provider: Annotated[
        ProviderName | None, typer.Option(help="Default: the one `aiot bootstrap` used, else ssh.")
    ] = None,
) -> None:
    """Stop exactly what `aiot bootstrap` started on each host (the main host first); with azure,
    then remove the VMs and everything else the provider made."""
    from bootstrapper.remote import RemoteError, clear_record, read_record
    from bootstrapper.ssh import SshProvider

    settings = _settings()
    record = read_record(settings)
    if config is None:
        if record is None:
            raise NotFound(
                "no platform was bootstrapped from this AIOT_HOME: name its inventory with --config"
            )
        config = Path(record.config)
    if provider is None:
        recorded = record.provider if record is not None else ProviderName.ssh.value
        provider = ProviderName(recorded) if recorded in ProviderName.__members__ else ProviderName.ssh
    console = out()
    if provider is ProviderName.azure:
        from bootstrapper.azure import AzureProvider, load_azure_config, ssh_platform

        azure_config = load_azure_config(config)
        stopped: list[str] = []
        with AzureProvider(azure_config, settings=settings.azure) as azure:
            hosts = azure.list_hosts()
            try:
                if hosts:
                    stopped = ssh_platform(azure_config, config, hosts, settings).destroy(console.print)
            except RemoteError as exc:  # the VMs go anyway: what ran on them goes with them
                console.print(f"[yellow]the platform was not stopped first:[/] {exc}")
            removed = azure.destroy(console.print)
        console.print(f"removed from Azure: {', '.join(removed)}" if removed else "nothing left in Azure")
    else:
        stopped = SshProvider.from_file(config, settings).destroy(console.print)
    clear_record(settings)
    console.print(f"stopped: {', '.join(stopped)}" if stopped else "nothing was running")


def status_document(settings: Settings) -> dict[str, Any]:
    """What `aiot status --json` prints for the home of ``settings``."""
    state = read_run_state(settings)
    processes = _local_platform(settings).status()
    nodes = [_node_view(node.node_id, node.http_url) for node in state.nodes] if state else []
    return {
        "home": str(settings.home_dir),
        "running": any(process.running for process in processes),
        "web_url": state.web_url if state else None,
        "broker": state.broker if state else None,
        "bus_authenticated": state.bus_authenticated if state else None,
        "runtime": state.runtime if state else None,
        "processes": [
            {"name": p.name, "pid": p.pid, "running": p.running, "log_file": p.log_file} for p in processes
        ],
        "nodes": [node["node"] for node in nodes],
        "services": [service for node in nodes for service in node["services"]],
        "incidents": _recent_incidents(settings, state.broker if state else None),
    }


INCIDENTS_SHOWN = 10
UNAUTHENTICATED_BUS = (
    "the bus is unauthenticated: single-user, anyone who reaches the broker can send anything "
    "(docs/security.md)"
)


def _recent_incidents(settings: Settings, broker: str | None) -> list[dict[str, Any]]:
    """The newest incidents (the heartbeat monitor's decisions, the node manager's moves), oldest first."""
    if not broker:
        return []
    from platform_core.nodes import recent_incidents
    from platform_sdk.bus import Bus

    bus = Bus(
        settings.model_copy(update={"kafka": settings.kafka.model_copy(update={"bootstrap_servers": broker})})
    )
    try:
        return [note.model_dump(mode="json") for note in recent_incidents(bus, INCIDENTS_SHOWN, 3.0)]
    except PlatformError:
        return []  # the broker does not answer: the services' table says enough
    finally:
        bus.close()


def _status_view(document: dict[str, Any]) -> Group:
    """Nodes with their load, then services with where and how they run."""
    node_table = Table("node", "state", "cpu %", "memory MB", "services", "address", title="nodes")
    for node in document["nodes"]:
        load = node.get("load") or {}
        node_table.add_row(
            node["node_id"],
            "[green]up[/]" if node["reachable"] else "[red]unreachable[/]",
            str(load.get("cpu_percent", "")),
            str(load.get("memory_used_mb", "")),
            f"{load.get('services', '')}/{load.get('capacity', '')}",
            node["http_url"],
        )
    service_table = Table(
        "service", "node", "runtime", "pid / container", "state", "uptime", "restarts", title="services"
    )
    for service in document["services"]:
        service_table.add_row(
            service["service_id"],
            service["node_id"],
            service["runtime"],
            str(service["pid"] or (service["container_id"] or "")[:12]),
            service["state"],
            _uptime(service["started_at"]) if service["state"] == "running" else "",
            str(service["restarts"]),
        )
    parts: list[Table | Text] = [node_table, service_table]
    if document.get("incidents"):
        incident_table = Table("time", "service", "node", "incident", "detail", title="recent incidents")
        for incident in document["incidents"]:
            incident_table.add_row(
                datetime.fromisoformat(incident["time"]).astimezone().strftime("%H:%M:%S"),
                incident["service_id"],
                incident["node_id"] or "",
                incident["kind"],
                incident["detail"].splitlines()[0][:100],
            )
        parts.append(incident_table)
    parts.append(Text(f"portal {document['web_url']}/   kafka {document['broker']}"))
    if document["bus_authenticated"] is False:
        parts.append(Text(UNAUTHENTICATED_BUS, style="yellow"))
    return Group(*parts)


@app.command()
def status(as_json: JsonOption = False) -> None:
    """Show what runs for this AIOT_HOME: processes, nodes with their load, services with their state."""
    settings = _settings()
    document = status_document(settings)
    if as_json:
        print_json(document)
        return
    if not document["processes"]:
        out().print(f"no platform is running from {settings.home_dir}; start one with `aiot up`")
        return
    out().print(_status_view(document))


def _node_view(node_id: str, http_url: str) -> dict[str, Any]:
    """A node's load and services, asked from its agent (node-internal HTTP on this machine)."""
    node: dict[str, Any] = {"node_id": node_id, "http_url": http_url, "reachable": False, "load": None}
    services: list[dict[str, Any]] = []
    try:
        node["load"] = requests.get(f"{http_url}/load", timeout=2).json()
        services = requests.get(f"{http_url}/services", timeout=2).json()["services"]
        node["reachable"] = True
    except (requests.RequestException, ValueError, KeyError):
        pass
    return {"node": node, "services": services}


def _uptime(started_at: str | None) -> str:
    if not started_at:
        return ""
    seconds = int((datetime.now(UTC) - datetime.fromisoformat(started_at)).total_seconds())
    return f"{seconds // 3600}h{seconds // 60 % 60:02d}m{seconds % 60:02d}s"


@app.command()
def restart(service: Annotated[str, typer.Argument(help="Service id, as `aiot status` shows it.")]) -> None:
    """Restart a running service where it runs."""
    settings = _settings()
    state = read_run_state(settings)
    nodes = [_node_view(node.node_id, node.http_url) for node in state.nodes] if state else []
    where = next((s["node_id"] for n in nodes for s in n["services"] if s["service_id"] == service), None)
    if where is None:
        raise NotFound(f"no service {service!r} runs on this platform; see `aiot status`")
    from bootstrapper.control import restart_service  # lazy: see _local_platform

    with out().status(f"restarting {service} on {where}"):
        restarted = restart_service(settings, where, service)
    out().print(f"{service} restarted on {where} (pid {restarted.pid or restarted.container_id})")


broker_app = typer.Typer(
    help="The Kafka broker: which one this platform uses and whether it answers; fetch Apache Kafka.",
    no_args_is_help=False,
)
app.add_typer(broker_app, name="broker")


@broker_app.callback(invoke_without_command=True)
def broker(ctx: typer.Context, as_json: JsonOption = False) -> None:
    """Show the Kafka broker this platform uses and whether it answers."""
    if ctx.invoked_subcommand is not None:
        return
    settings = _settings()
    address = kafka_address(settings)
    state = read_run_state(settings)
    started_here = bool(state and state.broker_embedded and not settings.kafka.bootstrap_servers)
    document: dict[str, Any] = {
        "bootstrap_servers": address,
        "embedded": started_here,
        "kind": state.broker_kind if state and started_here else "kafka",
        "reachable": False,
    }
    if address:
        from bootstrapper.broker import wait_for_broker  # lazy: see _local_platform

        try:
            wait_for_broker(address, timeout=3, credential=kafka_credential(settings, address))
            document["reachable"] = True
        except Unavailable as exc:
            document["error"] = exc.message
    if as_json:
        print_json(document)
        return
    if not address:
        raise Unavailable("no broker configured or running: start the platform with `aiot up`")
    mark = (
        "[green]answers[/]" if document["reachable"] else f"[red]does not answer[/] ({document.get('error')})"
    )
    if not started_here:
        kind = "external Kafka"
    else:
        kind = (
            "Apache Kafka, started by aiot up" if document["kind"] == "kafka" else "bundled Tansu, in memory"
        )
    out().print(f"{address} ({kind}) {mark}")


@broker_app.command("fetch")
def broker_fetch(
    require: Annotated[
        bool, typer.Option("--require", help="Fail (instead of noting it) when Java 17+ or Maven is missing.")
    ] = False,
) -> None:
    """Fetch the Apache Kafka broker's jars from Maven Central into the per-machine cache (once)."""
    from bootstrapper.kafka import fetch_jars, jars_dir, jars_ready, java_ok  # lazy: see _local_platform

    kafka = _settings().kafka
    console = out()
    if not java_ok(kafka):
        message = f"no Java 17+ ('{kafka.java}'): `aiot up` will use the bundled Tansu broker"
        if require:
            raise Unavailable(message + "; install a JDK 17+ (apt-get install openjdk-17-jre-headless)")
        console.print(f"[yellow]{message}[/]")
        return
    if jars_ready(kafka):
        console.print(f"Apache Kafka {kafka.kafka_version} jars already in {jars_dir(kafka)}")
        return
    try:
        with console.status("fetching Apache Kafka") as status:
            target = fetch_jars(kafka, status.update)
    except Unavailable as exc:
        if require:
            raise
        console.print(f"[yellow]{exc.message}; `aiot up` will use the bundled Tansu broker[/]")
        return
    console.print(f"Apache Kafka {kafka.kafka_version} jars in {target}")


@app.command()
def logs(
    service: Annotated[str | None, typer.Argument(help="Only this service id.")] = None,
    level: LevelOption = None,
    since: SinceOption = None,
    until: UntilOption = None,
    grep: GrepOption = None,
    limit: LimitOption = 200,
    follow: FollowOption = False,
    as_json: JsonOption = False,
) -> None:
    """Print collected logs of the platform's services."""
    print_logs(
        PlatformClient.from_settings(_settings()),
        [service] if service else None,
        level=level,
        since=since,
        until=until,
        grep=grep,
        limit=limit,
        follow=follow,
        as_json=as_json,
    )


def _on_terminal() -> bool:
    return sys.stdin is not None and sys.stdin.isatty()


PASSWORD_SOURCES = "pass --password, pipe it on stdin, or run on a terminal"


def _read_password(prompt: str, sources: str = PASSWORD_SOURCES) -> str:
    """A password typed on the terminal (hidden), else the next line of stdin (for scripts)."""
    if _on_terminal():
        return str(typer.prompt(prompt, hide_input=True))
    line = sys.stdin.readline().rstrip("\r\n") if sys.stdin is not None else ""
    if not line:
        raise BadRequest(f"no {prompt.lower()}: {sources}")
    return line


@app.command()
def login(
    username: Annotated[
        str | None, typer.Argument(help="Your user name (asked for on a terminal).", show_default=False)
    ] = None,
    password: Annotated[
        str | None,
        typer.Option(
            help="Your password. Without it: asked for on a terminal, else the first line of stdin.",
            show_default=False,
        ),
    ] = None,
    username_option: Annotated[str | None, typer.Option("--username", hidden=True)] = None,
) -> None:
    """Log in and save the session; one session per user, so several users share this AIOT_HOME.

    The session goes to the profile `--as` (or AIOT_PROFILE) names; without one, to the default
    session when it is free or already yours, else to a profile named after you (use it with
    `aiot --as NAME ...`). Taking a saved session's place revokes its token.
    """
    settings = _settings()
    name = username or username_option
    if not name:
        if not _on_terminal():
            raise BadRequest("no user name: run `aiot login NAME`")
        name = str(typer.prompt("Username"))
    if not PROFILE_NAME.match(name):
        raise BadRequest(f"{name!r} is not a user name: use lowercase letters, digits, '.', '_' or '-'")
    secret = password if password is not None else _read_password("Password")
    profile = login_profile(settings, name)
    earlier = load_credentials(settings, profile)
    client = PlatformClient(front_door_url(settings, earlier or load_credentials(settings)))
    body = {
        "username": name,
        "password": secret,
        "token_name": f"aiot-cli {profile}@{socket.gethostname()}"[:64],
        "replaces": earlier.token if earlier else None,
    }
    reply = client.post("/api/auth/login", json=body)
    save_credentials(settings, Credentials(url=client.url, username=name, token=reply["token"]), profile)
    console = out()
    console.print(f"logged in as {name} ({reply['user']['role']})")
    if profile != DEFAULT_PROFILE:
        console.print(
            f"session saved as profile '{profile}': use it with `aiot --as {profile} ...` "
            f"or {PROFILE_ENV}={profile}"
        )
    if earlier is not None:
        fate = "its token is revoked" if reply.get("replaced") is not None else "its token was unknown here"
        console.print(f"replaced the earlier session of {earlier.username} ({fate})")
    if os.environ.get(TOKEN_ENV, "").strip():
        console.print(f"[yellow]{TOKEN_ENV} is set: commands use that token until you unset it[/]")


@app.command()
def logout() -> None:
    """Revoke the token of the session in use and forget it (`aiot --as NAME logout` for another)."""
    settings = _settings()
    try:
        caller = current_caller(settings)
    except Unauthorized:
        out().print("not logged in")
        return
    client = PlatformClient(front_door_url(settings, caller.saved), caller.token)
    try:
        client.post("/api/auth/logout")
    except Unauthorized:
        pass  # the token no longer works: nothing left to revoke
    except Unavailable as exc:
        raise Unavailable(
            f"{exc.message}; the session is kept so that its token can still be revoked: "
            "run `aiot logout` again once the platform answers"
        ) from exc
    if caller.saved is None:
        out().print(f"revoked the token in {TOKEN_ENV}; unset {TOKEN_ENV}")
        return
    forget_credentials(settings, caller.profile or DEFAULT_PROFILE)
    out().print(f"logged out {caller.saved.username} ({caller.describe()})")


@app.command()
def whoami(as_json: JsonOption = False) -> None:
    """Show whom this CLI acts as: the user, their role, and which session or token."""
    client = PlatformClient.from_settings(_settings())
    user = client.get("/api/auth/me")["user"]
    caller = client.caller
    assert caller is not None
    if as_json:
        print_json({"user": user, "profile": caller.profile, "url": client.url})
        return
    out().print(f"{user['username']} ({user['role']}), {caller.describe()}, at {client.url}")


@app.command()
def profiles(as_json: JsonOption = False) -> None:
    """List the sessions saved in this AIOT_HOME: profile, user, front door, and the one in use."""
    settings = _settings()
    try:
        in_use = current_caller(settings).profile
    except Unauthorized:
        in_use = None
    rows: list[dict[str, Any]] = [
        {"profile": profile, "username": saved.username, "url": saved.url, "in_use": profile == in_use}
        for profile, saved in saved_sessions(settings).items()
    ]
    if as_json:
        print_json(rows)
        return
    if not rows:
        out().print("no saved sessions: log in with `aiot login NAME`")
        return
    table = Table("", "profile", "user", "front door")
    for row in rows:
        table.add_row("*" if row["in_use"] else "", row["profile"], row["username"], row["url"])
    out().print(table)
    if os.environ.get(TOKEN_ENV, "").strip() and in_use is None:
        out().print(f"commands use the token in {TOKEN_ENV}")


NewPasswordOption = Annotated[
    str | None,
    typer.Option(
        help="The user's password. Without it: asked for on a terminal, else generated and "
        "printed once (alone on stdout).",
        show_default=False,
    ),
]


def _new_password(given: str | None) -> tuple[str, str | None]:
    """(password, the generated one or None): ``given``, else typed twice on a terminal, else generated."""
    if given is not None:
        return given, None
    if _on_terminal():
        return str(typer.prompt("Password", hide_input=True, confirmation_prompt=True)), None
    generated = secrets.token_urlsafe(12)
    return generated, generated


def _report(done: str, generated: str | None) -> None:
    """Say ``done``; a generated password goes alone to stdout (for scripts), said once on stderr."""
    if generated is None:
        out().print(done)
        return
    Console(stderr=True, highlight=False).print(
        f"{done}; the generated password, shown once, is on stdout", soft_wrap=True
    )
    typer.echo(generated)


@user_app.command("add")
def user_add(
    username: Annotated[str, typer.Argument(help="Lowercase letters, digits, '.', '_' or '-'.")],
    role: Annotated[Role, typer.Option(help="What the user may do.")],
    password: NewPasswordOption = None,
    email: Annotated[str | None, typer.Option(help="Where the platform sends notifications.")] = None,
) -> None:
    """Register a user with a role."""
    password, generated = _new_password(password)
    client = PlatformClient.from_settings(_settings())
    reply = client.post(
        "/api/users",
        json={"username": username, "password": password, "role": role.value, "email": email},
    )
    _report(f"user {reply['user']['username']} ({reply['user']['role']}) created", generated)


@user_app.command("reset-password")
def user_reset_password(
    username: Annotated[str, typer.Argument(help="The user whose password you set (not yourself).")],
    password: NewPasswordOption = None,
) -> None:
    """Set another user's password; every session and token of theirs is revoked."""
    password, generated = _new_password(password)
    client = PlatformClient.from_settings(_settings())
    reply = client.post(f"/api/users/{username}/password", json={"password": password})
    revoked = reply["revoked_tokens"]
    _report(f"password of {username} reset; {_tokens(revoked)} of theirs revoked", generated)


def _tokens(count: int) -> str:
    return f"{count} token" + ("" if count == 1 else "s")


@app.command("password")
def change_password() -> None:
    """Change your own password: the current one, then the new one twice (on a terminal; else the
    first two lines of stdin). Your other sessions and tokens are revoked; this one stays."""
    client = PlatformClient.from_settings(_settings())
    sources = "pipe the current and the new password on stdin, a line each, or run on a terminal"
    current = _read_password("Current password", sources)
    if _on_terminal():
        new = str(typer.prompt("New password", hide_input=True, confirmation_prompt=True))
    else:
        new = _read_password("New password", sources)
    reply = client.post("/api/auth/password", json={"current_password": current, "new_password": new})
    out().print(f"password changed; {_tokens(reply['revoked_tokens'])} of your other sessions revoked")


@user_app.command("list")
def user_list(as_json: JsonOption = False) -> None:
    """List users."""
    users = PlatformClient.from_settings(_settings()).get("/api/users")["users"]
    if as_json:
        print_json(users)
        return
    table = Table("username", "role", "email", "state")
    for user in users:
        table.add_row(
            user["username"],
            user["role"],
            user["email"] or "",
            "disabled" if user["disabled"] else "active",
        )
    out().print(table)


@user_app.command("disable")
def user_disable(username: str) -> None:
    """Disable a user; their tokens are revoked at once (enabling them again revives none)."""
    PlatformClient.from_settings(_settings()).post(f"/api/users/{username}/disable")
    out().print(f"user {username} disabled")


@user_app.command("enable")
def user_enable(username: str) -> None:
    """Enable a disabled user; they log in anew."""
    PlatformClient.from_settings(_settings()).post(f"/api/users/{username}/enable")
    out().print(f"user {username} enabled")


def main() -> None:
    state = CliState()
    try:
        app(obj=state, standalone_mode=False)
    except PlatformError as error:
        if state.debug:
            raise
        Console(stderr=True, highlight=False).print(f"[red]error:[/] {error.message}", soft_wrap=True)
        if error.details:
            Console(stderr=True).print_json(data=error.details)
        raise SystemExit(1) from None
    except (click.exceptions.Abort, typer.Abort):
        Console(stderr=True).print("aborted")
        raise SystemExit(130) from None
    except (click.ClickException, typer.exceptions.TyperException) as error:
        # typer >= 0.29 raises its own copy of click's exceptions (usage errors, unknown options).
        show = getattr(error, "show", None)
        if callable(show):
            show()
        else:
            Console(stderr=True, highlight=False).print(f"[red]error:[/] {error}")
        raise SystemExit(getattr(error, "exit_code", 2)) from None
    except KeyboardInterrupt:
        raise SystemExit(130) from None
