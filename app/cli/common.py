"""What every command of the command line shares: settings, deps and one-line errors."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import NoReturn

import typer
from pydantic import ValidationError

from app.clients.http_client import ApiClient
from app.clients.proxy_auth import proxy_auth_headers
from app.core.config import Settings, get_settings
from app.core.errors import BackendError, ComfySaasError, HttpApiError, PipelineError
from app.engine.deps import Deps, build_deps


def fail(message: str, exit_code: int = 1) -> NoReturn:
    """Print `error: message` on stderr and exit non-zero."""
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(exit_code)


@contextmanager
def friendly_errors() -> Iterator[None]:
    """Turn every expected failure into one line on stderr and exit code 1."""
    try:
        yield
    except typer.Exit:
        raise
    except HttpApiError as exc:
        fail(f"{exc.message} ({exc.code}, HTTP {exc.status})")
    except PipelineError as exc:
        fail(exc.message)
    except BackendError as exc:
        fail(f"state backend: {exc}")
    except ComfySaasError as exc:  # the rest of the tree: its message is the whole story
        fail(str(exc))
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(part) for part in first["loc"]) or exc.title
        fail(f"invalid {exc.title}: {where}: {first['msg']}")
    except OSError as exc:
        fail(f"{exc.filename or ''}: {exc.strerror or exc}".lstrip(": "))


@contextmanager
def api(api_url: str | None, api_key: str | None, user: str) -> Iterator[ApiClient]:
    """An HTTP client from the flags, falling back to the settings."""
    config = settings()
    key = api_key if api_key is not None else config.api_key.get_secret_value()
    if not key:
        fail("no API key: pass --api-key or set COMFYUI_SAAS_API_KEY")
    proxy = proxy_auth_headers(config)
    with ApiClient(api_url or config.api_url, key, user, proxy_headers=proxy) as client:
        yield client


def settings() -> Settings:
    """The process's settings (from `COMFYUI_SAAS_*` variables)."""
    return get_settings()


def local_deps() -> Deps:
    """Deps on the configured backend, for the operator commands."""
    return build_deps(settings())


def when(timestamp: float | None) -> str:
    """A unix time as a short UTC date and time."""
    if timestamp is None:
        return "-"
    return datetime.fromtimestamp(timestamp, UTC).strftime("%Y-%m-%d %H:%M:%S")


def table(rows: list[list[str]]) -> str:
    """Rows as left-aligned columns (the first row is the header)."""
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return "\n".join(
        "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
        for row in rows
    )
