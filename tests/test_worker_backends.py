"""The encoder and vision engines in-process, on the cases the server tests do not reach: a cross-encoder's
classification head, Matryoshka dimensions, and a vision request aborted, stopped or refused mid-way."""

from __future__ import annotations

import json
import shutil

import mlx.core as mx
import numpy as np
import pytest

from protocol.embedding import Embeddings, EmbedRequest, RerankRequest, RerankScores
from protocol.generation import ChatMessage, Finished, GenerateRequest, GenerationError, SamplingParams, TextChunk
from protocol.launch import EngineSettings
from tests.conftest import EMBEDDER, VLM
from tests.test_vision_api import png
from worker.backends import Engine, ModelToLoad, load_engine


def run(engine, request) -> list:
    events = []
    engine.submit(request)
    while engine.busy:
        engine.step(events.append)
    return events


@pytest.fixture(scope="module")
def cross_encoder_dir(tmp_path_factory, model_store):
    """A tiny randomly initialised ModernBERT cross-encoder (one sigmoid label, as rerankers like
    gte-reranker-modernbert-base have), with all-MiniLM's WordPiece tokenizer."""
    from mlx.utils import tree_flatten
    from mlx_embeddings.models.modernbert import Model, ModelArgs

    dst = tmp_path_factory.mktemp("reranker")
    for name in ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "special_tokens_map.json"):
        shutil.copy(model_store / EMBEDDER / name, dst / name)
    config = {
        "model_type": "modernbert",
        "architectures": ["ModernBertForSequenceClassification"],
        "vocab_size": 30522,
        "hidden_size": 32,
        "num_hidden_layers": 2,
        "intermediate_size": 64,
        "num_attention_heads": 2,
        "max_position_embeddings": 512,
        "id2label": {"0": "LABEL_0"},
        "classifier_pooling": "mean",
    }
    (dst / "config.json").write_text(json.dumps(config))
    mx.random.seed(0)
    model = Model(ModelArgs.from_dict(config))
    mx.save_safetensors(str(dst / "model.safetensors"), dict(tree_flatten(model.parameters())))
    return dst


def test_a_cross_encoder_scores_each_pair_with_its_head(cross_encoder_dir):
    engine, loaded = load_engine(ModelToLoad(str(cross_encoder_dir), "embedding"), EngineSettings())
    assert engine.cross_encoder and isinstance(engine, Engine)
    documents = ["cats purr", "stocks fell", "it may rain"]
    (result,) = run(engine, RerankRequest(request_id="r", query="which pets purr?", documents=documents))
    assert isinstance(result, RerankScores) and result.method == "cross-encoder"
    # The same pair, scored alone by the model, gives the same score: pairs are scored, not vectors compared.
    pair = loaded.tokenizer(["which pets purr?"], ["stocks fell"], return_tensors="np")
    alone = loaded.model(mx.array(pair["input_ids"]), attention_mask=mx.array(pair["attention_mask"]))
    assert result.scores[1] == pytest.approx(alone.pooler_output[0, 0].item(), abs=1e-4)
    assert all(0 < s < 1 for s in result.scores) and len(set(result.scores)) == 3  # sigmoid of distinct logits
    (refused,) = run(engine, EmbedRequest(request_id="e", inputs=["x"]))
    assert isinstance(refused, GenerationError) and "cross-encoder" in refused.message


