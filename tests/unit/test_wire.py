"""Raw JSON rows pinning each wire quirk."""

from __future__ import annotations

import json
import math

import pytest

from caravan.asgi import parse_body
from caravan.duration import FOREVER, parse_env_keep_alive, parse_keep_alive
from caravan.errors import BadRequest, InvalidOption
from caravan.options import merge_options, validate_options
from caravan.queue import LOAD_OVERHEAD, InferenceJob, LoadSpec, decode_keep_alive, encode_keep_alive
from caravan.settings import GatewaySettings, parse_flash_attention, parse_kv_cache_type
from caravan.wire.ollama import ChatRequest, ChatResponse, GenerateRequest, GenerateResponse, dump


@pytest.mark.parametrize(
    ("raw", "seconds"),
    [
        ("null", 300.0), ("0", 0.0), ("10", 10.0), ("1.5", 1.5), ("-1", FOREVER), ('"5m"', 300.0),
        ('"1h30m"', 5400.0), ('"0"', 0.0), ('"-1m"', FOREVER), ('"300ms"', 0.3), ('"1.5h"', 5400.0),
        ('"2h45m10s"', 9910.0),
    ],
)
def test_keep_alive_forms(raw: str, seconds: float) -> None:
    assert parse_keep_alive(json.loads(raw), 300.0) == pytest.approx(seconds)


@pytest.mark.parametrize(
    ("raw", "message"),
    [('"-1"', 'time: missing unit in duration "-1"'), ('"300"', "missing unit"), ('"5d"', "invalid duration"),
     ("true", "Unsupported type: 'bool'"), ("[1]", "Unsupported type: 'list'"), ('""', "invalid duration")],
)
def test_keep_alive_errors(raw: str, message: str) -> None:
    with pytest.raises(BadRequest, match=message.replace("(", r"\(")):
        parse_keep_alive(json.loads(raw), 300.0)


def test_env_keep_alive_accepts_seconds_and_durations() -> None:
    assert parse_env_keep_alive("600") == 600
    assert parse_env_keep_alive("10m") == 600
    assert math.isinf(parse_env_keep_alive("-1"))


def test_keep_alive_crosses_json_as_minus_one() -> None:
    assert encode_keep_alive(math.inf) == -1.0 and math.isinf(decode_keep_alive(-1.0))


def test_generate_request_lenient_in() -> None:
    body = parse_body(b'{"model":"m","prompt":"p","unknown":1,"stream":false,"keep_alive":"5m"}', GenerateRequest)
    assert body.model == "m" and body.stream is False and body.keep_alive == "5m"


def test_null_body_is_empty_request() -> None:
    assert parse_body(b"null", GenerateRequest).model == ""


@pytest.mark.parametrize("raw", [b"", b"   ", b"{", b"[]", b'"s"'])
def test_bad_bodies(raw: bytes) -> None:
    with pytest.raises(BadRequest):
        parse_body(raw, GenerateRequest)


def test_chat_roles_lowercased_and_null_content() -> None:
    body = parse_body(b'{"model":"m","messages":[{"role":"USER","content":null}]}', ChatRequest)
    assert body.messages[0].role == "user" and body.messages[0].content == ""


def test_keep_alive_wrong_type_is_400() -> None:
    with pytest.raises(BadRequest, match="Unsupported type"):
        parse_body(b'{"model":"m","keep_alive":{"a":1}}', GenerateRequest)


def test_top_logprobs_range() -> None:
    with pytest.raises(BadRequest, match="top_logprobs must be between 0 and 20"):
        parse_body(b'{"model":"m","top_logprobs":21}', GenerateRequest)


def test_responses_omit_empty_fields() -> None:
    chunk = dump(GenerateResponse(model="m", response="Hi"))
    assert set(chunk) == {"model", "created_at", "response", "done"}
    assert chunk["created_at"].endswith("Z")
    chat = dump(ChatResponse(model="m"))
    assert chat["message"] == {"role": "assistant", "content": ""}


def test_options_types_and_unknown_keys() -> None:
    clean = validate_options({"num_predict": 5.9, "temperature": 1, "stop": ["a"], "bogus": 1, "mirostat": 2,
                              "seed": None})
    assert clean == {"num_predict": 5, "temperature": 1.0, "stop": ["a"]}


