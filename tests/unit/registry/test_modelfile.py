"""Tests for registry.modelfile: Modelfile parsing, /api/create conversion and show output."""

from __future__ import annotations

import codecs
from typing import Any

import pytest

from registry.modelfile import (
    DEPRECATED_PARAMETERS,
    Command,
    ModelfileError,
    format_modelfile,
    format_parameters,
    parse_modelfile,
    to_create_request,
)

INVALID_COMMAND = (
    'command must be one of "from", "license", "template", "system", "adapter", "draft", '
    '"renderer", "parser", "parameter", "message", or "requires"'
)
INVALID_ROLE = 'message role must be one of "system", "user", or "assistant"'


def _parse_one(text: str) -> Command:
    commands = parse_modelfile("FROM base\n" + text)
    assert len(commands) == 2
    return commands[1]


def _request(text: str) -> dict[str, Any]:
    return to_create_request(parse_modelfile("FROM base\n" + text))


# --------------------------------------------------------------------------------------------
# Instructions
# --------------------------------------------------------------------------------------------


def test_every_instruction() -> None:
    text = """FROM llama3.2
ADAPTER ./lora.gguf
DRAFT ./draft.gguf
TEMPLATE {{ .Prompt }}
SYSTEM You are Mario.
RENDERER qwen3-coder
PARSER qwen3-coder
PARAMETER temperature 0.7
MESSAGE user Hi
LICENSE MIT
REQUIRES 0.14.0
"""
    assert parse_modelfile(text) == [
        Command("from", "llama3.2"),
        Command("adapter", "./lora.gguf"),
        Command("draft", "./draft.gguf"),
        Command("template", "{{ .Prompt }}"),
        Command("system", "You are Mario."),
        Command("renderer", "qwen3-coder"),
        Command("parser", "qwen3-coder"),
        Command("parameter", "temperature 0.7"),
        Command("message", "user Hi"),
        Command("license", "MIT"),
        Command("requires", "0.14.0"),
    ]


@pytest.mark.parametrize("word", ["from", "FROM", "From", "fRoM"])
def test_instructions_are_case_insensitive(word: str) -> None:
    assert parse_modelfile(f"{word} x") == [Command("from", "x")]


def test_line_numbers_are_recorded() -> None:
    commands = parse_modelfile('# c\nFROM x\n\nSYSTEM """a\nb"""\nPARAMETER top_k 1\n')
    assert [c.line for c in commands] == [2, 4, 6]


def test_blank_lines_comments_and_indentation() -> None:
    text = "\n# a comment\n   # indented comment\n\t\nFROM  \t x \n  SYSTEM\thello   world  \n"
    assert parse_modelfile(text) == [Command("from", "x"), Command("system", "hello   world")]


def test_hash_after_instruction_is_not_a_comment() -> None:
    assert _parse_one("SYSTEM # not a comment").args == "# not a comment"


def test_parameter_and_message_args() -> None:
    assert _parse_one('PARAMETER stop "<|eot_id|>"') == Command("parameter", "stop <|eot_id|>")
    assert _parse_one("PARAMETER   num_ctx   4096") == Command("parameter", "num_ctx 4096")
    assert _parse_one("MESSAGE assistant Hello there") == Command("message", "assistant Hello there")
    assert _parse_one('MESSAGE user """multi\nline"""') == Command("message", "user multi\nline")
    assert _parse_one("MESSAGE USER hi") == Command("message", "user hi")


