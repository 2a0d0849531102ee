"""Human-readable sizes, times, durations and plain tables, the way the ``ollama`` CLI prints them."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

_UNITS = (("TB", 1000**4), ("GB", 1000**3), ("MB", 1000**2), ("KB", 1000))
_DAY_HOURS = 24
PADDING = "    "


def human_bytes(size: int | float) -> str:
    """Decimal units like Ollama: ``98 MB``, ``2.0 GB``, ``4.7 GB``, ``512 B``."""
    for unit, scale in _UNITS:
        if size >= scale:
            value = size / scale
            if value >= 10 or value == math.trunc(value):
                return f"{int(value)} {unit}"
            return f"{value:.1f} {unit}"
    return f"{int(size)} B"


def human_duration(seconds: float) -> str:
    """An approximate span: ``Less than a second``, ``About a minute``, ``4 minutes``, ``3 days``."""
    whole = int(seconds)
    if whole < 1:
        return "Less than a second"
    if whole < 60:
        return "1 second" if whole == 1 else f"{whole} seconds"
    minutes = int(seconds // 60)
    if minutes < 60:
        return "About a minute" if minutes == 1 else f"{minutes} minutes"
    return _human_hours(round(seconds / 3600))


def _human_hours(hours: int) -> str:
    if hours == 1:
        return "About an hour"
    if hours < 48:
        return f"{hours} hours"
    if hours < _DAY_HOURS * 14:
        return f"{hours // 24} days"
    if hours < _DAY_HOURS * 60:
        return f"{hours // 24 // 7} weeks"
    if hours < _DAY_HOURS * 365 * 2:
        return f"{hours // 24 // 30} months"
    return f"{hours // 24 // 365} years"


def parse_time(text: str | None) -> datetime | None:
    """An RFC 3339 timestamp (nanoseconds allowed); ``None`` for empty, unparsable or Go's zero time."""
    if not text:
        return None
    head, dot, tail = text.partition(".")
    if dot:  # Python takes at most 6 fraction digits
        digits = len(tail) - len(tail.lstrip("0123456789"))
        text = f"{head}.{tail[:min(digits, 6)]}{tail[digits:]}"
    try:
        stamp = datetime.fromisoformat(text)
    except ValueError:
        return None
    if stamp.tzinfo is None:
        stamp = stamp.replace(tzinfo=UTC)
    return None if stamp.year <= 1 else stamp


def human_time(stamp: datetime | None, zero: str = "Never", now: datetime | None = None) -> str:
    """``2 minutes ago``, ``4 minutes from now``, ``Forever`` (over 20 years ahead) or ``zero``."""
    if stamp is None:
        return zero
    delta = ((now or datetime.now(UTC)) - stamp).total_seconds()
    if delta < -20 * 365 * 86400:
        return "Forever"
    if delta < 0:
        return human_duration(-delta) + " from now"
    return human_duration(delta) + " ago"


def until(stamp: datetime | None, now: datetime | None = None) -> str:
    """The ``ps`` UNTIL column: ``Stopping...`` once expired, else :func:`human_time`."""
    if stamp is not None and stamp < (now or datetime.now(UTC)):
        return "Stopping..."
    return human_time(stamp, "Never", now)


def processor(size: int, size_vram: int) -> str:
    """The ``ps`` PROCESSOR column from a runner's total size and the part in VRAM."""
    if size_vram == 0:
        return "100% CPU"
    if size_vram == size:
        return "100% GPU"
    if size_vram > size or size == 0:
        return "Unknown"
    cpu = round((size - size_vram) / size * 100)
    return f"{cpu}%/{100 - cpu}% CPU/GPU"


def go_duration(nanoseconds: int | float) -> str:
    """Go's ``time.Duration.String``: ``1.503s``, ``12.5ms``, ``850µs``, ``2m3.5s``, ``1h0m0s``."""
    ns = int(nanoseconds)
    if ns < 0:
        return "-" + go_duration(-ns)
    if ns < 1000:
        return f"{ns}ns" if ns else "0s"
    if ns < 1_000_000:
        return _trim(ns / 1e3) + "µs"
    if ns < 1_000_000_000:
        return _trim(ns / 1e6) + "ms"
    hours, rest = divmod(ns, 3_600_000_000_000)
    minutes, rest = divmod(rest, 60_000_000_000)
    seconds = _trim(rest / 1e9) + "s"
    if hours:
        return f"{hours}h{minutes}m{seconds}"
    return f"{minutes}m{seconds}" if minutes else seconds


def _trim(value: float) -> str:
    """A decimal without trailing zeros (up to nanosecond precision)."""
    return f"{value:.9f}".rstrip("0").rstrip(".")


def table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """Left-aligned columns separated by four spaces, no borders (Ollama's tablewriter settings)."""
    widths = [max(len(str(row[i])) for row in [headers, *rows]) for i in range(len(headers))]
    lines = [PADDING.join(str(cell).ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
             for row in [headers, *rows]]
    return "\n".join(lines)


def indented(rows: Sequence[Sequence[str]], indent: str = "    ") -> list[str]:
    """Rows as aligned lines under a section title (``show``'s layout)."""
    if not rows:
        return []
    width = max(len(row[0]) for row in rows)
    return [f"{indent}{row[0].ljust(width)}{PADDING}{' '.join(row[1:])}".rstrip() for row in rows]


def records_table(records: Sequence[Mapping[str, Any]]) -> str:
    """Any list of flat JSON objects as a table, columns in first-seen order (keys/usage output)."""
    headers: list[str] = []
    for record in records:
        headers += [key for key in record if key not in headers]
    rows = [[_cell(record.get(key)) for key in headers] for record in records]
    return table([key.upper().replace("_", " ") for key in headers], rows)


def _cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, list | tuple):
        return ",".join(str(item) for item in value)
    return str(value)


def verbose_stats(final: Mapping[str, Any]) -> list[str]:
    """The ``--verbose`` lines from a final chunk's metrics, as ``ollama run --verbose`` prints them."""
    lines: list[str] = []
    if final.get("total_duration"):
        lines.append(f"total duration:       {go_duration(final['total_duration'])}")
    if final.get("load_duration"):
        lines.append(f"load duration:        {go_duration(final['load_duration'])}")
    lines += _count_lines("prompt eval", final.get("prompt_eval_count"), final.get("prompt_eval_duration"))
    lines += _count_lines("eval", final.get("eval_count"), final.get("eval_duration"))
    return lines


def _count_lines(label: str, count: int | None, duration: int | None) -> list[str]:
    lines = []
    if count:
        lines.append(f"{label + ' count:':<22}{count} token(s)")
    if duration:
        lines.append(f"{label + ' duration:':<22}{go_duration(duration)}")
        lines.append(f"{label + ' rate:':<22}{(count or 0) / (duration / 1e9):.2f} tokens/s")
    return lines
