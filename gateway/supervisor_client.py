"""The gateway's asyncio client of one supervisor's ctl socket: one DEALER, one future per call_id.

This machine's supervisor is reached over ipc://; a fleet's host over TCP as a CURVE client. Calls are never
queued for a supervisor that is not connected (ZMQ_IMMEDIATE): a call made while a host is gone must not reach
it when it returns, long after its caller gave up. A socket monitor sees the connection drop (the supervisor
died) or the handshake refused (a wrong key), and fails every call waiting on it at once with HostDown.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Callable

import zmq
import zmq.asyncio
from zmq.utils.monitor import parse_monitor_message

from gateway.errors import APIError
from protocol import DecodeError, ErrorCode, encode
from protocol.ctl import CallFailed, reply_decoder
from protocol.curve import KeyPair, secure_client

log = logging.getLogger("gateway.supervisor")

_WATCHED = {
    zmq.EVENT_DISCONNECTED: "its connection closed",
    zmq.EVENT_HANDSHAKE_FAILED_AUTH: "it refused this gateway's key (is it in the config's host_clients?)",
    zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL: "the CURVE handshake failed (is its public key in `hosts:` right?)",
}


class HostDown(APIError):
    """The supervisor cannot answer: its connection closed, it refused us, or the gateway marked its host down.
    A request may go to another host."""

    def __init__(self, message: str):
        super().__init__(ErrorCode.WORKER_UNAVAILABLE, message, status=503)


class SupervisorClient:
    def __init__(
        self,
        ctx: zmq.asyncio.Context,
        endpoint: str,
        curve: tuple[KeyPair, bytes] | None = None,
        name: str = "",
    ):
        self.endpoint = endpoint
        self.name = name  # the host's, in a fleet
        self.on_lost: Callable[[str], None] | None = None  # told why, when the connection drops or is refused
        self._sock = ctx.socket(zmq.DEALER)
        self._sock.setsockopt(zmq.LINGER, 0)
        self._sock.setsockopt(zmq.IMMEDIATE, 1)
        if curve is not None:
            secure_client(self._sock, *curve)
        self._monitor = self._sock.get_monitor_socket(sum(_WATCHED))
        self._sock.connect(endpoint)
        self._pending: dict[str, asyncio.Future] = {}
        self._tasks = [asyncio.create_task(self._read()), asyncio.create_task(self._watch())]

    async def call(self, make_call, timeout: float):
        """Send `make_call(call_id=...)` and return the reply; CallFailed and silence become APIErrors (silence,
        or a lost connection, a HostDown)."""
        call_id = uuid.uuid4().hex
        future = asyncio.get_running_loop().create_future()
        self._pending[call_id] = future
        try:
            async with asyncio.timeout(timeout):
                await self._sock.send(encode(make_call(call_id=call_id)))
                reply = await future
        except TimeoutError:
            who = f"host {self.name}'s supervisor" if self.name else "the supervisor"
            raise HostDown(f"{who} did not answer within {timeout:.0f}s") from None
        finally:
            self._pending.pop(call_id, None)
        if isinstance(reply, CallFailed):
            raise APIError.from_event(reply)
        return reply

    def fail_pending(self, reason: str) -> None:
        """Every call waiting for an answer fails now with HostDown(reason)."""
        for future in self._pending.values():
            if not future.done():
                future.set_exception(HostDown(reason))

    async def _read(self) -> None:
        decoder = reply_decoder()
        while True:
            frames = await self._sock.recv_multipart()
            if len(frames) != 1:  # a reply is one frame: anything else is dropped whole, not read part by part
                log.error("malformed message from the supervisor dropped: %d frames", len(frames))
                continue
            try:
                reply = decoder.decode(frames[0])
            except DecodeError as exc:
                log.error("malformed reply from the supervisor ignored: %s", exc)
                continue
            future = self._pending.get(reply.call_id)
            if future is not None and not future.done():
                future.set_result(reply)

    async def _watch(self) -> None:
        while True:
            reason = _WATCHED[parse_monitor_message(await self._monitor.recv_multipart())["event"]]
            self.fail_pending(f"{f'host {self.name}' if self.name else 'the supervisor'}: {reason}")
            if self.on_lost is not None:
                self.on_lost(reason)

    def close(self) -> None:
        for task in self._tasks:
            task.cancel()
        self._sock.disable_monitor()
        self._monitor.close()
        self._sock.close()
