"""A pure-Python subset of Go's ``text/template``, as used by Ollama model TEMPLATE layers.

Three stages: :func:`tokenize` (lexer, Go's delimiters ``{{ }}`` and trim markers ``{{- `` / `` -}}``),
:class:`_Parser` (an AST of the ``*Node`` dataclasses below, mirroring Go's ``text/template/parse``), and
:class:`_Exec` (the evaluator).  :func:`parse` returns a :class:`Template`.

Supported: text, comments, ``if/else if/else``, ``range`` (lists, maps in sorted key order, ints; ``else``;
``break``/``continue``), ``with/else with/else``, ``define``/``template``/``block``, variables (``$``, ``$x :=``,
``$x =``), field chains on maps (and attributes of other objects), literals, parenthesised pipelines, pipes, and
the functions ``and or not len index slice print printf println eq ne lt le gt ge`` plus Ollama's ``json
currentDate yesterdayDate toTypeScriptType``.

Data is plain Python (dicts keyed by Go field names, lists, str, int, float, bool, None).  Where this differs
from Go, on purpose:

* a missing key, or a field of ``None``, is ``None`` and prints as ``""`` (Go prints ``<no value>``);
* ``len``/``range`` of ``None`` give 0 / no iterations (as for Go's typed nil slices);
* dicts and lists printed by an action are printed as compact JSON (Ollama's types print as JSON);
* JSON (``json`` and printing) keeps dict insertion order; ``range`` over a dict visits keys sorted, like Go.

Values may carry Go methods: an object with ``go_string()`` prints as its result (Go's ``String()``), and one
with ``go_json()`` is marshalled as the value it returns (Go's ``MarshalJSON``/json tags).
"""

from __future__ import annotations

import datetime as _dt
import json
import math
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from decimal import Decimal
from typing import Any, NamedTuple

__all__ = [
    "ActionNode",
    "BoolNode",
    "BranchNode",
    "BreakNode",
    "ChainNode",
    "CommandNode",
    "ContinueNode",
    "DotNode",
    "FieldNode",
    "IdentifierNode",
    "IfNode",
    "ListNode",
    "NilNode",
    "Node",
    "NumberNode",
    "PipeNode",
    "RangeNode",
    "StringNode",
    "Template",
    "TemplateError",
    "TemplateNode",
    "TextNode",
    "Token",
    "VariableNode",
    "WithNode",
    "format_value",
    "is_true",
    "parse",
    "to_json",
    "tokenize",
    "walk",
]


class TemplateError(ValueError):
    """A template failed to parse or execute; the message reads like Go's (``template: :LINE: ...``)."""


def _error(line: int, msg: str) -> TemplateError:
    return TemplateError(f"template: :{line}: {msg}")


# --------------------------------------------------------------------------------------------------- lexer

SPACE_CHARS = " \t\r\n"

TEXT, LEFT, RIGHT, SPACE, EOF = "text", "{{", "}}", "space", "EOF"
FIELD, DOT, VARIABLE, IDENT, KEYWORD = "field", "dot", "variable", "identifier", "keyword"
STRING, RAW, NUMBER, CHAR_CONST, BOOL, NIL = "string", "raw string", "number", "char constant", "bool", "nil"
DECLARE, ASSIGN, PIPE, LPAREN, RPAREN, CHAR = ":=", "=", "|", "(", ")", "char"

_KEYWORDS = frozenset({"block", "break", "continue", "define", "else", "end", "if", "range", "template", "with"})
_SIMPLE_TOKENS = {"=": ASSIGN, "|": PIPE, "(": LPAREN, ")": RPAREN}
_TERMINATORS = frozenset(SPACE_CHARS + ".,|:()")


class Token(NamedTuple):
    """One lexical item: its kind (a module constant), source text and 1-based line."""

    kind: str
    val: str
    line: int


def _is_alnum(c: str) -> bool:
    return c == "_" or c.isalpha() or c.isdigit()


def _rune(c: str) -> str:
    return f"U+{ord(c):04X} {c!r}"


