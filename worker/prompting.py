"""Build the text a model sees from an InferenceJob (ollama-api.md §3.2, §3.3, §9.3), and fit its tokens.

Order of preference: the request's or model's Go TEMPLATE (``caravan.prompt``), then the GGUF's own Jinja
chat template, then the bare prompt. ``raw`` generate requests bypass templating. Tool definitions, tool
results (``role: tool`` + ``tool_name``) and ``think`` reach the template as Ollama passes them.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import jinja2
from jinja2.sandbox import ImmutableSandboxedEnvironment

from caravan.errors import BadRequest
from caravan.gotemplate import TemplateError
from caravan.prompt import render_prompt
from caravan.queue import InferenceJob

PROMPT_TOO_LONG = (
    "the prompt is longer than the context length currently available to the model; shorten the prompt, "
    "adjust the context length in settings, or use a model with a longer context length"
)


@dataclass(frozen=True)
class TokenizerInfo:
    """What a Jinja chat template needs besides the messages."""

    chat_template: str | None
    bos_token: str = ""
    eos_token: str = ""


def _raise(message: str) -> None:
    raise BadRequest(f"template error: {message}")


@lru_cache(maxsize=32)
def compile_jinja(template: str) -> jinja2.Template:
    """A chat template compiled once (compiling costs ~2 ms and holds the GIL; models reuse theirs)."""
    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=["jinja2.ext.loopcontrols"])
    env.globals["raise_exception"] = _raise
    return env.from_string(template)


def render_jinja(template: str, messages: list[dict[str, Any]], info: TokenizerInfo, tools: Any = None,
                 think: bool | str | None = None) -> str:
    """Render a Hugging Face style chat template with a generation prompt."""
    extra = {} if think is None else {"enable_thinking": bool(think)}
    try:
        return compile_jinja(template).render(
            messages=messages, tools=tools, add_generation_prompt=True,
            bos_token=info.bos_token, eos_token=info.eos_token, **extra,
        )
    except jinja2.TemplateError as exc:
        raise BadRequest(f"template error: {exc}") from None


def job_messages(job: InferenceJob) -> list[dict[str, Any]]:
    """The conversation of a job: chat messages, or [system] + user prompt for generate."""
    if job.op == "chat":
        return list(job.messages)
    messages: list[dict[str, Any]] = []
    if job.system:
        messages.append({"role": "system", "content": job.system})
    messages.extend(job.messages)
    messages.append({"role": "user", "content": job.prompt})
    return messages


def think_args(think: bool | str | None) -> dict[str, Any]:
    """``render_prompt``'s ``think``/``think_level`` for a job's resolved ``think``."""
    if isinstance(think, str):
        return {"think": None, "think_level": think}
    return {"think": think, "think_level": ""}


def render_go(job: InferenceJob, template: str) -> str:
    """A Go TEMPLATE over the job: fill-in-middle when there is a suffix, else the conversation."""
    suffix = (job.prompt, job.suffix) if job.op == "generate" and job.suffix else None
    try:
        return render_prompt(template, messages=job_messages(job), tools=job.tools, prompt_suffix=suffix,
                             **think_args(job.think))
    except TemplateError as exc:
        raise BadRequest(f"template error: {exc}") from None


def build_prompt(job: InferenceJob, info: TokenizerInfo) -> str:
    """The final prompt text for ``job``."""
    if job.op == "generate" and (job.raw or (not job.template and not info.chat_template and not job.suffix)):
        return job.prompt
    if job.template:
        return render_go(job, job.template)
    if info.chat_template:
        return render_jinja(info.chat_template, job_messages(job), info, job.tools, job.think)
    return "\n\n".join(str(m.get("content", "")) for m in job_messages(job))


def fit_context(tokens: list[int], num_ctx: int, job: InferenceJob) -> list[int]:
    """Prompt tokens that leave room for at least one new token: with ``truncate`` (the default) the first
    ``num_keep`` tokens and the newest rest are kept; without it a prompt that does not fit is a 400."""
    limit = num_ctx - 1
    if len(tokens) <= limit:
        return tokens
    if not job.truncate:
        raise BadRequest(PROMPT_TOO_LONG)
    keep = min(int(job.options.get("num_keep", 4)), limit // 2)
    return tokens[:keep] + tokens[-(limit - keep):]
