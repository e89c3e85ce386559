"""``aiot model ...``: pack, upload, list, show, call, delete models and read their replicas' logs.

``pack`` runs on the developer's machine with the AI manager's own validation;
``upload``, ``list``, ``show`` and ``delete`` talk to the front door as the logged-in
user; ``call`` goes the way an app's ``model_call`` goes (resolve over Kafka, then the
replica's REST endpoint); ``logs`` reads the collected logs of every replica the model's
deployments name (``aiot.log_reading``).
"""

from __future__ import annotations

import base64
import json
import time
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from aiot.client import PlatformClient
from aiot.log_reading import (
    FollowOption,
    GrepOption,
    LevelOption,
    LimitOption,
    SinceOption,
    UntilOption,
    print_logs,
)
from aiot.output import JsonOption, out, print_json
from aiot.packing import upload_source, write_packed
from platform_sdk.errors import BadRequest, NotFound, PlatformError
from platform_sdk.settings import get_settings

model_app = typer.Typer(help="Models: pack, upload, list, show, call, delete, logs.", no_args_is_help=True)
FINAL_STATUSES = ("deployed", "failed", "undeployed")


@model_app.command("pack")
def pack(
    folder: Annotated[Path, typer.Argument(help="Folder holding model.json and the model's files.")],
    output: Annotated[Path | None, typer.Option("-o", "--output", help="Zip to write.")] = None,
) -> None:
    """Validate a model folder as the platform will, and write its zip."""
    from ai_manager.artifact import pack_model  # lazy: SQLAlchemy-free, but not needed by other commands

    write_packed(pack_model(folder), output)


@model_app.command("schema")
def schema() -> None:
    """Print the JSON Schema of model.json (docs/schemas/model.schema.json is this output)."""
    from platform_sdk.artifacts import manifest_json_schema

    typer.echo(manifest_json_schema(), nl=False)


@model_app.command("upload")
def upload(
    source: Annotated[
        Path, typer.Argument(help="A zip made by `aiot model pack`, or a model folder (packed first).")
    ],
    wait: Annotated[bool, typer.Option(help="Follow the deploy until it is deployed or failed.")] = True,
    timeout: Annotated[float, typer.Option(help="Seconds to follow the deploy.")] = 600.0,
) -> None:
    """Upload a model; prints the model id, then follows its deploy."""
    from ai_manager.artifact import pack_model

    data, filename = upload_source(source, pack_model)
    client = PlatformClient.from_settings(get_settings())
    client.timeout = max(client.timeout, 120.0)
    reply = client.post(
        "/api/models", data=data, headers={"Content-Type": "application/zip", "X-Filename": filename}
    )
    model_id, version = reply["model_id"], reply["version"]
    typer.echo(model_id)
    if wait:
        status = _follow(client, model_id, version, timeout)
        if status != "deployed":
            raise PlatformError(
                f"deploy of {reply['name']} {version} {status}: see `aiot model show {model_id}`"
            )


def _follow(
    client: PlatformClient, model_id: str, version: str, timeout: float, *, quiet: bool = False
) -> str:
    seen = 0
    deadline = time.monotonic() + timeout
    console = Console(stderr=True, highlight=False)
    status = "deploying"
    with console.status(f"deploying {model_id} {version}") as spinner:
        while time.monotonic() < deadline:
            found = next(
                v for v in client.get(f"/api/models/{model_id}")["versions"] if v["version"] == version
            )
            deployment = found.get("deployment") or {}
            stages = deployment.get("stages", [])
            for stage in [] if quiet else stages[seen:]:
                console.print(f"  {stage['stage']:<11} {stage['detail']}")
            seen = len(stages)
            status = found["status"]
            spinner.update(f"{status} {model_id} {version}")
            if status in FINAL_STATUSES:
                return str(status)
            time.sleep(0.5)
    return f"still {status} after {timeout:.0f}s"


EXAMPLES = Path(__file__).resolve().parents[1] / "examples" / "models"


def deploy_examples(client: PlatformClient, console: Console, timeout: float = 600.0) -> None:
    """Pack, upload and deploy the sample models (``aiot up --demo``); ones already uploaded are kept."""
    from ai_manager.artifact import pack_model

    if not EXAMPLES.is_dir():
        raise NotFound(f"no sample models at {EXAMPLES}: --demo runs from a source checkout of the platform")
    known = {
        (model["name"], v["version"])
        for model in client.get("/api/models")["models"]
        for v in model["versions"]
    }
    for folder in sorted(path for path in EXAMPLES.iterdir() if (path / "model.json").is_file()):
        packed = pack_model(folder)
        manifest = packed.manifest
        if (manifest.name, manifest.version) in known:
            console.print(f"  model {manifest.name} {manifest.version} is already uploaded")
            continue
        reply = client.post(
            "/api/models",
            data=packed.data,
            headers={"Content-Type": "application/zip", "X-Filename": f"{manifest.name}.zip"},
        )
        status = _follow(client, reply["model_id"], manifest.version, timeout, quiet=True)
        colour = "green" if status == "deployed" else "red"
        console.print(
            f"  model {manifest.name} {manifest.version} ({reply['model_id']}): [{colour}]{status}[/]"
        )


@model_app.command("list")
def list_models(as_json: JsonOption = False) -> None:
    """Models with their versions and deploy status."""
    models = PlatformClient.from_settings(get_settings()).get("/api/models")["models"]
    if as_json:
        print_json(models)
        return
    table = Table("model id", "name", "owner", "version", "status", "endpoints")
    for model in models:
        for version in model["versions"]:
            table.add_row(
                model["model_id"],
                model["name"],
                model["owner"],
                version["version"],
                version["status"],
                ", ".join(version["endpoints"]),
            )
    out().print(table)


