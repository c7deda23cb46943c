"""Supervisor <-> worker: start-up handshake, heartbeats, shutdown.

worker -> supervisor: Hello (at once), then Ready or LoadFailed; Pong for each Ping.
supervisor -> worker: Welcome or Refused (answer to Hello), Ping.
Stopping a worker is a signal to its process group, not a message: it must work on a wedged worker too.
"""

from __future__ import annotations

import os
from enum import StrEnum

import msgspec

from protocol.codec import Message, decoder
from protocol.errors import ErrorCode


class ModelType(StrEnum):
    """A model's type picks the backend its worker runs."""

    LLM = "llm"  # mlx-lm
    VLM = "vlm"  # mlx-vlm: images in chat
    EMBEDDING = "embedding"  # mlx-embeddings: embeddings and reranking
    STT = "stt"  # mlx-audio: Whisper transcription
    TTS = "tts"  # mlx-audio: text to speech
    GGUF = "gguf"  # llama.cpp's llama-server, serving a GGUF file as it is
    # A benchmark tool, not a model: answers from a fixed token list (worker/fixed_tokens.py). Only a process
    # whose environment has BENCH_BACKEND_ENV set to this value accepts it; bench/gateway_overhead.py sets it.
    BENCH_FIXED_TOKENS = "bench-fixed-tokens"


BENCH_BACKEND_ENV = "MLX_SERVER_BENCH_BACKEND"
MODEL_TYPES = tuple(t for t in ModelType if t is not ModelType.BENCH_FIXED_TOKENS)  # what users may configure


def bench_backend_allowed(model_type: str) -> bool:
    """Whether this process was started by a benchmark that selected `model_type`'s benchmark backend."""
    return model_type == ModelType.BENCH_FIXED_TOKENS and os.environ.get(BENCH_BACKEND_ENV) == model_type


class MemoryReport(msgspec.Struct, frozen=True, kw_only=True):
    mlx_active_bytes: int
    mlx_peak_bytes: int
    mlx_cache_bytes: int
    rss_bytes: int
    # Parts of the above held by the engine: live sequences' KV caches and the prompt prefix cache.
    kv_cache_bytes: int = 0
    prompt_cache_bytes: int = 0
    weights_bytes: int = 0  # MLX's active memory once the model had loaded
    footprint_bytes: int = 0  # what the OS charges the process: physical footprint on macOS, RSS elsewhere
    # Of weights and kv_cache, what processes outside MLX hold (a gguf worker's llama-server); rss_bytes and
    # footprint_bytes include them.
    outside_mlx_bytes: int = 0
    runtime_bytes: int = 0  # the process before its model loaded: interpreter, libraries, sockets (outside MLX)

    @property
    def resident_bytes(self) -> int:
        """What the model costs the machine: its footprint (RSS undercounts Metal buffers on macOS); at least
        MLX's active set plus the freed buffers MLX keeps cached for reuse."""
        return max(self.footprint_bytes, self.rss_bytes, self.mlx_active_bytes + self.mlx_cache_bytes)

    def by_kind(self) -> dict[str, int]:
        """The resident bytes split by what holds them; `activations` is MLX's active memory beyond the weights
        and caches (a step's temporaries), `runtime` the process as it was before the model loaded (the
        interpreter and its libraries), `other` the rest outside MLX (the tokenizer, Python objects, the
        allocator's free pages) less what llama-server holds as weights and KV."""
        in_mlx = self.weights_bytes + self.kv_cache_bytes + self.prompt_cache_bytes - self.outside_mlx_bytes
        beyond_mlx = self.resident_bytes - self.mlx_active_bytes - self.mlx_cache_bytes - self.outside_mlx_bytes
        runtime = min(self.runtime_bytes, max(beyond_mlx, 0))
        return {
            "weights": self.weights_bytes,
            "kv_cache": self.kv_cache_bytes,
            "prompt_cache": self.prompt_cache_bytes,
            "activations": max(self.mlx_active_bytes - in_mlx, 0),
            "mlx_buffer_cache": self.mlx_cache_bytes,
            "runtime": runtime,
            "other": max(beyond_mlx, 0) - runtime,
        }


class Hello(Message, tag="hello"):
    protocol_version: int
    model_id: str
    instance_id: str  # unique per spawned process, so replies from a previous instance are ignored
    pid: int
    endpoint: str  # where the worker serves the data plane


class Welcome(Message, tag="welcome"):
    instance_id: str


class Refused(Message, tag="refused"):
    instance_id: str
    code: ErrorCode
    message: str


class Ready(Message, tag="ready"):
    instance_id: str
    memory: MemoryReport
    context_length: int
    load_seconds: float
    device: str  # e.g. "gpu" (Metal/CUDA) or "cpu"
    mlx_version: str
    compute: str = ""  # how it computes, e.g. "metal", "cpu: openblas, float32", "cpu: reference blas"
    vocab_size: int | None = None  # a generating model's: top_k must stay below it (None: an encoder, or unknown)


class LoadFailed(Message, tag="load_failed"):
    instance_id: str
    code: ErrorCode
    message: str


class Ping(Message, tag="ping"):
    call_id: str


class Pong(Message, tag="pong"):
    call_id: str
    instance_id: str
    memory: MemoryReport
    in_flight: int  # generating now
    queued: int  # accepted, waiting for the generation thread


def from_worker_decoder() -> msgspec.msgpack.Decoder:
    return decoder(Hello, Ready, LoadFailed, Pong)


def to_worker_decoder() -> msgspec.msgpack.Decoder:
    return decoder(Welcome, Refused, Ping)
