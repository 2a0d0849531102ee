"""Tests for caravan.prompt: Ollama's prompt rendering over real library templates."""

from __future__ import annotations

from typing import Any

import pytest

from caravan.gotemplate import TemplateError
from caravan.prompt import (
    collate,
    infer_thinking_tags,
    prepare_template,
    render_prompt,
    template_capabilities,
    tool_call_tag,
    tools_for_template,
)

# ---------------------------------------------------------------------------------- library templates

LLAMA3 = """{{- range .Messages }}<|start_header_id|>{{ .Role }}<|end_header_id|>

{{ .Content }}<|eot_id|>
{{- end }}<|start_header_id|>assistant<|end_header_id|>

"""

GEMMA = """{{- $system := "" }}
{{- range .Messages }}
{{- if eq .Role "system" }}
{{- if not $system }}{{ $system = .Content }}
{{- else }}{{ $system = printf "%s\\n\\n%s" $system .Content }}
{{- end }}
{{- continue }}
{{- else if eq .Role "user" }}<start_of_turn>user
{{- if $system }}
{{ $system }}
{{- $system = "" }}
{{- end }}
{{- else if eq .Role "assistant" }}<start_of_turn>model
{{- end }}
{{ .Content }}<end_of_turn>
{{ end }}<start_of_turn>model
"""

QWEN25 = """{{- if .Messages }}
{{- if or .System .Tools }}<|im_start|>system
{{- if .System }}
{{ .System }}
{{- end }}
{{- if .Tools }}

# Tools

You may call one or more functions to assist with the user query.

You are provided with function signatures within <tools></tools> XML tags:
<tools>
{{- range .Tools }}
{"type": "function", "function": {{ .Function }}}
{{- end }}
</tools>

For each function call, return a json object with function name and arguments within <tool_call></tool_call> XML tags:
<tool_call>
{"name": <function-name>, "arguments": <args-json-object>}
</tool_call>
{{- end }}<|im_end|>
{{ end }}
{{- range $i, $_ := .Messages }}
{{- $last := eq (len (slice $.Messages $i)) 1 -}}
{{- if eq .Role "user" }}<|im_start|>user
{{ .Content }}<|im_end|>
{{ else if eq .Role "assistant" }}<|im_start|>assistant
{{ if .Content }}{{ .Content }}
{{- else if .ToolCalls }}<tool_call>
{{ range .ToolCalls }}{"name": "{{ .Function.Name }}", "arguments": {{ .Function.Arguments }}}
{{ end }}</tool_call>
{{- end }}{{ if not $last }}<|im_end|>
{{ end }}
{{- else if eq .Role "tool" }}<|im_start|>user
<tool_response>
{{ .Content }}
</tool_response><|im_end|>
{{ end }}
{{- if and (ne .Role "assistant") $last }}<|im_start|>assistant
{{ end }}
{{- end }}
{{- else }}
{{- if .System }}<|im_start|>system
{{ .System }}<|im_end|>
{{ end }}{{ if .Prompt }}<|im_start|>user
{{ .Prompt }}<|im_end|>
{{ end }}<|im_start|>assistant
{{ end }}{{ .Response }}{{ if .Response }}<|im_end|>{{ end }}"""

MISTRAL = """{{- if .Messages }}
{{- range $index, $_ := .Messages }}
{{- if eq .Role "user" }}
{{- if and (eq (len (slice $.Messages $index)) 1) $.Tools }}[AVAILABLE_TOOLS] {{ $.Tools }}[/AVAILABLE_TOOLS]
{{- end }}[INST] {{ if and $.System (eq (len (slice $.Messages $index)) 1) }}{{ $.System }}

{{ end }}{{ .Content }}[/INST]
{{- else if eq .Role "assistant" }}
{{- if .Content }}{{ .Content }}
{{- else if .ToolCalls }}[TOOL_CALLS] [
{{- range .ToolCalls }}{"name": "{{ .Function.Name }}", "arguments": {{ .Function.Arguments }}}
{{- end }}]
{{- end }}</s>
{{- else if eq .Role "tool" }}[TOOL_RESULTS] {"content": {{ .Content }}} [/TOOL_RESULTS]
{{- end }}
{{- end }}
{{- else }}[INST] {{ if .System }}{{ .System }}

{{ end }}{{ .Prompt }}[/INST]
{{- end }}{{ .Response }}
{{- if .Response }}</s>
{{- end }}"""

