"""``POST /api/create`` and ``POST /api/copy`` (ollama-api.md §3.12, §3.14): from a request to a written manifest.

Two steps, so that request errors are plain 400s and everything after them can stream:

* :func:`plan_create` validates the request (JSON form, or the legacy ``modelfile``/``path`` form turned into
  it) into a :class:`CreatePlan`: target name, base model or GGUF blobs, digests, template syntax.
* :func:`run_create` assembles the layers as Ollama does (base layers reused; TEMPLATE/SYSTEM replaced; LICENSE
  added; parameters merged over the inherited ones into a new params layer; MESSAGES replaced; a new config
  blob inheriting renderer/parser/requires/capabilities from the base), yielding Ollama's progress objects,
  writes the manifest and collects the blobs only the previous manifest of that name used. Every blob it
  relies on is pinned (``Store.pinned``) from first use until the manifest is written.
"""

from __future__ import annotations

import json
from collections.abc import Generator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import Field

from caravan import gotemplate
from caravan.errors import BadRequest, InvalidName, NotFound
from caravan.names import ModelName, parse_digest
from caravan.wire.ollama import Message, WireModel
from registry.gc import replace_manifest
from registry.gguf import GGUFError, GGUFInfo, read_gguf
from registry.importer import (
    build_manifest,
    bytes_digest,
    default_params,
    encode_config,
    gguf_config,
    gguf_layer_kind,
    json_blob,
    text_layer,
)
from registry.modelfile import ModelfileError, go_quote, parse_modelfile, to_create_request
from registry.store import LAYER_MEDIA, Layer, Pins, Store

NEITHER_FROM_NOR_FILES = "neither 'from' or 'files' was specified"
NOT_GGUF = "supplied file was not in GGUF format"
INHERITED_CONFIG = ("model_format", "renderer", "parser", "requires", "capabilities")
DESCRIPTIVE_CONFIG = ("model_family", "model_families", "model_type", "file_type")
_FROM_MEDIA = ("model", "projector", "adapter")


# ------------------------------------------------------------------------------------------- wire shapes
class CreateRequest(WireModel):
    """``/api/create`` body: the JSON form (0.5.5+) plus the legacy ``modelfile``/``path`` form."""

    model: str = ""
    name: str = ""  # deprecated alias of model
    from_: str = Field("", alias="from")
    files: dict[str, str] | None = None
    adapters: dict[str, str] | None = None
    template: str | None = None
    system: str | None = None
    license: str | list[str] | None = None
    parameters: dict[str, Any] | None = None
    messages: list[Message] | None = None
    renderer: str | None = None
    parser: str | None = None
    requires: str | None = None
    quantize: str | None = None
    quantization: str | None = None  # deprecated alias of quantize
    modelfile: str | None = None  # legacy
    path: str | None = None  # legacy: a Modelfile on the registry host
    stream: bool | None = None


class CopyRequest(WireModel):
    source: str = ""
    destination: str = ""


class DeleteRequest(WireModel):
    model: str = ""
    name: str = ""  # deprecated alias of model


# ------------------------------------------------------------------------------------------- planning
@dataclass
class CreatePlan:
    """A validated create request."""

    name: ModelName
    base: ModelName | None
    files: dict[str, str]
    adapters: dict[str, str]
    template: str | None = None
    system: str | None = None
    licenses: list[str] = field(default_factory=list)
    parameters: dict[str, Any] = field(default_factory=dict)
    messages: list[dict[str, Any]] = field(default_factory=list)
    overrides: dict[str, str] = field(default_factory=dict)


