"""The estimate a load is charged before its worker reports: config figure, else files + KV + caches + runtime."""

from __future__ import annotations

from protocol.launch import EngineSettings, LlamaCppSettings
from supervisor.bundled import bundled_path
from supervisor.config import GB, ModelSpec
from supervisor.memory_budget import RUNTIME_BYTES, estimate_bytes
from tests.conftest import EMBEDDER, MODEL, VLM


def test_estimate_is_weights_plus_a_full_context_kv_cache_plus_runtime(model_store):
    directory = model_store / MODEL
    weights = sum(f.stat().st_size for f in directory.glob("*.safetensors"))
    spec = ModelSpec(id="m", source=MODEL, context_length=2048, engine=EngineSettings(prompt_cache_mb=64))
    kv = 2 * 30 * 3 * 64 * 2048 * 2  # keys+values x layers x kv heads x head dim x tokens x float16
    cache = 64 * 2**20
    assert estimate_bytes(spec, str(directory)) == weights + kv + cache + RUNTIME_BYTES
    longer = ModelSpec(id="m", source=MODEL, context_length=8192, engine=EngineSettings(prompt_cache_mb=64))
    assert estimate_bytes(longer, str(directory)) == weights + 4 * kv + cache + RUNTIME_BYTES


def test_a_quantized_kv_cache_is_estimated_at_its_bits_plus_scales_and_biases(model_store):
    directory = str(model_store / MODEL)
    settings = dict(prompt_cache_mb=64)
    full = estimate_bytes(
        ModelSpec(id="m", source=MODEL, context_length=2048, engine=EngineSettings(**settings)), directory
    )
    kv = 2 * 30 * 3 * 64 * 2048 * 2
    for bits, group, value_bytes in ((8, 64, 1 + 4 / 64), (4, 64, 0.5 + 4 / 64), (8, 32, 1 + 4 / 32)):
        engine = EngineSettings(**settings, kv_bits=bits, kv_group_size=group)
        spec = ModelSpec(id="m", source=MODEL, context_length=2048, engine=engine)
        assert estimate_bytes(spec, directory) == full - kv + int(kv / 2 * value_bytes)
    # The draft model's cache stays 16-bit.
    engine = EngineSettings(**settings, kv_bits=8)
    drafted = ModelSpec(id="m", source=MODEL, context_length=2048, engine=engine)
    plain = ModelSpec(id="m", source=MODEL, context_length=2048, engine=EngineSettings(**settings))
    draft_cost = estimate_bytes(plain, directory, directory) - full
    assert estimate_bytes(drafted, directory, directory) - estimate_bytes(drafted, directory) == draft_cost


def test_the_configured_figure_wins_and_a_missing_directory_costs_only_the_runtime(model_store):
    stated = ModelSpec(id="m", source=MODEL, memory_gb=1.5)
    assert estimate_bytes(stated, str(model_store / MODEL)) == int(1.5 * GB)
    missing = ModelSpec(id="m", source="nowhere")
    assert estimate_bytes(missing, str(model_store / "nowhere")) == RUNTIME_BYTES


def test_a_draft_model_adds_its_weights_and_kv_cache(model_store):
    directory = str(model_store / MODEL)
    spec = ModelSpec(id="m", source=MODEL, context_length=2048, engine=EngineSettings(prompt_cache_mb=64))
    alone = estimate_bytes(spec, directory)
    with_draft = estimate_bytes(spec, directory, draft_source=directory)
    assert with_draft - alone == alone - 64 * 2**20 - RUNTIME_BYTES  # weights + KV once more, not the caches


def test_an_embedding_model_is_charged_its_weights_and_runtime_only(model_store):
    directory = model_store / EMBEDDER
    weights = (directory / "model.safetensors").stat().st_size
    assert 80 * 2**20 < weights < 100 * 2**20  # all-MiniLM-L6-v2 in float32
    spec = ModelSpec(id="e", source=EMBEDDER, type="embedding")
    assert estimate_bytes(spec, str(directory)) == weights + RUNTIME_BYTES  # no KV cache, no prompt cache


def test_a_vision_model_is_charged_its_kv_cache_but_no_prompt_cache(model_store):
    directory = model_store / VLM
    weights = (directory / "model.safetensors").stat().st_size
    spec = ModelSpec(id="v", source=VLM, type="vlm", context_length=1024)
    kv = 2 * 2 * 2 * 16 * 1024 * 2  # keys+values x layers x kv heads x head dim x tokens x float16
    assert estimate_bytes(spec, str(directory)) == weights + kv + RUNTIME_BYTES


def test_a_gguf_model_is_charged_its_file_and_a_kv_cache_per_slot():
    gguf = bundled_path(MODEL)
    llama = LlamaCppSettings(parallel=8)
    spec = ModelSpec(id="g", source="x", type="gguf", context_length=1024, llama_cpp=llama)
    kv = 2 * 30 * 3 * 64 * 1024 * 2  # one slot's keys and values over its context, float16 (from the GGUF's metadata)
    cache = 512 * 2**20  # llama.cpp's --cache-ram
    assert estimate_bytes(spec, str(gguf)) == gguf.stat().st_size + 8 * kv + cache + RUNTIME_BYTES