PHI3 = """{{- range .Messages }}<|{{ .Role }}|>
{{ .Content }}<|end|>
{{ end }}<|assistant|>
"""

ALPACA = """{{- $system := "" }}
{{- range .Messages }}
{{- if eq .Role "system" }}
{{- if not $system }}{{ $system = .Content }}
{{- else }}{{ $system = printf "%s\\n\\n%s" $system .Content }}
{{- end }}
{{- else if eq .Role "user" }}
{{- if $system }}{{ $system }}

{{ $system = "" }}
{{- end }}### Instruction:
{{ .Content }}

{{ else if eq .Role "assistant" }}### Response:
{{ .Content }}

{{ end }}
{{- end }}### Response:
"""

# Legacy per-turn templates (no .Messages): the first has .Response, the second gets it appended.
CHATML_LEGACY = """{{ if .System }}<|im_start|>system
{{ .System }}<|im_end|>
{{ end }}{{ if .Prompt }}<|im_start|>user
{{ .Prompt }}<|im_end|>
{{ end }}<|im_start|>assistant
{{ .Response }}<|im_end|>
"""

LLAMA2_LEGACY = "[INST] <<SYS>>{{ .System }}<</SYS>>\n\n{{ .Prompt }} [/INST]"

CODESTRAL_FIM = """{{- if .Suffix }}[SUFFIX]{{ .Suffix }}[PREFIX] {{ .Prompt }}
{{- else if .Messages }}
{{- range $index, $_ := .Messages }}
{{- if eq .Role "user" }}[INST] {{ .Content }}[/INST]
{{- else if eq .Role "assistant" }} {{ .Content }}</s>
{{- end }}
{{- end }}
{{- else }}[INST] {{ .Prompt }} [/INST]
{{- end }}"""

QWEN3_THINKING = """{{- range $i, $_ := .Messages }}
{{- $last := eq (len (slice $.Messages $i)) 1 -}}
{{- if eq .Role "user" }}<|im_start|>user
{{ .Content }}<|im_end|>
{{ else if eq .Role "assistant" }}<|im_start|>assistant
{{ if and $last .Thinking }}
<think>{{ .Thinking }}</think>
{{ end }}
{{ if .Content }}{{ .Content }}
{{- else if .ToolCalls }}<tool_call>
{{ range .ToolCalls }}{"name": "{{ .Function.Name }}", "arguments": {{ .Function.Arguments }}}
{{ end }}</tool_call>
{{- end }}{{ if not $last }}<|im_end|>
{{ end }}
{{- end }}
{{- if and (ne .Role "assistant") $last }}<|im_start|>assistant
{{ if and $.IsThinkSet (not $.Think) }}<think>

</think>

{{ end }}
{{- end }}
{{- end }}{{ if .Tools }}{{ end }}"""

# ---------------------------------------------------------------------------------------- fixtures

HELLO = "Hello, how are you?"
GREAT = "I'm doing great. How can I help you today?"
SHOW = "I'd like to show off how chat templating works!"
CONVERSATION = [
    {"role": "system", "content": "You are a helpful assistant."},
    {"role": "user", "content": HELLO},
    {"role": "assistant", "content": GREAT},
    {"role": "user", "content": SHOW},
]

WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Get the weather",
        "parameters": {
            "type": "object",
            "required": ["location"],
            "properties": {
                "location": {"type": "string", "description": "City name"},
                "unit": {"type": "string", "enum": ["celsius", "fahrenheit"], "default": "celsius"},
            },
        },
    },
}
WEATHER_FUNCTION_JSON = (
    '{"name":"get_weather","description":"Get the weather","parameters":{"type":"object",'
    '"required":["location"],"properties":{"location":{"type":"string","description":"City name"},'
    '"unit":{"type":"string","enum":["celsius","fahrenheit"]}}}}'
)
TOOL_ROUND_TRIP: list[dict[str, Any]] = [
    {"role": "user", "content": "What's the weather in Paris?"},
    {
        "role": "assistant",
        "content": "",
        "tool_calls": [{"function": {"name": "get_weather", "arguments": {"location": "Paris", "unit": "celsius"}}}],
    },
    {"role": "tool", "content": "22C", "tool_name": "get_weather"},
]


