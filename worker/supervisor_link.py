"""The worker's link to its supervisor, on a thread of its own: the control DEALER and nothing else.

- out: Hello at once, then what the generation thread sends (Ready or LoadFailed, Pong) on an inproc socket;
- in: Welcome, Refused (the worker halts), Ping (handed to the generation thread, which answers it between two
  steps, so a Pong proves the generation loop is turning).

It runs while the model loads, which can take minutes: a supervisor that refuses the worker stops it then, not
after. Requests do not pass here (worker/data_plane.py). A malformed or wrong-length message is dropped with a
log line: it never stops the receive loop.
"""

from __future__ import annotations

import logging
import queue
import threading

import zmq

from protocol import DecodeError, encode
from protocol.control import Hello, Refused, Welcome, to_worker_decoder

log = logging.getLogger("worker.supervisor_link")

TO_SUPERVISOR_ENDPOINT = "inproc://to-supervisor"
# Pings waiting for the generation thread, which takes them between two steps: the bound is reached only while
# one step takes very long, and a ping past it goes unanswered, as it should while the loop is not keeping up.
INBOX_LIMIT = 64


class SupervisorLink(threading.Thread):
    def __init__(
        self, context: zmq.Context, endpoint: str | None, inbox: queue.Queue, hello: Hello, halt: threading.Event
    ):
        super().__init__(name="worker-supervisor-link", daemon=True)
        self._ctx = context
        self._endpoint = endpoint  # None: a standalone worker, with no supervisor
        self._inbox = inbox
        self._hello = hello
        self._halt = halt  # set when the supervisor refuses this worker
        self.closing = threading.Event()  # set by the main thread once the generation thread is done
        self.refused: Refused | None = None
        self.outbound = context.socket(zmq.PULL)  # bound before the generation thread connects
        self.outbound.bind(TO_SUPERVISOR_ENDPOINT)

    def run(self) -> None:
        try:
            self._run()
        except Exception:
            log.exception("supervisor link failed: the worker stops")
            self._halt.set()
            raise

    def _run(self) -> None:
        poller = zmq.Poller()
        poller.register(self.outbound, zmq.POLLIN)
        control = None
        if self._endpoint:
            control = self._ctx.socket(zmq.DEALER)
            control.setsockopt(zmq.LINGER, 1000)
            control.connect(self._endpoint)
            control.send(encode(self._hello))
            poller.register(control, zmq.POLLIN)
        decoder = to_worker_decoder()
        try:
            while not self.closing.is_set():
                for sock, _ in poller.poll(100):
                    if sock is self.outbound:
                        self._forward(control)
                    elif frames := _expect(control.recv_multipart(), 1):
                        self._from_supervisor(frames[0], decoder)
            while self.outbound.poll(0):  # the generation thread's last words still go out
                self._forward(control)
        finally:
            self.outbound.close()
            if control is not None:
                control.close()

    def _forward(self, control) -> None:
        frame = self.outbound.recv()
        if control is not None:
            control.send(frame)

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
                self._inbox.put_nowait(message)
            except queue.Full:
                log.warning("inbox full: %s from the supervisor dropped", type(message).__name__)


def _expect(frames: list[bytes], count: int) -> list[bytes] | None:
    """`frames` if there are `count` of them; otherwise None, logged: a message of the wrong shape is dropped."""
    if len(frames) == count:
        return frames
    log.error("malformed message from the supervisor dropped: %d frames, expected %d", len(frames), count)
    return None
