"""The host a supervisor is in a fleet: its name, where it listens for other machines, its key pair and the
clients it lets in. A supervisor on a single host (no `hosts:` in the config) has none and serves ipc:// only.

The ctl plane of a fleet host is a ROUTER bound on TCP as a CURVE server; its workers bind their data planes
on the same address, CURVE servers with the same keys and the same allow-list (protocol/curve.py). The
supervisor-worker control link stays on ipc://, inside the host.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

from protocol.curve import HOST_KEY_ENV, KeyPair, fingerprint, key_pair_from_file, public_key
from protocol.launch import CurveServer, tcp_host_of
from supervisor.config import Config

HOST_ENV = "MLX_SERVER_HOST"  # which of the config's hosts this supervisor is


@dataclass(frozen=True)
class Peer:
    """Another host of the same config, as this one calls it (ranks of a model sharded over hosts)."""

    name: str
    endpoint: str
    public_key: bytes  # Z85


@dataclass(frozen=True)
class Host:
    name: str
    endpoint: str  # where clients reach its ctl plane (the config's endpoint)
    bind: str  # what the ctl socket binds
    keys: KeyPair
    key_file: str  # the key pair's file, which its workers read
    allowed: list[bytes]  # Z85 public keys of the clients let in
    peers: dict[str, Peer] = field(default_factory=dict)  # the config's other hosts, by name

    @property
    def ctl_allowed(self) -> list[bytes]:
        """Who may call its ctl plane: the config's host_clients and its other hosts (their ranks' calls). The
        workers' data planes let in host_clients only."""
        return [*self.allowed, *(p.public_key for p in self.peers.values())]

    @property
    def data_address(self) -> str:
        """Where its workers bind their data planes (each on a port of the system's choosing)."""
        return tcp_host_of(self.bind)

    def worker_curve(self) -> CurveServer:
        return CurveServer(key_file=self.key_file, allowed_clients=[k.decode() for k in self.allowed])


def host_of(config: Config, key_file: str | None) -> Host | None:
    """The host `config` was loaded for, with its keys checked against the config; None on a single host.
    ValueError says what is missing or wrong."""
    spec = config.host
    if spec is None:
        if config.hosts:
            raise ValueError(
                f"the config lists hosts ({', '.join(config.hosts)}): say which one this is with --host or ${HOST_ENV}"
            )
        return None
    if not key_file:
        raise ValueError(f"host {spec.name} needs its key pair file: --key or ${HOST_KEY_ENV} (see `ctl keygen`)")
    keys = key_pair_from_file(key_file)
    expected = public_key(spec.public_key, config.base_dir)
    if keys.public != expected:
        raise ValueError(
            f"{key_file} is not host {spec.name}'s key pair: its public key (fingerprint {fingerprint(keys.public)}) "
            f"is not the one the config lists (fingerprint {fingerprint(expected)})"
        )
    allowed = [public_key(k, config.base_dir) for k in config.settings.host_clients]
    if not allowed:
        raise ValueError(f"host {spec.name}: the config's host_clients lists no key, so nobody could call this host")
    return Host(
        name=spec.name,
        endpoint=spec.endpoint,
        bind=spec.bind or spec.endpoint,
        keys=keys,
        key_file=os.path.abspath(os.path.expanduser(key_file)),
        allowed=allowed,
        peers={
            h.name: Peer(h.name, h.endpoint, public_key(h.public_key, config.base_dir))
            for h in config.hosts.values()
            if h.name != spec.name
        },
    )
