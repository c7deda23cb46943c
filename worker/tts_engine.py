"""Text to speech on mlx-audio (Kokoro, Kitten TTS and the other architectures it loads): text in, audio out.

mlx-audio's models generate a request's audio as a sequence of chunks (a sentence or a stretch of text each), so
each `step()` produces the next chunk of the running request and sends it at once: a client streaming the answer
hears the first sentence while the rest is computed, and pings and aborts are served between chunks. One request
runs at a time; the others wait their turn, up to MAX_WAITING.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import mlx.core as mx
import numpy as np

from protocol.audio import AudioChunk, SpeechDone, SpeechRequest
from protocol.errors import ErrorCode
from protocol.generation import failure
from worker.containment import failed
from worker.model_loader import LoadedModel, device_name
from worker.prompt_encoding import RequestRejected
from worker.waiting import OneAtATime, Waiting

log = logging.getLogger("worker.tts")
MAX_WAITING = 64
DEFAULT_SAMPLE_RATE = 24_000


def load_tts(source: str) -> LoadedModel:
    """A text-to-speech model directory or hub repo id (e.g. mlx-community/Kokoro-82M-bf16), loaded by mlx-audio."""
    from mlx_audio.tts.utils import load_model

    if "/" not in source and not Path(source).exists():
        raise FileNotFoundError(f"model directory {source!r} does not exist")
    started = time.perf_counter()
    model = load_model(source)
    return LoadedModel(
        model=model,
        tokenizer=None,
        context_length=0,
        load_seconds=time.perf_counter() - started,
        compute=f"{device_name()}: mlx-audio {type(model).__module__.split('.')[-2]}",
    )


def to_pcm16(audio) -> bytes:
    """Samples in [-1, 1] (an mx or numpy array of any float dtype) as mono s16le bytes."""
    samples = np.nan_to_num(np.asarray(audio, dtype=np.float32).reshape(-1))
    return (np.clip(samples, -1.0, 1.0) * 32767.0).astype("<i2").tobytes()


class _Running:
    def __init__(self, request: SpeechRequest, chunks):
        self.request = request
        self.chunks = chunks  # the model's generator of GenerationResult
        self.samples = 0
        self.sample_rate = 0
        self.started = time.perf_counter()
        self.computing = 0.0


class TextToSpeechEngine(OneAtATime):
    def __init__(self, loaded: LoadedModel):
        self._model = loaded.model
        self.context_length = 0
        self._waiting = Waiting()
        self._running: _Running | None = None

    @property
    def in_flight(self) -> int:
        return int(self._running is not None)

    @property
    def queued(self) -> int:
        return len(self._waiting)

    @property
    def busy(self) -> bool:
        return self._running is not None or bool(self._waiting)

    def cache_bytes(self) -> tuple[int, int]:
        return 0, 0

    def submit(self, request) -> bool:
        return self._waiting.offer(request)

    def _stop_running(self) -> None:
        close = getattr(self._running.chunks, "close", None)  # a generator: closing it frees what it holds
        if close is not None:
            close()

    def _end(self) -> None:
        if self._running is not None:
            self._stop_running()
        self._running = None

    def step(self, emit) -> None:
        while len(self._waiting) > MAX_WAITING:
            request = self._waiting.pop()
            busy = f"{MAX_WAITING} requests are already waiting for this model; try again shortly"
            emit(failure(request.request_id, ErrorCode.WORKER_UNAVAILABLE, busy))
        if not self._has_running(emit):
            return
        running = self._running
        rid = running.request.request_id
        try:
            started = time.perf_counter()
            result = next(running.chunks, None)
            running.computing += time.perf_counter() - started
        except Exception as exc:  # a failure in this request's synthesis ends it, not the worker
            self._end()
            if isinstance(exc, ValueError | KeyError) and not running.samples:  # a voice or text it cannot take
                emit(failure(rid, ErrorCode.INVALID_REQUEST, f"The model cannot speak this: {exc}"))
                return
            emit(failed(running.request, exc, "synthesising speech"))
            return
        if result is not None:
            pcm = to_pcm16(result.audio)
            running.sample_rate = int(getattr(result, "sample_rate", 0) or self._sample_rate())
            running.samples += len(pcm) // 2
            emit(AudioChunk(request_id=rid, pcm=pcm, sample_rate=running.sample_rate))
            return
        self._end()
        emit(
            SpeechDone(
                request_id=rid,
                sample_rate=running.sample_rate or self._sample_rate(),
                samples=running.samples,
                processing_seconds=running.computing,
            )
        )

    def _sample_rate(self) -> int:
        return int(getattr(self._model, "sample_rate", 0) or DEFAULT_SAMPLE_RATE)

    def _start(self, request) -> _Running:
        if not isinstance(request, SpeechRequest):
            raise RequestRejected(
                ErrorCode.INVALID_REQUEST,
                "This model speaks text (its type is tts); it does not generate text, embeddings or transcripts",
            )
        options = {"voice": request.voice} if request.voice else {}
        if request.seed is not None:  # one request runs at a time: nothing else draws from MLX's generator meanwhile
            mx.random.seed(request.seed)
        return _Running(request, iter(self._model.generate(text=request.text, speed=request.speed, **options)))
