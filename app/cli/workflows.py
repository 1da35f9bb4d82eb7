"""`comfyui-saas workflow ...`: a tenant's workflow templates over the HTTP API.

`push` registers a graph and its input spec as a new version; `list`, `show`, `latest`
and `delete` manage them. `comfyui-saas run NAME --set k=v --input photo=URL` (in
`app.cli.main`) runs one; `--set` values are typed by the template's own schema, so
`--set prompt=123` stays a string and `--set seed=7` becomes a number.
"""

from __future__ import annotations

import json
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Annotated, Any

import typer

from app.cli.common import api, fail, friendly_errors, table, when
from app.clients.http_client import ApiClient

workflow_app = typer.Typer(
    help="Manage workflow templates (typed, versioned).", no_args_is_help=True
)

ApiUrl = Annotated[
    str | None, typer.Option("--api-url", help="Ingress URL [default: settings api_url].")
]
ApiKey = Annotated[
    str | None, typer.Option("--api-key", help="Tenant API key [default: settings api_key].")
]
AsJson = Annotated[bool, typer.Option("--json", help="Print JSON.")]
_JsonFile = typer.Argument(exists=True, dir_okay=False, readable=True)


def read_json(path: Path) -> Any:
    """A JSON file's content; a bad file is one line on stderr."""
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        fail(f"{path}: not JSON: {exc.msg} at line {exc.lineno}")


def push_body(
    workflow: Any, spec: Any, name: str, description: str | None, latest: bool
) -> dict[str, Any]:
    """The POST /v1/workflows body from a graph file and a spec file.

    The spec is `{"inputs": {...}, "description": "..."}` or just the inputs mapping; a
    graph file may also be a whole request body with a `workflow` key.
    """
    if not isinstance(workflow, dict):
        fail("the workflow file must hold a JSON object")
    graph = workflow["workflow"] if isinstance(workflow.get("workflow"), dict) else workflow
    if not isinstance(spec, dict):
        fail("the spec file must hold a JSON object")
    inputs = spec["inputs"] if isinstance(spec.get("inputs"), dict) else spec
    body: dict[str, Any] = {
        "name": name,
        "workflow": graph,
        "inputs": inputs,
        "make_latest": latest,
    }
    text = description if description is not None else spec.get("description")
    if isinstance(text, str):
        body["description"] = text
    return body


def typed_value(name: str, text: str, schema: dict[str, Any]) -> Any:
    """`--set name=text` as the value the template's JSON Schema asks for."""
    prop = schema.get("properties", {}).get(name)
    if prop is None:
        known = ", ".join(sorted(schema.get("properties", {}))) or "none"
        fail(f"--set {name}: the template has no such input (it takes: {known})")
    kinds = {prop.get("type")} | {p.get("type") for p in prop.get("oneOf", [])}
    if "const" in str(prop.get("oneOf", "")) and text == "random":
        return text
    if "object" in kinds:
        fail(f"--set {name}: a media input; pass it as --input {name}=URL")
    try:
        if "integer" in kinds:
            return int(text)
        if "number" in kinds:
            return float(text)
    except ValueError:
        fail(f"--set {name}={text!r}: not a number")
    if "boolean" in kinds:
        if text.lower() not in ("true", "false", "1", "0", "yes", "no"):
            fail(f"--set {name}={text!r}: expected true or false")
        return text.lower() in ("true", "1", "yes")
    return text


def run_inputs(sets: list[str], media: list[str], schema: dict[str, Any]) -> dict[str, Any]:
    """The run's `inputs` from `--set NAME=VALUE` and `--input NAME=URL` flags."""
    values: dict[str, Any] = {}
    for spec in sets:
        name, sep, text = spec.partition("=")
        if not sep or not name:
            fail(f"--set {spec!r}: expected NAME=VALUE")
        values[name] = typed_value(name, text, schema)
    for spec in media:
        name, sep, url = spec.partition("=")
        if not sep or not name or not url:
            fail(f"--input {spec!r}: expected NAME=URL")
        if "://" not in url:
            fail(f"--input {name}: {url!r} is not a URL; the API fetches media from https URLs")
        values[name] = {"url": url}
    return values


