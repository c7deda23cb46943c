"""The benchmark backend (bench/gateway_overhead.py's): a user cannot configure it; a benchmark that names it gets
the fixed answer, one token per step."""

from __future__ import annotations

import pytest

from protocol.control import BENCH_BACKEND_ENV, MODEL_TYPES, ModelType
from protocol.generation import ChatMessage, Finished, GenerateRequest, SamplingParams, TextChunk
from protocol.launch import EngineSettings
from supervisor.config import load_config
from worker.backends import Engine, ModelToLoad, load_engine
from worker.fixed_tokens import TOKENS

BENCH = ModelType.BENCH_FIXED_TOKENS.value


def test_a_user_config_cannot_select_the_benchmark_backend(tmp_path, monkeypatch):
    monkeypatch.delenv(BENCH_BACKEND_ENV, raising=False)
    config = tmp_path / "models.yaml"
    config.write_text(f"models:\n  - {{id: a, source: x, type: {BENCH}, memory_gb: 0.1}}\n")
    with pytest.raises(ValueError, match="not supported"):
        load_config(config)
    assert BENCH not in MODEL_TYPES  # not listed among the types a config may use
    with pytest.raises(ValueError, match="unknown model type"):
        load_engine(ModelToLoad("x", BENCH), EngineSettings())
    monkeypatch.setenv(BENCH_BACKEND_ENV, "yes")  # only the exact type name opens it
    with pytest.raises(ValueError, match="not supported"):
        load_config(config)
    monkeypatch.setenv(BENCH_BACKEND_ENV, BENCH)
    assert load_config(config).models["a"].type == BENCH


def test_the_benchmark_backend_answers_its_fixed_tokens_one_per_step(monkeypatch):
    monkeypatch.setenv(BENCH_BACKEND_ENV, BENCH)
    engine, _ = load_engine(ModelToLoad("x", BENCH), EngineSettings(max_waiting=2))
    assert isinstance(engine, Engine)
    for request_id, max_tokens in (("a", 3), ("b", 5)):
        message = [ChatMessage(role="user", content="hi")]
        sampling = SamplingParams(max_tokens=max_tokens)
        assert engine.submit(GenerateRequest(request_id=request_id, messages=message, sampling=sampling))
    events, steps = [], 0
    while engine.busy:
        engine.step(events.append)
        steps += 1
    assert steps == 5
    text = {r: "".join(e.text for e in events if isinstance(e, TextChunk) and e.request_id == r) for r in "ab"}
    assert text == {"a": "".join(TOKENS[:3]), "b": "".join(TOKENS[:5])}
    ends = {e.request_id: e.usage.completion_tokens for e in events if isinstance(e, Finished)}
    assert ends == {"a": 3, "b": 5}
