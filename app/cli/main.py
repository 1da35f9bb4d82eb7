"""The `comfyui-saas` command line.

* `dev` runs the whole local pipeline (ingress included) in this process.
* `submit`, `status`, `cancel`, `jobs` are clients of the HTTP API (`--api-url`,
  `--api-key`, default from `COMFYUI_SAAS_API_URL`/`COMFYUI_SAAS_API_KEY`).
* `tenant ...`, `fail-stale`, `cleanup` are operator commands on the configured backend.

Errors are one line on stderr and a non-zero exit code, never a traceback.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Annotated, Any, TypeGuard

import typer

from app.cli.common import api, fail, friendly_errors, local_deps, settings, table, when
from app.cli.tenants import tenant_app
from app.cli.workflows import run_inputs, workflow_app
from app.clients.http_client import ApiClient
from app.core.logs import configure_logging
from app.core.models import JobStatus
from app.core.schemas import JobView
from app.engine import maintenance

cli = typer.Typer(
    name="comfyui-saas",
    help="ComfyUI workflows as a multi-tenant service.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
cli.add_typer(tenant_app, name="tenant")
cli.add_typer(workflow_app, name="workflow")


@cli.callback()
def _configure() -> None:
    """Logs go to stderr, so stdout carries only the command's output."""
    with friendly_errors():
        config = settings()
        configure_logging(config.log_level, config.log_json)


ApiUrl = Annotated[
    str | None, typer.Option("--api-url", help="Ingress URL [default: settings api_url].")
]
ApiKey = Annotated[
    str | None, typer.Option("--api-key", help="Tenant API key [default: settings api_key].")
]
User = Annotated[str, typer.Option("--user", "-u", help="X-User-ID: the end user.")]
AsJson = Annotated[bool, typer.Option("--json", help="Print the job view as JSON.")]
DEFAULT_USER = "cli"
Webhook = Annotated[str | None, typer.Option(help="Webhook URL told when it ends.")]
Wait = Annotated[bool, typer.Option("--wait", help="Follow progress until it ends.")]
Out = Annotated[
    Path | None, typer.Option(help="Download the outputs here (implies --wait).", file_okay=False)
]
TimeoutS = Annotated[
    float, typer.Option("--timeout", min=1, help="Give up waiting after this many seconds.")
]
PollS = Annotated[
    float, typer.Option("--poll", min=0.05, help="Seconds between status reads while waiting.")
]
IdempotencyKey = Annotated[
    str | None, typer.Option(help="Send an Idempotency-Key (a retry with it returns the same job).")
]


