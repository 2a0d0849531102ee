"""Fast GGUF header reader (metadata and tensor infos only; tensor data is never read).

File layout (integers are little-endian; big-endian files are detected from the version word)::

    offset  0  b"GGUF"                      magic
            4  uint32 version               2 or 3 (v1 used 32-bit counts: unsupported)
            8  uint64 tensor_count
           16  uint64 kv_count
           24  kv_count x {string key; uint32 value_type; value}
               tensor_count x {string name; uint32 n_dims; uint64 dims[n_dims];
                               uint32 ggml_type; uint64 offset (relative to the data section)}
               padding up to general.alignment (default 32)
               tensor data ...                                   (never touched here)

    string = uint64 byte length + UTF-8 bytes (no terminator)
    value  = scalar (uint8 .. float64, bool) | string | array
    array  = uint32 item_type + uint64 count + count items (items may themselves be arrays)

The file is memory-mapped and walked with :mod:`struct`.  Arrays keep only their first few
items: big string arrays such as ``tokenizer.ggml.tokens`` (150k entries) are skipped by
following the length prefixes, so a whole header reads in tens of milliseconds, whereas
``gguf.GGUFReader`` builds one numpy view per element and takes seconds.
"""

from __future__ import annotations

import math
import mmap
import os
import struct
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

__all__ = [
    "FILE_TYPE_NAMES",
    "TENSOR_TYPE_NAMES",
    "ArrayInfo",
    "GGUFError",
    "GGUFInfo",
    "TensorInfo",
    "file_type_name",
    "human_number",
    "read_gguf",
    "tensor_type_name",
]

GGUF_MAGIC = b"GGUF"
SUPPORTED_VERSIONS = (2, 3)
DEFAULT_ALIGNMENT = 32
ARRAY_HEAD_LEN = 5
_MAX_DIMS = 16

# GGUF value types.
TYPE_FLOAT32 = 6
TYPE_STRING = 8
TYPE_ARRAY = 9
_SCALAR_FORMATS: dict[int, str] = {
    0: "B",  # uint8
    1: "b",  # int8
    2: "H",  # uint16
    3: "h",  # int16
    4: "I",  # uint32
    5: "i",  # int32
    6: "f",  # float32
    7: "?",  # bool
    10: "Q",  # uint64
    11: "q",  # int64
    12: "d",  # float64
}

# ggml_type ids (ggml.h); gaps are ids that were removed from ggml.
TENSOR_TYPE_NAMES: dict[int, str] = {
    0: "F32", 1: "F16", 2: "Q4_0", 3: "Q4_1", 6: "Q5_0", 7: "Q5_1", 8: "Q8_0", 9: "Q8_1",
    10: "Q2_K", 11: "Q3_K", 12: "Q4_K", 13: "Q5_K", 14: "Q6_K", 15: "Q8_K",
    16: "IQ2_XXS", 17: "IQ2_XS", 18: "IQ3_XXS", 19: "IQ1_S", 20: "IQ4_NL", 21: "IQ3_S",
    22: "IQ2_S", 23: "IQ4_XS", 24: "I8", 25: "I16", 26: "I32", 27: "I64", 28: "F64",
    29: "IQ1_M", 30: "BF16", 31: "Q4_0_4_4", 32: "Q4_0_4_8", 33: "Q4_0_8_8",
    34: "TQ1_0", 35: "TQ2_0", 36: "IQ4_NL_4_4", 37: "IQ4_NL_4_8", 38: "IQ4_NL_8_8",
    39: "MXFP4", 40: "NVFP4", 41: "Q1_0",
}  # fmt: skip

# llama_ftype ids (llama.h), as stored in general.file_type.
FILE_TYPE_NAMES: dict[int, str] = {
    0: "F32", 1: "F16", 2: "Q4_0", 3: "Q4_1", 7: "Q8_0", 8: "Q5_0", 9: "Q5_1",
    10: "Q2_K", 11: "Q3_K_S", 12: "Q3_K_M", 13: "Q3_K_L", 14: "Q4_K_S", 15: "Q4_K_M",
    16: "Q5_K_S", 17: "Q5_K_M", 18: "Q6_K", 19: "IQ2_XXS", 20: "IQ2_XS", 21: "Q2_K_S",
    22: "IQ3_XS", 23: "IQ3_XXS", 24: "IQ1_S", 25: "IQ4_NL", 26: "IQ3_S", 27: "IQ3_M",
    28: "IQ2_S", 29: "IQ2_M", 30: "IQ4_XS", 31: "IQ1_M", 32: "BF16", 36: "TQ1_0",
    37: "TQ2_0", 38: "MXFP4", 39: "NVFP4", 40: "Q1_0",
}  # fmt: skip

