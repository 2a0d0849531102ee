"""The batching engine: ``spec.parallel`` sequences decoded together in one llama.cpp context.

The model and one ``llama_context`` (``n_ctx = num_ctx × parallel``, one KV stream per sequence,
``n_seq_max = parallel``) are created through llama-cpp-python's low-level API; the step loop lives in
``worker.engine.batcher`` on the engine's own thread. The asyncio side only prepares a request (template,
tokens, sampler chain; off the event loop unless it is short), hands it over, and relays the events the thread delivers.
"""

from __future__ import annotations

import asyncio
import multiprocessing
import threading
import time
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from caravan.errors import BadRequest, CaravanError
from caravan.queue import Event, InferenceJob, LoadSpec
from worker.engine.base import Engine, FirstToken
from worker.engine.batcher import Batcher, Item, Request
from worker.engine.embedding import Embedder
from worker.engine.grammar import job_grammar
from worker.engine.llama import _guarded
from worker.engine.params import flash_attn_type, ggml_kv_type, load_mode
from worker.engine.sampling import SamplingParams, new_chain
from worker.prompting import TokenizerInfo, build_prompt, fit_context

# A prompt this short is prepared (template, tokens, sampler chain: ~0.1-0.3 ms) on the event loop: a hop to a
# thread and back costs more than that (0.3-0.7 ms measured) and delays the first token. Longer ones go to a
# thread, so a 100k-character prompt never stalls the other streams' relays.
INLINE_PROMPT_CHARS = 4096


