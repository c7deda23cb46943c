"""The worker's data socket: requests (generate, embed, rerank) and aborts in from gateways, events back out to
the gateway that asked.

The main thread binds it (the Hello names its endpoint, a TCP port of the system's choosing included) and hands
it to the generation thread, which alone uses it from then on: it reads between two steps, and after each step
sends what the step made, one message per gateway with a frame per event. A token therefore crosses no thread
inside the worker, and a step of eight streams wakes ZeroMQ's I/O threads and the gateway once, not eight times:
on a host whose cores llama.cpp keeps busy, each wake-up is taken from its compute. On a host serving other
machines the socket is a CURVE server that lets in only the allowed gateways' keys. A malformed or wrong-length
message is answered or dropped with a log line here; it never reaches the engine.
"""

from __future__ import annotations

import logging

import zmq

from protocol import DecodeError, ErrorCode, encode, salvage_id
from protocol.curve import AllowList, key_pair_from_file, secure_server
from protocol.generation import TERMINAL, Abort, failure, worker_inbound_decoder
from protocol.launch import CurveServer
from protocol.run_dir import bind_private

log = logging.getLogger("worker.data")

# Messages taken in one read: a flood of requests cannot keep the engine from its next step.
READ_LIMIT = 1024


class DataPlane:
    def __init__(self, ctx: zmq.Context, endpoint: str, curve: CurveServer | None, model_id: str):
        self._sock = ctx.socket(zmq.ROUTER)
        self._sock.setsockopt(zmq.LINGER, 1000)  # the last events (shutdown errors) still go out
        self._allow = None
        if curve is not None:
            allowed = [key.encode() for key in curve.allowed_clients]
            self._allow = AllowList(ctx, allowed, f"worker {model_id}")
            secure_server(self._sock, key_pair_from_file(curve.key_file))
        bind_private(self._sock, endpoint)
        self.endpoint = self._sock.getsockopt_string(zmq.LAST_ENDPOINT)
        self.fd = self._sock.FD  # readable when the socket may have something to read (ZeroMQ's signal)
        self.curve = self._allow is not None
        self._decoder = worker_inbound_decoder()
        self._poller = zmq.Poller()
        self._poller.register(self._sock, zmq.POLLIN)
        self._routes: dict[str, bytes] = {}  # request_id -> identity of the gateway socket that sent it
        self._outbox: dict[bytes, list[bytes]] = {}  # identity -> encoded events not yet sent

    def read(self, timeout_ms: int) -> list:
        """The requests and aborts that have arrived, waiting up to `timeout_ms` for the first one."""
        messages: list = []
        # Between two steps (timeout 0) this is one getsockopt: no poller is built per token.
        if not self._sock.get(zmq.EVENTS) & zmq.POLLIN and not (timeout_ms and self._poller.poll(timeout_ms)):
            return messages
        while len(messages) < READ_LIMIT:
            try:
                frames = self._sock.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                break
            if len(frames) != 2:
                log.error("malformed message from the gateway dropped: %d frames, expected 2", len(frames))
                continue
            if (message := self._accept(*frames)) is not None:
                messages.append(message)
        return messages

    def _accept(self, identity: bytes, frame: bytes):
        try:
            message = self._decoder.decode(frame)
        except DecodeError as exc:
            rid = salvage_id(frame, "request_id") or ""
            self._sock.send_multipart([identity, encode(failure(rid, ErrorCode.MALFORMED_FRAME, str(exc)))])
            return None
        if not isinstance(message, Abort):  # a request: its events go back to this gateway
            if message.request_id in self._routes:
                reason = f"request_id {message.request_id!r} is already in flight"
                reply = failure(message.request_id, ErrorCode.INVALID_REQUEST, reason)
                self._sock.send_multipart([identity, encode(reply)])
                return None
            self._routes[message.request_id] = identity
        return message

    def send(self, event) -> None:
        """An event for the gateway whose request it belongs to, sent at the next flush(); a request's last event
        forgets its route."""
        rid = event.request_id
        identity = self._routes.pop(rid, None) if isinstance(event, TERMINAL) else self._routes.get(rid)
        if identity is not None:
            self._outbox.setdefault(identity, []).append(encode(event))

    def flush(self) -> None:
        """What send() took since the last flush, in order: one message per gateway."""
        if self._outbox:
            outbox, self._outbox = self._outbox, {}
            for identity, frames in outbox.items():
                self._sock.send_multipart([identity, *frames])

    def close(self) -> None:
        self.flush()
        self._sock.close()
        if self._allow is not None:
            self._allow.stop()
