"""``aiot device ...`` and ``aiot location ...``: register, list, watch and command devices.

Registrations and ``command`` go to the front door (platform configurers; the front door
checks a command against the controller's type and sends it over Kafka as an app does), which
answers a real device's MQTT credentials once (printed; ``credentials`` issues new ones);
``watch`` goes the way an app goes, through the SDK's ``DeviceClient`` over Kafka, with the
device bound under its own name as alias. ``list`` and ``show`` print each device's latest
reading, frame or state as the front door reads it (with units and age). A device,
location or type the platform does not know is named with the command that lists what
it knows (the API's message names its route). ``location users`` chooses who may schedule
apps at a location.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from aiot.client import PlatformClient
from aiot.output import JsonOption, out, print_json
from platform_sdk.errors import BadRequest, NotFound
from platform_sdk.settings import get_settings

device_app = typer.Typer(help="Devices: register, list, watch, command.", no_args_is_help=True)
type_app = typer.Typer(help="Device types (sensors and controllers).", no_args_is_help=True)
location_app = typer.Typer(help="Locations where devices are.", no_args_is_help=True)
device_app.add_typer(type_app, name="type")


# What lists the names of each kind the API may not know, for a CLI user (most specific first).
LIST_COMMANDS = (
    ("device type", "aiot device type list", "device types"),
    ("location", "aiot location list", "locations"),
    ("device", "aiot device list", "devices"),
)


@contextlib.contextmanager
def cli_hints() -> Iterator[None]:
    """Turn the API's "no device 'x'; see GET /api/devices" into the command that lists devices."""
    try:
        yield
    except NotFound as exc:
        subject, api_hint, _ = exc.message.partition("; see GET /api/devices")
        for kind, command, plural in LIST_COMMANDS:
            if api_hint and subject.startswith(f"no {kind} '"):
                raise NotFound(f"{subject}: `{command}` shows the registered {plural}") from None
        raise


def _age(time: str, now: datetime | None = None) -> str:
    seconds = ((now or datetime.now(UTC)) - datetime.fromisoformat(time)).total_seconds()
    if seconds < 1:
        return "just now"
    for unit, size in (("d", 86400), ("h", 3600), ("min", 60)):
        if seconds >= size:
            return f"{int(seconds // size)} {unit} ago"
    return f"{int(seconds)} s ago"


def _size(count: int) -> str:
    return f"{count} B" if count < 1024 else f"{count / 1024:.0f} KB"


def latest_text(state: dict[str, Any] | None, now: datetime | None = None) -> str:
    """One line for a latest value: ``temperature 21.5 °C, humidity 40 % (3 s ago)``; "-" for none."""
    if not state:
        return "-"
    values: dict[str, Any] = state.get("values") or {}
    units: dict[str, str] = state.get("units") or {}
    if state.get("kind") == "frame":
        text = (
            f"frame {values.get('width')}x{values.get('height')} {values.get('content_type')}, "
            f"{_size(int(values.get('bytes', 0)))}"
        )
    else:
        text = ", ".join(
            f"{name} {json.dumps(value, ensure_ascii=False)}" + (f" {units[name]}" if name in units else "")
            for name, value in values.items()
        )
    recorded = ", last recorded" if state.get("source") == "registry" else ""
    return f"{text or '{}'} ({_age(state['time'], now)}{recorded})"


def _read_document(file: Path) -> Any:
    try:
        return json.loads(file.read_text())
    except FileNotFoundError as exc:
        raise BadRequest(f"{file} does not exist") from exc
    except json.JSONDecodeError as exc:
        raise BadRequest(f"{file}: not JSON (line {exc.lineno} column {exc.colno}: {exc.msg})") from exc


def _register(file: Path, part: str, single_path: str) -> None:
    """One document → its route; a list or a bundle → the all-or-nothing bulk route."""
    document = _read_document(file)
    client = PlatformClient.from_settings(get_settings())
    if isinstance(document, dict) and not ({"device_types", "locations", "devices"} & document.keys()):
        reply = client.post(single_path, json=document)
        out().print(f"registered {document.get('name', '?')}")
        if "mqtt_credentials" in reply:
            _print_credentials({reply["name"]: reply["mqtt_credentials"]})
        return
    bundle = document if isinstance(document, dict) else {part: document}
    reply = client.post("/api/devices/bulk", json=bundle)
    counts = ", ".join(f"{count} {name.replace('_', ' ')}" for name, count in reply["counts"].items())
    out().print(f"registered {counts or 'nothing'} from {file}")
    _print_credentials(reply.get("mqtt_credentials") or {})


