"""The generation engine: continuous batching over mlx-lm's BatchGenerator, with a prompt prefix cache.

It runs wherever MLX is owned: on the worker's generation thread, or in-process in tests and benchmarks.
Each `step()` admits waiting requests (up to the decode concurrency), then advances the batch by one
decode step for every running sequence plus one chunk of prefill for the prompts being processed, so a
long prompt never stalls the streams already decoding. Between two steps the caller serves aborts and
pings: an aborted sequence leaves the batch, and its KV cache is freed, before the next step.
"""

from __future__ import annotations

import logging
from collections import deque
from dataclasses import dataclass

import mlx.core as mx

from protocol.errors import ErrorCode
from protocol.generation import GenerateRequest, failure
from worker.model_loader import LoadedModel
from worker.prompt_cache import PromptCache
from worker.prompt_encoding import RequestRejected, encode_prompt, max_tokens_for
from worker.sampling import logits_processors_for, sampler_for
from worker.sequence import Sequence

log = logging.getLogger("worker.engine")
MB = 1024**2


@dataclass(frozen=True)
class EngineOptions:
    decode_concurrency: int = 16  # sequences decoding together; more wait their turn
    prefill_concurrency: int = 4  # prompts processed together
    prefill_step_size: int = 512  # prompt tokens per step: a long prompt is processed in chunks
    prompt_cache_bytes: int = 512 * MB  # prompt cache + live KV caches; 0 turns the prompt cache off


class BatchEngine:
    def __init__(self, loaded: LoadedModel, options: EngineOptions | None = None):
        self.options = options or EngineOptions()
        self._model = loaded.model
        self._tokenizer = loaded.tokenizer
        self.context_length = loaded.context_length
        self._prompt_cache = PromptCache(self.options.prompt_cache_bytes)
        self._waiting: deque[GenerateRequest] = deque()
        self._live: dict[int, Sequence] = {}  # by the generator's uid
        self._uids: dict[str, int] = {}  # request_id -> uid
        self._generator = self._new_generator()

    def _new_generator(self):
        from mlx_lm.generate import BatchGenerator

        return BatchGenerator(
            self._model,
            stop_tokens=[[t] for t in self._tokenizer.eos_token_ids],
            completion_batch_size=self.options.decode_concurrency,
            prefill_batch_size=self.options.prefill_concurrency,
            prefill_step_size=self.options.prefill_step_size,
            # The calling thread's stream: MLX streams are thread-local, and this thread owns MLX.
            stream=mx.default_stream(mx.default_device()),
        )

    @property
    def in_flight(self) -> int:
        """Sequences producing tokens (a Pong's "generating now")."""
        return sum(1 for s in self._live.values() if s.started)

    @property
    def queued(self) -> int:
        """Requests accepted but without a first token yet: waiting for a slot, or in prefill."""
        return len(self._waiting) + len(self._live) - self.in_flight

    @property
    def busy(self) -> bool:
        return bool(self._live or self._waiting)

    def cache_bytes(self) -> tuple[int, int]:
        """(KV caches of the live sequences, prompt cache) in bytes."""
        return self._generator.prompt_cache_nbytes, self._prompt_cache.nbytes

    def submit(self, request: GenerateRequest) -> None:
        self._waiting.append(request)

    def abort(self, request_id: str, emit, code=ErrorCode.ABORTED, reason="aborted by the client") -> bool:
        """Drop a request wherever it is; its KV cache is freed at once. Returns whether it was known."""
        uid = self._uids.pop(request_id, None)
        if uid is not None:
            self._generator.remove([uid])
            del self._live[uid]
        else:
            queued = next((r for r in self._waiting if r.request_id == request_id), None)
            if queued is None:
                return False
            self._waiting.remove(queued)
        emit(failure(request_id, code, reason))
        return True

    def abort_all(self, emit, code: ErrorCode, reason: str) -> None:
        for request_id in [*self._uids, *(r.request_id for r in self._waiting)]:
            self.abort(request_id, emit, code=code, reason=reason)

    def step(self, emit) -> None:
        """Admit what fits, then one decode step for the batch (and one prefill chunk)."""
        while self._waiting and len(self._live) < self.options.decode_concurrency:
            self._admit(self._waiting.popleft(), emit)
        if not self._live:
            return
        try:
            prompt_responses, responses = self._generator.next()
        except Exception as exc:  # an MLX failure: the batch's state is unknown, so every sequence in it ends
            log.exception("batch step failed")
            for sequence in self._live.values():
                emit(failure(sequence.request_id, ErrorCode.INTERNAL, f"{type(exc).__name__}: {exc}"))
            self._live.clear()
            self._uids.clear()
            self._generator = self._new_generator()  # the broken batch and its caches are dropped whole
            return
        done_prompts = [r.uid for r in prompt_responses if r.end_of_prompt and r.uid in self._live]
        for cache, tokens in self._generator.extract_cache(done_prompts).values():
            self._remember(tokens, cache)  # concurrent requests sharing this prompt can start from it
        finished_by_stop_string = []
        for r in responses:
            sequence = self._live.get(r.uid)
            if sequence is None or not sequence.on_token(r.token, r.logprobs, r.finish_reason, emit):
                continue
            del self._live[r.uid]
            del self._uids[sequence.request_id]
            if r.finish_reason is not None:  # the batch has let it go, handing back its cache
                self._remember(r.all_tokens, r.prompt_cache)
            else:
                finished_by_stop_string.append(r.uid)
        if finished_by_stop_string:
            removed = self._generator.remove(finished_by_stop_string, return_prompt_caches=True)
            for cache, tokens in removed.values():
                self._remember(tokens, cache)

    def _admit(self, request: GenerateRequest, emit) -> None:
        try:
            prompt = encode_prompt(self._tokenizer, request, self.context_length)
            max_tokens = max_tokens_for(request, len(prompt), self.context_length)
        except RequestRejected as exc:
            log.info("request %s [x-request-id %s] refused: %s", request.request_id, request.trace_id, exc.code)
            emit(failure(request.request_id, exc.code, str(exc)))
            return
        except Exception as exc:  # a tokenizer failure ends this request, not the worker
            emit(failure(request.request_id, ErrorCode.INTERNAL, f"{type(exc).__name__}: {exc}"))
            return
        params = request.sampling
        cache, cached = self._prompt_cache.fetch(prompt)
        (uid,) = self._generator.insert(
            [prompt[cached:]],
            max_tokens=[max_tokens],
            caches=[cache] if cache is not None else None,
            all_tokens=[prompt[:cached]],
            samplers=[sampler_for(params)],
            logits_processors=[logits_processors_for(params)],
        )
        self._live[uid] = Sequence(
            request_id=request.request_id,
            prompt_tokens=len(prompt),
            cached_tokens=cached,
            tokenizer=self._tokenizer,
            stop=params.stop,
            top_logprobs=params.top_logprobs if params.logprobs else None,
            trace_id=request.trace_id,
        )
        self._uids[request.request_id] = uid

    def _remember(self, tokens: list[int], cache: list) -> None:
        mx.eval([c.state for c in cache])  # a copy of its own, so it does not pin the batch's buffers
        self._prompt_cache.store(tokens, cache, live_bytes=self._generator.prompt_cache_nbytes)
