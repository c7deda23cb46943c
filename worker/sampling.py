"""Per-request samplers and logits processors for sequences that share one batch.

mlx-lm's BatchGenerator samples the whole batch in one call when every sequence holds the same sampler
object, and slice by slice otherwise; so unseeded requests with equal settings share one sampler. A seeded
request gets its own random key, split once per token, so it repeats exactly whatever else is in the batch
(mlx-lm's samplers draw from MLX's global random state, which every sequence advances).
"""

from __future__ import annotations

import math
from functools import lru_cache

import mlx.core as mx
from mlx_lm.sample_utils import (
    apply_min_p,
    apply_top_k,
    apply_top_p,
    make_logits_processors,
    make_sampler,
)

from protocol.errors import ErrorCode
from protocol.generation import SamplingParams
from worker.prompt_encoding import RequestRejected

SEED_LIMIT = 2**64  # mx.random.key takes an unsigned 64-bit seed


def check_sampling(params: SamplingParams, vocab_size: int | None) -> None:
    """Refuse, before anything is built from them, settings that mlx-lm would fail on mid-batch or that make no
    sense: the gateway validates its dialects, this keeps the worker safe whatever reaches it."""

    def refuse(field: str, rule: str, value) -> None:
        raise RequestRejected(ErrorCode.INVALID_REQUEST, f"{field} must be {rule}; got {value!r}", field)

    if not (math.isfinite(params.temperature) and params.temperature >= 0):
        refuse("temperature", "a finite number >= 0", params.temperature)
    if not 0 <= params.top_p <= 1:  # NaN fails both comparisons
        refuse("top_p", "between 0 and 1", params.top_p)
    if not 0 <= params.min_p <= 1:
        refuse("min_p", "between 0 and 1", params.min_p)
    vocab = f"below the model's vocabulary size ({vocab_size})" if vocab_size else "0 or more"
    if params.top_k < 0 or (vocab_size and params.top_k >= vocab_size):
        refuse("top_k", f"0 (off) or {vocab}", params.top_k)
    if params.top_logprobs < 0 or (vocab_size and params.top_logprobs >= vocab_size):
        refuse("top_logprobs", vocab, params.top_logprobs)
    if params.seed is not None and not 0 <= params.seed < SEED_LIMIT:
        refuse("seed", f"an integer from 0 to {SEED_LIMIT - 1}", params.seed)
    penalty = params.repetition_penalty
    if penalty is not None and not (math.isfinite(penalty) and penalty > 0):
        refuse("repetition_penalty", "a finite number > 0", penalty)
    if params.max_tokens is not None and params.max_tokens < 1:
        refuse("max_tokens", "at least 1", params.max_tokens)


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
