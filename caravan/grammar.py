"""Structured outputs (ollama-api.md §3.6): a request's ``format`` → a llama.cpp GBNF grammar, or a clear 400.

``"json"`` is llama.cpp's generic JSON grammar; an object is a JSON schema converted with the converter of
``llama_cpp.llama_grammar`` (a port of llama.cpp's ``json_schema_to_gbnf``). It is called directly, never
through ``LlamaGrammar.from_json_schema`` or the chat handlers, which quietly fall back to generic JSON when a
schema cannot be converted: here a schema that cannot be honoured is an error before anything is queued.

llama-cpp-python is imported lazily: the gateway converts (to validate) and the worker only uses the text.
(A gateway without llama-cpp-python leaves conversion to the worker: see :func:`gateway_grammar`.)
"""

from __future__ import annotations

import json
from typing import Any

from caravan.errors import BadRequest

_EXPECTED = 'expected "json" or a valid JSON Schema object'


def check_format(value: Any) -> Any:
    """The ``format`` field's type rule: ``"json"``, a JSON object, or unset (``null`` / ``""``)."""
    if value is None or value in ("", "json") or isinstance(value, dict):
        return value
    raw = json.dumps(value, separators=(",", ":"), ensure_ascii=False)
    raise BadRequest(f"invalid format: {json.dumps(raw, ensure_ascii=False)}; {_EXPECTED}")


def grammar_for(fmt: Any) -> str | None:
    """GBNF text for ``fmt``; None when output is unconstrained. Raises :class:`BadRequest`."""
    check_format(fmt)
    if fmt in (None, ""):
        return None
    if fmt == "json":
        from llama_cpp.llama_grammar import JSON_GBNF

        return str(JSON_GBNF)
    return schema_grammar(fmt)


def gateway_grammar(fmt: Any) -> str | None:
    """The gateway's conversion: as :func:`grammar_for` where llama-cpp-python is installed; in an image without
    it only the type check runs here and the worker converts with the same converter (a bad schema is then a
    400 from the worker, still before the first token)."""
    check_format(fmt)
    try:
        return grammar_for(fmt)
    except ModuleNotFoundError:
        return None


def schema_grammar(schema: dict[str, Any]) -> str:
    """Convert a JSON schema; every converter failure (unknown type, bad ``$ref``, bad pattern…) is a 400."""
    from llama_cpp.llama_grammar import SchemaConverter

    converter = SchemaConverter(prop_order={}, allow_fetch=False, dotall=False, raw_pattern=False)
    try:
        resolved = converter.resolve_refs(json.loads(json.dumps(schema)), "input")
        converter.visit(resolved, "")
        grammar = str(converter.format_grammar())
    except (AssertionError, ValueError, KeyError, TypeError, IndexError, AttributeError, RecursionError) as exc:
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise BadRequest(f"invalid JSON schema in format: {reason}") from None
    if "root ::=" not in grammar:
        raise BadRequest("invalid JSON schema in format: the schema yields no grammar")
    return grammar
