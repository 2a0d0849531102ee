"""Cluster commands for API keys and usage: thin clients of ``/api/keys`` and ``/api/usage``.

The server side arrives separately; a gateway without these routes answers ``404 page not found``, which is
reported as "this Caravan does not support ...". Output is a table of whatever fields the gateway returns.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Annotated, Any
from urllib.parse import quote, urlencode

import typer

from caravan.cli import format as fmt
from caravan.cli.client import Client, CLIError, ServerError, exits_on_error
from caravan.cli.models import JsonFlag, echo_json

app = typer.Typer(help="Manage the gateway's API keys.", no_args_is_help=True, add_completion=False,
                  rich_markup_mode=None)


@contextmanager
def feature(name: str, client: Client) -> Iterator[None]:
    """Report a gateway that lacks the endpoint as unsupported instead of a bare 404."""
    try:
        yield
    except ServerError as exc:
        if exc.missing_route:
            raise CLIError(f"this Caravan does not support {name} (the gateway at {client.base_url} has no "
                           "such endpoint)") from None
        raise


def records(data: Any, *keys: str) -> list[dict[str, Any]]:
    """The list of objects in a response: the value under the first of ``keys`` present, or the body itself."""
    if isinstance(data, dict):
        for key in keys:
            if isinstance(data.get(key), list):
                return [item for item in data[key] if isinstance(item, dict)]
        return [data]
    return [item for item in data if isinstance(item, dict)] if isinstance(data, list) else []


@app.command("create")
@exits_on_error
def create(name: Annotated[str, typer.Argument(help="The user the key belongs to.")] = "",
           role: Annotated[str, typer.Option(help="admin or user.")] = "user",
           model: Annotated[list[str] | None, typer.Option(help="Allow only this model (repeatable).")] = None,
           priority: Annotated[int, typer.Option(help="Extra weight in fair sharing (0-100).")] = 0,
           rpm: Annotated[int | None, typer.Option(help="Requests per minute.")] = None,
           concurrent: Annotated[int | None, typer.Option(help="Requests in flight at once.")] = None,
           tokens_per_day: Annotated[int | None, typer.Option(help="Tokens per UTC day.")] = None,
           as_json: JsonFlag = False) -> None:
    """Create an API key; its secret is shown once."""
    limits = {"requests_per_minute": rpm, "max_concurrent": concurrent, "tokens_per_day": tokens_per_day}
    body = {"name": name, "role": role, "models": model or None, "priority": priority,
            "limits": {k: v for k, v in limits.items() if v is not None}}
    with Client.from_env() as client, feature("API keys", client):
        data = client.call("POST", "/api/keys", body)
    if as_json:
        return echo_json(data)
    secret = data.get("key") or data.get("secret") if isinstance(data, dict) else None
    if secret:
        typer.echo(f"{secret}\n(shown once: store it now; use it as CARAVAN_API_KEY)")
    else:
        echo_json(data)


@app.command("list")
@exits_on_error
def list_keys(as_json: JsonFlag = False) -> None:
    """List API keys (never their secrets)."""
    with Client.from_env() as client, feature("API keys", client):
        data = client.call("GET", "/api/keys")
    if as_json:
        return echo_json(data)
    typer.echo(fmt.records_table(records(data, "keys")) or "no API keys")


@app.command("revoke")
@exits_on_error
def revoke(key_id: Annotated[str, typer.Argument(help="The key's id (or name).")]) -> None:
    """Revoke an API key."""
    with Client.from_env() as client, feature("API keys", client):
        client.call("DELETE", f"/api/keys/{quote(key_id, safe='')}")
    typer.echo(f"revoked '{key_id}'")


@exits_on_error
def usage(start: Annotated[str | None, typer.Option("--from", help="First day, YYYY-MM-DD.")] = None,
          end: Annotated[str | None, typer.Option("--to", help="Last day, YYYY-MM-DD (default: today, UTC).")] = None,
          user: Annotated[str | None, typer.Option(help="Only this user.")] = None,
          as_json: JsonFlag = False) -> None:
    """Show requests and tokens per day, user and model."""
    query = {k: v for k, v in {"from": start, "to": end, "user": user}.items() if v}
    path = "/api/usage" + (f"?{urlencode(query)}" if query else "")
    with Client.from_env() as client, feature("usage reporting", client):
        data = client.call("GET", path)
    if as_json:
        return echo_json(data)
    typer.echo(fmt.records_table(records(data, "usage", "keys", "models")) or "no usage recorded")
