"""Ollama's prompt rendering for Go-template models (spec §9.3), on top of :mod:`caravan.gotemplate`.

:func:`render_prompt` turns Ollama wire messages (``{"role", "content", "thinking"?, "images"?, "tool_calls"?,
"tool_name"?, "tool_call_id"?}``) and wire tools into the prompt string Ollama would send to the runner:

1. a template that mentions neither ``.Messages`` nor ``.Response`` gets ``{{ .Response }}`` appended;
2. ``prompt_suffix`` with both parts non-empty → one execution with ``Prompt``/``Suffix`` (fill-in-middle);
3. otherwise messages are collated (consecutive same-role messages joined by a blank line, tool messages never
   merged; system texts collected); a template using ``.Messages`` executes once;
4. else the legacy ``.System``/``.Prompt``/``.Response`` template runs once per finished turn, and the last turn
   uses the template truncated at its first ``.Response`` so the prompt ends where the reply begins.

Messages and tools are converted to the Go field names templates use (``Role``, ``Content``, ``ToolCalls``,
``Function.Arguments``, ``Function.Parameters.Properties`` …); tool definitions print (and ``json``) as the JSON
Ollama would marshal: known JSON-schema fields only, in Go struct order, insertion order kept inside maps.

Image tags (``[img-N]``), context truncation and the Modelfile ``SYSTEM`` vs request precedence are the
caller's business; ``system`` here is only prepended when the conversation has no leading system message.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from functools import lru_cache
from typing import Any

from caravan import gotemplate
from caravan.gotemplate import (
    FieldNode,
    IfNode,
    ListNode,
    Node,
    RangeNode,
    Template,
    TextNode,
    WithNode,
)

__all__ = [
    "DEFAULT_TEMPLATE",
    "collate",
    "infer_thinking_tags",
    "prepare_template",
    "render_prompt",
    "template_capabilities",
    "tool_call_tag",
    "tools_for_template",
]

DEFAULT_TEMPLATE = "{{ .Prompt }}"
_THINK_LEVELS = ("high", "medium", "low", "max")


# ------------------------------------------------------------------------------------------ templates


@lru_cache(maxsize=128)
def _parsed(template_text: str) -> Template:
    return gotemplate.parse(template_text or DEFAULT_TEMPLATE)


@lru_cache(maxsize=128)
def prepare_template(template_text: str) -> Template:
    """Parse (``""`` → ``{{ .Prompt }}``) and append ``{{ .Response }}`` when neither messages nor response
    are referenced, as Ollama's ``template.Parse`` does. Raises :class:`gotemplate.TemplateError`."""
    tmpl = _parsed(template_text)
    names = tmpl.identifiers()
    if "messages" in names or "response" in names:
        return tmpl
    return tmpl.extend(gotemplate.parse("{{ .Response }}"))


@lru_cache(maxsize=128)
def _truncated(template_text: str) -> Template:
    return prepare_template(template_text).truncate_at_response()


# ------------------------------------------------------------------------------------------ rendering


def render_prompt(
    template_text: str,
    *,
    messages: Sequence[Mapping[str, Any]],
    system: str | None = None,
    tools: Sequence[Mapping[str, Any]] | None = None,
    prompt_suffix: tuple[str, str] | None = None,
    think: bool | None = None,
    think_level: str = "",
) -> str:
    """Render the prompt Ollama would build for ``messages`` with a Go TEMPLATE (see module docstring).

    ``think``/``think_level`` become ``.Think`` (bool), ``.ThinkLevel`` (``think=True`` alone means
    ``"medium"``) and ``.IsThinkSet``. Raises :class:`gotemplate.TemplateError` on template errors.
    """
    tmpl = prepare_template(template_text)
    think_vars = _think_vars(think, think_level)
    if prompt_suffix is not None and prompt_suffix[0] and prompt_suffix[1]:
        prompt, suffix = prompt_suffix
        return tmpl.render({"Prompt": prompt, "Suffix": suffix, "Response": "", **think_vars})
    system_text, collated = collate(_with_default_system(messages, system))
    if "messages" in tmpl.identifiers():
        data = {
            "System": system_text,
            "Messages": [_template_message(m) for m in collated],
            "Tools": tools_for_template(tools),
            "Response": "",
            **think_vars,
        }
        return tmpl.render(data)
    return _render_legacy(template_text, collated, think_vars)


