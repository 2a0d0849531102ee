"""API keys and usage reports: the shapes of ``/api/keys`` and ``/api/usage`` (docs/security.md).

    POST   /api/keys         KeyCreate  → KeyCreated (KeyInfo + ``key``: the secret, shown this once)
    GET    /api/keys         → {"keys": [KeyInfo, ...]}          never a secret or a hash
    DELETE /api/keys/{id}    → KeyInfo of the revoked key        (``id`` may also be a unique name)
    GET    /api/usage?from=YYYY-MM-DD&to=YYYY-MM-DD&user=&model=  → UsageReport

A key belongs to a user (``name``) with a role; ``models`` (when not null) is the allow-list of model names
(``name:tag``, ``name:*`` for every tag, ``*`` for all); ``priority`` weighs the user in fair sharing.
"""

from __future__ import annotations

import re
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from caravan.errors import CaravanError, InvalidName
from caravan.names import ModelName

Role = Literal["admin", "user"]
USER_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.@-]{0,63}$")  # no "|": usage fields are "user|model|kind"


class Limits(BaseModel):
    """Per-key limits; ``None`` is unlimited."""

    model_config = ConfigDict(extra="forbid")

    max_concurrent: int | None = Field(None, ge=0)  # requests in flight at once (inference routes)
    requests_per_minute: int | None = Field(None, ge=0)  # every authenticated request
    tokens_per_day: int | None = Field(None, ge=0)  # prompt + completion tokens per UTC day


def check_model_pattern(pattern: str) -> str:
    """An allow-list entry in its canonical form: ``*``, ``name:*`` or a full name's shortest form."""
    text = pattern.strip()
    if text == "*":
        return text
    if text.endswith(":*"):
        return ModelName.parse(text[:-2]).display.rsplit(":", 1)[0] + ":*"
    return ModelName.parse(text).display


class KeyCreate(BaseModel):
    """``POST /api/keys``: who the key is for and what it may do."""

    model_config = ConfigDict(extra="forbid")

    name: str = ""  # the user; "" → ``key-{id}``
    role: Role = "user"
    models: list[str] | None = None
    priority: int = Field(0, ge=0, le=100)
    limits: Limits = Field(default_factory=Limits)

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        if value and not USER_NAME.match(value):
            raise ValueError("use 1-64 letters, digits, '_', '.', '@' or '-'")
        return value

    @field_validator("models")
    @classmethod
    def _models(cls, value: list[str] | None) -> list[str] | None:
        try:
            return None if value is None else [check_model_pattern(item) for item in value]
        except InvalidName as exc:
            raise ValueError(exc.message) from None


class KeyInfo(BaseModel):
    """One key as listed: everything but the secret."""

    id: str
    name: str
    role: Role
    models: list[str] | None = None
    priority: int = 0
    limits: Limits = Field(default_factory=Limits)
    created_at: str | None = None
    last_used: str | None = None

    def dump(self) -> dict[str, Any]:
        """JSON-ready, with only the limits that are set."""
        return {**self.model_dump(), "limits": self.limits.model_dump(exclude_none=True)}


class KeyCreated(KeyInfo):
    key: str  # the secret; the gateway keeps only its sha256


class UsageRow(BaseModel):
    """One user's use of one model on one UTC day."""

    date: str
    user: str
    model: str
    requests: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    total_tokens: int = 0


class UsageReport(BaseModel):
    start: str = Field(serialization_alias="from")
    to: str
    usage: list[UsageRow] = Field(default_factory=list)

    def dump(self) -> dict[str, Any]:
        return self.model_dump(by_alias=True)


OPENAI_CODES = {401: "invalid_api_key", 429: "rate_limit_exceeded"}
OPENAI_TYPES = {401: "invalid_request_error", 403: "permission_error", 413: "invalid_request_error",
                429: "rate_limit_error"}


def openai_error(exc: CaravanError) -> dict[str, Any]:
    """OpenAI's error envelope for the gateway's own rejections (401/403/413/429) on ``/v1/*``."""
    return {"error": {"message": exc.message, "type": OPENAI_TYPES.get(exc.status, "api_error"), "param": None,
                      "code": OPENAI_CODES.get(exc.status)}}