# --------------------------------------------------------------------------------- messages style


def test_llama3_multi_turn_with_system() -> None:
    expected = (
        "<|start_header_id|>system<|end_header_id|>\n\nYou are a helpful assistant.<|eot_id|>"
        f"<|start_header_id|>user<|end_header_id|>\n\n{HELLO}<|eot_id|>"
        f"<|start_header_id|>assistant<|end_header_id|>\n\n{GREAT}<|eot_id|>"
        f"<|start_header_id|>user<|end_header_id|>\n\n{SHOW}<|eot_id|>"
        "<|start_header_id|>assistant<|end_header_id|>\n\n"
    )
    assert render_prompt(LLAMA3, messages=CONVERSATION) == expected


def test_default_system_is_prepended_only_without_a_leading_system_message() -> None:
    user_only = [{"role": "user", "content": "hi"}]
    assert render_prompt(LLAMA3, messages=user_only, system="Be terse.") == (
        "<|start_header_id|>system<|end_header_id|>\n\nBe terse.<|eot_id|>"
        "<|start_header_id|>user<|end_header_id|>\n\nhi<|eot_id|>"
        "<|start_header_id|>assistant<|end_header_id|>\n\n"
    )
    with_system = [{"role": "system", "content": "Own."}, *user_only]
    assert "Be terse." not in render_prompt(LLAMA3, messages=with_system, system="Be terse.")


def test_gemma_folds_system_into_first_user_turn() -> None:
    expected = (
        "<start_of_turn>user\nYou are a helpful assistant.\n"
        f"{HELLO}<end_of_turn>\n"
        f"<start_of_turn>model\n{GREAT}<end_of_turn>\n"
        f"<start_of_turn>user\n{SHOW}<end_of_turn>\n"
        "<start_of_turn>model\n"
    )
    assert render_prompt(GEMMA, messages=CONVERSATION) == expected


def test_phi3_and_alpaca() -> None:
    assert render_prompt(PHI3, messages=[{"role": "user", "content": HELLO}]) == (
        f"<|user|>\n{HELLO}<|end|>\n<|assistant|>\n"
    )
    assert render_prompt(ALPACA, messages=CONVERSATION) == (
        f"You are a helpful assistant.\n\n### Instruction:\n{HELLO}\n\n### Response:\n{GREAT}\n\n"
        f"### Instruction:\n{SHOW}\n\n### Response:\n"
    )


def test_qwen25_tools_and_tool_call_round_trip() -> None:
    messages = [{"role": "system", "content": "You are Qwen."}, *TOOL_ROUND_TRIP]
    expected = (
        "<|im_start|>system\nYou are Qwen.\n\n# Tools\n\n"
        "You may call one or more functions to assist with the user query.\n\n"
        "You are provided with function signatures within <tools></tools> XML tags:\n<tools>\n"
        f'{{"type": "function", "function": {WEATHER_FUNCTION_JSON}}}\n'
        "</tools>\n\n"
        "For each function call, return a json object with function name and arguments within "
        "<tool_call></tool_call> XML tags:\n<tool_call>\n"
        '{"name": <function-name>, "arguments": <args-json-object>}\n</tool_call><|im_end|>\n'
        "<|im_start|>user\nWhat's the weather in Paris?<|im_end|>\n"
        "<|im_start|>assistant\n<tool_call>\n"
        '{"name": "get_weather", "arguments": {"location":"Paris","unit":"celsius"}}\n'
        "</tool_call><|im_end|>\n"
        "<|im_start|>user\n<tool_response>\n22C\n</tool_response><|im_end|>\n"
        "<|im_start|>assistant\n"
    )
    assert render_prompt(QWEN25, messages=messages, tools=[WEATHER_TOOL]) == expected


def test_qwen25_without_tools_or_system() -> None:
    messages = [{"role": "user", "content": "hi"}]
    assert render_prompt(QWEN25, messages=messages) == "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"


def test_mistral_available_tools_on_last_user_turn() -> None:
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Weather in Paris?"}]
    expected = (
        f'[AVAILABLE_TOOLS] [{{"type":"function","function":{WEATHER_FUNCTION_JSON}}}][/AVAILABLE_TOOLS]'
        "[INST] Be brief.\n\nWeather in Paris?[/INST]"
    )
    assert render_prompt(MISTRAL, messages=messages, tools=[WEATHER_TOOL]) == expected


