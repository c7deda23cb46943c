"""Speech to text on mlx-audio's Whisper: uploads (already decoded to 16 kHz PCM by the gateway) in, transcripts out.

Each `step()` decodes one 30-second window of one transcription (once: a window whose text looks degenerate is
decoded again at a higher temperature in a later step), taking the running transcriptions in turn, so
several requests share the worker fairly (a long file does not hold a short one back for its whole length),
pings and aborts are served between windows, and a stream gets each window's segments as soon as they exist.
At most MAX_RUNNING transcriptions advance together (each holds its samples and its decoder state); the rest wait
in arrival order, up to MAX_WAITING, beyond which a request is refused with `worker_unavailable` (503,
Retry-After) rather than queued without bound. Windows of different requests are not batched: each is conditioned
on its own text so far, which Whisper's decoder takes as one prompt per batch.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from pathlib import Path

import mlx.core as mx

from protocol.audio import TranscribeRequest, Transcript, TranscriptPart
from protocol.errors import ErrorCode
from protocol.generation import failure
from worker.containment import failed
from worker.model_loader import LoadedModel, device_name
from worker.prompt_encoding import RequestRejected
from worker.waiting import Waiting
from worker.whisper_windows import Transcription

log = logging.getLogger("worker.stt")
MAX_RUNNING = 4
MAX_WAITING = 64
# A model directory without tokenizer files (mlx-whisper's layout: config.json and weights only) borrows the
# tokenizer of the OpenAI checkpoint with the same vocabulary, fetched from the hub on first use.
TOKENIZER_BY_VOCAB = {51864: "openai/whisper-tiny.en", 51865: "openai/whisper-tiny", 51866: "openai/whisper-large-v3"}


def load_whisper(source: str, context_length: int | None = None) -> LoadedModel:
    """A Whisper model directory (MLX or Hugging Face weights) or hub repo id, loaded with mlx-audio."""
    from mlx_audio.stt.utils import load

    if "/" not in source and not Path(source).exists():
        raise FileNotFoundError(f"model directory {source!r} does not exist")
    started = time.perf_counter()
    model = load(source)
    if getattr(model, "dims", None) is None or not hasattr(model, "decode"):
        raise ValueError(f"{source} is not a Whisper model (type stt serves Whisper)")
    if getattr(model, "_processor", None) is None:
        from transformers import WhisperProcessor

        model._processor = WhisperProcessor.from_pretrained(TOKENIZER_BY_VOCAB[model.dims.n_vocab])
    compute = f"{device_name()}: mlx-audio whisper"
    if mx.default_device() == mx.cpu:  # half precision runs several times slower than float32 on a CPU
        model.set_dtype(mx.float32)
        model.dtype = mx.float32
        mx.eval(model.parameters())
        compute += ", float32"
    return LoadedModel(
        model=model,
        tokenizer=None,
        context_length=model.dims.n_text_ctx,
        load_seconds=time.perf_counter() - started,
        compute=compute,
    )


class SpeechToTextEngine:
    def __init__(self, loaded: LoadedModel):
        self._model = loaded.model
        self.context_length = loaded.context_length
        self._waiting = Waiting()
        self._running: deque[Transcription] = deque()

    @property
    def in_flight(self) -> int:
        return len(self._running)

    @property
    def queued(self) -> int:
        return len(self._waiting)

    @property
    def busy(self) -> bool:
        return bool(self._running or self._waiting)

    def cache_bytes(self) -> tuple[int, int]:
        return 0, 0  # the decoder's KV cache lives for one window; no prompt cache

    def submit(self, request) -> bool:
        return self._waiting.offer(request)

    def abort(self, request_id: str, emit, code=ErrorCode.ABORTED, reason="aborted by the client") -> bool:
        running = next((t for t in self._running if t.request.request_id == request_id), None)
        if running is not None:
            self._running.remove(running)
        elif not self._waiting.drop(request_id):
            return False
        emit(failure(request_id, code, reason))
        return True

    def abort_all(self, emit, code: ErrorCode, reason: str) -> None:
        ids = [r.request_id for r in self._waiting] + [t.request.request_id for t in self._running]
        for request_id in ids:
            self.abort(request_id, emit, code=code, reason=reason)

    def step(self, emit) -> None:
        while len(self._waiting) > MAX_WAITING:  # the newest arrivals are the ones turned away
            request = self._waiting.pop()
            busy = f"{MAX_WAITING} transcriptions are already waiting for this model; try again shortly"
            emit(failure(request.request_id, ErrorCode.WORKER_UNAVAILABLE, busy))
        while self._waiting and len(self._running) < MAX_RUNNING:
            request = self._waiting.popleft()
            try:
                self._running.append(self._start(request))
            except Exception as exc:  # whatever preparing it raised ends this request alone
                emit(failed(request, exc, "preparing the request"))
        if not self._running:
            return
        transcription = self._running.popleft()
        rid = transcription.request.request_id
        try:
            segments = transcription.advance()
        except Exception as exc:  # a failure in this request's decoding ends it, not the worker
            emit(failed(transcription.request, exc, "transcribing"))
            return
        if segments:
            emit(TranscriptPart(request_id=rid, segments=segments))
        if not transcription.done:
            self._running.append(transcription)  # to the back: the others get their window first
            return
        emit(
            Transcript(
                request_id=rid,
                text=transcription.text,
                language=transcription.language or "",
                duration=transcription.duration,
                segments=transcription.segments,
                processing_seconds=transcription.processing_seconds,
            )
        )

    def _start(self, request) -> Transcription:
        from mlx_audio.stt.models.whisper.tokenizer import LANGUAGES

        if not isinstance(request, TranscribeRequest):
            raise RequestRejected(
                ErrorCode.INVALID_REQUEST,
                "This model transcribes speech (its type is stt); it does not generate text, embeddings or audio",
            )
        if len(request.pcm) % 2:
            raise RequestRejected(ErrorCode.INVALID_REQUEST, "pcm must hold whole 16-bit samples (an even byte count)")
        if request.language is not None:
            if request.language not in LANGUAGES:
                raise RequestRejected(
                    ErrorCode.INVALID_REQUEST, f"language {request.language!r} is not an ISO-639-1 code Whisper knows"
                )
            if not self._model.is_multilingual and request.language != "en":
                raise RequestRejected(
                    ErrorCode.INVALID_REQUEST, f"this model is English-only; it cannot transcribe {request.language!r}"
                )
        return Transcription(self._model, request)
