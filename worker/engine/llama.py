"""The real engine: llama-cpp-python's ``Llama``, owned by one thread (it is not thread-safe).

Every call into llama.cpp runs on the engine's single-thread executor; token events cross to asyncio
through an ``asyncio.Queue`` fed with ``call_soon_threadsafe``. ctypes releases the GIL during decode, so the
worker's event loop keeps serving Redis while a model generates.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import threading
import time
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from caravan.errors import BadRequest, CaravanError
from caravan.grammar import grammar_for
from caravan.queue import Event, InferenceJob, LoadSpec
from worker.engine.base import Engine, FirstToken, Stats
from worker.engine.embedding import Embedder
from worker.engine.grammar import check_grammar, job_grammar
from worker.engine.logprobs import sampled_logprobs
from worker.engine.params import ggml_kv_type
from worker.engine.text import TextStream
from worker.prompting import TokenizerInfo, build_prompt, fit_context

_END = object()


def _grammar(fmt: Any) -> Any:
    """``format`` → a ``LlamaGrammar`` (or None); kept for callers that still pass the raw format."""
    from llama_cpp import LlamaGrammar

    gbnf = grammar_for(fmt)
    return None if gbnf is None else LlamaGrammar.from_string(gbnf, verbose=False)


class _Output:
    """Token pieces → ``tok`` events. Text held back (split UTF-8, a possible stop string) and the logprobs
    of the tokens behind it travel together in the next event that has text."""

    def __init__(self, emit: Callable[[Any], None], stops: list[str]) -> None:
        self.emit = emit
        self.text = TextStream(stops)
        self.logprobs: list[dict[str, Any]] = []
        self.seq = 0

    @property
    def stopped(self) -> bool:
        return self.text.stopped

    def token(self, piece: bytes, logprob: dict[str, Any] | None) -> None:
        if logprob is not None:
            self.logprobs.append(logprob)
        self._send(self.text.feed(piece))

    def finish(self) -> None:
        tail = self.text.flush()
        if self.stopped:  # tokens of the stop string are not part of the answer
            self.logprobs = []
        self._send(tail, force=bool(self.logprobs))

    def _send(self, delta: str, force: bool = False) -> None:
        if delta or force:
            self.emit(Event(t="tok", seq=self.seq, text=delta, logprobs=self.logprobs or None))
            self.logprobs = []
            self.seq += 1


class LlamaEngine(Engine):
    """One GGUF loaded with llama-cpp-python's high-level API; one sequence at a time."""

    def __init__(self, spec: LoadSpec, path: Path, *, n_threads: int = 0, n_gpu_layers: int = 0) -> None:
        self.spec = spec
        self.path = path
        self.slots = 1
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"engine-{spec.key[:6]}")
        self._n_threads = n_threads or spec.num_thread or None
        self._n_gpu_layers = n_gpu_layers
        self.llm: Any = None
        self.info = TokenizerInfo(None)
        self._embedder: Embedder | None = None

    async def load(self) -> None:
        await asyncio.get_running_loop().run_in_executor(self._executor, self._load)

    def _load(self) -> None:
        from llama_cpp import Llama
        from llama_cpp import llama_cpp as C

        # Llama takes flash attention as a bool: auto is on, which is what llama.cpp's auto picks on a CPU
        kv = ggml_kv_type(C, self.spec)
        self.llm = Llama(
            model_path=str(self.path), n_ctx=self.spec.num_ctx, n_batch=self.spec.num_batch,
            n_threads=self._n_threads, n_gpu_layers=self._n_gpu_layers, main_gpu=self.spec.main_gpu,
            use_mmap=self.spec.use_mmap, verbose=False, seed=random.randrange(2**31),
            flash_attn=self.spec.flash_attention != "off", type_k=kv, type_v=kv,
        )
        meta = self.llm.metadata
        vocab = self.llm._model
        self.info = TokenizerInfo(
            chat_template=meta.get("tokenizer.chat_template"),
            bos_token=vocab.token_get_text(vocab.token_bos()) if vocab.token_bos() >= 0 else "",
            eos_token=vocab.token_get_text(vocab.token_eos()) if vocab.token_eos() >= 0 else "",
        )

    async def stream(self, job: InferenceJob, cancel: threading.Event,
                     first: FirstToken | None = None) -> AsyncIterator[Event]:
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[Any] = asyncio.Queue()

        def emit(item: Any) -> None:
            loop.call_soon_threadsafe(queue.put_nowait, item)

        future = loop.run_in_executor(self._executor, self._run, job, cancel, emit)
        try:
            while (item := await queue.get()) is not _END:
                yield item
        finally:
            cancel.set()
            with contextlib.suppress(Exception):
                await asyncio.shield(future)

    def _run(self, job: InferenceJob, cancel: threading.Event, emit: Callable[[Any], None]) -> None:
        try:
            emit(_guarded(self._generate, job, cancel, emit))
        finally:
            emit(_END)

    async def embed(self, job: InferenceJob, cancel: threading.Event) -> Event:
        """Embed ``job.input`` on the engine thread, in a separate embedding context (see ``Embedder``)."""
        return await asyncio.get_running_loop().run_in_executor(self._executor, _guarded, self._embed, job)

    def _embed(self, job: InferenceJob) -> Event:
        started = time.perf_counter()
        if self._embedder is None:
            self._embedder = Embedder(self.llm._model, self.spec.num_ctx, self.llm.n_threads, self.llm.n_threads_batch)
        vectors, count = self._embedder.embed(job.input, job.truncate)
        stats = {"prompt_eval_count": count, "prompt_eval_duration": int((time.perf_counter() - started) * 1e9)}
        return Event(t="done", done_reason="stop", embeddings=vectors, stats=stats)

    def _tokens(self, job: InferenceJob) -> list[int]:
        text = build_prompt(job, self.info)
        tokens: list[int] = list(job.context or []) if job.op == "generate" else []
        tokens += self.llm.tokenize(text.encode(), add_bos=not tokens, special=True)
        if not tokens:
            if self.llm.token_bos() < 0:
                raise BadRequest("the prompt is empty")
            tokens = [self.llm.token_bos()]
        return fit_context(tokens, self.spec.num_ctx, job)

    def _grammar_of(self, job: InferenceJob) -> Any:
        from llama_cpp import LlamaGrammar

        gbnf = job_grammar(job)
        if gbnf is None:
            return None
        check_grammar(self.llm._model.vocab, gbnf)
        return LlamaGrammar.from_string(gbnf, verbose=False)

    def _logprob(self, job: InferenceJob, token: int) -> dict[str, Any] | None:
        if not job.logprobs:
            return None
        return sampled_logprobs(self.llm.ctx, self.llm._model.vocab, -1, token, job.top_logprobs, self._piece)

    def _sampling(self, options: dict[str, Any]) -> dict[str, Any]:
        seed = int(options.get("seed", -1))
        self.llm.set_seed(seed if seed >= 0 else random.randrange(2**31))
        last_n = int(options.get("repeat_last_n", 64))
        self.llm.last_n_tokens_size = self.spec.num_ctx if last_n < 0 else last_n
        return {
            "top_k": int(options.get("top_k", 40)), "top_p": float(options.get("top_p", 0.9)),
            "min_p": float(options.get("min_p", 0.0)), "typical_p": float(options.get("typical_p", 1.0)),
            "temp": float(options.get("temperature", 0.8)),
            "repeat_penalty": float(options.get("repeat_penalty", 1.0)),
            "frequency_penalty": float(options.get("frequency_penalty", 0.0)),
            "presence_penalty": float(options.get("presence_penalty", 0.0)),
        }

    def _generate(self, job: InferenceJob, cancel: threading.Event, emit: Callable[[Any], None]) -> Event:
        from llama_cpp import llama_cpp as C

        stats = Stats()
        tokens = self._tokens(job)
        stats.prompt_tokens = len(tokens)
        grammar, sampling = self._grammar_of(job), self._sampling(job.options)
        limit = int(job.options.get("num_predict", -1))
        out = _Output(emit, list(job.options.get("stop", [])))
        out_tokens: list[int] = []
        reason = "stop"
        for token in self.llm.generate(tokens, grammar=grammar, **sampling):
            stats.first_token = stats.first_token or time.perf_counter()
            if cancel.is_set():
                reason = "cancelled"
                break
            if C.llama_vocab_is_eog(self.llm._model.vocab, token):
                break
            out_tokens.append(token)
            out.token(self._piece(token), self._logprob(job, token))
            if out.stopped:
                break
            if len(out_tokens) == limit or len(tokens) + len(out_tokens) >= self.spec.num_ctx:
                reason = "length"  # no context shift: the context is full (also what shift=false asks)
                break
        out.finish()
        stats.end = time.perf_counter()
        stats.eval_tokens = len(out_tokens)
        if job.op == "generate" and not job.raw:
            stats.context = tokens + out_tokens
        return Event(t="done", done_reason=reason, stats=stats.as_dict())

    def _piece(self, token: int) -> bytes:
        """The token's bytes (llama-cpp-python's own helper returns a NUL-padded 32-byte buffer)."""
        import ctypes

        from llama_cpp import llama_cpp as C

        size = 64
        while True:
            buf = ctypes.create_string_buffer(size)
            n = C.llama_token_to_piece(self.llm._model.vocab, token, buf, size, 0, False)
            if n >= 0:
                return buf.raw[:n]
            size = -n

    async def close(self) -> None:
        def _free() -> None:
            if self._embedder is not None:
                self._embedder.close()
                self._embedder = None
            if self.llm is not None:
                self.llm.close()
                self.llm = None

        await asyncio.get_running_loop().run_in_executor(self._executor, _free)
        self._executor.shutdown(wait=False)



def _guarded(run: Callable[..., Event], *args: Any) -> Event:
    """Run on the engine thread; any failure becomes an ``err`` event (llama.cpp errors included)."""
    try:
        return run(*args)
    except CaravanError as exc:
        return Event(t="err", status=exc.status, error=exc.message)
    except Exception as exc:  # llama.cpp failures must reach the client as an error line
        return Event(t="err", status=500, error=str(exc) or type(exc).__name__)