class _Lexer:
    """Splits template source into tokens; the state machine of Go's ``text/template/parse/lex.go``."""

    def __init__(self, src: str) -> None:
        self.src = src
        self.pos = 0
        self.line = 1
        self.paren_depth = 0
        self.tokens: list[Token] = []

    def run(self) -> list[Token]:
        while self.pos < len(self.src):
            self._lex_text()
        self._emit(EOF, "")
        return self.tokens

    def _emit(self, kind: str, val: str) -> None:
        self.tokens.append(Token(kind, val, self.line))

    def _advance(self, to: int) -> None:
        self.line += self.src.count("\n", self.pos, to)
        self.pos = to

    def _emit_advance(self, kind: str, length: int) -> None:
        self._emit(kind, self.src[self.pos : self.pos + length])
        self._advance(self.pos + length)

    def _skip_space(self) -> None:
        end = self.pos
        while end < len(self.src) and self.src[end] in SPACE_CHARS:
            end += 1
        self._advance(end)

    def _at_right_delim(self, p: int) -> tuple[bool, bool]:
        """(at a closing delimiter, it carries a trim marker) for position ``p``."""
        s = self.src
        if p + 1 < len(s) and s[p] in SPACE_CHARS and s[p + 1] == "-" and s.startswith("}}", p + 2):
            return True, True
        return s.startswith("}}", p), False

    def _at_terminator(self, p: int) -> bool:
        return p >= len(self.src) or self.src[p] in _TERMINATORS or self.src.startswith("}}", p)

    def _lex_text(self) -> None:
        idx = self.src.find("{{", self.pos)
        if idx < 0:
            self._emit(TEXT, self.src[self.pos :])
            self._advance(len(self.src))
            return
        after = idx + 2
        trim = self.src.startswith("-", after) and after + 1 < len(self.src) and self.src[after + 1] in SPACE_CHARS
        text = self.src[self.pos : idx]
        if trim:
            text = text.rstrip(SPACE_CHARS)
        if text:
            self._emit(TEXT, text)
        self._advance(idx)
        inner = after + (2 if trim else 0)
        if self.src.startswith("/*", inner):
            self._lex_comment(inner)
            return
        self._emit(LEFT, "{{")
        self._advance(inner)
        self._lex_action()

    def _lex_comment(self, inner: int) -> None:
        end = self.src.find("*/", inner + 2)
        if end < 0:
            raise _error(self.line, "unclosed comment")
        delim, trim = self._at_right_delim(end + 2)
        if not delim:
            raise _error(self.line, "comment ends before closing delimiter")
        self._advance(end + 2 + (4 if trim else 2))
        if trim:
            self._skip_space()

    def _lex_action(self) -> None:
        while True:
            delim, trim = self._at_right_delim(self.pos)
            if delim:
                if self.paren_depth:
                    raise _error(self.line, "unclosed left paren")
                self._emit(RIGHT, "}}")
                self._advance(self.pos + (4 if trim else 2))
                if trim:
                    self._skip_space()
                return
            if self.pos >= len(self.src):
                raise _error(self.line, "unclosed action")
            self._handler(self.src[self.pos])()

    def _handler(self, c: str) -> Callable[[], None]:
        special: dict[str, Callable[[], None]] = {
            '"': self._lex_quote,
            "`": self._lex_raw,
            "'": self._lex_char,
            "$": self._lex_variable,
            ":": self._lex_declare,
        }
        if c in SPACE_CHARS:
            return self._lex_space
        if c in _SIMPLE_TOKENS:
            return self._lex_simple
        if c in special:
            return special[c]
        nxt = self.src[self.pos + 1 : self.pos + 2]
        if c == "." and not ("0" <= nxt <= "9" and nxt != ""):
            return self._lex_field
        if c in "+-." or "0" <= c <= "9":
            return self._lex_number
        if _is_alnum(c):
            return self._lex_identifier
        if c.isascii() and c.isprintable():
            return self._lex_punct
        raise _error(self.line, f"unrecognized character in action: {_rune(c)}")

    def _lex_space(self) -> None:
        end = self.pos
        while end < len(self.src) and self.src[end] in SPACE_CHARS:
            end += 1
        if self._at_right_delim(end - 1) == (True, True):
            end -= 1  # the last space belongs to a " -}}" trim marker
            if end == self.pos:
                return
        self._emit(SPACE, self.src[self.pos : end])
        self._advance(end)

    def _lex_simple(self) -> None:
        kind = _SIMPLE_TOKENS[self.src[self.pos]]
        if kind == LPAREN:
            self.paren_depth += 1
        elif kind == RPAREN:
            self.paren_depth -= 1
            if self.paren_depth < 0:
                raise _error(self.line, "unexpected right paren")
        self._emit_advance(kind, 1)

    def _lex_punct(self) -> None:
        self._emit_advance(CHAR, 1)

    def _lex_declare(self) -> None:
        if not self.src.startswith(":=", self.pos):
            raise _error(self.line, "expected :=")
        self._emit_advance(DECLARE, 2)

    def _lex_quote(self) -> None:
        self._lex_delimited('"', "unterminated quoted string", STRING)

    def _lex_char(self) -> None:
        self._lex_delimited("'", "unterminated character constant", CHAR_CONST)

    def _lex_delimited(self, quote: str, msg: str, kind: str) -> None:
        p = self.pos + 1
        while True:
            if p >= len(self.src) or self.src[p] == "\n":
                raise _error(self.line, msg)
            if self.src[p] == "\\":
                p += 2
                continue
            if self.src[p] == quote:
                break
            p += 1
        self._emit_advance(kind, p + 1 - self.pos)

    def _lex_raw(self) -> None:
        end = self.src.find("`", self.pos + 1)
        if end < 0:
            raise _error(self.line, "unterminated raw quoted string")
        self._emit_advance(RAW, end + 1 - self.pos)

    def _lex_variable(self) -> None:
        self._lex_word(VARIABLE, VARIABLE)

    def _lex_field(self) -> None:
        self._lex_word(DOT, FIELD)

    def _lex_word(self, bare_kind: str, kind: str) -> None:
        """A ``$``/``.`` optionally followed by a name: ``$``, ``$x``, ``.``, ``.Field``."""
        end = self.pos + 1
        if self._at_terminator(end):
            self._emit_advance(bare_kind, 1)
            return
        while end < len(self.src) and _is_alnum(self.src[end]):
            end += 1
        if not self._at_terminator(end):
            raise _error(self.line, f"bad character {_rune(self.src[end])}")
        self._emit_advance(kind, end - self.pos)

    def _lex_identifier(self) -> None:
        end = self.pos
        while end < len(self.src) and _is_alnum(self.src[end]):
            end += 1
        if not self._at_terminator(end):
            raise _error(self.line, f"bad character {_rune(self.src[end])}")
        word = self.src[self.pos : end]
        kind = IDENT
        if word in _KEYWORDS:
            kind = KEYWORD
        elif word in ("true", "false"):
            kind = BOOL
        elif word == "nil":
            kind = NIL
        self._emit_advance(kind, end - self.pos)

    def _lex_number(self) -> None:
        end = _scan_number(self.src, self.pos)
        if end < len(self.src) and _is_alnum(self.src[end]):
            raise _error(self.line, f"bad number syntax: {self.src[self.pos : end + 1]!r}")
        if end == self.pos or self.src[self.pos : end] in ("+", "-", "."):
            raise _error(self.line, f"bad number syntax: {self.src[self.pos : end + 1]!r}")
        self._emit_advance(NUMBER, end - self.pos)


def _accept(src: str, p: int, chars: str) -> int:
    return p + 1 if p < len(src) and src[p] in chars else p


def _accept_run(src: str, p: int, chars: str) -> int:
    while p < len(src) and src[p] in chars:
        p += 1
    return p


def _scan_number(src: str, p: int) -> int:
    """End of the number starting at ``p`` (Go's ``scanNumber``: sign, base prefix, fraction, exponent)."""
    p = _accept(src, p, "+-")
    digits = "0123456789_"
    exponent = "eE"
    if src.startswith("0", p):
        p += 1
        prefixes = {"x": "0123456789abcdefABCDEF_", "o": "01234567_", "b": "01_"}
        if p < len(src) and src[p].lower() in prefixes:
            digits = prefixes[src[p].lower()]
            exponent = "pP" if src[p].lower() == "x" else ""
            p += 1
    p = _accept_run(src, p, digits)
    if src.startswith(".", p):
        p = _accept_run(src, p + 1, digits)
    if exponent and p < len(src) and src[p] in exponent:
        p = _accept_run(src, _accept(src, p + 1, "+-"), "0123456789_")
    return p


def tokenize(src: str) -> list[Token]:
    """Lex ``src`` into tokens (ending with an ``EOF`` token); raises :class:`TemplateError`."""
    return _Lexer(src).run()


# ------------------------------------------------------------------------------------------ literals


_ESCAPES = {"a": "\a", "b": "\b", "f": "\f", "n": "\n", "r": "\r", "t": "\t", "v": "\v"}
_ESCAPES.update({"\\": "\\", "'": "'", '"': '"'})


def _unquote(body: str, line: int) -> str:
    """Decode the escapes of a Go interpreted string/char literal body (``strconv.Unquote``)."""
    out = bytearray()
    i = 0
    while i < len(body):
        c = body[i]
        if c != "\\":
            out += c.encode()
            i += 1
            continue
        i = _unescape(body, i + 1, out, line)
    return out.decode("utf-8", errors="replace")


def _unescape(body: str, i: int, out: bytearray, line: int) -> int:
    c = body[i : i + 1]
    if c in _ESCAPES and c:
        out += _ESCAPES[c].encode()
        return i + 1
    widths = {"x": 2, "u": 4, "U": 8}
    try:
        if c in widths:
            code = int(body[i + 1 : i + 1 + widths[c]], 16)
            out += bytes([code]) if c == "x" else chr(code).encode()
            return i + 1 + widths[c]
        if c and c in "01234567":
            out.append(int(body[i : i + 3], 8) & 0xFF)
            return i + 3
    except ValueError:
        pass
    raise _error(line, "invalid syntax in quoted string")


def _parse_number(text: str, line: int) -> int | float:
    """A Go numeric literal as int (ints, hex/octal/binary) or float."""
    try:
        return int(text, 0)
    except ValueError:
        pass
    digits = text.lstrip("+-")
    try:
        if len(digits) > 1 and digits[0] == "0" and digits.isdigit():
            return int(text, 8)
        if digits[:2].lower() == "0x":
            return float.fromhex(text)
        return float(text)
    except ValueError:
        raise _error(line, f"illegal number syntax: {text!r}") from None


# ---------------------------------------------------------------------------------------------- AST


class Node:
    """Base class of every AST node."""


@dataclass
class ListNode(Node):
    """A sequence of nodes (a template body, a branch of a control structure)."""

    nodes: list[Node] = field(default_factory=list)


