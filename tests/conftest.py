from __future__ import annotations

import pytest
from openai import OpenAI

from supervisor.model_import import import_model
from tests.harness import Server, write_config

MODEL = "smollm2-135m-instruct"
CONTEXT = 2048  # small, so context-length errors are cheap to provoke


@pytest.fixture(scope="session")
def model_store(tmp_path_factory):
    """The bundled GGUF imported once per session into a temporary model store."""
    store = tmp_path_factory.mktemp("store")
    import_model(f"bundled:{MODEL}", MODEL, store)
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
        ],
    )


@pytest.fixture(scope="session")
def server(server_config):
    srv = Server(server_config).start()
    yield srv
    srv.stop()


@pytest.fixture(scope="session")
def client(server):
    return OpenAI(base_url=f"{server.url}/v1", api_key="not-needed", max_retries=0, timeout=120)
