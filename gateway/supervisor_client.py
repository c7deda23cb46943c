"""The gateway's asyncio client of the supervisor's ctl socket: one DEALER, one future per call_id."""

from __future__ import annotations

import asyncio
import logging
import uuid

import zmq
import zmq.asyncio

from gateway.errors import APIError
from protocol import DecodeError, ErrorCode, encode
from protocol.ctl import CallFailed, reply_decoder

log = logging.getLogger("gateway.supervisor")


class SupervisorClient:
    def __init__(self, ctx: zmq.asyncio.Context, endpoint: str):
        self.endpoint = endpoint
        self._sock = ctx.socket(zmq.DEALER)
        self._sock.setsockopt(zmq.LINGER, 0)
        self._sock.connect(endpoint)
        self._pending: dict[str, asyncio.Future] = {}
        self._reader = asyncio.create_task(self._read())

    async def call(self, make_call, timeout: float):
        """Send `make_call(call_id=...)` and return the reply; CallFailed and silence become APIErrors."""
        call_id = uuid.uuid4().hex
        future = asyncio.get_running_loop().create_future()
        self._pending[call_id] = future
        try:
            await self._sock.send(encode(make_call(call_id=call_id)))
            reply = await asyncio.wait_for(future, timeout)
        except TimeoutError:
            raise APIError(
                ErrorCode.WORKER_UNAVAILABLE, f"the supervisor did not answer within {timeout:.0f}s", status=503
            ) from None
        finally:
            self._pending.pop(call_id, None)
        if isinstance(reply, CallFailed):
            raise APIError.from_event(reply)
        return reply

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

    def close(self) -> None:
        self._reader.cancel()
        self._sock.close()
