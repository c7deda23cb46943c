"""The backend a worker runs, chosen by the model's type in the config: each loads its model and gives an engine
with one interface (submit, step, abort, abort_all, busy, in_flight, queued, cache_bytes)."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:  # importing mlx must wait until worker/__main__.py has chosen the BLAS library
    from worker.batch_engine import EngineOptions

MODEL_TYPES = ("llm", "vlm", "embedding")


def load_engine(
    model_type: str, source: str, context_length: int | None, options: EngineOptions, draft_source: str | None = None
):
    """(engine, loaded model) for a model of `model_type`; a draft model only for llm (speculative decoding)."""
    if draft_source and model_type != "llm":
        raise ValueError(f"a draft model is for speculative decoding of llm models, not {model_type}")
    if model_type == "embedding":
        from worker.embedding_engine import EmbeddingEngine, load_encoder

        loaded = load_encoder(source, context_length)
        return EmbeddingEngine(loaded), loaded
    if model_type == "vlm":
        from worker.vision_engine import VisionEngine, load_vlm

        loaded = load_vlm(source, context_length)
        return VisionEngine(loaded), loaded
    if model_type != "llm":
        raise ValueError(f"unknown model type {model_type!r} (known: {', '.join(MODEL_TYPES)})")
    from worker.batch_engine import BatchEngine
    from worker.model_loader import load_model

    loaded = load_model(source, context_length, draft_source)
    return BatchEngine(loaded, options), loaded
