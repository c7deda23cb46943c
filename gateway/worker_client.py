"""The gateway's data-plane connections: one DEALER per worker instance, demultiplexed by request_id.

Events are read by a callback on the socket's file descriptor that takes every message waiting, with no future
or task per message: each token of every stream passes here, on a host whose cores may all be decoding.
A socket monitor watches each connection: when the worker process dies its socket closes, and every request
still streaming from it gets a `worker_crashed` event at once instead of waiting for tokens that never come.
When a fleet's host goes down (gateway/hosts.py), every request streaming from its workers gets
`worker_unavailable`. Workers on a fleet's host are reached over TCP as CURVE clients, with the host's key.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque

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
    """The events of one generation; `WorkerClient.release` ends it (an Abort if it had not finished).

    A worker silent for `silence_timeout` while the stream waits ends it with a timeout error. One timer per
    stream watches for that, moved on only when it fires, rather than a deadline armed and cancelled per token.
    """

    def __init__(self, request_id: str, silence_timeout: float):
        self.request_id = request_id
        self._events: deque = deque()
        self._waiter: asyncio.Future | None = None
        self._loop = asyncio.get_running_loop()
        self._silence = silence_timeout
        self._heard = self._loop.time()
        self._watch = self._loop.call_at(self._heard + silence_timeout, self._check_silence)
        self.done = False
        self.observer = None  # called with every event handed out (the request's telemetry record)

    def put(self, event) -> None:
        self._events.append(event)
        self._heard = self._loop.time()
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    async def next(self):
        while not self._events:
            self._waiter = self._loop.create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None
        event = self._events.popleft()
        if isinstance(event, TERMINAL):
            self.done = True
            self._watch.cancel()
        if self.observer is not None:
            self.observer(event)
        return event

    def _check_silence(self) -> None:
        now = self._loop.time()
        if self._waiter is None:  # nobody waits (the client reads slowly): silence counts once someone does
            self._watch = self._loop.call_at(now + self._silence, self._check_silence)
            return
        if now - self._heard < self._silence:  # heard from since this timer was set
            self._watch = self._loop.call_at(self._heard + self._silence, self._check_silence)
            return
        self.put(failure(self.request_id, ErrorCode.TIMEOUT, f"the worker sent nothing for {self._silence:.0f}s"))

    def close(self) -> None:
        self._watch.cancel()


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
        # A plain (not asyncio) socket on the gateway's context: _drain reads it when its descriptor signals.
        self._sock = zmq.Context.shadow(ctx.underlying).socket(zmq.DEALER)
        self._sock.setsockopt(zmq.LINGER, 0)
        if curve is not None:
            secure_client(self._sock, *curve)
        monitor = f"inproc://worker-monitor-{id(self)}"
        self._sock.monitor(monitor, zmq.EVENT_CONNECTED | zmq.EVENT_DISCONNECTED)
        self._monitor = ctx.socket(zmq.PAIR)
        self._monitor.connect(monitor)
        self._sock.connect(self.endpoint)
        self._streams: dict[str, RequestStream] = {}
        self.connected = asyncio.Event()
        self.dead = False
        self._decoder = worker_outbound_decoder()
        self._loop = asyncio.get_running_loop()
        self._loop.add_reader(self._sock.FD, self._drain)
        self._tasks = [asyncio.create_task(self._watch())]

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
        await self._send(frame)
        return stream

    async def _send(self, frame: bytes) -> None:
        # The worker's queue for this socket is full only if it stopped reading (a step of minutes): wait for it.
        while True:
            try:
                self._sock.send(frame, zmq.NOBLOCK)
                break
            except zmq.Again:
                await asyncio.sleep(0.01)
        # Sending can take the descriptor's signal for events that arrived meanwhile: read them now.
        self._loop.call_soon(self._drain)

    def release(self, stream: RequestStream) -> None:
        stream.close()
        if self._streams.pop(stream.request_id, None) is not None and not stream.done and not self.dead:
            # The client went away mid-generation: free the worker's slot (fire and forget).
            abort = Abort(request_id=stream.request_id)
            with contextlib.suppress(zmq.Again):  # a worker that reads nothing more has no slot to free
                self._sock.send(encode(abort), zmq.NOBLOCK)
            self._loop.call_soon(self._drain)
            if stream.observer is not None:
                stream.observer(abort)  # the generation ended here: observers charge what it produced so far

    def _drain(self) -> None:
        """Every event waiting on the socket, to its stream (the descriptor signals edges: read until none)."""
        sock, decoder, streams = self._sock, self._decoder, self._streams
        while not sock.closed:
            try:
                frames = sock.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                return
            for frame in frames:  # a frame per event: what one step of the worker made for this gateway
                try:
                    event = decoder.decode(frame)
                except DecodeError as exc:
                    log.error("malformed frame from worker %s ignored: %s", self.model_id, exc)
                    continue
                stream = streams.get(event.request_id)
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
        self._loop.remove_reader(self._sock.FD)
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
