"""Per-sequence sampling on llama.cpp's low-level API, shared by the engines.

A request's Ollama options become :class:`SamplingParams` (same defaults as ``LlamaEngine``), and those
become one ``llama_sampler`` chain per sequence: it owns that sequence's RNG, penalty history and grammar
state, so sequences batched into one context never disturb each other. The chain order is llama-cpp-python's
(``Llama._init_sampler``): penalties → grammar → greedy | dist | mirostat | top-k → typical → top-p → min-p →
temperature → dist. As llama-server and Ollama's runner do, the prompt's last ``repeat_last_n`` tokens are fed
to the penalties (never to the grammar) before generation starts.
"""

from __future__ import annotations

import ctypes
import random
from dataclasses import dataclass
from typing import Any

from caravan.errors import BadRequest


@dataclass(frozen=True)
class SamplingParams:
    """What the sampler chain of one request needs, from Ollama's options."""

    temperature: float = 0.8
    top_k: int = 40
    top_p: float = 0.9
    min_p: float = 0.0
    typical_p: float = 1.0
    repeat_penalty: float = 1.0
    repeat_last_n: int = 64
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    mirostat: int = 0
    mirostat_tau: float = 5.0
    mirostat_eta: float = 0.1
    seed: int = 0

    @classmethod
    def from_options(cls, options: dict[str, Any], num_ctx: int) -> SamplingParams:
        """Options as validated by the gateway; ``seed`` < 0 or absent means a random seed."""
        seed = int(options.get("seed", -1))
        last_n = int(options.get("repeat_last_n", 64))
        return cls(
            temperature=float(options.get("temperature", 0.8)), top_k=int(options.get("top_k", 40)),
            top_p=float(options.get("top_p", 0.9)), min_p=float(options.get("min_p", 0.0)),
            typical_p=float(options.get("typical_p", 1.0)),
            repeat_penalty=float(options.get("repeat_penalty", 1.0)),
            repeat_last_n=num_ctx if last_n < 0 else last_n,
            presence_penalty=float(options.get("presence_penalty", 0.0)),
            frequency_penalty=float(options.get("frequency_penalty", 0.0)),
            mirostat=int(options.get("mirostat", 0)), mirostat_tau=float(options.get("mirostat_tau", 5.0)),
            mirostat_eta=float(options.get("mirostat_eta", 0.1)),
            seed=seed if seed >= 0 else random.randrange(2**31),
        )


def new_chain(vocab: Any, params: SamplingParams, grammar: str | None, prompt: list[int]) -> Any:
    """A sampler chain for one sequence (free it with ``llama_sampler_free``)."""
    from llama_cpp import llama_cpp as C

    chain = C.llama_sampler_chain_init(C.llama_sampler_chain_default_params())
    C.llama_sampler_chain_add(chain, C.llama_sampler_init_penalties(
        C.llama_vocab_n_tokens(vocab), params.repeat_last_n, params.repeat_penalty,
        params.frequency_penalty, params.presence_penalty,
    ))
    for token in prompt[-params.repeat_last_n:] if params.repeat_last_n > 0 else []:
        C.llama_sampler_accept(chain, token)  # only the penalties are in the chain yet
    if grammar is not None:
        sampler = C.llama_sampler_init_grammar(vocab, grammar.encode(), b"root")
        if not sampler:
            C.llama_sampler_free(chain)
            raise BadRequest("invalid JSON schema in format: llama.cpp could not parse the grammar")
        C.llama_sampler_chain_add(chain, sampler)
    for sampler in _selection(vocab, params):
        C.llama_sampler_chain_add(chain, sampler)
    return chain


def _selection(vocab: Any, params: SamplingParams) -> list[Any]:
    """The samplers that pick the token, after penalties and grammar."""
    from llama_cpp import llama_cpp as C

    if params.temperature == 0.0:
        return [C.llama_sampler_init_greedy()]
    if params.temperature < 0.0:
        return [C.llama_sampler_init_dist(params.seed)]
    if params.mirostat == 1:
        return [C.llama_sampler_init_temp(params.temperature), C.llama_sampler_init_mirostat(
            C.llama_vocab_n_tokens(vocab), params.seed, params.mirostat_tau, params.mirostat_eta, 100)]
    if params.mirostat == 2:
        return [C.llama_sampler_init_temp(params.temperature),
                C.llama_sampler_init_mirostat_v2(params.seed, params.mirostat_tau, params.mirostat_eta)]
    return [
        C.llama_sampler_init_top_k(params.top_k), C.llama_sampler_init_typical(params.typical_p, 1),
        C.llama_sampler_init_top_p(params.top_p, 1), C.llama_sampler_init_min_p(params.min_p, 1),
        C.llama_sampler_init_temp(params.temperature), C.llama_sampler_init_dist(params.seed),
    ]


def token_piece(vocab: Any, token: int) -> bytes:
    """The bytes of one token as generated text (special tokens render empty, as in ``LlamaEngine``)."""
    from llama_cpp import llama_cpp as C

    size = 64
    while True:
        buf = ctypes.create_string_buffer(size)
        n = C.llama_token_to_piece(vocab, token, buf, size, 0, False)
        if n >= 0:
            return buf.raw[:n]
        size = -n
