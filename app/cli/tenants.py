"""`comfyui-saas tenant ...`: tenants, API keys and webhook secrets on the configured backend.

These act on the backend directly (SQLite locally; with `COMFYUI_SAAS_BACKEND=modal`
the deployed `modal.Dict`s), not over HTTP: they are operator commands, and the API has
no admin routes to attack. Secrets are printed once and never stored in clear.
"""

from __future__ import annotations

import json
from typing import Annotated

import typer

from app.cli.common import friendly_errors, local_deps, settings, table, when
from app.store.tenants import Tenant

tenant_app = typer.Typer(
    help="Manage tenants, their API keys and webhook secrets.", no_args_is_help=True
)
key_app = typer.Typer(help="Manage a tenant's API keys.", no_args_is_help=True)
tenant_app.add_typer(key_app, name="key")

PerUser = Annotated[
    int | None,
    typer.Option(
        "--max-active-jobs-per-user", min=1, help="Active jobs one user may have at once."
    ),
]
PerTenant = Annotated[
    int | None,
    typer.Option(
        "--max-active-jobs", min=0, help="Active jobs the whole tenant may have (0: no cap)."
    ),
]
Rate = Annotated[
    int | None,
    typer.Option(
        "--rate-per-minute", min=0, help="Submissions per minute for the tenant (0: no limit)."
    ),
]
AsJson = Annotated[bool, typer.Option("--json", help="Print JSON.")]


def _limits(tenant: Tenant) -> dict[str, int]:
    limits = tenant.limits(settings())
    return {
        "max_active_jobs_per_user": limits.max_active_per_user,
        "max_active_jobs": limits.max_active_per_tenant,
        "rate_per_minute": limits.rate_per_minute,
    }


@tenant_app.command("create")
def create(
    name: Annotated[str, typer.Argument(help="Lowercase letters, digits and '-'.")],
    max_active_jobs_per_user: PerUser = None,
    max_active_jobs: PerTenant = None,
    rate_per_minute: Rate = None,
    as_json: AsJson = False,
) -> None:
    """Create a tenant; prints its API key and webhook secret once."""
    with friendly_errors():
        made = local_deps().tenants.create(
            name,
            max_active_jobs_per_user=max_active_jobs_per_user,
            max_active_jobs=max_active_jobs,
            rate_per_minute=rate_per_minute,
        )
        if as_json:
            typer.echo(
                json.dumps(
                    {
                        "id": made.tenant.id,
                        "name": made.tenant.name,
                        "api_key": made.api_key,
                        "webhook_secret": made.webhook_secret,
                        "limits": _limits(made.tenant),
                    }
                )
            )
            return
        typer.echo(f"created tenant {made.tenant.name} ({made.tenant.id})")
        typer.echo(f"api key:        {made.api_key}")
        typer.echo(f"webhook secret: {made.webhook_secret}")
        typer.echo("Both are shown only now; store them safely.", err=True)


@tenant_app.command("list")
def list_tenants(as_json: AsJson = False) -> None:
    """List tenants with their limits in force and key counts."""
    with friendly_errors():
        deps = local_deps()
        tenants = deps.tenants.all()
        rows = []
        for tenant in tenants:
            keys = deps.tenants.keys_of(tenant.id)
            active = sum(1 for key in keys if key.revoked_at is None)
            rows.append((tenant, active, len(keys)))
        if as_json:
            typer.echo(
                json.dumps(
                    [
                        {
                            "id": t.id,
                            "name": t.name,
                            "created_at": t.created_at,
                            "disabled": t.disabled,
                            "limits": _limits(t),
                            "active_keys": active,
                            "keys": total,
                        }
                        for t, active, total in rows
                    ]
                )
            )
            return
        if not rows:
            typer.echo("no tenants yet; create one with `comfyui-saas tenant create NAME`")
            return
        lines = [["NAME", "ID", "PER-USER", "TENANT", "RATE/MIN", "KEYS", "STATE", "CREATED"]]
        for tenant, active, total in rows:
            limits = _limits(tenant)
            lines.append(
                [
                    tenant.name,
                    tenant.id,
                    str(limits["max_active_jobs_per_user"]),
                    str(limits["max_active_jobs"] or "-"),
                    str(limits["rate_per_minute"] or "-"),
                    f"{active}/{total}",
                    "disabled" if tenant.disabled else "active",
                    when(tenant.created_at),
                ]
            )
        typer.echo(table(lines))


