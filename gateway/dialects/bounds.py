"""The ranges every dialect's numeric and stop fields are held to at the edge, as msgspec constraints (so the
JSON Schema of a request shows them): what the engine accepts, and what fits the worker protocol's 64-bit ints.

A value outside its range is a 400 naming the field before anything reaches a worker. The worker checks the
same settings again (worker/sampling.py), and what only it can know, such as top_k below the vocabulary.
"""

from __future__ import annotations

from typing import Annotated

from msgspec import Meta

INT64_MAX = 2**63 - 1  # msgspec's integer constraints stop at int64; mx.random.key takes 0 to 2**64 - 1
TOKEN_LIMIT = 2**31 - 1  # no context is longer: a larger count could only mean "up to the context's end"
TOP_K_LIMIT = 2**31 - 1  # no vocabulary is larger; the worker bounds top_k by its model's own
MAX_STOP_SEQUENCES = 64  # where the API names no limit: each one is matched against every token
MAX_STOP_CHARS = 512  # a stop sequence's length: longer ones cost every token a search and never match

# A seed MLX takes (an unsigned 64-bit key) that the API's int64 also holds.
Seed = Annotated[int, Meta(ge=0, le=INT64_MAX, description="0 to 2^63-1: the same seed repeats a sampled answer")]
Tokens = Annotated[int, Meta(ge=1, le=TOKEN_LIMIT)]  # max_tokens and its kin, thinking budgets
TopK = Annotated[int, Meta(ge=0, le=TOP_K_LIMIT, description="0: off; else below the model's vocabulary size")]
TopP = Annotated[float, Meta(gt=0, le=1)]
MinP = Annotated[float, Meta(ge=0, le=1)]
RepetitionPenalty = Annotated[float, Meta(gt=0)]  # 1: off; a bounded float refuses 1e999 (infinity) too
StopSequence = Annotated[str, Meta(max_length=MAX_STOP_CHARS)]


def temperature(most: float) -> type:
    """A temperature from 0 (greedy) to `most` (2 on OpenAI's APIs, 1 on Anthropic's)."""
    return Annotated[float, Meta(ge=0, le=most)]


def stops(most: int) -> type:
    """A list of at most `most` stop sequences (4 on OpenAI's APIs, MAX_STOP_SEQUENCES on Anthropic's, which
    names no limit), each at most MAX_STOP_CHARS long."""
    return Annotated[list[StopSequence], Meta(max_length=most)]
