"""Speculative decoding against plain decoding, one stream, side by side in one run.

    uv run python bench/speculative.py [--tokens 64] [--rounds 3]

The worker's own engine (worker/batch_engine.py) runs in-process on the bundled SmolLM2-135M, computing as
the worker does (worker/cpu_tuning.py), alternating rows round by round. Rows:
  - plain: no draft model (the baseline);
  - draft = the model itself, k tokens per round: every draft is right under greedy decoding, so this row
    shows what verification costs when acceptance is perfect and the draft is as slow as the model;
  - draft = the model's first L layers (self-speculative early exit): a cheap draft, right less often.
No smaller model with SmolLM2's tokenizer is bundled, and the speed-up needs a draft several times cheaper
than the model (Qwen3-0.6B for Qwen3-32B on the production host); the rows show where this host stands.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from worker.cpu_tuning import preload_blas

BLAS = preload_blas()

from protocol.generation import ChatMessage, Finished, GenerateRequest, SamplingParams, TextChunk  # noqa: E402
from protocol.launch import EngineSettings  # noqa: E402
from supervisor.model_import import import_model  # noqa: E402
from worker.batch_engine import BatchEngine  # noqa: E402
from worker.model_loader import load_model  # noqa: E402

MODEL = "smollm2-135m-instruct"
PROMPT = "Write a short story about a lighthouse keeper and a lost ship."


def early_exit(model, layers: int):
    """The model cut after its first `layers` blocks, sharing their weights (the norm and head stay)."""
    draft = copy.copy(model)
    draft.model = copy.copy(model.model)
    draft.model.layers = model.model.layers[:layers]
    return draft


def one_stream(engine: BatchEngine, tokens: int) -> dict:
    events, stamps = [], []
    request = GenerateRequest(
        request_id="r",
        messages=[ChatMessage(role="user", content=PROMPT)],
        sampling=SamplingParams(temperature=0, max_tokens=tokens),
    )
    engine.submit(request)

    def emit(event):
        events.append(event)
        if isinstance(event, TextChunk):
            stamps.append((time.perf_counter(), event.completion_tokens))

    while engine.busy:
        engine.step(emit)
    done = next(e for e in events if isinstance(e, Finished))
    (t0, n0), (t1, n1) = stamps[0], stamps[-1]
    return {
        "decode_tps": (n1 - n0) / (t1 - t0),
        "tokens": done.usage.completion_tokens,
        "accepted": done.draft_accepted_tokens,
        "text": "".join(e.text for e in events if isinstance(e, TextChunk)),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tokens", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=3, help="rounds, rows alternating within each (median kept)")
    parser.add_argument("--draft-layers", type=int, default=6, help="layers of the early-exit draft")
    args = parser.parse_args()

    store = Path(tempfile.mkdtemp(prefix="mlxs-spec-"))
    import_model(f"bundled:{MODEL}", MODEL, store)
    loaded = load_model(str(store / MODEL), context_length=4096)
    print(f"computing with {loaded.compute}; {len(loaded.model.model.layers)} layers", flush=True)
    rows = {"plain (baseline)": BatchEngine(loaded)}
    for k in (2, 4):
        self_draft = dataclasses.replace(loaded, draft_model=loaded.model)
        rows[f"draft = itself, k={k}"] = BatchEngine(self_draft, EngineSettings(num_draft_tokens=k))
    cut = dataclasses.replace(loaded, draft_model=early_exit(loaded.model, args.draft_layers))
    rows[f"draft = first {args.draft_layers} layers, k=2"] = BatchEngine(cut, EngineSettings(num_draft_tokens=2))

    results: dict[str, list[dict]] = {name: [] for name in rows}
    one_stream(rows["plain (baseline)"], 8)  # warm-up
    for _ in range(args.rounds):
        for name, engine in rows.items():
            results[name].append(one_stream(engine, args.tokens))
            print(f"  {name}: {results[name][-1]['decode_tps']:.2f} tok/s", flush=True)

    base = statistics.median(r["decode_tps"] for r in results["plain (baseline)"])
    reference = results["plain (baseline)"][0]["text"]
    print("\n| path | decode tok/s | vs plain | draft tokens accepted | same text as plain |")
    print("|---|---:|---:|---:|---|")
    for name, runs in results.items():
        tps = statistics.median(r["decode_tps"] for r in runs)
        accepted = f"{runs[0]['accepted']}/{runs[0]['tokens']}"
        same = all(r["text"] == reference for r in runs)
        print(f"| {name} | {tps:.2f} | {tps / base:.2f}x | {accepted} | {'yes' if same else 'no'} |")


if __name__ == "__main__":
    main()
