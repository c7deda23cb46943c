"""One request against llama-server's /completion: the body it sends, and the protocol events its stream becomes.

The prompt goes as token ids (rendered and tokenized as worker/llama_template.py does), so the prompt cache
compares tokens and the worker knows the prompt's length before generation. Stop sequences, sampling, seeds,
log-probabilities and JSON schemas (llama.cpp compiles them to a grammar) are llama.cpp's own; tool calls are
read from the text with the model's mlx-lm parser, as the MLX worker does. Each chunk is decoded into a typed
struct of the fields used (msgspec skips the rest), once per token.
"""

from __future__ import annotations

import time

import msgspec

from protocol.generation import Finished, FinishReason, GenerateRequest, TextChunk, TokenLogprob, TopLogprob, Usage
from worker.tool_calls import ToolCallScanner, scan

REPETITION_CONTEXT = 20  # tokens a repetition penalty looks back over: mlx-lm's default, which the MLX worker uses
_FINISH = {"eos": FinishReason.STOP, "word": FinishReason.STOP, "limit": FinishReason.LENGTH}


class _Timings(msgspec.Struct):
    cache_n: int = 0  # prompt tokens that came from the cache (every chunk has it, with timings_per_token)
    prompt_per_second: float | None = None  # null where llama.cpp's figure is not finite
    predicted_per_second: float | None = None
    draft_n_accepted: int = 0


class _Top(msgspec.Struct):
    token: str
    logprob: float


class _Probability(_Top):
    top_logprobs: list[_Top] = []


class LlamaChunk(msgspec.Struct):
    """One `data:` object of llama-server's /completion stream: the fields the worker reads."""

    content: str = ""
    stop: bool = False
    tokens_predicted: int | None = None
    stop_type: str = ""
    stopping_word: str = ""
    timings: _Timings | None = None
    completion_probabilities: list[_Probability] = []
    error: object = None


_decoder = msgspec.json.Decoder(LlamaChunk)


def decode_chunk(payload: bytes) -> LlamaChunk:
    try:
        return _decoder.decode(payload)
    except msgspec.DecodeError:  # bytes that are not UTF-8: decoded as a text decoder would, with replacements
        return _decoder.decode(payload.decode(errors="replace").encode())


def completion_body(request: GenerateRequest, prompt: list[int], max_tokens: int, json_schema: dict | None) -> dict:
    params = request.sampling
    body = {
        "prompt": prompt,
        "n_predict": max_tokens,
        "stream": True,
        "cache_prompt": True,
        "timings_per_token": True,  # the first chunk then says how much of the prompt came from the cache
        "temperature": params.temperature,  # 0: greedy
        "top_p": params.top_p,
        "top_k": params.top_k,  # 0: off, as here
        "min_p": params.min_p,
        "repeat_penalty": params.repetition_penalty or 1.0,
        "repeat_last_n": REPETITION_CONTEXT,
        "seed": params.seed if params.seed is not None else -1,
        "stop": params.stop,
    }
    if params.logprobs:
        body["n_probs"] = max(params.top_logprobs, 1)  # the sampled token's own log-probability needs one
    elif params.temperature == 0:
        # Greedy: the same token whatever the chain, but top_k 0 keeps the whole vocabulary through every sampler
        # (and a softmax over it) per token; 1 cuts it to the argmax first. Not with logprobs, which read the chain.
        body["top_k"] = 1
    if json_schema is not None:
        body["json_schema"] = json_schema
    return body


class StreamTranslator:
    """llama-server's stream chunks for one request in, TextChunk* then Finished out."""

    def __init__(
        self,
        request: GenerateRequest,
        prompt_tokens: int,
        tool_calls: ToolCallScanner | None,
        prefix: str = "",  # text the prompt already holds of the answer (a forced tool-call marker)
    ):
        self._request_id = request.request_id
        self._prompt_tokens = prompt_tokens
        self._top_logprobs = request.sampling.top_logprobs if request.sampling.logprobs else None
        self._tool_calls = tool_calls
        self._prefix = prefix
        self._cached = 0
        self._reported = False
        self._completion_tokens = 0
        self._pending: list[TokenLogprob] = []
        self._started = time.perf_counter()
        self.first_token_at: float | None = None

    def feed(self, data: LlamaChunk) -> list:
        """Events for one `data:` object of the stream."""
        if self.first_token_at is None:
            self.first_token_at = time.perf_counter()
            self._cached = data.timings.cache_n if data.timings is not None else 0
        if data.tokens_predicted is not None:
            self._completion_tokens = data.tokens_predicted
        if self._top_logprobs is not None:
            self._pending += [self._logprob(p) for p in data.completion_probabilities]
        text, self._prefix = self._prefix + data.content, ""
        done = data.stop
        text, calls = scan(self._tool_calls, text, done)
        events = []
        if text or calls or (done and self._pending):
            events.append(self._chunk(text, calls))
        if done:
            events.append(self._finished(data))
        return events

    def _chunk(self, text: str, calls: list) -> TextChunk:
        self._reported, reported = True, self._reported
        pending, self._pending = self._pending, []
        return TextChunk(
            request_id=self._request_id,
            text=text,
            completion_tokens=self._completion_tokens,
            logprobs=pending if self._top_logprobs is not None else None,
            tool_calls=calls,
            prompt_tokens=0 if reported else self._prompt_tokens,
            cached_tokens=0 if reported else self._cached,
        )

    def _logprob(self, p: _Probability) -> TokenLogprob:
        top = [TopLogprob(token=t.token, logprob=t.logprob) for t in p.top_logprobs[: self._top_logprobs]]
        return TokenLogprob(token=p.token, logprob=p.logprob, top_logprobs=top)

    def _finished(self, data: LlamaChunk) -> Finished:
        reason = _FINISH.get(data.stop_type, FinishReason.STOP)
        if reason is FinishReason.STOP and self._tool_calls is not None and self._tool_calls.made_calls:
            reason = FinishReason.TOOL_CALLS
        timings = data.timings or _Timings()
        return Finished(
            request_id=self._request_id,
            finish_reason=reason,
            stop_sequence=data.stopping_word or None,
            usage=Usage(
                prompt_tokens=self._prompt_tokens,
                completion_tokens=self._completion_tokens,
                cached_tokens=self._cached,
            ),
            prompt_tps=timings.prompt_per_second or 0.0,
            generation_tps=timings.predicted_per_second or 0.0,
            draft_accepted_tokens=timings.draft_n_accepted,
        )
