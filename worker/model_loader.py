"""Load one model with mlx-lm, from a local directory or a Hugging Face repo id."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import mlx.core as mx


@dataclass
class LoadedModel:
    model: Any
    tokenizer: Any  # mlx_lm TokenizerWrapper
    context_length: int
    load_seconds: float
    compute: str = ""  # the configuration cpu_tuning chose
    draft_model: Any = None  # for speculative decoding: a smaller model with the same vocabulary
    config: dict = field(default_factory=dict)  # the model's config.json
    source: str = ""  # the directory or hub repo id it was loaded from


def context_length_of(config: dict, tokenizer: Any, configured: int | None) -> int:
    """The configured context, else what the model declares."""
    if configured:
        return configured
    text_config = config.get("text_config", config)
    for key in ("max_position_embeddings", "max_sequence_length", "n_positions", "seq_length"):
        if isinstance(text_config.get(key), int):
            return text_config[key]
    limit = getattr(tokenizer, "model_max_length", None)
    return limit if isinstance(limit, int) and limit < 10**8 else 4096


def load_model(source: str, context_length: int | None = None, draft_source: str | None = None) -> LoadedModel:
    """`source` is a directory, or a hub repo id that mlx-lm downloads (and caches) on first use; so is
    `draft_source`, the draft model for speculative decoding."""
    import psutil

    started = time.perf_counter()
    model, tokenizer, config, compute = _load_one(source, psutil.virtual_memory().total)
    draft = None
    if draft_source:
        draft, draft_tokenizer, _, _ = _load_one(draft_source, psutil.virtual_memory().total)
        _check_draft(model, tokenizer, draft, draft_tokenizer, draft_source)
        compute += f", draft {Path(draft_source).name}"
    return LoadedModel(
        model=model,
        tokenizer=tokenizer,
        context_length=context_length_of(config, tokenizer, context_length),
        load_seconds=time.perf_counter() - started,
        compute=compute,
        draft_model=draft,
        config=config,
        source=source,
    )


def _load_one(source: str, host_memory: int):
    from mlx_lm import load  # imported here: mlx-lm is only ever touched by the thread that owns MLX

    from worker.cpu_tuning import tune_model

    if "/" not in source and not Path(source).exists():
        raise FileNotFoundError(f"model directory {source!r} does not exist")
    model, tokenizer, config = load(source, return_config=True)
    mx.eval(model.parameters())
    model, compute = tune_model(model, host_memory)
    return model, tokenizer, config, compute


def _check_draft(model, tokenizer, draft, draft_tokenizer, draft_source: str) -> None:
    """Refuse, at load time, a draft that could not work: other tokens, or a cache that cannot be rewound."""
    from mlx_lm.models.cache import can_trim_prompt_cache, make_prompt_cache

    if draft_tokenizer.vocab_size != tokenizer.vocab_size or draft_tokenizer.eos_token_ids != tokenizer.eos_token_ids:
        raise ValueError(f"draft model {draft_source!r} does not share the model's vocabulary")
    for name, m in (("the model", model), ("the draft model", draft)):
        if not can_trim_prompt_cache(make_prompt_cache(m)):
            raise ValueError(f"speculative decoding needs a KV cache that can be rewound; {name}'s cannot")


def device_name() -> str:
    return "gpu" if mx.default_device() == mx.gpu else "cpu"