def test_matryoshka_dimensions_cut_and_renormalise(tmp_path, model_store):
    model_dir = tmp_path / "minilm"
    shutil.copytree(model_store / EMBEDDER, model_dir)
    config = json.loads((model_dir / "config.json").read_text())
    (model_dir / "config.json").write_text(json.dumps(config | {"matryoshka_dimensions": [128, 256]}))
    engine, _ = load_engine(ModelToLoad(str(model_dir), "embedding"), EngineSettings())
    (full,) = run(engine, EmbedRequest(request_id="a", inputs=["a cat"]))
    (cut,) = run(engine, EmbedRequest(request_id="b", inputs=["a cat"], dimensions=128))
    assert isinstance(cut, Embeddings) and cut.dimensions == 128
    full_vector = np.frombuffer(full.vectors, dtype="<f4")
    cut_vector = np.frombuffer(cut.vectors, dtype="<f4")
    assert np.linalg.norm(cut_vector) == pytest.approx(1.0, abs=1e-5)
    assert np.allclose(cut_vector, full_vector[:128] / np.linalg.norm(full_vector[:128]), atol=1e-6)
    (refused,) = run(engine, EmbedRequest(request_id="c", inputs=["a cat"], dimensions=100))
    assert isinstance(refused, GenerationError) and "128, 256, 384" in refused.message


@pytest.fixture(scope="module")
def vision(model_store):
    engine, _ = load_engine(ModelToLoad(str(model_store / VLM), "vlm", 256), EngineSettings())
    assert isinstance(engine, Engine)
    return engine


def look(request_id: str, max_tokens: int | None = 6, stop: list[str] | None = None, sampling=None) -> GenerateRequest:
    message = ChatMessage(role="user", content="Describe it.", images=[png()])
    sampling = sampling or SamplingParams(temperature=0, max_tokens=max_tokens, stop=stop or [])
    return GenerateRequest(request_id=request_id, messages=[message], sampling=sampling)


def test_vision_requests_run_one_at_a_time_and_an_abort_frees_the_turn(vision):
    events = []
    vision.submit(look("first"))
    vision.submit(look("second"))
    vision.step(events.append)  # prefill and the first token of "first"
    assert vision.in_flight == 1 and vision.queued == 1
    assert vision.abort("first", events.append)
    assert isinstance(events[-1], GenerationError) and events[-1].code == "aborted"
    while vision.busy:
        vision.step(events.append)
    second = [e for e in events if e.request_id == "second"]
    assert isinstance(second[-1], Finished) and second[-1].usage.completion_tokens == 6
    assert all(isinstance(e, TextChunk) for e in second[:-1])


def test_vision_stop_sequences_and_unlimited_max_tokens(vision):
    free = run(vision, look("free", max_tokens=12))
    text = "".join(e.text for e in free if isinstance(e, TextChunk))
    stop = text.strip()[3:6]  # somewhere inside the (greedy, repeatable) answer
    stopped = run(vision, look("stopped", max_tokens=12, stop=[stop]))
    assert stopped[-1].finish_reason == "stop"
    assert "".join(e.text for e in stopped if isinstance(e, TextChunk)) == text[: text.index(stop)]
    to_the_end = run(vision, look("end", max_tokens=None))  # up to the end of the 256-token context
    assert to_the_end[-1].finish_reason == "length"
    assert to_the_end[-1].usage.prompt_tokens + to_the_end[-1].usage.completion_tokens == 256


def test_vision_refuses_what_it_cannot_serve(vision):
    (too_long,) = run(vision, look("long", max_tokens=1000))
    assert too_long.code == "context_length_exceeded" and "images included" in too_long.message
    broken = GenerateRequest(
        request_id="broken", messages=[ChatMessage(role="user", content="?", images=[b"not an image"])]
    )
    (bad,) = run(vision, broken)
    assert bad.code == "invalid_request" and "image 0 could not be decoded" in bad.message
    sliver = GenerateRequest(
        request_id="sliver", messages=[ChatMessage(role="user", content="?", images=[png(size=(1000, 2))])]
    )
    (refused,) = run(vision, sliver)  # Qwen-VL's processor takes no aspect ratio beyond 200:1
    assert refused.code == "invalid_request" and "aspect ratio" in refused.message
    (no_logprobs,) = run(vision, look("logprobs", sampling=SamplingParams(logprobs=True)))
    assert no_logprobs.code == "invalid_request" and "logprobs" in no_logprobs.message
    (embed,) = run(vision, EmbedRequest(request_id="e", inputs=["x"]))
    assert embed.code == "invalid_request"
    assert not vision.busy
