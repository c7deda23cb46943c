"""What does sharding a model over 2 ranks (tensor-parallel, ring over 127.0.0.1) cost here? One run, side by side.

    uv run python bench/sharded.py [--rounds 3] [--tokens 32] [--streams 4] [--hosts]

One server (supervisor + gateway) serves each model twice: whole in one worker, and sharded over 2 ranks.
Models: the tiny random Llama of the tests (64 wide, 2 layers), and a larger random Llama shaped like SmolLM2
(576 wide, 30 layers, but 8 query / 4 KV heads: SmolLM2-135M's 9 and 3 cannot be split over 2 ranks).
  ttft      time to the first streamed token of a greedy request, median of --rounds
  tok/s     one stream of --tokens tokens, first byte to last, median of --rounds
  batch     aggregate tok/s of --streams concurrent streams (the sharded model batches as a whole one does)
  ring      the collectives of one decode step on their own, timed under mlx.launch on the same ring: the model's
            (2 all_sums per layer of a hidden-wide vector, in one graph) and rank 0's 4 KB turn broadcast; "of
            step" is their sum over the sharded single stream's time per token
The whole and the sharded model alternate round by round. On 2 shared cores a gain is not expected: the ratios
say what the ring costs on loopback. Prints only; nothing is asserted.

--hosts: instead, the tiny model in a fleet of two hosts on this machine (two supervisors on loopback TCP ports
and one gateway, tests/fleet_harness.py): whole on host a, 2 ranks both on a, and 2 ranks over hosts a and b
(`shard.hosts`, each host's supervisor starting its own rank), all through the same gateway, side by side.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from supervisor.model_import import import_model  # noqa: E402
from tests.fleet_harness import Fleet  # noqa: E402
from tests.harness import Server, write_config  # noqa: E402
from tests.tiny_llama import build_tiny_llama  # noqa: E402

BUNDLED = "smollm2-135m-instruct"
LARGER = {"hidden_size": 576, "intermediate_size": 1536, "num_hidden_layers": 30, "num_attention_heads": 8,
          "num_key_value_heads": 4, "head_dim": 64}  # fmt: skip
MODELS = {"tiny": {}, "smol-shaped": LARGER}
PROMPT = [{"role": "user", "content": "Write a long story about a lighthouse keeper and the sea."}]


def stream(url: str, model: str, tokens: int) -> tuple[float, float, int]:
    """(seconds to the first token, seconds to the last, tokens generated) of one greedy stream."""
    body = {"model": model, "messages": PROMPT, "max_tokens": tokens, "temperature": 0, "stream": True,
            "stream_options": {"include_usage": True}}  # fmt: skip
    started, first, generated = time.perf_counter(), None, 0
    with httpx.stream("POST", f"{url}/v1/chat/completions", json=body, timeout=600) as response:
        for line in response.iter_lines():
            if first is None and '"content":"' in line and '"content":""' not in line:
                first = time.perf_counter() - started
            if '"usage":{' in line and '"completion_tokens"' in line:
                generated = json.loads(line.removeprefix("data: "))["usage"]["completion_tokens"]
    return first or 0.0, time.perf_counter() - started, generated


def batch_rate(url: str, model: str, tokens: int, streams: int) -> float:
    started = time.perf_counter()
    with ThreadPoolExecutor(streams) as pool:
        counts = list(pool.map(lambda _: stream(url, model, tokens)[2], range(streams)))
    return sum(counts) / (time.perf_counter() - started)


RING_PROBE = """
import sys, time
import mlx.core as mx
g = mx.distributed.init(backend="ring")
hidden, layers, steps = int(sys.argv[1]), int(sys.argv[2]), 50
x, frame = mx.ones((1, 1, hidden)), mx.zeros((4096,), mx.uint8)
def model_collectives():  # one graph, as a forward pass evaluates them: each all_sum waits for the one before
    y = x
    for _ in range(2 * layers):
        y = mx.distributed.all_sum(y, group=g) * 0.5
    mx.eval(y)
def turn():
    mx.eval(mx.distributed.all_sum(frame, group=g, stream=mx.cpu))
timings = []
for work in (model_collectives, turn):
    for _ in range(5):
        work()
    started = time.perf_counter()
    for _ in range(steps):
        work()
    timings.append((time.perf_counter() - started) / steps * 1000)
if g.rank() == 0:
    print(*timings, flush=True)