def plan_create(store: Store, body: CreateRequest) -> CreatePlan:
    """Validate ``body``; raises :class:`BadRequest` with Ollama's texts. May import legacy FROM files."""
    if not body.from_ and body.files is None and (body.modelfile is not None or body.path is not None):
        _model_name(body.model or body.name)  # before any FROM file is imported
        body = from_modelfile(store, body)
    _check_paths({**(body.files or {}), **(body.adapters or {})})
    name = store.resolve(_model_name(body.model or body.name))
    base = _model_name(body.from_) if body.from_ else None
    if base is None and body.files is None:
        raise BadRequest(NEITHER_FROM_NOR_FILES)
    if body.quantize or body.quantization:
        raise BadRequest("quantization is not supported by this server")
    if body.template:
        _check_template(body.template)
    return CreatePlan(
        name=name, base=base,
        files=_digests(body.files or {}) if base is None else {},
        adapters=_adapters(body.adapters or {}),
        template=body.template or None, system=body.system or None, licenses=_licenses(body.license),
        parameters=dict(body.parameters or {}),
        messages=[message.model_dump(exclude_none=True) for message in body.messages or []],
        overrides={key: value for key in ("renderer", "parser", "requires") if (value := getattr(body, key))},
    )


def _model_name(raw: str) -> ModelName:
    try:
        return ModelName.parse(raw)
    except InvalidName:
        raise InvalidName("invalid model name") from None


def _check_paths(files: dict[str, str]) -> None:
    """File names must be clean relative paths (Go's ``fs.ValidPath``)."""
    for name in files:
        parts = name.split("/")
        if name != "." and (not name or any(part in ("", ".", "..") for part in parts)):
            raise BadRequest("file path must be relative")


def _digests(files: dict[str, str]) -> dict[str, str]:
    if not files:
        raise BadRequest("no files provided to convert")
    return {name: parse_digest(digest) for name, digest in files.items()}


def _adapters(adapters: dict[str, str]) -> dict[str, str]:
    if len(adapters) > 1:
        raise BadRequest("only one adapter is currently supported")
    return {name: parse_digest(digest) for name, digest in adapters.items()}


def _check_template(template: str) -> None:
    try:
        gotemplate.parse(template)
    except gotemplate.TemplateError as exc:
        raise BadRequest(f"template error: {exc}") from None


def _licenses(value: str | list[str] | None) -> list[str]:
    texts = [value] if isinstance(value, str) else list(value or [])
    return [text for text in texts if text]


# ------------------------------------------------------------------------------------------- legacy form
def from_modelfile(store: Store, body: CreateRequest) -> CreateRequest:
    """The legacy ``modelfile``/``path`` form as a JSON-form request (FROM/ADAPTER files become blobs)."""
    text, base_dir = _modelfile_text(body)
    try:
        fields = to_create_request(parse_modelfile(text))
    except ModelfileError as exc:
        raise BadRequest(str(exc)) from None
    if fields.get("draft"):
        raise BadRequest("DRAFT is not supported")
    update: dict[str, Any] = {key: fields.get(key) for key in ("template", "system", "license", "parameters")}
    update |= {key: fields[key] for key in ("renderer", "parser", "requires") if key in fields}
    update["messages"] = [Message.model_validate(item) for item in fields.get("messages", [])]
    update |= _sources(store, [fields["from"], *fields.get("extra_from", [])], base_dir)
    if fields.get("adapter"):
        update["adapters"] = {"adapter.gguf": _required_gguf(store, fields["adapter"], base_dir, "ADAPTER")}
    return body.model_copy(update={**update, "modelfile": None, "path": None})


def _modelfile_text(body: CreateRequest) -> tuple[str | bytes, Path | None]:
    if body.modelfile:
        return body.modelfile, None
    if body.path:
        path = Path(body.path).expanduser()
        try:
            return path.read_bytes(), path.parent
        except OSError as exc:
            raise BadRequest(f"error reading Modelfile: {exc.strerror}") from None
    raise BadRequest("path or Modelfile are required")


