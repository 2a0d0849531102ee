"""Runtime options (ollama-api.md §3.4): their types, validation, precedence and the load-time subset.

Precedence is defaults < model ``params`` layer < request ``options``. Unknown keys are dropped with a
warning; ``null`` values are ignored; a wrong JSON type is a 400 naming the option.
"""

from __future__ import annotations

import logging
from typing import Any

from caravan.errors import InvalidOption

log = logging.getLogger(__name__)

INT_OPTIONS = frozenset(
    {"num_ctx", "num_batch", "num_gpu", "main_gpu", "num_thread", "num_keep", "seed", "num_predict",
     "top_k", "repeat_last_n", "draft_num_predict"}
)
FLOAT_OPTIONS = frozenset(
    {"top_p", "min_p", "typical_p", "temperature", "repeat_penalty", "presence_penalty", "frequency_penalty"}
)
BOOL_OPTIONS = frozenset({"use_mmap"})
LIST_OPTIONS = frozenset({"stop"})
LEGACY_OPTIONS = frozenset(
    {"numa", "low_vram", "f16_kv", "vocab_only", "logits_all", "use_mlock", "mirostat", "mirostat_eta",
     "mirostat_tau", "penalize_newline", "tfs_z"}
)
LOAD_OPTIONS = ("num_ctx", "num_batch", "num_gpu", "main_gpu", "use_mmap", "num_thread")

DEFAULTS: dict[str, Any] = {
    "num_keep": 4,
    "seed": -1,
    "num_predict": -1,
    "top_k": 40,
    "top_p": 0.9,
    "min_p": 0.0,
    "typical_p": 1.0,
    "repeat_last_n": 64,
    "temperature": 0.8,
    "repeat_penalty": 1.0,
    "presence_penalty": 0.0,
    "frequency_penalty": 0.0,
    "stop": [],
}


def _coerce(key: str, value: Any) -> Any:
    if key in INT_OPTIONS:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise InvalidOption(f'option "{key}" must be of type integer')
        return int(value)
    if key in FLOAT_OPTIONS:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise InvalidOption(f'option "{key}" must be of type float32')
        return float(value)
    if key in BOOL_OPTIONS:
        if not isinstance(value, bool):
            raise InvalidOption(f'option "{key}" must be of type boolean')
        return value
    if not isinstance(value, list):
        raise InvalidOption(f'option "{key}" must be of type array')
    if not all(isinstance(item, str) for item in value):
        raise InvalidOption(f'option "{key}" must be of an array of strings')
    return list(value)


def validate_options(raw: Any) -> dict[str, Any]:
    """Type-check an ``options`` object, dropping nulls, legacy and unknown keys."""
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise InvalidOption("options must be an object")
    clean: dict[str, Any] = {}
    for key, value in raw.items():
        if value is None or key in LEGACY_OPTIONS:
            continue
        if key not in INT_OPTIONS | FLOAT_OPTIONS | BOOL_OPTIONS | LIST_OPTIONS:
            log.warning("invalid option provided", extra={"option": key})
            continue
        clean[key] = _coerce(key, value)
    return clean


def merge_options(model_params: dict[str, Any], request: dict[str, Any]) -> dict[str, Any]:
    """Defaults < model params < request options."""
    merged = dict(DEFAULTS)
    merged.update(validate_options(model_params))
    merged.update(request)
    return merged
