"""The ``aiot`` command line.

Every command has ``--help``; every listing takes ``--json`` and then prints
one JSON document on stdout. Errors print one red line with what to do next
and exit non-zero; ``aiot --debug ...`` adds the traceback.
"""

from __future__ import annotations

import json
import signal
import sys
import threading
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum
from importlib.metadata import PackageNotFoundError, version
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
    Credentials,
    PlatformClient,
    forget_credentials,
    load_credentials,
    save_credentials,
)
from aiot.device_commands import device_app, location_app, register_sample_devices
from aiot.model_commands import deploy_examples, model_app
from aiot.output import JsonOption, out, print_json
from aiot.schedule_commands import instance_app, mail_app, schedule_app
from platform_sdk.errors import NotFound, PlatformError, Unavailable
from platform_sdk.roles import Role
from platform_sdk.runstate import RunState, kafka_address, read_run_state
from platform_sdk.settings import Settings, get_settings, settings_reference

if TYPE_CHECKING:
    from bootstrapper.local import LocalPlatform

FOLLOW_POLL_S = 1.0
LIVE_REFRESH_S = 2.0

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
) -> None:
    """AIoT platform command line. AIOT_HOME selects the platform (default ~/.aiot)."""
    ctx.ensure_object(CliState).debug = debug


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
    console.print(f"  front door  {state.web_url}")
    console.print(f"  kafka       {state.broker}{_broker_label(state)}")
    if state.broker_embedded and state.broker_kind == "tansu":
        from bootstrapper.broker import TANSU_NOTE

        console.print(f"[yellow]{TANSU_NOTE}[/]")
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
            while not interrupted.wait(LIVE_REFRESH_S):
                dead = [process.name for process in platform.status() if not process.running]
                if dead:
                    console.print(f"[red]{', '.join(dead)} exited; stopping the platform[/]")
                    return
                if console.is_terminal:
                    live.update(_status_view(_status_document(settings)))
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


def _status_document(settings: Settings) -> dict[str, Any]:
    state = read_run_state(settings)
    processes = _local_platform(settings).status()
    nodes = [_node_view(node.node_id, node.http_url) for node in state.nodes] if state else []
    return {
        "home": str(settings.home_dir),
        "running": any(process.running for process in processes),
        "web_url": state.web_url if state else None,
        "broker": state.broker if state else None,
        "runtime": state.runtime if state else None,
        "processes": [
            {"name": p.name, "pid": p.pid, "running": p.running, "log_file": p.log_file} for p in processes
        ],
        "nodes": [node["node"] for node in nodes],
        "services": [service for node in nodes for service in node["services"]],
        "incidents": _recent_incidents(settings, state.broker if state else None),
    }


INCIDENTS_SHOWN = 10


def _recent_incidents(settings: Settings, broker: str | None) -> list[dict[str, Any]]:
    """The newest incidents (the heartbeat monitor's decisions, the node manager's moves), oldest first."""
    if not broker:
        return []
    from platform_core.nodes import ServiceIncident
    from platform_sdk.bus import Bus

    bus = Bus(
        settings.model_copy(update={"kafka": settings.kafka.model_copy(update={"bootstrap_servers": broker})})
    )
    try:
        envelopes = bus.recent(bus.topics.incidents, INCIDENTS_SHOWN, timeout=3.0)
    except PlatformError:
        return []  # the broker does not answer: the services' table says enough
    finally:
        bus.close()
    incidents = []
    for envelope in envelopes:
        incident = envelope.open(ServiceIncident)
        incidents.append({"time": envelope.time.isoformat(), **incident.model_dump(exclude={"message_type"})})
    return incidents


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
    parts.append(Text(f"front door {document['web_url']}   kafka {document['broker']}"))
    return Group(*parts)


@app.command()
def status(as_json: JsonOption = False) -> None:
    """Show what runs for this AIOT_HOME: processes, nodes with their load, services with their state."""
    settings = _settings()
    document = _status_document(settings)
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
            wait_for_broker(address, timeout=3)
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


LEVEL_STYLES = {
    "DEBUG": "dim",
    "INFO": "",
    "WARNING": "yellow",
    "ERROR": "red",
    "CRITICAL": "bold red",
}