@pytest.mark.parametrize(
    ("options", "message"),
    [({"stop": "x"}, 'option "stop" must be of type array'), ({"stop": [1]}, "array of strings"),
     ({"top_k": "a"}, 'option "top_k" must be of type integer'), ({"use_mmap": 1}, "boolean"),
     ({"top_k": True}, "integer")],
)
def test_option_type_errors(options: dict[str, object], message: str) -> None:
    with pytest.raises(InvalidOption, match=message):
        validate_options(options)


def test_option_precedence() -> None:
    merged = merge_options({"temperature": 0.2, "stop": ["x"]}, {"temperature": 0.9})
    assert merged["temperature"] == 0.9 and merged["stop"] == ["x"] and merged["top_k"] == 40


def test_spec_key_depends_on_load_options_only() -> None:
    a = LoadSpec(model="a", blob="sha256:" + "1" * 64, num_ctx=2048)
    b = LoadSpec(model="b", blob="sha256:" + "1" * 64, num_ctx=2048)
    c = LoadSpec(model="a", blob="sha256:" + "1" * 64, num_ctx=4096)
    assert a.key == b.key != c.key
    assert a.model_copy(update={"num_ctx": 4096}).key == c.key, "memoised by value, never by object"
    assert LoadSpec(model="a", blob="sha256:" + "1" * 64, num_ctx=2048, size=9, kv_bytes_per_token=5).key == a.key
    # the id names Redis queues: it stays what it was before memoising (sha256 of the sorted load options)
    assert a.key == "58b0cbbd9c6ed030", a.key
    assert a.model_copy(update={"flash_attention": "auto", "kv_cache_type": "f16"}).key == a.key, "later defaults"
    assert len({a.key, a.model_copy(update={"flash_attention": "off"}).key,
                a.model_copy(update={"kv_cache_type": "q8_0"}).key}) == 3


@pytest.mark.parametrize(
    ("flash", "kv", "effective", "kv_bytes"),
    [("auto", "f16", "f16", 1024 * 64), ("auto", "q8_0", "q8_0", 1024 * 34), ("on", "q4_0", "q4_0", 1024 * 18),
     ("off", "q8_0", "f16", 1024 * 64)],
)
def test_kv_cache_type_sizes_the_estimate(flash: str, kv: str, effective: str, kv_bytes: int) -> None:
    """A quantized KV cache needs flash attention (else f16, as in Ollama); the memory estimate follows it."""
    spec = LoadSpec(model="m", blob="b", size=1000, num_ctx=512, parallel=2, kv_bytes_per_token=1024,
                    flash_attention=flash, kv_cache_type=kv)
    assert spec.kv_type == effective
    assert spec.estimate() == 1000 + kv_bytes * 512 * 2 // 64 + LOAD_OVERHEAD


@pytest.mark.parametrize(
    ("raw", "mode"),
    [("", "auto"), ("auto", "auto"), (" AUTO ", "auto"), ("1", "on"), ("true", "on"), ('"True"', "on"),
     ("yes", "on"), ("0", "off"), ("false", "off"), ("F", "off"), ("'FALSE'", "off")],
)
def test_ollama_flash_attention_values(raw: str, mode: str) -> None:
    """Go's ParseBool, trimmed of spaces and quotes; what it cannot parse is true; empty is Ollama's auto."""
    assert parse_flash_attention(raw) == mode


@pytest.mark.parametrize(("raw", "kv"), [("", "f16"), ("q8_0", "q8_0"), (" Q4_0 ", "q4_0"), ("q8", "f16"),
                                         ("bf16", "f16")])
def test_ollama_kv_cache_type_values(raw: str, kv: str) -> None:
    assert parse_kv_cache_type(raw) == kv


def test_gateway_reads_ollamas_variables(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OLLAMA_FLASH_ATTENTION", "0")
    monkeypatch.setenv("OLLAMA_KV_CACHE_TYPE", "q4_0")
    settings = GatewaySettings()
    assert (settings.flash_attention, settings.kv_cache_type) == ("off", "q4_0")
    assert settings.warnings() == ["OLLAMA_KV_CACHE_TYPE=q4_0 needs flash attention, which is off: KV caches stay f16"]
    assert GatewaySettings(flash_attention="auto").warnings() == []


def test_job_round_trip() -> None:
    job = InferenceJob(id="r1", op="chat", model="m", spec=LoadSpec(model="m", blob="b"), messages=[{"role": "user"}])
    assert InferenceJob.decode({b"job": job.encode()["job"].encode()}) == job