# --------------------------------------------------------------------------------------------
# Quoting
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("source", "value"),
    [
        ("SYSTEM bare text to the end", "bare text to the end"),
        ('SYSTEM "quoted text"', "quoted text"),
        ('SYSTEM "  keeps inner spaces "', "  keeps inner spaces "),
        ('SYSTEM say "hi" now', 'say "hi" now'),
        ('SYSTEM "a "quoted" word"', 'a "quoted" word'),
        ('SYSTEM ""', ""),
        ('SYSTEM """"""', ""),
        ('SYSTEM """one line"""', "one line"),
        ('SYSTEM """has "quotes" inside"""', 'has "quotes" inside'),
        ('SYSTEM """ends with a quote""""', 'ends with a quote"'),
        ('SYSTEM """first\nsecond\nthird"""', "first\nsecond\nthird"),
        ('SYSTEM """\nstarts on the next line\n"""', "\nstarts on the next line\n"),
        ('SYSTEM """trailing blanks   \n  kept\t\n"""', "trailing blanks   \n  kept\t\n"),
        ('SYSTEM """# not a comment\nFROM not an instruction"""', "# not a comment\nFROM not an instruction"),
        ('SYSTEM "single quotes\nmay span lines"', "single quotes\nmay span lines"),
    ],
)
def test_quoting(source: str, value: str) -> None:
    assert _parse_one(source).args == value


def test_triple_quoted_block_followed_by_more_instructions() -> None:
    text = 'FROM x\nTEMPLATE """{{ if .System }}\n{{ .System }}\n{{ end }}"""\nPARAMETER top_k 10\n'
    assert parse_modelfile(text) == [
        Command("from", "x"),
        Command("template", "{{ if .System }}\n{{ .System }}\n{{ end }}"),
        Command("parameter", "top_k 10"),
    ]


def test_crlf_line_endings() -> None:
    text = 'FROM x\r\nSYSTEM """a\r\nb"""\r\nPARAMETER top_k 1\r\n'
    assert parse_modelfile(text) == [
        Command("from", "x"),
        Command("system", "a\nb"),
        Command("parameter", "top_k 1"),
    ]


@pytest.mark.parametrize(
    "data",
    [
        "\ufeffFROM x\nSYSTEM héllo\n",
        codecs.BOM_UTF8 + "FROM x\nSYSTEM héllo\n".encode(),
        codecs.BOM_UTF16_LE + "FROM x\nSYSTEM héllo\n".encode("utf-16-le"),
        codecs.BOM_UTF16_BE + "FROM x\nSYSTEM héllo\n".encode("utf-16-be"),
        "FROM x\nSYSTEM héllo\n".encode(),
    ],
)
def test_byte_order_marks(data: str | bytes) -> None:
    assert parse_modelfile(data) == [Command("from", "x"), Command("system", "héllo")]


# --------------------------------------------------------------------------------------------
# Parse errors
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("FROM x\nFOO bar", f"(line 2): {INVALID_COMMAND}"),
        ("FROM x\n\n\nINSTRUCTION x", f"(line 4): {INVALID_COMMAND}"),
        ("FROM:x", f"(line 1): {INVALID_COMMAND}"),
        ("FROM x\n123 go", f"(line 2): {INVALID_COMMAND}"),
        ('FROM x\nSYSTEM """never closed\nmore', "(line 2): unterminated multiline string"),
        ('FROM x\nSYSTEM """"', "(line 2): unterminated multiline string"),
        ('FROM x\n# c\nSYSTEM "never closed', "(line 3): unterminated quoted string"),
        ('FROM x\nSYSTEM "', "(line 2): unterminated quoted string"),
        ("FROM x\nMESSAGE robot hi", f"(line 2): {INVALID_ROLE}"),
        ("FROM x\n\nMESSAGE tool result", f"(line 3): {INVALID_ROLE}"),
        ("FROM", "(line 1): missing argument for FROM"),
        ("FROM x\nSYSTEM   ", "(line 2): missing argument for SYSTEM"),
        ("FROM x\nPARAMETER", "(line 2): missing argument for PARAMETER"),
        ("FROM x\nPARAMETER temperature", "(line 2): missing value for parameter 'temperature'"),
        ("FROM x\nPARAMETER temp-erature 1", "(line 2): invalid parameter name"),
        ("FROM x\nMESSAGE", "(line 2): missing argument for MESSAGE"),
        ("FROM x\nMESSAGE user", "(line 2): missing content for MESSAGE user"),
        ("FROM x\nMESSAGE user: hi", "(line 2): invalid message role"),
    ],
)
def test_parse_errors_are_line_numbered(text: str, message: str) -> None:
    with pytest.raises(ModelfileError) as caught:
        parse_modelfile(text)
    assert str(caught.value) == message
    assert isinstance(caught.value, ValueError)


