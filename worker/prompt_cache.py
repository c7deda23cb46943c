"""The worker's prompt prefix cache: KV states of token sequences it has seen, reused by longest prefix.

A thin layer over mlx-lm's LRUPromptCache (the trie mlx_lm.server uses): entries are stored when a prompt
has been processed and again when its sequence finishes (prompt + answer, which the next turn of a chat
starts with); a lookup returns a copy of the closest entry, trimmed to the shared prefix. The byte budget
covers the cache together with the live sequences' KV caches, so a busy batch evicts cached prefixes first.

With a disk tier (worker/disk_cache.py), what the memory tier evicts, and everything when the worker drains,
goes to disk; a lookup that a file serves better than memory restores that file into the memory tier first.
"""

from __future__ import annotations

from mlx_lm.models.cache import LRUPromptCache, PromptTrie, can_trim_prompt_cache, trim_prompt_cache

from worker.disk_cache import DiskCache

_MODEL = "model"  # one model per worker: the trie's model key is a constant
# A file is read only when it serves this many more tokens than memory: reading costs about what a short
# prefill does, and a file sharing little more than a system prompt with the request is not worth it.
MIN_RESTORE_GAIN = 32
PERSIST_TIMEOUT = 60.0  # seconds a draining worker waits for its writes (the supervisor's grace bounds it too)


class _EvictionLog(PromptTrie):
    """LRUPromptCache's trie, noting the entries it pops: LRUPromptCache pops only to evict (by count or bytes);
    prefixes a longer entry covers leave through pop_prefixes, and the longer entry goes to disk for them."""

    def __init__(self):
        super().__init__()
        self.popped: list[tuple[list[int], LRUPromptCache.CacheEntry]] = []

    def pop(self, model, tokens):
        entry = super().pop(model, tokens)
        self.popped.append((list(tokens), entry))
        return entry


class PromptCache:
    def __init__(self, budget_bytes: int, max_entries: int = 256, disk: DiskCache | None = None):
        self.budget_bytes = budget_bytes
        self._lru = LRUPromptCache(max_size=max_entries, max_bytes=budget_bytes)
        self._disk = disk
        self._evictions = _EvictionLog()
        self._lru._trie = self._evictions  # still empty: the cache was just made

    @property
    def nbytes(self) -> int:
        return self._lru.nbytes

    def __len__(self) -> int:
        return len(self._lru)

    def fetch(self, tokens: list[int], live_bytes: int = 0) -> tuple[list | None, int]:
        """A private copy of the KV state of the longest cached prefix of `tokens`, and that prefix's length.

        At least the last token is always left to compute: generation starts from its logits.
        """
        if self.budget_bytes <= 0:
            return None, 0
        cache, cached = self._fetch(tokens)
        if self._disk is None:
            return cache, cached
        key, length = self._disk.usable_prefix(tokens)
        if key is None or length < cached + MIN_RESTORE_GAIN or (restored := self._disk.restore(key)) is None:
            return cache, cached
        held, state = restored
        self.store(held, state, live_bytes=live_bytes)  # the next request sharing it finds it in memory
        better, better_cached = self._fetch(tokens)
        if better_cached >= length:
            return better, better_cached
        # The memory tier could not keep it beside the live caches, so nothing else holds it: use it as read.
        if len(held) > length and not can_trim_prompt_cache(state):
            return cache, cached
        trim_prompt_cache(state, len(held) - length)
        return state, length

    def _fetch(self, tokens: list[int]) -> tuple[list | None, int]:
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
        self._spill(limit_pending=self.budget_bytes)

    def persist(self) -> None:
        """Write every entry to disk and wait for the writes (the worker drains; nothing is generating)."""
        if self._disk is None:
            return
        self._lru.trim_to(n_sequences=0)  # least recently used first: the newest file is the newest entry
        self._spill(limit_pending=1 << 62)  # the entries are in memory already: queueing them costs nothing
        if not self._disk.flush(PERSIST_TIMEOUT):
            raise TimeoutError(f"the prompt cache's writes did not finish in {PERSIST_TIMEOUT:.0f}s")

    def _spill(self, limit_pending: int) -> None:
        """Hand what the memory tier evicted to the disk tier's writer (or let it go, without one)."""
        evicted, self._evictions.popped = self._evictions.popped, []
        if self._disk is not None:
            for tokens, entry in evicted:
                self._disk.save(tokens, entry.prompt_cache, entry.nbytes, limit_pending)
