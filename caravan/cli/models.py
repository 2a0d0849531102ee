"""Model commands: ``list``/``ls``, ``ps``, ``show``, ``cp``, ``rm``, ``stop``, ``pull``, ``push``."""

from __future__ import annotations

import contextlib
import json
from typing import Annotated, Any

import typer

from caravan.cli import format as fmt
from caravan.cli.client import Client, CLIError, ServerError, exits_on_error
from caravan.cli.progress import ProgressView

JsonFlag = Annotated[bool, typer.Option("--json", help="Print the gateway's JSON (for scripts).")]
Model = Annotated[str, typer.Argument(help="Model name, e.g. smollm2:135m.")]
Insecure = Annotated[bool, typer.Option("--insecure", help="Use an insecure (http) registry.")]
SHOW_FIELDS = ("license", "modelfile", "parameters", "template", "system")


def echo_json(data: Any) -> None:
    typer.echo(json.dumps(data, indent=2, ensure_ascii=False))


def _matching(models: list[dict[str, Any]], prefix: str | None) -> list[dict[str, Any]]:
    return [m for m in models if not prefix or str(m.get("name", "")).startswith(prefix)]


@exits_on_error
def list_models(prefix: Annotated[str | None, typer.Argument(help="Only names starting with this.")] = None,
                as_json: JsonFlag = False) -> None:
    """List models (NAME, ID, SIZE, MODIFIED)."""
    with Client.from_env() as client:
        models = _matching(client.call("GET", "/api/tags").get("models") or [], prefix)
    if as_json:
        return echo_json({"models": models})
    rows = [[m["name"], str(m.get("digest", ""))[:12], fmt.human_bytes(m.get("size", 0)),
             fmt.human_time(fmt.parse_time(m.get("modified_at")))] for m in models]
    typer.echo(fmt.table(["NAME", "ID", "SIZE", "MODIFIED"], rows))


def _ps_row(model: dict[str, Any]) -> list[str]:
    size, vram = int(model.get("size") or 0), int(model.get("size_vram") or 0)
    return [model["name"], str(model.get("digest", ""))[:12], fmt.human_bytes(size), fmt.processor(size, vram),
            str(model.get("context_length") or ""), fmt.until(fmt.parse_time(model.get("expires_at")))]


@exits_on_error
def ps(prefix: Annotated[str | None, typer.Argument(help="Only names starting with this.")] = None,
       as_json: JsonFlag = False) -> None:
    """List running models (NAME, ID, SIZE, PROCESSOR, CONTEXT, UNTIL)."""
    with Client.from_env() as client:
        models = _matching(client.call("GET", "/api/ps").get("models") or [], prefix)
    if as_json:
        return echo_json({"models": models})
    typer.echo(fmt.table(["NAME", "ID", "SIZE", "PROCESSOR", "CONTEXT", "UNTIL"], [_ps_row(m) for m in models]))


# ---------------------------------------------------------------------------------------------------------
# show
# ---------------------------------------------------------------------------------------------------------


def _model_rows(info: dict[str, Any]) -> list[list[str]]:
    details, meta = info.get("details") or {}, info.get("model_info") or {}
    arch = str(meta.get("general.architecture") or details.get("family") or "")
    rows = [["architecture", arch], ["parameters", str(details.get("parameter_size") or "")]]
    for key in ("context_length", "embedding_length"):
        if f"{arch}.{key}" in meta:
            rows.append([key.replace("_", " "), str(meta[f"{arch}.{key}"])])
    rows.append(["quantization", str(details.get("quantization_level") or "")])
    if info.get("requires"):
        rows.append(["requires", str(info["requires"])])
    return rows


def _first_lines(text: str, count: int | None) -> list[list[str]]:
    lines = [[line.strip()] for line in text.splitlines() if line.strip()]
    return lines[:count] if count else lines


def show_sections(info: dict[str, Any], verbose: bool = False) -> list[tuple[str, list[list[str]]]]:
    """The summary of ``show``: titled sections of rows, empty ones left out."""
    params = [line.split(None, 1) for line in str(info.get("parameters") or "").splitlines() if line.strip()]
    meta = info.get("model_info") or {}
    sections = [("Model", _model_rows(info)), ("Capabilities", [[c] for c in info.get("capabilities") or []]),
                ("Parameters", params)]
    if verbose:
        sections.append(("Metadata", [[key, json.dumps(meta[key])] for key in sorted(meta)]))
    limit = None if verbose else 2
    sections += [("System", _first_lines(str(info.get("system") or ""), limit)),
                 ("License", _first_lines(str(info.get("license") or ""), limit))]
    return [(title, rows) for title, rows in sections if rows]