def _client(api_url: str | None, api_key: str | None) -> AbstractContextManager[ApiClient]:
    return api(api_url, api_key, "cli")  # templates are the tenant's: any user header does


@workflow_app.command("push")
def push(
    workflow: Annotated[Path, _JsonFile],
    spec: Annotated[
        Path,
        typer.Option(
            "--spec", exists=True, dir_okay=False, readable=True, help="Input spec JSON file."
        ),
    ],
    name: Annotated[str, typer.Option("--name", help="Template name, e.g. portrait.")],
    description: Annotated[str | None, typer.Option(help="What the template makes.")] = None,
    latest: Annotated[
        bool, typer.Option("--latest/--no-latest", help="Move `latest` to the new version.")
    ] = True,
    api_url: ApiUrl = None,
    api_key: ApiKey = None,
    as_json: AsJson = False,
) -> None:
    """Register a new version of a template; prints its id (name@version)."""
    with friendly_errors():
        body = push_body(read_json(workflow), read_json(spec), name, description, latest)
        with _client(api_url, api_key) as client:
            view = client.push_workflow(body)
        if as_json:
            typer.echo(json.dumps(view, indent=2))
            return
        inputs = ", ".join(f"{k} ({v['type']})" for k, v in view["inputs"].items()) or "none"
        typer.echo(f"{view['id']}  latest={view['latest_version']}  inputs: {inputs}")


@workflow_app.command("list")
def list_templates(api_url: ApiUrl = None, api_key: ApiKey = None, as_json: AsJson = False) -> None:
    """The tenant's templates, their versions and where `latest` points."""
    with friendly_errors(), _client(api_url, api_key) as client:
        listed = client.list_workflows()
        if as_json:
            typer.echo(json.dumps(listed, indent=2))
            return
        rows = [["NAME", "LATEST", "VERSIONS", "DESCRIPTION"]]
        rows += [
            [
                t["name"],
                str(t["latest_version"]),
                ",".join(map(str, t["versions"])),
                t["description"],
            ]
            for t in listed
        ]
        typer.echo(table(rows) if listed else "no workflow templates")


@workflow_app.command("show")
def show(
    workflow_id: Annotated[str, typer.Argument(help="name, name@latest or name@3.")],
    schema: Annotated[bool, typer.Option("--schema", help="Print only the JSON Schema.")] = False,
    api_url: ApiUrl = None,
    api_key: ApiKey = None,
) -> None:
    """One version as JSON (or just the JSON Schema of its inputs)."""
    with friendly_errors(), _client(api_url, api_key) as client:
        view = client.get_workflow(workflow_id)
        typer.echo(json.dumps(view["input_schema"] if schema else view, indent=2))
        if not schema:
            typer.echo(f"created {when(view['created_at'])}", err=True)


@workflow_app.command("latest")
def set_latest(
    name: str,
    version: Annotated[int, typer.Argument(min=1)],
    api_url: ApiUrl = None,
    api_key: ApiKey = None,
) -> None:
    """Point `latest` at an existing version (a rollback)."""
    with friendly_errors(), _client(api_url, api_key) as client:
        view = client.set_latest(name, version)
        typer.echo(f"{name}@latest -> {view['id']}")


@workflow_app.command("delete")
def delete(
    workflow_id: Annotated[str, typer.Argument(help="name@3 (one version) or name (all).")],
    api_url: ApiUrl = None,
    api_key: ApiKey = None,
) -> None:
    """Delete a version or a whole template (jobs made from it are not affected)."""
    with friendly_errors(), _client(api_url, api_key) as client:
        typer.echo("deleted " + ", ".join(client.delete_workflow(workflow_id)))
