"""An async client of another host's ctl plane, for this host's supervisor: a CURVE client with this host's own
key pair, checking the peer by the public key the config lists (the peer lets the config's hosts in). One DEALER
per call, as the operator's CtlClient: a call that gets no answer leaves nothing behind to resynchronise."""

from __future__ import annotations

import uuid

import zmq
import zmq.asyncio

from protocol import ErrorCode, encode
from protocol.ctl import CallFailed, reply_decoder
from protocol.curve import KeyPair, secure_client
from supervisor.host import Peer


class PeerError(RuntimeError):
    """The peer answered CallFailed, or did not answer (code worker_unavailable)."""

    def __init__(self, code: ErrorCode, message: str):
        super().__init__(message)
        self.code = code


class PeerClient:
    def __init__(self, peer: Peer, own: KeyPair, ctx: zmq.asyncio.Context | None = None):
        self.peer = peer
        self._own = own
        self._ctx = ctx or zmq.asyncio.Context.instance()
        self._decoder = reply_decoder()

    async def call(self, make_call, timeout: float):
        """Send `make_call(call_id=...)` and return the peer's reply; PeerError for a CallFailed or no answer."""
        call = make_call(call_id=uuid.uuid4().hex)
        sock = self._ctx.socket(zmq.DEALER)
        sock.setsockopt(zmq.LINGER, 0)
        secure_client(sock, self._own, self.peer.public_key)
        try:
            sock.connect(self.peer.endpoint)
            await sock.send(encode(call))
            if not await sock.poll(int(timeout * 1000)):
                raise PeerError(
                    ErrorCode.WORKER_UNAVAILABLE,
                    f"host {self.peer.name} ({self.peer.endpoint}) did not answer {type(call).__name__} "
                    f"within {timeout:.0f}s",
                )
            reply = self._decoder.decode(await sock.recv())
        finally:
            sock.close()
        if isinstance(reply, CallFailed):
            raise PeerError(reply.code, f"host {self.peer.name}: {reply.message}")
        return reply
