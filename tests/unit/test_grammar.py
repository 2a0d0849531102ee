"""``format`` → GBNF: what converts, and every failure a clear 400 (never a silent generic-JSON fallback)."""

from __future__ import annotations

import re
import sys
from typing import Any

import pytest

from caravan.errors import BadRequest
from caravan.grammar import check_format, gateway_grammar, grammar_for


def test_unconstrained_json_and_schema() -> None:
    assert grammar_for(None) is None and grammar_for("") is None
    assert re.search(r"^root\s+::=", grammar_for("json") or "", re.MULTILINE)
    gbnf = grammar_for({"type": "object", "properties": {"city": {"enum": ["Paris", "Tokyo"]}}, "required": ["city"]})
    assert gbnf and '\\"Paris\\"' in gbnf and '\\"Tokyo\\"' in gbnf


@pytest.mark.parametrize(("fmt", "message"), [
    ([1], 'invalid format: "[1]"; expected "json" or a valid JSON Schema object'),
    (3, 'invalid format: "3"; expected "json" or a valid JSON Schema object'),
    ("yaml", 'invalid format: "\\"yaml\\""; expected "json" or a valid JSON Schema object'),
    (True, 'invalid format: "true"; expected "json" or a valid JSON Schema object'),
])
def test_wrong_types(fmt: Any, message: str) -> None:
    with pytest.raises(BadRequest) as info:
        check_format(fmt)
    assert info.value.message == message


@pytest.mark.parametrize("schema", [
    {"type": "nonsense"},
    {"$ref": "#/definitions/missing"},
    {"$ref": "https://example.com/schema.json"},
    {"type": "string", "pattern": "no anchors"},
])
def test_schemas_that_cannot_be_converted(schema: dict[str, Any]) -> None:
    with pytest.raises(BadRequest) as info:
        grammar_for(schema)
    assert info.value.message.startswith("invalid JSON schema in format: ")


def test_gateway_without_llama_cpp_still_checks_types(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "llama_cpp.llama_grammar", None)
    assert gateway_grammar({"type": "object"}) is None  # the worker converts it
    with pytest.raises(BadRequest, match="invalid format"):
        gateway_grammar([1])
    monkeypatch.undo()
    assert gateway_grammar("json")
