"""What does the gateway add to a request? The same streamed bytes from the gateway and from a bare Starlette app.

    uv run python bench/gateway_overhead.py [--requests 256] [--tokens 32] [--clients 1 64] [--before REF]

Gateway: supervisor + gateway started here, serving one model of the benchmark backend `bench-fixed-tokens`
(worker/fixed_tokens.py: it answers from a fixed token list and computes nothing; only a process whose
environment names it accepts it, and this script sets that), so what is measured is the gateway's own work:
auth and routing, the ZeroMQ hops to the worker and back, the dialect and SSE framing, once per token.
Baseline: uvicorn + Starlette, one route that streams the very bytes the gateway sent for the same request
(captured from it first), one write per chunk. Clients: httpx in this process, streaming chat completions, 1 and
64 at once; a request's latency is from sending it to its last byte. The servers alternate per client count.
`--before REF` adds a second gateway, run from REF's gateway/ in front of the same supervisor and worker: a
change to the gateway measured before and after in one run.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import httpx

from protocol.control import BENCH_BACKEND_ENV, ModelType
from tests.harness import Server, free_port, terminate, write_config

MODEL = "fixed"
BODY = {"model": MODEL, "messages": [{"role": "user", "content": "Say something."}], "stream": True}


def bare_app(chunks: list[bytes]):
    """The baseline: Starlette answering every POST with `chunks`, streamed one write each, as the gateway does."""
    from starlette.applications import Starlette
    from starlette.responses import StreamingResponse
    from starlette.routing import Route

    async def stream():
        for chunk in chunks:
            yield chunk

    async def completions(request):
        await request.body()
        return StreamingResponse(stream(), media_type="text/event-stream", headers={"Cache-Control": "no-cache"})

    return Starlette(routes=[Route("/v1/chat/completions", completions, methods=["POST"])])


def serve_bare(port: int, capture: str) -> None:
    import uvicorn

    chunks = [c.encode() for c in json.loads(Path(capture).read_text())]
    uvicorn.run(bare_app(chunks), host="127.0.0.1", port=port, log_level="warning", access_log=False)


def capture(url: str, tokens: int) -> list[str]:
    """The gateway's answer to BODY, as the chunks of its SSE stream (one per event)."""
    with httpx.stream("POST", f"{url}/v1/chat/completions", json=BODY | {"max_tokens": tokens}, timeout=60) as r:
        r.raise_for_status()
        text = "".join(r.iter_text())
    return [event + "\n\n" for event in text.split("\n\n") if event]