def test_mistral_tool_call_round_trip() -> None:
    expected = (
        "[INST] What's the weather in Paris?[/INST]"
        '[TOOL_CALLS] [{"name": "get_weather", "arguments": {"location":"Paris","unit":"celsius"}}]</s>'
        '[TOOL_RESULTS] {"content": 22C} [/TOOL_RESULTS]'
    )
    assert render_prompt(MISTRAL, messages=TOOL_ROUND_TRIP, tools=[WEATHER_TOOL]) == expected


def test_tool_call_arguments_keep_key_order_and_escape_like_go() -> None:
    template = (
        "{{ range .Messages }}{{ range .ToolCalls }}"
        "{{ .Function.Arguments }}|{{ json .Function.Arguments }}{{ end }}{{ end }}"
    )
    call = {"function": {"name": "f", "arguments": {"z": 1, "a": "<b>", "m": [1.0, 2.5]}}}
    messages = [{"role": "assistant", "content": "", "tool_calls": [call]}]
    args = '{"z":1,"a":"\\u003cb\\u003e","m":[1,2.5]}'
    assert render_prompt(template, messages=messages) == f"{args}|{args}"


def test_tool_call_fields_and_tool_message_fields() -> None:
    template = (
        "{{ range .Messages }}{{ .Role }}:"
        "{{ range $i, $c := .ToolCalls }}{{ $i }}/{{ .ID }}/{{ .Function.Index }}/{{ .Function.Name }};{{ end }}"
        "{{ .ToolName }}{{ .ToolCallID }}{{ if .Images }}[{{ len .Images }} img]{{ end }}{{ .Thinking }}|{{ end }}"
    )
    messages: list[dict[str, Any]] = [
        {"role": "user", "content": "x", "images": ["aGk=", "aGk="]},
        {
            "role": "assistant",
            "content": "",
            "thinking": "hmm",
            "tool_calls": [{"id": "call_1", "function": {"index": 0, "name": "a", "arguments": '{"k": 1}'}}],
        },
        {"role": "tool", "content": "r", "tool_name": "a", "tool_call_id": "call_1"},
    ]
    assert render_prompt(template, messages=messages) == "user:[2 img]|assistant:0/call_1/0/a;hmm|tool:acall_1|"


def test_tool_properties_are_ranged_and_printed() -> None:
    template = (
        "{{ range .Messages }}{{ end }}{{ range .Tools }}{{ .Function.Name }}("
        "{{ range $name, $p := .Function.Parameters.Properties }}{{ $name }}: {{ $p.Type }}, {{ end }})"
        " req={{ json .Function.Parameters.Required }} ts={{ toTypeScriptType .Function.Parameters.Properties.unit }}"
        "{{ end }} {{ (index .Tools 0).Function.Parameters }}"
    )
    expected = (
        'get_weather(location: string, unit: string, ) req=["location"] ts=string '
        '{"type":"object","required":["location"],"properties":{"location":{"type":"string",'
        '"description":"City name"},"unit":{"type":"string","enum":["celsius","fahrenheit"]}}}'
    )
    assert render_prompt(template, messages=[{"role": "user", "content": "x"}], tools=[WEATHER_TOOL]) == expected


def test_tools_for_template_shapes() -> None:
    assert tools_for_template(None) is None
    assert tools_for_template([]) is None
    tools = tools_for_template([WEATHER_TOOL])
    assert tools is not None
    assert tools[0]["Function"]["Parameters"]["Required"] == ["location"]
    assert list(tools[0]["Function"]["Parameters"]["Properties"]) == ["location", "unit"]


# ------------------------------------------------------------------------------------------- collation


def test_collate_merges_same_role_but_not_tool_messages() -> None:
    messages = [
        {"role": "system", "content": "A"},
        {"role": "system", "content": "B"},
        {"role": "user", "content": "one"},
        {"role": "User", "content": "two"},
        {"role": "tool", "content": "t1", "tool_name": "x"},
        {"role": "tool", "content": "t2", "tool_name": "y"},
    ]
    system, collated = collate(messages)
    assert system == "A\n\nB"
    assert [(m["role"], m["content"]) for m in collated] == [
        ("system", "A\n\nB"),
        ("user", "one\n\ntwo"),
        ("tool", "t1"),
        ("tool", "t2"),
    ]
    assert messages[0]["content"] == "A"  # the caller's messages are not mutated


