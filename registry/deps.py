"""FastAPI dependencies of the registry service."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from caravan.errors import BadRequest, NotFound
from caravan.names import ModelName
from registry.models import ModelView
from registry.store import Store


async def _store(request: Request) -> Store:  # async: a plain def would run in the thread pool
    store: Store = request.app.state.store
    return store


StoreDep = Annotated[Store, Depends(_store)]


def view_of(store: Store, raw_name: str) -> ModelView:
    """The stored model ``raw_name``; Ollama's ``model 'X' not found`` (normalised name) when absent."""
    try:
        name = ModelName.parse(raw_name)
    except BadRequest:
        raise NotFound(f"model '{raw_name}' not found") from None
    return ModelView(store, store.read_manifest(name))