def _think_vars(think: bool | None, think_level: str) -> dict[str, Any]:
    if think is False:
        return {"Think": False, "ThinkLevel": "", "IsThinkSet": True}
    if think is True:
        return {"Think": True, "ThinkLevel": think_level or "medium", "IsThinkSet": True}
    enabled = think_level in _THINK_LEVELS
    return {"Think": enabled, "ThinkLevel": think_level, "IsThinkSet": bool(think_level)}


def _with_default_system(messages: Sequence[Mapping[str, Any]], system: str | None) -> list[Mapping[str, Any]]:
    msgs = list(messages)
    if system and not (msgs and str(msgs[0].get("role", "")).lower() == "system"):
        msgs.insert(0, {"role": "system", "content": system})
    return msgs


def collate(messages: Sequence[Mapping[str, Any]]) -> tuple[str, list[dict[str, Any]]]:
    """Merge consecutive same-role messages (not ``tool``) with ``"\\n\\n"``; return (system text, messages).

    The inputs are not mutated; roles are lower-cased like Ollama's JSON decoding does.
    """
    system: list[str] = []
    collated: list[dict[str, Any]] = []
    for raw in messages:
        msg = dict(raw)
        role = str(msg.get("role") or "").lower()
        content = str(msg.get("content") or "")
        msg["role"], msg["content"] = role, content
        if role == "system":
            system.append(content)
        if collated and collated[-1]["role"] == role and role != "tool":
            collated[-1]["content"] += "\n\n" + content
        else:
            collated.append(msg)
    return "\n\n".join(system), collated


_LEGACY_SLOTS = {"system": "System", "user": "Prompt", "assistant": "Response"}


def _render_legacy(template_text: str, messages: list[dict[str, Any]], think_vars: dict[str, Any]) -> str:
    """Per-turn execution of a ``.System``/``.Prompt``/``.Response`` template (Ollama's legacy path)."""
    tmpl = prepare_template(template_text)
    parts: list[str] = []
    turn = dict.fromkeys(_LEGACY_SLOTS.values(), "")
    for msg in messages:
        role = msg["role"]
        if _starts_turn(role, turn):
            parts.append(tmpl.render({**turn, **think_vars}))
            turn = dict.fromkeys(_LEGACY_SLOTS.values(), "")
        if role in _LEGACY_SLOTS:
            turn[_LEGACY_SLOTS[role]] = msg["content"]
    parts.append(_truncated(template_text).render({**turn, **think_vars}))
    return "".join(parts)


def _starts_turn(role: str, turn: dict[str, str]) -> bool:
    if role == "system":
        return bool(turn["Prompt"] or turn["Response"])
    return role == "user" and bool(turn["Response"])


# --------------------------------------------------------------------------------- Go-shaped values


class _GoStruct(dict[str, Any]):
    """A Go struct as templates see it (Go field names); ``go_json`` gives its ``encoding/json`` form.

    ``tags`` lists ``(json name, field name, omitempty)`` in struct order.
    """

    def __init__(self, fields: Mapping[str, Any], tags: tuple[tuple[str, str, bool], ...]) -> None:
        super().__init__(fields)
        self.tags = tags

    def go_json(self) -> dict[str, Any]:
        return {name: self[key] for name, key, omit in self.tags if not (omit and _is_empty(self[key]))}


class _PropertyType(list[str]):
    """Ollama's ``PropertyType``: prints as ``string`` (or ``[string null]``), marshals as string or list."""

    def go_string(self) -> str:
        if len(self) == 1:
            return self[0]
        return "[" + " ".join(self) + "]" if self else ""

    def go_json(self) -> Any:
        return self[0] if len(self) == 1 else list(self)


