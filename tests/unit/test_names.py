from __future__ import annotations

import pytest

from caravan.errors import InvalidName
from caravan.names import ModelName, parse_digest


@pytest.mark.parametrize(
    ("raw", "full", "display"),
    [
        ("llama3.2", "registry.ollama.ai/library/llama3.2:latest", "llama3.2:latest"),
        ("smollm2:135m", "registry.ollama.ai/library/smollm2:135m", "smollm2:135m"),
        ("mattw/pyg:7b", "registry.ollama.ai/mattw/pyg:7b", "mattw/pyg:7b"),
        ("localhost:5000/team/model:v1", "localhost:5000/team/model:v1", "localhost:5000/team/model:v1"),
        ("hf.co/bartowski/Llama-3.2-1B-Instruct-GGUF:Q4_K_M",
         "hf.co/bartowski/Llama-3.2-1B-Instruct-GGUF:Q4_K_M", "hf.co/bartowski/Llama-3.2-1B-Instruct-GGUF:Q4_K_M"),
        ("http://127.0.0.1:5000/library/x", "127.0.0.1:5000/library/x:latest", "127.0.0.1:5000/library/x:latest"),
    ],
)
def test_parse_and_display(raw: str, full: str, display: str) -> None:
    name = ModelName.parse(raw)
    assert name.full == full and name.display == display


@pytest.mark.parametrize(
    "raw", ["../x", "a/../../b", "/abs", "a//b", "", ":tag", "x:", "ns.dot/model", "a/b/c/d", "ftp://h/x", "..", "m:..",
            "x" * 81, "bad name"]
)
def test_invalid_names_rejected(raw: str) -> None:
    with pytest.raises(InvalidName):
        ModelName.parse(raw)


def test_scheme_recorded() -> None:
    assert ModelName.parse("http://host:1/ns/m:t").scheme == "http"
    assert ModelName.parse("m").scheme == "https"


def test_key_is_case_insensitive() -> None:
    assert ModelName.parse("Llama3:Latest").key() == ModelName.parse("llama3").key()


@pytest.mark.parametrize("raw", ["sha256:" + "a" * 64, "sha256-" + "A" * 64])
def test_digest_canonical(raw: str) -> None:
    assert parse_digest(raw) == "sha256:" + "a" * 64


@pytest.mark.parametrize("raw", ["sha256:abc", "md5:" + "a" * 64, "sha256:" + "g" * 64, "../sha256:" + "a" * 64])
def test_bad_digest(raw: str) -> None:
    with pytest.raises(InvalidName, match="invalid digest format"):
        parse_digest(raw)
