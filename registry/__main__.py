"""``python -m registry``: run the registry service (settings from the environment)."""

from __future__ import annotations

import logging

import uvicorn

from caravan.logs import setup_logging
from caravan.settings import RegistrySettings
from registry.app import create_app


def main() -> None:
    settings = RegistrySettings()
    setup_logging("registry", settings.log_level, settings.log_json)
    logging.getLogger(__name__).info("starting registry", extra={"settings": settings.redacted()})
    host, port = settings.bind
    uvicorn.run(create_app(settings), host=host, port=port, log_level="warning", access_log=False)


if __name__ == "__main__":
    main()
