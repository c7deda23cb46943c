"""The generation engine: turns GenerateRequests into streams of events, one token step at a time.

It runs wherever MLX is owned: on the worker's generation thread, or in-process in tests and benchmarks.
Requests run one after another in arrival order; `step()` advances the running one by one token, so the
caller can serve aborts and pings between any two tokens.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import mlx.core as mx

from protocol.errors import ErrorCode
from protocol.generation import (
    Finished,
    GenerateRequest,
    TextChunk,
    Usage,
    WorkerOutbound,
    failure,
)
from worker.model_loader import LoadedModel
from worker.stop_matcher import StopMatcher

Emit = Callable[[WorkerOutbound], None]


class RequestRejected(ValueError):
    def __init__(self, code: ErrorCode, message: str):
        super().__init__(message)
        self.code = code


@dataclass
class _Running:
    request_id: str
    tokens: Iterator  # mlx_lm.stream_generate
    stops: StopMatcher
    prompt_tokens: int
    completion_tokens: int = 0


class Engine:
    def __init__(self, loaded: LoadedModel):
        self._model = loaded.model
        self._tokenizer = loaded.tokenizer
        self.context_length = loaded.context_length
        self._queue: deque[GenerateRequest] = deque()
        self._running: _Running | None = None

    @property
    def in_flight(self) -> int:
        return int(self._running is not None)

    @property
    def queued(self) -> int:
        return len(self._queue)

    @property
    def busy(self) -> bool:
        return self._running is not None or bool(self._queue)

    def submit(self, request: GenerateRequest) -> None:
        self._queue.append(request)

    def abort(self, request_id: str, emit: Emit, code=ErrorCode.ABORTED, reason="aborted by the client") -> bool:
        """Drop a request wherever it is; frees its KV cache at once. Returns whether it was known."""
        running = self._running
        if running is not None and running.request_id == request_id:
            running.tokens.close()  # type: ignore[attr-defined]
            self._running = None
            emit(failure(request_id, code, reason))
            return True
        for queued in self._queue:
            if queued.request_id == request_id:
                self._queue.remove(queued)
                emit(failure(request_id, code, reason))
                return True
        return False

    def abort_all(self, emit: Emit, code: ErrorCode, reason: str) -> None:
        ids = [q.request_id for q in self._queue]
        if self._running is not None:
            ids.insert(0, self._running.request_id)
        for request_id in ids:
            self.abort(request_id, emit, code=code, reason=reason)

    def step(self, emit: Emit) -> None:
        """Start the next request if none runs, else produce one token of the running one."""
        if self._running is None:
            if self._queue:
                self._start(self._queue.popleft(), emit)
            return
        running = self._running
        try:
            response = next(running.tokens)
        except Exception as exc:  # an MLX failure ends this request, not the worker
            self._running = None
            emit(failure(running.request_id, ErrorCode.INTERNAL, f"{type(exc).__name__}: {exc}"))
            return
        running.completion_tokens = response.generation_tokens
        text = running.stops.feed(response.text)
        finished = response.finish_reason is not None or running.stops.stopped
        if finished:
            text += running.stops.flush()
        if text:
            emit(TextChunk(request_id=running.request_id, text=text, completion_tokens=running.completion_tokens))
        if finished:
            running.tokens.close()  # type: ignore[attr-defined]  (a stop sequence ends it early)
            self._running = None
            emit(
                Finished(
                    request_id=running.request_id,
                    finish_reason="stop" if running.stops.stopped else response.finish_reason,
                    usage=Usage(prompt_tokens=running.prompt_tokens, completion_tokens=running.completion_tokens),
                    prompt_tps=response.prompt_tps,
                    generation_tps=response.generation_tps,
                )
            )

    def _start(self, request: GenerateRequest, emit: Emit) -> None:
        try:
            prompt = self.encode_prompt(request)
            max_tokens = self._max_tokens(request, len(prompt))
        except RequestRejected as exc:
            emit(failure(request.request_id, exc.code, str(exc)))
            return
        except Exception as exc:  # a tokenizer failure ends this request, not the worker
            emit(failure(request.request_id, ErrorCode.INTERNAL, f"{type(exc).__name__}: {exc}"))
            return
        from mlx_lm import stream_generate
        from mlx_lm.sample_utils import make_sampler

        params = request.sampling
        if params.seed is not None:
            mx.random.seed(params.seed)
        sampler = make_sampler(temp=params.temperature, top_p=params.top_p)
        tokens = stream_generate(self._model, self._tokenizer, prompt, max_tokens=max_tokens, sampler=sampler)
        self._running = _Running(
            request_id=request.request_id,
            tokens=tokens,
            stops=StopMatcher(params.stop),
            prompt_tokens=len(prompt),
        )
        # The first step runs prefill and yields the first token: do it now, so that TTFT is one step.
        self.step(emit)

    def encode_prompt(self, request: GenerateRequest) -> list[int]:
        if (request.messages is None) == (request.prompt is None):
            raise RequestRejected(ErrorCode.INVALID_REQUEST, "give exactly one of messages or prompt")
        if request.messages is not None:
            messages = [{"role": m.role, "content": m.content} for m in request.messages]
            try:
                prompt = self._tokenizer.apply_chat_template(messages, add_generation_prompt=True)
            except Exception as exc:  # jinja templates raise on roles/orders they do not support
                raise RequestRejected(
                    ErrorCode.INVALID_REQUEST, f"the model's chat template rejected the messages: {exc}"
                ) from exc
            if isinstance(prompt, str):  # some tokenizers return text when no tokenization was asked
                prompt = self._tokenizer.encode(prompt, add_special_tokens=False)
            return list(prompt)
        return list(self._tokenizer.encode(request.prompt))

    def _max_tokens(self, request: GenerateRequest, prompt_tokens: int) -> int:
        room = self.context_length - prompt_tokens
        wanted = request.sampling.max_tokens
        if room <= 0 or (wanted is not None and wanted > room):
            asked = f"{prompt_tokens} in the prompt" + (f" + {wanted} to generate" if wanted else "")
            raise RequestRejected(
                ErrorCode.CONTEXT_LENGTH_EXCEEDED,
                f"This model's maximum context length is {self.context_length} tokens; the request needs {asked}.",
            )
        return wanted if wanted is not None else room
