"""One request's stream inside the batch: tokens in, text chunks (with logprobs when asked) and the end out."""

from __future__ import annotations

import logging
import time
from typing import Any

import mlx.core as mx

from protocol.generation import Finished, FinishReason, TextChunk, TokenLogprob, TopLogprob, Usage
from worker.reasoning import ReasoningSplit
from worker.stop_matcher import StopMatcher
from worker.tool_calls import ToolCallScanner, scan

log = logging.getLogger("worker.sequence")


def token_logprob(tokenizer, token: int, logprobs: mx.array, top_n: int) -> TokenLogprob:
    """OpenAI's per-token entry from the model's log-probabilities over the vocabulary."""
    top = []
    if top_n > 0:
        ids = mx.argpartition(-logprobs, kth=top_n - 1)[:top_n]
        values = logprobs[ids]
        order = mx.argsort(-values)
        top = [
            TopLogprob(token=tokenizer.decode([i]), logprob=v)
            for i, v in zip(ids[order].tolist(), values[order].tolist(), strict=True)
        ]
    return TokenLogprob(token=tokenizer.decode([token]), logprob=logprobs[token].item(), top_logprobs=top)


class Sequence:
    def __init__(
        self,
        request_id: str,
        prompt_tokens: int,
        cached_tokens: int,
        tokenizer: Any,
        stop: list[str],
        top_logprobs: int | None,  # None: no logprobs
        tool_calls: ToolCallScanner | None = None,  # None: the request offered no tools
        trace_id: str | None = None,  # the client's X-Request-ID, for log lines
        reasoning: ReasoningSplit | None = None,  # None: the model does not think (or the prompt was raw)
        guards: tuple = (),  # its sampler's and logits processors' guards (worker/containment.py)
    ):
        self.request_id = request_id
        self.trace_id = trace_id
        self.guards = guards
        self.prompt_tokens = prompt_tokens
        self.cached_tokens = cached_tokens
        self.completion_tokens = 0
        self.reasoning_tokens = 0
        self.draft_accepted = 0  # tokens a draft model proposed and the model accepted (speculative decoding)
        self._tokenizer = tokenizer
        self._detokenizer = tokenizer.detokenizer
        self._stops = StopMatcher(stop)
        self._top_logprobs = top_logprobs
        self._tool_calls = tool_calls
        self._reasoning = reasoning
        self._reported = False  # the prompt's token counts went out on a chunk
        self._pending: list[TokenLogprob] = []  # logprobs of tokens whose text is not sent yet
        self._admitted = time.perf_counter()
        self._first_token_at: float | None = None

    @property
    def started(self) -> bool:
        return self._first_token_at is not None

    def on_token(self, token: int, logprobs: mx.array, finish_reason: str | None, emit) -> bool:
        """Feed one generated token; emits what can be sent. Returns True when the sequence is done.

        finish_reason comes from the batch: "stop" (an end-of-sequence token, which is not text) or "length".
        Thinking is split off first: stop sequences and tool calls are looked for in the answer only.
        """
        if self._first_token_at is None:
            self._first_token_at = time.perf_counter()
        if finish_reason != "stop":
            self.completion_tokens += 1
            self.reasoning_tokens += bool(self._reasoning and self._reasoning.thinking)
            self._detokenizer.add_token(token)
            if self._top_logprobs is not None:
                self._pending.append(token_logprob(self._tokenizer, token, logprobs, self._top_logprobs))
        if finish_reason is not None:
            self._detokenizer.finalize()
        thought, answer = "", self._detokenizer.last_segment
        if self._reasoning is not None:
            thought, answer = self._reasoning.feed(answer)
            if finish_reason is not None:
                more_thought, more_answer = self._reasoning.flush()
                thought, answer = thought + more_thought, answer + more_answer
        text = self._stops.feed(answer)
        done = finish_reason is not None or self._stops.stopped
        if done:
            text += self._stops.flush()
        text, calls = scan(self._tool_calls, text, done)
        if text or calls or thought:
            self._reported, reported = True, self._reported
            emit(
                TextChunk(
                    request_id=self.request_id,
                    text=text,
                    reasoning=thought,
                    completion_tokens=self.completion_tokens,
                    logprobs=self._take_pending(),
                    tool_calls=calls,
                    prompt_tokens=0 if reported else self.prompt_tokens,
                    cached_tokens=0 if reported else self.cached_tokens,
                )
            )
        if done:
            reason = FinishReason.STOP if self._stops.stopped else FinishReason(finish_reason)
            if reason is FinishReason.STOP and self._tool_calls is not None and self._tool_calls.made_calls:
                reason = FinishReason.TOOL_CALLS
            emit(self._finished(reason))
        return done

    def _take_pending(self) -> list[TokenLogprob] | None:
        if self._top_logprobs is None:
            return None
        pending, self._pending = self._pending, []
        return pending

    def _finished(self, finish_reason: FinishReason) -> Finished:
        now = time.perf_counter()
        first = self._first_token_at or now
        log.info(
            "request %s [x-request-id %s] finished (%s): %d prompt tokens (%d cached), %d generated in %.2fs%s",
            self.request_id,
            self.trace_id,
            finish_reason,
            self.prompt_tokens,
            self.cached_tokens,
            self.completion_tokens,
            now - self._admitted,
            f", {self.draft_accepted} of them accepted from the draft" if self.draft_accepted else "",
        )
        return Finished(
            request_id=self.request_id,
            finish_reason=finish_reason,
            stop_sequence=self._stops.matched,
            usage=Usage(
                prompt_tokens=self.prompt_tokens,
                completion_tokens=self.completion_tokens,
                cached_tokens=self.cached_tokens,
                reasoning_tokens=self.reasoning_tokens,
            ),
            prompt_tps=(self.prompt_tokens - self.cached_tokens) / max(first - self._admitted, 1e-9),
            draft_accepted_tokens=self.draft_accepted,
            generation_tps=max(self.completion_tokens - 1, 0) / max(now - first, 1e-9),
        )
