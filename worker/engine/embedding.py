"""Embeddings from a loaded model without touching its generation context.

An :class:`Embedder` opens a second llama.cpp context on the same weights (no second load), with
``embeddings`` on and the model's own pooling, or mean pooling for a generative model that has none. Its KV
cache is separate, so the generation context's cached prefix (and its output) is undisturbed. Each input is
one sequence; inputs are packed into one decode while they fit. A sequence must fit one micro-batch for
pooling to cover all of it, so the context is ``n_ctx = n_batch = n_ubatch`` = the usable input length
(the model's ``num_ctx``, capped by ``MAX_TOKENS`` to bound the per-token output buffers).

Vectors come back raw; normalising is the API's business (``/api/embeddings`` is not normalised).
Call it from the engine's own thread only.
"""

from __future__ import annotations

from typing import Any

from caravan.errors import BadRequest

MAX_TOKENS = 4096
MAX_SEQUENCES = 16
TOO_LONG = "the input length exceeds the context length"


class Embedder:
    """Embedding context for one loaded ``llama_cpp._internals.LlamaModel``."""

    def __init__(self, model: Any, num_ctx: int, n_threads: int, n_threads_batch: int) -> None:
        from llama_cpp import _internals as I

        self.model = model
        self.limit = max(8, min(num_ctx, MAX_TOKENS))
        self.ctx = I.LlamaContext(model=model, params=self._params(n_threads, n_threads_batch), verbose=False)
        self.batch = I.LlamaBatch(n_tokens=self.limit, embd=0, n_seq_max=1, verbose=False)
        self.n_embd = model.n_embd()

    def _params(self, n_threads: int, n_threads_batch: int) -> Any:
        from llama_cpp import llama_cpp as C

        params = C.llama_context_default_params()
        params.n_ctx = params.n_batch = params.n_ubatch = self.limit
        params.n_seq_max, params.kv_unified = MAX_SEQUENCES, True
        params.embeddings = True
        params.pooling_type = C.LLAMA_POOLING_TYPE_UNSPECIFIED if has_pooling(self.model) else C.LLAMA_POOLING_TYPE_MEAN
        params.n_threads, params.n_threads_batch = n_threads, n_threads_batch
        params.no_perf = True
        return params

    def tokens(self, text: str, truncate: bool) -> list[int]:
        """The input's tokens (BOS/EOS as the vocabulary wants), cut to fit or a 400 when ``truncate`` is off."""
        tokens: list[int] = self.model.tokenize(text.encode(), True, False)
        if not tokens:  # "" on a vocabulary that adds no BOS: embed the one special token there is
            tokens = [self.model.token_bos() if self.model.token_bos() >= 0 else self.model.token_eos()]
        if len(tokens) <= self.limit:
            return tokens
        if not truncate:
            raise BadRequest(TOO_LONG)
        eos = self.model.token_eos()
        if self.model.add_eos_token() and tokens[-1] == eos:
            return [*tokens[: self.limit - 1], eos]
        return tokens[: self.limit]

    def embed(self, texts: list[str], truncate: bool = True) -> tuple[list[list[float]], int]:
        """One raw pooled vector per text, and the number of tokens evaluated."""
        inputs = [self.tokens(text, truncate) for text in texts]
        vectors: list[list[float]] = []
        group: list[list[int]] = []
        for tokens in inputs:
            if group and (sum(map(len, group)) + len(tokens) > self.limit or len(group) == MAX_SEQUENCES):
                vectors += self._decode(group)
                group = []
            group.append(tokens)
        if group:
            vectors += self._decode(group)
        return vectors, sum(map(len, inputs))

    def _decode(self, group: list[list[int]]) -> list[list[float]]:
        from llama_cpp import llama_cpp as C

        self.ctx.kv_cache_clear()
        self.batch.reset()
        for seq, tokens in enumerate(group):
            self.batch.add_sequence(tokens, seq, True)
        self.ctx.decode(self.batch)
        return [list(C.llama_get_embeddings_seq(self.ctx.ctx, seq)[: self.n_embd]) for seq in range(len(group))]

    def close(self) -> None:
        self.batch.close()
        self.ctx.close()


def has_pooling(model: Any) -> bool:
    """Whether the GGUF declares a pooling type (an embedding model) rather than a plain generative one."""
    meta = model.metadata()
    arch = meta.get("general.architecture", "")
    return f"{arch}.pooling_type" in meta
