"""Build the text a model sees from an InferenceJob (ollama-api.md §3.2, §3.3, §9.3).

Order of preference: the request's or model's Go TEMPLATE (``caravan.prompt``), then the GGUF's own Jinja
chat template, then the bare prompt. ``raw`` generate requests bypass templating.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import jinja2
from caravan.prompt import render_prompt
from jinja2.sandbox import ImmutableSandboxedEnvironment

from caravan.errors import BadRequest
from caravan.queue import InferenceJob


@dataclass(frozen=True)
class TokenizerInfo:
    """What a Jinja chat template needs besides the messages."""

    chat_template: str | None
    bos_token: str = ""
    eos_token: str = ""


def _raise(message: str) -> None:
    raise BadRequest(f"template error: {message}")


def render_jinja(template: str, messages: list[dict[str, Any]], info: TokenizerInfo, tools: Any = None) -> str:
    """Render a Hugging Face style chat template with a generation prompt."""
    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=["jinja2.ext.loopcontrols"])
    env.globals["raise_exception"] = _raise
    try:
        return env.from_string(template).render(
            messages=messages, tools=tools, add_generation_prompt=True,
            bos_token=info.bos_token, eos_token=info.eos_token,
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


def build_prompt(job: InferenceJob, info: TokenizerInfo) -> str:
    """The final prompt text for ``job``."""
    if job.op == "generate" and (job.raw or (not job.template and not info.chat_template and not job.suffix)):
        return job.prompt
    if job.template:
        suffix = (job.prompt, job.suffix) if job.op == "generate" and job.suffix else None
        return render_prompt(job.template, messages=job_messages(job), tools=job.tools, prompt_suffix=suffix)
    if info.chat_template:
        return render_jinja(info.chat_template, job_messages(job), info, job.tools)
    return "\n\n".join(str(m.get("content", "")) for m in job_messages(job))