def _sources(store: Store, values: list[str], base_dir: Path | None) -> dict[str, Any]:
    """FROM values: ``@sha256:...`` or a local GGUF file → ``files``; a model name (first FROM only) → ``from``."""
    first, *rest = values
    digest = _local_gguf(store, first, base_dir)
    if digest is None:
        if rest:
            raise BadRequest("FROM a model name cannot be combined with further FROM lines")
        return {"from_": first}
    digests = [digest, *(_required_gguf(store, value, base_dir, "FROM") for value in rest)]
    return {"files": {f"{digest.removeprefix('sha256:')}.gguf": digest for digest in digests}}


def _required_gguf(store: Store, value: str, base_dir: Path | None, instruction: str) -> str:
    digest = _local_gguf(store, value, base_dir)
    if digest is None:
        raise BadRequest(f"{instruction} {value}: no such file")
    return digest


def _local_gguf(store: Store, value: str, base_dir: Path | None) -> str | None:
    """The digest a FROM/ADAPTER value names: ``@sha256:..`` or a GGUF file on this host (imported)."""
    if value.startswith("@"):
        return parse_digest(value[1:])
    path = Path(value).expanduser()
    if base_dir is not None and not path.is_absolute():
        path = base_dir / path
    if path.is_dir():
        raise BadRequest(f"{value} is a directory: only GGUF files are supported")
    if not path.is_file():
        return None
    try:
        read_gguf(path)
    except GGUFError:
        raise BadRequest(NOT_GGUF) from None
    return store.import_file(path)[0]


# ------------------------------------------------------------------------------------------- assembly
@dataclass
class _Assembly:
    """Layers being put together, each with its progress line; everything referenced is pinned."""

    store: Store
    pins: Pins
    steps: list[tuple[Layer, str]] = field(default_factory=list)
    ggufs: list[tuple[str, GGUFInfo]] = field(default_factory=list)
    base_config: dict[str, Any] = field(default_factory=dict)
    params: dict[str, Any] = field(default_factory=dict)

    @property
    def layers(self) -> list[Layer]:
        return [layer for layer, _ in self.steps]

    def reuse(self, layer: Layer) -> None:
        """Add an existing blob (pinned, then checked: a sweep may have run just before the pin)."""
        self.pins.add(layer.digest)
        if not self.store.has_blob(layer.digest):
            raise NotFound(f"blob {layer.digest} not found")
        self.steps.append((layer, f"using existing layer {layer.digest}"))

    def add(self, kind: str, data: bytes, replaces: tuple[str, ...] = ()) -> None:
        """Add a new layer made of ``data``, dropping the layers of the kinds it ``replaces``."""
        self.steps = [step for step in self.steps if step[0].kind not in replaces]
        verb = "using existing" if self.store.has_blob(bytes_digest(data)) else "creating new"
        layer = text_layer(self.store, kind, data, self.pins)
        self.steps.append((layer, f"{verb} layer {layer.digest}"))


def run_create(store: Store, plan: CreatePlan) -> Generator[dict[str, Any], None, None]:
    """Assemble and write the model; yields progress objects, raises ``CaravanError`` on failure."""
    with store.pinned() as pins:
        asm = _Assembly(store, pins)
        if plan.base is not None:
            _from_model(asm, plan.base)
        else:
            yield from ({"status": "parsing GGUF"} for _ in plan.files)
            _from_files(asm, plan.files)
        _add_files(asm, plan.adapters, kind="adapter")
        _apply_request(asm, plan)
        manifest = build_manifest(store, _config(asm, plan), asm.layers, pins)
        yield from ({"status": status} for _, status in asm.steps)
        yield {"status": "writing manifest"}
        replace_manifest(store, plan.name, manifest.to_bytes())
    yield {"status": "success"}


