"""Per-request samplers and logits processors for sequences that share one batch.

mlx-lm's BatchGenerator samples the whole batch in one call when every sequence holds the same sampler
object, and slice by slice otherwise; so unseeded requests with equal settings share one sampler. A seeded
request gets its own random key, split once per token, so it repeats exactly whatever else is in the batch
(mlx-lm's samplers draw from MLX's global random state, which every sequence advances).
"""

from __future__ import annotations

from functools import lru_cache

import mlx.core as mx
from mlx_lm.sample_utils import (
    apply_min_p,
    apply_top_k,
    apply_top_p,
    make_logits_processors,
    make_sampler,
)

from protocol.generation import SamplingParams


def sampler_for(params: SamplingParams):
    if params.temperature == 0:
        return _shared(0.0, 1.0, 0.0, 0)  # greedy: the seed changes nothing
    if params.seed is None:
        return _shared(params.temperature, params.top_p, params.min_p, params.top_k)
    return _seeded(params)


def logits_processors_for(params: SamplingParams) -> list:
    penalty = params.repetition_penalty
    return make_logits_processors(repetition_penalty=penalty) if penalty not in (None, 1.0) else []


@lru_cache(maxsize=64)
def _shared(temperature: float, top_p: float, min_p: float, top_k: int):
    return make_sampler(temp=temperature, top_p=top_p, min_p=min_p, top_k=top_k)


def _seeded(params: SamplingParams):
    # The same filters, in the same order, as mlx_lm.sample_utils.make_sampler; then a draw with our own key.
    filters = []
    if 0 < params.top_p < 1.0:
        filters.append(lambda x: apply_top_p(x, params.top_p))
    if params.min_p > 0:
        filters.append(lambda x: apply_min_p(x, params.min_p))
    if params.top_k > 0:
        filters.append(lambda x: apply_top_k(x, params.top_k))
    key = mx.random.key(params.seed)
    inverse_temperature = 1 / params.temperature

    def sample(logprobs: mx.array) -> mx.array:
        nonlocal key
        key, draw = mx.random.split(key)
        for apply in filters:
            logprobs = apply(logprobs)
        return mx.random.categorical(logprobs * inverse_temperature, key=draw)

    return sample
