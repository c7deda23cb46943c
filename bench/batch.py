"""Does a batch stay out of the way, and does it keep its speed? The Batch API against the same lines sent by
clients, with an interactive client sending one request every few seconds throughout.

    uv run python bench/batch.py [--lines 64] [--tokens 16] [--interval 3] [--clients 8]

One server with the bundled model. Three phases, one after the other:
  alone      the interactive client by itself: its time to first token (the baseline)
  clients    the batch's lines sent as `clients` concurrent chat completions (the throughput baseline),
             the interactive client running alongside
  batch      the same lines as one batch (POST /v1/files, /v1/batches, polled to completed), the interactive
             client running alongside
Reported: the interactive client's median TTFT in each phase, and the lines' aggregate tok/s (completion tokens
over the wall time from the first line sent, or the batch created, to the last answer, or its completion).
Goals: interactive TTFT during the batch <= 1.5x alone; batch tok/s >= 0.9x the concurrent clients'.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import httpx
import openai

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from supervisor.model_import import import_model
from tests.harness import Server, write_config

MODEL = "smollm2-135m-instruct"


def body(i: int, tokens: int) -> dict:
    question = f"Write a short note about city number {i} and its river."
    return {"model": "smollm2", "messages": [{"role": "user", "content": question}], "max_tokens": tokens} | {
        "temperature": 0
    }


async def first_token(http: httpx.AsyncClient) -> float:
    request = {"model": "smollm2", "messages": [{"role": "user", "content": "Say hello."}], "max_tokens": 8}
    started = time.perf_counter()
    async with http.stream("POST", "/v1/chat/completions", json=request | {"stream": True}) as response:
        response.raise_for_status()
        elapsed = None
        async for line in response.aiter_lines():
            if elapsed is None and '"content":"' in line and '"content":""' not in line:
                elapsed = time.perf_counter() - started
    return elapsed


async def interactive(http: httpx.AsyncClient, interval: float, stop: asyncio.Event, count: int | None = None):
    """One streamed request every `interval` seconds until `stop` (or `count` requests): their TTFTs."""
    ttfts = []
    while not stop.is_set() and (count is None or len(ttfts) < count):
        started = time.perf_counter()
        ttfts.append(await first_token(http))
        await asyncio.sleep(max(0.0, interval - (time.perf_counter() - started)))
    return ttfts


async def as_clients(http: httpx.AsyncClient, lines: int, tokens: int, clients: int) -> tuple[int, float]:
    """The lines as `clients` concurrent requests: (completion tokens, seconds)."""
    todo = list(range(lines))
    generated = 0

    async def client():
        nonlocal generated
        while todo:
            reply = await http.post("/v1/chat/completions", json=body(todo.pop(0), tokens))
            reply.raise_for_status()
            generated += reply.json()["usage"]["completion_tokens"]

    started = time.perf_counter()
    await asyncio.gather(*(client() for _ in range(clients)))
    return generated, time.perf_counter() - started


async def as_batch(sdk: openai.AsyncOpenAI, lines: int, tokens: int) -> tuple[int, float]:
    """The lines as one batch: (completion tokens, seconds from creating it to seeing it completed)."""
    jsonl = "\n".join(
        json.dumps({"custom_id": f"l{i}", "method": "POST", "url": "/v1/chat/completions", "body": body(i, tokens)})
        for i in range(lines)
    )
    upload = await sdk.files.create(file=("lines.jsonl", io.BytesIO(jsonl.encode())), purpose="batch")
    started = time.perf_counter()
    batch = await sdk.batches.create(input_file_id=upload.id, endpoint="/v1/chat/completions", completion_window="24h")
    while batch.status not in ("completed", "failed", "cancelled"):
        await asyncio.sleep(0.2)
        batch = await sdk.batches.retrieve(batch.id)
    elapsed = time.perf_counter() - started
    if batch.status != "completed" or batch.request_counts.completed != lines:
        raise RuntimeError(f"the batch ended {batch.status} with {batch.request_counts}")
    output = (await sdk.files.content(batch.output_file_id)).text.splitlines()
    return sum(json.loads(o)["response"]["body"]["usage"]["completion_tokens"] for o in output), elapsed


async def alongside(http: httpx.AsyncClient, interval: float, work) -> tuple[list[float], tuple[int, float]]:
    stop = asyncio.Event()
    watcher = asyncio.create_task(interactive(http, interval, stop))
    try:
        result = await work
    finally:
        stop.set()
    return await watcher, result


async def run(url: str, args) -> None:
    async with httpx.AsyncClient(base_url=url, timeout=600) as http:
        sdk = openai.AsyncOpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0, timeout=600)
        await first_token(http)  # warm-up: the model loads, MLX compiles
        stop = asyncio.Event()
        alone = await interactive(http, args.interval, stop, count=args.samples)
        during_clients, (client_tokens, client_seconds) = await alongside(
            http, args.interval, as_clients(http, args.lines, args.tokens, args.clients)
        )
        during_batch, (batch_tokens, batch_seconds) = await alongside(
            http, args.interval, as_batch(sdk, args.lines, args.tokens)
        )
    base_ttft = statistics.median(alone)
    client_tps, batch_tps = client_tokens / client_seconds, batch_tokens / batch_seconds
    rows = [
        ("alone", statistics.median(alone), len(alone), None),
        (f"{args.clients} clients", statistics.median(during_clients), len(during_clients), client_tps),
        ("batch", statistics.median(during_batch), len(during_batch), batch_tps),
    ]
    print(f"\n{args.lines} lines x {args.tokens} tokens; an interactive request every {args.interval:g}s\n")
    print("| phase | interactive TTFT (median) | vs alone | requests | lines tok/s | vs clients |")
    print("|---|---|---|---|---|---|")
    for name, ttft, count, tps in rows:
        rate = "" if tps is None else f"{tps:.1f}"
        ratio = "" if tps is None else f"{tps / client_tps:.2f}x"
        print(f"| {name} | {ttft * 1000:.0f} ms | {ttft / base_ttft:.2f}x | {count} | {rate} | {ratio} |")
    ttft_ratio, tps_ratio = statistics.median(during_batch) / base_ttft, batch_tps / client_tps
    print(f"\ninteractive TTFT during the batch: {ttft_ratio:.2f}x alone (goal <= 1.5x): "
          f"{'met' if ttft_ratio <= 1.5 else 'NOT met'}")  # fmt: skip
    print(f"batch throughput: {tps_ratio:.2f}x {args.clients} concurrent clients (goal >= 0.9x): "
          f"{'met' if tps_ratio >= 0.9 else 'NOT met'}")  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--lines", type=int, default=64)
    parser.add_argument("--tokens", type=int, default=16)
    parser.add_argument("--interval", type=float, default=3.0)
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--samples", type=int, default=6, help="interactive requests in the 'alone' phase")
    args = parser.parse_args()
    store = Path(tempfile.mkdtemp(prefix="bench-batch-"))
    server = None
    try:
        import_model(f"bundled:{MODEL}", MODEL, store)
        model = {"id": "smollm2", "source": MODEL, "memory_gb": 0.3, "context_length": 2048}
        config = write_config(store / "models.yaml", store, [model])
        server = Server(config).start()
        asyncio.run(run(server.url, args))
    finally:
        if server is not None:
            server.stop()
        shutil.rmtree(store, ignore_errors=True)


if __name__ == "__main__":
    main()