def _from_model(asm: _Assembly, name: ModelName) -> None:
    stored = asm.store.read_manifest(name)
    asm.pins.add(*stored.manifest.all_digests())
    asm.base_config = _read_json(asm.store, stored.manifest.config.digest, {})
    for layer in stored.manifest.layers:
        asm.reuse(layer.model_copy(update={"from_": stored.name.display}))
        info = _header(asm.store, layer.digest) if layer.kind in _FROM_MEDIA else None
        if info is not None:
            asm.ggufs.append((layer.kind, info))
        if layer.kind == "params":
            asm.params = _read_json(asm.store, layer.digest, {})


def _from_files(asm: _Assembly, files: dict[str, str]) -> None:
    _add_files(asm, files, kind=None)
    model = next((info for kind, info in asm.ggufs if kind == "model"), None)
    if model is not None:
        asm.params = default_params(model)


def _add_files(asm: _Assembly, files: dict[str, str], kind: str | None) -> None:
    """GGUF blobs as layers; ``kind`` None means judged from each header (model, projector, adapter)."""
    for filename, digest in files.items():
        asm.pins.add(digest)
        if not asm.store.has_blob(digest):
            raise NotFound(f"blob {digest} not found")
        info = _header(asm.store, digest)
        if info is None or filename.endswith(".safetensors"):
            raise BadRequest(NOT_GGUF)
        layer_kind = kind or gguf_layer_kind(info)
        size = asm.store.blob_path(digest).stat().st_size
        asm.reuse(Layer(media_type=LAYER_MEDIA + layer_kind, digest=digest, size=size))
        asm.ggufs.append((layer_kind, info))


def _apply_request(asm: _Assembly, plan: CreatePlan) -> None:
    if plan.template:
        asm.add("template", plan.template.encode(), replaces=("template", "prompt"))
    if plan.system:
        asm.add("system", plan.system.encode(), replaces=("system",))
    for text in plan.licenses:
        asm.add("license", text.encode())
    params = {**asm.params, **plan.parameters}
    if params:
        asm.add("params", json_blob(params), replaces=("params",))
    if plan.messages:
        asm.add("messages", json_blob(plan.messages), replaces=("messages",))


def _config(asm: _Assembly, plan: CreatePlan) -> bytes:
    """The new config blob: inherited fields, then what the GGUF layers say, then the request's."""
    config = {key: asm.base_config[key] for key in INHERITED_CONFIG if key in asm.base_config}
    model = next((info for kind, info in asm.ggufs if kind == "model"), None)
    if model is not None:
        families = list(dict.fromkeys(info.architecture for _, info in asm.ggufs if info.architecture))
        config |= gguf_config(model, families)
    else:
        config |= {key: asm.base_config[key] for key in DESCRIPTIVE_CONFIG if key in asm.base_config}
    return encode_config(config | plan.overrides)


def _header(store: Store, digest: str) -> GGUFInfo | None:
    try:
        return read_gguf(store.blob_path(digest))
    except (GGUFError, OSError):
        return None


def _read_json(store: Store, digest: str, default: Any) -> Any:
    try:
        return json.loads(store.read_blob(digest))
    except (NotFound, ValueError):
        return default


# ------------------------------------------------------------------------------------------- copy
def copy_model(store: Store, source: str, destination: str) -> None:
    """Copy the manifest of ``source`` to ``destination`` (blobs are shared); same path is a no-op."""
    src = _named(source, f"source {go_quote(source)} is invalid")
    dst = _named(destination, f"destination {go_quote(destination)} is invalid")
    src, dst = store.resolve(src), store.resolve(dst)
    if store.manifest_path(src) == store.manifest_path(dst):
        return
    missing = NotFound(f"model {go_quote(source)} not found")
    try:
        stored = store.read_manifest(src)
    except NotFound:
        raise missing from None
    with store.pinned(stored.manifest.all_digests()):
        if not all(store.has_blob(digest) for digest in stored.manifest.all_digests()):
            raise missing
        replace_manifest(store, dst, stored.raw)


def _named(raw: str, message: str) -> ModelName:
    try:
        return ModelName.parse(raw)
    except InvalidName:
        raise InvalidName(message) from None
