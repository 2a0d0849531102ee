"""Go duration strings and Ollama's ``keep_alive`` semantics (ollama-api.md §3.5).

``parse_keep_alive`` turns the JSON value into seconds: a number is seconds, a string is a Go duration
(``"5m"``, ``"1h30m"``, ``"0"``), any negative value means forever (``FOREVER``).
"""

from __future__ import annotations

import math
import re
from typing import Any

from caravan.errors import BadRequest

FOREVER = math.inf
_UNITS = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "μs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}
_GROUP = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ns|us|µs|μs|ms|s|m|h)")


def parse_go_duration(text: str) -> float:
    """Parse a Go duration into seconds; raise :class:`BadRequest` with Go's wording when malformed."""
    raw = text
    sign = 1.0
    if text[:1] in "+-" and text:
        sign = -1.0 if text[0] == "-" else 1.0
        text = text[1:]
    if text == "0":
        return 0.0
    if not text:
        raise BadRequest(f'time: invalid duration "{raw}"')
    total, pos = 0.0, 0
    while pos < len(text):
        match = _GROUP.match(text, pos)
        if not match:
            if re.fullmatch(r"[\d.]+", text[pos:]):
                raise BadRequest(f'time: missing unit in duration "{raw}"')
            raise BadRequest(f'time: invalid duration "{raw}"')
        total += float(match.group(1)) * _UNITS[match.group(2)]
        pos = match.end()
    return sign * total


def parse_keep_alive(value: Any, default: float) -> float:
    """Seconds to keep a model loaded; ``FOREVER`` for negatives, ``default`` when absent."""
    if value is None:
        return default
    if isinstance(value, bool):
        raise BadRequest("Unsupported type: 'bool'")
    if isinstance(value, int | float):
        seconds = float(value)
    elif isinstance(value, str):
        seconds = parse_go_duration(value.strip())
    else:
        raise BadRequest(f"Unsupported type: '{type(value).__name__}'")
    return FOREVER if seconds < 0 else seconds


def parse_env_keep_alive(text: str) -> float:
    """``OLLAMA_KEEP_ALIVE`` accepts a Go duration or integer seconds."""
    text = text.strip().strip("\"'")
    try:
        seconds = float(int(text))
    except ValueError:
        seconds = parse_go_duration(text)
    return FOREVER if seconds < 0 else seconds
