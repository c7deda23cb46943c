from __future__ import annotations

import pytest
from openai import OpenAI

from supervisor.model_import import import_model
from tests.harness import Server, write_config
from tests.tiny_vlm import build_tiny_qwen2_vl

MODEL = "smollm2-135m-instruct"
EMBEDDER = "all-minilm-l6-v2"
VLM = "tiny-vlm"
CONTEXT = 2048  # small, so context-length errors are cheap to provoke


@pytest.fixture(scope="session")
def model_store(tmp_path_factory):
    """The bundled models (the GGUF, the embedding model) imported once per session into a temporary store."""
    store = tmp_path_factory.mktemp("store")
    import_model(f"bundled:{MODEL}", MODEL, store)
    import_model(f"bundled:{EMBEDDER}", EMBEDDER, store)
    build_tiny_qwen2_vl(store / VLM, tokenizer_src=store / MODEL)  # no real vision model can be fetched here
    return store


@pytest.fixture(scope="session")
def server_config(tmp_path_factory, model_store):
    return write_config(
        tmp_path_factory.mktemp("config") / "models.yaml",
        model_store,
        [
            {"id": "smollm2", "aliases": ["tiny"], "source": MODEL, "context_length": CONTEXT, "memory_gb": 0.3},
            {"id": "broken", "source": "no-such-model-directory"},
            # One decode slot: shows that an aborted stream hands its slot over at once.
            {"id": "solo", "source": MODEL, "context_length": CONTEXT, "engine": {"decode_concurrency": 1}},
            # Speculative decoding with the bundled model as its own draft (no smaller model is bundled).
            {"id": "spec", **SHARED, "draft_model": "smollm2", "engine": {"num_draft_tokens": 2}},
            # The gateway's default for embeddings and rerank requests that name no model.
            {"id": EMBEDDER, "aliases": ["minilm"], "source": EMBEDDER, "type": "embedding"},
            {"id": VLM, "source": VLM, "type": "vlm", "context_length": 256},
        ],
        crash_limit=100,  # tests across modules kill smollm2's worker on purpose; test_recovery tests the limit
        claude_tiers={"haiku": "tiny"},  # sonnet and opus stay unrouted: requests for them are not found
    )


@pytest.fixture(scope="session")
def server(server_config):
    srv = Server(server_config).start()
    yield srv
    srv.stop()


@pytest.fixture(scope="session")
def client(server):
    return OpenAI(base_url=f"{server.url}/v1", api_key="not-needed", max_retries=0, timeout=120)


SHARED = {"source": MODEL, "context_length": CONTEXT, "memory_gb": 0.3}
BUDGET_GB = 0.75  # fits two of the 0.3 GB models, not three


@pytest.fixture(scope="session")
def budget_server(tmp_path_factory, model_store):
    """Three models sharing the bundled weights under different ids, a budget that fits two; `ttl` unloads
    itself when idle; `huge` can never fit. More than one crash in five minutes marks a model failed."""
    config = write_config(
        tmp_path_factory.mktemp("budget") / "models.yaml",
        model_store,
        [
            {"id": "a", **SHARED},
            {"id": "b", **SHARED},
            {"id": "c", **SHARED},
            {"id": "ttl", **SHARED, "idle_ttl_seconds": 2},
            {"id": "huge", **SHARED, "memory_gb": 5},
        ],
        memory_budget_gb=BUDGET_GB,
        heartbeat_seconds=0.5,
        max_wait_seconds=90,
        crash_limit=1,
    )
    srv = Server(config)
    srv.env["MLX_SERVER_CPU_TUNING"] = "off"  # 4-bit weights as loaded: resident stays under the 0.3 GB estimate
    yield srv.start()
    srv.stop()


@pytest.fixture(scope="session")
def tight_server(tmp_path_factory, model_store):
    """Room for one model, a short wait for memory, a short heartbeat timeout, frequent SSE keepalives."""
    config = write_config(
        tmp_path_factory.mktemp("tight") / "models.yaml",
        model_store,
        [{"id": "x", **SHARED}, {"id": "y", **SHARED}],
        memory_budget_gb=0.5,
        heartbeat_seconds=0.5,
        heartbeat_timeout_seconds=15,
        max_wait_seconds=3,
    )
    srv = Server(config)
    srv.env["GATEWAY_KEEPALIVE_SECONDS"] = "0.5"
    srv.env["MLX_SERVER_CPU_TUNING"] = "off"
    yield srv.start()
    srv.stop()
