"""Human sizes, times, durations and the ps columns, as the ollama CLI prints them."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from caravan.cli import format as fmt

NOW = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)


@pytest.mark.parametrize(("size", "text"), [
    (0, "0 B"), (999, "999 B"), (1000, "1 KB"), (1500, "1.5 KB"), (98_362_621, "98 MB"),
    (2_019_393_189, "2.0 GB"), (4_700_000_000, "4.7 GB"), (3_000_000_000, "3 GB"), (65_290_180_781, "65 GB"),
    (1_200_000_000_000, "1.2 TB"),
])
def test_human_bytes(size: int, text: str) -> None:
    assert fmt.human_bytes(size) == text


@pytest.mark.parametrize(("ago", "text"), [
    (timedelta(milliseconds=300), "Less than a second ago"), (timedelta(seconds=1), "1 second ago"),
    (timedelta(seconds=42), "42 seconds ago"), (timedelta(seconds=90), "About a minute ago"),
    (timedelta(minutes=2, seconds=5), "2 minutes ago"), (timedelta(minutes=61), "About an hour ago"),
    (timedelta(hours=5), "5 hours ago"), (timedelta(days=3), "3 days ago"), (timedelta(days=20), "2 weeks ago"),
    (timedelta(days=100), "3 months ago"), (timedelta(days=800), "2 years ago"),
])
def test_human_time_in_the_past(ago: timedelta, text: str) -> None:
    assert fmt.human_time(NOW - ago, now=NOW) == text


def test_human_time_future_forever_and_never() -> None:
    assert fmt.human_time(NOW + timedelta(minutes=4, seconds=30), now=NOW) == "4 minutes from now"
    assert fmt.human_time(NOW + timedelta(days=365 * 30), now=NOW) == "Forever"
    assert fmt.human_time(None) == "Never"


def test_until_column() -> None:
    assert fmt.until(NOW + timedelta(minutes=4, seconds=59), now=NOW) == "4 minutes from now"
    assert fmt.until(NOW - timedelta(seconds=1), now=NOW) == "Stopping..."
    assert fmt.until(datetime(2318, 1, 1, tzinfo=UTC), now=NOW) == "Forever"


@pytest.mark.parametrize(("text", "expected"), [
    ("2024-07-22T20:47:51.147561Z", datetime(2024, 7, 22, 20, 47, 51, 147561, tzinfo=UTC)),
    ("2024-07-22T20:47:51.147561123Z", datetime(2024, 7, 22, 20, 47, 51, 147561, tzinfo=UTC)),
    ("2024-07-22T13:47:51-07:00", datetime(2024, 7, 22, 20, 47, 51, tzinfo=UTC)),
    ("0001-01-01T00:00:00Z", None), ("", None), ("garbage", None),
])
def test_parse_time(text: str, expected: datetime | None) -> None:
    assert fmt.parse_time(text) == expected


@pytest.mark.parametrize(("size", "vram", "text"), [
    (1000, 0, "100% CPU"), (1000, 1000, "100% GPU"), (1000, 520, "48%/52% CPU/GPU"),
    (1000, 2000, "Unknown"), (0, 5, "Unknown"),
])
def test_processor(size: int, vram: int, text: str) -> None:
    assert fmt.processor(size, vram) == text


@pytest.mark.parametrize(("ns", "text"), [
    (0, "0s"), (850, "850ns"), (1500, "1.5µs"), (12_500_000, "12.5ms"), (1_503_000_000, "1.503s"),
    (123_500_000_000, "2m3.5s"), (3_600_000_000_000, "1h0m0s"), (2_768_090_711, "2.768090711s"),
])
def test_go_duration(ns: int, text: str) -> None:
    assert fmt.go_duration(ns) == text


def test_table_aligns_left_with_four_spaces() -> None:
    text = fmt.table(["NAME", "ID"], [["smollm2:135m", "dc506caab62b"], ["x:latest", "0123456789ab"]])
    assert text.splitlines() == ["NAME            ID", "smollm2:135m    dc506caab62b", "x:latest        0123456789ab"]


def test_verbose_stats() -> None:
    lines = fmt.verbose_stats({"total_duration": 2_000_000_000, "load_duration": 4_000_000,
                               "prompt_eval_count": 40, "prompt_eval_duration": 1_000_000_000,
                               "eval_count": 10, "eval_duration": 500_000_000})
    assert lines == ["total duration:       2s", "load duration:        4ms",
                     "prompt eval count:    40 token(s)", "prompt eval duration: 1s",
                     "prompt eval rate:     40.00 tokens/s", "eval count:           10 token(s)",
                     "eval duration:        500ms", "eval rate:            20.00 tokens/s"]


def test_records_table_collects_every_key() -> None:
    text = fmt.records_table([{"id": "k1", "name": "ci"}, {"id": "k2", "scopes": ["a", "b"]}])
    assert text.splitlines()[0].split() == ["ID", "NAME", "SCOPES"]
    assert "a,b" in text and fmt.records_table([]) == ""