def _print_credentials(issued: dict[str, dict[str, str]]) -> None:
    """The MQTT credentials of real devices, as the front door showed them (once)."""
    for name, credentials in issued.items():
        out().print(
            f"MQTT credentials of {name}: username {credentials['username']} password "
            f"{credentials['password']}",
            soft_wrap=True,
        )
    if issued:
        out().print(
            "  shown once: the platform keeps only a hash; `aiot device credentials NAME` issues new ones"
        )


@type_app.command("add")
def type_add(
    file: Annotated[Path, typer.Argument(help="A device type, a list of them, or a bundle.")],
) -> None:
    """Register device types from a JSON file."""
    _register(file, "device_types", "/api/devices/types")


@type_app.command("list")
def type_list(as_json: JsonOption = False) -> None:
    """Device types."""
    types = PlatformClient.from_settings(get_settings()).get("/api/devices/types")["device_types"]
    if as_json:
        print_json(types)
        return
    table = Table("name", "kind", "simulator", "outputs / commands")
    for item in types:
        fields = item.get("outputs") or item.get("commands") or {}
        table.add_row(item["name"], item["kind"], item.get("simulator") or "-", ", ".join(fields))
    out().print(table)


@location_app.command("add")
def location_add(
    file: Annotated[Path, typer.Argument(help="A location, a list of them, or a bundle.")],
) -> None:
    """Register locations from a JSON file."""
    _register(file, "locations", "/api/devices/locations")


@location_app.command("list")
def location_list(as_json: JsonOption = False) -> None:
    """Locations."""
    locations = PlatformClient.from_settings(get_settings()).get("/api/devices/locations")["locations"]
    if as_json:
        print_json(locations)
        return
    table = Table("name", "kind", "time zone", "address", "open to")
    for item in locations:
        users = item.get("users")
        table.add_row(
            item["name"],
            item["kind"],
            item["timezone"],
            item.get("address") or "",
            "every user" if users is None else ", ".join(users) or "configurers only",
        )
    out().print(table)


@location_app.command("users")
def location_users(
    name: str,
    users: Annotated[
        list[str] | None, typer.Argument(help="The only users who may schedule apps there.")
    ] = None,
    everyone: Annotated[bool, typer.Option("--everyone", help="Open it to every user again.")] = False,
) -> None:
    """Choose who may schedule apps at a location (platform configurers; they may use every one)."""
    if everyone == bool(users):
        raise BadRequest("name the users who may schedule apps there, or pass --everyone")
    with cli_hints():
        PlatformClient.from_settings(get_settings()).request(
            "PUT", f"/api/devices/locations/{name}/users", json={"users": None if everyone else users}
        )
    out().print(f"{name}: open to {'every user' if everyone else ', '.join(users or [])}")


@device_app.command("add")
def device_add(
    file: Annotated[
        Path, typer.Argument(help="A device, a list of devices, or a bundle of types, locations, devices.")
    ],
) -> None:
    """Register devices (a bundle registers types, locations and devices all or nothing)."""
    _register(file, "devices", "/api/devices")


@device_app.command("list")
def device_list(
    location: Annotated[str | None, typer.Option(help="Only devices at this location.")] = None,
    device_type: Annotated[str | None, typer.Option("--type", help="Only devices of this type.")] = None,
    as_json: JsonOption = False,
) -> None:
    """Devices, with their type, location and latest reading or state."""
    query = {key: value for key, value in (("location", location), ("type", device_type)) if value}
    with cli_hints():
        devices = PlatformClient.from_settings(get_settings()).get("/api/devices", params=query)["devices"]
    if as_json:
        print_json(devices)
        return
    table = Table("name", "type", "location", "simulated", "latest reading or state")
    now = datetime.now(UTC)
    for item in devices:
        table.add_row(
            item["name"],
            item["type"],
            item["location"],
            "yes" if item.get("simulated") else "no",
            latest_text(item.get("state"), now),
        )
    out().print(table)


SCHEMAS = ("device-type", "location", "device", "device-bundle")
SAMPLE_DEVICES = Path(__file__).resolve().parents[1] / "configs" / "devices" / "sample.json"


def register_sample_devices(client: PlatformClient, console: Console) -> None:
    """Register the sample bank, school and home with their devices (``aiot up --demo``).

    What is registered already (by an earlier demo, or by hand) is left out of the bundle.
    """
    bundle = _read_document(SAMPLE_DEVICES)
    known = {
        "device_types": {item["name"] for item in client.get("/api/devices/types")["device_types"]},
        "locations": {item["name"] for item in client.get("/api/devices/locations")["locations"]},
        "devices": {item["name"] for item in client.get("/api/devices")["devices"]},
    }
    fresh = {part: [item for item in bundle[part] if item["name"] not in known[part]] for part in known}
    if not any(fresh.values()):
        console.print("  the sample locations and devices are already registered")
        return
    counts = client.post("/api/devices/bulk", json=fresh)["counts"]
    console.print(
        f"  {counts['locations']} locations and {counts['devices']} simulated devices registered; "
        "`aiot device list` shows them, `aiot device watch NAME` their readings"
    )


