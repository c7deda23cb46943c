"""The gateway's data-plane connections: one DEALER per worker instance, demultiplexed by request_id.

A socket monitor watches each connection: when the worker process dies its socket closes, and every request
still streaming from it gets a `worker_crashed` event at once instead of waiting for tokens that never come.
When a fleet's host goes down (gateway/hosts.py), every request streaming from its workers gets
`worker_unavailable`. Workers on a fleet's host are reached over TCP as CURVE clients, with the host's key.
"""

from __future__ import annotations

import asyncio
import logging

import zmq
import zmq.asyncio
from zmq.utils.monitor import parse_monitor_message

from gateway.config import GatewaySettings
from gateway.errors import APIError
from gateway.hosts import HostLink, Hosts
from gateway.placement import Placement
from gateway.supervisor_client import HostDown
from protocol import DecodeError, ErrorCode, encode
from protocol.ctl import EnsureLoaded, Located
from protocol.curve import KeyPair, secure_client
from protocol.generation import TERMINAL, Abort, GenerateRequest, failure, worker_outbound_decoder

log = logging.getLogger("gateway.worker")


class RequestStream:
    """The events of one generation; `WorkerClient.release` ends it (an Abort if it had not finished)."""

    def __init__(self, request_id: str, silence_timeout: float):
        self.request_id = request_id
        self._queue: asyncio.Queue = asyncio.Queue()
        self._silence = silence_timeout
        self.done = False
        self.observer = None  # called with every event handed out (the request's telemetry record)

    def put(self, event) -> None:
        self._queue.put_nowait(event)

    async def next(self):
        if not self._queue.empty():  # per token, when the stream is behind the worker: no timer to arm and cancel
            event = self._queue.get_nowait()
        else:
            event = await self._wait()
        if isinstance(event, TERMINAL):
            self.done = True
        if self.observer is not None:
            self.observer(event)
        return event

    async def _wait(self):
        try:
            # asyncio.timeout is a deadline on this task; wait_for would wrap a new task each time.
            async with asyncio.timeout(self._silence):
                return await self._queue.get()
        except TimeoutError:
            return failure(self.request_id, ErrorCode.TIMEOUT, f"the worker sent nothing for {self._silence:.0f}s")


class WorkerClient:
    def __init__(
        self,
        ctx: zmq.asyncio.Context,
        located: Located,
        silence_timeout: float,
        curve: tuple[KeyPair, bytes] | None = None,
    ):
        self.model_id = located.model_id
        self.endpoint = located.endpoint
        self.instance_id = located.instance_id
        self.vocab_size = located.vocab_size  # None: unknown (the worker checks top_k itself anyway)
        self._silence = silence_timeout
        self._sock = ctx.socket(zmq.DEALER)
        self._sock.setsockopt(zmq.LINGER, 0)
        if curve is not None:
            secure_client(self._sock, *curve)
        self._monitor = self._sock.get_monitor_socket(zmq.EVENT_CONNECTED | zmq.EVENT_DISCONNECTED)
        self._sock.connect(self.endpoint)
        self._streams: dict[str, RequestStream] = {}
        self.connected = asyncio.Event()
        self.dead = False
        self._tasks = [asyncio.create_task(self._read()), asyncio.create_task(self._watch())]

    async def open(self, request: GenerateRequest, connect_timeout: float) -> RequestStream:
        if not self.dead and not self.connected.is_set():
            try:
                await asyncio.wait_for(self.connected.wait(), connect_timeout)
            except TimeoutError:
                self.mark_dead(f"could not connect to the worker at {self.endpoint}")
        try:
            frame = encode(request)
        except OverflowError:  # an integer past msgpack's 64 bits: the request's fault, found before it is sent
            raise APIError(ErrorCode.INVALID_REQUEST, "A number in the request is outside the 64-bit range") from None
        stream = RequestStream(request.request_id, self._silence)
        if self.dead:
            stream.put(failure(request.request_id, ErrorCode.WORKER_CRASHED, f"the worker for {self.model_id} is gone"))
            return stream
        self._streams[request.request_id] = stream
        await self._sock.send(frame)
        return stream

    def release(self, stream: RequestStream) -> None:
        if self._streams.pop(stream.request_id, None) is not None and not stream.done and not self.dead:
            # The client went away mid-generation: free the worker's slot (fire and forget).
            abort = Abort(request_id=stream.request_id)
            self._sock.send(encode(abort))
            if stream.observer is not None:
                stream.observer(abort)  # the generation ended here: observers charge what it produced so far

    async def _read(self) -> None:
        decoder = worker_outbound_decoder()
        while True:
            frames = await self._sock.recv_multipart()
            if len(frames) != 1:  # an event is one frame: anything else is dropped whole, not read part by part
                log.error("malformed message from worker %s dropped: %d frames", self.model_id, len(frames))
                continue
            try:
                event = decoder.decode(frames[0])
            except DecodeError as exc:
                log.error("malformed frame from worker %s ignored: %s", self.model_id, exc)
                continue
            stream = self._streams.get(event.request_id)
            if stream is not None:
                stream.put(event)

    async def _watch(self) -> None:
        while True:
            event = parse_monitor_message(await self._monitor.recv_multipart())["event"]
            if event == zmq.EVENT_CONNECTED:
                self.connected.set()
            elif event == zmq.EVENT_DISCONNECTED:
                self.mark_dead(f"the worker for {self.model_id} exited during the request")
                return

    @property
    def in_flight(self) -> int:
        return 0 if self.dead else len(self._streams)

    def mark_dead(self, reason: str, code: ErrorCode = ErrorCode.WORKER_CRASHED) -> None:
        """No more events will come from this worker: every open stream ends with `code` (worker_crashed)."""
        self.dead = True
        for request_id, stream in list(self._streams.items()):
            stream.put(failure(request_id, code, reason))

    def close(self) -> None:
        for task in self._tasks:
            task.cancel()
        self._sock.disable_monitor()
        self._monitor.close()
        self._sock.close()


