"""``GET /api/usage?from=YYYY-MM-DD&to=YYYY-MM-DD&user=&model=``: tokens and requests per day, user and model.

Admins see everyone (or ``user``); any other key sees only its own user's rows.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Query, Request

from caravan.settings import GatewaySettings
from gateway.auth import principal
from gateway.usage import UsageBook, date_range

router = APIRouter()


@router.get("/api/usage")
async def usage_report(
    request: Request,
    start: Annotated[str | None, Query(alias="from")] = None,
    end: Annotated[str | None, Query(alias="to")] = None,
    user: str | None = None,
    model: str | None = None,
) -> dict[str, Any]:
    who = principal()
    first, last = date_range(start, end)
    settings: GatewaySettings = request.app.state.service.settings
    book = UsageBook(request.app.state.scheduler.redis, request.app.state.usage_metrics,
                     settings.usage_retention_days)
    report = await book.report(first, last, user if who.is_admin else who.name, model)
    return report.dump()
