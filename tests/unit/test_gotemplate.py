"""Tests for caravan.gotemplate: the Go text/template subset used by Ollama TEMPLATE layers."""

from __future__ import annotations

import datetime as dt
from typing import Any

import pytest

from caravan.gotemplate import TemplateError, parse, to_json, tokenize


def render(text: str, data: Any = None) -> str:
    return parse(text).render({} if data is None else data)


# ---------------------------------------------------------------------------------------------- basics


def test_plain_text_and_fields() -> None:
    assert render("hello") == "hello"
    assert render("") == ""
    assert render("{{ .Name }}!", {"Name": "Ada"}) == "Ada!"
    assert render("{{ .A.B.C }}", {"A": {"B": {"C": 3}}}) == "3"
    assert render("{{.Name}}", {"Name": "x"}) == "x"


def test_missing_keys_render_empty() -> None:
    assert render("[{{ .Nope }}]") == "[]"
    assert render("[{{ .A.B.C }}]", {"A": {}}) == "[]"
    assert render("[{{ .A.B }}]", {"A": None}) == "[]"
    assert "<no value>" not in render('{{ .X }}{{ $.Y }}{{ index . "Z" }}')


def test_scalars_print_like_go() -> None:
    data = {"T": True, "F": False, "I": 42, "X": 1.5, "Big": 1e6, "Whole": 2.0, "Small": 0.00001}
    out = render("{{ .T }} {{ .F }} {{ .I }} {{ .X }} {{ .Big }} {{ .Whole }} {{ .Small }}", data)
    assert out == "true false 42 1.5 1e+06 2 1e-05"


def test_dicts_and_lists_print_as_compact_json() -> None:
    data = {"Args": {"b": 1, "a": "x"}, "L": [1, "two", None, True]}
    assert render("{{ .Args }}|{{ .L }}", data) == '{"b":1,"a":"x"}|[1,"two",null,true]'


def test_go_string_and_go_json_hooks() -> None:
    class Stringer:
        def go_string(self) -> str:
            return "custom"

    class Marshaler(dict[str, Any]):
        def go_json(self) -> dict[str, Any]:
            return {"json_name": self["GoName"]}

    data = {"S": Stringer(), "M": Marshaler(GoName="v")}
    assert (
        render("{{ .S }} {{ .M }} {{ json .M }} {{ .M.GoName }}", data)
        == 'custom {"json_name":"v"} {"json_name":"v"} v'
    )


# ------------------------------------------------------------------------------------------- whitespace


def test_trim_markers_remove_all_adjacent_whitespace() -> None:
    assert render("a  \n\t {{- .X -}} \n\n  b", {"X": "-"}) == "a-b"
    assert render("a {{- .X }} b", {"X": "-"}) == "a- b"
    assert render("a {{ .X -}} b", {"X": "-"}) == "a -b"
    assert render("{{ 3 }} {{- 4 }}") == "34"


def test_minus_without_space_is_a_number() -> None:
    assert render("{{-3}}") == "-3"
    assert render("{{ -3 }}") == "-3"


def test_comments() -> None:
    assert render("a{{/* note */}}b") == "ab"
    assert render("a {{- /* note */ -}} \n b") == "ab"
    assert render("a{{/* multi\nline */}}b") == "ab"


def test_newlines_inside_actions() -> None:
    assert render("{{ if\n .X\n }}yes{{ end }}", {"X": 1}) == "yes"


# --------------------------------------------------------------------------------------------- control


@pytest.mark.parametrize(
    ("role", "expected"),
    [("system", "S"), ("user", "U"), ("assistant", "A"), ("tool", "?")],
)
def test_if_else_if_chain(role: str, expected: str) -> None:
    text = (
        '{{ if eq .Role "system" }}S{{ else if eq .Role "user" }}U'
        '{{ else if eq .Role "assistant" }}A{{ else }}?{{ end }}'
    )
    assert render(text, {"Role": role}) == expected