def test_system_variable_joins_all_system_messages() -> None:
    template = "{{ .System }}|{{ range .Messages }}{{ .Role }};{{ end }}"
    messages = [
        {"role": "system", "content": "A"},
        {"role": "user", "content": "u"},
        {"role": "system", "content": "B"},
    ]
    assert render_prompt(template, messages=messages) == "A\n\nB|system;user;system;"


# ---------------------------------------------------------------------------------------- legacy style


def test_legacy_template_over_two_turns() -> None:
    expected = (
        "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
        f"<|im_start|>user\n{HELLO}<|im_end|>\n"
        f"<|im_start|>assistant\n{GREAT}<|im_end|>\n"
        f"<|im_start|>user\n{SHOW}<|im_end|>\n"
        "<|im_start|>assistant\n"
    )
    assert render_prompt(CHATML_LEGACY, messages=CONVERSATION) == expected


def test_legacy_template_gets_response_appended() -> None:
    assert "response" in prepare_template(LLAMA2_LEGACY).identifiers()  # {{ .Response }} was appended
    expected = (
        f"[INST] <<SYS>>You are a helpful assistant.<</SYS>>\n\n{HELLO} [/INST]{GREAT}"
        f"[INST] <<SYS>><</SYS>>\n\n{SHOW} [/INST]"
    )
    assert render_prompt(LLAMA2_LEGACY, messages=CONVERSATION) == expected


def test_legacy_trailing_assistant_message_is_a_prefill() -> None:
    messages = [
        {"role": "user", "content": "Hello friend!"},
        {"role": "assistant", "content": "Hello human!"},
        {"role": "user", "content": "What is your name?"},
        {"role": "assistant", "content": "My name is Ollama and I"},
    ]
    expected = "[INST] Hello friend![/INST] Hello human![INST] What is your name?[/INST] My name is Ollama and I"
    assert render_prompt("[INST] {{ .Prompt }}[/INST] ", messages=messages) == expected
    with_end = "[INST] Hello friend![/INST] Hello human!</s>[INST] What is your name?[/INST] My name is Ollama and I"
    assert render_prompt("[INST] {{ .Prompt }}[/INST] {{ .Response }}</s>", messages=messages) == with_end


def test_legacy_system_after_a_turn_starts_a_new_turn() -> None:
    template = "<{{ .System }}|{{ .Prompt }}|{{ .Response }}>"
    messages = [
        {"role": "user", "content": "u1"},
        {"role": "system", "content": "s2"},
        {"role": "user", "content": "u2"},
    ]
    assert render_prompt(template, messages=messages) == "<|u1|><s2|u2|"


def test_empty_template_is_raw_prompt() -> None:
    assert render_prompt("", messages=[{"role": "user", "content": "raw text"}]) == "raw text"


# ------------------------------------------------------------------------------------- fill-in-middle


def test_fim_prompt_and_suffix() -> None:
    out = render_prompt(CODESTRAL_FIM, messages=[], prompt_suffix=("def add(a, b):", "return c"))
    assert out == "[SUFFIX]return c[PREFIX] def add(a, b):"


def test_fim_without_suffix_falls_back_to_messages() -> None:
    template = "{{- if .Suffix }}<PRE> {{ .Prompt }} <SUF>{{ .Suffix }} <MID>\n{{- else }}{{ .Prompt }}\n{{- end }}"
    assert (
        render_prompt(template, messages=[], prompt_suffix=("def add(", "return x"))
        == "<PRE> def add( <SUF>return x <MID>"
    )
    user = [{"role": "user", "content": "hello"}]
    assert render_prompt(template, messages=user, prompt_suffix=("hello", "")) == "hello"


# ------------------------------------------------------------------------------------------- thinking


@pytest.mark.parametrize(
    ("think", "level", "expected"),
    [
        (None, "", "unset||"),
        (True, "", "on|medium|"),
        (False, "", "off||"),
        (True, "high", "on|high|"),
        (None, "low", "on|low|"),
    ],
)
def test_think_variables(think: bool | None, level: str, expected: str) -> None:
    template = (
        "{{ if .IsThinkSet }}{{ if .Think }}on{{ else }}off{{ end }}{{ else }}unset{{ end }}"
        "|{{ .ThinkLevel }}|{{ range .Messages }}{{ end }}"
    )
    assert render_prompt(template, messages=[], think=think, think_level=level) == expected