@model_app.command("show")
def show(
    model: Annotated[str, typer.Argument(help="Model id or name.")], as_json: JsonOption = False
) -> None:
    """A model's versions, replicas and every deploy stage."""
    document = PlatformClient.from_settings(get_settings()).get(f"/api/models/{model}")
    if as_json:
        print_json(document)
        return
    console = out()
    console.print(f"[bold]{document['name']}[/] ({document['model_id']}), owner {document['owner']}")
    if document["description"]:
        console.print(document["description"])
    for version in document["versions"]:
        endpoints = ", ".join(version["endpoints"])
        console.print(f"\n[bold]{version['version']}[/]: {version['status']}; endpoints {endpoints}")
        deployment = version.get("deployment")
        if not deployment:
            continue
        for replica in deployment["replicas"]:
            console.print(f"  replica {replica['service_id']} on {replica['node_id']} at {replica['url']}")
        for stage in deployment["stages"]:
            console.print(f"  {stage['at'][11:19]} {stage['stage']:<11} {stage['detail']}")
        if deployment.get("error"):
            console.print(f"  [red]error:[/] {deployment['error']}")


@model_app.command("call")
def call(
    model: Annotated[str, typer.Argument(help="Model id or name.")],
    endpoint: Annotated[str | None, typer.Argument(help="Endpoint (default: the model's first).")] = None,
    params: Annotated[str | None, typer.Option("--json", help="Input fields as a JSON object.")] = None,
    image: Annotated[
        list[str] | None, typer.Option("--image", help="FIELD=FILE (or FILE for a field named image).")
    ] = None,
    version: Annotated[str | None, typer.Option(help="Pin a version (default: the latest).")] = None,
) -> None:
    """Call a deployed model and print its output as JSON."""
    from platform_sdk.model_client import ModelClient

    fields: dict[str, Any] = {}
    if params:
        try:
            fields = json.loads(params)
        except json.JSONDecodeError as exc:
            raise BadRequest(f"--json is not JSON: {exc}") from exc
        if not isinstance(fields, dict):
            raise BadRequest("--json must be a JSON object of input fields")
    for item in image or []:
        name, _, path = item.rpartition("=")
        file = Path(path)
        if not file.is_file():
            raise BadRequest(f"--image {item}: {file} does not exist")
        fields[name or "image"] = base64.b64encode(file.read_bytes()).decode()
    with ModelClient.from_settings(get_settings()) as client:
        print_json(client.call(model, endpoint, fields, version=version))


@model_app.command("delete")
def delete(
    model: Annotated[str, typer.Argument(help="Model id or name.")],
    force: Annotated[
        bool, typer.Option("--force", help="Delete it even though apps use it (they then fail to start).")
    ] = False,
) -> None:
    """Undeploy every version of a model and delete it; refused while apps use it, unless --force."""
    client = PlatformClient.from_settings(get_settings())
    client.timeout = max(client.timeout, 180.0)  # undeploying waits for every replica to stop
    reply = client.delete(f"/api/models/{model}", params={"force": "true"} if force else None)
    console = out()
    console.print(f"model {reply['name']} ({reply['model_id']}) undeployed and deleted")
    broken = reply.get("broken_apps")
    if broken is None:
        console.print("[yellow]could not ask which apps use it:[/] apps naming it fail to start")
    for app in broken or []:
        versions = ", ".join(app["versions"])
        console.print(
            f"[yellow]app {app['app']} ({versions}) uses it:[/] its instances fail to start "
            f"until it is changed or deleted (`aiot app delete {app['app']}`)"
        )


def replica_labels(document: dict[str, Any], version: str | None) -> dict[str, str]:
    """Replica service id → "<version>/r<n>", for every version's replicas or ``version``'s only."""
    versions = [item for item in document["versions"] if version in (None, item["version"])]
    if not versions:
        known = ", ".join(item["version"] for item in document["versions"]) or "none"
        raise NotFound(f"model {document['name']} has no version {version!r} (versions: {known})")
    labels = {
        replica["service_id"]: f"{item['version']}/r{number}"
        for item in versions
        for number, replica in enumerate((item.get("deployment") or {}).get("replicas", []))
    }
    if not labels:
        which = f"version {version} has" if version else "no version has"
        raise NotFound(
            f"model {document['name']}: {which} replicas (it was never deployed); see `aiot model show`"
        )
    return labels


@model_app.command("logs")
def logs(
    model: Annotated[str, typer.Argument(help="Model id or name.")],
    version: Annotated[str | None, typer.Option(help="Only this version's replicas.")] = None,
    level: LevelOption = None,
    since: SinceOption = None,
    until: UntilOption = None,
    grep: GrepOption = None,
    limit: LimitOption = 200,
    follow: FollowOption = False,
    as_json: JsonOption = False,
) -> None:
    """Collected logs of every replica of a model, each line labelled with its replica (VERSION/rN)."""
    client = PlatformClient.from_settings(get_settings())
    labels = replica_labels(client.get(f"/api/models/{model}"), version)
    print_logs(
        client,
        list(labels),
        labels=labels,
        level=level,
        since=since,
        until=until,
        grep=grep,
        limit=limit,
        follow=follow,
        as_json=as_json,
    )
