"""Tool-call parsing on fixed model outputs (qwen ``<tool_call>``, llama3.1 JSON, mistral ``[TOOL_CALLS]``)."""

from __future__ import annotations

import re
from typing import Any

import pytest

from caravan.prompt import tool_call_tag
from caravan.tools import ToolCallParser, json_object_end, new_call_id

QWEN = ('<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>\n'
        '<tool_call>\n{"name": "get_time", "arguments": {"zone": "CET"}}\n</tool_call>')
LLAMA31 = '{"name": "get_weather", "parameters": {"city": "Tokyo", "unit": "celsius"}}'
MISTRAL = '[TOOL_CALLS] [{"name": "get_weather", "arguments": {"city": "Rome"}}, {"name": "noop", "arguments": {}}]'

QWEN_TEMPLATE = ('{{- range .Messages }}{{ if eq .Role "assistant" }}{{ if .ToolCalls }}<tool_call>\n'
                 '{{ range .ToolCalls }}{"name": "{{ .Function.Name }}", "arguments": {{ .Function.Arguments }}}'
                 '{{ end }}</tool_call>{{ else }}{{ .Content }}{{ end }}{{ end }}{{ end }}')
LLAMA31_TEMPLATE = ('{{- range .Messages }}{{- if eq .Role "assistant" }}<|start_header_id|>assistant<|end_header_id|>'
                    '\n{{- if .ToolCalls }}\n{{ range .ToolCalls }}{"name": "{{ .Function.Name }}", "parameters": '
                    '{{ .Function.Arguments }}}{{ end }}{{- else }}{{ .Content }}{{ end }}{{ end }}{{ end }}')
MISTRAL_TEMPLATE = ('{{- range .Messages }}{{- if .ToolCalls }}[TOOL_CALLS] [{{ range .ToolCalls }}'
                    '{"name": "{{ .Function.Name }}", "arguments": {{ json .Function.Arguments }}}{{ end }}]'
                    '{{ else }}{{ .Content }}{{ end }}{{ end }}')


def parse(tag: str, output: str, step: int = 0) -> tuple[list[dict[str, Any]], str]:
    """Feed ``output`` whole (step 0) or in ``step``-sized deltas; all calls and all content."""
    parser = ToolCallParser(tag)
    pieces = [output] if step == 0 else [output[i:i + step] for i in range(0, len(output), step)]
    calls: list[dict[str, Any]] = []
    content = ""
    for piece in pieces:
        found, text = parser.add(piece)
        calls += found
        content += text
    return calls, content + parser.flush()


def summary(calls: list[dict[str, Any]]) -> list[tuple[int, str, dict[str, Any]]]:
    return [(c["function"]["index"], c["function"]["name"], c["function"]["arguments"]) for c in calls]


@pytest.mark.parametrize("step", [0, 1, 3, 7])
@pytest.mark.parametrize(("template", "output", "expected"), [
    (QWEN_TEMPLATE, QWEN, [(0, "get_weather", {"city": "Paris"}), (1, "get_time", {"zone": "CET"})]),
    (LLAMA31_TEMPLATE, LLAMA31, [(0, "get_weather", {"city": "Tokyo", "unit": "celsius"})]),
    (MISTRAL_TEMPLATE, MISTRAL, [(0, "get_weather", {"city": "Rome"}), (1, "noop", {})]),
])
def test_model_outputs_become_calls(template: str, output: str, expected: list[Any], step: int) -> None:
    calls, content = parse(tool_call_tag(template), output, step)
    assert summary(calls) == expected and content == ""


def test_tags_come_from_the_templates() -> None:
    assert [tool_call_tag(t) for t in (QWEN_TEMPLATE, LLAMA31_TEMPLATE, MISTRAL_TEMPLATE)] == [
        "<tool_call>", "{", "[TOOL_CALLS] ["]


@pytest.mark.parametrize("step", [0, 1, 4])
def test_text_before_the_tag_is_content(step: int) -> None:
    calls, content = parse("<tool_call>", "Let me check. " + QWEN, step)
    assert content == "Let me check. " and len(calls) == 2


@pytest.mark.parametrize(("tag", "output"), [
    ("{", 'The answer is {"name": "x", "parameters": {}}'),   # JSON tags only count as the first output
    ("<tool_call>", '<tool_call>{"foo": 1}'),                  # no name: not a call
    ("{", '{"name": "f"}'),                                     # no arguments: not a call
    ("<tool_call>", "I would say <tool_"),                      # a partial tag at the end stays text
    ("{", "Plain prose, no JSON at all."),
])
def test_non_calls_are_returned_verbatim(tag: str, output: str) -> None:
    for step in (0, 1):
        calls, content = parse(tag, output, step)
        assert calls == [] and content == output


def test_text_after_calls_is_content_and_string_arguments_are_parsed() -> None:
    calls, content = parse("<tool_call>", '<tool_call>{"name": "f", "arguments": "{\\"a\\": 1}"}</tool_call> done')
    assert summary(calls) == [(0, "f", {"a": 1})] and content == "done"


def test_braces_inside_strings_do_not_end_objects() -> None:
    text = '{"name": "echo", "arguments": {"text": "a } tricky \\" { string"}}'
    assert json_object_end(text + "rest", 0) == len(text)
    calls, _ = parse("{", text, 2)
    assert calls[0]["function"]["arguments"] == {"text": 'a } tricky " { string'}


def test_call_ids() -> None:
    ids = {new_call_id() for _ in range(50)}
    assert len(ids) == 50 and all(re.fullmatch(r"call_[a-z0-9]{8}", i) for i in ids)
    calls, _ = parse("{", LLAMA31)
    assert re.fullmatch(r"call_[a-z0-9]{8}", calls[0]["id"])
