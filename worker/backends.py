"""The backend a worker runs, chosen by the model's type in the config: each loads its model and gives an
`Engine` (batch_engine.BatchEngine for llm, vision_engine.VisionEngine for vlm, embedding_engine.EmbeddingEngine
for embedding, stt_engine.SpeechToTextEngine for stt, tts_engine.TextToSpeechEngine for tts, gguf_engine.GGUFEngine
for gguf)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

from protocol.control import MODEL_TYPES, bench_backend_allowed
from protocol.errors import ErrorCode
from protocol.launch import EngineSettings, LlamaCppSettings, ShardLaunch

# Where an engine sends its events (TextChunk, Finished, GenerationError, Embeddings, RerankScores, and the speech
# events of protocol/audio.py): the generation thread's socket, or a list in tests.
Emit = Callable[[object], None]


@runtime_checkable
class Engine(Protocol):
    """What the generation thread drives, whatever the model. Every method runs on the one thread that owns MLX.

    A request's failure is an error event it emits for that request, never an exception out of `step`, and it
    ends that request alone (worker/containment.py).
    """

    def submit(self, request) -> bool:
        """Accept a request (GenerateRequest, EmbedRequest, RerankRequest, TranscribeRequest, SpeechRequest); it
        starts at a later `step`. False when the engine's bounded queue is full: the caller refuses the request
        (overloaded)."""

    def step(self, emit: Emit) -> None:
        """Advance the work in hand by one step (a token for every running sequence, or one encoder batch)."""

    def abort(self, request_id: str, emit: Emit, code: ErrorCode = ..., reason: str = ...) -> bool:
        """Drop a request wherever it is, emitting its error event; False if it is not known (already done)."""

    def abort_all(self, emit: Emit, code: ErrorCode, reason: str) -> None:
        """Drop every request, each with an error event (the worker is shutting down)."""

    @property
    def busy(self) -> bool:
        """Anything accepted and not finished: the generation loop keeps stepping while it is."""

    @property
    def in_flight(self) -> int:
        """Requests producing output now (a Pong's in_flight)."""

    @property
    def queued(self) -> int:
        """Requests accepted but not yet producing (a Pong's queued)."""

    def cache_bytes(self) -> tuple[int, int]:
        """(KV caches of the live requests, prompt cache) in bytes, for the worker's memory report."""


class EngineFailed(RuntimeError):
    """Raised by `step` when the engine can serve nothing more (a process it depends on died): unlike a bug in a
    step, which ends the requests in hand, this ends the worker, and the supervisor starts another."""


@dataclass(frozen=True)
class ModelToLoad:
    """What a worker loads: the part of its WorkerLaunch (protocol/launch.py) the backends need."""

    source: str  # a directory, or a hub repo id (type gguf: a .gguf file)
    model_type: str = "llm"
    context_length: int | None = None  # None: what the model declares
    draft_source: str | None = None  # a draft model for speculative decoding (llm and gguf)
    shard: ShardLaunch | None = None  # this process's rank of a sharded model (llm only; worker/lockstep.py)
    llama_cpp: LlamaCppSettings = field(default_factory=LlamaCppSettings)  # type gguf: how llama-server runs it


def load_engine(model: ModelToLoad, options: EngineSettings) -> tuple[Engine, object]:
    """(engine, loaded model) for `model`, by its type."""
    if model.draft_source and model.model_type not in ("llm", "gguf"):
        raise ValueError(f"a draft model is for speculative decoding of llm and gguf models, not {model.model_type}")
    if model.shard is not None and (model.model_type != "llm" or model.draft_source):
        raise ValueError("a sharded model is an llm without a draft model")
    if model.model_type == "gguf":
        from worker.gguf_engine import GGUFEngine, load_gguf

        loaded = load_gguf(model.source, model.context_length, model.draft_source, model.llama_cpp, options)
        return GGUFEngine(loaded, options.max_waiting), loaded
    if model.model_type == "embedding":
        from worker.embedding_engine import EmbeddingEngine, load_encoder

        loaded = load_encoder(model.source, model.context_length)
        return EmbeddingEngine(loaded, options.max_waiting), loaded
    if model.model_type == "stt":
        from worker.stt_engine import SpeechToTextEngine, load_whisper

        loaded = load_whisper(model.source, model.context_length)
        return SpeechToTextEngine(loaded), loaded
    if model.model_type == "tts":
        from worker.tts_engine import TextToSpeechEngine, load_tts

        loaded = load_tts(model.source)
        return TextToSpeechEngine(loaded), loaded
    if model.model_type == "vlm":
        from worker.vision_engine import VisionEngine, load_vlm

        loaded = load_vlm(model.source, model.context_length)
        return VisionEngine(loaded, options.max_waiting), loaded
    if bench_backend_allowed(model.model_type):
        from worker.fixed_tokens import FixedTokenEngine, Nothing

        return FixedTokenEngine(options.max_waiting), Nothing()
    if model.model_type != "llm":
        raise ValueError(f"unknown model type {model.model_type!r} (known: {', '.join(MODEL_TYPES)})")
    if model.shard is not None:
        from worker.lockstep import load_sharded_engine

        return load_sharded_engine(model.source, model.context_length, model.shard, options)
    from worker.batch_engine import BatchEngine
    from worker.model_loader import load_model

    loaded = load_model(model.source, model.context_length, model.draft_source)
    return BatchEngine(loaded, options), loaded
