"""``caravan``: run a local cluster and talk to any Caravan gateway from the terminal."""

from __future__ import annotations

import os
import signal
import sys
from pathlib import Path
from typing import Annotated

import typer

from caravan import __version__
from caravan.cli import create, keys, models, run, status
from caravan.cli.client import Client, CLIError
from caravan.cluster import ClusterConfig, LocalCluster
from caravan.errors import CaravanError
from caravan.settings import default_models_dir, split_host_port

app = typer.Typer(add_completion=False, no_args_is_help=True, rich_markup_mode=None,
                  help="Caravan: an Ollama-compatible LLM cluster.")


def print_version(wanted: bool) -> None:
    """``-v/--version``: this client's version and the gateway's ``/api/version``."""
    if not wanted:
        return
    typer.echo(f"caravan client version is {__version__}")
    try:
        with Client.from_env() as client:
            typer.echo(f"caravan server version is {client.call('GET', '/api/version').get('version')}")
    except CLIError as exc:
        typer.echo(f"Warning: {exc.message}", err=True)
    raise typer.Exit()


@app.callback(invoke_without_command=True)
def main(version: Annotated[bool, typer.Option("--version", "-v", is_eager=True, callback=print_version,
                                               help="Show version information.")] = False) -> None:
    """Caravan: an Ollama-compatible LLM cluster. Talks to $CARAVAN_HOST (or $OLLAMA_HOST, or 127.0.0.1:11434)."""


def _models_dir() -> Path:
    raw = os.environ.get("CARAVAN_MODELS") or os.environ.get("OLLAMA_MODELS")
    return Path(raw).expanduser() if raw else default_models_dir()


@app.command("import-demo")
def import_demo() -> None:
    """Import the demo model (SmolLM2-135M-Instruct Q4_1) into the store as smollm2:135m."""
    from registry.demo import DEMO_NAME
    from registry.demo import import_demo as run_import
    from registry.store import Store

    try:
        changed = run_import(Store(_models_dir()))
    except CaravanError as exc:
        typer.echo(f"Error: {exc.message}", err=True)
        raise typer.Exit(1) from None
    typer.echo(f"{DEMO_NAME}: {'imported' if changed else 'already up to date'} in {_models_dir()}")


@app.command()
def serve(workers: int = typer.Option(1, help="worker processes to start")) -> None:
    """Start the whole cluster in the foreground (Ctrl-C stops every process)."""
    import_demo()
    raw_host = os.environ.get("CARAVAN_HOST") or os.environ.get("OLLAMA_HOST") or "127.0.0.1:11434"
    host, port = split_host_port(raw_host, 11434)
    cluster = LocalCluster(ClusterConfig(models=_models_dir(), gateway_host=host, gateway_port=port,
                                         registry_port=int(os.environ.get("CARAVAN_REGISTRY_PORT", "11435")),
                                         redis_url=os.environ.get("CARAVAN_REDIS_URL"), workers=workers,
                                         log_dir=None))
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    try:
        cluster.start()
        typer.echo(f"Caravan is running on {cluster.gateway_url} (logs in {cluster.log_dir}); Ctrl-C stops it.")
        signal.pause()
    except CaravanError as exc:
        typer.echo(f"Error: {exc.message}", err=True)
        raise typer.Exit(1) from None
    except KeyboardInterrupt:
        typer.echo("stopping...")
    finally:
        cluster.stop()


app.command("run")(run.run)
app.command("create")(create.create)
app.command("show")(models.show)
app.command("pull")(models.pull)
app.command("push")(models.push)
app.command("list")(models.list_models)
app.command("ls", hidden=True)(models.list_models)
app.command("ps")(models.ps)
app.command("status")(status.status)
app.command("cp")(models.copy)
app.command("rm")(models.remove)
app.command("stop")(models.stop)
app.add_typer(keys.app, name="keys")
app.command("usage")(keys.usage)

if __name__ == "__main__":
    app()
