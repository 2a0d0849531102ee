"""Ollama model names: ``[scheme://][host/][namespace/]model[:tag]`` (ollama-api.md §5).

``ModelName.parse`` fills defaults (registry.ollama.ai / library / latest) and validates every part, so a name
that reaches the store can never walk out of it (no ``..``, no absolute paths, no empty parts).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from caravan.errors import InvalidName

DEFAULT_HOST = "registry.ollama.ai"
DEFAULT_NAMESPACE = "library"
DEFAULT_TAG = "latest"

_PART = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,79}$")
_NAMESPACE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_-]{0,79}$")
_HOST = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.:-]{0,349}$")
_DIGEST = re.compile(r"^sha256[:-]([0-9a-fA-F]{64})$")


@dataclass(frozen=True)
class ModelName:
    """A fully qualified, validated model name."""

    host: str
    namespace: str
    model: str
    tag: str
    scheme: str = "https"

    @classmethod
    def parse(cls, raw: str) -> ModelName:
        """Parse and validate ``raw``; raise :class:`InvalidName` when any part is invalid."""
        text = raw.strip()
        scheme = "https"
        if "://" in text:
            scheme, _, text = text.partition("://")
            if scheme not in ("http", "https"):
                raise InvalidName(f"invalid model name {raw!r}")
        tag = DEFAULT_TAG
        colon, slash = text.rfind(":"), text.rfind("/")
        if colon > slash:
            text, tag = text[:colon], text[colon + 1 :]
        parts = text.split("/")
        if len(parts) > 3:
            raise InvalidName(f"invalid model name {raw!r}")
        model = parts[-1]
        namespace = parts[-2] if len(parts) >= 2 else DEFAULT_NAMESPACE
        host = parts[-3] if len(parts) == 3 else DEFAULT_HOST
        name = cls(host=host, namespace=namespace, model=model, tag=tag, scheme=scheme)
        if not name.is_valid():
            raise InvalidName(f"invalid model name {raw!r}")
        return name

    def is_valid(self) -> bool:
        """Every part present and made of allowed characters."""
        return bool(
            _HOST.match(self.host)
            and _NAMESPACE.match(self.namespace)
            and _PART.match(self.model)
            and _PART.match(self.tag)
            and ".." not in self.host
            and not self.model.startswith(".")
        )

    @property
    def display(self) -> str:
        """Ollama's shortest form: ``model:tag``, ``ns/model:tag`` or ``host/ns/model:tag``."""
        if self.host != DEFAULT_HOST:
            return f"{self.host}/{self.namespace}/{self.model}:{self.tag}"
        if self.namespace != DEFAULT_NAMESPACE:
            return f"{self.namespace}/{self.model}:{self.tag}"
        return f"{self.model}:{self.tag}"

    @property
    def full(self) -> str:
        """``host/namespace/model:tag``."""
        return f"{self.host}/{self.namespace}/{self.model}:{self.tag}"

    @property
    def repository(self) -> str:
        """The registry repository path ``namespace/model``."""
        return f"{self.namespace}/{self.model}"

    def parts(self) -> tuple[str, str, str, str]:
        """The four path parts under ``manifests/``."""
        return (self.host, self.namespace, self.model, self.tag)

    def key(self) -> str:
        """Case-insensitive identity, used for comparisons and job ids."""
        return self.full.lower()

    def __str__(self) -> str:
        return self.display


def parse_digest(raw: str) -> str:
    """Return the canonical ``sha256:<hex>`` form or raise :class:`InvalidName`."""
    match = _DIGEST.match(raw.strip())
    if not match:
        raise InvalidName("invalid digest format")
    return f"sha256:{match.group(1).lower()}"