def _is_empty(value: Any) -> bool:
    """Go's ``omitempty`` test."""
    if value is None or value is False:
        return True
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return value == 0
    return isinstance(value, (str, list, tuple, dict)) and len(value) == 0


_TOOL_TAGS = (("type", "Type", False), ("items", "Items", True), ("function", "Function", False))
_FUNCTION_TAGS = (("name", "Name", False), ("description", "Description", False), ("parameters", "Parameters", False))
_PARAMETERS_TAGS = (
    ("type", "Type", False),
    ("$defs", "Defs", True),
    ("items", "Items", True),
    ("required", "Required", True),
    ("properties", "Properties", False),
)
_PROPERTY_TAGS = (
    ("anyOf", "AnyOf", True),
    ("type", "Type", True),
    ("items", "Items", True),
    ("description", "Description", True),
    ("enum", "Enum", True),
    ("properties", "Properties", True),
    ("required", "Required", True),
)


def _property_type(value: Any) -> _PropertyType:
    if isinstance(value, str):
        return _PropertyType([value])
    if isinstance(value, list):
        return _PropertyType(str(v) for v in value)
    return _PropertyType()


def _property(wire: Any) -> Any:
    """A JSON-schema property as Ollama's ``ToolProperty`` (unknown keys dropped, as Go's decoding does)."""
    if not isinstance(wire, Mapping):
        return wire
    fields = {
        "AnyOf": [_property(p) for p in wire.get("anyOf") or []] or None,
        "Type": _property_type(wire.get("type")),
        "Items": wire.get("items"),
        "Description": str(wire.get("description") or ""),
        "Enum": list(wire.get("enum") or []) or None,
        "Properties": _properties(wire.get("properties")),
        "Required": list(wire.get("required") or []) or None,
    }
    return _GoStruct(fields, _PROPERTY_TAGS)


def _properties(wire: Any) -> dict[str, Any] | None:
    if not isinstance(wire, Mapping):
        return None
    return {str(name): _property(prop) for name, prop in wire.items()}


def _tool(wire: Mapping[str, Any]) -> _GoStruct:
    function = wire.get("function") or {}
    params = function.get("parameters") or {}
    parameters = {
        "Type": str(params.get("type") or ""),
        "Defs": params.get("$defs"),
        "Items": params.get("items"),
        "Required": list(params.get("required") or []) or None,
        "Properties": _properties(params.get("properties")),
    }
    go_function = {
        "Name": str(function.get("name") or ""),
        "Description": str(function.get("description") or ""),
        "Parameters": _GoStruct(parameters, _PARAMETERS_TAGS),
    }
    fields = {
        "Type": str(wire.get("type") or ""),
        "Items": wire.get("items"),
        "Function": _GoStruct(go_function, _FUNCTION_TAGS),
    }
    return _GoStruct(fields, _TOOL_TAGS)


def tools_for_template(tools: Sequence[Mapping[str, Any]] | None) -> list[_GoStruct] | None:
    """Wire tools as ``.Tools`` entries: ``{Type, Items, Function: {Name, Description, Parameters: {Type,
    Defs, Items, Required, Properties}}}``; ``None`` when there are none (Go's nil slice)."""
    if not tools:
        return None
    return [_tool(t) for t in tools]


def _arguments(value: Any) -> dict[str, Any]:
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except ValueError:
            return {}
    return dict(value) if isinstance(value, Mapping) else {}


def _tool_call(wire: Mapping[str, Any]) -> dict[str, Any]:
    function = wire.get("function") or {}
    return {
        "ID": str(wire.get("id") or ""),
        "Function": {
            "Index": int(function.get("index") or 0),
            "Name": str(function.get("name") or ""),
            "Arguments": _arguments(function.get("arguments")),
        },
    }


