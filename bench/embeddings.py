"""What do embeddings cost through the server, and what does batching inputs buy? all-MiniLM-L6-v2, side by side.

    uv run python bench/embeddings.py [--inputs 64] [--rounds 3]

Baseline: the worker's EmbeddingEngine in-process, all inputs in one request. Compared with it, in the same
run: the same request through the server (HTTP -> gateway -> ZeroMQ -> worker), and the inputs sent one per
request through the server. Rounds alternate so drift in machine speed hits every side alike.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from worker.cpu_tuning import preload_blas

BLAS = preload_blas()  # as the worker does, so the in-process baseline computes the same way

import httpx  # noqa: E402

from supervisor.model_import import import_model  # noqa: E402
from tests.harness import Server, write_config  # noqa: E402

MODEL = "all-minilm-l6-v2"


def texts(n: int) -> list[str]:
    subjects = ["The cat", "A stock index", "Our train", "The recipe", "A compiler", "The river", "My neighbour"]
    verbs = ["moved slowly past", "was compared with", "depends on", "was written about", "quietly replaced"]
    return [f"{subjects[i % 7]} {verbs[i % 5]} item number {i} in a sentence of ordinary length." for i in range(n)]


def timed(fn) -> float:
    started = time.perf_counter()
    fn()
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--inputs", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    from protocol.embedding import EmbedRequest
    from protocol.launch import EngineSettings
    from worker.backends import ModelToLoad, load_engine

    store = Path(tempfile.mkdtemp(prefix="bench-embed-"))
    server = None
    try:
        import_model(f"bundled:{MODEL}", MODEL, store)
        engine, _ = load_engine(ModelToLoad(str(store / MODEL), "embedding"), EngineSettings())
        config = write_config(store / "models.yaml", store, [{"id": MODEL, "source": MODEL, "type": "embedding"}])
        server = Server(config).start()
        http = httpx.Client(base_url=f"{server.url}/v1", timeout=300)
        inputs = texts(args.inputs)

        def local():
            engine.submit(EmbedRequest(request_id="b", inputs=inputs))
            engine.step(lambda event: None)

        def served():
            http.post("/embeddings", json={"model": MODEL, "input": inputs}).raise_for_status()

        def one_by_one():
            for text in inputs:
                http.post("/embeddings", json={"model": MODEL, "input": text}).raise_for_status()

        sides = {"in-process, one request": local, "server, one request": served, "server, one per input": one_by_one}
        for fn in sides.values():  # warm up: model load, first compile, connections
            fn()
        seconds = {name: [] for name in sides}
        for _ in range(args.rounds):
            for name, fn in sides.items():
                seconds[name].append(timed(fn))
        base = statistics.median(seconds["in-process, one request"])
        print(f"{args.inputs} inputs, median of {args.rounds} rounds, {BLAS} BLAS; baseline: in-process, one request")
        for name, values in seconds.items():
            median = statistics.median(values)
            print(f"  {name:28s} {median * 1000:8.1f} ms  {args.inputs / median:8.1f} inputs/s  {base / median:5.2f}x")
    finally:
        if server is not None:
            server.stop()
        shutil.rmtree(store, ignore_errors=True)


if __name__ == "__main__":
    main()
