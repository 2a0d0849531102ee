"""Liveness and version: GET|HEAD / and /api/version, /healthz."""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import PlainTextResponse

from caravan import OLLAMA_COMPAT_VERSION

router = APIRouter()


@router.api_route("/", methods=["GET", "HEAD"], response_class=PlainTextResponse)
async def root() -> str:
    return "Ollama is running"


@router.api_route("/api/version", methods=["GET", "HEAD"])
async def version() -> dict[str, str]:
    return {"version": OLLAMA_COMPAT_VERSION}


@router.get("/healthz")
async def healthz() -> dict[str, str]:
    return {"status": "ok"}
