"""Context shift (ollama-api.md §3.2 `shift`): with shift on, generation goes past the context length."""

from __future__ import annotations

import httpx

MODEL = "smollm2:135m"
SMALL = {"temperature": 0, "num_ctx": 64, "num_predict": 120, "num_keep": 4}


def generate(gateway: str, shift: bool | None) -> dict[str, object]:
    body: dict[str, object] = {"model": MODEL, "prompt": "1, 2, 3, 4, 5, 6,", "raw": True, "stream": False,
                               "options": SMALL}
    if shift is not None:
        body["shift"] = shift
    response = httpx.post(gateway + "/api/generate", json=body, timeout=300)
    assert response.status_code == 200, response.text
    result: dict[str, object] = response.json()
    return result


def test_shift_false_stops_at_the_context_length(gateway: str) -> None:
    result = generate(gateway, False)
    assert result["done_reason"] == "length"
    assert isinstance(result["eval_count"], int) and result["eval_count"] < 64


def test_shift_default_generates_past_the_context_length(gateway: str) -> None:
    result = generate(gateway, None)
    assert result["done_reason"] == "length"
    assert result["eval_count"] == 120, "num_predict, not the 64-token context, ended the generation"
    assert isinstance(result["response"], str) and len(result["response"]) > 100