@dataclass
class TextNode(Node):
    """Literal text, after trim markers were applied."""

    text: str


@dataclass
class FieldNode(Node):
    """``.A.B`` — a field chain starting at dot."""

    ident: tuple[str, ...]


@dataclass
class VariableNode(Node):
    """``$x.A.B`` — ``ident[0]`` is the variable name (``$`` or ``$x``), the rest a field chain."""

    ident: tuple[str, ...]


@dataclass
class ChainNode(Node):
    """``(pipeline).A.B`` — fields applied to a parenthesised term."""

    node: Node
    fields: tuple[str, ...]


@dataclass
class IdentifierNode(Node):
    """A function name."""

    name: str


@dataclass
class DotNode(Node):
    """``.`` — the cursor."""


@dataclass
class NilNode(Node):
    """The untyped ``nil`` constant."""


@dataclass
class BoolNode(Node):
    """``true`` / ``false``."""

    value: bool


@dataclass
class NumberNode(Node):
    """A numeric or character constant."""

    value: int | float


@dataclass
class StringNode(Node):
    """A quoted or raw string constant (already unquoted)."""

    value: str


@dataclass
class CommandNode(Node):
    """One pipeline stage: operands, the first of which may be a function."""

    args: list[Node]


@dataclass
class PipeNode(Node):
    """``$a, $b := cmd | cmd`` — optional declarations (or assignments) and commands."""

    line: int
    decl: list[str]
    is_assign: bool
    cmds: list[CommandNode]


@dataclass
class ActionNode(Node):
    """``{{ pipeline }}`` — prints the value unless the pipeline declares/assigns variables."""

    line: int
    pipe: PipeNode


@dataclass
class BranchNode(Node):
    """Shared shape of ``if``, ``range`` and ``with``."""

    line: int
    pipe: PipeNode
    body: ListNode
    else_body: ListNode | None


@dataclass
class IfNode(BranchNode):
    """``{{if}} ... {{else}} ... {{end}}`` (``else if`` nests an IfNode in ``else_body``)."""


@dataclass
class RangeNode(BranchNode):
    """``{{range}} ... {{else}} ... {{end}}``."""


@dataclass
class WithNode(BranchNode):
    """``{{with}} ... {{else}} ... {{end}}``."""


@dataclass
class BreakNode(Node):
    """``{{break}}`` inside a range."""

    line: int


@dataclass
class ContinueNode(Node):
    """``{{continue}}`` inside a range."""

    line: int


@dataclass
class TemplateNode(Node):
    """``{{template "name" pipeline}}``."""

    line: int
    name: str
    pipe: PipeNode | None


@dataclass
class _End(Node):
    line: int


@dataclass
class _Else(Node):
    line: int


def _children(node: Node) -> list[Node]:
    if isinstance(node, ListNode):
        return list(node.nodes)
    if isinstance(node, ActionNode):
        return [node.pipe]
    if isinstance(node, BranchNode):
        return [node.pipe, node.body] + ([node.else_body] if node.else_body is not None else [])
    if isinstance(node, TemplateNode):
        return [node.pipe] if node.pipe is not None else []
    if isinstance(node, PipeNode):
        return list(node.cmds)
    if isinstance(node, CommandNode):
        return list(node.args)
    if isinstance(node, ChainNode):
        return [node.node]
    return []


def walk(node: Node, ancestors: tuple[Node, ...] = ()) -> Iterator[tuple[Node, tuple[Node, ...]]]:
    """Pre-order traversal yielding ``(node, ancestors)``; a branch's pipe comes before its bodies."""
    yield node, ancestors
    inner = (*ancestors, node)
    for child in _children(node):
        yield from walk(child, inner)


# -------------------------------------------------------------------------------------------- parser

_OPERAND_START = frozenset({BOOL, CHAR_CONST, DOT, FIELD, IDENT, NUMBER, NIL, RAW, STRING, VARIABLE, LPAREN})
_LITERALS = (BoolNode, DotNode, NilNode, NumberNode, StringNode)


def _describe(tok: Token) -> str:
    if tok.kind == EOF:
        return "EOF"
    if tok.kind == KEYWORD:
        return f"<{tok.val}>"
    return json.dumps(tok.val if len(tok.val) <= 10 else tok.val[:10] + "...")