def _template_message(msg: Mapping[str, Any]) -> dict[str, Any]:
    """A collated wire message with Go field names (``Images``/``ToolCalls`` are ``None`` when empty)."""
    return {
        "Role": msg["role"],
        "Content": msg["content"],
        "Thinking": str(msg.get("thinking") or ""),
        "Images": list(msg.get("images") or []) or None,
        "ToolCalls": [_tool_call(tc) for tc in msg.get("tool_calls") or []] or None,
        "ToolName": str(msg.get("tool_name") or ""),
        "ToolCallID": str(msg.get("tool_call_id") or ""),
    }


# --------------------------------------------------------------------------------------- capabilities


def template_capabilities(template_text: str) -> set[str]:
    """Capabilities a Go template grants: ``tools`` (references ``.Tools``), ``insert`` (``.Suffix``),
    ``thinking`` (thinking tags can be inferred around ``.Thinking``, see :func:`infer_thinking_tags`)."""
    names = _parsed(template_text).identifiers()
    caps = {cap for cap, name in (("tools", "tools"), ("insert", "suffix")) if name in names}
    opening, closing = infer_thinking_tags(template_text)
    if opening and closing:
        caps.add("thinking")
    return caps


def infer_thinking_tags(template_text: str) -> tuple[str, str]:
    """Ollama's heuristic: for a ``.Thinking`` inside a ``range`` over ``.Messages``, the first and last text
    of the nearest enclosing node list, trimmed (e.g. ``("<think>", "</think>")``); ``("", "")`` if none."""
    opening = closing = ""
    for node, ancestors in gotemplate.walk(_parsed(template_text).root):
        if not (isinstance(node, FieldNode) and node.ident[0] == "Thinking"):
            continue
        ranges = [a for a in ancestors if isinstance(a, RangeNode)]
        if not ranges or not _references(ranges[-1].pipe, "Messages"):
            continue
        lists = [a for a in ancestors if isinstance(a, ListNode) and a.nodes]
        if lists:
            first, last = lists[-1].nodes[0], lists[-1].nodes[-1]
            opening = first.text.strip() if isinstance(first, TextNode) else opening
            closing = last.text.strip() if isinstance(last, TextNode) else closing
    return opening, closing


def _references(node: Node, name: str) -> bool:
    return any(isinstance(n, FieldNode) and n.ident[0] == name for n, _ in gotemplate.walk(node))


def tool_call_tag(template_text: str) -> str:
    """The tool-call opening tag (§9.3 step 7): first non-blank text inside the ``{{ if .ToolCalls }}`` block,
    cut before any ``{`` and trimmed (e.g. ``<tool_call>``, ``[TOOL_CALLS]``); ``"{"`` when there is none."""
    block = _find_tool_calls_if(_parsed(template_text).root.nodes)
    text = _first_text(block.body.nodes) if block is not None else None
    if text is None:
        return "{"
    tag = text.replace("\r\n", "\n").split("{", 1)[0].strip()
    return tag or "{"


def _mentions_tool_calls(node: IfNode) -> bool:
    return any(isinstance(arg, FieldNode) and "ToolCalls" in arg.ident for cmd in node.pipe.cmds for arg in cmd.args)


def _find_tool_calls_if(nodes: Sequence[Node]) -> IfNode | None:
    for node in nodes:
        if isinstance(node, IfNode) and _mentions_tool_calls(node):
            return node
        if isinstance(node, (IfNode, RangeNode, WithNode)):
            for body in (node.body, node.else_body):
                found = _find_tool_calls_if(body.nodes) if body is not None else None
                if found is not None:
                    return found
    return None


def _first_text(nodes: Sequence[Node]) -> str | None:
    """Depth-first first non-blank text, not looking past the first control structure."""
    for node in nodes:
        if isinstance(node, TextNode) and node.text.strip():
            return node.text
        if isinstance(node, (IfNode, RangeNode, WithNode)):
            for body in (node.body, node.else_body):
                found = _first_text(body.nodes) if body is not None else None
                if found is not None:
                    return found
            return None
    return None
