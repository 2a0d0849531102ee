"""Caravan: an Ollama-compatible LLM serving cluster (shared core: wire types, queue protocol, names, errors)."""

__version__ = "0.1.0"
OLLAMA_COMPAT_VERSION = "0.33.0"
