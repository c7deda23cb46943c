"""The gateway's part of the config file: `services:` (who may call, with which keys, for which models, how
often), `gateway:` (transport settings) and, for a fleet, `hosts:` (protocol/hosts.py: where each host's
supervisor is and its public key). The supervisor reads the same file for the models.

Keys never appear in clear in the file: a service lists the sha256 of each of its keys, or names an
environment variable that holds them. `API_KEYS` (comma-separated `service:key` pairs) adds keys without
touching the file.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Annotated, Literal

import msgspec
import yaml
from msgspec import Meta

from protocol.hosts import HostSpec, check_hosts

DEFAULT_CONFIG = "configs/models.yaml"
SHA256_HEX = re.compile(r"^(?:sha256:)?([0-9a-f]{64})$")
SERVICE_NAME = re.compile(r"^[a-z0-9][a-z0-9_-]{0,63}$")


class RateLimits(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    requests_per_minute: int | None = None  # None: unlimited
    tokens_per_minute: int | None = None  # prompt + completion tokens


class ServiceLimits(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """How much of the server one service may hold at once (per gateway process), so no service fills a worker's
    queue for the others: past `max_in_flight` its requests wait, up to `max_queued` of them; past that, 429."""

    max_in_flight: Annotated[int, Meta(ge=1)] = 32  # its generation requests being answered at once
    max_queued: Annotated[int, Meta(ge=0)] = 64  # more of them waiting for a slot
    max_tokens: Annotated[int, Meta(ge=1)] | None = None  # a ceiling on the tokens one answer generates


class ServiceSpec(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    name: str
    key_prefix: str | None = None  # default: "<name>_"; every key of the service starts with it
    default_model: str | None = None  # for requests that name no model; default: the server's default
    allowed_models: Literal["any"] | list[str] = "any"  # ids or aliases
    rate_limits: RateLimits = RateLimits()
    limits: ServiceLimits = ServiceLimits()
    admin: bool = False  # may load and unload models
    key_sha256: list[str] = []  # sha256 (hex) of each key
    key_env: str | None = None  # an environment variable holding keys (comma-separated)
    # Where chat completions put a reasoning model's thinking: `reasoning_content`, `reasoning`, or both.
    reasoning_field: Literal["reasoning_content", "reasoning", "both"] = "both"

    def __post_init__(self) -> None:
        if not SERVICE_NAME.match(self.name):
            raise ValueError(f"service name {self.name!r}: lowercase letters, digits, '_' and '-' only")
        for digest in self.key_sha256:
            if not SHA256_HEX.match(digest):
                raise ValueError(f"service {self.name!r}: key_sha256 entries are 64 hex digits (sha256 of the key)")


class TLSSettings(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    certfile: str | None = None
    keyfile: str | None = None


class SessionSettings(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    ttl_seconds: int = 86400  # a session unused this long expires (every use renews it)
    max_per_service: Annotated[int, Meta(ge=1)] = 1000  # in memory (no Redis): more evict the least recently used


class ResponseSettings(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    ttl_seconds: int = 30 * 86400  # a stored response (POST /v1/responses with store) is kept this long


class BatchSettings(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    max_in_flight: int = 8  # batch lines one gateway runs at once, all batches together


class TransportSettings(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    cors_origins: list[str] = []  # browser origins allowed to call the API; empty: no CORS headers at all
    trusted_hosts: list[str] = msgspec.field(
        default_factory=lambda: ["*"]
    )  # Host headers accepted ("*.example.com" matches subdomains)
    max_body_bytes: int = 32 * 1024 * 1024  # larger bodies get 413; room for a 20 MiB image as base64
    # Generation requests this gateway answers at once, all services together, and how many more may wait; past
    # that, 503 (each service's own limits come first: services[].limits).
    max_in_flight: Annotated[int, Meta(ge=1)] = 256
    max_queued: Annotated[int, Meta(ge=0)] = 1024
    token_ttl_seconds: int = 900  # lifetime of the JWTs POST /api/v1/auth/token issues
    # An environment variable holding the keys a scrape of /metrics must present (comma-separated; an admin
    # service's key works too). None: /metrics is open, as a Prometheus scrape on a private port expects.
    metrics_key: str | None = None
    tls: TLSSettings = TLSSettings()
    sessions: SessionSettings = SessionSettings()
    responses: ResponseSettings = ResponseSettings()
    batches: BatchSettings = BatchSettings()


class _File(msgspec.Struct, kw_only=True):
    """The keys of the shared config file the gateway reads; the models are the supervisor's."""

    services: list[ServiceSpec] = []
    gateway: TransportSettings = TransportSettings()
    hosts: list[HostSpec] = []


class GatewayConfig:
    def __init__(
        self,
        services: list[ServiceSpec],
        transport: TransportSettings,
        base_dir: Path,
        hosts: list[HostSpec] | None = None,
    ):
        self.services = {s.name: s for s in services}
        if len(self.services) != len(services):
            raise ValueError("a service name is used twice in the config")
        self.transport = transport
        self.base_dir = base_dir
        self.hosts = hosts or []  # none: this machine's supervisor alone, over ipc://
        check_hosts(self.hosts)

    def path(self, value: str | None) -> str | None:
        """A file named in the config: relative to the config file's directory, ~ expanded."""
        if not value:
            return None
        path = Path(value).expanduser()
        return str(path if path.is_absolute() else self.base_dir / path)


def load_gateway_config(path: str | os.PathLike | None = None) -> GatewayConfig:
    """The config file's `services:` and `gateway:` sections ($MLX_SERVER_CONFIG, else configs/models.yaml).
    A missing file means no services and default settings."""
    path = Path(path or os.environ.get("MLX_SERVER_CONFIG") or DEFAULT_CONFIG)
    if not path.exists():
        return GatewayConfig([], TransportSettings(), Path.cwd())
    try:
        raw = yaml.safe_load(path.read_text()) or {}
        if not isinstance(raw, dict):
            raise ValueError("the config is not a mapping")
        parsed = msgspec.convert({k: raw[k] for k in ("services", "gateway", "hosts") if k in raw}, _File)
        return GatewayConfig(parsed.services, parsed.gateway, path.parent.resolve(), parsed.hosts)
    except (OSError, yaml.YAMLError, msgspec.ValidationError, ValueError) as exc:
        raise ValueError(f"{path}: {exc}") from exc
