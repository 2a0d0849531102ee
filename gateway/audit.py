"""The audit trail: one JSON line per authenticated (or refused) API request, on logger ``caravan.audit``.

With ``CARAVAN_AUDIT_LOG=<path>`` the lines go to that file (appended, JSON, not propagated to stderr);
otherwise they travel with the gateway's other logs. Each line says who (user, role, key id), what
(``action``: ``request`` or pull/push/create/copy/delete/blob.upload/key.create/key.revoke/key.list/usage),
on which model, with which outcome (status, tokens, duration) and the request id. Prompt text is added only
with ``CARAVAN_AUDIT_PROMPTS=true``. Never a key, a hash of one, or any header.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from caravan.logs import JsonFormatter

log = logging.getLogger("caravan.audit")
PROMPT_FIELDS = ("system", "prompt", "suffix", "messages", "input", "instructions")

ACTIONS = {
    ("POST", "/api/pull"): "pull", ("POST", "/api/push"): "push", ("POST", "/api/create"): "create",
    ("POST", "/api/copy"): "copy", ("DELETE", "/api/delete"): "delete", ("POST", "/api/keys"): "key.create",
    ("GET", "/api/keys"): "key.list", ("GET", "/api/usage"): "usage",
}


def action_of(method: str, path: str) -> str:
    """What an admin would call the request."""
    if path.startswith("/api/keys/") and method == "DELETE":
        return "key.revoke"
    if path.startswith("/api/blobs/"):
        return "blob.upload" if method == "POST" else "blob.check"
    return ACTIONS.get((method, path), "request")


def configure(path: Path | None) -> None:
    """Send the audit logger to ``path`` (JSON lines) when given; else leave it to the root handler."""
    for handler in list(log.handlers):
        log.removeHandler(handler)
        handler.close()
    log.propagate = path is None
    log.setLevel(logging.INFO)
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        handler = logging.FileHandler(path, encoding="utf-8")
        handler.setFormatter(JsonFormatter("gateway"))
        log.addHandler(handler)


@dataclass
class AuditEntry:
    """Everything the line will say, filled as the request goes."""

    method: str
    path: str
    client: str = ""
    user: str = ""
    role: str = ""
    key_id: str = ""
    model: str = ""
    status: int = 0
    extra: dict[str, Any] = field(default_factory=dict)

    def note_body(self, body: Any, with_prompts: bool) -> None:
        """Model names (and, when asked, prompt text) from a JSON request body."""
        if not isinstance(body, dict):
            return
        for name in ("source", "destination"):
            if isinstance(body.get(name), str):
                self.extra[name] = body[name]
        if with_prompts:
            self.extra["prompt"] = {k: body[k] for k in PROMPT_FIELDS if body.get(k) is not None}

    def write(self, duration: float, request_id: str | None, prompt_tokens: int, completion_tokens: int) -> None:
        entry: dict[str, Any] = {
            "action": action_of(self.method, self.path), "user": self.user, "role": self.role,
            "key_id": self.key_id, "method": self.method, "path": self.path, "model": self.model,
            "status": self.status, "duration": round(duration, 4), "client": self.client,
        }
        if prompt_tokens or completion_tokens:
            entry |= {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens}
        if request_id:
            entry["request_id"] = request_id
        log.info("audit", extra={k: v for k, v in {**entry, **self.extra}.items() if v not in ("", None)})
