"""`python -m gateway` / `mlx-gateway`: serve the HTTP API with uvicorn (HOST and PORT from the environment).

mlx-gateway                      serve (TLS when a certificate and key are configured)
mlx-gateway create-key SERVICE   make a new key for a configured service and print it, once
mlx-gateway hash-key             read a key on stdin, print its sha256 for the config's key_sha256
mlx-gateway url                  print the URL the gateway serves (https when TLS is configured)
"""

from __future__ import annotations

import argparse
import hashlib
import logging
import sys
from pathlib import Path

import uvicorn

from gateway.auth import Service, new_key
from gateway.config import GatewaySettings, load_gateway_config
from gateway.logs import configure_logging
from protocol.launcher import exit_with_launcher

log = logging.getLogger("gateway")


def tls_files(settings: GatewaySettings, config) -> tuple[str | None, str | None]:
    """The certificate and key: TLS_CERTFILE / TLS_KEYFILE, else the config's gateway.tls."""
    certfile = settings.tls_certfile or config.path(config.transport.tls.certfile)
    keyfile = settings.tls_keyfile or config.path(config.transport.tls.keyfile)
    return certfile, keyfile


def url() -> int:
    settings = GatewaySettings.from_env()
    certfile, _ = tls_files(settings, load_gateway_config(settings.config_path))
    print(f"{'https' if certfile else 'http'}://{settings.host}:{settings.port}")
    return 0


def serve() -> int:
    settings = GatewaySettings.from_env()
    configure_logging(settings.log_level, settings.log_format)
    from gateway.app import RefusedToStart, create_app

    try:
        config = load_gateway_config(settings.config_path)
        app = create_app(settings, config)
    except (RefusedToStart, ValueError) as exc:
        log.error("refusing to start: %s", exc)
        return 2
    certfile, keyfile = tls_files(settings, config)
    if bool(certfile) != bool(keyfile):
        log.error("refusing to start: TLS needs both a certificate and a key (TLS_CERTFILE and TLS_KEYFILE)")
        return 2
    for path in filter(None, (certfile, keyfile)):
        if not Path(path).is_file():
            log.error("refusing to start: TLS file %s does not exist", path)
            return 2
    exit_with_launcher()  # SIGTERM (uvicorn's graceful stop) once whatever launched the stack is gone
    uvicorn.run(
        app,
        host=settings.host,
        port=settings.port,
        log_level=settings.log_level.lower(),
        log_config=None,  # uvicorn's loggers go through ours (JSON, with request ids)
        access_log=False,  # the gateway writes its own access log, without query strings
        timeout_graceful_shutdown=10,
        ssl_certfile=certfile,
        ssl_keyfile=keyfile,
    )
    return 0


def create_key(service_name: str, config_path: str | None) -> int:
    try:
        config = load_gateway_config(config_path)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    spec = config.services.get(service_name)
    if spec is None:
        known = ", ".join(sorted(config.services)) or "none"
        print(f"error: no service {service_name!r} in the config (configured: {known})", file=sys.stderr)
        return 1
    key = new_key(Service.from_spec(spec).key_prefix)
    digest = hashlib.sha256(key.encode()).hexdigest()
    print(key)
    print(
        f"\nThe key above is shown once and stored nowhere. Give it to the '{service_name}' service, then either\n"
        f"  add its hash to the config, under the service's key_sha256:  - {digest}\n"
        f"  or pass it in the environment:  API_KEYS={service_name}:<the key>"
        + (f"  (or {spec.key_env}=<the key>)" if spec.key_env else ""),
        file=sys.stderr,
    )
    return 0


def hash_key() -> int:
    key = sys.stdin.readline().strip()
    if not key:
        print("error: no key on stdin", file=sys.stderr)
        return 1
    print(hashlib.sha256(key.encode()).hexdigest())
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="mlx-gateway", description="MLX LLM Server gateway")
    sub = parser.add_subparsers(dest="command")
    sub.add_parser("serve", help="serve the HTTP API (the default)")
    create = sub.add_parser("create-key", help="create a key for a service and print it once")
    create.add_argument("service", help="a service name from the config's services")
    create.add_argument("--config", default=None, help="config file ($MLX_SERVER_CONFIG, else configs/models.yaml)")
    sub.add_parser("hash-key", help="print the sha256 of the key read from stdin")
    sub.add_parser("url", help="print the URL the gateway serves")
    args = parser.parse_args(argv)
    if args.command == "url":
        return url()
    if args.command == "create-key":
        return create_key(args.service, args.config)
    if args.command == "hash-key":
        return hash_key()
    return serve()


if __name__ == "__main__":
    sys.exit(main())
