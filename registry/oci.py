"""The distribution protocol's shapes (ollama-api.md §7; OCI distribution spec), shared by the registry
client (registry/client.py) and Caravan's own ``/v2/`` server (registry/routes/distribution.py).

    repository path   ``<ns>/<model>`` for the default host, ``<host:port>/<ns>/<model>`` for any other
    part plan         size = total/16 clamped to [min, max]; the last part takes the remainder
    error body        ``{"errors": [{"code": "MANIFEST_UNKNOWN", "message": ..., "detail": ...}]}``
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from caravan.errors import InvalidName
from caravan.names import DEFAULT_HOST, ModelName

MANIFEST_V2 = "application/vnd.docker.distribution.manifest.v2+json"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
MANIFEST_ACCEPT = f"{MANIFEST_V2}, {OCI_MANIFEST}"
OCTET = "application/octet-stream"
API_VERSION = {"Docker-Distribution-API-Version": "registry/2.0"}
PARTS = 16
USER_AGENT = "caravan/0.1 (ollama-compatible)"


@dataclass
class Part:
    """One byte range of a blob: ``N``, ``Offset``, ``Size``, ``Completed`` as in Ollama's part files."""

    n: int
    offset: int
    size: int
    completed: int = 0

    @property
    def start(self) -> int:
        """First byte still missing."""
        return self.offset + self.completed

    @property
    def stop(self) -> int:
        """One past the last byte of the part."""
        return self.offset + self.size

    @property
    def done(self) -> bool:
        return self.completed >= self.size

    def to_json(self) -> dict[str, int]:
        return {"N": self.n, "Offset": self.offset, "Size": self.size, "Completed": self.completed}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Part:
        return cls(int(data["N"]), int(data["Offset"]), int(data["Size"]), int(data.get("Completed", 0)))


def plan_parts(total: int, min_part: int, max_part: int, parts: int = PARTS) -> list[Part]:
    """Split ``total`` bytes the way Ollama does: total/16 per part, clamped to [min_part, max_part]."""
    size = min(max(total // parts, min_part), max_part)
    size = max(size, 1)
    return [Part(n, offset, min(size, total - offset)) for n, offset in enumerate(range(0, total, size))]


def served_repository(name: ModelName) -> str:
    """The repository path under which Caravan's ``/v2/`` serves a stored name (host kept unless default)."""
    return name.repository if name.host == DEFAULT_HOST else f"{name.host}/{name.repository}"


def name_from_repository(repo: str, tag: str) -> ModelName:
    """The stored name behind a ``/v2/`` repository path (``ns/model`` or ``host/ns/model``)."""
    parts = repo.strip("/").split("/")
    if len(parts) not in (2, 3):
        raise InvalidName(f"invalid repository {repo!r}")
    host = parts[0] if len(parts) == 3 else DEFAULT_HOST
    name = ModelName(host=host, namespace=parts[-2], model=parts[-1], tag=tag)
    if not name.is_valid():
        raise InvalidName(f"invalid repository {repo!r}")
    return name


def error_body(code: str, message: str, detail: Any = None) -> dict[str, Any]:
    """An OCI error body (what docker, ollama and our own client read on a 4xx/5xx)."""
    error: dict[str, Any] = {"code": code, "message": message}
    if detail is not None:
        error["detail"] = detail
    return {"errors": [error]}


def short(digest: str) -> str:
    """Ollama's 12-hex form used in progress lines (``sha256:`` stripped)."""
    return digest.removeprefix("sha256:").removeprefix("sha256-")[:12]