async def load(url: str, clients: int, requests: int, tokens: int) -> dict:
    """`requests` streamed requests from `clients` concurrent clients: latencies and requests per second."""
    latencies: list[float] = []
    body = BODY | {"max_tokens": tokens}
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(base_url=url, timeout=120, limits=limits) as client:

        async def one() -> None:
            started = time.perf_counter()
            async with client.stream("POST", "/v1/chat/completions", json=body) as r:
                async for _ in r.aiter_raw():
                    pass
                if r.status_code != 200:
                    raise RuntimeError(f"{url} answered {r.status_code}")
            latencies.append(time.perf_counter() - started)

        async def client_loop(n: int) -> None:
            for _ in range(n):
                await one()

        await asyncio.gather(*(client_loop(min(4, requests // clients or 1)) for _ in range(clients)))  # warm-up
        latencies.clear()
        share = [requests // clients + (i < requests % clients) for i in range(clients)]
        started = time.perf_counter()
        await asyncio.gather(*(client_loop(n) for n in share))
        elapsed = time.perf_counter() - started
    latencies.sort()
    return {
        "p50_ms": 1e3 * statistics.median(latencies),
        "p99_ms": 1e3 * latencies[min(len(latencies) - 1, int(0.99 * len(latencies)))],
        "rps": len(latencies) / elapsed,
    }


def wait_for_port(port: int, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            httpx.post(f"http://127.0.0.1:{port}/v1/chat/completions", json=BODY, timeout=2)
            return
        except httpx.TransportError:
            time.sleep(0.1)
    raise RuntimeError(f"the bare app did not answer on port {port}")


def gateway_at(ref: str, server: Server, work: Path) -> tuple[subprocess.Popen, str]:
    """A gateway from the code at git `ref` (its gateway/, exported under `work`), beside `server`'s, on a port of
    its own."""
    root = Path(__file__).resolve().parents[1]
    checkout = work / "before"
    checkout.mkdir()
    archive = subprocess.run(["git", "-C", str(root), "archive", ref, "gateway"], check=True, capture_output=True)
    subprocess.run(["tar", "-x", "-C", str(checkout)], input=archive.stdout, check=True)
    # This protocol/: it knows the benchmark backend's type (the wire only ever gains fields with defaults).
    shutil.copytree(root / "protocol", checkout / "protocol", ignore=shutil.ignore_patterns("__pycache__"))
    port = free_port()
    env = server.env | {"PORT": str(port)}
    with server.log_path.open("ab") as log:
        proc = subprocess.Popen([sys.executable, "-m", "gateway"], cwd=checkout, env=env, stdout=log, stderr=log)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{url}/api/v1/health/ready", timeout=5).status_code == 200:
                return proc, url
        except httpx.TransportError:
            time.sleep(0.2)
    terminate(proc, 5)
    raise RuntimeError(f"the gateway at {ref} did not become ready; the log ends:\n{server.log_text()[-2000:]}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=256, help="per server and client count")
    parser.add_argument("--tokens", type=int, default=32, help="tokens per answer")
    parser.add_argument("--clients", type=int, nargs="+", default=[1, 64])
    parser.add_argument("--before", metavar="REF", help="also measure the gateway as it is at this git ref")
    parser.add_argument("--out", default="bench/results/gateway_overhead.json")
    parser.add_argument("--bare", nargs=2, metavar=("PORT", "CAPTURE"), help=argparse.SUPPRESS)  # the baseline
    args = parser.parse_args()
    if args.bare:
        return serve_bare(int(args.bare[0]), args.bare[1])

    os.environ[BENCH_BACKEND_ENV] = ModelType.BENCH_FIXED_TOKENS  # the supervisor and its worker inherit it
    work = Path(tempfile.mkdtemp(prefix="mlxs-bench-"))
    model = {"id": MODEL, "source": "fixed-tokens", "type": ModelType.BENCH_FIXED_TOKENS.value, "memory_gb": 0.1}
    server = Server(write_config(work / "models.yaml", work, [model | {"auto_load": True}]))
    server.env["LOG_LEVEL"] = "WARNING"
    bare = before = None
    try:
        server.start()
        chunks = capture(server.url, args.tokens)
        (work / "capture.json").write_text(json.dumps(chunks))
        port = free_port()
        bare = subprocess.Popen([sys.executable, __file__, "--bare", str(port), str(work / "capture.json")])
        wait_for_port(port)
        servers = [("bare uvicorn + Starlette", f"http://127.0.0.1:{port}")]
        if args.before:
            before, url = gateway_at(args.before, server, work)
            servers.append((f"gateway at {args.before}", url))
        servers.append(("gateway (-> ZeroMQ -> worker)", server.url))
        rows = []
        for clients in args.clients:
            for name, url in servers:
                result = asyncio.run(load(url, clients, args.requests, args.tokens))
                rows.append({"server": name, "clients": clients} | result)
                print(f"{name}, {clients} clients: {json.dumps(result)}", flush=True)
    finally:
        for proc in (bare, before):
            if proc is not None:
                terminate(proc, 5)
        server.stop()
        shutil.rmtree(work, ignore_errors=True)

    print(f"\n{args.tokens} tokens per streamed answer ({len(chunks)} SSE events), {args.requests} requests each\n")
    print("| clients | server | p50 ms | p99 ms | req/s | added p50 ms | added p99 ms | req/s vs bare |")
    print("|---:|---|---:|---:|---:|---:|---:|---:|")
    for at in range(0, len(rows), len(servers)):
        base = rows[at]
        for row in rows[at : at + len(servers)]:
            cells = [row["clients"], row["server"], f"{row['p50_ms']:.1f}", f"{row['p99_ms']:.1f}", f"{row['rps']:.0f}"]
            added = [f"{row[k] - base[k]:.1f}" for k in ("p50_ms", "p99_ms")] if row is not base else ["", ""]
            print("| " + " | ".join(map(str, [*cells, *added, f"{row['rps'] / base['rps']:.2f}x"])) + " |")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"rows": rows, "tokens": args.tokens, "requests": args.requests}, indent=2))


if __name__ == "__main__":
    main()
