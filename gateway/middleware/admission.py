"""Admission: how many generation requests each service has in flight and waiting in this gateway
(`services[].limits.max_in_flight` / `max_queued`), and how many the whole gateway has (`gateway.max_in_flight` /
`max_queued`), so no service fills a worker's queue for the others. A request past its service's in-flight limit
waits in that service's queue, first come first served; past that queue it is refused with 429, past the
gateway's queue with 503 (overloaded), both with Retry-After. A request holds its slots until its answer is sent
(a stream's last byte); a slot passes straight to the next waiter."""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable

from starlette.types import ASGIApp, Receive, Scope, Send

from gateway import metrics
from gateway.errors import RETRY_AFTER_SECONDS, APIError
from protocol import ErrorCode


class Full(Exception):
    """The queue is full."""


class Gate:
    """At most `max_in_flight` holders, and at most `max_queued` waiting behind them in arrival order."""

    def __init__(self, max_in_flight: int, max_queued: int, changed: Callable[[Gate], None] = lambda gate: None):
        self.max_in_flight, self.max_queued = max_in_flight, max_queued
        self.in_flight = 0
        self._waiting: deque[asyncio.Future] = deque()
        self._changed = changed  # told of every change (the service's gauges)

    @property
    def queued(self) -> int:
        return len(self._waiting)

    async def enter(self) -> None:
        """Hold a slot, waiting for one if need be; raises Full if the queue is full too."""
        if self.in_flight < self.max_in_flight and not self._waiting:
            self.in_flight += 1
            return self._changed(self)
        if len(self._waiting) >= self.max_queued:
            raise Full
        turn = asyncio.get_running_loop().create_future()
        self._waiting.append(turn)
        self._changed(self)
        try:
            await turn  # a leaving holder hands its slot over by resolving it
        except asyncio.CancelledError:
            if turn.done() and not turn.cancelled():
                self.leave()  # handed a slot as it was cancelled: pass it on
            else:
                self._waiting.remove(turn)
                self._changed(self)
            raise

    def leave(self) -> None:
        while self._waiting:
            turn = self._waiting.popleft()
            if not turn.done():
                turn.set_result(None)  # the slot passes over: in_flight stays
                return self._changed(self)
        self.in_flight -= 1
        self._changed(self)


class Admission:
    """ASGI middleware (inside Auth, which sets the service) for the requests `admits` picks: generation POSTs."""

    def __init__(self, app: ASGIApp, admits: Callable[[str, str], bool], limits: tuple[int, int]):
        self.app = app
        self.admits = admits
        self.server = Gate(*limits)  # the gateway's own (max_in_flight, max_queued)
        self.services: dict[str, Gate] = {}

    def gate(self, service) -> Gate:
        gate = self.services.get(service.name)
        if gate is None:
            limits, name = service.limits, service.name

            def changed(gate: Gate) -> None:
                metrics.ADMITTED.labels(name).set(gate.in_flight)
                metrics.QUEUED.labels(name).set(gate.queued)

            gate = self.services[name] = Gate(limits.max_in_flight, limits.max_queued, changed)
        return gate

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        service = scope.get("state", {}).get("service") if scope["type"] == "http" else None
        if service is None or not self.admits(scope["method"], scope["path"]):
            return await self.app(scope, receive, send)
        own = self.gate(service)
        try:
            await own.enter()
        except Full:
            error = APIError(
                ErrorCode.RATE_LIMITED,
                f"Service '{service.name}' has {own.in_flight} requests in flight and {own.queued} waiting, its "
                "limits (limits.max_in_flight, limits.max_queued); retry later",
                headers={"Retry-After": str(RETRY_AFTER_SECONDS)},
            )
            return await error.response(scope["path"])(scope, receive, send)
        try:
            try:
                await self.server.enter()
            except Full:
                error = APIError(ErrorCode.OVERLOADED, "The server has too many requests in flight; retry later")
                return await error.response(scope["path"])(scope, receive, send)
            try:
                await self.app(scope, receive, send)
            finally:
                self.server.leave()
        finally:
            own.leave()