@tenant_app.command("update")
def update(
    name: Annotated[str, typer.Argument(help="Tenant name or id.")],
    max_active_jobs_per_user: PerUser = None,
    max_active_jobs: PerTenant = None,
    rate_per_minute: Rate = None,
    enabled: Annotated[
        bool | None,
        typer.Option("--enable/--disable", help="A disabled tenant's keys are refused at once."),
    ] = None,
    templates_only: Annotated[
        bool | None,
        typer.Option(
            "--templates-only/--allow-raw-graphs",
            help="Let its callers run registered templates only (recommended in production).",
        ),
    ] = None,
) -> None:
    """Change a tenant's limits, or disable/enable it."""
    changes: dict[str, object] = {
        field: value
        for field, value in (
            ("max_active_jobs_per_user", max_active_jobs_per_user),
            ("max_active_jobs", max_active_jobs),
            ("rate_per_minute", rate_per_minute),
        )
        if value is not None
    }
    if enabled is not None:
        changes["disabled"] = not enabled
    if templates_only is not None:
        changes["templates_only"] = templates_only
    with friendly_errors():
        if not changes:
            typer.echo("nothing to change; see --help", err=True)
            raise typer.Exit(2)
        tenant = local_deps().tenants.update(name, **changes)
        limits = ", ".join(f"{k}={v}" for k, v in _limits(tenant).items())
        state = "disabled" if tenant.disabled else "active"
        graphs = "templates only" if tenant.templates_only else "raw graphs allowed"
        typer.echo(f"updated tenant {tenant.name}: {limits}, {state}, {graphs}")


@tenant_app.command("rotate-secret")
def rotate_secret(name: Annotated[str, typer.Argument(help="Tenant name or id.")]) -> None:
    """Add a new webhook signing secret; the previous one keeps signing alongside it."""
    with friendly_errors():
        tenant, secret = local_deps().tenants.rotate_webhook_secret(name)
        typer.echo(f"new webhook secret for {tenant.name}: {secret}")
        typer.echo("Webhooks are now signed with both the new and the previous secret.", err=True)


@key_app.command("add")
def key_add(name: Annotated[str, typer.Argument(help="Tenant name or id.")]) -> None:
    """Create another API key for the tenant; printed once."""
    with friendly_errors():
        api_key = local_deps().tenants.add_key(name)
        typer.echo(api_key)


@key_app.command("list")
def key_list(name: Annotated[str, typer.Argument(help="Tenant name or id.")]) -> None:
    """The tenant's keys by key id (the secrets are not stored)."""
    with friendly_errors():
        keys = local_deps().tenants.keys_of(name)
        lines = [["KEY ID", "KEY", "CREATED", "REVOKED"]]
        lines += [[k.key_id, k.display, when(k.created_at), when(k.revoked_at)] for k in keys]
        typer.echo(table(lines))


@key_app.command("revoke")
def key_revoke(
    name: Annotated[str, typer.Argument(help="Tenant name or id.")],
    key_id: Annotated[str, typer.Argument(help="The key id (`tenant key list`) or the key.")],
) -> None:
    """Revoke one API key; requests with it are refused at once."""
    with friendly_errors():
        revoked = local_deps().tenants.revoke_key(name, _key_id(key_id))
        typer.echo(f"revoked key {revoked.key_id}")


def _key_id(value: str) -> str:
    """Accept a key id, its display form or the whole key (only the id part is used)."""
    parts = value.split("_")
    if value.startswith("csk_") and len(parts) >= 2:
        return parts[1]
    return value
