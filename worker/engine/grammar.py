"""A job's grammar for constrained decoding, checked against the model's vocabulary before use.

The gateway converted and validated ``format`` already (``caravan.grammar``) and sends the GBNF in
``job.grammar``; a job without it (an older gateway) is converted here. llama.cpp's grammar sampler returns
NULL for GBNF it cannot parse, and a NULL in a sampler chain crashes the process, so it is tried first.
"""

from __future__ import annotations

from typing import Any

from caravan.errors import BadRequest
from caravan.grammar import grammar_for
from caravan.queue import InferenceJob


def job_grammar(job: InferenceJob) -> str | None:
    """The GBNF text that constrains ``job``'s output, or None."""
    return job.grammar if job.grammar else grammar_for(job.format)


def check_grammar(vocab: Any, gbnf: str) -> None:
    """Raise a 400 when llama.cpp cannot parse ``gbnf`` for this vocabulary."""
    from llama_cpp import llama_cpp as C

    sampler = C.llama_sampler_init_grammar(vocab, gbnf.encode(), b"root")
    if not sampler:
        raise BadRequest("invalid JSON schema in format: llama.cpp could not parse the grammar")
    C.llama_sampler_free(sampler)
