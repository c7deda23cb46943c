"""Vision-language models on mlx-vlm: chat messages with images in, text out.

mlx-vlm generates one sequence at a time, so this engine runs one request at a time: each `step()` produces
one token of the running request (the first step also decodes the images and runs the prefill), and pings and
aborts are served between tokens. Requests that arrive meanwhile wait their turn. It has the BatchEngine's
interface, so the generation thread drives either without knowing which.
"""

from __future__ import annotations

import io
import logging
import time
from pathlib import Path

import mlx.core as mx

from protocol.errors import ErrorCode
from protocol.generation import Finished, FinishReason, GenerateRequest, TextChunk, Usage
from worker.containment import failed
from worker.model_loader import LoadedModel, context_length_of, device_name
from worker.prompt_encoding import RequestRejected, max_tokens_for, require_generation
from worker.sampling import check_sampling, logits_processors_for, sampler_for
from worker.stop_matcher import StopMatcher
from worker.waiting import MAX_WAITING, OneAtATime, Waiting

log = logging.getLogger("worker.vision")


def load_vlm(source: str, context_length: int | None = None) -> LoadedModel:
    """A vision-language model directory (or hub id, fetched by mlx-vlm), with its processor as `tokenizer`."""
    from mlx_vlm import load
    from mlx_vlm.utils import load_config

    if "/" not in source and not Path(source).exists():
        raise FileNotFoundError(f"model directory {source!r} does not exist")
    started = time.perf_counter()
    model, processor = load(source)
    mx.eval(model.parameters())
    config = load_config(source)
    tokenizer = getattr(processor, "tokenizer", processor)
    return LoadedModel(
        model=model,
        tokenizer=processor,
        context_length=context_length_of(config, tokenizer, context_length),
        load_seconds=time.perf_counter() - started,
        compute=f"{device_name()}: mlx-vlm",
        config=config,
    )


def decode_images(request: GenerateRequest) -> list:
    """The request's images as RGB PIL images, in message order."""
    from PIL import Image

    images = []
    for m in request.messages or ():
        for data in m.images:
            try:
                images.append(Image.open(io.BytesIO(data)).convert("RGB"))
            except Exception as exc:  # PIL raises many kinds for bytes that are not an image it reads
                raise RequestRejected(
                    ErrorCode.INVALID_REQUEST, f"image {len(images)} could not be decoded: {exc}"
                ) from exc
    return images


class _Running:
    def __init__(self, request: GenerateRequest, tokens, max_tokens: int | None):
        self.request = request
        self.tokens = tokens  # mlx-vlm's stream_generate: one GenerationResult per token
        self.max_tokens = max_tokens  # None: up to the end of the context, known after the prefill
        self.to_context_end = max_tokens is None  # then this engine, not mlx-vlm, cuts the generation
        self.stops = StopMatcher(request.sampling.stop)
        self.prompt_tokens = 0
        self.completion_tokens = 0
        self.started_at = time.perf_counter()
        self.first_token_at: float | None = None