# Keys that Ollama's /api/show leaves out of model_info.
_HIDDEN_MODEL_INFO_KEYS = frozenset({"general.name", "tokenizer.chat_template"})


class GGUFError(ValueError):
    """The file is not a readable GGUF file (bad magic, unsupported version, truncated, corrupt)."""


@dataclass(frozen=True)
class TensorInfo:
    """One tensor-info record; ``shape`` is in file order (ne[0] first), ``offset`` is data-relative."""

    name: str
    type: int
    type_name: str
    shape: tuple[int, ...]
    offset: int

    @property
    def n_elements(self) -> int:
        """Number of elements (product of the dimensions)."""
        return math.prod(self.shape)


@dataclass(frozen=True)
class ArrayInfo:
    """An array value: its item type, its length and its first items.

    ``head`` holds the first ``ARRAY_HEAD_LEN`` (5) items; ``values`` holds every item when the
    array has at most 5 of them and is ``None`` otherwise (the rest was skipped, not read).
    Items of nested arrays are themselves ``ArrayInfo`` objects.
    """

    item_type: int
    length: int
    head: tuple[Any, ...]
    values: tuple[Any, ...] | None = None


@dataclass
class GGUFInfo:
    """Metadata of a GGUF file: key/values (arrays as :class:`ArrayInfo`) and tensor infos."""

    version: int
    kv: dict[str, Any]
    tensors: list[TensorInfo]
    data_offset: int = 0
    byte_order: str = field(default="little")

    @property
    def architecture(self) -> str:
        """``general.architecture`` or ``""``."""
        value = self.kv.get("general.architecture")
        return value if isinstance(value, str) else ""

    @property
    def parameter_count(self) -> int:
        """``general.parameter_count`` when present, else the sum of the tensors' element counts."""
        count = _int_or_none(self.kv.get("general.parameter_count"))
        if count is not None:
            return count
        return sum(t.n_elements for t in self.tensors)

    @property
    def parameter_size(self) -> str:
        """Parameter count in Ollama's HumanNumber form, e.g. ``"134.52M"`` or ``"8B"``."""
        return human_number(self.parameter_count)

    @property
    def file_type(self) -> int | None:
        """``general.file_type`` (a llama_ftype id) or ``None``."""
        return _int_or_none(self.kv.get("general.file_type"))

    @property
    def quantization(self) -> str:
        """Quantization name such as ``"Q4_K_M"``; never raises.

        Taken from ``general.file_type``; when that key is absent, the tensor type holding the
        most elements is used (e.g. ``"Q4_K"``).  Unknown ids give ``"unknown(N)"``.
        """
        if self.file_type is not None:
            return file_type_name(self.file_type)
        return self._dominant_tensor_type()

    def _dominant_tensor_type(self) -> str:
        totals: Counter[str] = Counter()
        for tensor in self.tensors:
            totals[tensor.type_name] += tensor.n_elements
        if not totals:
            return "unknown"
        return totals.most_common(1)[0][0]

    @property
    def context_length(self) -> int | None:
        """``{arch}.context_length`` or ``None``."""
        return self._arch_int("context_length")

    @property
    def embedding_length(self) -> int | None:
        """``{arch}.embedding_length`` or ``None``."""
        return self._arch_int("embedding_length")

    def _arch_int(self, suffix: str) -> int | None:
        return _int_or_none(self.kv.get(f"{self.architecture}.{suffix}"))

    @property
    def chat_template(self) -> str | None:
        """``tokenizer.chat_template`` or ``None``."""
        value = self.kv.get("tokenizer.chat_template")
        return value if isinstance(value, str) else None

    def model_info(self, verbose: bool = False) -> dict[str, Any]:
        """Key/values as Ollama's ``/api/show`` ``model_info``.

        ``general.name`` and ``tokenizer.chat_template`` are left out; arrays with more than 5
        items become ``[]`` unless ``verbose``.  Because long arrays are skipped when the file is
        read, ``verbose`` gives ``None`` for them (their items are not available).
        ``general.parameter_count`` is always set to :attr:`parameter_count`.
        """
        info: dict[str, Any] = {}
        for key, value in self.kv.items():
            if key not in _HIDDEN_MODEL_INFO_KEYS:
                info[key] = _info_value(value, verbose)
        info["general.parameter_count"] = self.parameter_count
        return info

    def tensor_summaries(self) -> list[dict[str, Any]]:
        """Tensors as ``/api/show`` lists them: ``[{"name", "type", "shape"}]``."""
        return [{"name": t.name, "type": t.type_name, "shape": list(t.shape)} for t in self.tensors]


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _int_or_none(value: Any) -> int | None:
    return int(value) if _is_int(value) else None