class _Parser:
    """Recursive-descent parser over the token list (the structure of Go's ``parse.Tree``)."""

    def __init__(self, tokens: list[Token], funcs: Iterable[str]) -> None:
        self.toks = tokens
        self.i = 0
        self.vars = ["$"]
        self.range_depth = 0
        self.funcs = frozenset(funcs)
        self.defines: dict[str, ListNode] = {}

    # token helpers
    def next(self) -> Token:
        tok = self.toks[min(self.i, len(self.toks) - 1)]
        self.i += 1
        return tok

    def backup(self) -> None:
        self.i -= 1

    def peek(self) -> Token:
        return self.toks[min(self.i, len(self.toks) - 1)]

    def next_non_space(self) -> Token:
        tok = self.next()
        while tok.kind == SPACE:
            tok = self.next()
        return tok

    def peek_non_space(self) -> Token:
        tok = self.next_non_space()
        self.backup()
        return tok

    def expect(self, kind: str, context: str) -> Token:
        tok = self.next_non_space()
        if tok.kind != kind:
            raise self.unexpected(tok, context)
        return tok

    def unexpected(self, tok: Token, context: str) -> TemplateError:
        return _error(tok.line, f"unexpected {_describe(tok)} in {context}")

    # structure
    def parse(self) -> ListNode:
        root = ListNode()
        while self.peek().kind != EOF:
            if self.peek().kind == LEFT and self._try_define():
                continue
            node = self._text_or_action()
            if isinstance(node, (_End, _Else)):
                raise _error(node.line, "unexpected {{%s}}" % ("end" if isinstance(node, _End) else "else"))
            root.nodes.append(node)
        return root

    def _try_define(self) -> bool:
        start = self.i
        self.next()
        tok = self.next_non_space()
        if tok.kind == KEYWORD and tok.val == "define":
            name = self._template_name("define clause")
            self.expect(RIGHT, "define clause")
            self._definition(name, "define clause")
            return True
        self.i = start
        return False

    def _definition(self, name: str, context: str) -> None:
        saved_vars, saved_depth = self.vars, self.range_depth
        self.vars, self.range_depth = ["$"], 0
        try:
            body, end = self._item_list()
        finally:
            self.vars, self.range_depth = saved_vars, saved_depth
        if not isinstance(end, _End):
            raise _error(end.line, f"unexpected {{{{else}}}} in {context}")
        self.defines[name] = body

    def _template_name(self, context: str) -> str:
        tok = self.next_non_space()
        if tok.kind not in (STRING, RAW):
            raise self.unexpected(tok, context)
        return self._string(tok)

    def _text_or_action(self) -> Node:
        tok = self.next_non_space()
        if tok.kind == TEXT:
            return TextNode(tok.val)
        if tok.kind == LEFT:
            return self._action()
        raise self.unexpected(tok, "input")

    def _item_list(self) -> tuple[ListNode, _End | _Else]:
        body = ListNode()
        while self.peek_non_space().kind != EOF:
            node = self._text_or_action()
            if isinstance(node, (_End, _Else)):
                return body, node
            body.nodes.append(node)
        raise _error(self.peek().line, "unexpected EOF")

    def _action(self) -> Node:
        tok = self.next_non_space()
        controls: dict[str, Callable[[Token], Node]] = {
            "block": self._block_control,
            "break": self._break_control,
            "continue": self._break_control,
            "else": self._else_control,
            "end": self._end_control,
            "if": self._if_control,
            "range": self._range_control,
            "template": self._template_control,
            "with": self._with_control,
        }
        if tok.kind == KEYWORD and tok.val in controls:
            return controls[tok.val](tok)
        self.backup()
        return ActionNode(tok.line, self._pipeline("command", RIGHT))

    def _end_control(self, tok: Token) -> Node:
        self.expect(RIGHT, "end")
        return _End(tok.line)

    def _else_control(self, tok: Token) -> Node:
        peek = self.peek_non_space()
        if not (peek.kind == KEYWORD and peek.val in ("if", "with")):
            self.expect(RIGHT, "else")
        return _Else(tok.line)

    def _break_control(self, tok: Token) -> Node:
        if self.range_depth == 0:
            raise _error(tok.line, f"{{{{{tok.val}}}}} outside {{{{range}}}}")
        self.expect(RIGHT, f"{{{{{tok.val}}}}}")
        return BreakNode(tok.line) if tok.val == "break" else ContinueNode(tok.line)

    def _if_control(self, tok: Token) -> Node:
        return IfNode(tok.line, *self._control("if"))

    def _range_control(self, tok: Token) -> Node:
        return RangeNode(tok.line, *self._control("range"))

    def _with_control(self, tok: Token) -> Node:
        return WithNode(tok.line, *self._control("with"))

    def _control(self, context: str) -> tuple[PipeNode, ListNode, ListNode | None]:
        mark = len(self.vars)
        try:
            pipe = self._pipeline(context, RIGHT)
            self.range_depth += context == "range"
            try:
                body, nxt = self._item_list()
            finally:
                self.range_depth -= context == "range"
            else_body = self._else_branch(context) if isinstance(nxt, _Else) else None
        finally:
            del self.vars[mark:]
        return pipe, body, else_body

    def _else_branch(self, context: str) -> ListNode:
        peek = self.peek_non_space()
        if context in ("if", "with") and peek.kind == KEYWORD and peek.val == context:
            tok = self.next_non_space()
            return ListNode([self._if_control(tok) if context == "if" else self._with_control(tok)])
        body, nxt = self._item_list()
        if not isinstance(nxt, _End):
            raise _error(nxt.line, "expected end; found {{else}}")
        return body

    def _template_control(self, tok: Token) -> Node:
        name = self._template_name("template clause")
        pipe = None
        if self.next_non_space().kind != RIGHT:
            self.backup()
            pipe = self._pipeline("template clause", RIGHT)
        return TemplateNode(tok.line, name, pipe)

    def _block_control(self, tok: Token) -> Node:
        name = self._template_name("block clause")
        pipe = self._pipeline("block clause", RIGHT)
        self._definition(name, "block clause")
        return TemplateNode(tok.line, name, pipe)

    # pipelines
    def _pipeline(self, context: str, end: str) -> PipeNode:
        line = self.peek_non_space().line
        decl, is_assign = self._declarations(context)
        pipe = PipeNode(line, decl, is_assign, [])
        while True:
            tok = self.next_non_space()
            if tok.kind == end:
                self._check_pipeline(pipe, context)
                return pipe
            if tok.kind not in _OPERAND_START:
                raise self.unexpected(tok, context)
            self.backup()
            pipe.cmds.append(self._command())

    def _declarations(self, context: str) -> tuple[list[str], bool]:
        decl: list[str] = []
        while True:
            start = self.i
            var = self.next_non_space()
            if var.kind != VARIABLE:
                self.i = start
                return decl, False
            nxt = self.next_non_space()
            if nxt.kind in (DECLARE, ASSIGN):
                self._declare(var, nxt.kind == ASSIGN)
                return [*decl, var.val], nxt.kind == ASSIGN
            if not (nxt.kind == CHAR and nxt.val == ","):
                self.i = start
                return decl, False
            self._declare_comma(context, decl, var)

    def _declare(self, var: Token, assign: bool) -> None:
        if not assign:
            self.vars.append(var.val)
        elif var.val not in self.vars:
            raise _error(var.line, f"undefined variable {var.val!r}")

    def _declare_comma(self, context: str, decl: list[str], var: Token) -> None:
        decl.append(var.val)
        self.vars.append(var.val)
        if context != "range" or len(decl) >= 2:
            raise _error(var.line, f"too many declarations in {context}")
        if self.peek_non_space().kind not in (VARIABLE, RIGHT, RPAREN):
            raise _error(var.line, "range can only initialize variables")

    def _check_pipeline(self, pipe: PipeNode, context: str) -> None:
        if not pipe.cmds:
            raise _error(pipe.line, f"missing value for {context}")
        for stage, cmd in enumerate(pipe.cmds[1:], start=2):
            if isinstance(cmd.args[0], _LITERALS):
                raise _error(pipe.line, f"non executable command in pipeline stage {stage}")

    def _command(self) -> CommandNode:
        cmd = CommandNode([])
        while True:
            self.peek_non_space()
            operand = self._operand()
            if operand is not None:
                cmd.args.append(operand)
            tok = self.next()
            if tok.kind == SPACE:
                continue
            if tok.kind in (RIGHT, RPAREN):
                self.backup()
            elif tok.kind != PIPE:
                raise self.unexpected(tok, "operand")
            break
        if not cmd.args:
            raise _error(self.peek().line, "empty command")
        return cmd

    def _operand(self) -> Node | None:
        node = self._term()
        if node is None or self.peek().kind != FIELD:
            return node
        fields: list[str] = []
        while self.peek().kind == FIELD:
            fields.append(self.next().val[1:])
        if isinstance(node, FieldNode):
            return FieldNode(node.ident + tuple(fields))
        if isinstance(node, VariableNode):
            return VariableNode(node.ident + tuple(fields))
        if isinstance(node, _LITERALS):
            raise _error(self.peek().line, f"unexpected . after term {'.' + fields[0]!r}")
        return ChainNode(node, tuple(fields))

    def _term(self) -> Node | None:
        tok = self.next_non_space()
        simple: dict[str, Callable[[Token], Node]] = {
            IDENT: self._function,
            DOT: lambda t: DotNode(),
            NIL: lambda t: NilNode(),
            VARIABLE: self._use_var,
            FIELD: lambda t: FieldNode((t.val[1:],)),
            BOOL: lambda t: BoolNode(t.val == "true"),
            NUMBER: lambda t: NumberNode(_parse_number(t.val, t.line)),
            CHAR_CONST: self._char,
            STRING: lambda t: StringNode(self._string(t)),
            RAW: lambda t: StringNode(self._string(t)),
            LPAREN: lambda t: self._pipeline("parenthesized pipeline", RPAREN),
        }
        if tok.kind in simple:
            return simple[tok.kind](tok)
        self.backup()
        return None

    def _function(self, tok: Token) -> Node:
        if tok.val not in self.funcs:
            raise _error(tok.line, f"function {tok.val!r} not defined".replace("'", '"'))
        return IdentifierNode(tok.val)

    def _use_var(self, tok: Token) -> Node:
        if tok.val not in self.vars:
            raise _error(tok.line, f'undefined variable "{tok.val}"')
        return VariableNode((tok.val,))

    def _char(self, tok: Token) -> Node:
        text = _unquote(tok.val[1:-1], tok.line)
        if len(text) != 1:
            raise _error(tok.line, f"malformed character constant: {tok.val}")
        return NumberNode(ord(text))

    def _string(self, tok: Token) -> str:
        return tok.val[1:-1] if tok.kind == RAW else _unquote(tok.val[1:-1], tok.line)