class BatchEngine(Engine):
    """One GGUF, ``spec.parallel`` slots, continuous batching and prefix reuse."""

    def __init__(self, spec: LoadSpec, path: Path, *, n_threads: int = 0, n_gpu_layers: int = 0,
                 reuse_prefix: bool = True, park_bytes: int = 0) -> None:
        self.spec = spec
        self.path = path
        self.slots = max(1, spec.parallel)
        self.reuse_prefix = reuse_prefix
        self.park_bytes = park_bytes  # host RAM for parked slot histories (worker.engine.batcher)
        self._n_threads = n_threads or spec.num_thread
        self._n_gpu_layers = n_gpu_layers
        self.info = TokenizerInfo(None)
        self.model: Any = None
        self.ctx: Any = None
        self.batcher: Batcher | None = None
        self._embedder: Embedder | None = None
        self._embed_thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="batch-embed")

    # -- load / close ------------------------------------------------------------------------------------
    async def load(self) -> None:
        await asyncio.to_thread(self._load)

    def _load(self) -> None:
        from llama_cpp import llama_cpp as C
        from llama_cpp._internals import LlamaModel
        from llama_cpp._logger import set_verbose

        set_verbose(False)
        C.llama_backend_init()
        params = C.llama_model_default_params()
        params.n_gpu_layers, params.main_gpu = self._n_gpu_layers, self.spec.main_gpu
        params.load_mode = load_mode(C, self.spec.use_mmap)
        self.model = LlamaModel(path_model=str(self.path), params=params, verbose=False)
        self.ctx = C.llama_init_from_model(self.model.model, self._context_params())
        if not self.ctx:
            self.model.close()
            raise CaravanError(f"llama.cpp could not create a context of {self.spec.num_ctx} × {self.slots}")
        self.info = tokenizer_info(self.model)
        self.batcher = Batcher(self.ctx, self.model.vocab, slots=self.slots, n_batch=self._n_batch,
                               num_ctx=self.spec.num_ctx, reuse_prefix=self.reuse_prefix,
                               park_bytes=self.park_bytes)
        self.batcher.thread.start()

    @property
    def _n_batch(self) -> int:
        return max(self.spec.num_batch, self.slots)

    def _context_params(self) -> Any:
        """``Llama``'s thread defaults, one KV stream per slot, and the spec's flash attention and KV cache type."""
        from llama_cpp import llama_cpp as C

        params = C.llama_context_default_params()
        params.n_ctx = self.spec.num_ctx * self.slots
        params.n_batch = params.n_ubatch = self._n_batch
        params.n_seq_max, params.kv_unified = self.slots, False
        params.n_threads = self._n_threads or max(multiprocessing.cpu_count() // 2, 1)
        params.n_threads_batch = multiprocessing.cpu_count()
        params.flash_attn_type = flash_attn_type(C, self.spec)
        params.type_k = params.type_v = ggml_kv_type(C, self.spec)
        params.no_perf = True
        return params

    async def close(self) -> None:
        if self.batcher is not None:
            self.batcher.stop()
            await asyncio.to_thread(self.batcher.thread.join)
            self.batcher = None
        await asyncio.get_running_loop().run_in_executor(self._embed_thread, self._close_embedder)
        self._embed_thread.shutdown(wait=False)
        await asyncio.to_thread(self._free)

    def _free(self) -> None:
        from llama_cpp import llama_cpp as C

        if self.ctx:
            C.llama_free(self.ctx)
            self.ctx = None
        if self.model is not None:
            self.model.close()
            self.model = None

    # -- embeddings: LlamaEngine's separate embedding context, owned by a thread of its own ---------------
    async def embed(self, job: InferenceJob, cancel: threading.Event) -> Event:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._embed_thread, _guarded, self._embed, job)

    def _embed(self, job: InferenceJob) -> Event:
        started = time.perf_counter()
        if self._embedder is None:
            params = self._context_params()
            self._embedder = Embedder(self.model, self.spec.num_ctx, params.n_threads, params.n_threads_batch)
        vectors, count = self._embedder.embed(job.input, job.truncate)
        stats = {"prompt_eval_count": count, "prompt_eval_duration": int((time.perf_counter() - started) * 1e9)}
        return Event(t="done", done_reason="stop", embeddings=vectors, stats=stats)

    def _close_embedder(self) -> None:
        if self._embedder is not None:
            self._embedder.close()
            self._embedder = None

    # -- requests ------------------------------------------------------------------------------------------
    def stream(self, job: InferenceJob, cancel: threading.Event,
               first: FirstToken | None = None) -> AsyncIterator[Event]:
        """A short prompt is prepared and handed to the engine thread right here, in the caller's turn of the
        event loop, so the thread starts on it while the loop goes on; a long one is prepared on another thread
        once the events are first awaited."""
        if self.batcher is None:
            return _refused(CaravanError("the model is not loaded"))
        queue: asyncio.Queue[Item] = asyncio.Queue()
        if prompt_chars(job) > INLINE_PROMPT_CHARS:
            return self._prepare_then_stream(job, cancel, first, queue)
        try:
            req = self.request(job, cancel, asyncio.get_running_loop(), queue)
        except CaravanError as exc:
            return _refused(exc)
        except Exception as exc:  # anything else fails where the events are awaited, never in the caller's loop
            return _raising(exc)
        req.first = first
        self.batcher.submit(req)
        return _events(queue, cancel)

    async def _prepare_then_stream(self, job: InferenceJob, cancel: threading.Event, first: FirstToken | None,
                                   queue: asyncio.Queue[Item]) -> AsyncIterator[Event]:
        loop = asyncio.get_running_loop()
        try:
            req = await asyncio.to_thread(self.request, job, cancel, loop, queue)
        except CaravanError as exc:
            yield Event(t="err", status=exc.status, error=exc.message)
            return
        req.first = first
        assert self.batcher is not None
        self.batcher.submit(req)
        async for event in _events(queue, cancel):
            yield event

    def request(self, job: InferenceJob, cancel: threading.Event, loop: asyncio.AbstractEventLoop,
                queue: asyncio.Queue[Item]) -> Request:
        """Everything the engine thread needs, prepared on another thread: prompt tokens, sampler chain."""
        prompt = self.tokens(job)
        params = SamplingParams.from_options(job.options, self.spec.num_ctx)
        chain = new_chain(self.model.vocab, params, job_grammar(job), prompt)
        return Request(job=job, cancel=cancel, loop=loop, queue=queue, prompt=prompt, chain=chain,
                       limit=int(job.options.get("num_predict", -1)), stops=list(job.options.get("stop", [])))

    def tokens(self, job: InferenceJob) -> list[int]:
        """The prompt's tokens (``context`` first for generate), cut like ``LlamaEngine``'s to fit num_ctx."""
        text = build_prompt(job, self.info)
        tokens: list[int] = list(job.context or []) if job.op == "generate" else []
        tokens += self.model.tokenize(text.encode(), add_bos=not tokens, special=True)
        if not tokens:
            bos = self.model.token_bos()
            if bos < 0:
                raise BadRequest("the prompt is empty")
            tokens = [bos]
        return fit_context(tokens, self.spec.num_ctx, job)


def prompt_chars(job: InferenceJob) -> int:
    """Characters of text a request's prompt is built from (what templating and tokenizing cost scales with)."""
    text = len(job.prompt) + len(job.system or "") + len(job.suffix)
    return text + sum(len(str(m.get("content") or "")) for m in job.messages) + 16 * len(job.context or [])


def tokenizer_info(model: Any) -> TokenizerInfo:
    """What the Jinja chat template needs from the GGUF."""
    bos, eos = model.token_bos(), model.token_eos()
    return TokenizerInfo(
        chat_template=model.metadata().get("tokenizer.chat_template"),
        bos_token=model.token_get_text(bos) if bos >= 0 else "",
        eos_token=model.token_get_text(eos) if eos >= 0 else "",
    )


async def _events(queue: asyncio.Queue[Item], cancel: threading.Event) -> AsyncIterator[Event]:
    """What the engine thread delivers for one request, until its end."""
    try:
        while (item := await queue.get()) is not None:
            yield item
    finally:
        cancel.set()  # a consumer that stops early frees the slot at the next step


async def _refused(exc: CaravanError) -> AsyncIterator[Event]:
    yield Event(t="err", status=exc.status, error=exc.message)


async def _raising(exc: Exception) -> AsyncIterator[Event]:
    raise exc
    yield  # an async generator that fails when first awaited