class WorkerPool:
    """Finds the worker for a model: placement picks the host, whose supervisor loads it if needed; one client
    per live worker instance, per host."""

    def __init__(self, ctx: zmq.asyncio.Context, hosts: Hosts, settings: GatewaySettings):
        self._ctx = ctx
        self._settings = settings
        self._clients: dict[tuple[str, str], WorkerClient] = {}  # by (host, model id)
        self.hosts = hosts
        self.placement = Placement(hosts, self.in_flight)
        for link in hosts.links:
            link.on_down.append(self._host_down)

    def in_flight(self, host: str, model_id: str) -> int:
        client = self._clients.get((host, model_id))
        return client.in_flight if client is not None else 0

    async def acquire(
        self,
        model: str,
        stale_instance: str | None = None,
        allowed: list[str] | None = None,
        affinity: str | None = None,
        preset: str | None = None,
    ) -> tuple[WorkerClient, Located]:
        """The client of a worker serving `model` (id, alias, or "" for the default), loading it if needed, and
        the supervisor's Located: with the sampling defaults for that model with `preset`; a model outside
        `allowed` (when given) is refused by the supervisor with `model_not_allowed`, an unknown preset with
        `invalid_request`.

        `stale_instance` names a worker the caller found gone, so the supervisor replaces it rather than
        handing it out again (the gateway can see a worker's socket close before the supervisor reaps it);
        Located.stale_faulted says whether it crashed by a fault of its own, which the caller's request may have
        caused. `affinity` (a session) keeps a conversation on one replica. A host that goes down meanwhile is
        left for the next one placement picks.
        """
        failed: set[str] = set()
        while True:
            link = await self.placement.place(model, allowed, affinity, failed)
            try:
                located = await link.client.call(
                    lambda call_id: EnsureLoaded(
                        call_id=call_id, model=model, stale_instance=stale_instance, allowed=allowed, preset=preset
                    ),
                    self._settings.load_timeout,
                )
            except HostDown:
                if not self.hosts.fleet:
                    raise
                failed.add(link.name)
                continue
            return self._client(link, located), located

    def _client(self, link: HostLink, located: Located) -> WorkerClient:
        key = (link.name, located.model_id)
        current = self._clients.get(key)
        if current is not None and current.instance_id == located.instance_id:
            return current
        if current is not None:
            current.mark_dead("the worker was replaced")
            current.close()
        curve = link.curve if located.endpoint.startswith("tcp://") else None
        client = WorkerClient(self._ctx, located, self._settings.silence_timeout, curve)
        self._clients[key] = client
        return client

    def _host_down(self, link: HostLink, reason: str) -> None:
        for key in [key for key in self._clients if key[0] == link.name]:
            client = self._clients.pop(key)
            client.mark_dead(f"host {link.name} is down: {reason}", ErrorCode.WORKER_UNAVAILABLE)
            client.close()

    def close(self) -> None:
        for client in self._clients.values():
            client.close()
        self._clients.clear()