def render_show(info: dict[str, Any], verbose: bool = False) -> str:
    lines: list[str] = []
    for title, rows in show_sections(info, verbose):
        lines += [f"  {title}", *fmt.indented(rows), ""]
    return "\n".join(lines)


def _show_field(flags: dict[str, bool]) -> str | None:
    chosen = [name for name, on in flags.items() if on]
    if len(chosen) > 1:
        raise CLIError("only one of '--license', '--modelfile', '--parameters', '--system', or '--template' "
                       "can be specified")
    return chosen[0] if chosen else None


@exits_on_error
def show(model: Model,
         license_: Annotated[bool, typer.Option("--license", help="Show the license.")] = False,
         modelfile: Annotated[bool, typer.Option("--modelfile", help="Show the Modelfile.")] = False,
         parameters: Annotated[bool, typer.Option("--parameters", help="Show the parameters.")] = False,
         template: Annotated[bool, typer.Option("--template", help="Show the template.")] = False,
         system: Annotated[bool, typer.Option("--system", help="Show the system message.")] = False,
         verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Show all metadata.")] = False,
         as_json: JsonFlag = False) -> None:
    """Show information for a model."""
    field = _show_field({"license": license_, "modelfile": modelfile, "parameters": parameters,
                         "template": template, "system": system})
    with Client.from_env() as client:
        info = client.call("POST", "/api/show", {"model": model, "verbose": verbose})
    if as_json:
        return echo_json(info)
    typer.echo(str(info.get(field) or "") if field else render_show(info, verbose))


# ---------------------------------------------------------------------------------------------------------
# cp, rm, stop, pull, push
# ---------------------------------------------------------------------------------------------------------


@exits_on_error
def copy(source: Model, destination: Annotated[str, typer.Argument(help="New name.")]) -> None:
    """Copy a model (the new name shares the blobs)."""
    with Client.from_env() as client:
        client.call("POST", "/api/copy", {"source": source, "destination": destination})
    typer.echo(f"copied '{source}' to '{destination}'")


def unload(client: Client, model: str) -> None:
    """Ask the cluster to unload ``model`` now (generate with an empty prompt and ``keep_alive`` 0)."""
    client.call("POST", "/api/generate", {"model": model, "prompt": "", "keep_alive": 0})


@exits_on_error
def remove(models: Annotated[list[str], typer.Argument(help="Model names.")]) -> None:
    """Remove models (each is unloaded first)."""
    with Client.from_env() as client:
        for model in models:
            with contextlib.suppress(ServerError):  # not loadable or not there: the delete says what is wrong
                unload(client, model)
            client.call("DELETE", "/api/delete", {"model": model})
            typer.echo(f"deleted '{model}'")


@exits_on_error
def stop(model: Model) -> None:
    """Stop a running model (unload it from the workers)."""
    with Client.from_env() as client:
        try:
            unload(client, model)
        except ServerError as exc:
            if exc.status == 404:
                raise CLIError(f'couldn\'t find model "{model}" to stop') from None
            raise


def transfer(client: Client, path: str, model: str, insecure: bool) -> None:
    """Pull or push with per-layer bars; an error line in the stream becomes a :class:`ServerError`."""
    verb = "pulling" if path.endswith("pull") else "pushing"
    with ProgressView(verb) as view:
        view.follow(client.stream(path, {"model": model, "insecure": insecure, "stream": True}))


@exits_on_error
def pull(model: Model, insecure: Insecure = False) -> None:
    """Pull a model from a registry."""
    with Client.from_env() as client:
        transfer(client, "/api/pull", model, insecure)


@exits_on_error
def push(model: Model, insecure: Insecure = False) -> None:
    """Push a model to a registry."""
    with Client.from_env() as client:
        try:
            transfer(client, "/api/push", model, insecure)
        except ServerError as exc:
            if "access denied" in exc.message:
                raise CLIError("you are not authorized to push to this namespace, create the model under a "
                               "namespace you own") from None
            raise
