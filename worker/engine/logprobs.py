"""Per-token log probabilities from the logits of the position a token was sampled from.

Only the sampled row is read (``llama_get_logits_ith``), so no ``logits_all`` (an ``n_ctx × n_vocab``
buffer) is needed. The entry has Ollama's shape: ``{"token", "logprob", "bytes", "top_logprobs"?}``, log
probabilities over the raw distribution (before temperature, top-k or grammar), as llama-server reports.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

Piece = Callable[[int], bytes]


def log_softmax(row: np.ndarray) -> np.ndarray:
    """Numerically stable log-softmax of one logits row (float64)."""
    values = row.astype(np.float64)
    top = float(values.max())
    return values - (top + float(np.log(np.exp(values - top).sum())))


def entry(token: int, logprob: float, piece: Piece) -> dict[str, Any]:
    raw = piece(token)
    return {"token": raw.decode("utf-8", errors="replace"), "logprob": logprob, "bytes": list(raw)}


def token_logprobs(logits: Any, n_vocab: int, token: int, top_n: int, piece: Piece) -> dict[str, Any]:
    """The entry for ``token`` sampled from ``logits`` (a ctypes float pointer to one row)."""
    lp = log_softmax(np.ctypeslib.as_array(logits, shape=(n_vocab,)))
    out = entry(token, float(lp[token]), piece)
    if top_n > 0:
        top_n = min(top_n, n_vocab)
        best = np.argpartition(-lp, top_n - 1)[:top_n]
        best = best[np.argsort(-lp[best], kind="stable")]
        out["top_logprobs"] = [entry(int(t), float(lp[t]), piece) for t in best]
    return out


def sampled_logprobs(ctx: Any, vocab: Any, index: int, token: int, top_n: int, piece: Piece) -> dict[str, Any]:
    """The entry for ``token`` sampled from output row ``index`` of a llama.cpp context (-1 = last)."""
    from llama_cpp import llama_cpp as C

    return token_logprobs(C.llama_get_logits_ith(ctx, index), C.llama_vocab_n_tokens(vocab), token, top_n, piece)