def test_go_truthiness() -> None:
    text = "{{ if . }}T{{ else }}F{{ end }}"
    for value in ["", 0, 0.0, False, None, [], {}]:
        assert parse(text).render(value) == "F"
    for value in ["x", 1, -0.5, True, [0], {"k": 0}]:
        assert parse(text).render(value) == "T"


def test_with_rebinds_dot_and_else() -> None:
    text = "{{ with .User }}{{ .Name }}{{ else }}anon{{ end }}"
    assert render(text, {"User": {"Name": "Bo"}}) == "Bo"
    assert render(text, {"User": None}) == "anon"
    assert render("{{ with $x := .A }}{{ $x }}{{ end }}", {"A": 5}) == "5"
    assert render("{{ with .A }}a{{ else with .B }}b{{ else }}c{{ end }}", {"B": 1}) == "b"


def test_range_list_with_index_and_value() -> None:
    data = {"Items": ["a", "b", "c"]}
    assert render("{{ range $i, $v := .Items }}{{ $i }}={{ $v }};{{ end }}", data) == "0=a;1=b;2=c;"
    assert render("{{ range $v := .Items }}{{ $v }}{{ end }}", data) == "abc"
    assert render("{{ range .Items }}<{{ . }}>{{ end }}", data) == "<a><b><c>"


def test_range_dot_rebinding_and_root_variable() -> None:
    data = {"Sep": "|", "Items": [{"N": 1}, {"N": 2}]}
    assert render("{{ range .Items }}{{ .N }}{{ $.Sep }}{{ end }}", data) == "1|2|"


def test_range_map_visits_sorted_keys() -> None:
    data = {"M": {"b": 2, "a": 1, "c": 3}}
    assert render("{{ range $k, $v := .M }}{{ $k }}{{ $v }}{{ end }}", data) == "a1b2c3"
    assert render("{{ range .M }}{{ . }}{{ end }}", data) == "123"


def test_range_else_int_break_continue() -> None:
    assert render("{{ range .L }}x{{ else }}empty{{ end }}", {"L": []}) == "empty"
    assert render("{{ range .L }}x{{ else }}empty{{ end }}") == "empty"
    assert render("{{ range 3 }}{{ . }}{{ end }}") == "012"
    text = "{{ range .L }}{{ if eq . 2 }}{{ continue }}{{ end }}{{ if eq . 4 }}{{ break }}{{ end }}{{ . }}{{ end }}"
    assert render(text, {"L": [1, 2, 3, 4, 5]}) == "13"


def test_range_last_element_idiom_from_library_templates() -> None:
    text = (
        "{{- range $i, $_ := .Messages }}"
        "{{- $last := eq (len (slice $.Messages $i)) 1 -}}"
        "{{ .Content }}{{ if not $last }},{{ end }}"
        "{{- end }}"
    )
    data = {"Messages": [{"Content": "a"}, {"Content": "b"}, {"Content": "c"}]}
    assert render(text, data) == "a,b,c"


# ------------------------------------------------------------------------------------------- variables


def test_variable_declare_assign_and_scope() -> None:
    text = (
        '{{- $system := "" }}'
        "{{- range .Messages }}"
        "{{- if not $system }}{{ $system = .Content }}"
        '{{- else }}{{ $system = printf "%s\\n\\n%s" $system .Content }}{{ end }}'
        "{{- end }}{{ $system }}"
    )
    data = {"Messages": [{"Content": "one"}, {"Content": "two"}]}
    assert render(text, data) == "one\n\ntwo"


def test_variables_declared_in_a_block_end_with_it() -> None:
    assert render("{{ $x := 1 }}{{ if true }}{{ $x := 2 }}{{ $x }}{{ end }}{{ $x }}") == "21"
    with pytest.raises(TemplateError, match='undefined variable "\\$y"'):
        parse("{{ if true }}{{ $y := 1 }}{{ end }}{{ $y }}")


def test_root_variable_fields_and_variable_field_chains() -> None:
    data = {"A": {"B": "deep"}, "L": [{"Name": "n"}]}
    assert render("{{ $.A.B }}{{ range $m := .L }}{{ $m.Name }}{{ end }}", data) == "deepn"