@cli.command()
def dev(
    host: Annotated[str, typer.Option(help="Interface to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(min=1, max=65535)] = 8000,
    comfyui_cmd: Annotated[
        str | None,
        typer.Option(
            help="Start ComfyUI with this command and restart it when it is stuck "
            "(COMFYUI_SAAS_COMFYUI_CMD).",
        ),
    ] = None,
) -> None:
    """Run the local pipeline: ingress, intake, fetch, render, upload and notify workers."""
    with friendly_errors():
        from app.deploy.local.runner import (
            run_dev,  # imports uvicorn and the workers; only `dev` needs them
        )

        typer.echo(
            f"comfyui-saas dev: http://{host}:{port} (docs at /docs); Ctrl-C stops", err=True
        )
        config = settings()
        if comfyui_cmd is not None:
            config = config.model_copy(update={"comfyui_cmd": comfyui_cmd})
        run_dev(config, host=host, port=port)


@cli.command()
def submit(
    workflow: Annotated[
        Path,
        typer.Argument(
            help="ComfyUI API-format workflow (or a whole request body with a `workflow` key).",
            exists=True,
            dir_okay=False,
            readable=True,
        ),
    ],
    inputs: Annotated[
        list[str] | None,
        typer.Option(
            "--input",
            "-i",
            help="NAME=URL or NAME=./local/file: a media input the workflow loads as NAME "
            "(a local file is uploaded first).",
        ),
    ] = None,
    webhook: Webhook = None,
    wait: Wait = False,
    out: Out = None,
    timeout_s: TimeoutS = 3600,
    poll_s: PollS = 1.0,
    idempotency_key: IdempotencyKey = None,
    user: User = DEFAULT_USER,
    api_url: ApiUrl = None,
    api_key: ApiKey = None,
    as_json: AsJson = False,
) -> None:
    """Submit a workflow; with --wait, show per-node progress; with --out, download."""
    with friendly_errors():
        try:
            document = json.loads(workflow.read_text())
        except json.JSONDecodeError as exc:
            fail(f"{workflow}: not JSON: {exc.msg} at line {exc.lineno}")
        with api(api_url, api_key, user) as client:
            body = request_body(document, inputs or [], webhook, upload=client.upload_file)
            view = client.submit(body, idempotency_key=idempotency_key)
            typer.echo(f"submitted {view.id} ({view.status.value})", err=True)
            _follow(client, view, wait, out, timeout_s, poll_s, as_json)
    if not as_json and not wait and out is None:
        typer.echo(f"follow it with: comfyui-saas status {view.id} --user {user}", err=True)


@cli.command()
def run(
    workflow_id: Annotated[str, typer.Argument(help="Template: name, name@latest or name@3.")],
    sets: Annotated[
        list[str] | None,
        typer.Option("--set", "-s", help="NAME=VALUE: an input, typed by the template."),
    ] = None,
    media: Annotated[
        list[str] | None,
        typer.Option("--input", "-i", help="NAME=URL: a media input (image, video, ...)."),
    ] = None,
    webhook: Webhook = None,
    wait: Wait = False,
    out: Out = None,
    timeout_s: TimeoutS = 3600,
    poll_s: PollS = 1.0,
    idempotency_key: IdempotencyKey = None,
    user: User = DEFAULT_USER,
    api_url: ApiUrl = None,
    api_key: ApiKey = None,
    as_json: AsJson = False,
) -> None:
    """Run a workflow template with named inputs; --wait follows it, --out downloads."""
    with friendly_errors(), api(api_url, api_key, user) as client:
        schema = client.get_workflow(workflow_id)["input_schema"]
        body: dict[str, Any] = {
            "workflow_id": workflow_id,
            "inputs": run_inputs(sets or [], media or [], schema),
        }
        if webhook is not None:
            body["webhook_url"] = webhook
        view = client.submit(body, idempotency_key=idempotency_key)
        typer.echo(f"submitted {view.id} ({view.status.value}) from {schema['title']}", err=True)
        _follow(client, view, wait, out, timeout_s, poll_s, as_json)


def _follow(
    client: ApiClient,
    view: JobView,
    wait: bool,
    out: Path | None,
    timeout_s: float,
    poll_s: float,
    as_json: bool,
) -> None:
    """After a submit: wait with progress if asked, print, download; exit 1 if it failed."""
    if wait or out is not None:
        view = client.wait(view.id, timeout_s=timeout_s, poll_s=poll_s, on_update=ProgressPrinter())
    _print_view(view, as_json)
    if view.status is JobStatus.COMPLETED and out is not None:
        for path in client.download_outputs(view, out):
            typer.echo(f"saved {path}", err=True)
    if view.status in (JobStatus.FAILED, JobStatus.CANCELLED):
        raise typer.Exit(1)


@cli.command()
def status(
    job_id: str,
    user: User = DEFAULT_USER,
    api_url: ApiUrl = None,
    api_key: ApiKey = None,
    as_json: AsJson = False,
) -> None:
    """Show a job: status, stage, progress, outputs and errors."""
    with friendly_errors(), api(api_url, api_key, user) as client:
        _print_view(client.get(job_id), as_json)


@cli.command()
def cancel(
    job_id: str,
    user: User = DEFAULT_USER,
    api_url: ApiUrl = None,
    api_key: ApiKey = None,
    as_json: AsJson = False,
) -> None:
    """Cancel a job (whatever its stage)."""
    with friendly_errors(), api(api_url, api_key, user) as client:
        _print_view(client.cancel(job_id), as_json)


@cli.command()
def jobs(
    status: Annotated[JobStatus | None, typer.Option(help="Only jobs in this status.")] = None,
    limit: Annotated[int, typer.Option(min=1, max=100)] = 20,
    cursor: Annotated[str | None, typer.Option(help="`next` cursor of a previous page.")] = None,
    user: User = DEFAULT_USER,
    api_url: ApiUrl = None,
    api_key: ApiKey = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the page as JSON.")] = False,
) -> None:
    """List the user's jobs, newest first."""
    with friendly_errors(), api(api_url, api_key, user) as client:
        page = client.list_jobs(status=status, limit=limit, cursor=cursor)
        if as_json:
            typer.echo(page.model_dump_json(indent=2))
            return
        rows = [["ID", "STATUS", "STAGE", "PROGRESS", "CREATED", "ERROR"]]
        rows += [
            [
                v.id,
                v.status.value,
                v.stage.value,
                f"{v.progress:.0%}",
                when(v.created_at),
                v.error.code if v.error else "",
            ]
            for v in page.jobs
        ]
        typer.echo(table(rows) if page.jobs else "no jobs")
        if page.next_cursor:
            typer.echo(f"more: --cursor {page.next_cursor}", err=True)


@cli.command("fail-stale")
def fail_stale() -> None:
    """Take back jobs whose worker went silent; fail those past their deadline."""
    with friendly_errors():
        _print_report(maintenance.fail_stale(local_deps()))


@cli.command()
def cleanup() -> None:
    """Delete expired outputs and job records; release leaked admission slots."""
    with friendly_errors():
        _print_report(maintenance.cleanup(local_deps()))


def request_body(
    document: Any,
    inputs: list[str],
    webhook: str | None,
    *,
    upload: Callable[[Path], dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """The POST /v1/jobs body from a workflow file and the flags; `upload` sends a
    local file to POST /v1/uploads and answers its view."""
    if not isinstance(document, dict):
        fail("the workflow file must hold a JSON object")
    body: dict[str, Any] = (
        dict(document) if isinstance(document.get("workflow"), dict) else {"workflow": document}
    )
    if inputs:
        body["inputs"] = [*body.get("inputs", []), *(_input(spec, upload) for spec in inputs)]
    if webhook is not None:
        body["webhook_url"] = webhook
    return body


def _input(spec: str, upload: Callable[[Path], dict[str, Any]] | None) -> dict[str, str]:
    name, sep, url = spec.partition("=")
    if not sep or not name or not url:
        fail(f"--input {spec!r}: expected NAME=URL or NAME=./local/file")
    if "://" in url or upload is None:
        return {"name": name, "url": url}
    path = Path(url).expanduser()
    if not path.is_file():
        fail(f"--input {spec!r}: {url} is neither a URL nor a readable file")
    return {"name": name, "upload_id": str(upload(path)["upload_id"])}


class ProgressPrinter:
    """Prints a line each time a job's status, stage or node progress changes."""

    def __init__(self, stream: Any = None) -> None:
        self.stream = stream or sys.stderr
        self.last = ""

    def __call__(self, view: JobView) -> None:
        line = progress_line(view)
        if line != self.last:
            self.stream.write(line + "\n")
            self.stream.flush()
            self.last = line


def progress_line(view: JobView) -> str:
    """One line of progress: status, stage, overall percent and the running node."""
    parts = [view.id, view.status.value, view.stage.value, f"{view.progress:.0%}"]
    if view.detail is not None and view.detail.value != "rendering":
        waiting = view.detail.value.replace("_", " ")
        if view.queue_position is not None:
            waiting += f" ({view.queue_position} ahead)"
        parts.append(waiting)
    detail = view.progress_detail
    node = detail.get("node_id", detail.get("node"))
    if node is not None and view.status is JobStatus.RUNNING:
        kind = detail.get("node_type") or detail.get("class_type")
        label = f"node {node}" + (f" ({kind})" if kind else "")
        value, most = detail.get("value"), detail.get("max")
        if _number(value) and _number(most) and most > 1:
            label += f" {value:g}/{most:g}"
        done, total = detail.get("nodes_done"), detail.get("nodes_total")
        if _number(done) and _number(total) and total > 0:
            label += f" [{done:g}/{total:g} nodes]"
        parts.append(label)
    return "  ".join(parts)


def _number(value: object) -> TypeGuard[float]:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _print_view(view: JobView, as_json: bool) -> None:
    if as_json:
        typer.echo(view.model_dump_json(indent=2))
        return
    typer.echo(
        f"{view.id}  {view.status.value}  stage={view.stage.value}  "
        f"progress={view.progress:.0%}  created={when(view.created_at)}"
    )
    if view.error is not None:
        where = f" at node {view.error.node_id}" if view.error.node_id else ""
        typer.echo(f"error: {view.error.code}{where}: {view.error.message}")
    for output in view.outputs:
        typer.echo(f"output: {output.filename} ({output.content_type}, {output.size} bytes)")
        typer.echo(f"  {output.url}")


def _print_report(report: Mapping[str, Any]) -> None:
    typer.echo(json.dumps(report, indent=2, sort_keys=True, default=str))


def main() -> None:
    """Console entry point `comfyui-saas`."""
    try:
        cli()
    except KeyboardInterrupt:
        typer.echo("interrupted", err=True)
        raise SystemExit(130) from None
    except Exception as exc:  # noqa: BLE001 - a bug: one line, not a traceback
        typer.echo(f"error: unexpected {type(exc).__name__}: {exc}", err=True)
        raise SystemExit(2) from None