# ------------------------------------------------------------------------------------------ values

_MISSING: Any = object()  # "no value piped in", distinct from None


def is_true(value: Any) -> bool:
    """Go's truth: false, 0, nil and empty strings/lists/maps are false; anything else is true."""
    if value is None or value is _MISSING:
        return False
    if isinstance(value, (bool, int, float)):
        return bool(value)
    if isinstance(value, (str, bytes, Mapping, Sequence)):
        return len(value) > 0
    return True


def _shortest_digits(value: float) -> tuple[str, int]:
    """Shortest round-trip decimal digits of ``abs(value)`` and the decimal point position."""
    parts = Decimal(repr(abs(value))).as_tuple()
    digits = "".join(map(str, parts.digits))
    stripped = digits.rstrip("0") or "0"
    exponent = int(parts.exponent) + len(digits) - len(stripped)
    return stripped, len(stripped) + exponent


def _float_text(value: float, *, json_style: bool) -> str:
    """Go's ``%v`` (``json_style=False``) or ``encoding/json`` rendering of a float64."""
    if math.isnan(value) or math.isinf(value):
        return "null" if json_style else ("NaN" if math.isnan(value) else ("+Inf" if value > 0 else "-Inf"))
    sign = "-" if math.copysign(1.0, value) < 0 else ""
    if value == 0:
        return sign + "0"
    digits, point = _shortest_digits(value)
    exp = point - 1
    # encoding/json switches to exponents outside [1e-6, 1e21); %v (strconv 'g', shortest) at exp < -4 or >= 6
    use_exp = (abs(value) < 1e-6 or abs(value) >= 1e21) if json_style else (exp < -4 or exp >= 6)
    if use_exp:
        mantissa = digits[0] + ("." + digits[1:] if len(digits) > 1 else "")
        exp_text = f"-{-exp}" if json_style and exp < 0 else f"{'-' if exp < 0 else '+'}{abs(exp):02d}"
        return f"{sign}{mantissa}e{exp_text}"
    if point <= 0:
        return f"{sign}0.{'0' * -point}{digits}"
    if point >= len(digits):
        return sign + digits + "0" * (point - len(digits))
    return f"{sign}{digits[:point]}.{digits[point:]}"


def _json_string(text: str) -> str:
    out = json.dumps(text, ensure_ascii=False)
    for char, escaped in (("<", "\\u003c"), (">", "\\u003e"), ("&", "\\u0026")):
        out = out.replace(char, escaped)
    return out.replace("\u2028", "\\u2028").replace("\u2029", "\\u2029")


def to_json(value: Any) -> str:
    """Compact JSON like Go's ``json.Marshal`` (HTML-escaped strings, Go float format, dict order kept)."""
    marshal = getattr(value, "go_json", None)
    if callable(marshal):
        return to_json(marshal())
    if value is None or value is _MISSING:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return _float_text(value, json_style=True)
    if isinstance(value, str):
        return _json_string(value)
    if isinstance(value, Mapping):
        return "{" + ",".join(f"{_json_string(str(k))}:{to_json(v)}" for k, v in value.items()) + "}"
    if isinstance(value, (list, tuple)):
        return "[" + ",".join(to_json(v) for v in value) + "]"
    return _json_string(str(value))


def format_value(value: Any) -> str:
    """How an action prints a value: Go's ``%v`` for scalars, JSON for maps/lists, ``""`` for nil."""
    if value is None or value is _MISSING:
        return ""
    stringer = getattr(value, "go_string", None)
    if callable(stringer):
        return str(stringer())
    if isinstance(value, str):
        return value
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return _float_text(value, json_style=False)
    if isinstance(value, (bytes, bytearray)):
        return bytes(value).decode("utf-8", errors="replace")
    return to_json(value)


def _go_type(value: Any) -> str:
    if value is None:
        return "<nil>"
    names = {bool: "bool", int: "int", float: "float64", str: "string"}
    for py_type, go_name in names.items():
        if type(value) is py_type:
            return go_name
    if isinstance(value, Mapping):
        return "map[string]interface {}"
    if isinstance(value, (list, tuple)):
        return "[]interface {}"
    return type(value).__name__


# --------------------------------------------------------------------------------------- functions


class _FuncError(Exception):
    """Raised by a builtin; the evaluator reports it as ``error calling NAME: ...``."""


def _kind(value: Any) -> str:
    if value is None:
        return "nil"
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, (int, float)):
        return "number"
    if isinstance(value, str):
        return "string"
    return "other"


def _equal(a: Any, b: Any) -> bool:
    ka, kb = _kind(a), _kind(b)
    if "nil" in (ka, kb):
        return ka == kb
    if ka != kb:
        raise _FuncError("incompatible types for comparison")
    return bool(a == b)


def _eq(args: list[Any]) -> bool:
    if len(args) < 2:
        raise _FuncError("missing argument for comparison")
    return any(_equal(args[0], other) for other in args[1:])


def _ne(args: list[Any]) -> bool:
    return not _equal(args[0], args[1])


def _less(a: Any, b: Any) -> bool:
    ka, kb = _kind(a), _kind(b)
    if ka not in ("number", "string") or kb not in ("number", "string"):
        raise _FuncError("invalid type for comparison")
    if ka != kb:
        raise _FuncError("incompatible types for comparison")
    return bool(a < b)


def _lt(args: list[Any]) -> bool:
    return _less(args[0], args[1])


def _le(args: list[Any]) -> bool:
    return _less(args[0], args[1]) or _equal(args[0], args[1])


def _gt(args: list[Any]) -> bool:
    return not _le(args)


def _ge(args: list[Any]) -> bool:
    return not _lt(args)


def _not(args: list[Any]) -> bool:
    return not is_true(args[0])


def _len(args: list[Any]) -> int:
    value = args[0]
    if value is None:
        return 0
    if isinstance(value, str):
        return len(value.encode())
    if isinstance(value, (bytes, Mapping, list, tuple)):
        return len(value)
    raise _FuncError(f"len of type {_go_type(value)}")


