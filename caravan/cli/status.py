"""``caravan status``: the cluster at a glance, from the gateway's ``GET /api/status/cluster``.

Two rich tables: workers (memory, loaded models with busy/total slots, state) and models (queued, in flight,
slots, workers). ``--json`` prints the gateway's JSON unchanged, for scripts.
"""

from __future__ import annotations

import json
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from caravan.cli import format as fmt
from caravan.cli.client import Client, exits_on_error
from caravan.wire.status import ClusterStatus, WorkerStatus

JsonFlag = Annotated[bool, typer.Option("--json", help="Print the gateway's JSON (for scripts).")]
NO_WORKERS = "no workers are running: start one with `python -m worker` (or `caravan serve`)"


def _state(worker: WorkerStatus) -> str:
    if worker.draining:
        return "draining"
    return f"loading {len(worker.loading)}" if worker.loading else "ready"


def workers_table(status: ClusterStatus) -> Table:
    table = Table(title="Workers", title_justify="left")
    for column in ("WORKER", "HOST", "DEVICE", "MEMORY", "MODELS (busy/slots)", "STATE"):
        table.add_column(column)
    for worker in status.workers:
        memory = f"{fmt.human_bytes(worker.memory_used)} / {fmt.human_bytes(worker.memory_budget)}"
        models = "\n".join(f"{m.model} {m.in_flight}/{m.slots}" for m in worker.models) or "-"
        table.add_row(worker.id, worker.host, worker.device, memory, models, _state(worker))
    return table


def models_table(status: ClusterStatus) -> Table:
    table = Table(title="Models", title_justify="left")
    table.add_column("MODEL")
    for column in ("QUEUED", "IN FLIGHT", "SLOTS"):
        table.add_column(column, justify="right")
    table.add_column("WORKERS")
    for model in status.models:
        table.add_row(model.model, str(model.queued), str(model.in_flight), str(model.slots),
                      ", ".join(model.workers) or "-")
    return table


def render(status: ClusterStatus, console: Console) -> None:
    """Print the tables (or a hint when the cluster has no workers) and a one-line summary."""
    if status.workers:
        console.print(workers_table(status))
    else:
        console.print(NO_WORKERS)
    if status.models:
        console.print(models_table(status))
    console.print(f"{len(status.workers)} worker(s), {status.queued} queued, {status.in_flight} in flight")


@exits_on_error
def status(as_json: JsonFlag = False) -> None:
    """Show the cluster: workers, loaded models, queue length and in-flight requests per model."""
    with Client.from_env() as client:
        data = client.call("GET", "/api/status/cluster")
    if as_json:
        typer.echo(json.dumps(data, indent=2, ensure_ascii=False))
        return
    render(ClusterStatus.model_validate(data), Console(highlight=False))
