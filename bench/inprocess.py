"""In-process benchmarks' common parts: the bundled model in a temporary store, and a batch's decode rate."""

from __future__ import annotations

import contextlib
import shutil
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

from protocol.generation import Finished, GenerateRequest
from supervisor.model_import import import_model
from worker.batch_engine import BatchEngine
from worker.model_loader import LoadedModel, load_model

MODEL = "smollm2-135m-instruct"


@contextlib.contextmanager
def bundled_model() -> Iterator[LoadedModel]:
    """The bundled model, imported into a temporary store that is removed afterwards, loaded as the worker does."""
    store = Path(tempfile.mkdtemp(prefix="mlxs-bench-"))
    try:
        import_model(f"bundled:{MODEL}", MODEL, store)
        yield load_model(str(store / MODEL))
    finally:
        shutil.rmtree(store, ignore_errors=True)


def decode_rate(engine: BatchEngine, requests: list[GenerateRequest]) -> float:
    """Generated tokens per second for `requests` decoded together (prefill included)."""
    for request in requests:
        engine.submit(request)
    generated = 0

    def emit(event) -> None:
        nonlocal generated
        if isinstance(event, Finished):
            generated += event.usage.completion_tokens

    started = time.perf_counter()
    while engine.busy:
        engine.step(emit)
    return generated / (time.perf_counter() - started)