@app.command()
def logs(
    service: Annotated[str | None, typer.Argument(help="Only this service id.")] = None,
    level: Annotated[str | None, typer.Option(help="This level and above (DEBUG..CRITICAL).")] = None,
    since: Annotated[str | None, typer.Option(help="Like 10m, 2h, 1d, or an ISO time.")] = None,
    until: Annotated[str | None, typer.Option(help="Like 10m, 2h, 1d, or an ISO time.")] = None,
    grep: Annotated[str | None, typer.Option(help="Only records containing this text.")] = None,
    limit: Annotated[int, typer.Option(help="At most this many (the most recent).")] = 200,
    follow: Annotated[bool, typer.Option("--follow", "-f", help="Keep printing new records.")] = False,
    as_json: JsonOption = False,
) -> None:
    """Print collected logs of the platform's services."""
    client = PlatformClient.from_settings(_settings())
    params: dict[str, Any] = {
        "service": service,
        "level": level,
        "since": since,
        "until": until,
        "grep": grep,
        "limit": limit,
    }
    records = client.get("/api/logs", params=params)["records"]
    if as_json and not follow:
        print_json(records)
        return
    console = out()
    seen: set[tuple[str, str, str]] = set()

    def show(batch: list[dict[str, Any]]) -> None:
        for record in batch:
            key = (record["time"], record["service_id"], record["message"])
            if key in seen:
                continue
            seen.add(key)
            if as_json:
                sys.stdout.write(json.dumps(record) + "\n")
                continue
            head = f"{record['time']} {record['service_id']:<12} {record['level']:<8} {record['logger']}"
            line = Text(f"{head}: {record['message']}", style=LEVEL_STYLES.get(record["level"], ""))
            console.print(line, soft_wrap=True)
            if record.get("exception"):
                console.print(record["exception"], markup=False, soft_wrap=True)

    show(records)
    while follow:
        time.sleep(FOLLOW_POLL_S)
        newest = records[-1]["time"] if records else None
        records = client.get("/api/logs", params={**params, "since": newest or since})["records"] or records
        show(records)


@app.command()
def login(
    username: Annotated[str, typer.Option(prompt=True, help="Your user name.")],
    password: Annotated[str, typer.Option(prompt=True, hide_input=True, help="Your password.")],
) -> None:
    """Log in to the platform; the token is kept in AIOT_HOME/credentials.json."""
    settings = _settings()
    client = PlatformClient.from_settings(settings, authenticated=False)
    reply = client.post(
        "/api/auth/login",
        json={"username": username, "password": password, "token_name": "aiot-cli"},
    )
    save_credentials(settings, Credentials(url=client.url, username=username, token=reply["token"]))
    out().print(f"logged in as {username} ({reply['user']['role']})")


@app.command()
def logout() -> None:
    """Revoke this CLI's token and forget it."""
    settings = _settings()
    if load_credentials(settings) is None:
        out().print("not logged in")
        return
    try:
        PlatformClient.from_settings(settings).post("/api/auth/logout")
    finally:
        forget_credentials(settings)
    out().print("logged out")


@user_app.command("add")
def user_add(
    username: Annotated[str, typer.Argument(help="Lowercase letters, digits, '.', '_' or '-'.")],
    role: Annotated[Role, typer.Option(help="What the user may do.")],
    password: Annotated[str, typer.Option(prompt=True, hide_input=True, confirmation_prompt=True)],
    email: Annotated[str | None, typer.Option(help="Where the platform sends notifications.")] = None,
) -> None:
    """Register a user with a role."""
    client = PlatformClient.from_settings(_settings())
    reply = client.post(
        "/api/users",
        json={"username": username, "password": password, "role": role.value, "email": email},
    )
    out().print(f"user {reply['user']['username']} ({reply['user']['role']}) created")


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
    """Disable a user; their tokens stop working at once."""
    PlatformClient.from_settings(_settings()).post(f"/api/users/{username}/disable")
    out().print(f"user {username} disabled")


@user_app.command("enable")
def user_enable(username: str) -> None:
    """Enable a disabled user."""
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
