"""Encoder models on mlx-embeddings: embeddings, and reranking by a cross-encoder head or by cosine similarity.

An encoder answers a request in one forward pass, so the engine runs one request per `step()` (its inputs in
batches of BATCH), and pings and aborts are served between requests. It has the BatchEngine's interface, so
the generation thread drives either without knowing which.
"""

from __future__ import annotations

import time
from pathlib import Path

import mlx.core as mx
import numpy as np

from protocol.embedding import Embeddings, EmbedRequest, RerankRequest, RerankScores
from protocol.errors import ErrorCode
from protocol.generation import failure
from worker.containment import failed
from worker.model_loader import LoadedModel, context_length_of
from worker.prompt_encoding import RequestRejected
from worker.waiting import MAX_WAITING, Waiting

BATCH = 32  # texts per forward pass: bounds the activations a long list of inputs can hold at once


def load_encoder(source: str, context_length: int | None = None) -> LoadedModel:
    """An embedding or cross-encoder model directory, loaded with mlx-embeddings (no hub: a local directory)."""
    import json

    import psutil
    from mlx_embeddings import load

    from worker.cpu_tuning import tune_model

    if not Path(source).is_dir():
        raise FileNotFoundError(f"model directory {source!r} does not exist")
    started = time.perf_counter()
    model, tokenizer = load(source)
    mx.eval(model.parameters())
    model, compute = tune_model(model, psutil.virtual_memory().total)  # on a Linux CPU: OpenBLAS, float32
    config = json.loads((Path(source) / "config.json").read_text())
    tokenizer = getattr(tokenizer, "_tokenizer", tokenizer)  # the Hugging Face tokenizer inside the wrapper
    return LoadedModel(
        model=model,
        tokenizer=tokenizer,
        context_length=context_length_of(config, tokenizer, context_length),
        load_seconds=time.perf_counter() - started,
        compute=f"{compute} (mlx-embeddings)",
        config=config,
    )


class EmbeddingEngine:
    def __init__(self, loaded: LoadedModel, max_waiting: int = MAX_WAITING):
        self._model = loaded.model
        self._tokenizer = loaded.tokenizer
        self.context_length = loaded.context_length
        self.cross_encoder = hasattr(loaded.model, "classifier")  # a sequence-classification head
        # Sizes a vector may be cut to: its own, and those the model was trained to keep meaning at (Matryoshka).
        self.dimensions = self._native_dimensions()
        self.allowed_dimensions = {self.dimensions, *loaded.config.get("matryoshka_dimensions", ())}
        self._waiting = Waiting(max_waiting)

    def _native_dimensions(self) -> int:
        config = self._model.config
        return getattr(config, "hidden_size", None) or getattr(config.text_config, "hidden_size", 0)

    in_flight = 0  # a request runs within one step: between steps nothing is half done

    @property
    def queued(self) -> int:
        return len(self._waiting)

    @property
    def busy(self) -> bool:
        return bool(self._waiting)

    def cache_bytes(self) -> tuple[int, int]:
        return 0, 0  # no KV cache, no prompt cache

    def submit(self, request) -> bool:
        return self._waiting.offer(request)

    def abort(self, request_id: str, emit, code=ErrorCode.ABORTED, reason="aborted by the client") -> bool:
        if not self._waiting.drop(request_id):
            return False
        emit(failure(request_id, code, reason))
        return True

    def abort_all(self, emit, code: ErrorCode, reason: str) -> None:
        for request in list(self._waiting):
            self.abort(request.request_id, emit, code=code, reason=reason)

    def step(self, emit) -> None:
        if not self._waiting:
            return
        request = self._waiting.popleft()
        try:
            if isinstance(request, EmbedRequest):
                emit(self._embed(request))
            elif isinstance(request, RerankRequest):
                emit(self._rerank(request))
            else:
                raise RequestRejected(
                    ErrorCode.INVALID_REQUEST,
                    "This model computes embeddings; it does not generate text or audio (its type is embedding)",
                )
        except Exception as exc:  # whatever this request's tokenizing or forward pass raised ends it alone
            emit(failed(request, exc, "encoding the inputs"))

    # -- the work ------------------------------------------------------------------------------------------

    def _check_lengths(self, texts: list[str], pairs: list[str] | None, name) -> None:
        """Refuse, before any model work, an input longer than the model's context rather than cut it.
        `name(i)` says which input the client sees at position i."""
        for i, ids in enumerate(self._tokenizer(texts, pairs, truncation=False)["input_ids"]):
            if len(ids) > self.context_length:
                raise RequestRejected(
                    ErrorCode.CONTEXT_LENGTH_EXCEEDED,
                    f"{name(i)} has {len(ids)} tokens; this model's maximum context length is "
                    f"{self.context_length} tokens",
                )

    def _forward(self, texts: list[str], pairs: list[str] | None = None):
        """Per batch: (the model's output, the number of real tokens)."""
        for start in range(0, len(texts), BATCH):
            chunk = texts[start : start + BATCH], pairs and pairs[start : start + BATCH]
            batch = self._tokenizer(*chunk, padding=True, return_tensors="np")
            mask = mx.array(batch["attention_mask"])
            output = self._model(mx.array(batch["input_ids"]), attention_mask=mask)
            yield output, int(batch["attention_mask"].sum())

    def _vectors(self, texts: list[str]) -> tuple[np.ndarray, int]:
        rows, tokens = [], 0
        for output, n in self._forward(texts):
            rows.append(np.array(output.text_embeds.astype(mx.float32)))
            tokens += n
        return np.concatenate(rows), tokens

    def _embed(self, request: EmbedRequest) -> Embeddings:
        if self.cross_encoder:
            raise RequestRejected(
                ErrorCode.INVALID_REQUEST, "This model is a cross-encoder: it reranks, it does not embed"
            )
        size = request.dimensions or self.dimensions
        if size not in self.allowed_dimensions:
            allowed = ", ".join(str(d) for d in sorted(self.allowed_dimensions))
            raise RequestRejected(
                ErrorCode.INVALID_REQUEST,
                f"This model does not support dimensions={size}: its embeddings have {allowed} dimensions",
            )
        self._check_lengths(request.inputs, None, lambda i: f"input {i}")
        vectors, tokens = self._vectors(request.inputs)
        if size != vectors.shape[1]:  # Matryoshka: keep the leading dimensions, then normalise again
            vectors = vectors[:, :size]
            vectors /= np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)
        data = np.ascontiguousarray(vectors, dtype="<f4").tobytes()
        return Embeddings(request_id=request.request_id, dimensions=size, vectors=data, prompt_tokens=tokens)

    def _rerank(self, request: RerankRequest) -> RerankScores:
        if self.cross_encoder:
            scores, tokens = [], 0
            queries = [request.query] * len(request.documents)
            self._check_lengths(queries, request.documents, lambda i: f"the query with document {i}")
            for output, n in self._forward(queries, request.documents):
                logits = output.pooler_output  # the head's output, already through sigmoid/softmax
                scores += np.array(logits[:, -1].astype(mx.float32)).tolist()  # last label: "relevant"
                tokens += n
            method = "cross-encoder"
        else:
            texts = [request.query, *request.documents]
            self._check_lengths(texts, None, lambda i: f"document {i - 1}" if i else "the query")
            vectors, tokens = self._vectors(texts)
            scores = (vectors[1:] @ vectors[0]).tolist()  # unit vectors: the dot product is the cosine
            method = "bi-encoder"
        return RerankScores(request_id=request.request_id, scores=scores, prompt_tokens=tokens, method=method)
