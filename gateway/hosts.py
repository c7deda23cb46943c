"""The hosts this gateway sends work to, each through its supervisor: one, this machine's over ipc:// (no `hosts:`
in the config), or a fleet's over TCP and CURVE.

In a fleet every host gets a Heartbeat about once a second (HOST_HEARTBEAT_SECONDS). A host is down when its
connection closes or refuses this gateway's key (at once), when it answers no heartbeat for
HOST_DOWN_AFTER_SECONDS, or when it speaks another protocol version; it is up again with its next answer.
Going down fails every call waiting on it and tells the worker pool, whose streams from that host end with
`worker_unavailable`. Nothing else is kept: what is loaded where is asked of the supervisors when it matters,
so a restarted gateway knows as much as before, and N gateways decide alike.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable

import zmq.asyncio

from gateway.config import GatewayConfig, GatewaySettings
from gateway.errors import APIError
from gateway.supervisor_client import HostDown, SupervisorClient
from protocol import PROTOCOL_VERSION, ErrorCode
from protocol.ctl import Heartbeat, HostAlive
from protocol.curve import KEY_FILE_ENV, SECRET_KEY_ENV, KeyPair, own_key_pair, public_key
from protocol.hosts import LOCAL

log = logging.getLogger("gateway.hosts")


class HostLink:
    """One host as this gateway sees it: its ctl client, whether it is up, and why not."""

    def __init__(self, client: SupervisorClient, name: str, server_key: bytes | None, own: KeyPair | None):
        self.client, self.name = client, name
        self.curve = (own, server_key) if server_key is not None else None  # for its workers' data planes too
        self.up: bool | None = None  # None: not heard from yet
        self.why_down = "not heard from yet"
        self.last_seen: float | None = None  # monotonic time of its last answer
        self.alive: HostAlive | None = None
        self.on_down: list[Callable[[HostLink, str], None]] = []
        client.on_lost = self.down

    @property
    def endpoint(self) -> str:
        return self.client.endpoint

    async def beat(self, timeout: float, down_after: float) -> None:
        try:
            alive = await self.client.call(lambda call_id: Heartbeat(call_id=call_id), timeout)
        except APIError as exc:
            silent = self.last_seen is None or time.monotonic() - self.last_seen >= down_after
            if exc.code == ErrorCode.PROTOCOL_MISMATCH or silent:
                self.down(exc.message)
            return
        if alive.protocol_version != PROTOCOL_VERSION or alive.host != self.name:
            who = f"host {alive.host!r} speaking protocol version {alive.protocol_version}"
            self.down(f"{self.endpoint} answers as {who}; expected host {self.name!r}, version {PROTOCOL_VERSION}")
            return
        self.last_seen, self.alive = time.monotonic(), alive
        if not self.up:
            log.info("host %s is up: supervisor pid %d at %s", self.name, alive.pid, self.endpoint)
            self.up = True

    def down(self, reason: str) -> None:
        """Mark it down (if it was not): waiting calls fail, the worker pool ends its streams."""
        if self.up is False:
            return
        self.up, self.why_down = False, reason
        log.warning("host %s is down: %s", self.name, reason)
        self.client.fail_pending(f"host {self.name} is down: {reason}")
        for listener in self.on_down:
            listener(self, reason)


def fleet_keys(config: GatewayConfig, environ) -> tuple[KeyPair | None, dict[str, bytes]]:
    """This gateway's key pair and each host's public key, for a fleet; ValueError says what is missing."""
    if not config.hosts:
        return None, {}
    own = own_key_pair(environ)
    if own is None:
        raise ValueError(
            f"the config lists hosts: this gateway needs its key pair (${KEY_FILE_ENV} or ${SECRET_KEY_ENV})"
        )
    return own, {h.name: public_key(h.public_key, config.base_dir) for h in config.hosts}


class Hosts:
    def __init__(
        self,
        ctx: zmq.asyncio.Context,
        config: GatewayConfig,
        settings: GatewaySettings,
        own: KeyPair | None = None,
        keys: dict[str, bytes] | None = None,
    ):
        """`own` and `keys` as fleet_keys gives them (for a fleet)."""
        self.settings = settings
        self.fleet = bool(config.hosts)
        if self.fleet:
            self.links = [
                HostLink(SupervisorClient(ctx, h.endpoint, (own, keys[h.name]), h.name), h.name, keys[h.name], own)
                for h in config.hosts
            ]
        else:
            self.links = [HostLink(SupervisorClient(ctx, settings.supervisor_endpoint), LOCAL, None, None)]
        self._heard = asyncio.Event()  # every host answered or failed its first heartbeat
        self._task = asyncio.create_task(self._heartbeats()) if self.fleet else None

    def home(self, name: str | None = None) -> HostLink:
        """The host `name`, else this machine's supervisor (a fleet's first host): where a store call goes."""
        return self.get(name) if name else self.links[0]

    def get(self, name: str) -> HostLink:
        for link in self.links:
            if link.name == name:
                return link
        known = ", ".join(link.name for link in self.links)
        raise APIError(ErrorCode.NOT_FOUND, f"no host {name!r} (hosts: {known})", param="host")

    async def up(self, exclude: set[str] = frozenset()) -> list[HostLink]:
        """The hosts up now (after the first round of heartbeats), but `exclude`; HostDown if there is none."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._heard.wait(), self.settings.host_down_after_seconds)
        links = [link for link in self.links if link.up and link.name not in exclude]
        if not links:
            why = "; ".join(f"{link.name}: {link.why_down}" for link in self.links if link.name not in exclude)
            raise HostDown(f"no host is up ({why})" if why else "no other host is up")
        return links

    async def ask_all(self, make_call, timeout: float) -> list[tuple[HostLink, object]]:
        """`make_call` to every host (in a fleet, every host up), with each one's reply or APIError."""
        links = self.links if not self.fleet else [link for link in self.links if link.up]

        async def ask(link: HostLink):
            try:
                return link, await link.client.call(make_call, timeout)
            except APIError as exc:
                return link, exc

        answers = dict(await asyncio.gather(*(ask(link) for link in links)))
        return [(link, answers[link] if link in answers else HostDown(link.why_down)) for link in self.links]

    async def _heartbeats(self) -> None:
        every, down_after = self.settings.host_heartbeat_seconds, self.settings.host_down_after_seconds
        while True:
            started = time.monotonic()
            await asyncio.gather(*(link.beat(min(every, down_after), down_after) for link in self.links))
            self._heard.set()
            await asyncio.sleep(max(0.0, every - (time.monotonic() - started)))

    def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
        for link in self.links:
            link.client.close()