def test_declaration_action_prints_nothing() -> None:
    assert render("a{{ $x := 5 }}b{{ $x = 6 }}c{{ $x }}") == "abc6"


# -------------------------------------------------------------------------------------------- literals


def test_literals() -> None:
    assert render('{{ "a\\tb\\n\\u00e9\\x41" }}') == "a\tb\né" + "A"
    assert render("{{ `raw\\n` }}") == "raw\\n"
    assert (
        render("{{ 'a' }} {{ 0x1F }} {{ 1_000 }} {{ 2.50 }} {{ 1e3 }} {{ true }} {{ false }}")
        == "97 31 1000 2.5 1000 true false"
    )
    assert render("{{ print nil }}") == ""


def test_parenthesised_pipelines_and_pipes() -> None:
    assert render("{{ (len .L) }}", {"L": [1, 2]}) == "2"
    assert render('{{ .Name | printf "<%s>" }}', {"Name": "n"}) == "<n>"
    assert render('{{ "x" | printf "%s-%s" "y" }}') == "y-x"
    assert render('{{ (index .M "k").Field }}', {"M": {"k": {"Field": "f"}}}) == "f"
    assert render("{{ if and (eq 1 1) (ne 1 2) }}ok{{ end }}") == "ok"


# ------------------------------------------------------------------------------------------- functions


def test_eq_is_multi_way_like_go() -> None:
    assert render('{{ eq .R "user" "tool" }}', {"R": "tool"}) == "true"
    assert render('{{ eq .R "user" "tool" }}', {"R": "system"}) == "false"
    assert render('{{ eq .Missing nil }} {{ eq .Missing "" }}') == "true false"


def test_comparisons() -> None:
    assert render("{{ lt 1 2 }} {{ le 2 2 }} {{ gt 1 2 }} {{ ge 2 3 }} {{ ne 1 2 }}") == "true true false false true"
    assert render('{{ lt "a" "b" }}') == "true"


def test_and_or_return_operands_and_short_circuit() -> None:
    assert render('{{ or .A "default" }}') == "default"
    assert render('{{ or .A "default" }}', {"A": "set"}) == "set"
    assert render('{{ and 1 0 2 }} {{ and 1 2 }} {{ or 0 "" }}') == "0 2 "
    # the second operand would fail (index out of range) if it were evaluated
    assert render("{{ if and .L (index .L 0) }}y{{ else }}n{{ end }}", {"L": []}) == "n"


def test_not_len_index_slice() -> None:
    data = {"L": ["a", "b", "c"], "M": {"k": "v"}, "S": "héllo"}
    assert render("{{ not .L }} {{ not 0 }}", data) == "false true"
    assert render("{{ len .L }} {{ len .M }} {{ len .S }} {{ len .Missing }}", data) == "3 1 6 0"
    assert render('{{ index .L 1 }} {{ index .M "k" }} {{ index .M "nope" }}|', data) == "b v |"
    assert render("{{ index .N 0 1 }}", {"N": [[1, 2]]}) == "2"
    assert render("{{ slice .L 1 }} {{ slice .L 0 2 }} {{ slice .L }} {{ slice .L 1 2 3 }}", data) == (
        '["b","c"] ["a","b"] ["a","b","c"] ["b"]'
    )
    assert render('{{ slice "abcdef" 1 3 }}') == "bc"


def test_print_println() -> None:
    assert render('{{ print 1 2 "a" 3 "b" "c" }}') == "1 2a3bc"
    assert render('{{ println "a" 1 }}') == "a 1\n"


def test_printf_verbs() -> None:
    text = '{{ printf "%s|%d|%v|%q|%f|%.2f|%5d|%-4s|%x|%t|%%|%03d" "s" 7 1.5 "q\\"" 3.5 2.345 42 "ab" 255 true 7 }}'
    assert render(text) == 's|7|1.5|"q\\""|3.500000|2.35|   42|ab  |ff|true|%|007'
    assert render('{{ printf "%d %d" 1 }}') == "1 %!d(MISSING)"
    assert render('{{ printf "%d" "x" }}') == "%!d(string=x)"
    assert render('{{ printf "%v" .M }}', {"M": {"a": 1}}) == '{"a":1}'