def _info_value(value: Any, verbose: bool) -> Any:
    """Turn an :class:`ArrayInfo` into a JSON-ready list (or ``[]``/``None``), recursively."""
    if not isinstance(value, ArrayInfo):
        return value
    if value.values is None:
        return None if verbose else []
    return [_info_value(item, verbose) for item in value.values]


def tensor_type_name(type_id: int) -> str:
    """Name of a ggml tensor type id, or ``"unknown(N)"``."""
    return TENSOR_TYPE_NAMES.get(type_id, f"unknown({type_id})")


def file_type_name(file_type: int) -> str:
    """Name of a llama_ftype id (``general.file_type``), or ``"unknown(N)"``."""
    return FILE_TYPE_NAMES.get(file_type, f"unknown({file_type})")


def human_number(n: int) -> str:
    """Ollama's ``format.HumanNumber``: 8000000000 -> "8B", 134515008 -> "134.52M", 7000 -> "7K"."""
    for scale, suffix, decimals in ((1e9, "B", 1), (1e6, "M", 2), (1e3, "K", 0)):
        if n >= scale:
            number = n / scale
            places = 0 if number == math.floor(number) else decimals
            return f"{number:.{places}f}{suffix}"
    return str(n)


def _shortest_float32(value: float) -> float:
    """The shortest decimal that maps back to the same float32 (1e-05 rather than 9.99999974e-06)."""
    if not math.isfinite(value):
        return value
    packed = struct.pack("<f", value)
    for digits in range(1, 10):
        candidate = float(f"{value:.{digits}g}")
        if struct.pack("<f", candidate) == packed:
            return candidate
    return value


class _Cursor:
    """A read position in a GGUF buffer with bounds-checked primitive readers."""

    def __init__(self, buf: mmap.mmap | bytes, byte_order: str) -> None:
        self.buf = buf
        self.size = len(buf)
        self.off = 0
        self.order = byte_order
        self.u32 = struct.Struct(byte_order + "I")
        self.u64 = struct.Struct(byte_order + "Q")
        self.scalars = {t: struct.Struct(byte_order + f) for t, f in _SCALAR_FORMATS.items()}

    def need(self, n: int) -> None:
        """Fail with a truncation error unless ``n`` more bytes are available."""
        if self.off + n > self.size:
            raise GGUFError(f"truncated GGUF file: need {n} bytes at offset {self.off}, size is {self.size}")

    def unpack(self, st: struct.Struct) -> Any:
        """Read one value with the given single-item struct."""
        self.need(st.size)
        value = st.unpack_from(self.buf, self.off)[0]
        self.off += st.size
        return value

    def string(self) -> str:
        """Read a length-prefixed UTF-8 string."""
        length = self.unpack(self.u64)
        self.need(length)
        raw = self.buf[self.off : self.off + length]
        self.off += length
        return raw.decode("utf-8", errors="replace")

    def value(self, value_type: int) -> Any:
        """Read a value of the given GGUF type (arrays become :class:`ArrayInfo`)."""
        st = self.scalars.get(value_type)
        if st is not None:
            scalar = self.unpack(st)
            return _shortest_float32(scalar) if value_type == TYPE_FLOAT32 else scalar
        if value_type == TYPE_STRING:
            return self.string()
        if value_type == TYPE_ARRAY:
            return self.array()
        raise GGUFError(f"corrupt GGUF file: unknown value type {value_type} at offset {self.off}")

    def array(self) -> ArrayInfo:
        """Read an array header and its first items, skipping the rest."""
        item_type = self.unpack(self.u32)
        length = self.unpack(self.u64)
        if item_type in self.scalars:
            head = self._scalar_items(item_type, length)
        elif item_type == TYPE_STRING:
            head = self._string_items(length)
        elif item_type == TYPE_ARRAY:
            head = self._nested_items(length)
        else:
            raise GGUFError(f"corrupt GGUF file: unknown array item type {item_type} at offset {self.off}")
        return ArrayInfo(item_type, length, head, head if length <= ARRAY_HEAD_LEN else None)

    def _scalar_items(self, item_type: int, length: int) -> tuple[Any, ...]:
        st = self.scalars[item_type]
        self.need(st.size * length)
        count = min(length, ARRAY_HEAD_LEN)
        head = struct.unpack_from(f"{self.order}{count}{_SCALAR_FORMATS[item_type]}", self.buf, self.off)
        self.off += st.size * length
        if item_type == TYPE_FLOAT32:
            head = tuple(_shortest_float32(x) for x in head)
        return head

    def _string_items(self, length: int) -> tuple[Any, ...]:
        self.need(self.u64.size * length)  # every string takes at least its 8-byte length prefix
        count = min(length, ARRAY_HEAD_LEN)
        head = tuple(self.string() for _ in range(count))
        self._skip_strings(length - count)
        return head

    def _skip_strings(self, count: int) -> None:
        """Skip ``count`` strings by following their length prefixes only (the hot loop)."""
        unpack_u64, buf, off = self.u64.unpack_from, self.buf, self.off
        try:
            for _ in range(count):
                off += 8 + unpack_u64(buf, off)[0]
        except struct.error:
            raise GGUFError(f"truncated GGUF file: string array runs past {self.size} bytes") from None
        self.off = off
        self.need(0)

    def _nested_items(self, length: int) -> tuple[Any, ...]:
        self.need(12 * length)  # every nested array has a 12-byte header
        head = []
        for index in range(length):
            item = self.array()
            if index < ARRAY_HEAD_LEN:
                head.append(item)
        return tuple(head)

    def tensor(self) -> TensorInfo:
        """Read one tensor-info record."""
        name = self.string()
        n_dims = self.unpack(self.u32)
        if n_dims > _MAX_DIMS:
            raise GGUFError(f"corrupt GGUF file: tensor {name!r} has {n_dims} dimensions")
        dims_struct = struct.Struct(f"{self.order}{n_dims}Q")
        self.need(dims_struct.size)
        shape = dims_struct.unpack_from(self.buf, self.off)
        self.off += dims_struct.size
        type_id = self.unpack(self.u32)
        offset = self.unpack(self.u64)
        return TensorInfo(name, type_id, tensor_type_name(type_id), tuple(shape), offset)


