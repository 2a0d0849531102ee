"""Ollama's native API shapes (ollama-api.md §3), field by field.

Lenient in: unknown keys are accepted and ignored. Exact out: responses are dumped with
``exclude_none`` so optional fields behave like Go's ``omitempty``; durations are nanoseconds;
timestamps are RFC3339 UTC.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from caravan.errors import BadRequest
from caravan.grammar import check_format


def now_rfc3339() -> str:
    """Server timestamp in Go's RFC3339Nano style, UTC."""
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def mtime_rfc3339(epoch: float) -> str:
    """A file time with the local offset, as Ollama prints ``modified_at``."""
    return datetime.fromtimestamp(epoch).astimezone().isoformat()


class WireModel(BaseModel):
    """Base for requests: unknown keys ignored; types strict as Go's decoder (``"yes"`` is no bool)."""

    model_config = ConfigDict(extra="ignore", populate_by_name=True, strict=True)


class ToolCallFunction(WireModel):
    index: int = 0
    name: str
    arguments: dict[str, Any] = Field(default_factory=dict)


class ToolCall(WireModel):
    id: str | None = None
    function: ToolCallFunction


class Message(WireModel):
    role: str
    content: str = ""
    thinking: str | None = None
    images: list[str] | None = None
    tool_calls: list[ToolCall] | None = None
    tool_name: str | None = None
    tool_call_id: str | None = None

    @field_validator("role")
    @classmethod
    def _lower(cls, value: str) -> str:
        return value.lower()

    @field_validator("content", mode="before")
    @classmethod
    def _null_content(cls, value: Any) -> Any:
        return "" if value is None else value


Format = Literal["json", ""] | dict[str, Any] | None
Think = bool | Literal["low", "medium", "high", "max"] | None
THINK_LEVELS = ("low", "medium", "high", "max")


def check_keep_alive(value: Any) -> Any:
    """``keep_alive`` is a number (seconds) or a duration string; anything else is Ollama's type error."""
    if value is None or (isinstance(value, int | float | str) and not isinstance(value, bool)):
        return value
    raise BadRequest(f"Unsupported type: '{type(value).__name__}'")


class ModelRequest(WireModel):
    """Fields of every request that runs a model: the name, ``keep_alive`` and ``options``."""

    model: str = ""
    keep_alive: float | str | None = None
    options: dict[str, Any] | None = None

    @field_validator("keep_alive", mode="before")
    @classmethod
    def _keep_alive_type(cls, value: Any) -> Any:
        return check_keep_alive(value)


class InferenceRequest(ModelRequest):
    """Fields shared by generate and chat."""

    stream: bool | None = None
    format: Format = None
    think: Think = None
    truncate: bool | None = None
    shift: bool | None = None
    logprobs: bool | None = None
    top_logprobs: int | None = None

    @field_validator("format", mode="before")
    @classmethod
    def _format_type(cls, value: Any) -> Any:
        return check_format(value)

    @field_validator("think", mode="before")
    @classmethod
    def _think_value(cls, value: Any) -> Any:
        if value is None or isinstance(value, bool) or value in THINK_LEVELS:
            return value
        raise BadRequest(f'invalid think value: {json.dumps(value)} (must be "high", "medium", "low", "max", '
                         "true, or false)")

    @field_validator("top_logprobs")
    @classmethod
    def _top_logprobs(cls, value: int | None) -> int | None:
        if value is not None and not 0 <= value <= 20:
            raise BadRequest("top_logprobs must be between 0 and 20")
        return value


class GenerateRequest(InferenceRequest):
    prompt: str = ""
    suffix: str = ""
    system: str | None = None
    template: str | None = None
    context: list[int] | None = None
    raw: bool = False
    images: list[str] | None = None


class ChatRequest(InferenceRequest):
    messages: list[Message] = Field(default_factory=list)
    tools: list[dict[str, Any]] | None = None


class ShowRequest(WireModel):
    model: str = ""
    name: str = ""
    verbose: bool = False
    system: str | None = None


class Metrics(BaseModel):
    """The six duration/count fields of a final chunk (nanoseconds)."""

    total_duration: int | None = None
    load_duration: int | None = None
    prompt_eval_count: int | None = None
    prompt_eval_duration: int | None = None
    eval_count: int | None = None
    eval_duration: int | None = None


class GenerateResponse(Metrics):
    model: str
    created_at: str = Field(default_factory=now_rfc3339)
    response: str = ""
    thinking: str | None = None
    done: bool = False
    done_reason: str | None = None
    context: list[int] | None = None
    logprobs: list[dict[str, Any]] | None = None


class ResponseMessage(BaseModel):
    role: str = "assistant"
    content: str = ""
    thinking: str | None = None
    tool_calls: list[ToolCall] | None = None


class ChatResponse(Metrics):
    model: str
    created_at: str = Field(default_factory=now_rfc3339)
    message: ResponseMessage = Field(default_factory=ResponseMessage)
    done: bool = False
    done_reason: str | None = None
    logprobs: list[dict[str, Any]] | None = None


class EmbedRequest(ModelRequest):
    """``/api/embed`` (§3.7); ``input`` is checked by hand for Ollama's ``invalid input type``."""

    input: Any = None
    truncate: bool | None = None
    dimensions: int | None = None

    @property
    def inputs(self) -> list[str]:
        """The texts to embed: a string is one input (``""`` none), a list of strings as is."""
        if self.input is None or self.input == "":
            return []
        if isinstance(self.input, str):
            return [self.input]
        if isinstance(self.input, list) and all(isinstance(item, str) for item in self.input):
            return list(self.input)
        raise BadRequest("invalid input type")


class EmbedResponse(BaseModel):
    model: str
    embeddings: list[list[float]]
    total_duration: int | None = None
    load_duration: int | None = None
    prompt_eval_count: int | None = None


class EmbeddingsRequest(ModelRequest):
    """Legacy ``/api/embeddings`` (§3.8): one ``prompt``, vector not normalised."""

    prompt: str = ""


class EmbeddingsResponse(BaseModel):
    embedding: list[float]


def dump(model: BaseModel) -> dict[str, Any]:
    """Serialise a response the way Go's ``omitempty`` would."""
    return model.model_dump(exclude_none=True)
