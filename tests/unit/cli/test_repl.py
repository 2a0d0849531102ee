"""The REPL's line handling against a fake gateway: turns, multi-line blocks, /set, /clear, /save, /load."""

from __future__ import annotations

import io
import json
from typing import Any

import httpx
import pytest

from caravan.cli.client import Client
from caravan.cli.repl import Repl, parse_parameter
from caravan.cli.session import Display, Session

ANSWER = [{"message": {"role": "assistant", "content": "Hel"}, "done": False},
          {"message": {"role": "assistant", "content": "lo"}, "done": True, "eval_count": 2}]


class FakeGateway:
    """Records request bodies; answers chat with ANSWER, everything else with ``{}``."""

    def __init__(self) -> None:
        self.bodies: list[tuple[str, dict[str, Any]]] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        body = json.loads(request.content or b"{}")
        self.bodies.append((request.url.path, json.loads(json.dumps(body))))
        if request.url.path == "/api/chat":
            return httpx.Response(200, text="".join(json.dumps(c) + "\n" for c in ANSWER))
        if body.get("model") == "missing":
            return httpx.Response(404, json={"error": "model 'missing:latest' not found"})
        return httpx.Response(200, json={})


@pytest.fixture
def gateway() -> FakeGateway:
    return FakeGateway()


@pytest.fixture
def repl(gateway: FakeGateway) -> Repl:
    client = Client("http://gw:1", transport=httpx.MockTransport(gateway))
    return Repl(Session(client, "smollm2:135m"))


def test_parse_parameter_types_like_a_modelfile() -> None:
    assert parse_parameter("num_predict", ["5"]) == 5
    assert parse_parameter("temperature", ["0.5"]) == 0.5
    assert parse_parameter("stop", ["<|a|>", "<|b|>"]) == ["<|a|>", "<|b|>"]
    with pytest.raises(ValueError, match=r"invalid int value \[x\]"):
        parse_parameter("seed", ["x"])
    with pytest.raises(ValueError, match="unknown parameter 'nope'"):
        parse_parameter("nope", ["1"])


def test_a_turn_keeps_history_and_sends_options(repl: Repl, gateway: FakeGateway,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    repl.handle("/set parameter num_predict 5")
    repl.handle("hi")
    repl.handle("again")
    path, body = gateway.bodies[-1]
    assert path == "/api/chat" and body["options"] == {"num_predict": 5}
    assert [m["content"] for m in body["messages"]] == ["hi", "Hello", "again"]
    assert "Hello" in capsys.readouterr().out


def test_multi_line_block(repl: Repl, gateway: FakeGateway) -> None:
    repl.handle('"""first')
    assert repl.pending == "prompt" and not gateway.bodies
    repl.handle("second")
    repl.handle('third"""')
    assert gateway.bodies[-1][1]["messages"][0]["content"] == "first\nsecond\nthird"
    repl.handle('"""one line"""')
    assert gateway.bodies[-1][1]["messages"][-1]["content"] == "one line"


def test_system_clear_and_save(repl: Repl, gateway: FakeGateway) -> None:
    repl.handle("/set system You are terse.")
    repl.handle("hi")
    repl.handle("/save my-copy")
    path, body = gateway.bodies[-1]
    assert path == "/api/create"
    assert body["from"] == "smollm2:135m" and body["system"] == "You are terse."
    assert body["messages"] == [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "Hello"}]
    repl.handle("/clear")
    assert repl.session.messages == [{"role": "system", "content": "You are terse."}]


def test_set_modes(repl: Repl, capsys: pytest.CaptureFixture[str]) -> None:
    for line in ("/set verbose", "/set format json", "/set nothink", "/set nowordwrap", "/set bogus"):
        repl.handle(line)
    session = repl.session
    assert session.verbose and session.format == "json" and session.think is False and not session.wordwrap
    assert "Unknown command '/set bogus'" in capsys.readouterr().out
    repl.handle("/set noformat")
    assert session.format == ""


def test_load_unknown_model_keeps_the_current_one(repl: Repl, capsys: pytest.CaptureFixture[str]) -> None:
    repl.handle("/load missing")
    assert repl.session.model == "smollm2:135m"
    assert "Couldn't find model 'missing'" in capsys.readouterr().out


def test_bye_and_unknown_commands(repl: Repl, capsys: pytest.CaptureFixture[str]) -> None:
    repl.handle("/nope")
    assert "Unknown command '/nope'. Type /? for help" in capsys.readouterr().out
    repl.handle("/bye")
    assert repl.done


def test_display_wraps_words_at_the_edge() -> None:
    out = io.StringIO()
    display = Display(width=20, out=out)
    display.write("aaaa bbbb cccc dddd eeee")
    assert "\n" in out.getvalue() and display.column < 15


def test_display_sets_thinking_apart_or_hides_it() -> None:
    out = io.StringIO()
    display = Display(out=out)
    display.think("hmm", hidden=False)
    display.answer("Yes.")
    assert out.getvalue() == "Thinking...\nhmm\n...done thinking.\n\nYes." and display.answered == ["Yes."]
    hidden = io.StringIO()
    quiet = Display(out=hidden)
    quiet.think("hmm", hidden=True)
    quiet.answer("Yes.")
    assert hidden.getvalue() == "Yes."