def _int_arg(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise _FuncError(f"cannot index slice/array with type {_go_type(value)}")
    return value


def _index_one(item: Any, key: Any) -> Any:
    if item is None:
        raise _FuncError("index of untyped nil")
    if isinstance(item, Mapping):
        return item.get(key)
    if isinstance(item, (str, list, tuple)):
        seq = item.encode() if isinstance(item, str) else item
        idx = _int_arg(key)
        if not 0 <= idx < len(seq):
            raise _FuncError(f"index out of range: {idx}")
        return seq[idx]
    raise _FuncError(f"can't index item of type {_go_type(item)}")


def _index(args: list[Any]) -> Any:
    item = args[0]
    for key in args[1:]:
        item = _index_one(item, key)
    return item


def _slice_bounds(idx: list[int], cap: int) -> slice:
    for value in idx:
        if not 0 <= value <= cap:
            raise _FuncError(f"index out of range: {value}")
    low = idx[0] if idx else 0
    high = idx[1] if len(idx) > 1 else cap
    if low > high:
        raise _FuncError(f"invalid slice index: {low} > {high}")
    if len(idx) == 3 and high > idx[2]:
        raise _FuncError(f"invalid slice index: {high} > {idx[2]}")
    return slice(low, high)


def _slice(args: list[Any]) -> Any:
    item, idx = args[0], [_int_arg(a) for a in args[1:]]
    if item is None:
        raise _FuncError("slice of untyped nil")
    if isinstance(item, str):
        if len(idx) == 3:
            raise _FuncError("cannot 3-index slice a string")
        data = item.encode()
        return data[_slice_bounds(idx, len(data))].decode("utf-8", errors="replace")
    if isinstance(item, (list, tuple)):
        return list(item[_slice_bounds(idx, len(item))])
    raise _FuncError(f"can't slice item of type {_go_type(item)}")


def _print(args: list[Any]) -> str:
    out: list[str] = []
    for i, arg in enumerate(args):
        if i and not isinstance(arg, str) and not isinstance(args[i - 1], str):
            out.append(" ")
        out.append(format_value(arg))
    return "".join(out)


def _println(args: list[Any]) -> str:
    return " ".join(format_value(a) for a in args) + "\n"


def _json(args: list[Any]) -> str:
    return to_json(args[0])


def _current_date(args: list[Any]) -> str:
    return _dt.date.today().isoformat()


def _yesterday_date(args: list[Any]) -> str:
    return (_dt.date.today() - _dt.timedelta(days=1)).isoformat()


_TS_TYPES = {
    "string": "string",
    "number": "number",
    "integer": "number",
    "boolean": "boolean",
    "array": "any[]",
    "object": "Record<string, any>",
    "null": "null",
}


def _ts_type(value: Any) -> str:
    if not isinstance(value, Mapping):
        return "any"
    any_of = value.get("AnyOf") or value.get("anyOf") or []
    if any_of:
        return " | ".join(_ts_type(option) for option in any_of)
    types = value.get("Type", value.get("type"))
    if isinstance(types, str):
        types = [types]
    if not types:
        return "any"
    return " | ".join(_TS_TYPES.get(t, "any") for t in types)


def _to_typescript_type(args: list[Any]) -> str:
    return _ts_type(args[0])


# --- printf


@dataclass
class _Spec:
    flags: str
    width: int | None
    prec: int | None
    verb: str


def _read_int(fmt: str, i: int) -> tuple[int | None, int]:
    j = i
    while j < len(fmt) and fmt[j].isdigit():
        j += 1
    return (int(fmt[i:j]) if j > i else None), j


def _parse_spec(fmt: str, start: int) -> tuple[_Spec, int]:
    flags_end = start
    while flags_end < len(fmt) and fmt[flags_end] in "+-# 0":
        flags_end += 1
    width, i = _read_int(fmt, flags_end)
    prec = None
    if fmt.startswith(".", i):
        prec, i = _read_int(fmt, i + 1)
        prec = prec or 0
    verb = fmt[i] if i < len(fmt) else ""
    return _Spec(fmt[start:flags_end], width, prec, verb), i + 1


def _bad_verb(spec: _Spec, arg: Any) -> str:
    return f"%!{spec.verb}({_go_type(arg)}={format_value(arg)})"


def _fmt_value(spec: _Spec, arg: Any) -> str:
    text = format_value(arg)
    return text[: spec.prec] if spec.verb == "s" and spec.prec is not None else text


def _fmt_int(spec: _Spec, arg: Any) -> str:
    if isinstance(arg, bool) or not isinstance(arg, int):
        return _bad_verb(spec, arg)
    bases = {"d": "d", "x": "x", "X": "X", "o": "o", "b": "b"}
    return format(arg, ("+" if "+" in spec.flags else "") + bases[spec.verb])


def _fmt_float(spec: _Spec, arg: Any) -> str:
    if isinstance(arg, bool) or not isinstance(arg, (int, float)):
        return _bad_verb(spec, arg)
    sign = "+" if "+" in spec.flags else ""
    if spec.verb in "gG" and spec.prec is None:
        text = _float_text(float(arg), json_style=False)
        return (sign if arg >= 0 else "") + text
    prec = 6 if spec.prec is None else spec.prec
    return format(float(arg), f"{sign}.{prec}{spec.verb}")


def _go_quote(text: str) -> str:
    named = {"\a": "\\a", "\b": "\\b", "\f": "\\f", "\n": "\\n", "\r": "\\r", "\t": "\\t", "\v": "\\v"}
    named.update({"\\": "\\\\", '"': '\\"'})
    out = ['"']
    for ch in text:
        if ch in named:
            out.append(named[ch])
        elif ch.isprintable():
            out.append(ch)
        elif ord(ch) < 0x80:
            out.append(f"\\x{ord(ch):02x}")
        else:
            out.append(f"\\u{ord(ch):04x}" if ord(ch) < 0x10000 else f"\\U{ord(ch):08x}")
    return "".join(out) + '"'


def _fmt_quote(spec: _Spec, arg: Any) -> str:
    if isinstance(arg, str):
        return _go_quote(arg)
    if isinstance(arg, int) and not isinstance(arg, bool):
        return "'" + _go_quote(chr(arg))[1:-1].replace('\\"', '"') + "'"
    return _bad_verb(spec, arg)


def _fmt_hex(spec: _Spec, arg: Any) -> str:
    if isinstance(arg, str):
        return arg.encode().hex() if spec.verb == "x" else arg.encode().hex().upper()
    return _fmt_int(spec, arg)


def _fmt_misc(spec: _Spec, arg: Any) -> str:
    if spec.verb == "t" and isinstance(arg, bool):
        return "true" if arg else "false"
    if spec.verb == "c" and isinstance(arg, int) and not isinstance(arg, bool):
        return chr(arg)
    if spec.verb == "T":
        return _go_type(arg)
    return _bad_verb(spec, arg)


_VERBS: dict[str, Callable[[_Spec, Any], str]] = {
    "v": _fmt_value,
    "s": _fmt_value,
    "d": _fmt_int,
    "o": _fmt_int,
    "b": _fmt_int,
    "x": _fmt_hex,
    "X": _fmt_hex,
    "q": _fmt_quote,
    "t": _fmt_misc,
    "c": _fmt_misc,
    "T": _fmt_misc,
}
_VERBS.update(dict.fromkeys("eEfFgG", _fmt_float))


def _pad(text: str, spec: _Spec) -> str:
    if spec.width is None or len(text) >= spec.width:
        return text
    if "-" in spec.flags:
        return text.ljust(spec.width)
    if "0" in spec.flags and spec.verb in "dxXobeEfFgG" and text[:1] in "+-":
        return text[0] + text[1:].rjust(spec.width - 1, "0")
    if "0" in spec.flags and spec.verb in "dxXobeEfFgG":
        return text.rjust(spec.width, "0")
    return text.rjust(spec.width)


def _sprintf(fmt: str, args: list[Any]) -> str:
    """Go's ``fmt.Sprintf`` for the common verbs (``%v %s %d %q %f %e %g %x %t %c %T %%``)."""
    out: list[str] = []
    i = used = 0
    while i < len(fmt):
        j = fmt.find("%", i)
        if j < 0:
            out.append(fmt[i:])
            break
        out.append(fmt[i:j])
        spec, i = _parse_spec(fmt, j + 1)
        if spec.verb == "%":
            out.append("%")
        elif not spec.verb:
            out.append("%!(NOVERB)")
        elif used >= len(args):
            out.append(f"%!{spec.verb}(MISSING)")
        else:
            out.append(_pad(_VERBS.get(spec.verb, _bad_verb)(spec, args[used]), spec))
            used += 1
    if used < len(args):
        extra = ", ".join(f"{_go_type(a)}={format_value(a)}" for a in args[used:])
        out.append(f"%!(EXTRA {extra})")
    return "".join(out)


def _printf(args: list[Any]) -> str:
    if not isinstance(args[0], str):
        raise _FuncError(f"wrong type for value; expected string; got {_go_type(args[0])}")
    return _sprintf(args[0], args[1:])


class _Func(NamedTuple):
    fn: Callable[[list[Any]], Any]
    min_args: int
    max_args: int | None


_FUNCS: dict[str, _Func] = {
    "and": _Func(lambda a: a[-1], 1, None),  # evaluated lazily by the executor
    "or": _Func(lambda a: a[-1], 1, None),
    "not": _Func(_not, 1, 1),
    "len": _Func(_len, 1, 1),
    "index": _Func(_index, 1, None),
    "slice": _Func(_slice, 1, 4),
    "print": _Func(_print, 0, None),
    "println": _Func(_println, 0, None),
    "printf": _Func(_printf, 1, None),
    "eq": _Func(_eq, 1, None),
    "ne": _Func(_ne, 2, 2),
    "lt": _Func(_lt, 2, 2),
    "le": _Func(_le, 2, 2),
    "gt": _Func(_gt, 2, 2),
    "ge": _Func(_ge, 2, 2),
    "json": _Func(_json, 1, 1),
    "currentDate": _Func(_current_date, 0, None),
    "yesterdayDate": _Func(_yesterday_date, 0, None),
    "toTypeScriptType": _Func(_to_typescript_type, 1, 1),
}


def _check_arity(name: str, spec: _Func, count: int) -> None:
    if spec.max_args is not None and spec.min_args == spec.max_args and count != spec.min_args:
        raise _FuncError(f"wrong number of args for {name}: want {spec.min_args} got {count}")
    if count < spec.min_args:
        raise _FuncError(f"wrong number of args for {name}: want at least {spec.min_args} got {count}")
    if spec.max_args is not None and count > spec.max_args:
        raise _FuncError(f"wrong number of args for {name}: want at most {spec.max_args} got {count}")


# ---------------------------------------------------------------------------------------- executor


class _Break(Exception):
    pass


class _Continue(Exception):
    pass


_MAX_DEPTH = 100


def _range_items(value: Any) -> list[tuple[Any, Any]]:
    """(key, element) pairs Go's ``range`` visits: list order, sorted map keys, ``0..n-1`` for an int."""
    if value is None:
        return []
    if isinstance(value, Mapping):
        try:
            keys = sorted(value)
        except TypeError:
            keys = list(value)
        return [(k, value[k]) for k in keys]
    if isinstance(value, (list, tuple)):
        return list(enumerate(value))
    if isinstance(value, int) and not isinstance(value, bool):
        return [(i, i) for i in range(value)]
    raise _FuncError(f"range can't iterate over {format_value(value)}")


class _Exec:
    """Evaluates a parsed template against data, appending output to ``out``."""

    def __init__(self, template: Template, out: list[str], root: Any, depth: int = 0) -> None:
        self.template = template
        self.out = out
        self.vars: list[tuple[str, Any]] = [("$", root)]
        self.line = 0
        self.depth = depth

    def error(self, msg: str) -> TemplateError:
        return TemplateError(f"template: :{self.line}: executing: {msg}")

    # statements
    def walk(self, dot: Any, node: Node) -> None:
        self.line = getattr(node, "line", self.line)
        _WALKERS[type(node)](self, dot, node)

    def walk_list(self, dot: Any, node: ListNode) -> None:
        for child in node.nodes:
            self.walk(dot, child)

    def walk_text(self, dot: Any, node: TextNode) -> None:
        self.out.append(node.text)

    def walk_action(self, dot: Any, node: ActionNode) -> None:
        value = self.eval_pipeline(dot, node.pipe)
        if not node.pipe.decl:
            self.out.append(format_value(value))

    def walk_if_or_with(self, dot: Any, node: BranchNode) -> None:
        mark = len(self.vars)
        try:
            value = self.eval_pipeline(dot, node.pipe)
            if is_true(value):
                self.walk_list(value if isinstance(node, WithNode) else dot, node.body)
            elif node.else_body is not None:
                self.walk_list(dot, node.else_body)
        finally:
            del self.vars[mark:]

    def walk_range(self, dot: Any, node: RangeNode) -> None:
        mark = len(self.vars)
        try:
            value = self.eval_pipeline(dot, node.pipe)
            try:
                items = _range_items(value)
            except _FuncError as exc:
                raise self.error(str(exc)) from None
            if not items and node.else_body is not None:
                self.walk_list(dot, node.else_body)
            for key, elem in items:
                if not self._iteration(node, key, elem):
                    break
        finally:
            del self.vars[mark:]

    def _iteration(self, node: RangeNode, key: Any, elem: Any) -> bool:
        """Run one pass of a range body; False when it hit ``{{break}}``."""
        decl = node.pipe.decl
        if decl:
            self.set_var(decl[-1], elem)
        if len(decl) > 1:
            self.set_var(decl[0], key)
        mark = len(self.vars)
        try:
            self.walk_list(elem, node.body)
        except _Continue:
            pass
        except _Break:
            return False
        finally:
            del self.vars[mark:]
        return True

    def walk_break(self, dot: Any, node: BreakNode) -> None:
        raise _Break

    def walk_continue(self, dot: Any, node: ContinueNode) -> None:
        raise _Continue

    def walk_template(self, dot: Any, node: TemplateNode) -> None:
        body = self.template.defines.get(node.name)
        if body is None:
            raise self.error(f'no such template "{node.name}"')
        if self.depth >= _MAX_DEPTH:
            raise self.error(f"exceeded maximum template depth ({_MAX_DEPTH})")
        value = self.eval_pipeline(dot, node.pipe) if node.pipe is not None else None
        _Exec(self.template, self.out, value, self.depth + 1).walk_list(value, body)

    # variables
    def lookup(self, name: str) -> Any:
        for var, value in reversed(self.vars):
            if var == name:
                return value
        raise self.error(f"undefined variable: {name}")

    def set_var(self, name: str, value: Any) -> None:
        for i in range(len(self.vars) - 1, -1, -1):
            if self.vars[i][0] == name:
                self.vars[i] = (name, value)
                return
        raise self.error(f"undefined variable: {name}")

    # expressions
    def eval_pipeline(self, dot: Any, pipe: PipeNode) -> Any:
        value: Any = _MISSING
        for cmd in pipe.cmds:
            value = self.eval_command(dot, cmd, value)
        for name in pipe.decl:
            if pipe.is_assign:
                self.set_var(name, value)
            else:
                self.vars.append((name, value))
        return value

    def eval_command(self, dot: Any, cmd: CommandNode, final: Any) -> Any:
        first = cmd.args[0]
        if isinstance(first, FieldNode):
            return self.eval_fields(dot, first.ident, cmd.args, final)
        if isinstance(first, ChainNode):
            return self.eval_fields(self.eval_arg(dot, first.node), first.fields, cmd.args, final)
        if isinstance(first, IdentifierNode):
            return self.call(dot, first.name, cmd.args[1:], final)
        if isinstance(first, VariableNode):
            return self.eval_variable(first, cmd.args, final)
        if len(cmd.args) > 1 or final is not _MISSING:
            raise self.error(f"can't give argument to non-function {_node_text(first)}")
        if isinstance(first, NilNode):
            raise self.error("nil is not a command")
        return self.eval_arg(dot, first)

    def eval_arg(self, dot: Any, node: Node) -> Any:
        if isinstance(node, DotNode):
            return dot
        if isinstance(node, (BoolNode, NumberNode, StringNode)):
            return node.value
        if isinstance(node, FieldNode):
            return self.eval_fields(dot, node.ident, [node], _MISSING)
        if isinstance(node, VariableNode):
            return self.eval_variable(node, [node], _MISSING)
        if isinstance(node, ChainNode):
            return self.eval_fields(self.eval_arg(dot, node.node), node.fields, [node], _MISSING)
        if isinstance(node, PipeNode):
            return self.eval_pipeline(dot, node)
        if isinstance(node, IdentifierNode):
            return self.call(dot, node.name, [], _MISSING)
        return None  # NilNode

    def eval_variable(self, node: VariableNode, args: list[Node], final: Any) -> Any:
        value = self.lookup(node.ident[0])
        if len(node.ident) == 1:
            if len(args) > 1 or final is not _MISSING:
                raise self.error(f"can't give argument to non-function {node.ident[0]}")
            return value
        return self.eval_fields(value, node.ident[1:], args, final)

    def eval_fields(self, receiver: Any, names: Sequence[str], args: list[Node], final: Any) -> Any:
        if len(args) > 1 or final is not _MISSING:
            raise self.error(f"{names[-1]} is not a method but has arguments")
        for name in names:
            receiver = self.field(receiver, name)
        return receiver

    def field(self, receiver: Any, name: str) -> Any:
        if receiver is None or receiver is _MISSING:
            return None
        if isinstance(receiver, Mapping):
            return receiver.get(name)
        if not isinstance(receiver, (str, int, float, bytes, list, tuple)) and hasattr(receiver, name):
            return getattr(receiver, name)
        raise self.error(f"can't evaluate field {name} in type {_go_type(receiver)}")

    def call(self, dot: Any, name: str, arg_nodes: list[Node], final: Any) -> Any:
        spec = _FUNCS[name]
        try:
            if name in ("and", "or"):
                return self._logic(dot, name, arg_nodes, final)
            args = [self.eval_arg(dot, node) for node in arg_nodes]
            if final is not _MISSING:
                args.append(final)
            _check_arity(name, spec, len(args))
            return spec.fn(args)
        except _FuncError as exc:
            raise self.error(f"error calling {name}: {exc}") from None

    def _logic(self, dot: Any, name: str, arg_nodes: list[Node], final: Any) -> Any:
        """``and``/``or`` with Go's short-circuit: stop at the first false (and) / true (or) argument."""
        _check_arity(name, _FUNCS[name], len(arg_nodes) + (final is not _MISSING))
        value: Any = None
        for node in arg_nodes:
            value = self.eval_arg(dot, node)
            if is_true(value) == (name == "or"):
                return value
        return final if final is not _MISSING else value


_WALKERS: dict[type, Callable[[_Exec, Any, Any], None]] = {
    ListNode: _Exec.walk_list,
    TextNode: _Exec.walk_text,
    ActionNode: _Exec.walk_action,
    IfNode: _Exec.walk_if_or_with,
    WithNode: _Exec.walk_if_or_with,
    RangeNode: _Exec.walk_range,
    BreakNode: _Exec.walk_break,
    ContinueNode: _Exec.walk_continue,
    TemplateNode: _Exec.walk_template,
}


def _node_text(node: Node) -> str:
    if isinstance(node, StringNode):
        return json.dumps(node.value)
    if isinstance(node, (BoolNode, NumberNode)):
        return format_value(node.value)
    if isinstance(node, DotNode):
        return "."
    return type(node).__name__


# ----------------------------------------------------------------------------------------- truncation


class _Truncator:
    """Ollama's ``deleteNode``: drop every node after the first ``.Response`` field (which is kept).

    Like Ollama, a control structure's condition is not searched, a pipeline that loses a whole command is
    dropped, and a branch emptied after the cut renders nothing.
    """

    def __init__(self) -> None:
        self.cut = False

    def _delete(self, node: Node) -> bool:
        if isinstance(node, FieldNode) and "Response" in node.ident:
            self.cut = True
            return False
        return self.cut

    def visit(self, node: Node) -> Node | None:
        if self._delete(node):
            return None
        if isinstance(node, ListNode):
            kept = [self.visit(child) for child in node.nodes]
            return ListNode([child for child in kept if child is not None])
        if isinstance(node, BranchNode):
            return self._branch(node)
        if isinstance(node, ActionNode):
            pipe = self.visit(node.pipe)
            return replace(node, pipe=pipe) if isinstance(pipe, PipeNode) else None
        if isinstance(node, PipeNode):
            return self._pipe(node)
        return node

    def _list(self, node: ListNode) -> ListNode:
        kept = self.visit(node)
        return kept if isinstance(kept, ListNode) else ListNode()

    def _branch(self, node: BranchNode) -> Node:
        body = self._list(node.body)
        else_body = self._list(node.else_body) if node.else_body is not None else None
        return replace(node, body=body, else_body=else_body)

    def _pipe(self, node: PipeNode) -> Node | None:
        cmds: list[CommandNode] = []
        for cmd in node.cmds:
            visited = [self.visit(arg) for arg in cmd.args]
            args = [arg for arg in visited if arg is not None]
            if not args:
                return None
            cmds.append(CommandNode(args))
        return replace(node, cmds=cmds) if cmds else None


# ------------------------------------------------------------------------------------------ template


@dataclass(frozen=True)
class Template:
    """A parsed template: the root node list and the ``define``/``block`` bodies by name."""

    root: ListNode
    defines: Mapping[str, ListNode] = field(default_factory=dict)

    def render(self, data: Any) -> str:
        """Execute with ``data`` as both dot and ``$``; raises :class:`TemplateError`."""
        out: list[str] = []
        try:
            _Exec(self, out, data).walk_list(data, self.root)
        except RecursionError:
            raise TemplateError("template: executing: nesting too deep") from None
        return "".join(out)

    def nodes(self) -> Iterator[Node]:
        """Every node of the root and of the defined templates, in pre-order."""
        for body in (self.root, *self.defines.values()):
            for node, _ in walk(body):
                yield node

    def identifiers(self) -> set[str]:
        """Lower-cased field names referenced anywhere (``.A.B``, ``$x.A``, ``(p).A``)."""
        names: set[str] = set()
        for node in self.nodes():
            if isinstance(node, FieldNode):
                names.update(node.ident)
            elif isinstance(node, VariableNode):
                names.update(node.ident[1:])
            elif isinstance(node, ChainNode):
                names.update(node.fields)
        return {name.lower() for name in names}

    def truncate_at_response(self) -> Template:
        """A copy ending at the first ``.Response`` reference (Ollama's legacy last-turn template)."""
        root = _Truncator().visit(self.root)
        return Template(root if isinstance(root, ListNode) else ListNode(), self.defines)

    def extend(self, other: Template) -> Template:
        """A template whose root runs this root then ``other``'s (definitions merged)."""
        return Template(ListNode([*self.root.nodes, *other.root.nodes]), {**self.defines, **other.defines})


def parse(text: str) -> Template:
    """Parse Go template source; raises :class:`TemplateError` on malformed input."""
    parser = _Parser(tokenize(text), _FUNCS)
    root = parser.parse()
    return Template(root, dict(parser.defines))