class VisionEngine(OneAtATime):
    def __init__(self, loaded: LoadedModel, max_waiting: int = MAX_WAITING):
        self._model = loaded.model
        self._processor = loaded.tokenizer
        self.context_length = loaded.context_length
        self.vocab_size = loaded.config.get("text_config", loaded.config).get("vocab_size")
        self._waiting = Waiting(max_waiting)
        self._running: _Running | None = None

    @property
    def in_flight(self) -> int:
        return int(self._running is not None and self._running.first_token_at is not None)

    @property
    def queued(self) -> int:
        return len(self._waiting) + int(self._running is not None) - self.in_flight

    @property
    def busy(self) -> bool:
        return self._running is not None or bool(self._waiting)

    def cache_bytes(self) -> tuple[int, int]:
        return 0, 0  # the running request's KV cache lives inside mlx-vlm's generator; no prompt cache

    def submit(self, request) -> bool:
        return self._waiting.offer(request)

    def _stop_running(self) -> None:
        self._running.tokens.close()  # ends mlx-vlm's generator: its KV cache is freed

    def step(self, emit) -> None:
        if not self._has_running(emit):
            return
        running = self._running
        try:
            self._advance(running, emit)
        except Exception as exc:  # image preprocessing, generation, stop matching: this request ends, not the worker
            self._end(running)
            emit(failed(running.request, exc, "generating"))

    def _end(self, running: _Running) -> None:
        running.tokens.close()
        if self._running is running:
            self._running = None

    def _start(self, request: GenerateRequest) -> _Running:
        from mlx_vlm import apply_chat_template, stream_generate

        require_generation(request)
        if request.messages is None:
            raise RequestRejected(ErrorCode.INVALID_REQUEST, "This vision model takes chat messages, not a raw prompt")
        if request.sampling.logprobs:
            raise RequestRejected(ErrorCode.INVALID_REQUEST, "logprobs are not available from vision models")
        check_sampling(request.sampling, self.vocab_size)
        images = decode_images(request)
        messages = []
        for m in request.messages:
            # Image parts ahead of the text mark which message each image belongs to.
            content = [{"type": "image"}] * len(m.images) + [{"type": "text", "text": m.content}]
            messages.append({"role": m.role, "content": content if m.images else m.content})
        try:
            prompt = apply_chat_template(self._processor, self._model.config, messages, num_images=len(images))
        except Exception as exc:  # jinja templates raise on roles/orders they do not support
            raise RequestRejected(
                ErrorCode.INVALID_REQUEST, f"the model's chat template rejected the messages: {exc}"
            ) from exc
        params = request.sampling
        max_tokens = params.max_tokens
        tokens = stream_generate(
            self._model,
            self._processor,
            prompt,
            image=images or None,
            max_tokens=max_tokens or self.context_length,
            temperature=params.temperature,
            sampler=sampler_for(params),
            logits_processors=logits_processors_for(params),
        )
        return _Running(request, tokens, max_tokens)

    def _advance(self, running: _Running, emit) -> None:
        """One token (the first call also runs the prefill)."""
        try:
            result = next(running.tokens, None)
        except ValueError as exc:  # mlx-vlm's words for inputs its processor refuses (e.g. a 500:1 image)
            if running.first_token_at is None and str(exc).startswith("Failed to process inputs"):
                raise RequestRejected(ErrorCode.INVALID_REQUEST, f"The model cannot take this input: {exc}") from exc
            raise
        rid = running.request.request_id
        if running.first_token_at is None and result is not None:
            running.first_token_at = time.perf_counter()
            running.prompt_tokens = result.prompt_tokens  # images included: known only after the prefill
            counted = "in the prompt (images included)"
            running.max_tokens = max_tokens_for(running.request, result.prompt_tokens, self.context_length, counted)
        finish = None
        if result is None:
            finish = "stop"
        else:
            running.completion_tokens = result.generation_tokens
            finish = result.finish_reason
            if running.to_context_end and running.completion_tokens >= running.max_tokens and finish is None:
                finish = "length"
        text = running.stops.feed(result.text if result is not None else "")
        done = finish is not None or running.stops.stopped
        if done:
            text += running.stops.flush()
        if text:
            emit(TextChunk(request_id=rid, text=text, completion_tokens=running.completion_tokens))
        if done:
            self._end(running)
            emit(self._finished(running, FinishReason.STOP if running.stops.stopped else FinishReason(finish)))

    def _finished(self, running: _Running, finish_reason: FinishReason) -> Finished:
        now = time.perf_counter()
        first = running.first_token_at or now
        return Finished(
            request_id=running.request.request_id,
            finish_reason=finish_reason,
            usage=Usage(prompt_tokens=running.prompt_tokens, completion_tokens=running.completion_tokens),
            prompt_tps=running.prompt_tokens / max(first - running.started_at, 1e-9),
            generation_tps=max(running.completion_tokens - 1, 0) / max(now - first, 1e-9),
        )
