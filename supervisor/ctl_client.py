"""A blocking client of the supervisor's ctl socket, for the operator CLI: this machine's supervisor over
ipc://, or a fleet's host over TCP as a CURVE client."""

from __future__ import annotations

import uuid
from pathlib import Path

import zmq

from protocol import encode
from protocol.ctl import CallFailed, reply_decoder
from protocol.curve import KeyPair, secure_client


class SupervisorUnreachable(RuntimeError):
    pass


class CtlError(RuntimeError):
    def __init__(self, failure: CallFailed):
        super().__init__(failure.message)
        self.code = failure.code


class CtlClient:
    def __init__(self, endpoint: str, timeout: float = 10.0, curve: tuple[KeyPair, bytes] | None = None):
        self.endpoint = endpoint
        self.timeout = timeout
        self.curve = curve  # (this client's key pair, the host's public key) for a host over TCP
        self._ctx = zmq.Context.instance()
        self._decoder = reply_decoder()

    def call(self, make_call, timeout: float | None = None):
        """Send `make_call(call_id=...)`, wait for its reply; raise CtlError for a CallFailed."""
        call = make_call(call_id=uuid.uuid4().hex)
        if self.endpoint.startswith("ipc://") and not Path(self.endpoint.removeprefix("ipc://")).exists():
            raise SupervisorUnreachable(f"no supervisor socket at {self.endpoint} (is `supervisor run` started?)")
        sock = self._ctx.socket(zmq.DEALER)
        sock.setsockopt(zmq.LINGER, 0)
        if self.curve is not None:
            secure_client(sock, *self.curve)
        try:
            sock.connect(self.endpoint)
            sock.send(encode(call))
            if not sock.poll(int((timeout or self.timeout) * 1000)):
                hint = " and is this client's key in its host_clients?" if self.curve else ""
                raise SupervisorUnreachable(
                    f"no answer from the supervisor at {self.endpoint} within {timeout or self.timeout:.0f}s "
                    f"(is `supervisor run` started{hint})"
                )
            reply = self._decoder.decode(sock.recv())
        finally:
            sock.close()
        if isinstance(reply, CallFailed):
            raise CtlError(reply)
        return reply