@pytest.mark.parametrize("text", ["", "# only a comment\n", "SYSTEM hi\nPARAMETER top_k 1\n"])
def test_no_from_line(text: str) -> None:
    with pytest.raises(ModelfileError) as caught:
        parse_modelfile(text)
    assert str(caught.value) == "no FROM line"


# --------------------------------------------------------------------------------------------
# /api/create conversion
# --------------------------------------------------------------------------------------------


def test_create_request_fields() -> None:
    text = """FROM llama3.2
FROM ./mmproj.gguf
ADAPTER ./lora.gguf
DRAFT ./draft.gguf
TEMPLATE \"\"\"{{ .System }}
{{ .Prompt }}\"\"\"
SYSTEM You are Mario.
LICENSE \"\"\"MIT License
...\"\"\"
LICENSE Apache-2.0
MESSAGE user Who are you?
MESSAGE assistant It's-a me, Mario!
REQUIRES v0.14.0
RENDERER qwen3-coder
PARSER qwen3-coder
"""
    assert to_create_request(parse_modelfile(text)) == {
        "from": "llama3.2",
        "extra_from": ["./mmproj.gguf"],
        "adapter": "./lora.gguf",
        "draft": "./draft.gguf",
        "template": "{{ .System }}\n{{ .Prompt }}",
        "system": "You are Mario.",
        "license": ["MIT License\n...", "Apache-2.0"],
        "messages": [
            {"role": "user", "content": "Who are you?"},
            {"role": "assistant", "content": "It's-a me, Mario!"},
        ],
        "requires": "0.14.0",
        "renderer": "qwen3-coder",
        "parser": "qwen3-coder",
    }


def test_minimal_request_has_only_from() -> None:
    assert to_create_request(parse_modelfile("FROM x")) == {"from": "x"}


def test_typed_parameters_and_stop_list() -> None:
    text = """PARAMETER num_ctx 8192
PARAMETER seed -1
PARAMETER temperature 0.7
PARAMETER top_p .9
PARAMETER repeat_penalty 1
PARAMETER use_mmap false
PARAMETER stop <|start_header_id|>
PARAMETER stop "<|eot_id|>"
PARAMETER stop \"\"\"
\"\"\"
PARAMETER num_predict +128
PARAMETER draft_num_predict 4
"""
    params = _request(text)["parameters"]
    assert params == {
        "num_ctx": 8192,
        "seed": -1,
        "temperature": 0.7,
        "top_p": 0.9,
        "repeat_penalty": 1.0,
        "use_mmap": False,
        "stop": ["<|start_header_id|>", "<|eot_id|>", "\n"],
        "num_predict": 128,
        "draft_num_predict": 4,
    }
    assert isinstance(params["num_ctx"], int) and isinstance(params["repeat_penalty"], float)


def test_later_parameter_wins() -> None:
    assert _request("PARAMETER top_k 10\nPARAMETER top_k 20")["parameters"] == {"top_k": 20}


@pytest.mark.parametrize("name", sorted(DEPRECATED_PARAMETERS))
def test_deprecated_parameters_are_dropped(name: str) -> None:
    assert "parameters" not in _request(f"PARAMETER {name} 1")
    assert _request(f"PARAMETER {name} 1\nPARAMETER top_k 5")["parameters"] == {"top_k": 5}


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("PARAMETER numa true", "unknown parameter 'numa'"),
        ("PARAMETER Temperature 0.5", "unknown parameter 'Temperature'"),
        ("PARAMETER temperature hot", "invalid float value [hot]"),
        ("PARAMETER temperature 1_0", "invalid float value [1_0]"),
        ("PARAMETER temperature 1e99", "invalid float value [1e99]"),
        ("PARAMETER num_ctx 4k", "invalid int value [4k]"),
        ("PARAMETER num_ctx 4096.0", "invalid int value [4096.0]"),
        ("PARAMETER seed 9223372036854775808", "invalid int value [9223372036854775808]"),
        ("PARAMETER use_mmap yes", "invalid bool value [yes]"),
    ],
)
def test_parameter_errors(line: str, message: str) -> None:
    with pytest.raises(ModelfileError) as caught:
        _request(line)
    assert str(caught.value) == f"(line 2): {message}"


