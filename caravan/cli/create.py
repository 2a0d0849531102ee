"""``caravan create MODEL -f Modelfile``: parse the Modelfile here, upload local files, POST /api/create.

``FROM ./model.gguf``, extra ``FROM`` files (projectors), ``ADAPTER`` and ``DRAFT`` paths that exist on this
machine are hashed, uploaded as blobs (``HEAD /api/blobs/<digest>`` first, ``POST`` only when missing) and sent
as the request's ``files`` / ``adapters`` / ``draft_files`` maps; a FROM that is not a local path names a model.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated, Any

import typer

from caravan.cli.client import Client, CLIError, ServerError, exits_on_error
from caravan.cli.progress import ProgressView
from registry.modelfile import ModelfileError, parse_modelfile, to_create_request

CHUNK = 1 << 20


def read_modelfile(path: Path, explicit: bool) -> dict[str, Any]:
    """The Modelfile at ``path`` as ``/api/create`` fields (paths not yet resolved)."""
    try:
        text = path.read_bytes()
    except FileNotFoundError:
        hint = "specified Modelfile wasn't found" if explicit else "no Modelfile here; point at one with -f"
        raise CLIError(hint) from None
    except OSError as exc:
        raise CLIError(f"could not read {path}: {exc}") from None
    try:
        return to_create_request(parse_modelfile(text))
    except ModelfileError as exc:
        raise CLIError(str(exc)) from None


def local_path(value: str, base: Path) -> Path | None:
    """``value`` as a file on this machine (``~`` expanded, relative to the Modelfile), else ``None``."""
    path = Path(os.path.expanduser(value))
    path = path if path.is_absolute() else base / path
    if path.is_dir():
        raise CLIError(f"{value}: safetensors directories are not supported here; convert to GGUF first")
    return path if path.is_file() else None


def file_digest(path: Path) -> str:
    """``sha256:<hex>`` of a file, read in 1 MiB chunks."""
    sha = hashlib.sha256()
    with path.open("rb") as handle:
        while chunk := handle.read(CHUNK):
            sha.update(chunk)
    return f"sha256:{sha.hexdigest()}"


def _chunks(path: Path, view: ProgressView, key: str) -> Iterator[bytes]:
    with path.open("rb") as handle:
        while chunk := handle.read(CHUNK):
            view.advance(key, len(chunk))
            yield chunk


def upload_blob(client: Client, path: Path, view: ProgressView) -> str:
    """Make sure the gateway holds ``path`` as a blob; return its digest."""
    digest = file_digest(path)
    size = path.stat().st_size
    label = f"copying file {digest.removeprefix('sha256:')[:12]}"
    try:
        client.request("HEAD", f"/api/blobs/{digest}")
        view.bar(digest, label, size, size)
        return digest
    except ServerError as exc:
        if exc.status != 404:
            raise
    view.bar(digest, label, size, 0)
    client.request("POST", f"/api/blobs/{digest}", content=_chunks(path, view, digest),
                   headers={"Content-Length": str(size), "Content-Type": "application/octet-stream"})
    return digest


def _upload_all(client: Client, values: list[str], base: Path, view: ProgressView) -> tuple[dict[str, str], list[str]]:
    """Upload the values that are local files; return ``{file name: digest}`` and the values that are not."""
    files: dict[str, str] = {}
    names: list[str] = []
    for value in values:
        path = local_path(value, base)
        if path is None:
            names.append(value)
        else:
            files[path.name] = upload_blob(client, path, view)
    return files, names


def resolve_files(client: Client, request: dict[str, Any], base: Path, view: ProgressView) -> dict[str, Any]:
    """Swap local paths in the parsed Modelfile for uploaded blobs (``files``, ``adapters``, ``draft_files``)."""
    sources = [request.pop("from"), *request.pop("extra_from", [])]
    files, names = _upload_all(client, sources, base, view)
    if files:
        request["files"] = files
    if names:
        request["from"] = names[0]
    for field, target in (("adapter", "adapters"), ("draft", "draft_files")):
        if field in request:
            uploaded, missing = _upload_all(client, [request.pop(field)], base, view)
            if missing:
                raise CLIError(f"{field.upper()} {missing[0]}: no such file")
            request[target] = uploaded
    return request


@exits_on_error
def create(model: Annotated[str, typer.Argument(help="Name of the new model.")],
           file: Annotated[Path | None, typer.Option("--file", "-f", help="Modelfile (default ./Modelfile).")] = None,
           quantize: Annotated[str, typer.Option("--quantize", "-q", help="Quantize to this level.")] = "") -> None:
    """Create a model from a Modelfile."""
    path = (file or Path("Modelfile")).expanduser().absolute()
    parsed = read_modelfile(path, explicit=file is not None)
    with Client.from_env() as client, ProgressView("creating") as view:
        view.set_status("gathering model components")
        request = resolve_files(client, parsed, path.parent, view)
        request.update({"model": model, "stream": True}, **({"quantize": quantize} if quantize else {}))
        view.follow(client.stream("/api/create", request))
