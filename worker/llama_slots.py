"""Which of llama-server's slots a request takes.

With a KV cache per slot (--no-kv-unified), llama.cpp's decode step attends over every slot from the lowest one in
the batch to the highest, idle ones included (llama_kv_cache::get_k views streams s0..s1): four sequences in slots
1, 2, 11 and 14 are computed over the caches of fourteen. Left to choose, llama-server takes the idle slot whose
cached prompt shares the most with the new one, else the least recently used, so sequences scatter across the
slots. Traced with 16 slots after 16 streams: 4 streams in slots 1, 2, 11, 14 made 113-128 tok/s, in 12-15 163-192.

So the worker names the slot (`id_slot`): the lowest free one, unless another free slot holds at least
REUSE_TOKENS more of the prompt, a prefix worth its place. A slot's content is known by the prompt last sent to it;
what it generated after is not tracked. A prompt the chosen slot does not hold may still come from llama-server's
prompt cache in RAM (--cache-ram), which it consults when a slot's content is replaced.
"""

from __future__ import annotations

import numpy as np

REUSE_TOKENS = 64  # the prefill a held prefix must save to be worth a slot above the lowest free one


class Slots:
    def __init__(self, count: int):
        self._held = [np.zeros(0, np.int64) for _ in range(count)]  # the prompt each slot was last given
        self._busy: set[int] = set()

    def take(self, prompt: list[int]) -> int:
        """A free slot for `prompt` (the caller holds no more than `count` at once), marked busy until release."""
        tokens = np.asarray(prompt, np.int64)
        free = [i for i in range(len(self._held)) if i not in self._busy]
        shared = {i: _common_prefix(self._held[i], tokens) for i in free}
        best = max(free, key=shared.__getitem__)  # the lowest of those tied
        slot = best if shared[best] - shared[free[0]] >= REUSE_TOKENS else free[0]
        self._busy.add(slot)
        self._held[slot] = tokens
        return slot

    def release(self, slot: int) -> None:
        self._busy.discard(slot)


def _common_prefix(a: np.ndarray, b: np.ndarray) -> int:
    n = min(len(a), len(b))
    differ = np.flatnonzero(a[:n] != b[:n])
    return int(differ[0]) if differ.size else n