def test_json_marshals_like_go() -> None:
    args = {"location": "Paris", "unit": "celsius", "nested": {"z": 1, "a": [1, 2.5, True, None]}}
    assert render("{{ json .A }}", {"A": args}) == (
        '{"location":"Paris","unit":"celsius","nested":{"z":1,"a":[1,2.5,true,null]}}'
    )
    assert render("{{ json .S }}", {"S": '<b> & "q" é\n'}) == '"\\u003cb\\u003e \\u0026 \\"q\\" é\\n"'
    assert render("{{ json 1.0 }} {{ json 1e21 }} {{ json 1e-7 }} {{ json 123456789.0 }}") == ("1 1e+21 1e-7 123456789")
    assert render('{{ json .Missing }} {{ json true }} {{ json "" }}') == 'null true ""'
    assert to_json([{"k": [1, {"x": None}]}]) == '[{"k":[1,{"x":null}]}]'


def test_dates() -> None:
    today = dt.date.today()
    assert render("{{ currentDate }}") == today.isoformat()
    assert render("{{ yesterdayDate }}") == (today - dt.timedelta(days=1)).isoformat()


def test_to_typescript_type() -> None:
    props = {
        "a": {"Type": ["string"]},
        "b": {"Type": ["integer", "null"]},
        "c": {"AnyOf": [{"Type": ["array"]}, {"Type": ["object"]}]},
        "d": {},
    }
    text = "{{ range $k, $v := .P }}{{ $k }}: {{ toTypeScriptType $v }}; {{ end }}"
    assert render(text, {"P": props}) == "a: string; b: number | null; c: any[] | Record<string, any>; d: any; "


# ------------------------------------------------------------------------------------- define/template


def test_define_template_and_block() -> None:
    text = '{{ define "item" }}<{{ . }}>{{ end }}{{ range .L }}{{ template "item" . }}{{ end }}'
    assert render(text, {"L": [1, 2]}) == "<1><2>"
    assert render('{{ block "b" .X }}[{{ . }}]{{ end }}', {"X": "x"}) == "[x]"


# ----------------------------------------------------------------------------------------- errors


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("{{ .Prompt ", "unclosed action"),
        ("{{ .Prompt }", "unclosed action"),
        ("{{/* never closed", "unclosed comment"),
        ("{{/* c */ .X }}", "comment ends before closing delimiter"),
        ("{{ nosuch .X }}", 'function "nosuch" not defined'),
        ("{{ if .X }}open", "unexpected EOF"),
        ("{{ range .X }}a{{ else }}b", "unexpected EOF"),
        ("text{{ end }}", "unexpected {{end}}"),
        ("{{ else }}", "unexpected {{else}}"),
        ("{{ $x }}", 'undefined variable "$x"'),
        ("{{ $x = 1 }}", "undefined variable"),
        ("{{ break }}", "{{break}} outside {{range}}"),
        ("{{ if }}x{{ end }}", "missing value for if"),
        ("{{ }}", "missing value for command"),
        ("{{ (.X }}", "unclosed left paren"),
        ("{{ .X) }}", "unexpected right paren"),
        ('{{ "abc }}', "unterminated quoted string"),
        ("{{ .X | 3 }}", "non executable command in pipeline stage 2"),
        ("{{ if $a, $b := .X }}{{ end }}", "too many declarations in if"),
        ("{{ .X ! }}", "unexpected"),
        ("{{ 3x }}", "bad number syntax"),
        ("{{ .X# }}", "bad character"),
    ],
)
def test_parse_errors(text: str, message: str) -> None:
    with pytest.raises(TemplateError) as info:
        parse(text)
    assert message in str(info.value)
    assert isinstance(info.value, ValueError)


