"""``caravan run MODEL [PROMPT]``: make sure the model is there (pull on 404), load it, then answer one
prompt (the argument and/or piped stdin) or start the interactive REPL."""

from __future__ import annotations

import json
import sys
from typing import Annotated, Any

import typer

from caravan.cli import models
from caravan.cli.client import Client, CLIError, ServerError, exits_on_error
from caravan.cli.repl import PROMPT, History, Repl
from caravan.cli.session import Session
from caravan.duration import parse_go_duration
from caravan.errors import CaravanError


def ensure_model(client: Client, model: str, insecure: bool) -> dict[str, Any]:
    """``/api/show`` for ``model``; when the gateway does not have it, pull it first."""
    try:
        return dict(client.call("POST", "/api/show", {"model": model}))
    except ServerError as exc:
        if exc.status != 404:
            raise
    models.transfer(client, "/api/pull", model, insecure)
    return dict(client.call("POST", "/api/show", {"model": model}))


def prompt_text(words: list[str] | None) -> str | None:
    """The one-shot prompt: piped stdin, then the words; ``None`` means interactive."""
    parts = list(words or [])
    if not sys.stdin.isatty():
        piped = sys.stdin.read()
        return " ".join([piped, *parts] if piped else parts)
    return " ".join(parts) if parts else None


def check_keepalive(value: str | None) -> str | None:
    """``--keepalive`` must be a Go duration (``5m``, ``1h``, ``-1m``, ``0``)."""
    if value is None:
        return None
    try:
        parse_go_duration(value.strip())
    except CaravanError as exc:
        raise CLIError(exc.message) from None
    return value.strip()


def embed(client: Client, model: str, text: str | None) -> None:
    """Embedding models answer with their vector as JSON."""
    if text is None:
        raise CLIError(f"{model} is an embedding model: give it text to embed (an argument or stdin)")
    result = client.call("POST", "/api/embed", {"model": model, "input": text})
    vectors = result.get("embeddings") or [[]]
    typer.echo(json.dumps(vectors[0]))


def replay(session: Session, info: dict[str, Any]) -> None:
    """Show the model's own MESSAGE history before the first prompt, as ``ollama run`` does."""
    for message in info.get("messages") or []:
        if message.get("role") == "user":
            typer.echo(f"{PROMPT}{message.get('content', '')}")
        elif message.get("role") == "assistant":
            typer.echo(f"{message.get('content', '')}\n")


def is_embedding(info: dict[str, Any]) -> bool:
    capabilities = info.get("capabilities") or []
    return "embedding" in capabilities and "completion" not in capabilities


@exits_on_error
def run(model: Annotated[str, typer.Argument(help="Model name.")],
        prompt: Annotated[list[str] | None, typer.Argument(help="Prompt; none starts a chat.")] = None,
        keepalive: Annotated[str | None, typer.Option("--keepalive", help="How long to keep the model "
                                                      "loaded (e.g. 5m).")] = None,
        verbose: Annotated[bool, typer.Option("--verbose", help="Show timings for the answer.")] = False,
        insecure: Annotated[bool, typer.Option("--insecure", help="Use an insecure registry.")] = False,
        nowordwrap: Annotated[bool, typer.Option("--nowordwrap", help="Don't wrap words.")] = False,
        format_: Annotated[str, typer.Option("--format", help="Response format (e.g. json).")] = "",
        think: Annotated[bool | None, typer.Option("--think/--nothink", help="Thinking on or off.")] = None,
        hidethinking: Annotated[bool, typer.Option("--hidethinking", help="Hide the thinking.")] = False) -> None:
    """Run a model: one answer, or an interactive chat."""
    keep_alive = check_keepalive(keepalive)
    with Client.from_env() as client:
        info = ensure_model(client, model, insecure)
        text = prompt_text(prompt)
        if is_embedding(info):
            return embed(client, model, text)
        session = Session(client, model, keep_alive=keep_alive, format=format_, think=think,
                          hide_thinking=hidethinking, verbose=verbose, wordwrap=not nowordwrap)
        session.load()
        if text is not None:
            return session.generate(text)
        replay(session, info)
        Repl(session, History.from_env()).run()
