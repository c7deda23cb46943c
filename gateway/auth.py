"""Who is calling: service API keys (sha256 hashes or the environment), JWTs issued for them, and the keyless
development mode. The middleware at the bottom puts the caller's Service on `request.state.service`.

A key is compared by its sha256 against every configured hash with `hmac.compare_digest`, visiting them all,
so the time taken does not depend on which key (or how much of one) matched. Keys start with their service's
prefix (`vista_...`), so an operator can tell them apart; the hash, not the prefix, decides who is calling.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import logging
import secrets
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass

import jwt

from gateway.config import SHA256_HEX, GatewayConfig, ServiceLimits, ServiceSpec
from gateway.errors import APIError
from protocol import ErrorCode

log = logging.getLogger("gateway.auth")

ISSUER = "mlx-llm-server"
MIN_JWT_SECRET = 32  # characters; HS256 wants at least 256 bits of key


DEFAULT_LIMITS = ServiceLimits()


@dataclass(frozen=True)
class Service:
    """A caller. `request.state.service` holds one on every authenticated request."""

    name: str
    admin: bool = False
    default_model: str | None = None  # None: the server's default model
    allowed_models: tuple[str, ...] | None = None  # ids or aliases; None: any model
    requests_per_minute: int | None = None
    tokens_per_minute: int | None = None
    key_prefix: str = ""
    reasoning_field: str = "both"  # chat completions' name for thinking: reasoning_content, reasoning or both
    limits: ServiceLimits = DEFAULT_LIMITS  # requests in flight and queued, tokens per answer

    @classmethod
    def from_spec(cls, spec: ServiceSpec) -> Service:
        allowed = None if spec.allowed_models == "any" else tuple(spec.allowed_models)
        return cls(
            name=spec.name,
            admin=spec.admin,
            default_model=spec.default_model,
            allowed_models=allowed,
            requests_per_minute=spec.rate_limits.requests_per_minute,
            tokens_per_minute=spec.rate_limits.tokens_per_minute,
            key_prefix=spec.key_prefix if spec.key_prefix is not None else f"{spec.name}_",
            reasoning_field=spec.reasoning_field,
            limits=spec.limits,
        )


# Keyless development mode: every request acts as this service (allowed only on a loopback address).
LOCAL = Service(name="local", admin=True)


def key_digest(key: str) -> bytes:
    return hashlib.sha256(key.encode()).digest()


def new_key(prefix: str) -> str:
    """A fresh key: the service's prefix and 256 random bits."""
    return prefix + secrets.token_urlsafe(32)


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


class KeyRing:
    """Every service and the sha256 of each of its keys: from the config's hashes, the variables the config
    names (`key_env`), and `API_KEYS` (`service:key,service:key`)."""

    def __init__(self, config: GatewayConfig, environ: Mapping[str, str]):
        self.services = {name: Service.from_spec(spec) for name, spec in config.services.items()}
        self._keys: list[tuple[bytes, Service]] = []
        for name, spec in config.services.items():
            service = self.services[name]
            for digest in spec.key_sha256:
                self._keys.append((bytes.fromhex(SHA256_HEX.match(digest).group(1)), service))
            if spec.key_env:
                value = environ.get(spec.key_env, "")
                if not value.strip():
                    # Fail closed: starting without them could fall back to keyless (admin) development mode.
                    raise ValueError(
                        f"service {name!r}: its key_env variable {spec.key_env} is unset or empty; set it to the "
                        "service's keys (comma-separated) or remove key_env from the service in the config"
                    )
                for key in filter(None, (k.strip() for k in value.split(","))):
                    self._add(service, key, spec.key_env)
        for pair in filter(None, (p.strip() for p in environ.get("API_KEYS", "").split(","))):
            name, sep, key = pair.partition(":")
            if not sep or not key:
                raise ValueError("API_KEYS: expected comma-separated service:key pairs")
            if name not in self.services:
                known = ", ".join(sorted(self.services)) or "none configured"
                raise ValueError(f"API_KEYS names the service {name!r}, which the config does not list ({known})")
            self._add(self.services[name], key, "API_KEYS")

    def _add(self, service: Service, key: str, origin: str) -> None:
        if not key.startswith(service.key_prefix):
            # Only the prefix is named: the key itself must never reach a log or an error message.
            raise ValueError(f"{origin}: a key for service {service.name!r} must start with {service.key_prefix!r}")
        self._keys.append((key_digest(key), service))

    @property
    def keyless(self) -> bool:
        return not self._keys

    def lookup(self, key: str) -> tuple[Service, bytes] | None:
        """The service a key belongs to (and the key's digest), or None. Constant time in the key."""
        digest = key_digest(key)
        found = None
        for stored, service in self._keys:
            if hmac.compare_digest(stored, digest):
                found = service
        return (found, digest) if found is not None else None

    def holds(self, service: Service, fingerprint: str) -> bool:
        """Whether a key with this fingerprint still belongs to `service` (a token dies with its key)."""
        return any(s is service and hmac.compare_digest(_fingerprint(d), fingerprint) for d, s in self._keys)


def _fingerprint(digest: bytes) -> str:
    return digest.hex()[:16]