"""


def ring_ms(hidden: int, layers: int, scratch: Path) -> tuple[float, float]:
    """Milliseconds of one decode step's collectives on a 2-rank ring over 127.0.0.1 (mlx.launch starts it): the
    model's (2 per layer) and rank 0's turn broadcast."""
    probe = scratch / "ring_probe.py"
    probe.write_text(RING_PROBE)
    launcher = Path(sys.executable).parent / "mlx.launch"
    out = subprocess.run(
        [str(launcher), "--backend", "ring", "-n", "2", "--hosts", "127.0.0.1", "--python", sys.executable,
         str(probe), str(hidden), str(layers)],
        capture_output=True, text=True, timeout=300, check=True,
    )  # fmt: skip
    model, turn = out.stdout.strip().splitlines()[-1].split()
    return float(model), float(turn)


def measure(url: str, pair: list[str], args) -> dict[str, tuple[float, float, float]]:
    """Each model's median ttft, tok/s and batch tok/s, the models alternating round by round."""
    for model in pair:  # loaded and warmed before anything is timed
        stream(url, model, 4)
    ttft, rate, batch = ({m: [] for m in pair} for _ in range(3))
    for round_ in range(args.rounds):
        for model in pair if round_ % 2 == 0 else pair[::-1]:
            first, total, generated = stream(url, model, args.tokens)
            ttft[model].append(first)
            rate[model].append(generated / total)
            batch[model].append(batch_rate(url, model, args.tokens, args.streams))
    return {m: (statistics.median(ttft[m]), statistics.median(rate[m]), statistics.median(batch[m])) for m in pair}


def across_hosts(store: Path, scratch: Path, args) -> None:
    """--hosts: the tiny model whole, over 2 ranks on host a, and over hosts a and b, through one fleet gateway."""
    on_a = {"source": "tiny", "memory_gb": 1.5, "hosts": ["a"]}
    specs = [
        {"id": "tiny-1", **on_a},
        {"id": "tiny-2", **on_a, "shard": {"ranks": 2}},
        {"id": "tiny-2ab", "source": "tiny", "memory_gb": 3, "shard": {"ranks": 2, "hosts": ["a", "b"]}},
    ]
    fleet = Fleet(scratch / "fleet", store, specs, memory_budget_gb=6)
    try:
        fleet.start()
        measured = measure(fleet.url, [s["id"] for s in specs], args)
    finally:
        fleet.stop()
    print(f"fleet of 2 hosts on this machine (TCP + CURVE); greedy, {args.tokens} tokens, median of {args.rounds} "
          f"rounds; batch: {args.streams} concurrent streams; {os.cpu_count()} cores")  # fmt: skip
    print("model     ranks        ttft ms  tok/s  batch tok/s  ttft x  tok/s x  batch x")
    base = measured["tiny-1"]
    for model, where in (("tiny-1", "1"), ("tiny-2", "2 on a"), ("tiny-2ab", "2 on a, b")):
        ttft, rate, batch = measured[model]
        ratios = f"{ttft / base[0]:6.2f}x {rate / base[1]:7.2f}x {batch / base[2]:7.2f}x"
        print(f"{model:<9} {where:<11} {ttft * 1000:8.0f} {rate:6.1f} {batch:12.1f} {ratios}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--tokens", type=int, default=32)
    parser.add_argument("--streams", type=int, default=4)
    parser.add_argument("--hosts", action="store_true", help="the tiny model over two hosts of a fleet instead")
    args = parser.parse_args()

    scratch = Path(tempfile.mkdtemp(prefix="bench-sharded-"))
    server = None
    try:
        store = scratch / "store"
        import_model(f"bundled:{BUNDLED}", BUNDLED, store)  # for its tokenizer
        if args.hosts:
            build_tiny_llama(store / "tiny", store / BUNDLED, tie_word_embeddings=False)
            return across_hosts(store, scratch, args)
        specs = []
        for name, shape in MODELS.items():
            build_tiny_llama(store / name, store / BUNDLED, tie_word_embeddings=False, **shape)
            specs += [{"id": f"{name}-1", "source": name, "memory_gb": 1.5},
                      {"id": f"{name}-2", "source": name, "memory_gb": 1.5, "shard": {"ranks": 2}}]  # fmt: skip
        server = Server(write_config(scratch / "models.yaml", store, specs, memory_budget_gb=12)).start()
        rows = {}
        for name, shape in MODELS.items():
            measured = measure(server.url, [f"{name}-1", f"{name}-2"], args)
            config = {"hidden_size": 64, "num_hidden_layers": 2} | shape
            rows[name] = (measured, ring_ms(config["hidden_size"], config["num_hidden_layers"], scratch))
    finally:
        if server is not None:
            server.stop()
        shutil.rmtree(scratch, ignore_errors=True)

    print(f"greedy, {args.tokens} tokens, median of {args.rounds} rounds; batch: {args.streams} concurrent streams; "
          f"{os.cpu_count()} cores")  # fmt: skip
    print("model        ranks  ttft ms  tok/s  batch tok/s  ttft x  tok/s x  batch x  ring model ms  turn ms  of step")
    for name, (measured, ring) in rows.items():
        base = measured[f"{name}-1"]
        for ranks in (1, 2):
            ttft, rate, batch = measured[f"{name}-{ranks}"]
            ratios = f"{ttft / base[0]:6.2f}x {rate / base[1]:7.2f}x {batch / base[2]:7.2f}x"
            step_ms = 1000 / rate
            ring_cell = f"{ring[0]:13.2f} {ring[1]:8.2f} {sum(ring) / step_ms:8.0%}" if ranks == 2 else ""
            print(f"{name:<12} {ranks:5d} {ttft * 1000:8.0f} {rate:6.1f} {batch:12.1f} {ratios} {ring_cell}")


if __name__ == "__main__":
    main()
