"""Thinking extraction: tags, partial tags across deltas, prompts that open the block, template probing."""

from __future__ import annotations

import pytest

from caravan.thinking import ThinkingParser, thinking_setup
from tests.integration.modelkit import THINK_TEMPLATE


def split(chunks: list[str], inside: bool = False, tags: tuple[str, str] = ("<think>", "</think>")) -> tuple[str, str]:
    parser = ThinkingParser(*tags, inside=inside)
    thinking = content = ""
    for chunk in chunks:
        more_thinking, more_content = parser.add(chunk)
        thinking, content = thinking + more_thinking, content + more_content
    rest_thinking, rest_content = parser.flush()
    return thinking + rest_thinking, content + rest_content


OUTPUT = "  <think>Seven has no divisors.</think>\n\nYes, 7 is prime."


@pytest.mark.parametrize("size", [1, 2, 5, 100])
def test_thinking_then_content_in_any_split(size: int) -> None:
    chunks = [OUTPUT[i:i + size] for i in range(0, len(OUTPUT), size)]
    assert split(chunks) == ("Seven has no divisors.", "Yes, 7 is prime.")


def test_prompt_that_opened_the_block() -> None:
    assert split(["\nThe plan", " is </th", "ink>  Answer"], inside=True) == ("The plan is ", "Answer")
    assert split(["never closed"], inside=True) == ("never closed", "")


def test_no_thinking_when_output_does_not_start_with_the_tag() -> None:
    assert split(["Hello <think>x</think>"]) == ("", "Hello <think>x</think>")
    assert split(["<th"]) == ("", "<th")


def test_custom_tags() -> None:
    assert split(["[R]why[/R]so"], tags=("[R]", "[/R]")) == ("why", "so")


def test_setup_from_template() -> None:
    assert thinking_setup(THINK_TEMPLATE, True) == ("<think>", "</think>", True)
    assert thinking_setup(THINK_TEMPLATE, "high") == ("<think>", "</think>", True)
    assert thinking_setup(THINK_TEMPLATE, False) == ("<think>", "</think>", False)
    assert thinking_setup(None, True) == ("<think>", "</think>", False)
