"""Quantized KV caches that work in continuous batching: keys and values stored as mx.quantize triples
(packed uint32 words, scales, biases) per sequence and for the whole batch.

mlx-lm's QuantizedKVCache serves one sequence; its BatchGenerator merges per-sequence caches into a batch
cache, extends the batch with newcomers, filters out leavers, extracts one sequence's cache when it leaves
and trims for speculative rewinds, and only BatchKVCache (float) can do that. BatchQuantizedKVCache is
BatchKVCache's layout (left-padded rows, one write index for the batch, per-row offsets) with each of keys
and values a triple instead of one array, so every operation is BatchKVCache's applied to the three parts.
Tokens are quantized once, when written: merge, extend, filter and extract move quantized data and never
round-trip through float (the trap of dequantize-to-merge designs: the batch would hold float KV).

Padding is zeros in all three parts, which dequantizes to 0 and is masked out by the left padding anyway.
Attention over it is mlx-lm's quantized SDPA (models pick it when the cache has `bits`); its mask handling
for batched grouped-query attention is the one upstream fixed for this case.
"""

from __future__ import annotations

import mlx.core as mx
from mlx.utils import tree_map
from mlx_lm.models import cache as lm_cache
from mlx_lm.models.base import create_causal_mask


class QuantizedKVCache(lm_cache.QuantizedKVCache):
    """mlx-lm's single-sequence quantized cache, made batchable (BatchGenerator merges through `merge`)."""

    def size(self) -> int:
        return self.offset

    @property
    def nbytes(self) -> int:
        return 0 if self.keys is None else super().nbytes  # a fresh cache waiting in the queue holds nothing

    @classmethod
    def merge(cls, caches):
        return BatchQuantizedKVCache.merge(caches)


def make_cache(model, bits: int | None, group_size: int) -> list | None:
    """A fresh cache for one sequence with every plain KV layer quantized; None when `bits` is None (the caller
    lets mlx-lm make its float cache). Layers of other kinds (sliding windows, state-space) are kept as they are."""
    if bits is None:
        return None
    return [
        QuantizedKVCache(group_size=group_size, bits=bits) if type(c) is lm_cache.KVCache else c
        for c in lm_cache.make_prompt_cache(model)
    ]


