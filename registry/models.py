"""Read a stored model: its config, text layers, GGUF header; build /api/tags, /api/show and ModelRecord."""

from __future__ import annotations

import json
from functools import cached_property, lru_cache
from pathlib import Path
from typing import Any

from caravan.prompt import template_capabilities
from caravan.wire.ollama import mtime_rfc3339
from caravan.wire.registry import Details, ModelRecord
from registry.gguf import GGUFError, GGUFInfo, read_gguf
from registry.modelfile import format_modelfile, format_parameters
from registry.store import Store, StoredManifest


def kv_bytes_per_token(info: GGUFInfo | None) -> int:
    """f16 K+V bytes one context token costs: layers × kv heads × head dim × 2 (K and V) × 2 bytes."""
    if info is None:
        return 0
    arch, kv = info.architecture, info.kv
    layers = int(kv.get(f"{arch}.block_count") or 0)
    heads = int(kv.get(f"{arch}.attention.head_count") or 1)
    kv_heads = int(kv.get(f"{arch}.attention.head_count_kv") or heads)
    embed = int(kv.get(f"{arch}.embedding_length") or 0)
    head_dim = int(kv.get(f"{arch}.attention.key_length") or (embed // heads if heads else 0))
    return layers * kv_heads * head_dim * 2 * 2


@lru_cache(maxsize=64)
def _gguf(path: str, mtime: float) -> GGUFInfo:
    return read_gguf(path)


class ModelView:
    """One stored model with lazy access to its layers."""

    def __init__(self, store: Store, stored: StoredManifest) -> None:
        self.store = store
        self.stored = stored
        self.manifest = stored.manifest

    def _text(self, kind: str) -> str | None:
        layer = self.manifest.layer(kind) or (self.manifest.layer("prompt") if kind == "template" else None)
        return self.store.read_blob(layer.digest).decode() if layer else None

    def _json(self, kind: str, default: Any) -> Any:
        text = self._text(kind)
        return json.loads(text) if text else default

    @cached_property
    def config(self) -> dict[str, Any]:
        return dict(json.loads(self.store.read_blob(self.manifest.config.digest)))

    @property
    def params(self) -> dict[str, Any]:
        return dict(self._json("params", {}))

    @property
    def messages(self) -> list[dict[str, Any]]:
        return list(self._json("messages", []))

    @property
    def template(self) -> str | None:
        return self._text("template")

    @property
    def system(self) -> str | None:
        return self._text("system")

    @property
    def licenses(self) -> list[str]:
        layers = [layer for layer in self.manifest.layers if layer.kind == "license"]
        return [self.store.read_blob(layer.digest).decode() for layer in layers]

    @property
    def model_path(self) -> Path | None:
        layer = self.manifest.layer("model")
        return self.store.blob_path(layer.digest) if layer else None

    @property
    def gguf(self) -> GGUFInfo | None:
        return _gguf_at(self.model_path)

    @property
    def projector_paths(self) -> list[Path]:
        return [self.store.blob_path(layer.digest) for layer in self.manifest.layers if layer.kind == "projector"]

    def details(self, *, parent: bool = False) -> Details:
        """``details`` of tags/show; ``parent`` fills ``parent_model`` (show: the model layer's source)."""
        config = self.config
        family = config.get("model_family", "")
        layer = self.manifest.layer("model")
        return Details(
            parent_model=(layer.from_ or "") if parent and layer else "",
            format=config.get("model_format", "gguf"),
            family=family,
            families=config.get("model_families") or ([family] if family else None),
            parameter_size=config.get("model_type", ""),
            quantization_level=config.get("file_type", ""),
        )

    def capabilities(self) -> list[str]:
        caps: list[str] = list(self.config.get("capabilities") or [])
        info = self.gguf
        kv = info.kv if info else {}
        arch = info.architecture if info else ""
        caps.append("embedding" if f"{arch}.pooling_type" in kv else "completion")
        if f"{arch}.vision.block_count" in kv or self.manifest.layer("projector"):
            caps.append("vision")
        template = self.template
        if template is not None:
            caps.extend(sorted(template_capabilities(template)))
        elif info and info.chat_template and "tools" in info.chat_template:
            caps.append("tools")
        return list(dict.fromkeys(caps))

    def record(self) -> ModelRecord:
        layer = self.manifest.layer("model")
        info = self.gguf
        return ModelRecord(
            name=self.stored.name.display,
            digest=self.stored.digest,
            blob=layer.digest if layer else "",
            size=layer.size if layer else 0,
            params=self.params,
            template=self.template,
            system=self.system,
            messages=self.messages,
            capabilities=self.capabilities(),
            context_length=(info.context_length or 0) if info else 0,
            kv_bytes_per_token=kv_bytes_per_token(info),
            details=self.details(),
        )

    def tags_entry(self) -> dict[str, Any]:
        name = self.stored.name.display
        return {
            "name": name,
            "model": name,
            "modified_at": mtime_rfc3339(self.stored.mtime),
            "size": self.manifest.size,
            "digest": self.stored.digest,
            "details": self.details().model_dump(exclude_none=True),
            "capabilities": self.capabilities(),
        }

    def show(self, *, verbose: bool = False, system: str | None = None) -> dict[str, Any]:
        """``/api/show`` (ollama-api.md §3.11); empty fields left out, ``model_info`` always present."""
        info = self.gguf
        system = system or self.system
        template = self.template if self.template is not None else (info.chat_template if info else None)
        projector = _gguf_at(next(iter(self.projector_paths), None))
        body: dict[str, Any] = {
            "license": "\n".join(self.licenses) or None,
            "modelfile": self.modelfile(system),
            "parameters": format_parameters(self.params) or None,
            "template": template,
            "system": system,
            **{key: self.config.get(key) or None for key in ("renderer", "parser")},
            "details": self.details(parent=True).model_dump(exclude_none=True),
            "messages": self.messages or None,
            "model_info": info.model_info(verbose=verbose) if info else {},
            "projector_info": projector.model_info(verbose=verbose) if projector else None,
            "tensors": info.tensor_summaries() if info else None,
            "capabilities": self.capabilities(),
            "modified_at": mtime_rfc3339(self.stored.mtime),
            "requires": self.config.get("requires") or None,
        }
        return {key: value for key, value in body.items() if value is not None}

    def modelfile(self, system: str | None) -> str:
        """``ollama show --modelfile`` text: FROM the model blob's absolute path."""
        path = self.model_path
        return format_modelfile(
            from_=str(path) if path else self.stored.name.display,
            template=self.template,
            system=system,
            parameters=self.params,
            license=self.licenses,
            messages=self.messages,
            adapters=[str(self.store.blob_path(x.digest)) for x in self.manifest.layers if x.kind == "adapter"],
            shortname=self.stored.name.display,
            projectors=[str(path) for path in self.projector_paths],
            renderer=self.config.get("renderer") or None,
            parser=self.config.get("parser") or None,
        )


def _gguf_at(path: Path | None) -> GGUFInfo | None:
    """The (cached) header of the GGUF blob at ``path``; None when absent or unreadable."""
    if path is None or not path.is_file():
        return None
    try:
        return _gguf(str(path), path.stat().st_mtime)
    except (GGUFError, OSError):
        return None
