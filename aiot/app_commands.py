"""``aiot app ...``: pack, upload, list, show and delete apps.

``pack`` runs on the developer's machine with the app manager's own validation of the zip
(the registry checks — models, their endpoints, device types — run on upload);
``upload``, ``list``, ``show`` and ``delete`` talk to the front door as the logged-in user.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from aiot.client import PlatformClient
from aiot.output import JsonOption, out, print_json
from aiot.packing import upload_source, write_packed
from platform_sdk.errors import BadRequest, PlatformError
from platform_sdk.settings import get_settings

if TYPE_CHECKING:
    from app_manager.artifact import ValidatedApp

app_app = typer.Typer(help="Apps: pack, upload, list, show, delete.", no_args_is_help=True)


def _pack(folder: Path) -> ValidatedApp:
    from app_manager.artifact import pack_app  # lazy: not needed by the other commands

    return pack_app(folder)


@app_app.command("pack")
def pack(
    folder: Annotated[Path, typer.Argument(help="Folder holding app.json and the app's files.")],
    output: Annotated[Path | None, typer.Option("-o", "--output", help="Zip to write.")] = None,
) -> None:
    """Validate an app folder as the platform will, and write its zip."""
    write_packed(_pack(folder), output)


@app_app.command("schema")
def schema() -> None:
    """Print the JSON Schema of app.json (docs/schemas/app.schema.json is this output)."""
    from platform_sdk.artifacts import AppManifest, json_schema_document

    typer.echo(json_schema_document(AppManifest, "app"), nl=False)


@app_app.command("upload")
def upload(
    source: Annotated[
        Path, typer.Argument(help="A zip made by `aiot app pack`, or an app folder (packed first).")
    ],
) -> None:
    """Upload an app; prints the app id (a summary goes to stderr)."""
    data, filename = upload_source(source, _pack)
    client = PlatformClient.from_settings(get_settings())
    client.timeout = max(client.timeout, 120.0)
    reply = client.post(
        "/api/apps", data=data, headers={"Content-Type": "application/zip", "X-Filename": filename}
    )
    Console(stderr=True, highlight=False).print(
        f"uploaded {reply['name']} {reply['version']} ({reply['kind']} app)"
    )
    typer.echo(reply["app_id"])  # alone on stdout, for scripts


def _needs(document: dict[str, Any]) -> str:
    devices = document.get("devices") or {}
    return ", ".join(
        f"{alias}: {need['type']}" + (f" x{need['count']}" if need["count"] > 1 else "")
        for alias, need in devices.items()
    )


def _models(document: dict[str, Any]) -> str:
    models = document.get("models") or {}
    return ", ".join(
        f"{alias}: {use['model']}" + (f" {use['version']}" if use.get("version") else "")
        for alias, use in models.items()
    )


@app_app.command("list")
def list_apps(as_json: JsonOption = False) -> None:
    """Apps with their latest version, the devices and models they use and where they can run."""
    apps = PlatformClient.from_settings(get_settings()).get("/api/apps")["apps"]
    if as_json:
        print_json(apps)
        return
    table = Table("app id", "name", "version", "kind", "devices", "models", "locations")
    for item in apps:
        table.add_row(
            item["app_id"],
            item["name"],
            item["latest_version"] or "",
            item.get("kind", ""),
            _needs(item),
            _models(item),
            ", ".join(item.get("locations", [])) or "-",
        )
    out().print(table)


@app_app.command("show")
def show(app: Annotated[str, typer.Argument(help="App id or name.")], as_json: JsonOption = False) -> None:
    """An app's versions and what its latest version needs."""
    document = PlatformClient.from_settings(get_settings()).get(f"/api/apps/{app}")
    if as_json:
        print_json(document)
        return
    console = out()
    console.print(f"[bold]{document['name']}[/] ({document['app_id']}), owner {document['owner']}")
    if document["description"]:
        console.print(document["description"])
    console.print(f"latest {document['latest_version']} ({document.get('kind', '')} app)")
    console.print(f"devices    {_needs(document) or '-'}")
    console.print(f"models     {_models(document) or '-'}")
    console.print(f"locations  {', '.join(document.get('locations', [])) or '- (none has every device)'}")
    for version in document["versions"]:
        entrypoint = version["manifest"]["entrypoint"]
        console.print(
            f"\n[bold]{version['version']}[/]: uploaded by {version['uploaded_by']} at "
            f"{version['uploaded_at'][:19]}, {version['size'] / 1024:.1f} KiB, entrypoint {entrypoint}"
        )


@app_app.command("delete")
def delete(app: Annotated[str, typer.Argument(help="App id or name.")]) -> None:
    """Delete an app, every version and their zips."""
    reply = PlatformClient.from_settings(get_settings()).delete(f"/api/apps/{app}")
    out().print(f"app {reply['name']} ({reply['app_id']}) deleted")


APP_EXAMPLES = Path(__file__).resolve().parents[1] / "examples" / "apps"
DEMO_DURATION = "8h"


def run_sample_apps(client: PlatformClient, console: Console) -> None:
    """Upload the sample apps and run each now at a location that has its devices (``aiot up --demo``).

    Apps already uploaded are kept; an app that already has an active schedule is left running.
    """
    from aiot.schedule_commands import schedule_document, wait_running

    if not APP_EXAMPLES.is_dir():
        raise BadRequest(f"no sample apps at {APP_EXAMPLES}: --demo runs from a source checkout")
    known = {(app["name"], version) for app in client.get("/api/apps")["apps"] for version in app["versions"]}
    for folder in sorted(path for path in APP_EXAMPLES.iterdir() if (path / "app.json").is_file()):
        packed = _pack(folder)
        manifest = packed.manifest
        if (manifest.name, manifest.version) not in known:
            client.post(
                "/api/apps",
                data=packed.data,
                headers={"Content-Type": "application/zip", "X-Filename": f"{manifest.name}.zip"},
            )
    active = {item["app"] for item in client.get("/api/schedules")["schedules"] if item["status"] == "active"}
    for app in client.get("/api/apps")["apps"]:
        if app["name"] in active or not app["locations"]:
            continue
        location = app["locations"][0]
        document = schedule_document(app["name"], location, now=True, duration=DEMO_DURATION)
        try:
            schedule = wait_running(client, client.post("/api/schedules", json=document)["schedule_id"])
        except PlatformError as exc:  # one sample failing leaves the others to run
            console.print(f"  app {app['name']} at {location}: [red]{exc.message}[/]")
            continue
        url = next(
            (item["url"] for item in schedule["instances"] if item["status"] == "running"), "(no address)"
        )
        console.print(f"  app {app['name']} at {location} for {DEMO_DURATION}: {url}")
