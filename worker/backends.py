"""The backend a worker runs, chosen by the model's type in the config: each loads its model and gives an engine
with one interface (submit, step, abort, abort_all, busy, in_flight, queued, cache_bytes)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from protocol.control import MODEL_TYPES

if TYPE_CHECKING:  # importing mlx must wait until worker/__main__.py has chosen the BLAS library
    from worker.batch_engine import EngineOptions


@dataclass(frozen=True)
class ModelToLoad:
    """What the worker's flags say to load."""

    source: str  # a directory, or a hub repo id
    model_type: str = "llm"
    context_length: int | None = None  # None: what the model declares
    draft_source: str | None = None  # a draft model for speculative decoding (llm only)


def load_engine(model: ModelToLoad, options: EngineOptions):
    """(engine, loaded model) for `model`, by its type."""
    if model.draft_source and model.model_type != "llm":
        raise ValueError(f"a draft model is for speculative decoding of llm models, not {model.model_type}")
    if model.model_type == "embedding":
        from worker.embedding_engine import EmbeddingEngine, load_encoder

        loaded = load_encoder(model.source, model.context_length)
        return EmbeddingEngine(loaded), loaded
    if model.model_type == "vlm":
        from worker.vision_engine import VisionEngine, load_vlm

        loaded = load_vlm(model.source, model.context_length)
        return VisionEngine(loaded), loaded
    if model.model_type != "llm":
        raise ValueError(f"unknown model type {model.model_type!r} (known: {', '.join(MODEL_TYPES)})")
    from worker.batch_engine import BatchEngine
    from worker.model_loader import load_model

    loaded = load_model(model.source, model.context_length, model.draft_source)
    return BatchEngine(loaded, options), loaded
