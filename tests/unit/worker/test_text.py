from __future__ import annotations

from worker.engine.text import TextStream


def feed_all(stream: TextStream, pieces: list[bytes]) -> str:
    return "".join(stream.feed(p) for p in pieces) + stream.flush()


def test_split_utf8_is_held_until_complete() -> None:
    stream = TextStream([])
    euro = "€".encode()
    assert stream.feed(euro[:1]) == ""
    assert stream.feed(euro[1:]) == "€"


def test_stop_string_is_cut_and_ends() -> None:
    stream = TextStream(["<|im_end|>"])
    assert feed_all(stream, [b"Hello", b" <|im", b"_end|>", b"more"]) == "Hello "
    assert stream.stopped


def test_partial_stop_prefix_released_when_not_a_stop() -> None:
    stream = TextStream(["END"])
    assert stream.feed(b"the EN") == "the "
    assert stream.feed(b"D?") == ""
    assert stream.stopped


def test_partial_prefix_that_diverges_is_emitted() -> None:
    stream = TextStream(["END"])
    assert feed_all(stream, [b"E", b"x"]) == "Ex"


def test_no_stops_passes_through() -> None:
    assert feed_all(TextStream([]), [b"a", b"b"]) == "ab"