def check_head_dim(config: dict, group_size: int) -> None:
    """Refuse, at load, a group size that does not divide the model's head dimension (mx.quantize would fail
    inside the batch step, ending every sequence in it)."""
    config = config.get("text_config", config)
    heads = config.get("num_attention_heads")
    head_dim = config.get("head_dim") or (config["hidden_size"] // heads if heads and "hidden_size" in config else 0)
    if head_dim and head_dim % group_size:
        raise ValueError(f"kv_group_size {group_size} does not divide the model's head dimension ({head_dim})")


def conform(cache: list, bits: int | None, group_size: int) -> list | None:
    """A cached state (the memory tier's, or a disk file written under other kv settings) in this engine's KV
    kind: 16-bit layers quantized when `bits` is set; None when it holds quantized layers of another kind (or
    any, for a 16-bit engine): a batch cannot mix them, so the caller treats it as a miss."""
    layers = []
    for layer in cache:
        if bits is not None and type(layer) is lm_cache.KVCache:
            layer = layer.to_quantized(group_size=group_size, bits=bits)
        if isinstance(layer, lm_cache.QuantizedKVCache) and (layer.bits, layer.group_size) != (bits, group_size):
            return None
        layers.append(layer)
    return as_batchable(layers)


def as_batchable(cache: list) -> list:
    """The same cache with mlx-lm's QuantizedKVCache layers (as load_prompt_cache builds them) made batchable."""
    for layer in cache:
        if type(layer) is lm_cache.QuantizedKVCache:
            layer.__class__ = QuantizedKVCache  # same fields; only merge and size are added
    return cache


def _zeros_like_rows(parts: tuple, rows: int, length: int) -> tuple:
    return tuple(mx.zeros((rows, p.shape[1], length, p.shape[3]), dtype=p.dtype) for p in parts)


def _pad_time(parts: tuple, left: int, right: int) -> tuple:
    if left == 0 and right == 0:
        return parts
    return tuple(mx.pad(p, [(0, 0), (0, 0), (left, right), (0, 0)]) for p in parts)


def _roll_rows(parts: tuple, shifts: mx.array) -> tuple:
    return tuple(lm_cache.dynamic_roll(p, shifts[:, None], axis=2) for p in parts)


class BatchQuantizedKVCache(lm_cache._BaseCache):
    """BatchKVCache with quantized keys and values; see the module docstring."""

    step = 256

    def __init__(self, left_padding: list[int], group_size: int = 64, bits: int = 8):
        self.keys: tuple | None = None
        self.values: tuple | None = None
        self.left_padding = mx.array(left_padding)
        self.offset = mx.array([-p for p in left_padding])
        self.group_size = group_size
        self.bits = bits
        self._idx = 0
        self._right_padding = None

    def update_and_fetch(self, keys, values):
        B, H, steps, Dk = keys.shape
        Dv = values.shape[-1]
        prev = self._idx
        if self.keys is None or prev + steps > self.keys[0].shape[2]:
            per_word = 32 // self.bits
            length = (self.step + steps - 1) // self.step * self.step

            def new(dim):
                groups = dim // self.group_size
                return (
                    mx.zeros((B, H, length, dim // per_word), dtype=mx.uint32),
                    mx.zeros((B, H, length, groups), dtype=keys.dtype),
                    mx.zeros((B, H, length, groups), dtype=keys.dtype),
                )

            if self.keys is None:
                self.keys, self.values = new(Dk), new(Dv)
            else:
                self.keys, self.values = tree_map(lambda x: x[..., :prev, :], (self.keys, self.values))
                more_k, more_v = new(Dk), new(Dv)
                self.keys = tuple(mx.concatenate([a, b], axis=2) for a, b in zip(self.keys, more_k, strict=True))
                self.values = tuple(mx.concatenate([a, b], axis=2) for a, b in zip(self.values, more_v, strict=True))
        self.offset = self.offset + steps
        self._idx += steps
        q_keys = mx.quantize(keys, group_size=self.group_size, bits=self.bits)
        q_values = mx.quantize(values, group_size=self.group_size, bits=self.bits)
        for part, new_part in zip((*self.keys, *self.values), (*q_keys, *q_values), strict=True):
            part[..., prev : self._idx, :] = new_part
        return self.keys_and_values()

    def keys_and_values(self):
        return tree_map(lambda x: x[..., : self._idx, :], (self.keys, self.values))

    def prepare(self, *, left_padding=None, lengths=None, right_padding=None):
        if left_padding is not None:
            if self.keys is not None:
                raise ValueError("left padding can only be added to an empty BatchQuantizedKVCache")
            left_padding = mx.array(left_padding)
            self.left_padding += left_padding
            self.offset = self.offset - left_padding
        if right_padding is not None and max(right_padding) > 0:
            self._right_padding = mx.array(right_padding)

    def finalize(self):
        """After a right-padded prefill: roll each row so its padding moves to the left, where it is masked."""
        if self._right_padding is not None:
            padding = self._right_padding
            self.keys, self.values = _roll_rows(self.keys, padding), _roll_rows(self.values, padding)
            self.offset = self.offset - padding
            self.left_padding += padding
            self._right_padding = None

    @property
    def state(self):
        return self.keys, self.values, self.offset, self.left_padding, self._idx

    @state.setter
    def state(self, v):
        self.keys, self.values, self.offset, self.left_padding, self._idx = v

    def is_trimmable(self):
        return True

    def trim(self, n):
        n = min(self._idx, n)
        self._idx -= n
        self.offset = self.offset - n
        return n

    def make_mask(self, N: int, return_array: bool = False, **kwargs):
        return create_causal_mask(N, offset=self._idx, left_padding=self.left_padding, **kwargs)

    def filter(self, batch_indices):
        """Keep the given rows (in place), then drop the padding columns every remaining row has."""
        if self.keys is not None:
            self.keys, self.values = tree_map(lambda x: x[batch_indices], (self.keys, self.values))
        self.offset = self.offset[batch_indices]
        self.left_padding = self.left_padding[batch_indices]
        trim = min(self.left_padding.tolist())
        if trim > 0:
            if self.keys is not None:
                self.keys, self.values = tree_map(lambda x: x[..., trim:, :], (self.keys, self.values))
            self._idx -= trim
            self.left_padding -= trim

    def extend(self, other: BatchQuantizedKVCache):
        """Append `other`'s rows (in place), both right-justified to the longer write index."""
        if self.keys is None and other.keys is None:
            self.left_padding = mx.concatenate([self.left_padding, other.left_padding])
            self.offset = mx.concatenate([self.offset, other.offset])
            return
        idx = max(self._idx, other._idx)
        length = max(c.keys[0].shape[2] for c in (self, other) if c.keys is not None)
        template = self if self.keys is not None else other

        def justified(c):
            if c.keys is None:
                rows = c.offset.shape[0]
                keys, values = _zeros_like_rows(template.keys, rows, 0), _zeros_like_rows(template.values, rows, 0)
            else:
                keys, values = c.keys, c.values
            left = idx - c._idx
            right = length - keys[0].shape[2] - left
            if right < 0:
                keys, values = tree_map(lambda x: x[..., :right, :], (keys, values))
                right = 0
            return _pad_time(keys, left, right), _pad_time(values, left, right), c.offset, c.left_padding + left

        (k1, v1, o1, p1), (k2, v2, o2, p2) = justified(self), justified(other)
        self.keys = tuple(mx.concatenate([a, b]) for a, b in zip(k1, k2, strict=True))
        self.values = tuple(mx.concatenate([a, b]) for a, b in zip(v1, v2, strict=True))
        self.offset, self.left_padding = mx.concatenate([o1, o2]), mx.concatenate([p1, p2])
        self._idx = idx

    def extract(self, idx: int) -> QuantizedKVCache:
        """Row `idx` as a single-sequence cache of its own (a copy, so it does not pin the batch's buffers)."""
        cache = QuantizedKVCache(group_size=self.group_size, bits=self.bits)
        padding = self.left_padding.tolist()[idx]
        cache.keys, cache.values = tree_map(
            lambda x: mx.contiguous(x[idx : idx + 1, :, padding : self._idx]), (self.keys, self.values)
        )
        cache.offset = self._idx - padding
        return cache

    @classmethod
    def merge(cls, caches: list[QuantizedKVCache]) -> BatchQuantizedKVCache:
        """One batch cache from single-sequence ones (left-padded to the longest)."""
        lengths = [c.offset if c.keys is not None else 0 for c in caches]
        longest = max(lengths)
        first = caches[0]
        if longest == 0:
            return cls([0] * len(caches), group_size=first.group_size, bits=first.bits)
        if any((c.bits, c.group_size) != (first.bits, first.group_size) for c in caches):
            raise ValueError("caches quantized with different bits or group sizes cannot share a batch")
        padding = [longest - n for n in lengths]
        filled = next(c for c in caches if c.keys is not None)
        keys = _zeros_like_rows(filled.keys, len(caches), longest)
        values = _zeros_like_rows(filled.values, len(caches), longest)
        for row, (pad, c) in enumerate(zip(padding, caches, strict=True)):
            if c.keys is None:
                continue
            for whole, part in zip((*keys, *values), (*c.keys, *c.values), strict=True):
                whole[row : row + 1, :, pad:] = part[..., : c.offset, :]
        batch = cls(padding, group_size=first.group_size, bits=first.bits)
        batch.keys, batch.values = keys, values
        batch.offset += longest
        batch._idx = longest
        return batch

    def size(self):
        return self._idx

    def empty(self):
        return self.keys is None

    @property
    def nbytes(self):
        if self.keys is None:
            return 0
        return sum(p.nbytes for p in (*self.keys, *self.values))