@device_app.command("schema")
def schema(kind: Annotated[str, typer.Argument(help=f"One of: {', '.join(SCHEMAS)}.")]) -> None:
    """Print the JSON Schema of a device document (docs/schemas/<kind>.schema.json is this output)."""
    from pydantic import BaseModel

    from platform_sdk.artifacts import json_schema_document
    from platform_sdk.device_documents import DeviceBundle, DeviceInstance, DeviceType, Location

    models: dict[str, type[BaseModel]] = dict(
        zip(SCHEMAS, (DeviceType, Location, DeviceInstance, DeviceBundle), strict=True)
    )
    if kind not in models:
        raise BadRequest(f"no document kind {kind!r}; one of: {', '.join(SCHEMAS)}")
    typer.echo(json_schema_document(models[kind], kind), nl=False)


@device_app.command("show")
def show(name: str, as_json: JsonOption = False) -> None:
    """A device: its document, type, effective parameters, latest reading or state, bindings."""
    with cli_hints():
        shown = PlatformClient.from_settings(get_settings()).get(f"/api/devices/{name}")
    if as_json:
        print_json(shown)
        return
    console = out()
    console.print(
        f"[bold]{shown['name']}[/]: {shown['device_type']['kind']} {shown['type']} at {shown['location']}"
    )
    console.print(f"  parameters {json.dumps(shown.get('effective_parameters', {}))}")
    state = shown.get("state")
    if state:
        console.print(f"  latest {state['kind']} at {state['time']}: {latest_text(state)}")
    else:
        console.print("  no reading or state yet")
    if shown.get("bound_to"):
        console.print(f"  bound to {', '.join(shown['bound_to'])}")


@device_app.command("credentials")
def credentials(name: str, as_json: JsonOption = False) -> None:
    """Issue new MQTT credentials to a real device (its old ones stop working); printed once."""
    with cli_hints():
        reply = PlatformClient.from_settings(get_settings()).post(f"/api/devices/{name}/mqtt-credentials")
    if as_json:
        print_json(reply["mqtt_credentials"])
        return
    _print_credentials({name: reply["mqtt_credentials"]})


@device_app.command("delete")
def device_delete(name: str) -> None:
    """Deregister a device (its simulator stops)."""
    with cli_hints():
        PlatformClient.from_settings(get_settings()).delete(f"/api/devices/{name}")
    out().print(f"device {name} deregistered")


def _device_client(name: str) -> Any:
    from platform_sdk.bus import Bus
    from platform_sdk.device_documents import Binding
    from platform_sdk.devices import DeviceClient

    with cli_hints():
        shown = PlatformClient.from_settings(get_settings()).get(f"/api/devices/{name}")
    binding = Binding(device_id=name, type=shown["device_type"])
    return DeviceClient(Bus(get_settings(), source="aiot-cli"), {name: binding}, group=f"aiot-cli.{name}")


@device_app.command("watch")
def watch(
    name: str,
    count: Annotated[int | None, typer.Option(min=1, help="Exit after this many readings.")] = None,
    timeout: Annotated[float, typer.Option(help="Give up when nothing arrives for this long (s).")] = 30.0,
) -> None:
    """Print a device's live readings (a controller's states) as they arrive."""
    from platform_sdk.devices import SensorStream

    client = _device_client(name)
    with client:
        binding = client.bindings[name]
        topics = client.bus.topics
        topic = topics.device_data(name) if binding.type.kind == "sensor" else topics.device_state(name)
        with SensorStream(client.bus, topic, name, f"aiot-cli-watch.{name}").start() as stream:
            seen = 0
            with contextlib.suppress(KeyboardInterrupt):
                while count is None or seen < count:
                    data = stream.next(timeout)
                    extra = (
                        f" [{data.content_type}, {len(data.image)} bytes]" if data.image is not None else ""
                    )
                    typer.echo(f"{data.device_id} #{data.seq} {json.dumps(data.values)}{extra}")
                    seen += 1


def _parse_value(text: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


@device_app.command("command")
def command(
    name: str,
    action: Annotated[str, typer.Argument(metavar="COMMAND", help="One of the controller type's commands.")],
    params: Annotated[
        list[str] | None, typer.Argument(help="key=value pairs (values as JSON where they parse).")
    ] = None,
) -> None:
    """Send a command to a controller and print its new state (platform configurers)."""
    parsed: dict[str, Any] = {}
    for item in params or []:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise BadRequest(f"{item!r} is not key=value")
        parsed[key] = _parse_value(value)
    with cli_hints():
        answer = PlatformClient.from_settings(get_settings()).post(
            f"/api/devices/{name}/commands", json={"command": action, "params": parsed}
        )
    print_json(answer["state"])
