"""CURVE on ZeroMQ, for hosts that serve other machines: key pairs, both ends of a secured socket, and the
allow-list a server checks every connecting key against (ZAP, run by pyzmq's zmq.auth).

A host's supervisor and workers are CURVE servers with the host's key pair; gateways and operators are CURVE
clients with their own pair, and must know the host's public key. A client whose key is not allowed gets nothing:
ZAP refuses its handshake before any message is read, so it cannot list, load or unload anything. Public keys
are 40 characters of Z85 and may sit anywhere; a secret key stays in a 0600 file or in the environment, and is
never logged or put on a command line (a refused key is logged by a short fingerprint only).
"""

from __future__ import annotations

import hashlib
import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import zmq
import zmq.asyncio
import zmq.auth
from zmq.auth.asyncio import AsyncioAuthenticator
from zmq.auth.thread import ThreadAuthenticator
from zmq.utils import z85

# A client's own key pair (a gateway's, an operator's): a key file (`supervisor ctl keygen`'s NAME.key_secret), or
# the secret key itself. A host's supervisor reads its own from HOST_KEY_ENV (a file its workers read too), so
# a machine that runs both a host and a gateway holds the two apart.
KEY_FILE_ENV = "MLX_FLEET_KEY"
SECRET_KEY_ENV = "MLX_FLEET_SECRET_KEY"
HOST_KEY_ENV = "MLX_HOST_KEY"
Z85_KEY_LENGTH = 40
REFUSAL_LOG_SECONDS = 60.0  # a refused client reconnects every few hundred ms: one line per key per minute

log = logging.getLogger("curve")
# pyzmq's authenticator logs each client's key at debug level: keep it to warnings whatever LOG_LEVEL says.
_zap_log = logging.getLogger("curve.zap")
_zap_log.setLevel(logging.WARNING)


@dataclass(frozen=True)
class KeyPair:
    public: bytes  # Z85
    secret: bytes = field(repr=False)  # Z85; never printed, logged or passed on a command line


def is_z85_key(text: str) -> bool:
    if len(text) != Z85_KEY_LENGTH:
        return False
    try:
        z85.decode(text)
    except (ValueError, KeyError):
        return False
    return True


def public_key(value: str, base_dir: Path | None = None) -> bytes:
    """A public key given as its Z85 text or as a key file (relative to `base_dir`); ValueError if it is neither."""
    if is_z85_key(value):
        return value.encode()
    path = Path(value).expanduser()
    if not path.is_absolute() and base_dir is not None:
        path = base_dir / path
    try:
        public, _ = zmq.auth.load_certificate(path)
    except (OSError, ValueError) as exc:
        raise ValueError(f"{value!r} is neither a 40-character Z85 public key nor a readable key file: {exc}") from None
    return public


def key_pair_from_file(path: str | os.PathLike) -> KeyPair:
    try:
        public, secret = zmq.auth.load_certificate(Path(path).expanduser())
    except (OSError, ValueError) as exc:
        raise ValueError(f"cannot read the key pair in {path}: {exc}") from None
    if secret is None:
        raise ValueError(f"{path} holds a public key only: give the secret key file (NAME.key_secret)")
    return KeyPair(public, secret)


def own_key_pair(environ=os.environ) -> KeyPair | None:
    """A client's key pair from the environment: $MLX_FLEET_SECRET_KEY (Z85) or the file $MLX_FLEET_KEY."""
    secret = environ.get(SECRET_KEY_ENV)
    if secret:
        if not is_z85_key(secret):
            raise ValueError(f"{SECRET_KEY_ENV} is not a 40-character Z85 secret key")
        return KeyPair(zmq.curve_public(secret.encode()), secret.encode())
    path = environ.get(KEY_FILE_ENV)
    return key_pair_from_file(path) if path else None


def make_key_pair(directory: str | os.PathLike, name: str) -> tuple[Path, Path]:
    """Write NAME.key (public, 0644) and NAME.key_secret (0600) into `directory`; refuses to overwrite either."""
    directory = Path(directory).expanduser()
    public, secret = directory / f"{name}.key", directory / f"{name}.key_secret"
    for path in (public, secret):
        if path.exists():
            raise FileExistsError(f"{path} exists: keys are not overwritten (remove it first to replace it)")
    directory.mkdir(parents=True, exist_ok=True)
    previous = os.umask(0o077)  # the secret file is never readable by others, not even for a moment
    try:
        zmq.auth.create_certificates(directory, name)
    finally:
        os.umask(previous)
    os.chmod(secret, 0o600)
    os.chmod(public, 0o644)
    return public, secret


def fingerprint(key: bytes) -> str:
    """A short, one-way name for a public key, for log lines."""
    return hashlib.sha256(key).hexdigest()[:12]


def secure_client(sock: zmq.Socket, own: KeyPair, server_key: bytes) -> None:
    """Make `sock` (before connect) a CURVE client of the server whose public key is `server_key`."""
    sock.curve_secretkey, sock.curve_publickey, sock.curve_serverkey = own.secret, own.public, server_key


def secure_server(sock: zmq.Socket, own: KeyPair) -> None:
    """Make `sock` (before bind) a CURVE server with `own` keys; its context needs an AllowList started."""
    sock.curve_server = True
    sock.curve_secretkey, sock.curve_publickey = own.secret, own.public


class AllowList:
    """The ZAP handler of one ZeroMQ context: CURVE clients whose public key is listed get in; any other key,
    and any client without CURVE, is refused during the handshake (logged once a minute per key fingerprint)."""

    def __init__(self, ctx: zmq.Context, allowed: list[bytes], who: str):
        self._allowed = set(allowed)
        self._who = who  # "host a", for the log line
        self._logged: dict[str, float] = {}
        kind = AsyncioAuthenticator if isinstance(ctx, zmq.asyncio.Context) else ThreadAuthenticator
        self._auth = kind(ctx, log=_zap_log)
        self._auth.start()
        self._auth.configure_curve_callback(domain="*", credentials_provider=self)

    def callback(self, domain: str, key: bytes) -> bool:
        if key in self._allowed:
            return True
        fp, now = fingerprint(key), time.monotonic()
        if now - self._logged.get(fp, -REFUSAL_LOG_SECONDS) >= REFUSAL_LOG_SECONDS:
            self._logged[fp] = now
            log.warning("%s refused a client whose key (fingerprint %s) is not allowed", self._who, fp)
        return False

    def stop(self) -> None:
        self._auth.stop()