def test_qwen3_thinking_template() -> None:
    messages = [
        {"role": "user", "content": "2+2?"},
        {"role": "assistant", "content": "4", "thinking": "easy"},
        {"role": "user", "content": "3+3?"},
    ]
    assert render_prompt(QWEN3_THINKING, messages=messages, think=False) == (
        "<|im_start|>user\n2+2?<|im_end|>\n<|im_start|>assistant\n\n4<|im_end|>\n"
        "<|im_start|>user\n3+3?<|im_end|>\n<|im_start|>assistant\n<think>\n\n</think>\n\n"
    )
    assert render_prompt(QWEN3_THINKING, messages=messages[:2], think=True).endswith(
        "<|im_start|>assistant\n\n<think>easy</think>\n\n4"
    )


# --------------------------------------------------------------------------------------- capabilities


def test_template_capabilities() -> None:
    assert template_capabilities(QWEN25) == {"tools"}
    assert template_capabilities(MISTRAL) == {"tools"}
    assert template_capabilities(CODESTRAL_FIM) == {"insert"}
    assert template_capabilities(LLAMA3) == set()
    assert template_capabilities(QWEN3_THINKING) == {"tools", "thinking"}


def test_infer_thinking_tags() -> None:
    assert infer_thinking_tags(QWEN3_THINKING) == ("<think>", "</think>")
    nested = (
        "{{ range $i, $_ := .Messages }}{{ range .Other }}"
        "{{ if .Thinking }}<think>{{ .Thinking }}</think>{{ end }}{{ end }}{{ end }}"
    )
    assert infer_thinking_tags(nested) == ("", "")
    spaced = "{{ range .Messages }}{{ if .Thinking }}  Before {{ .Thinking }}  After \n{{ end }}{{ end }}"
    assert infer_thinking_tags(spaced) == ("Before", "After")
    assert infer_thinking_tags(LLAMA3) == ("", "")


def test_tool_call_tag() -> None:
    assert tool_call_tag(QWEN25) == "<tool_call>"
    assert tool_call_tag(MISTRAL) == "[TOOL_CALLS] ["
    assert tool_call_tag(LLAMA3) == "{"
    assert tool_call_tag('{{ range .Messages }}{{ if .ToolCalls }}{"name": 1}{{ end }}{{ end }}') == "{"


@pytest.mark.parametrize(
    ("template", "tag"),
    [
        ("", "{"),
        ("{{if .ToolCalls}}{{end}}", "{"),
        ("{{if .ToolCalls}}{{range .ToolCalls}}{{ . }}{{end}}{{end}}", "{"),
        ("{{if .ToolCalls}}```json\n{{end}}", "```json"),
        ("{{if .ToolCalls}}\n [ {{range .ToolCalls}}{{ . }}{{end}}]{{end}}", "["),
        ("{{if .ToolCalls}}{{range .ToolCalls}}{{ . }}{{end}}]{{end}}", "{"),
        ("{{if .ToolCalls}}\n{{range .ToolCalls}}<tool_call>{{ . }}</tool_call>{{end}}{{end}}", "<tool_call>"),
        ("{{if .ToolCalls}}First text{{if .Something}}inner{{end}}Second text{{end}}", "First text"),
        ("{{if .ToolCalls}}[TOOL_CALL][{{end}}", "[TOOL_CALL]["),
        ("{{ range .Messages }}{{ if .X }}{{ else if .ToolCalls }}<calls>{{ end }}{{ end }}", "<calls>"),
    ],
)
def test_tool_call_tag_cases(template: str, tag: str) -> None:
    assert tool_call_tag(template) == tag


# ---------------------------------------------------------------------------------------------- errors


def test_template_errors_propagate() -> None:
    with pytest.raises(TemplateError, match="unclosed action"):
        render_prompt("{{ .Prompt ", messages=[])
    with pytest.raises(TemplateError, match="error calling index"):
        render_prompt(
            "{{ range .Messages }}{{ index .ToolCalls 0 }}{{ end }}", messages=[{"role": "user", "content": ""}]
        )
