"""Turning token pieces into client text: split UTF-8 held back, stop strings cut and never shown."""

from __future__ import annotations

import codecs


class TextStream:
    """Feed token bytes; get back the text that is safe to send now.

    Bytes of an incomplete UTF-8 sequence wait for the next piece; text that could be the start of a stop
    string waits until it is known not to be one; a stop string ends the stream and is not emitted.
    """

    def __init__(self, stops: list[str]) -> None:
        self.stops = [s for s in stops if s]
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self._held = ""
        self.stopped = False

    def feed(self, piece: bytes) -> str:
        """Add one token's bytes; return the text to emit (may be empty)."""
        if self.stopped:
            return ""
        self._held += self._decoder.decode(piece)
        for stop in self.stops:
            index = self._held.find(stop)
            if index >= 0:
                self.stopped = True
                out, self._held = self._held[:index], ""
                return out
        keep = self._partial_stop_len()
        cut = len(self._held) - keep
        out, self._held = self._held[:cut], self._held[cut:]
        return out

    def flush(self) -> str:
        """The rest, at the end of generation."""
        if self.stopped:
            return ""
        out = self._held + self._decoder.decode(b"", final=True)
        self._held = ""
        return out

    def _partial_stop_len(self) -> int:
        best = 0
        for stop in self.stops:
            for size in range(min(len(stop) - 1, len(self._held)), 0, -1):
                if self._held.endswith(stop[:size]):
                    best = max(best, size)
                    break
        return best
