"""Turn a local GGUF file into a stored model (Ollama layout): model blob, params layer, config blob, manifest.

Used by the demo import and by ``/api/create`` (registry/create.py), which builds on the pieces here: the
config blob (keys in Ollama's ``ConfigV2`` order), JSON and text layers, a GGUF file's layer kind and default
parameters. Importing the same file twice writes the same bytes, so the second import changes nothing (not
even the manifest's mtime).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from caravan.names import ModelName
from registry.gguf import GGUFInfo, read_gguf
from registry.store import CONFIG_MEDIA, LAYER_MEDIA, Layer, Manifest, Pins, Store

# Chat-template markers → the stop strings Ollama's library ships for that template family.
_STOP_FAMILIES: tuple[tuple[str, list[str]], ...] = (
    ("<|im_end|>", ["<|im_start|>", "<|im_end|>"]),
    ("<|eot_id|>", ["<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"]),
    ("<end_of_turn>", ["<start_of_turn>", "<end_of_turn>"]),
)

# Config blob keys in the order of Ollama's ConfigV2 struct (unknown keys follow, as given).
CONFIG_KEYS = (
    "model_format", "model_family", "model_families", "model_type", "file_type", "renderer", "parser",
    "requires", "remote_host", "remote_model", "capabilities", "context_length", "embedding_length",
    "base_name", "draft", "architecture", "os",
)  # fmt: skip


def stop_tokens(info: GGUFInfo) -> list[str]:
    """Stop strings the model needs, judged from its chat template."""
    template = info.chat_template or ""
    for marker, stops in _STOP_FAMILIES:
        if marker in template:
            return stops
    return []


def default_params(info: GGUFInfo, params: dict[str, Any] | None = None) -> dict[str, Any]:
    """``params`` plus the stop strings the model's chat template needs (unless ``stop`` is given)."""
    params = dict(params or {})
    stops = stop_tokens(info)
    if stops and "stop" not in params:
        params["stop"] = stops
    return params


def gguf_layer_kind(info: GGUFInfo) -> str:
    """``model``, ``adapter`` or ``projector``, judged from the GGUF header as Ollama does."""
    kind = info.kv.get("general.type")
    arch = info.architecture
    if kind == "adapter":
        return "adapter"
    standalone_vision = not info.kv.get(f"{arch}.block_count") and info.kv.get(f"{arch}.vision.block_count")
    return "projector" if kind == "projector" or standalone_vision else "model"


def gguf_config(info: GGUFInfo, families: list[str] | None = None) -> dict[str, Any]:
    """The config fields a GGUF model layer determines."""
    arch = info.architecture
    return {
        "model_format": "gguf",
        "model_family": arch,
        "model_families": families if families is not None else ([arch] if arch else None),
        "model_type": info.parameter_size,
        "file_type": info.quantization,
    }


def encode_config(config: dict[str, Any]) -> bytes:
    """Config blob bytes: ``CONFIG_KEYS`` order, empty values left out, ``architecture``/``os`` always set."""
    merged = {"architecture": "amd64", "os": "linux", **config}
    merged.pop("rootfs", None)
    order = {key: index for index, key in enumerate(CONFIG_KEYS)}
    keys = sorted(merged, key=lambda key: order.get(key, len(order)))
    kept = {key: merged[key] for key in keys if merged[key] not in (None, "", [], 0)}
    return json.dumps(kept, separators=(",", ":")).encode()


def config_blob(info: GGUFInfo, extra: dict[str, Any] | None = None) -> bytes:
    """The config blob Ollama writes for a GGUF model."""
    return encode_config({**gguf_config(info), **(extra or {})})


def json_blob(value: Any) -> bytes:
    """A JSON layer's bytes (params, messages): compact, keys sorted like Go's encoder does for maps."""
    return json.dumps(value, sort_keys=True, separators=(",", ":")).encode()


def bytes_digest(data: bytes) -> str:
    """``sha256:<hex>`` of ``data``."""
    return f"sha256:{hashlib.sha256(data).hexdigest()}"


def text_layer(store: Store, kind: str, data: bytes, pins: Pins | None = None) -> Layer:
    """Store ``data`` as a layer of ``kind``; with ``pins``, the blob is pinned before it is written."""
    if pins is not None:
        pins.add(bytes_digest(data))
    digest, size = store.write_blob_bytes(data)
    return Layer(media_type=LAYER_MEDIA + kind, digest=digest, size=size)


def build_manifest(store: Store, config: bytes, layers: list[Layer], pins: Pins | None = None) -> Manifest:
    """Store the config blob (pinned first when ``pins`` is given) and return the manifest."""
    if pins is not None:
        pins.add(bytes_digest(config))
    digest, size = store.write_blob_bytes(config)
    return Manifest(config=Layer(media_type=CONFIG_MEDIA, digest=digest, size=size), layers=layers)


def import_gguf(store: Store, name: ModelName, path: Path, params: dict[str, Any] | None = None) -> bool:
    """Store ``path`` as model ``name``; returns True when a manifest was (re)written."""
    info = read_gguf(path)
    digest, size = store.import_file(path)
    layers = [Layer(media_type=LAYER_MEDIA + "model", digest=digest, size=size)]
    params = default_params(info, params)
    if params:
        layers.append(text_layer(store, "params", json_blob(params)))
    manifest = build_manifest(store, config_blob(info), layers)
    return store.write_manifest(name, manifest.to_bytes())