def test_parameter_value_forms() -> None:
    assert _request("PARAMETER use_mmap T")["parameters"] == {"use_mmap": True}
    assert _request("PARAMETER use_mmap 0")["parameters"] == {"use_mmap": False}
    assert _request("PARAMETER temperature inf")["parameters"]["temperature"] == float("inf")
    assert _request("PARAMETER temperature 1e-3")["parameters"] == {"temperature": 0.001}


@pytest.mark.parametrize(("raw", "version"), [("0.14.0", "0.14.0"), ("v1.2.3-rc1", "1.2.3-rc1"), ("1", "1")])
def test_requires(raw: str, version: str) -> None:
    assert _request(f"REQUIRES {raw}")["requires"] == version


def test_requires_must_be_semver() -> None:
    with pytest.raises(ModelfileError, match=r"\(line 2\): requires must be a valid semver"):
        _request("REQUIRES latest")


def test_create_request_without_from() -> None:
    with pytest.raises(ModelfileError, match=r"^no FROM line$"):
        to_create_request([Command("system", "hi")])


def test_create_request_from_hand_built_commands() -> None:
    commands = [Command("from", "x"), Command("parameter", "stop a b"), Command("message", "user hi there")]
    assert to_create_request(commands) == {
        "from": "x",
        "parameters": {"stop": ["a b"]},
        "messages": [{"role": "user", "content": "hi there"}],
    }


# --------------------------------------------------------------------------------------------
# /api/show parameters text
# --------------------------------------------------------------------------------------------


def test_format_parameters_columns() -> None:
    text = format_parameters({"temperature": 0.6, "stop": ["<|eot_id|>", "<|eom_id|>"], "num_ctx": 8192})
    assert text == (
        'num_ctx                        8192\n'
        'stop                           "<|eot_id|>"\n'
        'stop                           "<|eom_id|>"\n'
        'temperature                    0.6'
    )  # fmt: skip
    for line in text.splitlines():
        assert line[30] == " " and line[31] != " "


@pytest.mark.parametrize(
    ("value", "shown"),
    [
        (True, "true"),
        (False, "false"),
        (40, "40"),
        (-1, "-1"),
        (0.9, "0.9"),
        (1.0, "1"),
        (1e6, "1e+06"),
        (123456.0, "123456"),
        (1e-05, "1e-05"),
        (0.0001, "0.0001"),
        ("plain", '"plain"'),
        ('say "hi"\n\ttab\\', '"say \\"hi\\"\\n\\ttab\\\\"'),
        ("\x00\x7f", '"\\x00\\x7f"'),
        ("héllo 世界", '"héllo 世界"'),
    ],
)
def test_format_parameters_go_values(value: Any, shown: str) -> None:
    assert format_parameters({"k": value}) == "k" + " " * 30 + shown


def test_format_parameters_empty() -> None:
    assert format_parameters({}) == ""
    assert format_parameters({"seed": None}) == ""


# --------------------------------------------------------------------------------------------
# ollama show --modelfile
# --------------------------------------------------------------------------------------------

TEMPLATE = '{{ if .System }}<|im_start|>system\n{{ .System }}<|im_end|>\n{{ end }}<|im_start|>assistant\n'


