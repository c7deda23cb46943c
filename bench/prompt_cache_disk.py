"""Time to first token of a request sharing a ~2,000-token prefix: cold, from memory, and from disk.

    uv run python bench/prompt_cache_disk.py

In-process, as the worker computes: one engine answers a question after the prefix (cold) and another one
sharing it (the memory tier), then drains (`persist`, what a worker does when it stops); a new engine on the
same model and cache folder, as a restarted worker has, answers a third (restored from disk). Also: what
the drain's writes cost, and the files' size. Goal: disk <= 25% of cold.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from worker.cpu_tuning import preload_blas

BLAS = preload_blas()  # before mlx is imported, as the worker does

from bench.inprocess import bundled_model  # noqa: E402
from protocol.generation import ChatMessage, GenerateRequest, SamplingParams, TextChunk  # noqa: E402
from protocol.launch import EngineSettings  # noqa: E402
from worker.batch_engine import BatchEngine  # noqa: E402

PREFIX = "You answer questions about this atlas. " + " ".join(
    f"Fact {i}: river {i} flows north into lake {i * 7 % 13}." for i in range(125)
)


def first_token(engine: BatchEngine, question: str) -> tuple[float, int, int]:
    """(seconds to the first token, prompt tokens, cached tokens) of one request; it runs to its end."""
    messages = [ChatMessage(role="system", content=PREFIX), ChatMessage(role="user", content=question)]
    request = GenerateRequest(
        request_id=question, messages=messages, sampling=SamplingParams(temperature=0, max_tokens=4)
    )
    events: list = []
    engine.submit(request)
    started, ttft = time.perf_counter(), None
    while engine.busy:
        engine.step(events.append)
        if ttft is None and any(isinstance(e, TextChunk) for e in events):
            ttft = time.perf_counter() - started
    chunk = next(e for e in events if isinstance(e, TextChunk))
    return ttft, chunk.prompt_tokens, chunk.cached_tokens


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.parse_args()
    folder = Path(tempfile.mkdtemp(prefix="mlxs-prompt-cache-"))
    try:
        with bundled_model() as loaded:
            options = EngineSettings(prompt_cache_dir=str(folder))
            first = BatchEngine(loaded, options)
            rows = {"cold": first_token(first, "Which river flows into lake 3?")}
            rows["memory"] = first_token(first, "Which river flows into lake 5?")
            started = time.perf_counter()
            first.persist()
            drain = time.perf_counter() - started
            started = time.perf_counter()
            second = BatchEngine(loaded, options)  # reads the index, as a new worker does
            index = time.perf_counter() - started
            rows["disk (new engine)"] = first_token(second, "Which river flows into lake 7?")
            files = list(folder.rglob("*.safetensors"))
            size = sum(f.stat().st_size for f in files)
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    cold = rows["cold"][0]
    print(f"\nmodel smollm2-135m-instruct ({BLAS or 'reference BLAS'}), {rows['cold'][1]}-token prompt\n")
    print("| prefix from | TTFT s | cached tokens | vs cold |")
    print("|---|---:|---:|---:|")
    for name, (ttft, _, cached) in rows.items():
        print(f"| {name} | {ttft:.2f} | {cached} | {ttft / cold:.2f} |")
    print(
        f"\ndrain (write {len(files)} files, {size / 2**20:.1f} MB, and wait): {drain:.2f} s; index read: {index:.3f} s"
    )
    ratio = rows["disk (new engine)"][0] / cold
    print(f"disk / cold: {ratio:.2f}  (goal <= 0.25: {'met' if ratio <= 0.25 else 'NOT met'})")


if __name__ == "__main__":
    main()
