"""What do several hosts cost, and how fast does a fleet get past a dead host? One run, side by side.

    uv run python bench/fleet.py [--rounds 8] [--streams 8]

Started here, on this machine: one host as today (supervisor + gateway over ipc://) and a fleet of two hosts
(supervisors a and b on loopback TCP ports, CURVE, one gateway), all serving the bundled model.
1. latency: a 16-token completion (greedy, non-streaming) through the fleet's gateway to its worker on host a
   (TCP + CURVE, placement asking both hosts first: one more round trip, in parallel) against the same through
   the single host (ipc://), alternating which goes first round by round; median of each. Goal: fleet / ipc
   <= 1.05.
2. failover: the model ready on both hosts; host b's supervisor is SIGKILLed and requests go out back to back;
   the time from the kill to the end of the first one answered (by host a). Goal <= 2 s.
3. aggregate tok/s of N concurrent 32-token streams over the fleet's two replicas against the single host.
   Both hosts share this machine's cores, so this is reported, with no goal.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from supervisor.model_import import import_model
from tests.fleet_harness import Fleet
from tests.harness import Server, write_config

MODEL = "smollm2-135m-instruct"
PARIS = [{"role": "user", "content": "What is the capital of France? Answer in one long sentence."}]
SPEC = {"id": "m", "source": MODEL, "memory_gb": 0.3, "context_length": 2048}


def completion(url: str, tokens: int, stream: bool = False) -> tuple[float, int]:
    """Seconds for one greedy completion of `tokens` tokens, and the tokens it generated."""
    body = {"model": "m", "messages": PARIS, "max_tokens": tokens, "temperature": 0}
    started = time.perf_counter()
    if not stream:
        reply = httpx.post(f"{url}/v1/chat/completions", json=body, timeout=600)
        reply.raise_for_status()
        return time.perf_counter() - started, reply.json()["usage"]["completion_tokens"]
    body |= {"stream": True, "stream_options": {"include_usage": True}}
    generated = 0
    with httpx.stream("POST", f"{url}/v1/chat/completions", json=body, timeout=600) as response:
        for line in response.iter_lines():
            if '"usage":{' in line and '"completion_tokens"' in line:
                generated = json.loads(line.removeprefix("data: "))["usage"]["completion_tokens"]
    return time.perf_counter() - started, generated


def aggregate(url: str, streams: int) -> float:
    """Tokens per second of `streams` concurrent 32-token streams, first request sent to last token."""
    started = time.perf_counter()
    with ThreadPoolExecutor(streams) as pool:
        generated = sum(n for _, n in pool.map(lambda _: completion(url, 32, stream=True), range(streams)))
    return generated / (time.perf_counter() - started)


def failover(fleet: Fleet) -> tuple[float, int]:
    """Seconds from SIGKILL of host b's supervisor to the end of the first request answered, and the requests sent."""
    fleet.hosts["b"].kill()
    killed, sent = time.perf_counter(), 0
    while True:
        sent += 1
        body = {"model": "m", "messages": PARIS, "max_tokens": 1, "temperature": 0}
        if httpx.post(f"{fleet.url}/v1/chat/completions", json=body, timeout=600).status_code == 200:
            return time.perf_counter() - killed, sent


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=16)
    parser.add_argument("--streams", type=int, default=8)
    parser.add_argument("--out", default="bench/results/fleet.json")
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="mlxs-bench-fleet-"))
    store = work / "store"
    import_model(f"bundled:{MODEL}", MODEL, store)
    single = Server(write_config(work / "single.yaml", store, [SPEC | {"auto_load": True}]))
    fleet = Fleet(work / "fleet", store, [SPEC], memory_budget_gb=2, heartbeat_seconds=1)
    fleet.env.pop("MLX_SERVER_CPU_TUNING")  # both compute as a server does by default (OpenBLAS where present)
    for env in (single.env, fleet.env):
        env["LOG_LEVEL"] = "WARNING"  # keep the servers' logs out of the table
    result: dict = {}
    try:
        single.start()
        fleet.start()
        assert fleet.ctl("load", "m", "--host", "a").returncode == 0
        for url in (single.url, fleet.url):  # warm both: first-call compilation and allocations
            completion(url, 4)
        ipc, remote = [], []
        for round_ in range(args.rounds):  # alternating which goes first, so drift hits both alike
            for url, times in ((single.url, ipc), (fleet.url, remote))[:: 1 if round_ % 2 else -1]:
                times.append(completion(url, 16)[0])
            print(f"round {round_ + 1}: ipc {ipc[-1]:.3f}s, fleet {remote[-1]:.3f}s", flush=True)
        result["latency"] = {"ipc_s": statistics.median(ipc), "fleet_s": statistics.median(remote)}

        assert fleet.ctl("load", "m", "--host", "b").returncode == 0
        result["aggregate"] = {"one_host_tps": aggregate(single.url, args.streams)}
        result["aggregate"]["two_hosts_tps"] = aggregate(fleet.url, args.streams)
        print(f"aggregate: one host {result['aggregate']['one_host_tps']:.1f} tok/s, "
              f"two hosts {result['aggregate']['two_hosts_tps']:.1f} tok/s", flush=True)  # fmt: skip

        seconds, sent = failover(fleet)
        result["failover"] = {"seconds": seconds, "requests": sent}
    finally:
        fleet.stop()
        single.stop()
        shutil.rmtree(work, ignore_errors=True)

    latency, agg, fail = result["latency"], result["aggregate"], result["failover"]
    ratio = latency["fleet_s"] / latency["ipc_s"]
    scale = agg["two_hosts_tps"] / agg["one_host_tps"]
    print(f"\nmodel {MODEL}, greedy; latency: median of {args.rounds} rounds, 16 tokens each\n")
    print("| measure | baseline | fleet | ratio | goal |")
    print("|---|---:|---:|---:|---|")
    print(f"| 16-token completion, s | {latency['ipc_s']:.3f} (ipc://) | {latency['fleet_s']:.3f} (TCP + CURVE) "
          f"| {ratio:.3f} | <= 1.05: {'met' if ratio <= 1.05 else 'NOT met'} |")  # fmt: skip
    print(f"| SIGKILL of host b to the first answer from host a, s | | {fail['seconds']:.2f} ({fail['requests']} "
          f"requests) | | <= 2: {'met' if fail['seconds'] <= 2 else 'NOT met'} |")  # fmt: skip
    print(
        f"| {args.streams} streams x 32 tokens, aggregate tok/s | {agg['one_host_tps']:.1f} (one host) "
        f"| {agg['two_hosts_tps']:.1f} (two hosts) | {scale:.2f} | report (both hosts share these cores) |"
    )
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result | {"rounds": {"ipc_s": ipc, "fleet_s": remote}}, indent=2))


if __name__ == "__main__":
    main()
