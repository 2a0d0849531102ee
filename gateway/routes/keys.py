"""API keys (admins only; docs/security.md): ``POST /api/keys``, ``GET /api/keys``, ``DELETE /api/keys/{id}``.

The guard already refused non-admins; ``require_admin`` repeats the check so these routes stay safe on
their own. The created key's secret is in the answer and nowhere else (not in any log).
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request

from caravan.asgi import parse_body
from caravan.errors import Forbidden
from caravan.wire.auth import KeyCreate
from gateway.auth import KeyStore, Principal, principal

router = APIRouter()


async def require_admin() -> Principal:
    who = principal()
    if not who.is_admin:
        raise Forbidden("forbidden: managing API keys needs an admin API key")
    return who


async def _store(request: Request) -> KeyStore:
    return KeyStore(request.app.state.scheduler.redis)


AdminDep = Annotated[Principal, Depends(require_admin)]
StoreDep = Annotated[KeyStore, Depends(_store)]


@router.post("/api/keys")
async def create_key(request: Request, _: AdminDep, store: StoreDep) -> dict[str, Any]:
    spec = parse_body(await request.body(), KeyCreate)
    created = await store.create(spec)
    return created.dump()


@router.get("/api/keys")
async def list_keys(_: AdminDep, store: StoreDep) -> dict[str, Any]:
    return {"keys": [info.dump() for info in await store.list()]}


@router.delete("/api/keys/{ident}")
async def revoke_key(ident: str, _: AdminDep, store: StoreDep) -> dict[str, Any]:
    revoked = await store.revoke(ident)
    return {"revoked": True, **revoked.dump()}