class TokenIssuer:
    """HS256 JWTs that stand for a service key: same service, same rights, until they expire or the key
    they were issued for is removed. Off unless JWT_SECRET is set."""

    def __init__(self, secret: str | None, ttl_seconds: int, keyring: KeyRing):
        if secret is not None and len(secret) < MIN_JWT_SECRET:
            raise ValueError(f"JWT_SECRET must be at least {MIN_JWT_SECRET} characters")
        self._secret = secret
        self.ttl = ttl_seconds
        self._keyring = keyring

    @property
    def enabled(self) -> bool:
        return self._secret is not None

    def issue(self, service: Service, digest: bytes, ttl: int | None = None) -> tuple[str, int]:
        ttl = min(ttl or self.ttl, self.ttl)
        now = int(time.time())
        claims = {
            "iss": ISSUER,
            "sub": service.name,
            "iat": now,
            "exp": now + ttl,
            "jti": uuid.uuid4().hex,
            "kfp": _fingerprint(digest),
        }
        return jwt.encode(claims, self._secret, algorithm="HS256"), ttl

    def verify(self, token: str) -> Service:
        try:
            claims = jwt.decode(
                token,
                self._secret,
                algorithms=["HS256"],
                issuer=ISSUER,
                options={"require": ["exp", "iat", "sub", "iss", "kfp"]},
            )
        except jwt.ExpiredSignatureError:
            raise _unauthorized("The token has expired; exchange the service key for a new one") from None
        except jwt.PyJWTError:
            raise _unauthorized("The token is invalid") from None
        service = self._keyring.services.get(claims["sub"])
        if service is None or not self._keyring.holds(service, str(claims["kfp"])):
            raise _unauthorized("The token was issued for a key that is no longer valid")
        return service


def _unauthorized(message: str) -> APIError:
    return APIError(ErrorCode.INVALID_API_KEY, message)


def _looks_like_jwt(credential: str) -> bool:
    return credential.startswith("eyJ") and credential.count(".") == 2


def credential_of(headers: Mapping[str, str]) -> str | None:
    """The key or token a request carries: `Authorization: Bearer <it>`, else `x-api-key: <it>` (the
    Anthropic SDK's header)."""
    authorization = headers.get("authorization", "")
    scheme, _, value = authorization.strip().partition(" ")
    if scheme.lower() == "bearer" and value.strip():
        return value.strip()
    api_key = headers.get("x-api-key", "").strip()
    return api_key or None


class Authenticator:
    def __init__(self, keyring: KeyRing, tokens: TokenIssuer):
        self.keyring = keyring
        self.tokens = tokens

    def authenticate(self, headers: Mapping[str, str]) -> tuple[Service, bytes | None]:
        """The calling service, and the digest of its key (None for a token or keyless mode); else a 401."""
        if self.keyring.keyless:
            return LOCAL, None
        credential = credential_of(headers)
        if credential is None:
            raise _unauthorized(
                "Missing API key: send it as 'Authorization: Bearer <key>' or in the 'x-api-key' header"
            )
        if self.tokens.enabled and _looks_like_jwt(credential):
            return self.tokens.verify(credential), None
        found = self.keyring.lookup(credential)
        if found is None:
            raise _unauthorized("Invalid API key")
        return found

    def is_admin(self, headers: Mapping[str, str]) -> bool:
        """Whether a request on a public path (readiness, /metrics) carries an admin service's key or token
        (keyless mode: always). A missing or wrong credential is no error there: the answer only says less."""
        try:
            return self.authenticate(headers)[0].admin
        except APIError:
            return False


class MetricsKeys:
    """`gateway.metrics_key`: the variable holding the keys a scrape of /metrics presents. With it configured,
    /metrics answers that key or an admin service's (in keyless development mode every caller is the admin)."""

    def __init__(self, variable: str | None, environ: Mapping[str, str], authenticator: Authenticator):
        self.required = variable is not None
        self._authenticator = authenticator
        keys = [k.strip() for k in environ.get(variable, "").split(",") if k.strip()] if variable else []
        if self.required and not keys:
            raise ValueError(f"gateway.metrics_key names {variable}, which is unset or empty (fail closed)")
        self._digests = [key_digest(k) for k in keys]

    def admit(self, headers: Mapping[str, str]) -> None:
        """Returns if the scrape may read /metrics; else a 401."""
        if not self.required:
            return
        credential = credential_of(headers)
        if credential is not None:
            digest = key_digest(credential)
            if sum(hmac.compare_digest(d, digest) for d in self._digests):  # visits every key: constant time
                return
        if self._authenticator.is_admin(headers):
            return
        raise _unauthorized("/metrics needs the metrics key (gateway.metrics_key) or an admin service's key")


def require_admin(request, action: str = "manage models") -> Service:
    """For operator endpoints: the caller's service must be marked `admin: true` (keyless mode is)."""
    service: Service = request.state.service
    if not service.admin:
        raise APIError(ErrorCode.PERMISSION_DENIED, f"The service '{service.name}' may not {action}")
    return service


def route_model(service: Service | None, model: str | None) -> tuple[str, list[str] | None]:
    """The model name a caller asks for, after its service's default, and the models the service may use
    (resolved and checked by the supervisor, where aliases are resolved)."""
    if service is None:
        return model or "", None
    allowed = list(service.allowed_models) if service.allowed_models is not None else None
    return model or service.default_model or "", allowed
