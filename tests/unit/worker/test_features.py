"""Engine helpers shared by the engines: logprobs from a logits row, prompt fitting, prompts with tools and
thinking; and the gateway's vector normalisation."""

from __future__ import annotations

import ctypes
import math

import numpy as np
import pytest

from caravan.errors import BadRequest, CaravanError
from caravan.queue import InferenceJob, LoadSpec
from gateway.embedding import normalize, shaped_vector
from tests.integration.modelkit import THINK_TEMPLATE, TOOLS_TEMPLATE
from worker.engine.logprobs import log_softmax, token_logprobs
from worker.prompting import PROMPT_TOO_LONG, TokenizerInfo, build_prompt, fit_context


def job(**fields: object) -> InferenceJob:
    return InferenceJob(id="r", op="chat", model="m", spec=LoadSpec(model="m", blob="b"), **fields)  # type: ignore[arg-type]


def test_token_logprobs_from_one_row() -> None:
    logits = (ctypes.c_float * 4)(1.0, 3.0, 2.0, 0.0)
    pieces = {0: b"a", 1: b"b", 2: b"c", 3: b"\xc3"}
    entry = token_logprobs(logits, 4, 2, 2, pieces.__getitem__)
    total = math.log(sum(math.exp(x) for x in (1.0, 3.0, 2.0, 0.0)))
    assert entry["token"] == "c" and entry["bytes"] == [99] and abs(entry["logprob"] - (2.0 - total)) < 1e-9
    assert [t["token"] for t in entry["top_logprobs"]] == ["b", "c"]
    assert "top_logprobs" not in token_logprobs(logits, 4, 3, 0, pieces.__getitem__)
    assert token_logprobs(logits, 4, 3, 0, pieces.__getitem__)["token"] == "\ufffd"
    assert abs(sum(math.exp(x) for x in log_softmax(np.array([5.0, 5.0, 1e4]))) - 1) < 1e-12


def test_fit_context() -> None:
    tokens = list(range(20))
    assert fit_context(tokens, 32, job()) == tokens
    assert fit_context(tokens, 11, job(options={"num_keep": 2})) == [0, 1, *range(12, 20)]
    with pytest.raises(BadRequest) as info:
        fit_context(tokens, 11, job(truncate=False))
    assert info.value.message == PROMPT_TOO_LONG


def test_tool_results_and_definitions_reach_the_prompt() -> None:
    messages = [{"role": "user", "content": "Weather?"},
                {"role": "assistant", "content": "", "tool_calls": [
                    {"function": {"name": "get_weather", "arguments": {"city": "Paris"}}}]},
                {"role": "tool", "tool_name": "get_weather", "content": "18 C"}]
    tools = [{"type": "function", "function": {"name": "get_weather", "description": "Current weather"}}]
    prompt = build_prompt(job(messages=messages, tools=tools, template=TOOLS_TEMPLATE), TokenizerInfo(None))
    assert "- get_weather: Current weather" in prompt
    assert '{"name": "get_weather", "arguments": {"city":"Paris"}}' in prompt
    assert "Result of get_weather: 18 C" in prompt and prompt.endswith("<|im_start|>assistant\n")


def test_think_reaches_the_template() -> None:
    messages = [{"role": "user", "content": "Is 7 prime?"}]
    on = build_prompt(job(messages=messages, template=THINK_TEMPLATE, think=True), TokenizerInfo(None))
    off = build_prompt(job(messages=messages, template=THINK_TEMPLATE, think=False), TokenizerInfo(None))
    assert on.endswith("<think>\n") and not off.rstrip().endswith("<think>")


def test_vector_normalisation() -> None:
    assert normalize([3.0, 4.0]) == [0.6, 0.8] and normalize([0.0, 0.0]) == [0.0, 0.0]
    cut = shaped_vector([3.0, 4.0, 12.0], 2)
    assert cut == pytest.approx([0.6, 0.8])
    assert shaped_vector([1.0, 0.0], 5) == [1.0, 0.0]
    with pytest.raises(CaravanError, match="NaN or Inf"):
        normalize([float("nan"), 1.0])
