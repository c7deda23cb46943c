"""The worker's socket thread: the only code that touches its ZeroMQ sockets.

- data ROUTER (bound): requests (generate, embed, rerank) / Abort from gateways, events back to the gateway that asked;
  on a host serving other machines, a CURVE server that lets in only the allowed gateways' keys;
- control DEALER (connected to the supervisor): Hello/Ready/Pong out, Welcome/Refused/Ping in;
- inproc PULL: what the generation thread emits, forwarded to the right peer.

Inbound messages go to the generation thread's inbox, which is bounded: a request that finds it full is
refused at once (overloaded). Nothing here blocks on MLX, and a malformed or wrong-length multipart message on
any socket is dropped with a log line: it never stops the receive loop.
"""

from __future__ import annotations

import logging
import queue
import threading

import msgspec
import zmq

from protocol import DecodeError, ErrorCode, encode, salvage_id
from protocol.control import Hello, Refused, Welcome, to_worker_decoder
from protocol.curve import AllowList, key_pair_from_file, secure_server
from protocol.generation import Abort, failure, worker_inbound_decoder
from protocol.launch import CurveServer
from protocol.run_dir import bind_private

log = logging.getLogger("worker.transport")

EVENTS_ENDPOINT = "inproc://generation-events"
# Messages waiting for the generation thread. It empties the inbox between two steps, so the bound is reached
# only while one step takes very long; requests past it are refused (overloaded), pings and aborts dropped.
INBOX_LIMIT = 1024
# Frame kinds the generation thread sends on the inproc socket, ahead of the encoded message.
TO_GATEWAY, TO_GATEWAY_FINAL, TO_SUPERVISOR = b"g", b"G", b"s"


class Transport(threading.Thread):
    def __init__(
        self,
        context: zmq.Context,
        data_endpoint: str,
        supervisor_endpoint: str | None,
        inbox: queue.Queue,
        hello: Hello,
        halt: threading.Event,
        curve: CurveServer | None = None,
    ):
        super().__init__(name="worker-sockets", daemon=True)
        self._ctx = context
        self._data_endpoint = data_endpoint
        self._supervisor_endpoint = supervisor_endpoint
        self._inbox = inbox
        self._hello = hello
        self._halt = halt  # set when the supervisor refuses this worker
        self._curve = curve
        self.closing = threading.Event()  # set by the main thread once the generation thread is done
        self.refused: Refused | None = None
        self.events = context.socket(zmq.PULL)  # bound before the generation thread connects
        self.events.bind(EVENTS_ENDPOINT)

    def run(self) -> None:
        try:
            self._run()
        except Exception:
            log.exception("socket thread failed: the worker stops")
            self._halt.set()
            raise

    def _run(self) -> None:
        data = self._ctx.socket(zmq.ROUTER)
        data.setsockopt(zmq.LINGER, 1000)
        allow = None
        if self._curve is not None:
            keys = key_pair_from_file(self._curve.key_file)
            allowed = [key.encode() for key in self._curve.allowed_clients]
            allow = AllowList(self._ctx, allowed, f"worker {self._hello.model_id}")
            secure_server(data, keys)
        bind_private(data, self._data_endpoint)
        # A tcp://host:* endpoint got a port of the system's choosing: the Hello says which.
        hello = msgspec.structs.replace(self._hello, endpoint=data.getsockopt_string(zmq.LAST_ENDPOINT))
        log.info("serving %s at %s%s (pid %d)", hello.model_id, hello.endpoint, " (CURVE)" * bool(allow), hello.pid)
        control = None
        poller = zmq.Poller()
        poller.register(data, zmq.POLLIN)
        poller.register(self.events, zmq.POLLIN)
        if self._supervisor_endpoint:
            control = self._ctx.socket(zmq.DEALER)
            control.setsockopt(zmq.LINGER, 1000)
            control.connect(self._supervisor_endpoint)
            control.send(encode(hello))
            poller.register(control, zmq.POLLIN)
        inbound, from_supervisor = worker_inbound_decoder(), to_worker_decoder()
        routes: dict[str, bytes] = {}  # request_id -> identity of the gateway socket that sent it
        try:
            while not self.closing.is_set():
                for sock, _ in poller.poll(100):
                    if sock is data:
                        if frames := _expect(data.recv_multipart(), 2, "gateway"):
                            self._from_gateway(data, *frames, inbound, routes)
                    elif sock is self.events:
                        self._forward(data, control, routes)
                    elif frames := _expect(control.recv_multipart(), 1, "supervisor"):
                        self._from_supervisor(frames[0], from_supervisor)
            while self.events.poll(0):  # the generation thread's last words (shutdown errors) still go out
                self._forward(data, control, routes)
        finally:
            data.close()
            self.events.close()
            if control is not None:
                control.close()
            if allow is not None:
                allow.stop()

    def _forward(self, data, control, routes: dict) -> None:
        kind, request_id, frame = self.events.recv_multipart()
        if kind == TO_SUPERVISOR:
            if control is not None:
                control.send(frame)
            return
        rid = request_id.decode()
        identity = routes.pop(rid, None) if kind == TO_GATEWAY_FINAL else routes.get(rid)
        if identity is not None:
            data.send_multipart([identity, frame])

    def _from_gateway(self, data, identity: bytes, frame: bytes, decoder, routes: dict) -> None:
        try:
            message = decoder.decode(frame)
        except DecodeError as exc:
            rid = salvage_id(frame, "request_id") or ""
            reply = failure(rid, ErrorCode.MALFORMED_FRAME, str(exc))
            data.send_multipart([identity, encode(reply)])
            return
        if not isinstance(message, Abort):  # a request: its events go back to this gateway
            if message.request_id in routes:
                reply = failure(
                    message.request_id,
                    ErrorCode.INVALID_REQUEST,
                    f"request_id {message.request_id!r} is already in flight",
                )
                data.send_multipart([identity, encode(reply)])
                return
            routes[message.request_id] = identity
        try:
            self._inbox.put_nowait(message)
        except queue.Full:
            if isinstance(message, Abort):
                log.warning("inbox full: abort of %s dropped", message.request_id)
                return
            routes.pop(message.request_id, None)
            reason = "This model's worker is too busy to take the request; retry shortly."
            data.send_multipart([identity, encode(failure(message.request_id, ErrorCode.OVERLOADED, reason))])

    def _from_supervisor(self, frame: bytes, decoder) -> None:
        try:
            message = decoder.decode(frame)
        except DecodeError as exc:
            log.error("malformed frame from the supervisor ignored: %s", exc)
            return
        if isinstance(message, Refused):
            log.error("supervisor refused this worker: %s", message.message)
            self.refused = message
            self._halt.set()
        elif not isinstance(message, Welcome):
            try:
                self._inbox.put_nowait(message)  # Ping is answered by the generation loop, proving it is alive
            except queue.Full:  # unanswered, as it should be: the loop is not keeping up
                log.warning("inbox full: %s from the supervisor dropped", type(message).__name__)


def _expect(frames: list[bytes], count: int, peer: str) -> list[bytes] | None:
    """`frames` if there are `count` of them; otherwise None, logged: a message of the wrong shape is dropped."""
    if len(frames) == count:
        return frames
    log.error("malformed message from the %s dropped: %d frames, expected %d", peer, len(frames), count)
    return None