def test_format_modelfile_layout() -> None:
    text = format_modelfile(
        from_="/root/.ollama/models/blobs/sha256-abc",
        template=TEMPLATE,
        system="You are a helpful assistant.",
        parameters={"temperature": 0.2, "stop": ["<|im_start|>", "<|im_end|>"], "num_ctx": 4096},
        license=["Apache License\nVersion 2.0"],
        messages=[
            {"role": "user", "content": "Hi"},
            {"role": "assistant", "content": "Hello!\nHow can I help?"},
        ],
        adapters=["/blobs/sha256-lora"],
        shortname="smollm2:135m",
    )
    assert text == (
        '# Modelfile generated by "ollama show"\n'
        "# To build a new Modelfile based on this, replace FROM with:\n"
        "# FROM smollm2:135m\n"
        "\n"
        "FROM /root/.ollama/models/blobs/sha256-abc\n"
        "ADAPTER /blobs/sha256-lora\n"
        f'TEMPLATE """{TEMPLATE}"""\n'
        "SYSTEM You are a helpful assistant.\n"
        "PARAMETER num_ctx 4096\n"
        'PARAMETER stop "<|im_start|>"\n'
        'PARAMETER stop "<|im_end|>"\n'
        "PARAMETER temperature 0.2\n"
        'LICENSE """Apache License\nVersion 2.0"""\n'
        "MESSAGE user Hi\n"
        'MESSAGE assistant """Hello!\nHow can I help?"""\n'
    )


def test_format_modelfile_optional_parts() -> None:
    text = format_modelfile(
        from_="/blobs/model",
        template=None,
        system=None,
        parameters={},
        license=[],
        messages=[],
        shortname="m:latest",
        draft="/blobs/draft",
        projectors=["/blobs/proj"],
        renderer="qwen3-coder",
        parser="qwen3-coder",
    )
    assert text.endswith(
        "\nFROM /blobs/model\nDRAFT /blobs/draft\nFROM /blobs/proj\n"
        "RENDERER qwen3-coder\nPARSER qwen3-coder\n"
    )
    assert "TEMPLATE" not in text and "SYSTEM" not in text and "PARAMETER" not in text


def test_format_modelfile_keeps_integer_options_parseable() -> None:
    text = format_modelfile(
        from_="x", template=None, system=None, parameters={"num_ctx": 1e6, "temperature": 1.0},
        license=[], messages=[], shortname="x",
    )  # fmt: skip
    assert "PARAMETER num_ctx 1000000\n" in text and "PARAMETER temperature 1\n" in text
    parameters = to_create_request(parse_modelfile(text))["parameters"]
    assert parameters == {"num_ctx": 1_000_000, "temperature": 1.0}


ROUND_TRIP_CASES: list[dict[str, Any]] = [
    {
        "from_": "/root/.ollama/models/blobs/sha256-0123",
        "template": TEMPLATE,
        "system": "You are Mario from Super Mario Bros.",
        "parameters": {"temperature": 0.7, "num_ctx": 4096, "use_mmap": True, "stop": ["<|im_end|>"]},
        "license": ["MIT License\n\nCopyright (c) 2024", "second license"],
        "messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "It's-a me!"}],
        "adapters": ["/blobs/sha256-lora"],
    },
    {
        "from_": "llama3.2",
        "template": '{{- range .Messages }}"{{ .Role }}": {{ .Content }}\n{{ end }}"',
        "system": '  leading and trailing blanks\t',
        "parameters": {
            "stop": [" x", 'has "quotes"', '"', "\n\n", "#hash", "a\\b"],
            "top_p": 0.95, "seed": -1, "repeat_penalty": 1.1, "min_p": 1e-05,
        },
        "license": [],
        "messages": [
            {"role": "system", "content": '"quoted at start" and more'},
            {"role": "user", "content": ""},
            {"role": "assistant", "content": "ends with a quote\n\"fine\""},
        ],
        "adapters": [],
    },
]  # fmt: skip


@pytest.mark.parametrize("fields", ROUND_TRIP_CASES)
def test_round_trip(fields: dict[str, Any]) -> None:
    text = format_modelfile(**fields, shortname="test:latest")
    request = to_create_request(parse_modelfile(text))
    assert request["from"] == fields["from_"]
    assert request.get("template") == fields["template"]
    assert request.get("system") == fields["system"]
    assert request.get("parameters") == fields["parameters"]
    assert request.get("license", []) == fields["license"]
    assert request.get("messages", []) == fields["messages"]
    adapters = [request["adapter"]] if "adapter" in request else []
    assert adapters == fields["adapters"]
