"""The one place errors become HTTP responses, shared by every service's app (Starlette level only).

``CaravanError`` → its status + ``{"error": message}``; unknown paths → Ollama's ``404 page not found``
text; wrong methods → ``405 method not allowed``; anything unexpected → 500 ``{"error": ...}``, logged,
never a traceback to the client.
"""

from __future__ import annotations

import json
import logging
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response

from caravan.errors import BadRequest, CaravanError, error_body

log = logging.getLogger(__name__)
M = TypeVar("M", bound=BaseModel)


def error_response(exc: CaravanError) -> JSONResponse:
    return JSONResponse(error_body(exc), status_code=exc.status, headers=exc.headers)


async def _caravan_error(_: Request, exc: Exception) -> Response:
    assert isinstance(exc, CaravanError)
    return error_response(exc)


async def _http_error(_: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    if exc.status_code == 404:
        return PlainTextResponse("404 page not found", status_code=404)
    if exc.status_code == 405:
        return PlainTextResponse("405 method not allowed", status_code=405)
    return JSONResponse({"error": str(exc.detail)}, status_code=exc.status_code)


async def _unexpected(_: Request, exc: Exception) -> Response:
    log.exception("unhandled error", exc_info=exc)
    return JSONResponse({"error": f"internal error: {exc}"}, status_code=500)


def install_error_handlers(app: Starlette) -> None:
    """Map the exception tree (and Starlette's own 404/405) onto Ollama's bodies."""
    app.add_exception_handler(CaravanError, _caravan_error)
    app.add_exception_handler(HTTPException, _http_error)
    app.add_exception_handler(Exception, _unexpected)


def _validation_message(exc: ValidationError) -> str:
    first = exc.errors()[0]
    where = ".".join(str(part) for part in first.get("loc", ()))
    return f'invalid value for "{where}": {first.get("msg", "invalid")}' if where else str(first.get("msg"))


def parse_json(raw: bytes) -> Any:
    """Decode a request body as Ollama does: empty → missing body, bad JSON → 400 with the parser's text."""
    if not raw.strip():
        raise BadRequest("missing request body")
    try:
        return json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise BadRequest(f"invalid JSON: {exc}") from None


def parse_body(raw: bytes, model: type[M]) -> M:
    """Decode and validate a JSON body into ``model``; every failure is a 400 naming the field."""
    data = parse_json(raw)
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise BadRequest(f"json: cannot unmarshal {type(data).__name__} into Go value of type api.{model.__name__}")
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise BadRequest(_validation_message(exc)) from None
