"""Turn a local GGUF file into a stored model (Ollama layout): model blob, params layer, config blob, manifest.

Used by the demo import and by ``/api/create`` from files. Importing the same file twice writes the same
bytes, so the second import changes nothing (not even the manifest's mtime).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from caravan.names import ModelName
from registry.gguf import GGUFInfo, read_gguf
from registry.store import CONFIG_MEDIA, LAYER_MEDIA, Layer, Manifest, Store

# Chat-template markers → the stop strings Ollama's library ships for that template family.
_STOP_FAMILIES: tuple[tuple[str, list[str]], ...] = (
    ("<|im_end|>", ["<|im_start|>", "<|im_end|>"]),
    ("<|eot_id|>", ["<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"]),
    ("<end_of_turn>", ["<start_of_turn>", "<end_of_turn>"]),
)


def stop_tokens(info: GGUFInfo) -> list[str]:
    """Stop strings the model needs, judged from its chat template."""
    template = info.chat_template or ""
    for marker, stops in _STOP_FAMILIES:
        if marker in template:
            return stops
    return []


def config_blob(info: GGUFInfo, extra: dict[str, Any] | None = None) -> bytes:
    """The config blob Ollama writes for a GGUF model."""
    arch = info.architecture
    config: dict[str, Any] = {
        "model_format": "gguf",
        "model_family": arch,
        "model_families": [arch] if arch else None,
        "model_type": info.parameter_size,
        "file_type": info.quantization,
        "architecture": "amd64",
        "os": "linux",
    }
    config.update(extra or {})
    return json.dumps({k: v for k, v in config.items() if v not in (None, "", [])}, separators=(",", ":")).encode()


def text_layer(store: Store, kind: str, data: bytes) -> Layer:
    digest, size = store.write_blob_bytes(data)
    return Layer(media_type=LAYER_MEDIA + kind, digest=digest, size=size)


def build_manifest(store: Store, config: bytes, layers: list[Layer]) -> Manifest:
    digest, size = store.write_blob_bytes(config)
    return Manifest(config=Layer(media_type=CONFIG_MEDIA, digest=digest, size=size), layers=layers)


def import_gguf(store: Store, name: ModelName, path: Path, params: dict[str, Any] | None = None) -> bool:
    """Store ``path`` as model ``name``; returns True when a manifest was (re)written."""
    info = read_gguf(path)
    digest, size = store.import_file(path)
    layers = [Layer(media_type=LAYER_MEDIA + "model", digest=digest, size=size)]
    params = dict(params or {})
    stops = stop_tokens(info)
    if stops and "stop" not in params:
        params["stop"] = stops
    if params:
        layers.append(text_layer(store, "params", json.dumps(params, separators=(",", ":")).encode()))
    manifest = build_manifest(store, config_blob(info), layers)
    return store.write_manifest(name, manifest.to_bytes())
