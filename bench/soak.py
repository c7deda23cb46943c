"""Soak: many concurrent streams for minutes against the bundled model, watching errors, latency and memory.

    uv run python bench/soak.py [--duration 300] [--streams 16] [--max-tokens 32] [--allocators default,trim,stock]

Starts its own server (supervisor, gateway, one worker for SmolLM2-135M) in a temporary directory, then:
  1. baseline: one stream alone, a few times (latency of a request on an idle server);
  2. soak: --streams clients, each streaming chat completions back to back for --duration seconds, with
     prompts that vary (so the prompt cache fills and evicts);
and reports errors (goal 0), p50/p99 latency and time to first token against the baseline, and the RSS of
the gateway and the worker at the start of the soak, every 30 s, and at the end (goal: flat). Prints only;
nothing is asserted. It sends traffic to 127.0.0.1 only and stops by itself.

--allocators runs one server per name side by side, each with --streams streams of its own, and reports each:
"default" (the worker as shipped), "trim" (malloc_trim only, glibc's dynamic mmap threshold kept), "stock"
(neither; worker/memory.py, MLX_WORKER_BENCH_ALLOCATOR)
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import statistics
import sys
import tempfile
import time
from pathlib import Path

import httpx
import psutil

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from supervisor.model_import import import_model
from tests.harness import Server, write_config

MODEL = "smollm2-135m-instruct"
TOPICS = ["the sea", "a lighthouse", "bread", "winter", "a bicycle", "tea", "the moon", "a library", "rain", "maps"]
MB = 2**20
SAMPLE_SECONDS = 30


def prompt(i: int) -> list[dict]:
    return [
        {"role": "system", "content": "You are a helpful assistant. Answer in one or two sentences."},
        {"role": "user", "content": f"Request {i}: say something about {TOPICS[i % len(TOPICS)]}."},
    ]


async def one_stream(http: httpx.AsyncClient, url: str, i: int, max_tokens: int) -> dict:
    """One streamed chat completion: latency, time to first token, and how it ended."""
    body = {"model": "smollm2", "messages": prompt(i), "max_tokens": max_tokens, "temperature": 0.7, "stream": True}
    started, first, error = time.perf_counter(), None, None
    try:
        async with http.stream("POST", f"{url}/v1/chat/completions", json=body) as response:
            if response.status_code != 200:
                error = f"HTTP {response.status_code}"
            async for line in response.aiter_lines():
                if line.startswith("data: {") and '"error"' in line:
                    error = line[6:200]
                elif first is None and '"content":"' in line and '"content":""' not in line:
                    first = time.perf_counter()
    except httpx.HTTPError as exc:
        error = f"{type(exc).__name__}: {exc}"
    end = time.perf_counter()
    return {"latency": end - started, "ttft": None if first is None else first - started, "error": error}


def rss_mb(pids: list[int]) -> float:
    total = 0
    for pid in pids:
        with contextlib.suppress(psutil.NoSuchProcess):  # a worker replaced meanwhile
            total += psutil.Process(pid).memory_info().rss
    return total / MB


def snapshot(server: Server, elapsed: float, done: int = 0) -> dict:
    """RSS of the gateway and the workers, and the worker's own account of its memory by kind (its last Pong)."""
    report = server.models()["smollm2"].worker_memory
    kinds = {k: v / MB for k, v in report.by_kind().items()} if report else {}
    return {
        "t": round(elapsed),
        "done": done,  # requests completed by then
        "gateway_mb": rss_mb([server.gateway.pid]),
        "workers_mb": rss_mb(server.worker_pids()),
        "kinds": kinds,
    }


async def soak(
    server: Server, streams: int, duration: float, max_tokens: int, label: str = ""
) -> tuple[list[dict], list[dict]]:
    results: list[dict] = []
    memory = [snapshot(server, 0)]
    started = time.monotonic()
    deadline = started + duration
    counter = iter(range(10**9))

    async def client(http: httpx.AsyncClient) -> None:
        while time.monotonic() < deadline:
            results.append(await one_stream(http, server.url, next(counter), max_tokens))

    async def sampler() -> None:
        while time.monotonic() < deadline:
            await asyncio.sleep(min(SAMPLE_SECONDS, max(1.0, deadline - time.monotonic())))
            memory.append(snapshot(server, time.monotonic() - started, len(results)))
            now, errors = memory[-1], sum(1 for r in results if r["error"])
            print(f"  {now['t']:>4}s{label}: {len(results)} requests, {errors} errors, "
                  f"gateway {now['gateway_mb']:.0f} MB, worker {now['workers_mb']:.0f} MB", flush=True)  # fmt: skip

    limits = httpx.Limits(max_connections=streams + 4)
    async with httpx.AsyncClient(timeout=httpx.Timeout(300), limits=limits) as http:
        await asyncio.gather(sampler(), *(client(http) for _ in range(streams)))
    memory.append(snapshot(server, time.monotonic() - started))
    return results, memory


