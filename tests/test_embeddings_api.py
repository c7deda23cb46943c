"""Embeddings and rerank through the real gateway, supervisor and an mlx-embeddings worker (all-MiniLM-L6-v2)."""

from __future__ import annotations

import base64

import httpx
import numpy as np
import openai
import pytest

from tests.conftest import EMBEDDER

CAT, FELINE, STOCKS = "A cat is sleeping on the sofa.", "A feline naps on the couch.", "The stock market fell sharply."


def cosine(a, b) -> float:
    a, b = np.asarray(a), np.asarray(b)
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


def test_cat_is_closer_to_feline_than_to_the_stock_market(client):
    reply = client.embeddings.create(model=EMBEDDER, input=[CAT, FELINE, STOCKS], encoding_format="float")
    assert reply.model == EMBEDDER and reply.object == "list"
    assert [d.index for d in reply.data] == [0, 1, 2]
    cat, feline, stocks = (d.embedding for d in reply.data)
    assert len(cat) == 384
    assert cosine(cat, feline) > cosine(cat, stocks) + 0.2
    assert np.linalg.norm(cat) == pytest.approx(1.0, abs=1e-4)
    assert reply.usage.prompt_tokens == reply.usage.total_tokens > 3 * 5  # every input's tokens, [CLS]/[SEP] too


def test_base64_carries_the_same_vectors_and_a_string_input_is_one_input(server, client):
    floats = client.embeddings.create(model="minilm", input=CAT, encoding_format="float")  # an alias
    assert len(floats.data) == 1 and floats.model == EMBEDDER
    raw = httpx.post(
        f"{server.url}/v1/embeddings", json={"model": EMBEDDER, "input": CAT, "encoding_format": "base64"}, timeout=60
    ).json()
    decoded = np.frombuffer(base64.b64decode(raw["data"][0]["embedding"]), dtype="<f4")
    assert np.allclose(decoded, floats.data[0].embedding, atol=1e-6)
    # The SDK asks for base64 when no format is given, and decodes it itself.
    default = client.embeddings.create(model=EMBEDDER, input=CAT)
    assert np.allclose(default.data[0].embedding, floats.data[0].embedding, atol=1e-6)
    assert default.usage.prompt_tokens == floats.usage.prompt_tokens


def test_a_request_that_names_no_model_goes_to_the_default_embedding_model(server):
    reply = httpx.post(f"{server.url}/api/v1/embeddings", json={"input": ["one", "two"]}, timeout=60)
    assert reply.status_code == 200
    assert reply.json()["model"] == EMBEDDER and len(reply.json()["data"]) == 2


def test_dimensions_the_model_has_are_accepted_others_are_a_clear_400(client):
    same = client.embeddings.create(model=EMBEDDER, input=CAT, dimensions=384, encoding_format="float")
    assert len(same.data[0].embedding) == 384
    with pytest.raises(openai.BadRequestError) as err:
        client.embeddings.create(model=EMBEDDER, input=CAT, dimensions=128)
    assert "dimensions=128" in err.value.message and "384" in err.value.message


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"input": ""}, "input"),
        ({"input": []}, "input"),
        ({"input": ["fine", ""]}, "input[1]"),
        ({"input": 42}, "input"),
        ({"input": [[1, 2, 3]]}, "input[0]"),
        ({}, "input"),
        ({"input": "x", "encoding_format": "hex"}, "encoding_format"),
        ({"input": "x", "dimensions": 0}, "dimensions"),
    ],
)
def test_bad_embedding_requests_are_400_naming_the_field(server, body, param):
    reply = httpx.post(f"{server.url}/v1/embeddings", json={"model": EMBEDDER, **body}, timeout=30)
    assert reply.status_code == 400, reply.text
    error = reply.json()["error"]
    assert error["type"] == "invalid_request_error" and error["param"] == param


def test_an_input_longer_than_the_context_is_refused_not_cut(client):
    with pytest.raises(openai.BadRequestError) as err:
        client.embeddings.create(model=EMBEDDER, input=["short", "word " * 600])
    assert err.value.code == "context_length_exceeded"
    assert "input 1" in err.value.message and "512" in err.value.message


def test_a_model_of_the_wrong_type_says_so(client):
    with pytest.raises(openai.BadRequestError) as err:
        client.embeddings.create(model="smollm2", input=CAT)
    assert "embedding model" in err.value.message
    with pytest.raises(openai.BadRequestError) as err:
        client.chat.completions.create(model=EMBEDDER, messages=[{"role": "user", "content": "hi"}], max_tokens=4)
    assert "does not generate text" in err.value.message
    with pytest.raises(openai.NotFoundError):
        client.embeddings.create(model="no-such-embedder", input=CAT)


DOCUMENTS = [
    "The Federal Reserve raised interest rates by a quarter point.",
    "Cats are small carnivorous mammals often kept as pets; they purr and hunt mice.",
    "The recipe calls for two cups of flour and a pinch of salt.",
    "Rust's borrow checker enforces memory safety at compile time.",
]


def rerank(server, **body) -> httpx.Response:
    return httpx.post(f"{server.url}/v1/rerank", json=body, timeout=60)


def test_rerank_puts_the_cat_document_first(server):
    reply = rerank(server, query="What pets purr and chase mice?", documents=DOCUMENTS)
    assert reply.status_code == 200, reply.text
    body = reply.json()
    assert body["model"] == EMBEDDER  # the default: the bundled embedding model, scoring by cosine similarity
    results = body["results"]
    assert results[0]["index"] == 1 and results[0]["document"] == {"text": DOCUMENTS[1]}
    assert sorted(r["index"] for r in results) == [0, 1, 2, 3]
    scores = [r["relevance_score"] for r in results]
    assert scores == sorted(scores, reverse=True) and scores[0] > scores[1] + 0.1
    assert body["usage"]["total_tokens"] > 20 and body["meta"]["scoring"] == "bi-encoder"


def test_rerank_top_n_return_documents_and_document_objects(server):
    documents = [{"text": d} for d in DOCUMENTS]
    reply = rerank(server, model="minilm", query="feline pets", documents=documents, top_n=2, return_documents=False)
    assert reply.status_code == 200, reply.text
    results = reply.json()["results"]
    assert len(results) == 2 and results[0]["index"] == 1
    assert all("document" not in r for r in results)
    alike = rerank(server, model=EMBEDDER, query="feline pets", documents=DOCUMENTS, top_n=2).json()["results"]
    assert [r["index"] for r in alike] == [r["index"] for r in results]


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"query": "", "documents": ["a"]}, "query"),
        ({"query": "q", "documents": []}, "documents"),
        ({"query": "q", "documents": ["a", ""]}, "documents[1]"),
        ({"query": "q", "documents": "not a list"}, "documents"),
        ({"query": "q", "documents": ["a"], "top_n": 0}, "top_n"),
        ({"documents": ["a"]}, "query"),
    ],
)
def test_bad_rerank_requests_are_400_naming_the_field(server, body, param):
    reply = rerank(server, **body)
    assert reply.status_code == 400, reply.text
    assert reply.json()["error"]["param"] == param


def test_a_document_longer_than_the_context_is_named(server):
    reply = rerank(server, query="cats", documents=["short", "word " * 600])
    assert reply.status_code == 400 and reply.json()["error"]["code"] == "context_length_exceeded"
    assert reply.json()["error"]["message"].startswith("document 1 has")


def test_rerank_with_a_text_model_is_a_clear_400(server):
    reply = rerank(server, model="smollm2", query="q", documents=["a"])
    assert reply.status_code == 400 and "embedding model" in reply.json()["error"]["message"]
