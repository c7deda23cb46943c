"""The generation core: every dialect's request reaches its worker here and comes back as typed events.

GenerationCore.start admits a request: it routes the model for the caller's service, acquires the worker through
the supervisor (loading the model if needed), sends the request and waits for its first event. A worker that
dies before producing anything, or was already shutting down (evicted, or unloaded for idleness, as the request
reached it), is replaced and the request sent once more: nothing has reached the client, so the resend is
invisible. Not when the supervisor says the worker crashed by a fault of its own (an error exit, SIGSEGV,
SIGABRT, wedged): the request may have caused it, and sent again it would crash the new worker too; only a
worker killed from outside (SIGKILL, as the OOM killer sends) gets its request resent. Errors found at
admission raise APIError, so they get their own HTTP status.

A started Generation is an async iterator of the worker's events: TextChunks, then Finished; an error event
raises APIError instead. `release()` ends it (an Abort to the worker if it had not finished). Observers
registered on the core (app-wide) or on the Caller see every event as it passes.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass

import msgspec

from gateway.auth import route_model
from gateway.config import GatewaySettings
from gateway.core.caller import Caller, Event, Observer, ObserverFactory
from gateway.errors import APIError
from gateway.sampling_defaults import Asked, settle
from gateway.worker_client import RequestStream, WorkerClient, WorkerPool
from protocol import ErrorCode
from protocol.audio import SpeechRequest, TranscribeRequest
from protocol.embedding import Embeddings, EmbedRequest, RerankRequest, RerankScores
from protocol.generation import TERMINAL, Finished, GenerateRequest, GenerationError, TextChunk, TokenLogprob, ToolCall

# A worker that died, was stopping, or whose host went down before it produced anything: nothing reached the
# client, so the request goes to a replacement (on another host, if its host is down).
_REPLACEABLE = (ErrorCode.WORKER_CRASHED, ErrorCode.SHUTTING_DOWN, ErrorCode.WORKER_UNAVAILABLE)
WorkerRequest = GenerateRequest | EmbedRequest | RerankRequest | TranscribeRequest | SpeechRequest


class Generation:
    """A started generation: the model serving it, its first event, and all its events by `async for`."""

    def __init__(self, client: WorkerClient, stream: RequestStream, first: Event):
        self._client, self._stream = client, stream
        self.first = first  # a TextChunk, a Finished (nothing generated, or count_only), or an encoder result

    @property
    def model_id(self) -> str:
        return self._client.model_id

    def __aiter__(self) -> AsyncIterator[TextChunk | Finished]:
        return self._events()

    async def _events(self):
        event = self.first
        while True:
            if isinstance(event, GenerationError):
                raise APIError.from_event(event)
            yield event
            if isinstance(event, TERMINAL):
                return
            event = await self._stream.next()

    def release(self) -> None:
        """Done with it: aborts the generation in the worker unless it finished. Safe to call twice."""
        self._client.release(self._stream)


@dataclass
class Answer:
    """A whole (non-streamed) generation."""

    model_id: str  # the model that served it
    end: Finished
    text: str
    logprobs: list[TokenLogprob]
    tool_calls: list[ToolCall]
    reasoning: str = ""  # a reasoning model's thinking, apart from the answer


async def collect(generation: Generation) -> Answer:
    """Every event of `generation`, gathered into one Answer; raises APIError if it ends in an error."""
    text, logprobs, calls, thought = [], [], [], []
    async for event in generation:
        if isinstance(event, Finished):
            return Answer(generation.model_id, event, "".join(text), logprobs, calls, "".join(thought))
        text.append(event.text)
        thought.append(event.reasoning)
        logprobs.extend(event.logprobs or ())
        calls.extend(event.tool_calls)
    raise AssertionError("a generation ends with Finished or an error")


class GenerationCore:
    """One per gateway process (on `app.state.core`). `observers` are app-wide: each is asked for every attempt
    of every generation (token charging is one)."""

    def __init__(self, workers: WorkerPool, settings: GatewaySettings, observers: Sequence[ObserverFactory] = ()):
        self.workers = workers
        self.settings = settings
        self.observers = list(observers)

    async def start(self, caller: Caller, request: WorkerRequest, model: str, asked: Asked | None = None) -> Generation:
        """Send `request` to the worker serving `model` and wait for its first event (see the module's docstring).

        `model` is what the request named ("" for none): the service's default model stands in for none, and the
        supervisor refuses a model the service may not use (after resolving aliases) with a 403.
        `asked`: what a GenerateRequest set itself of the fields the server may default (sampling_defaults.py);
        the rest is filled from the model's defaults and the preset once the model is known.
        Raises APIError, or ClientGone if the caller leaves meanwhile (the generation is aborted).
        """
        if request.trace_id is None and caller.trace_id:
            request = msgspec.structs.replace(request, trace_id=caller.trace_id)
        if caller.priority and hasattr(request, "priority"):
            request = msgspec.structs.replace(request, priority=caller.priority)
        generation = await self._send(caller, request, model, asked, stale_instance=None)
        if isinstance(generation.first, GenerationError) and generation.first.code in _REPLACEABLE:
            stale = generation._client.instance_id
            generation = await self._send(caller, request, model, asked, stale_instance=stale)
        if isinstance(generation.first, GenerationError):
            raise APIError.from_event(generation.first)
        return generation

    async def answer(self, caller: Caller, request: GenerateRequest, model: str, asked: Asked | None = None) -> Answer:
        """Run `request` to its end. Raises APIError, or ClientGone (the generation is aborted)."""
        generation = await self.start(caller, request, model, asked)
        try:
            return await caller.unless_gone(collect(generation))
        finally:
            generation.release()

    async def call(
        self, caller: Caller, request: EmbedRequest | RerankRequest, model: str
    ) -> tuple[str, Embeddings | RerankScores]:
        """One request, one answer (an encoder's): the model that served it and its result."""
        generation = await self.start(caller, request, model)
        generation.release()  # the result was the request's last event: this only forgets the stream
        return generation.model_id, generation.first

    async def _send(
        self, caller: Caller, request: WorkerRequest, model: str, asked: Asked | None, stale_instance: str | None
    ):
        name, allowed = route_model(caller.service, model)
        preset = asked.preset if asked else None
        client, located = await self.workers.acquire(name, stale_instance, allowed, caller.affinity, preset)
        if located.stale_faulted:  # 500, not 503: its Retry-After would invite the same crash
            raise APIError(
                ErrorCode.WORKER_CRASHED,
                "The worker crashed while it held this request; the request was not sent again, as it may have "
                "caused the crash",
                status=500,
            )
        if asked is not None:
            request = settle(request, asked, located.defaults, client.model_id)
        request = _capped(request, caller.service)
        if isinstance(request, GenerateRequest):
            _check_vocabulary(request.sampling.top_k, client.vocab_size)
        stream = await client.open(request, self.settings.connect_timeout)
        observers = [o for make in (*self.observers, *caller.observers) if (o := make(caller, client.model_id))]
        if observers:
            stream.observer = observers[0] if len(observers) == 1 else _fan_out(observers)
        try:
            first = await caller.unless_gone(stream.next())
        except BaseException:
            client.release(stream)
            raise
        if isinstance(first, GenerationError):
            client.release(stream)
        return Generation(client, stream, first)


def _capped(request: WorkerRequest, service) -> WorkerRequest:
    """A generation held to its service's ceiling on tokens per answer (`limits.max_tokens`)."""
    ceiling = service.limits.max_tokens if service is not None else None
    if ceiling is None or not isinstance(request, GenerateRequest):
        return request
    asked = request.sampling.max_tokens
    if asked is not None and asked <= ceiling:
        return request
    return msgspec.structs.replace(request, sampling=msgspec.structs.replace(request.sampling, max_tokens=ceiling))


def _check_vocabulary(top_k: int, vocab_size: int | None) -> None:
    """top_k counts tokens of the vocabulary: at or above its size it cannot be honoured (mlx-lm fails on it)."""
    if vocab_size and top_k >= vocab_size:
        raise APIError(
            ErrorCode.INVALID_REQUEST,
            f"top_k must be 0 (off) or below the model's vocabulary size ({vocab_size}); got {top_k}",
            param="top_k",
        )


def _fan_out(observers: list) -> Observer:
    def observe(event: Event) -> None:
        for observer in observers:
            observer(event)

    return observe
