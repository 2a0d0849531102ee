"""``python -m gateway``: run the gateway (settings from the environment)."""

from __future__ import annotations

import logging

import uvicorn

from caravan.logs import setup_logging
from caravan.settings import GatewaySettings
from gateway import security
from gateway.app import create_app


def main() -> None:
    settings = GatewaySettings()
    setup_logging("gateway", settings.log_level, settings.log_json)
    log = logging.getLogger("gateway")
    log.info("starting gateway", extra={"settings": settings.redacted()})
    for warning in settings.warnings():
        log.warning(warning)
    security.startup_checks(settings)
    host, port = settings.bind
    uvicorn.run(create_app(settings), host=host, port=port, log_level="warning", access_log=False,
                timeout_keep_alive=settings.http_idle_timeout, **security.tls_options(settings))


if __name__ == "__main__":
    main()