def test_parse_errors_carry_line_numbers() -> None:
    with pytest.raises(TemplateError, match=r"^template: :3: "):
        parse("line1\nline2\n{{ nosuch }}")


@pytest.mark.parametrize(
    ("text", "data", "message"),
    [
        ("{{ index .L 5 }}", {"L": [1]}, "error calling index: index out of range: 5"),
        ("{{ len 3 }}", {}, "error calling len: len of type int"),
        ('{{ eq 1 "1" }}', {}, "incompatible types for comparison"),
        ("{{ not 1 2 }}", {}, "wrong number of args for not: want 1 got 2"),
        ("{{ slice .L 2 1 }}", {"L": [1, 2, 3]}, "invalid slice index: 2 > 1"),
        ("{{ .S.Field }}", {"S": "str"}, "can't evaluate field Field in type string"),
        ("{{ .X 1 }}", {"X": 1}, "X is not a method but has arguments"),
        ('{{ template "nope" }}', {}, 'no such template "nope"'),
        ("{{ range .S }}{{ end }}", {"S": "abc"}, "range can't iterate over abc"),
        ("{{ nil }}", {}, "nil is not a command"),
    ],
)
def test_execution_errors(text: str, data: dict[str, Any], message: str) -> None:
    template = parse(text)
    with pytest.raises(TemplateError, match="executing") as info:
        template.render(data)
    assert message in str(info.value)


# ------------------------------------------------------------------------------- identifiers/truncation


def test_identifiers_cover_every_reference() -> None:
    text = (
        "{{ if .System }}{{ .System }}{{ end }}"
        '{{ range $i, $m := .Messages }}{{ if eq $m.Role "tool" }}{{ .ToolName }}{{ end }}{{ end }}'
        "{{ with $.Tools }}{{ (index . 0).Function.Name }}{{ end }}{{ json .Suffix }}"
    )
    assert parse(text).identifiers() == {
        "system",
        "messages",
        "role",
        "toolname",
        "tools",
        "function",
        "name",
        "suffix",
    }
    assert parse("plain text {{ 1 }}").identifiers() == set()


def test_truncate_at_response_keeps_the_response_and_drops_the_rest() -> None:
    text = "{{ if .System }}S:{{ .System }}\n{{ end }}U:{{ .Prompt }}\nA:{{ .Response }}<end>\n{{ if .X }}tail{{ end }}"
    template = parse(text)
    data = {"System": "sys", "Prompt": "p", "Response": "r", "X": True}
    assert template.render(data) == "S:sys\nU:p\nA:r<end>\ntail"
    assert template.truncate_at_response().render(data) == "S:sys\nU:p\nA:r"
    assert template.render(data) == "S:sys\nU:p\nA:r<end>\ntail"  # the original is untouched


def test_truncate_inside_a_block_and_without_response() -> None:
    text = "{{ if .Prompt }}U:{{ .Prompt }} A:{{ .Response }} after{{ end }} outside"
    assert parse(text).truncate_at_response().render({"Prompt": "p", "Response": ""}) == "U:p A:"
    assert parse("no response {{ .Prompt }}").truncate_at_response().render({"Prompt": "p"}) == "no response p"
    # a pipeline that loses a command after the cut is dropped entirely (Ollama's deleteNode)
    assert parse('a{{ .Response | printf "%s" }}b').truncate_at_response().render({"Response": "r"}) == "a"


def test_extend_appends_the_other_root() -> None:
    base = parse("{{ .Prompt }}")
    assert base.extend(parse("{{ .Response }}")).render({"Prompt": "p", "Response": "r"}) == "pr"


def test_tokenize_exposes_tokens_with_lines() -> None:
    tokens = tokenize("a\n{{ .X }}")
    assert [(t.kind, t.val, t.line) for t in tokens] == [
        ("text", "a\n", 1),
        ("{{", "{{", 2),
        ("space", " ", 2),
        ("field", ".X", 2),
        ("space", " ", 2),
        ("}}", "}}", 2),
        ("EOF", "", 2),
    ]
