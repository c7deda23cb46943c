"""The worker's prompt prefix cache: KV states of token sequences it has seen, reused by longest prefix.

A thin layer over mlx-lm's LRUPromptCache (the trie mlx_lm.server uses): entries are stored when a prompt
has been processed and again when its sequence finishes (prompt + answer, which the next turn of a chat
starts with); a lookup returns a copy of the closest entry, trimmed to the shared prefix. The byte budget
covers the cache together with the live sequences' KV caches, so a busy batch evicts cached prefixes first.
"""

from __future__ import annotations

from mlx_lm.models.cache import LRUPromptCache, can_trim_prompt_cache, trim_prompt_cache

_MODEL = "model"  # one model per worker: the trie's model key is a constant


class PromptCache:
    def __init__(self, budget_bytes: int, max_entries: int = 256):
        self.budget_bytes = budget_bytes
        self._lru = LRUPromptCache(max_size=max_entries, max_bytes=budget_bytes)

    @property
    def nbytes(self) -> int:
        return self._lru.nbytes

    def __len__(self) -> int:
        return len(self._lru)

    def fetch(self, tokens: list[int]) -> tuple[list | None, int]:
        """A private copy of the KV state of the longest cached prefix of `tokens`, and that prefix's length.

        At least the last token is always left to compute: generation starts from its logits.
        """
        if self.budget_bytes <= 0:
            return None, 0
        cache, rest = self._lru.fetch_nearest_cache(_MODEL, tokens)
        if cache is None:
            return None, 0
        if not rest:  # the whole prompt is cached: step back one token
            if not can_trim_prompt_cache(cache):
                return None, 0
            trim_prompt_cache(cache, 1)
            return cache, len(tokens) - 1
        return cache, len(tokens) - len(rest)

    def store(self, tokens: list[int], cache: list, live_bytes: int) -> None:
        """Keep `cache` (the KV state of exactly `tokens`), then evict until it fits beside `live_bytes`."""
        if self.budget_bytes <= 0 or not tokens:
            return
        self._lru.insert_cache(_MODEL, list(tokens), cache)
        self._lru.trim_to(n_bytes=self.budget_bytes - live_bytes)
