"""Speculative decoding for a request that has the model to itself: a draft model proposes a few tokens, the
model checks them in one forward pass (mlx-lm's speculative_generate_step), and every accepted draft token is a
decode step saved. The output is the model's own: each token is sampled from the model's distribution, drafts
only decide how many come out of one pass.

It pays only for a single stream; batching already fills the hardware when several requests run, so when a
second request arrives the engine hands this one over to the batch at the end of a verification round, with
its KV cache, and it goes on there without a seam.
"""

from __future__ import annotations

from typing import Any

import mlx.core as mx


class SpeculativeRun:
    """One request decoded speculatively, a verification round per `advance()`."""

    def __init__(
        self,
        model,
        draft_model,
        prompt: list[int],
        cache: list | None,  # the model's cache for prompt[:cached], from the prompt cache
        cached: int,
        max_tokens: int,
        sampler,
        logits_processors: list,
        num_draft_tokens: int,
        eos_token_ids: set[int],
        prefill_step_size: int,
    ):
        from mlx_lm.generate import speculative_generate_step
        from mlx_lm.models.cache import make_prompt_cache

        self.prompt = prompt
        self.max_tokens = max_tokens
        self.sampler = sampler
        self.logits_processors = logits_processors
        self.generated: list[int] = []
        self.accepted = 0  # draft tokens the model agreed with
        self.finish_reason: str | None = None
        self._eos = eos_token_ids
        self.model_cache = cache if cache is not None else make_prompt_cache(model)
        draft_cache = make_prompt_cache(draft_model)
        # The draft has no prompt cache of its own: it reads the prefix the model's cache already holds.
        for start in range(0, cached, prefill_step_size):
            draft_model(mx.array(prompt[start : min(start + prefill_step_size, cached)])[None], cache=draft_cache)
            mx.eval([c.state for c in draft_cache])
        self._steps = speculative_generate_step(
            mx.array(prompt[cached:]),
            model,
            draft_model,
            stream=mx.default_stream(mx.default_device()),  # this thread's: it owns MLX
            num_draft_tokens=num_draft_tokens,
            max_tokens=max_tokens,
            sampler=sampler,
            logits_processors=logits_processors or None,
            prompt_cache=self.model_cache + draft_cache,
            prefill_step_size=prefill_step_size,
        )

    @property
    def started(self) -> bool:
        return bool(self.generated)

    def advance(self) -> list[tuple[int, Any, str | None]]:
        """One round: the accepted draft tokens and the model's own next token, as (token, logprobs,
        finish_reason). The first call also processes the prompt."""
        out = []
        for token, logprobs, from_draft in self._steps:
            self.generated.append(token)
            self.accepted += from_draft
            if token in self._eos:
                self.finish_reason = "stop"
            elif len(self.generated) >= self.max_tokens:
                self.finish_reason = "length"
            out.append((token, logprobs, self.finish_reason))
            if self.finish_reason or not from_draft:
                break
        else:
            self.finish_reason = self.finish_reason or "length"
        if self.finish_reason:
            self.close()
        return out

    def close(self) -> None:
        """Stop where it is; the model's cache is rewound to the tokens it has really processed."""
        self._steps.close()

    def tokens_in_cache(self) -> tuple[list[int], list[int]]:
        """(the tokens the model's cache holds, those produced but not yet processed), once closed."""
        from mlx_lm.models.cache import trim_prompt_cache

        tokens = self.prompt + self.generated
        held = self.model_cache[0].offset
        if held == len(tokens):  # the batch needs one token to go on from: let it process the last again
            held -= trim_prompt_cache(self.model_cache, 1)
        return tokens[:held], tokens[held:]