def percentile(values: list[float], q: float) -> float:
    return statistics.quantiles(values, n=100, method="inclusive")[q - 1] if len(values) > 1 else values[0]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--duration", type=float, default=300, help="seconds of soak (default 300)")
    parser.add_argument("--streams", type=int, default=16, help="concurrent streams (default 16)")
    parser.add_argument("--max-tokens", type=int, default=32, help="tokens per answer (default 32)")
    parser.add_argument("--allocators", default="default", help="servers side by side, by the worker's allocator")
    args = parser.parse_args()

    names = args.allocators.split(",")
    if unknown := set(names) - {"default", "trim", "stock"}:
        parser.error(f"unknown allocators: {', '.join(sorted(unknown))} (default, trim, stock)")
    with tempfile.TemporaryDirectory(prefix="soak-") as tmp:
        store = Path(tmp) / "store"
        import_model(f"bundled:{MODEL}", MODEL, store)
        config = write_config(Path(tmp) / "models.yaml", store, [{"id": "smollm2", "source": MODEL}])
        servers = {}
        try:
            for name in names:
                servers[name] = Server(config)
                if name != "default":
                    servers[name].env["MLX_WORKER_BENCH_ALLOCATOR"] = name
                servers[name].start()
            baselines = {name: asyncio.run(_baseline(server, args.max_tokens)) for name, server in servers.items()}
            for name, baseline in baselines.items():
                print(f"baseline, {name} allocator (one stream alone): latency {baseline['latency']:.2f}s, "
                      f"ttft {baseline['ttft']:.2f}s")  # fmt: skip
            print(f"soak: {args.streams} streams per server for {args.duration:.0f}s, {args.max_tokens} tokens each")
            runs = asyncio.run(_soak_all(servers, args))
        finally:
            for server in servers.values():
                server.stop()
    for name, (results, memory) in runs.items():
        print(f"\n== {name} allocator ==")
        report(results, memory, baselines[name], args.duration)


async def _soak_all(servers: dict[str, Server], args) -> dict[str, tuple[list[dict], list[dict]]]:
    label = (lambda name: f" ({name})") if len(servers) > 1 else (lambda name: "")
    runs = await asyncio.gather(
        *(soak(s, args.streams, args.duration, args.max_tokens, label(name)) for name, s in servers.items())
    )
    return dict(zip(servers, runs, strict=True))


async def _baseline(server: Server, max_tokens: int) -> dict:
    async with httpx.AsyncClient(timeout=300) as http:
        await one_stream(http, server.url, 0, max_tokens)  # loads the model
        runs = [await one_stream(http, server.url, i, max_tokens) for i in range(1, 4)]
    return {key: statistics.median(r[key] for r in runs) for key in ("latency", "ttft")}


def report(results: list[dict], memory: list[dict], baseline: dict, duration: float) -> None:
    ok = [r for r in results if not r["error"]]
    errors = [r["error"] for r in results if r["error"]]
    print(f"\nrequests: {len(results)} ({len(results) / duration:.2f}/s), errors: {len(errors)}")
    for error in sorted(set(errors))[:5]:
        print(f"  {errors.count(error)} x {error}")
    if ok:
        latency = [r["latency"] for r in ok]
        ttft = [r["ttft"] for r in ok if r["ttft"] is not None]
        print("              p50      p99      p50 / baseline   p99 / baseline")
        for name, values, base in (("latency", latency, baseline["latency"]), ("ttft", ttft, baseline["ttft"])):
            p50, p99 = percentile(values, 50), percentile(values, 99)
            print(f"  {name:<9} {p50:7.2f}s {p99:7.2f}s {p50 / base:12.2f}x {p99 / base:15.2f}x")
    # Warm-up fills the KV and prompt caches up to their budget (prompt_cache_mb): growth after the first sample
    # taken once requests have completed (30 s on an idle host) is what would be a leak.
    start, end = memory[0], memory[-1]
    warm = next((m for m in memory[1:-1] if m["done"]), memory[1] if len(memory) > 2 else start)
    print(f"RSS           start     warm ({warm['t']}s)       end     end / start   end / warm")
    for key, name in (("gateway_mb", "gateway"), ("workers_mb", "worker")):
        print(f"  {name:<9} {start[key]:7.0f} MB {warm[key]:9.0f} MB {end[key]:9.0f} MB "
              f"{end[key] / start[key]:10.2f}x {end[key] / warm[key]:11.2f}x")  # fmt: skip
    print("RSS timeline (s: gateway MB / worker MB): " +
          ", ".join(f"{m['t']}: {m['gateway_mb']:.0f}/{m['workers_mb']:.0f}" for m in memory))  # fmt: skip
    print("worker by kind, MB (its own report):  " + " ".join(f"{k:>16}" for k in end["kinds"]))
    for m in (warm, end):
        print(f"  {m['t']:>5}s  " + " ".join(f"{v:16.0f}" for v in m["kinds"].values()))


if __name__ == "__main__":
    main()
