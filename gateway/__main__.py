"""`python -m gateway` / `mlx-gateway`: serve the HTTP API with uvicorn (HOST and PORT from the environment)."""

from __future__ import annotations

import logging

import uvicorn

from gateway.app import create_app
from gateway.settings import GatewaySettings


def main() -> None:
    settings = GatewaySettings.from_env()
    logging.basicConfig(level=settings.log_level, format="%(asctime)s gateway %(levelname)s %(message)s")
    uvicorn.run(
        create_app(settings),
        host=settings.host,
        port=settings.port,
        log_level=settings.log_level.lower(),
        timeout_graceful_shutdown=10,
    )


if __name__ == "__main__":
    main()