def _byte_order(buf: mmap.mmap | bytes) -> tuple[str, int]:
    """Check the magic and version; return the struct byte-order prefix and the version."""
    if buf[:4] != GGUF_MAGIC:
        if len(buf) < 4 and GGUF_MAGIC.startswith(bytes(buf[:4])):
            raise GGUFError(f"truncated GGUF file: only {len(buf)} bytes")
        raise GGUFError(f"not a GGUF file: bad magic {bytes(buf[:4])!r} (expected b'GGUF')")
    if len(buf) < 8:
        raise GGUFError(f"truncated GGUF file: only {len(buf)} bytes")
    little, big = struct.unpack_from("<I", buf, 4)[0], struct.unpack_from(">I", buf, 4)[0]
    if little in SUPPORTED_VERSIONS:
        return "<", little
    if big in SUPPORTED_VERSIONS:
        return ">", big
    shown = little if little < 0x10000 else big
    raise GGUFError(f"unsupported GGUF version {shown} (supported: 2 and 3)")


def _parse(buf: mmap.mmap | bytes) -> GGUFInfo:
    """Parse header, key/values and tensor infos from a buffer holding (at least) the header."""
    order, version = _byte_order(buf)
    cur = _Cursor(buf, order)
    cur.off = 8
    n_tensors = cur.unpack(cur.u64)
    n_kv = cur.unpack(cur.u64)
    cur.need(12 * n_kv)  # smallest key/value: empty key + type + 1 byte; cheap sanity bound
    kv: dict[str, Any] = {}
    for _ in range(n_kv):
        key = cur.string()
        kv[key] = cur.value(cur.unpack(cur.u32))
    cur.need(24 * n_tensors)  # smallest tensor info: empty name + n_dims + type + offset
    tensors = [cur.tensor() for _ in range(n_tensors)]
    return GGUFInfo(version, kv, tensors, _data_offset(cur.off, kv), "little" if order == "<" else "big")


def _data_offset(header_end: int, kv: dict[str, Any]) -> int:
    alignment = kv.get("general.alignment", DEFAULT_ALIGNMENT)
    if not _is_int(alignment) or alignment <= 0:
        alignment = DEFAULT_ALIGNMENT
    return -(-header_end // alignment) * alignment


def read_gguf(path: str | os.PathLike[str]) -> GGUFInfo:
    """Read the metadata and tensor infos of a GGUF (v2/v3) file without loading tensor data.

    Raises :class:`GGUFError` for a file that is not GGUF, has an unsupported version or is
    truncated/corrupt; ``OSError`` propagates for files that cannot be opened.
    """
    with open(path, "rb") as fh:
        size = os.fstat(fh.fileno()).st_size
        if size == 0:
            raise GGUFError(f"not a GGUF file: {os.fspath(path)!r} is empty")
        with mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ) as buf:
            return _parse(buf)
