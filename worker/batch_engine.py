"""The generation engine: continuous batching over mlx-lm's BatchGenerator, with a prompt prefix cache.

It runs wherever MLX is owned: on the worker's generation thread, or in-process in tests and benchmarks.
Each `step()` admits waiting requests (up to the decode concurrency), then advances the batch by one
decode step for every running sequence plus one chunk of prefill for the prompts being processed, so a
long prompt never stalls the streams already decoding. Between two steps the caller serves aborts and
pings: an aborted sequence leaves the batch, and its KV cache is freed, before the next step.

Whatever one request brings (its settings, sampler, logits processors, constraints, tool and stop handling)
can end only that request (worker/containment.py): construction happens at admission under one guard per
request, samplers and processors run guarded inside the batch step, and token callbacks run guarded per
sequence.
"""

from __future__ import annotations

import logging
import weakref

import mlx.core as mx
from mlx_lm.tool_parsers import json_tools

from protocol.errors import ErrorCode
from protocol.generation import Finished, FinishReason, GenerateRequest, Usage, failure
from protocol.launch import EngineSettings
from worker.constrained import json_schema_processor, tool_call_processor
from worker.containment import SamplerGuard, failed, guard_processors, internal_failure, tripped
from worker.disk_cache import DiskCache, kv_settings
from worker.model_loader import LoadedModel
from worker.prompt_cache import PromptCache
from worker.prompt_encoding import encode_prompt, max_tokens_for
from worker.quantized_cache import as_batchable, check_head_dim, conform, make_cache
from worker.reasoning import ReasoningGate, ReasoningSplit, prompt_block, reasoning_format
from worker.sampling import check_sampling, logits_processors_for, sampler_for
from worker.sequence import Sequence
from worker.speculative import SpeculativeRun
from worker.tool_calls import ToolCallScanner, parser_for
from worker.waiting import Waiting

log = logging.getLogger("worker.engine")


