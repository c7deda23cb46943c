"""A quantized KV cache (engine.kv_bits) in the continuous batch: the same greedy text as the 16-bit cache in less
memory, through joins, leaves, aborts, the prompt cache and the speculative hand-off."""

from __future__ import annotations

import dataclasses

import pytest

from protocol.generation import GenerateRequest, GenerationError, SamplingParams
from protocol.launch import EngineSettings
from tests.conftest import MODEL
from tests.test_engine import PARIS, SYSTEM, chat, finished, run, text_of
from worker.batch_engine import BatchEngine
from worker.model_loader import load_model

QUESTIONS = [
    PARIS,
    "Name three colours.",
    "Count to five.",
    "What is 2+2?",
    "Say hello in Spanish.",
    "Name a fruit.",
    "What is water made of?",
    "Tell me about the moon.",
]

BRIEF = SYSTEM[:700]  # a shared system prompt of about 150 tokens


@pytest.fixture(scope="module")
def loaded(model_store):
    return load_model(str(model_store / MODEL), context_length=2048)


def engine(loaded, kv_bits=8, **options) -> BatchEngine:
    return BatchEngine(loaded, EngineSettings(decode_concurrency=8, prefill_step_size=128, kv_bits=kv_bits, **options))


def test_eight_bit_kv_gives_the_16_bit_greedy_text_in_half_the_memory(loaded):
    """Eight sequences decoded together for 32 tokens. Measured on the bundled model (CPU), over three runs: seven
    of the eight texts identical to the 16-bit ones each time; the eighth departs where rounding flips a near-tie,
    at character 98 of one answer in one run and at the third token of another ("Hola in English" for "Hola in
    Spanish") in another. So: at least six of eight identical."""
    texts, kv_bytes = {}, {}
    for bits in (None, 8):
        batch = engine(loaded, kv_bits=bits, prompt_cache_mb=0)
        for i, question in enumerate(QUESTIONS):
            batch.submit(chat(f"q{i}", question, temperature=0, max_tokens=32))
        events = []
        batch.step(events.append)  # the eight prompts, then the first tokens
        while not any(e.request_id == "q0" for e in events):
            batch.step(events.append)
        kv_bytes[bits] = batch.cache_bytes()[0]
        while batch.busy:
            batch.step(events.append)
        assert not [e for e in events if isinstance(e, GenerationError)]
        texts[bits] = [text_of(events, f"q{i}") for i in range(len(QUESTIONS))]
    assert "Paris" in texts[8][0]
    identical = sum(a == b for a, b in zip(texts[None], texts[8], strict=True))
    assert identical >= 6, list(zip(texts[None], texts[8], strict=True))
    # 8 bits plus a 16-bit scale and bias per 64 values, against 16 bits: about 0.53 of the bytes.
    assert 0 < kv_bytes[8] <= 0.6 * kv_bytes[None], kv_bytes


def test_a_quantized_batch_takes_joins_leaves_aborts_and_the_prompt_cache(loaded):
    quantized = engine(loaded)
    events = []
    quantized.submit(chat("long", PARIS, system=BRIEF, temperature=0, max_tokens=12))
    quantized.submit(chat("short", "Count to five.", temperature=0, max_tokens=3))  # leaves first
    quantized.submit(chat("doomed", "Name a fruit.", temperature=0, max_tokens=16))
    counting = SamplingParams(temperature=0, max_tokens=16, stop=["7"])
    quantized.submit(GenerateRequest(request_id="stops", prompt="1, 2, 3, 4,", sampling=counting))  # ends on a stop
    for _ in range(3):
        quantized.step(events.append)
    assert quantized.abort("doomed", events.append)
    # Joins a batch already decoding, its prompt sharing the system prompt the batch has cached.
    quantized.submit(chat("joins", "What is 2+2?", system=BRIEF, temperature=0, max_tokens=8))
    while quantized.busy:
        quantized.step(events.append)

    assert "Paris" in text_of(events, "long")
    assert finished(events, "short").usage.completion_tokens == 3
    assert [e.code for e in events if isinstance(e, GenerationError)] == ["aborted"]
    assert finished(events, "stops").stop_sequence == "7" and "6" in text_of(events, "stops")
    assert finished(events, "joins").usage.cached_tokens > 100  # served from the quantized prompt cache
    assert quantized.cache_bytes()[0] == 0 and quantized.cache_bytes()[1] > 0
    # What the joining request read is what it reads decoded on its own, from no cache (8-bit too).
    alone = run(engine(loaded, prompt_cache_mb=0), chat("a", "What is 2+2?", system=BRIEF, temperature=0, max_tokens=8))
    assert text_of(events, "joins") == text_of(alone, "a")


def test_a_speculative_request_hands_its_quantized_cache_to_the_batch(loaded):
    """The draft is the model itself; the first request starts speculatively, the second moves it into the
    batch with its 8-bit cache, and both read what a plain 8-bit batch produces."""
    plain = engine(loaded)
    speculative = BatchEngine(
        dataclasses.replace(loaded, draft_model=loaded.model),
        EngineSettings(decode_concurrency=8, prefill_step_size=128, kv_bits=8, num_draft_tokens=2),
    )
    first = dict(content="Name three colours of the rainbow.", temperature=0, max_tokens=24)
    second = dict(content=PARIS, temperature=0, max_tokens=12)
    alone = run(plain, chat("a", **first), chat("b", **second))

    events = []
    speculative.submit(chat("a", **first))
    speculative.step(events.append)
    speculative.step(events.append)
    assert speculative.in_flight == 1
    speculative.submit(chat("b", **second))
    while speculative.busy:
        speculative.step(events.append)
    assert text_of(events, "a") == text_of(alone, "a")
    assert text_of(events, "b") == text_of(alone, "b")
    assert finished(events, "a").draft_accepted_tokens > 0


def test_a_group_size_the_head_dimension_does_not_take_is_refused_at_load(loaded):
    with pytest.raises(ValueError, match=r"kv_group_size 128 does not divide the model's head dimension \(64\)"):
        engine(loaded, kv_group_size=128)


def test_a_cached_state_at_other_kv_settings_is_converted_or_refused():
    """A disk file written before kv_bits changed: 16-bit layers are quantized on restore; quantized layers of
    another kind cannot share the batch, so they are a miss (None), never a failed batch step."""
    import mlx.core as mx
    from mlx_lm.models.cache import KVCache

    from worker.quantized_cache import QuantizedKVCache, conform

    layer = KVCache()
    layer.update_and_fetch(mx.ones((1, 3, 5, 64)), mx.ones((1, 3, 5, 64)))
    [quantized] = conform([layer], 8, 64)
    assert isinstance(quantized, QuantizedKVCache) and (quantized.offset, quantized.bits) == (5, 8)
    assert conform([quantized], None, 64) is None and conform([quantized], 4, 64) is None
    assert conform([layer], None, 64) == [layer]
