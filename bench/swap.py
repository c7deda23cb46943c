"""What does a model swap cost, and is the memory given back? Cold load, warm request and swap, side by side
with loading the same model in-process.

    uv run python bench/swap.py [--rounds 3]

Two models ("one", "two") share the bundled weights under different ids; the budget fits one, so a request
for the other evicts it. Per round, each figure is the time from sending a streaming request to its first
token:
  in-process cold   mlx_lm.load + the first token in a fresh Python process (the baseline)
  server cold       nothing loaded: the supervisor spawns a worker, it loads, the gateway streams
  server warm       the model is loaded
  server swap       the other model is loaded and idle: evicted (process stopped), then as cold
Memory: a worker's resident and unique set sizes just before it is unloaded (RSS also counts shared
libraries and page-cache pages of the weights, which outlive it; USS is what only it holds), whether its
process is gone afterwards (then the kernel has all of it back), and, for information, how much the system's
available memory grew as a share of its USS (system-wide: anything else running moves it either way).
Goal: the process is gone, so all of it is returned.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import psutil

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from supervisor.model_import import import_model
from tests.harness import Server, pid_gone, wait_until, write_config

MODEL = "smollm2-135m-instruct"
MESSAGES = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}]
SHARED = {"source": MODEL, "memory_gb": 0.3, "context_length": 2048}

IN_PROCESS = """
import sys, time
started = time.perf_counter()
from mlx_lm import load, stream_generate
model, tokenizer = load(sys.argv[1])
prompt = tokenizer.apply_chat_template({messages!r}, add_generation_prompt=True)
next(stream_generate(model, tokenizer, prompt, max_tokens=1))
print(time.perf_counter() - started)
"""


def in_process_cold(model_dir: Path) -> float:
    code = IN_PROCESS.format(messages=MESSAGES)
    return float(subprocess.run([sys.executable, "-c", code, str(model_dir)], capture_output=True, text=True,
                                check=True).stdout.strip())  # fmt: skip


def first_token(url: str, model: str) -> float:
    body = {"model": model, "messages": MESSAGES, "max_tokens": 4, "temperature": 0, "stream": True}
    started, elapsed = time.perf_counter(), None
    with httpx.stream("POST", f"{url}/v1/chat/completions", json=body, timeout=600) as response:
        response.raise_for_status()
        for line in response.iter_lines():  # read to the end, so the model is idle afterwards
            if elapsed is None and '"content":"' in line and '"content":""' not in line:
                elapsed = time.perf_counter() - started
    if elapsed is None:
        raise RuntimeError("no token came back")
    return elapsed


def worker_of(server: Server, model: str) -> int:
    return httpx.get(f"{server.url}/api/v1/health/ready").json()["workers"][model]["pid"]


def unload_and_measure(server: Server, model: str) -> dict:
    pid = worker_of(server, model)
    process = psutil.Process(pid)
    info = process.memory_full_info()
    available = psutil.virtual_memory().available
    reply = httpx.post(f"{server.url}/api/v1/models/{model}/unload", timeout=120).json()
    gone = wait_until(lambda: pid_gone(pid), timeout=10)
    time.sleep(0.5)
    freed = psutil.virtual_memory().available - available  # system-wide, so other processes add noise
    return {"pid": reply["pid"], "rss_bytes": info.rss, "uss_bytes": info.uss, "process_gone": gone,
            "available_growth_share": freed / info.uss}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--out", default="bench/results/swap.json")
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="mlxs-bench-"))
    store = work / "store"
    import_model(f"bundled:{MODEL}", MODEL, store)
    models = [{"id": "one", **SHARED}, {"id": "two", **SHARED}]
    config = write_config(work / "models.yaml", store, models, memory_budget_gb=0.5, heartbeat_seconds=0.5)
    server = Server(config)
    server.env["LOG_LEVEL"] = "WARNING"
    server.env["MLX_SERVER_CPU_TUNING"] = "off"  # load the weights as the in-process baseline does
    server.start()
    rounds = []
    try:
        for round_ in range(args.rounds):
            row = {"in_process_cold": in_process_cold(store / MODEL)}
            row["server_cold"] = first_token(server.url, "one")
            row["server_warm"] = first_token(server.url, "one")
            row["server_swap"] = first_token(server.url, "two")  # evicts "one"
            row["memory"] = unload_and_measure(server, "two")
            rounds.append(row)
            print(f"round {round_ + 1}: " + ", ".join(f"{k} {v:.2f}s" for k, v in row.items() if k != "memory"),
                  flush=True)  # fmt: skip
    finally:
        server.stop()
        shutil.rmtree(work, ignore_errors=True)

    names = ["in_process_cold", "server_cold", "server_warm", "server_swap"]
    median = {name: statistics.median(r[name] for r in rounds) for name in names}
    base = median["in_process_cold"]
    print(f"\nmodel {MODEL} (two ids, budget fits one), time to first token, median of {args.rounds} rounds\n")
    print("| case | seconds | ratio to in-process cold load |")
    print("|---|---:|---:|")
    for name in names:
        print(f"| {name.replace('_', ' ')} | {median[name]:.2f} | {median[name] / base:.2f}x |")
    growth = statistics.mean(r["memory"]["available_growth_share"] for r in rounds)
    rss = statistics.median(r["memory"]["rss_bytes"] for r in rounds) / 1024**2
    uss = statistics.median(r["memory"]["uss_bytes"] for r in rounds) / 1024**2
    gone = sum(r["memory"]["process_gone"] for r in rounds)
    print(f"\nworker before unload: RSS {rss:.0f} MB, USS {uss:.0f} MB. Process gone after unload in {gone}/"
          f"{len(rounds)} rounds: {gone / len(rounds):.0%} of its memory returned (goal 100%). "
          f"System available memory grew by {growth:.0%} of its USS on average (noisy, system-wide).")  # fmt: skip
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"median_seconds": median, "rounds": rounds}, indent=2))


if __name__ == "__main__":
    main()
