"""Who asks for a generation, as the core sees it, and who watches it.

A Caller is the calling service (for model routing), a trace id for the worker's log lines, the caller's own
observers, a way to tell that it stopped listening, its priority in the worker's queue, and an affinity key that
keeps a conversation on one replica. An HTTP request makes one with `gateway.core.http.caller_of`; a caller with
no client to lose (a batch line) leaves `gone` as None and waits behind interactive requests (priority -1).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import TypeVar

from gateway.auth import Service
from protocol.generation import WorkerOutbound

T = TypeVar("T")

# What a worker sends for one request: tokens then Finished, or one encoder result, or transcript parts then the
# Transcript, or audio chunks then SpeechDone; or an error instead.
Event = WorkerOutbound
# Sees every event of one attempt at a generation, errors included, as the core hands it on. It must not block
# or raise: it runs on the event loop in the middle of a stream (start a task for slow work).
Observer = Callable[[Event], None]
# Asked once per attempt (the core resends once when a worker died first) with the caller and the model that
# serves it; returns that attempt's observer, or None to sit it out.
ObserverFactory = Callable[["Caller", str], Observer | None]


class ClientGone(Exception):
    """The caller stopped listening before its answer was ready (its generation has been aborted)."""


@dataclass(frozen=True)
class Caller:
    service: Service | None = None  # None: no service (routing takes the model as named)
    trace_id: str | None = None  # the client's X-Request-ID: set on requests that carry none
    observers: Sequence[ObserverFactory] = ()  # this caller's own, after the core's app-wide ones
    gone: Callable[[], Awaitable[None]] | None = None  # returns when the caller stops listening
    priority: int = 0  # admission order in the worker's queue: higher first (batch lines: -1)
    # Requests with the same key go to the same replica of a model, whose prompt cache holds their prefix
    # (a chat session's id); None: the least busy replica.
    affinity: str | None = None

    async def unless_gone(self, work: Awaitable[T]) -> T:
        """Await `work`, cancelling it if the caller leaves first (then raise ClientGone).

        Starlette cancels a streaming body when its client leaves, but not a handler that is still computing its
        answer; without this, a client that times out on a long non-streaming request leaves its generation
        running to the end.
        """
        if self.gone is None:
            return await work
        task = asyncio.ensure_future(work)
        watcher = asyncio.ensure_future(self.gone())
        try:
            await asyncio.wait({task, watcher}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            watcher.cancel()
        if not task.done():
            task.cancel()
            raise ClientGone
        return task.result()
