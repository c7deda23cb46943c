"""A benchmark backend: every generation request is answered with the same fixed tokens, and nothing is computed.

bench/gateway_overhead.py selects it (model type `bench-fixed-tokens`, accepted only in a process whose
environment names it: protocol/control.py's bench_backend_allowed), so what the gateway, the ZeroMQ hops and
the SSE framing cost per request and per token can be measured apart from the model. It is not a model type a
user can configure. One token per sequence per step, as the batch engine produces them.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

from protocol.errors import ErrorCode
from protocol.generation import Finished, FinishReason, GenerateRequest, TextChunk, Usage, failure

# What every answer is made of, one token each; an answer longer than this repeats it.
TOKENS = [" the", " quick", " brown", " fox", " jumps", " over", " a", " lazy", " dog", "."] * 3 + [" End", "."]
PROMPT_TOKENS = 16  # reported for every request: nothing is tokenized


@dataclass
class Nothing:
    """What the backend "loads" (the generation thread reports these in Ready)."""

    context_length: int = 1 << 20
    load_seconds: float = 0.0
    compute: str = "fixed tokens (benchmark backend)"


class FixedTokenEngine:
    def __init__(self, max_waiting: int):
        self._max_waiting = max_waiting
        self._waiting: deque[GenerateRequest] = deque()
        self._live: dict[str, tuple[GenerateRequest, int]] = {}  # request id -> (request, tokens sent)

    @property
    def busy(self) -> bool:
        return bool(self._live or self._waiting)

    @property
    def in_flight(self) -> int:
        return len(self._live)

    @property
    def queued(self) -> int:
        return len(self._waiting)

    def cache_bytes(self) -> tuple[int, int]:
        return 0, 0

    def submit(self, request: GenerateRequest) -> bool:
        if len(self._waiting) >= self._max_waiting:
            return False
        self._waiting.append(request)
        return True

    def abort(self, request_id: str, emit, code=ErrorCode.ABORTED, reason="aborted by the client") -> bool:
        known = self._live.pop(request_id, None) is not None
        if not known and any(r.request_id == request_id for r in self._waiting):
            self._waiting = deque(r for r in self._waiting if r.request_id != request_id)
            known = True
        if known:
            emit(failure(request_id, code, reason))
        return known

    def abort_all(self, emit, code: ErrorCode, reason: str) -> None:
        for request_id in [*self._live, *(r.request_id for r in self._waiting)]:
            self.abort(request_id, emit, code, reason)

    def step(self, emit) -> None:
        while self._waiting:
            request = self._waiting.popleft()
            self._live[request.request_id] = (request, 0)
        for request_id, (request, sent) in list(self._live.items()):
            limit = request.sampling.max_tokens or len(TOKENS)
            first = PROMPT_TOKENS if sent == 0 else 0
            emit(
                TextChunk(
                    request_id=request_id,
                    text=TOKENS[sent % len(TOKENS)],
                    completion_tokens=sent + 1,
                    prompt_tokens=first,
                )
            )
            if sent + 1 < limit:
                self._live[request_id] = (request, sent + 1)
                continue
            del self._live[request_id]
            usage = Usage(prompt_tokens=PROMPT_TOKENS, completion_tokens=sent + 1)
            emit(Finished(request_id=request_id, finish_reason=FinishReason.LENGTH, usage=usage))
