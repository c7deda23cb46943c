"""What does serving cost? The same greedy generation in-process and through the server, side by side.

    uv run python bench/overhead.py [--tokens 64] [--rounds 3]

In-process: mlx_lm.stream_generate on the model directory. Server: supervisor + worker + gateway started
here, called over HTTP with streaming. Same model, prompt, chat template and token count; the two alternate
round by round so drift in machine speed hits both alike. Decode tok/s is measured between the first and
the last generated token on each side, so prefill (TTFT, reported separately) does not blur it.
Goal: server decode >= 0.95x in-process.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.serve_clients import HTTPTarget
from supervisor.model_import import import_model
from tests.harness import Server, write_config

MODEL = "smollm2-135m-instruct"
MESSAGES = [{"role": "user", "content": "Write a long story about a dragon who learns to bake bread."}]


def in_process(model, tokenizer, tokens: int) -> dict:
    from mlx_lm import stream_generate
    from mlx_lm.sample_utils import make_sampler

    prompt = tokenizer.apply_chat_template(MESSAGES, add_generation_prompt=True)
    started = time.perf_counter()
    stamps, n = [], 0
    for response in stream_generate(model, tokenizer, prompt, max_tokens=tokens, sampler=make_sampler(temp=0.0)):
        stamps.append(time.perf_counter())
        n = response.generation_tokens
    return {"ttft": stamps[0] - started, "tokens": n, "decode_tps": (n - 1) / (stamps[-1] - stamps[0])}


def through_server(url: str, tokens: int) -> dict:
    r = HTTPTarget("server", url, MODEL).stream(MESSAGES, tokens)
    stamps, n = r["stamps"], r["tokens"]
    return {"ttft": stamps[0] - r["start"], "tokens": n, "decode_tps": (n - 1) / (stamps[-1] - stamps[0])}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tokens", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--out", default="bench/results/overhead.json")
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="mlxs-bench-"))
    store = work / "store"
    import_model(f"bundled:{MODEL}", MODEL, store)
    config = write_config(work / "models.yaml", store, [{"id": MODEL, "source": MODEL, "auto_load": True}])

    from mlx_lm import load

    model, tokenizer = load(str(store / MODEL))
    server = Server(config)
    server.env["LOG_LEVEL"] = "WARNING"  # keep the servers' logs out of the table
    server.start()
    try:
        in_process(model, tokenizer, 8)  # warm both sides: first-call compilation and allocations
        through_server(server.url, 8)
        rows = {"in-process (mlx_lm.stream_generate)": [], "server (HTTP -> gateway -> ZeroMQ -> worker)": []}
        local, served = rows.values()
        for round_ in range(args.rounds):
            local.append(in_process(model, tokenizer, args.tokens))
            served.append(through_server(server.url, args.tokens))
            print(f"round {round_ + 1}: in-process {local[-1]['decode_tps']:.2f} tok/s, "
                  f"server {served[-1]['decode_tps']:.2f} tok/s", flush=True)  # fmt: skip
    finally:
        server.stop()
        shutil.rmtree(work, ignore_errors=True)

    summary = {
        name: {
            "decode_tps": statistics.median(r["decode_tps"] for r in runs),
            "ttft_s": statistics.median(r["ttft"] for r in runs),
            "tokens": runs[0]["tokens"],
        }
        for name, runs in rows.items()
    }
    base, ours = summary.values()
    ratio = ours["decode_tps"] / base["decode_tps"]
    print(f"\nmodel {MODEL}, {args.tokens} tokens, greedy, median of {args.rounds} rounds\n")
    print("| path | decode tok/s | TTFT s | tokens |")
    print("|---|---:|---:|---:|")
    for name, s in summary.items():
        print(f"| {name} | {s['decode_tps']:.2f} | {s['ttft_s']:.2f} | {s['tokens']} |")
    print(f"\nserver / in-process decode: {ratio:.3f}  (goal >= 0.95: {'met' if ratio >= 0.95 else 'NOT met'})")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"summary": summary, "ratio": ratio, "rounds": rows, "tokens": args.tokens}, indent=2))


if __name__ == "__main__":
    main()