class BatchEngine:
    def __init__(self, loaded: LoadedModel, options: EngineSettings | None = None):
        self.options = options or EngineSettings()
        self._model = loaded.model
        self._draft_model = loaded.draft_model
        self._tokenizer = loaded.tokenizer
        self.context_length = loaded.context_length
        self._reasoning = reasoning_format(loaded.tokenizer)  # None: the model does not think
        self.vocab_size = loaded.config.get("vocab_size") or self._tokenizer.vocab_size
        if self.options.kv_bits is not None:
            check_head_dim(loaded.config, self.options.kv_group_size)
        self._prompt_cache = PromptCache(self.options.prompt_cache_bytes, disk=self._disk_tier(loaded))
        self._waiting = Waiting(self.options.max_waiting)
        # One guard per sampler object, so sequences that share a sampler still sample in one batched call.
        self._sampler_guards: weakref.WeakValueDictionary[int, SamplerGuard] = weakref.WeakValueDictionary()
        self._live: dict[int, Sequence] = {}  # by the generator's uid
        self._uids: dict[str, int] = {}  # request_id -> uid
        # A request alone with a draft model runs speculatively, outside the batch, until company arrives.
        self._solo: tuple[SpeculativeRun, Sequence] | None = None
        self._generator = self._new_generator()

    def _disk_tier(self, loaded: LoadedModel) -> DiskCache | None:
        options = self.options
        if not options.prompt_cache_dir or options.prompt_cache_bytes <= 0:  # restores go through the memory tier
            return None
        return DiskCache.for_model(
            options.prompt_cache_dir,
            options.prompt_cache_disk_bytes,
            loaded.source,
            loaded.config,
            loaded.model,
            kv=kv_settings(options.kv_bits, options.kv_group_size),
        )

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
        return sum(1 for s in self._live.values() if s.started) + bool(self._solo and self._solo[0].started)

    @property
    def queued(self) -> int:
        """Requests accepted but without a first token yet: waiting for a slot, or in prefill."""
        return len(self._waiting) + len(self._live) + bool(self._solo) - self.in_flight

    @property
    def busy(self) -> bool:
        return bool(self._live or self._waiting or self._solo)

    def cache_bytes(self) -> tuple[int, int]:
        """(KV caches of the live sequences, prompt cache) in bytes."""
        solo = sum(c.nbytes for c in self._solo[0].model_cache) if self._solo else 0
        return self._generator.prompt_cache_nbytes + solo, self._prompt_cache.nbytes

    def persist(self) -> None:
        """Write the prompt cache to its disk tier, if it has one, and wait for the writes (the worker drains)."""
        self._prompt_cache.persist()

    def submit(self, request: GenerateRequest) -> bool:
        """Queue a request; False when the queue is full (the caller refuses it as overloaded)."""
        return self._waiting.offer(request)

    def abort(self, request_id: str, emit, code=ErrorCode.ABORTED, reason="aborted by the client") -> bool:
        """Drop a request wherever it is; its KV cache is freed at once. Returns whether it was known."""
        uid = self._uids.pop(request_id, None)
        if self._solo and self._solo[1].request_id == request_id:
            self._solo[0].close()
            self._solo = None
        elif uid is not None:
            self._generator.remove([uid])
            del self._live[uid]
        elif not self._waiting.drop(request_id):
            return False
        emit(failure(request_id, code, reason))
        return True

    def abort_all(self, emit, code: ErrorCode, reason: str) -> None:
        solo = [self._solo[1].request_id] if self._solo else []
        for request_id in [*solo, *self._uids, *(r.request_id for r in self._waiting)]:
            self.abort(request_id, emit, code=code, reason=reason)

    def step(self, emit) -> None:
        """Admit what fits, then one decode step for the batch (and one prefill chunk)."""
        if self._solo and self._waiting:
            self._join_batch(emit)
        if self._draft_model is not None and not self._live and not self._solo and len(self._waiting) == 1:
            self._admit(self._waiting.popleft(), emit, speculative=True)
        if self._solo:
            self._speculative_round(emit)
            return
        while self._waiting and len(self._live) < self.options.decode_concurrency:
            self._admit(self._waiting.popleft(), emit)
        if not self._live:
            return
        try:
            prompt_responses, responses = self._generator.next()
        except Exception:  # no guard caught it (the model's forward pass): the batch's state is unknown
            ids = [(s.request_id, s.trace_id) for s in self._live.values()]
            log.exception("batch step failed: every sequence in it ends (request ids, x-request-ids: %s)", ids)
            for sequence in self._live.values():
                emit(internal_failure(sequence.request_id, "stepping the batch it was in"))
            self._live.clear()
            self._uids.clear()
            self._generator = self._new_generator()  # the broken batch and its caches are dropped whole
            return
        self._fail_tripped(emit)
        done_prompts = [r.uid for r in prompt_responses if r.end_of_prompt and r.uid in self._live]
        for cache, tokens in self._generator.extract_cache(done_prompts).values():
            self._remember(tokens, cache)  # concurrent requests sharing this prompt can start from it
        leaving, stopped = [], []  # still in the batch: failed in a token callback; ended by a stop string
        for r in responses:
            sequence = self._live.get(r.uid)
            if sequence is None:
                continue
            try:
                if not sequence.on_token(r.token, r.logprobs, r.finish_reason, emit):
                    continue
            except Exception as exc:  # a detokenizer, stop matcher or tool-call parser: this sequence alone
                self._drop(r.uid)
                emit(failed(sequence, exc, "handling its generated tokens"))
                if r.finish_reason is None:
                    leaving.append(r.uid)
                continue
            self._drop(r.uid)
            if r.finish_reason is not None:  # the batch has let it go, handing back its cache
                self._remember(r.all_tokens, r.prompt_cache)
            else:
                stopped.append(r.uid)
        if leaving:
            self._generator.remove(leaving)
        if stopped:
            for cache, tokens in self._generator.remove(stopped, return_prompt_caches=True).values():
                self._remember(tokens, cache)

    def _fail_tripped(self, emit) -> None:
        """Sequences whose sampler or logits processors failed in the step just taken leave the batch, failed."""
        culprits = [(uid, s, guard) for uid, s in self._live.items() if (guard := tripped(s.guards))]
        if not culprits:
            return
        self._generator.remove([uid for uid, _, _ in culprits])
        for uid, sequence, guard in culprits:
            self._drop(uid)
            emit(failed(sequence, guard.error, guard.during))
        for _, _, guard in culprits:  # a shared sampler's guard serves the next requests with its settings
            guard.error = None

    def _drop(self, uid: int) -> None:
        sequence = self._live.pop(uid)
        self._uids.pop(sequence.request_id, None)

    def _admit(self, request: GenerateRequest, emit, speculative: bool = False) -> None:
        """Everything built for a request is built here, under one guard: a failure ends this request alone."""
        try:
            self._start(request, emit, speculative)
        except Exception as exc:
            emit(failed(request, exc, "preparing the request"))

    def _start(self, request: GenerateRequest, emit, speculative: bool) -> None:
        prompt = encode_prompt(self._tokenizer, request, self.context_length, thinks=self._reasoning is not None)
        if request.count_only:
            usage = Usage(prompt_tokens=len(prompt), completion_tokens=0)
            emit(Finished(request_id=request.request_id, finish_reason=FinishReason.STOP, usage=usage))
            return
        params = request.sampling
        check_sampling(params, self.vocab_size)
        max_tokens = max_tokens_for(request, len(prompt), self.context_length)
        split = self._split(request, prompt)
        constraints = self._constraints(request, split)
        sampler = self._guarded(sampler_for(params))
        processors = guard_processors(logits_processors_for(params) + constraints)
        cache, cached = self._prompt_cache.fetch(prompt, live_bytes=self._generator.prompt_cache_nbytes)
        if cache is not None and (cache := conform(cache, self.options.kv_bits, self.options.kv_group_size)) is None:
            cached = 0  # held at other kv settings (the disk tier offers none; a safety net): computed afresh
        if cache is None:  # quantized KV: a fresh cache of that kind (None: mlx-lm's float one)
            cache = make_cache(self._model, self.options.kv_bits, self.options.kv_group_size)
        sequence = Sequence(
            request_id=request.request_id,
            prompt_tokens=len(prompt),
            cached_tokens=cached,
            tokenizer=self._tokenizer,
            stop=params.stop,
            top_logprobs=params.top_logprobs if params.logprobs else None,
            tool_calls=ToolCallScanner(self._tokenizer, request.tools) if self._offers_tools(request) else None,
            trace_id=request.trace_id,
            reasoning=split,
            guards=(sampler, *processors),
        )
        # Constraints keep state per token they let through; drafts the model rejects would corrupt it.
        if speculative and not constraints:
            run = SpeculativeRun(
                self._model,
                self._draft_model,
                prompt,
                cache,
                cached,
                max_tokens,
                sampler,
                processors,
                num_draft_tokens=self.options.num_draft_tokens,
                eos_token_ids=set(self._tokenizer.eos_token_ids),
                prefill_step_size=self.options.prefill_step_size,
            )
            self._solo = (run, sequence)
        else:
            self._insert(sequence, prompt[cached:], prompt[:cached], cache, max_tokens, sampler, processors)

    def _guarded(self, sampler) -> SamplerGuard:
        # Keyed by id: the guard holds its sampler, so the id stays unique while the entry exists.
        guard = self._sampler_guards.get(id(sampler))
        if guard is None:
            guard = self._sampler_guards[id(sampler)] = SamplerGuard(sampler)
        return guard

    @staticmethod
    def _offers_tools(request: GenerateRequest) -> bool:
        return bool(request.tools) and request.tool_choice.mode != "none"

    def _split(self, request: GenerateRequest, prompt: list[int]) -> ReasoningSplit | None:
        """How this request's output divides into thinking and answer (None: all answer: a model that does not
        think, or a raw prompt, which no template opened a block in)."""
        if self._reasoning is None or request.messages is None:
            return None
        return ReasoningSplit(self._reasoning, prompt_block(self._reasoning, self._tokenizer, prompt))

    def _constraints(self, request: GenerateRequest, split: ReasoningSplit | None) -> list:
        """Logits processors that shape the output: the answer's format (a JSON schema, or a call that tool_choice
        requires), and for a model that thinks, a gate that keeps that format off the thinking and caps it at
        the request's reasoning budget. The format is compiled here, so a schema that cannot be enforced is
        refused at admission."""
        answer = self._answer_format(request)
        processors = answer() if answer else []
        if split is None or (answer is None and request.reasoning_budget is None):
            return processors
        gate = ReasoningGate(self._reasoning, self._tokenizer, split.thinking, request.reasoning_budget, answer or list)
        return [gate]

    def _answer_format(self, request: GenerateRequest):
        """A builder of the processors that enforce the answer's shape, or None for free text.

        A required call is enforced only in the json_tools format (the fallback's, and models whose parser is
        json_tools); other models' call formats are left to their template and parser.
        """
        if request.json_schema is not None:
            return lambda: [json_schema_processor(self._tokenizer, request.json_schema)]
        choice = request.tool_choice
        json_tools_format = parser_for(self._tokenizer)[2] is json_tools.parse_tool_call
        if self._offers_tools(request) and choice.mode == "required" and json_tools_format:
            return lambda: [tool_call_processor(self._tokenizer, request.tools, choice.name)]
        return None

    def _insert(self, sequence: Sequence, prompt, history, cache, max_tokens: int, sampler, processors) -> None:
        (uid,) = self._generator.insert(
            [prompt],
            max_tokens=[max_tokens],
            caches=[as_batchable(cache)] if cache is not None else None,
            all_tokens=[history],
            samplers=[sampler],
            logits_processors=[processors],
        )
        self._live[uid] = sequence
        self._uids[sequence.request_id] = uid

    def _speculative_round(self, emit) -> None:
        run, sequence = self._solo
        try:
            produced = run.advance()
        except Exception as exc:  # its state is unknown: this request ends, the batch was not involved
            self._solo = None
            emit(failed(sequence, exc, "decoding it speculatively"))
            return
        if guard := tripped(sequence.guards):
            self._end_solo()
            emit(failed(sequence, guard.error, guard.during))
            guard.error = None
            return
        sequence.draft_accepted = run.accepted
        for token, logprobs, finish_reason in produced:
            try:
                done = sequence.on_token(token, logprobs, finish_reason, emit)  # also a stop string
            except Exception as exc:
                self._end_solo()
                emit(failed(sequence, exc, "handling its generated tokens"))
                return
            if done:
                self._end_solo()
                held, _ = run.tokens_in_cache()
                self._remember(held, run.model_cache)
                return

    def _end_solo(self) -> None:
        self._solo[0].close()
        self._solo = None

    def _join_batch(self, emit) -> None:
        """Another request arrived: the speculative one goes on in the batch from where its cache stands."""
        run, sequence = self._solo
        self._end_solo()
        try:
            held, pending = run.tokens_in_cache()
            remaining = run.max_tokens - len(run.generated)
            self._insert(sequence, pending, held, run.model_cache, remaining, run.sampler, run.logits_processors)
        except Exception as exc:
            emit(failed(sequence, exc, "moving it into the batch"))

    def _remember(self, tokens: list[int], cache: list) -> None:
        """Keep a KV state for later prompts; a failure here costs a cache entry, never a request."""
        try:
            mx.eval([c.state for c in cache])  # a copy of its own, so it does not pin the batch's buffers
            self._prompt_cache.store(tokens, cache, live_bytes=self._generator.prompt_cache_nbytes)
        except Exception:
            log.exception("storing a prompt cache entry failed; it is skipped")
