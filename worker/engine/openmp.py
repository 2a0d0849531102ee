"""How long llama.cpp's idle CPU threads spin before they sleep.

llama.cpp's CPU backend runs each graph on OpenMP threads (libgomp, as llama-cpp-python builds it with gcc).
Between two graphs libgomp keeps its idle threads spinning for ``GOMP_SPINCOUNT`` rounds, 300,000 by default:
≈ 5 ms of a core after every prompt evaluation on the machines we measured, just when the first token has to
get out through this process's event loop, Redis, the gateway and the client, which then wait for a core. A
short spin still covers the waits inside one graph (microseconds), so prompt evaluation keeps its speed
(``bench/README.md`` has the figures). libgomp reads the variable once, when llama.cpp's library is loaded, so
this runs before anything imports ``llama_cpp``; a value the operator set is kept.
"""

from __future__ import annotations

import os
from collections.abc import MutableMapping

SPIN_ROUNDS = 10_000  # ≈ 0.2 ms on a 2-core VM here; libgomp's own default is 300,000


def shorten_idle_spin(environ: MutableMapping[str, str] = os.environ) -> None:
    """Set ``GOMP_SPINCOUNT`` for llama.cpp's threads unless the environment already has it."""
    environ.setdefault("GOMP_SPINCOUNT", str(SPIN_ROUNDS))
