"""llama.cpp's model and context parameters from a ``LoadSpec``'s load-time options (shared by the engines)."""

from __future__ import annotations

from typing import Any

from caravan.queue import LoadSpec


def flash_attn_type(C: Any, spec: LoadSpec) -> int:
    """Ollama's ``OLLAMA_FLASH_ATTENTION`` as llama.cpp's setting: auto lets llama.cpp decide per device (on a
    CPU it turns flash attention on)."""
    return int({"on": C.LLAMA_FLASH_ATTN_TYPE_ENABLED, "off": C.LLAMA_FLASH_ATTN_TYPE_DISABLED}.get(
        spec.flash_attention, C.LLAMA_FLASH_ATTN_TYPE_AUTO))


def ggml_kv_type(C: Any, spec: LoadSpec) -> int:
    """The ggml type of the KV cache (``OLLAMA_KV_CACHE_TYPE``; f16 when flash attention is off)."""
    return int({"q8_0": C.GGML_TYPE_Q8_0, "q4_0": C.GGML_TYPE_Q4_0}.get(spec.kv_type, C.GGML_TYPE_F16))


def load_mode(C: Any, use_mmap: bool) -> int:
    """llama.cpp's weight loading for Ollama's ``use_mmap`` option, as ``Llama`` sets it: memory-mapped, or read
    into memory. (``llama_model_params`` has no ``use_mmap`` field any more; its default, AUTO, is neither.)"""
    return int(C.LLAMA_LOAD_MODE_MMAP if use_mmap else C.LLAMA_LOAD_MODE_NONE)
